"""The host side of ``plastix train``: run folder, compiled chunks of updates, metrics, checkpoints, resume.

``train(cfg)`` builds the env pool (one env group per seed), the agent and the per-seed train states
(stacked on a leading seed axis), then repeatedly calls one compiled chunk of ``cfg.log_every`` updates,
writes the chunk's metrics as a Parquet part and, every ``cfg.checkpoint_every`` updates, an orbax
checkpoint. A killed run resumes from its newest checkpoint (``--resume RUN_DIR``) and produces the same
metrics as an uninterrupted run: parts written after that checkpoint are replaced.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from datetime import datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from plastix import store
from plastix.algos.ppo import Agent, TrainState, make_chunk_fn
from plastix.config import (NETWORK_MITIGATIONS, ConfigError, TrainConfig, canonical, check_ranges, config_from_dict,
                            validate)
from plastix.envs import make_bridge
from plastix.envs.heldout import HeldoutEvaluation
from plastix.loggers import check_loggers, open_loggers
from plastix.progress import TrainProgress


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id}__{cfg.preset}__{cfg.activation}__{stamp}"


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, bool]:
    """Validate and pick the run folder. Returns ``(config, run_dir, resuming)``; nothing is computed."""
    if cfg.resume is not None:
        run_dir = Path(cfg.resume)
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"--resume: {run_dir} is not a plastix run folder (no config.json)")
        saved = config_from_dict(store.read_config(run_dir))
        cfg = dataclasses.replace(saved, resume=str(run_dir), quiet=cfg.quiet)
        validate(cfg)
        return cfg, run_dir, True
    cfg = canonical(cfg)  # config.json says what runs, however it was spelled
    validate(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists():
        raise ConfigError(f"--run-dir: {run_dir} already exists; pass --resume {run_dir} to continue it, or choose another folder")
    return dataclasses.replace(cfg, run_dir=str(run_dir)), run_dir, False


def member_seeds(cfg: TrainConfig) -> list[int]:
    """The seeds of the stacked train states: ``cfg.seed_list``, and with ``--baseline fresh`` the same seeds
    again for the fresh copies (member ``S + i`` is seed ``i``'s copy, re-initialised at each round start)."""
    seeds = cfg.seed_list
    return seeds + seeds if cfg.baseline == "fresh" else seeds


def build(cfg: TrainConfig):
    """Env bridge, agent and fresh stacked train states for ``member_seeds(cfg)``."""
    seeds = member_seeds(cfg)
    bridge = make_bridge(cfg, seeds)
    agent = Agent(cfg, bridge.spec)
    raw_obs = jnp.asarray(bridge.reset())
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    # lax.map, not vmap: a vmapped init batches the orthogonal inits' QR decompositions, and jaxlib 0.10's
    # batched LAPACK kernels wait on sub-tasks queued to XLA's CPU pool, which deadlocks when the (2-core)
    # pool's threads all run such kernels at once (fixed in jax 0.11, which needs Python 3.12).
    return bridge, agent, agent.init_states(keys, raw_obs)


def train(cfg: TrainConfig) -> Path:
    """Train every seed of ``cfg`` (PPO, or ES with ``--optimizer es``) and return the run folder."""
    if cfg.optimizer == "es":
        return _train_es(cfg)
    cfg, run_dir, resuming = prepare_run(cfg)
    check_loggers(cfg)  # a missing TensorBoard / W&B package fails before any compute
    bridge, agent, states = build(cfg)
    handle = bridge.handle()
    if resuming:
        states, handle = _resume(run_dir, bridge, agent, states, handle)
    else:
        run_dir.mkdir(parents=True)
        store.write_config(run_dir, dataclasses.asdict(cfg))
    try:
        # Opened after _resume dropped the stale parts: TensorBoard then hides the steps that are recomputed.
        with open_loggers(cfg, run_dir) as loggers:
            _run_chunks(cfg, run_dir, bridge, agent, states, handle, loggers)
    except BaseException:
        if not resuming:
            remove_unstarted_run(run_dir)
        raise
    bridge.close()
    return run_dir


def remove_unstarted_run(run_dir: Path) -> None:
    """Delete a new run's folder if it failed before its first update wrote metrics (nothing to resume)."""
    if not any((run_dir / store.METRICS_DIR).glob("*.parquet")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_es(cfg: TrainConfig) -> Path:
    """``--optimizer es``: OpenAI-ES on the same actor network (``plastix.algos.es``), in ``--rounds`` rounds
    under ``--shift none`` or ``task``, with ``--baseline fresh`` (the fresh copies of ``algos/es.py``)."""
    from plastix.algos.es import ES_SHIFTS, es_config_from_train_config, train_es

    if cfg.resume is not None:
        raise ConfigError("--resume: ES runs cannot be resumed yet (they keep only a final checkpoint)")
    if cfg.shift not in ES_SHIFTS:
        raise ConfigError(f"--shift {cfg.shift}: not supported with --optimizer es; ES trains with --shift "
                          f"{' or '.join(ES_SHIFTS)} (task: running direction of HalfCheetah, Ant, Hopper, Walker2d)")
    if set(cfg.mitigations.split(",")) - {"", *NETWORK_MITIGATIONS}:  # layernorm and crelu: network options
        raise ConfigError("--optimizer es: trains without mitigations; drop --mitigations")
    if cfg.network != "cleanrl" or cfg.rebuild_optimizer_at_switch:
        raise ConfigError("--optimizer es: trains CleanRL's continuous actor with its own Adam; drop --network "
                          "juliani-ash and --rebuild-optimizer-at-switch (or --preset juliani-ash)")
    if (cfg.adam_b1, cfg.adam_b2) != (0.9, 0.999):
        raise ConfigError("--adam-b1/--adam-b2: set PPO's Adam; --optimizer es keeps OpenAI-ES's Adam "
                          "(0.9, 0.999, as openai/evolution-strategies-starter); drop them")
    check_ranges(cfg)  # --es.* and the shared options, named as flags, before ESConfig's own checks
    es_cfg = es_config_from_train_config(cfg, **dataclasses.asdict(cfg.es))
    try:
        es_cfg.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists():
        raise ConfigError(f"--run-dir: {run_dir} already exists; choose another folder")
    check_loggers(cfg)
    try:
        with open_loggers(cfg, run_dir) as loggers:
            return train_es(es_cfg, run_dir, loggers=loggers)
    except BaseException:
        remove_unstarted_run(run_dir)  # ES runs are not resumed: only a folder with metrics is kept
        raise


def load_checkpoint(run_dir: str | Path, final: bool = True) -> tuple[TrainConfig, TrainState]:
    """``(config, train states stacked over seeds)`` of a run folder's newest checkpoint.

    With ``final``, the checkpoint must be the last update's (a finished run); else ``ValueError``.
    """
    run_dir = Path(run_dir)
    cfg = config_from_dict(store.read_config(run_dir))
    latest = store.latest_checkpoint(run_dir)
    if latest is None or (final and latest[0] < cfg.num_updates):
        raise ValueError(f"{run_dir}: no final checkpoint (update {cfg.num_updates}); finish the run with --resume")
    bridge, _, fresh = build(cfg)
    tree = store.restore_checkpoint(latest[1], _checkpoint_tree(bridge, fresh, bridge.handle()))
    bridge.close()
    return cfg, _warm(cfg, tree["train"])


def _warm(cfg: TrainConfig, tree):
    """The members of a stacked pytree that are the run's seeds (drops the ``--baseline fresh`` copies)."""
    n = len(cfg.seed_list)
    return jax.tree.map(lambda x: x[:n], tree)


def _fresh(cfg: TrainConfig, tree):
    """The ``--baseline fresh`` copies of a stacked pytree."""
    n = len(cfg.seed_list)
    return jax.tree.map(lambda x: x[n:], tree)


def reinit_fresh_members(agent: Agent, states: TrainState, round_idx: int) -> TrainState:
    """Re-initialise the ``--baseline fresh`` copies for round ``round_idx`` (a fresh-network reference).

    Copy ``i`` gets the network, optimizer, surgery and diagnostics state of a new agent drawn with
    ``fold_in(PRNGKey(seed_i), 1_000 + round_idx)``; its envs (and their running normalisation statistics),
    its PRNG stream and its update counter carry on; its learning rate restarts with the round (``ppo.learning_rate``
    with ``fresh_copy``), as a fresh run of one round would.
    """
    cfg = agent.cfg
    seeds = jnp.asarray(cfg.seed_list)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 1_000 + round_idx))(seeds)
    new = agent.init_states(keys, _fresh(cfg, states.env).obs)
    old = _fresh(cfg, states)
    new = old.replace(params=new.params, opt_state=new.opt_state, surgery_state=new.surgery_state,
                      diagnostics=new.diagnostics)
    return jax.tree.map(lambda w, f: jnp.concatenate([w, f]), _warm(cfg, states), new)


def _checkpoint_tree(bridge, states: TrainState, handle) -> dict:
    """What a checkpoint holds: the train states, and the envs' state when it is a JAX pytree."""
    return {"train": states, "env": handle} if bridge.spec.resume == "state" else {"train": states}


def _resume(run_dir: Path, bridge, agent: Agent, fresh: TrainState, handle):
    """Restore the newest checkpoint; bring the envs back as their ``EnvSpec.resume`` says."""
    latest = store.latest_checkpoint(run_dir)
    if latest is None:  # killed before the first checkpoint: start again from scratch
        store.drop_metrics_after(run_dir, 0)
        return fresh, handle
    update, path = latest
    tree = store.restore_checkpoint(path, _checkpoint_tree(bridge, fresh, handle))
    states = tree["train"]
    if bridge.spec.resume == "replay":
        env = jax.device_get(states.env)
        bridge.restore(env.num_resets, env.episode_actions, env.actions_recorded)
    elif bridge.spec.resume == "state":
        handle = tree["env"]
        bridge.restore(handle)
    else:  # the envs restarted from a reset: the learner continues on the fresh episodes
        states = states.replace(env=states.env.replace(
            obs=fresh.env.obs, done=fresh.env.done, episode_return=fresh.env.episode_return,
            episode_length=fresh.env.episode_length))
    store.drop_metrics_after(run_dir, update)
    return states, handle


def _run_chunks(cfg: TrainConfig, run_dir: Path, bridge, agent: Agent, states: TrainState, handle, loggers) -> None:
    """Compiled chunks of updates, round by round: metrics parts (also sent to ``loggers``), checkpoints,
    per-round summaries."""
    seeds = cfg.seed_list
    members = len(member_seeds(cfg))
    done = int(np.asarray(states.update)[0])
    per_round = cfg.updates_per_round
    compiled: dict[int, object] = {}
    chunks_since_checkpoint = 0
    heldout = HeldoutEvaluation(cfg, agent, bridge) if cfg.rounds > 1 else None
    if done < cfg.num_updates:
        handle = bridge.set_round(done // per_round, handle)
    with _progress(cfg, done) as progress:
        while done < cfg.num_updates:
            round_idx, into_round = divmod(done, per_round)
            if into_round == 0 and done > 0:  # a shift: new round, and at-switch mitigations fire
                pool = getattr(bridge, "pool_version", 0)
                handle = bridge.set_round(round_idx, handle)
                if getattr(bridge, "pool_version", 0) != pool:  # window/expand on envpool built a new pool
                    compiled.clear()
                states = _start_round(cfg, agent, states, round_idx)
            k = min(cfg.chunk_updates, per_round - into_round)
            if k not in compiled:
                compiled[k] = make_chunk_fn(agent, bridge.step, k).lower(states, handle).compile()
            start = time.perf_counter()
            states, handle, (metrics, scores) = compiled[k](states, handle)
            metrics, scores = jax.device_get((metrics, scores))
            elapsed = time.perf_counter() - start
            sps = k * cfg.batch_size * members / elapsed
            metrics = _split_members(cfg, metrics)
            metrics["time/sps"] = np.full((k, len(seeds)), sps)
            table = store.metrics_table(metrics, seeds, done + 1, cfg.batch_size)
            store.write_metrics_part(run_dir, table, done + 1)
            loggers.log(table)
            if scores:
                scores = {key: np.asarray(v)[:, : len(seeds)] for key, v in scores.items()}
                table = store.neuron_table(scores, seeds, done + 1, cfg.batch_size)
                store.write_metrics_part(run_dir, table, done + 1, store.NEURONS_DIR)
            done += k
            if cfg.rounds > 1 and done % per_round == 0:
                loggers.log(_write_round_summary(cfg, run_dir, heldout, states, round_idx, done))
            chunks_since_checkpoint += 1
            if chunks_since_checkpoint >= cfg.checkpoint_chunks or done == cfg.num_updates:
                store.save_checkpoint(run_dir, done, _checkpoint_tree(bridge, states, handle))
                chunks_since_checkpoint = 0
            progress.advance(done, sps, _latest_return(metrics["return/episodic"]))
    if heldout is not None:
        heldout.close()


def _start_round(cfg: TrainConfig, agent: Agent, states: TrainState, round_idx: int) -> TrainState:
    """At a shift: flag the task switch (the next update's at-switch mitigations fire: batch-free ones before
    its rollout, batch-reading ones on its first gradient step; ``BatchInfo.phase``) and, with
    ``--baseline fresh``, re-initialise the fresh copies (which take no at-switch mitigation: they are new).
    Under ``permute``, the running observation statistics move with the observation (``Agent.follow_permutation``)."""
    switch = jnp.ones_like(states.task_switch)
    if cfg.shift == "permute":  # every member's observation statistics follow the new permutation
        old, new = agent.observation_permutation(round_idx - 1), agent.observation_permutation(round_idx)
        states = states.replace(env=jax.vmap(agent.follow_permutation, in_axes=(0, None, None))(states.env, old, new))
    if cfg.baseline == "fresh":
        states = reinit_fresh_members(agent, states, round_idx)
        switch = switch.at[len(cfg.seed_list):].set(False)
    return states.replace(task_switch=switch)


def _split_members(cfg: TrainConfig, metrics: dict) -> dict:
    """The seeds' metrics ``[K, S]``; with ``--baseline fresh`` plus the fresh copies' episodic returns and
    learning rates as ``baseline/return/episodic`` and ``baseline/optim/lr`` (their other metrics are not
    written)."""
    n = len(cfg.seed_list)
    out = {key: np.asarray(v)[:, :n] for key, v in metrics.items()}
    if cfg.baseline == "fresh":
        for key in ("return/episodic", "optim/lr"):
            out[f"baseline/{key}"] = np.asarray(metrics[key])[:, n:]
    return out


def _round_mean(df, key: str, seeds: list[int], first: int, last: int) -> np.ndarray:
    """Per seed, the mean of ``key`` over updates ``first..last`` (NaN where no row)."""
    rows = df[(df.key == key) & (df["update"] >= first) & (df["update"] <= last)]
    return rows.groupby("seed").value.mean().reindex(seeds).to_numpy()


def _write_round_summary(cfg, run_dir: Path, heldout, states: TrainState, round_idx: int, update: int):
    """Write (and return, as a table) the per-round rows at the round's last update; returns are averaged
    over the round's last quarter of updates:

    - ``round/index``, ``round/return_train``;
    - where the scenario has a held-out set (``HeldoutEvaluation``): ``round/return_heldout`` and
      ``round/generalization_gap`` = train - held-out;
    - with ``--baseline fresh``: ``round/return_fresh`` (the copy trained from a new init on this round only)
      and ``round/normalized_return`` = train / fresh (< 1 is plasticity loss;
      meaningful for positive returns, e.g. the gridworld and CoinRun, not for MuJoCo's signed returns).
    """
    seeds = cfg.seed_list
    df = store.read_metrics(run_dir)
    first = update - max(1, cfg.updates_per_round // 4) + 1
    train_return = _round_mean(df, "return/episodic", seeds, first, update)
    rows = {"round/index": np.full((1, len(seeds)), float(round_idx)), "round/return_train": train_return[None]}
    if heldout is not None and heldout.available:
        value = heldout.evaluate(_warm(cfg, states), round_idx)
        rows["round/return_heldout"] = value[None]
        rows["round/generalization_gap"] = (train_return - value)[None]
    if cfg.baseline == "fresh":
        fresh_return = _round_mean(df, "baseline/return/episodic", seeds, first, update)
        rows["round/return_fresh"] = fresh_return[None]
        with np.errstate(divide="ignore", invalid="ignore"):  # undefined (NaN, not written) when fresh is 0
            ratio = np.where(fresh_return != 0, train_return / fresh_return, np.nan)
        rows["round/normalized_return"] = ratio[None]
    table = store.metrics_table(rows, seeds, update, cfg.batch_size)
    store.write_metrics_part(run_dir, table, update, store.METRICS_DIR, suffix="-round")
    return table


def _latest_return(returns: np.ndarray) -> float:
    """Mean over seeds of the newest update's episodic return that is not NaN."""
    for row in np.asarray(returns)[::-1]:
        if not np.all(np.isnan(row)):
            return float(np.nanmean(row))
    return float("nan")


def _progress(cfg: TrainConfig, done_updates: int) -> TrainProgress:
    """The progress display of a run over env steps per seed (``plastix.progress``), advanced in updates."""
    return TrainProgress(f"{cfg.env_id} seeds {cfg.seeds}", cfg.num_updates * cfg.batch_size,
                         done_updates * cfg.batch_size, quiet=cfg.quiet, unit=cfg.batch_size)
