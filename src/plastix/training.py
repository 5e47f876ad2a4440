"""The host side of ``plastix train``: its config, run folder and the two trainers on ``plastix.runloop``.

``train(cfg)`` checks the config (and, with ``--resume``, that it only extends the saved one), then runs
``PPOTrainer`` (PPO: the env pool, one env group per seed, the agent and the per-seed train states stacked on
a leading seed axis; one compiled chunk of ``cfg.log_every`` updates per call) or ``algos.es.ESRun``
(``--optimizer es``) through ``runloop.run_loop``: metrics parts, per-round rows, checkpoints every
``cfg.checkpoint_every`` iterations. A killed run resumes from its newest checkpoint (``--resume RUN_DIR``)
and produces the same metrics as an uninterrupted run: parts written after that checkpoint are replaced.
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
from plastix.algos.ppo import Agent, TrainState
from plastix.algos.ppo_host import compile_chunk
from plastix.config import (NETWORK_MITIGATIONS, ConfigError, TrainConfig, canonical, check_ranges, config_from_dict,
                            validate)
from plastix.envs import make_bridge
from plastix.envs.heldout import HeldoutEvaluation
from plastix.envs.replay import ReplayRecord, ResetRecord
from plastix.loggers import check_loggers, open_loggers
from plastix.runloop import Schedule, latest_return, resume_point, run_loop, usable_checkpoint


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id}__{cfg.preset}__{cfg.activation}__{stamp}"


# Options a resume may change: those that extend the run, and those that only change what is shown or logged.
EXTENDING = ("total_timesteps", "rounds", "steps_per_round")
NOT_RESULTS = ("resume", "quiet", "tensorboard", "wandb", "wandb_project")


def prepare_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, bool]:
    """Validate and pick the run folder. Returns ``(config, run_dir, resuming)``; nothing is computed.

    With ``cfg.resume``, ``cfg`` is the saved config (``plastix train --resume RUN`` starts from it) with
    any flags given: ``--total-timesteps``, ``--rounds`` and ``--steps-per-round`` may extend the run
    (``check_resume``); any other option that differs from the saved one is a ``ConfigError``.
    """
    if cfg.resume is not None:
        run_dir = Path(cfg.resume)
        saved, cfg = saved_config(run_dir), canonical(cfg)
        check_resume(saved, cfg)
        cfg = dataclasses.replace(cfg, resume=str(run_dir), run_dir=saved.run_dir)
        if cfg.optimizer != "es":  # ES checks its own options (_train_es)
            validate(cfg)
        return cfg, run_dir, True
    cfg = canonical(cfg)  # config.json says what runs, however it was spelled
    if cfg.optimizer != "es":  # ES checks its own options (_train_es)
        validate(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists():
        raise ConfigError(f"--run-dir: {run_dir} already exists; pass --resume {run_dir} to continue it, or choose another folder")
    return dataclasses.replace(cfg, run_dir=str(run_dir)), run_dir, False


def saved_config(run_dir: Path) -> TrainConfig:
    """The ``TrainConfig`` of a run folder (``--resume``'s starting point)."""
    if not (Path(run_dir) / "config.json").exists():
        raise ConfigError(f"--resume: {run_dir} is not a plastix run folder (no config.json)")
    return run_config(run_dir)


def run_config(run_dir: Path) -> TrainConfig:
    """The ``TrainConfig`` in a run folder's ``config.json``; an ES run's older ``ESConfig`` layout is read as
    the ``TrainConfig`` that trains it (``algos.es.train_config_dict_from_es_config``)."""
    from plastix.algos.es import is_legacy_es_config, train_config_dict_from_es_config

    data = store.read_config(run_dir)
    if is_legacy_es_config(data):
        data = train_config_dict_from_es_config(data, f"{Path(run_dir) / 'config.json'}")
    return config_from_dict(data)


def check_resume(saved: TrainConfig, given: TrainConfig) -> None:
    """Refuse, before any compute, a resume whose options change the run rather than extend it: every option
    but ``EXTENDING`` and ``NOT_RESULTS`` must equal the saved one; the extended run must have at least the
    saved number of iterations and, with rounds, the same iterations per round."""
    for flag, old, new in _differences(saved, given, ""):
        if flag.split(".")[0] in EXTENDING + NOT_RESULTS + ("run_dir",):
            continue
        raise ConfigError(f"--{flag.replace('_', '-')}: the run in {given.resume} was trained with {old!r}, "
                          f"not {new!r}; a resumed run keeps its config (only --total-timesteps, --rounds and "
                          "--steps-per-round may extend it). Train a new run (--run-dir) to change it")
    if given.run_dir is not None and saved.run_dir is not None and Path(given.run_dir) != Path(saved.run_dir) \
            and Path(given.run_dir) != Path(given.resume):
        raise ConfigError(f"--run-dir: {given.run_dir} is not the resumed run's folder {given.resume}; drop --run-dir")
    (old_total, old_round), (new_total, new_round) = _iterations(saved), _iterations(given)
    unit = "generations" if saved.optimizer == "es" else "updates"
    if new_total < old_total:
        raise ConfigError(f"--total-timesteps/--rounds/--steps-per-round: the extended run would have {new_total} "
                          f"{unit}, fewer than the {old_total} of the run in {given.resume}; a resume can only extend it")
    if max(saved.rounds, given.rounds) > 1 and new_round != old_round:
        raise ConfigError(f"--rounds/--steps-per-round/--total-timesteps: the run in {given.resume} has {old_round} "
                          f"{unit} per round, the extended one would have {new_round}; keep the rounds' length "
                          f"(--steps-per-round {saved.steps_per_round or saved.total_timesteps // saved.rounds})")


def _differences(saved, given, prefix: str):
    """``(flag, saved value, given value)`` of every option (nested groups as ``group.option``) that differs."""
    for f in dataclasses.fields(saved):
        old, new = getattr(saved, f.name), getattr(given, f.name)
        if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
            yield from _differences(old, new, f"{prefix}{f.name}.")
        elif old != new:
            yield f"{prefix}{f.name}", old, new


def _iterations(cfg: TrainConfig) -> tuple[int, int]:
    """``(iterations, iterations per round)``: PPO updates, or ES generations."""
    if cfg.optimizer == "es":
        es_cfg = _es_config(cfg)
        return es_cfg.num_generations, es_cfg.generations_per_round
    return cfg.num_updates, cfg.updates_per_round


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
    """Train every seed of ``cfg`` (PPO, or ES with ``--optimizer es``) and return the run folder.

    ``--resume`` of a finished run that is not extended computes nothing and says so (on stderr), unless a
    metrics part is damaged: the run then continues from the newest checkpoint before it and rewrites it."""
    cfg, run_dir, resuming = prepare_run(cfg)
    return TRAINERS[cfg.optimizer](cfg, run_dir, resuming)


def _train_ppo(cfg: TrainConfig, run_dir: Path, resuming: bool) -> Path:
    """PPO (``PPOTrainer``) on the run loop."""
    check_loggers(cfg)  # a missing TensorBoard / W&B package fails before any compute
    if resuming and _finished(run_dir, cfg.num_updates, usable_checkpoint(run_dir), "updates"):
        return run_dir
    trainer = PPOTrainer(cfg)
    if resuming:
        states, done = resume_point(trainer, run_dir)
        store.write_config(run_dir, dataclasses.asdict(dataclasses.replace(cfg, resume=None)))  # an extension
    else:
        states, done = trainer.init(), 0
        run_dir.mkdir(parents=True)
        store.write_config(run_dir, dataclasses.asdict(cfg))
    try:
        # Opened after resume_point dropped the stale parts: TensorBoard then hides the steps that are recomputed.
        with open_loggers(cfg, run_dir) as loggers:
            run_loop(trainer, run_dir, states, done, loggers)
    except BaseException:
        if not resuming:
            remove_unstarted_run(run_dir)
        raise
    trainer.close()
    return run_dir


def remove_unstarted_run(run_dir: Path) -> None:
    """Delete a new run's folder if it failed before its first update wrote metrics (nothing to resume)."""
    if not any((run_dir / store.METRICS_DIR).glob("*.parquet")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _finished(run_dir: Path, total: int, usable, unit: str) -> bool:
    """Whether a resumed run is already complete (a final checkpoint and no damaged part); says so."""
    import sys

    if usable is None or usable[0] < total:
        return False
    print(f"plastix train: {run_dir} has finished its {total} {unit}; nothing to do (extend it with a larger "
          "--total-timesteps, or more --rounds)", file=sys.stderr)
    return True


def _es_config(cfg: TrainConfig):
    from plastix.algos.es import es_config_from_train_config

    return es_config_from_train_config(cfg, **dataclasses.asdict(cfg.es))


def _train_es(cfg: TrainConfig, run_dir: Path | None = None, resuming: bool = False) -> Path:
    """``--optimizer es``: OpenAI-ES on the same actor network (``plastix.algos.es``), in ``--rounds`` rounds
    under ``--shift none`` or ``task``, with ``--baseline fresh`` (the fresh copies of ``algos/es.py``).
    ``config.json`` holds the ``TrainConfig`` (so ``--resume`` reads ES and PPO runs alike)."""
    from plastix.algos.es import ES_SHIFTS, train_es
    if cfg.shift not in ES_SHIFTS:
        raise ConfigError(f"--shift {cfg.shift}: not supported with --optimizer es; ES trains with --shift "
                          f"{' or '.join(ES_SHIFTS)} (task: running direction of HalfCheetah, Ant, Hopper, Walker2d)")
    if set(cfg.mitigations.split(",")) - {"", *NETWORK_MITIGATIONS}:  # layernorm and crelu: network options
        raise ConfigError("--optimizer es: trains without mitigations; drop --mitigations")
    if cfg.learner != "auto":
        raise ConfigError(f"--learner {cfg.learner}: chooses PPO's learner; --optimizer es has its own; "
                          "drop it")
    if cfg.network != "cleanrl" or cfg.rebuild_optimizer_at_switch:
        raise ConfigError("--optimizer es: trains CleanRL's continuous actor with its own Adam; drop --network "
                          "juliani-ash and --rebuild-optimizer-at-switch (or --preset juliani-ash)")
    if (cfg.adam_b1, cfg.adam_b2) != (0.9, 0.999):
        raise ConfigError("--adam-b1/--adam-b2: set PPO's Adam; --optimizer es keeps OpenAI-ES's Adam "
                          "(0.9, 0.999, as openai/evolution-strategies-starter); drop them")
    # PPO's training-time measurements that ES does not run (its diagnostics are es_config_from_train_config's).
    unmeasured = [flag for flag, name in (("--probe-every", "probe_every"), ("--interference-samples",
                  "interference_samples"), ("--curvature-every", "curvature_every"), ("--activity-steps",
                  "activity_steps")) if getattr(cfg, name) != getattr(TrainConfig, name)]
    if unmeasured:
        raise ConfigError(f"{', '.join(unmeasured)}: PPO's measurements; --optimizer es does not run them; drop them")
    check_ranges(cfg)  # --es.* and the shared options, named as flags, before ESConfig's own checks
    es_cfg = _es_config(cfg)
    try:
        es_cfg.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if run_dir is None:
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if not resuming and run_dir.exists():
        raise ConfigError(f"--run-dir: {run_dir} already exists; pass --resume {run_dir} to continue it, or choose another folder")
    check_loggers(cfg)
    if resuming and _finished(run_dir, es_cfg.num_generations, usable_checkpoint(run_dir), "generations"):
        return run_dir
    if resuming:  # it would compute: it must hold what a continuation needs
        check_es_resumable(run_dir, usable_checkpoint(run_dir))
    config = dataclasses.asdict(dataclasses.replace(cfg, resume=None, run_dir=str(run_dir)))
    try:
        with open_loggers(cfg, run_dir) as loggers:
            return train_es(es_cfg, run_dir, loggers=loggers, resume=resuming, config=config)
    except BaseException:
        if not resuming:
            remove_unstarted_run(run_dir)  # only a folder with metrics is kept (to be resumed)
        raise


# --optimizer -> (TrainConfig, run folder, resuming) -> run folder: each trainer on ``runloop.run_loop``.
TRAINERS = {"ppo": _train_ppo, "es": _train_es}


def load_checkpoint(run_dir: str | Path, final: bool = True):
    """``(config, state)`` of a run folder's newest checkpoint: PPO's train states stacked over seeds, or for
    an ES run (``--optimizer es``) an ``algos.es.ESFinal`` (the seeds' mean policies as ``params["policy"]``,
    their observation statistics and ES states).

    With ``final``, the checkpoint must be the last iteration's (a finished run); else ``ValueError``.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    total = _iterations(cfg)[0]
    latest = store.latest_checkpoint(run_dir)
    if latest is None or (final and latest[0] < total):
        raise ValueError(f"{run_dir}: no final checkpoint (iteration {total}); finish the run with --resume")
    if cfg.optimizer == "es":
        return cfg, _load_es_checkpoint(cfg, *latest)
    bridge, _, fresh = build(cfg)
    tree = restore_ppo_checkpoint(latest[1], _checkpoint_tree(bridge, fresh, bridge.handle()))
    bridge.close()
    return cfg, _warm(cfg, tree["train"])


def _load_es_checkpoint(cfg: TrainConfig, generation: int, path: Path):
    from plastix.algos.es import ESFinal, ESRun, holds_es_state

    trainer = ESRun(_es_config(cfg))
    like = trainer.checkpoint_tree(trainer.init())
    trainer.close()
    if not holds_es_state(path):  # an older ES run: its final policies and observation statistics only
        tree = store.restore_checkpoint(path, {"params": like["params"], "obs_rms": like["obs_rms"]})
        return ESFinal(tree["params"], tree["obs_rms"], None)
    tree = restore_es_checkpoint(path, like, generation)
    seeds = jax.tree.map(lambda x: x[: len(cfg.seed_list)], tree["run"])
    return ESFinal(tree["params"], tree["obs_rms"], seeds)


def check_es_resumable(run_dir: Path, usable) -> None:
    """Refuse, before compute, to continue an ES run whose checkpoint (``usable``: ``(generation, path)`` or
    None) lacks the ES state: a run of plastix up to ``cf1bde5`` saved only its final mean policies and
    observation statistics, from which no exact continuation exists."""
    from plastix.algos.es import holds_es_state

    if usable is not None and not holds_es_state(usable[1]):
        raise ConfigError(
            f"--resume: {run_dir} is an ES run of an older plastix (its config.json holds an ESConfig): its "
            f"checkpoint at generation {usable[0]} holds only the seeds' mean policies and observation "
            "statistics, not the ES state (search distribution, Adam moments, PRNG keys, fresh copies, env "
            "resets) that continuing it exactly needs, so it cannot be extended; load_checkpoint and the "
            "reports still read it. Train a new run (--run-dir) to train longer")


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


# The fields of a checkpoint's env state that held the replay record before it became the bridge's
# (``EnvState.replay``, ``envs.replay.ReplayRecord``): its arrays, under the same names; the two counters were
# kept for every env, ``episode_actions`` only where the envs resume by replay.
LEGACY_REPLAY_FIELDS = ("episode_actions", "actions_recorded", "num_resets")


def restore_ppo_checkpoint(path: Path, like: dict) -> dict:
    """``store.restore_checkpoint`` of a PPO checkpoint (``_checkpoint_tree``), also of one written before the
    env bridge kept the replay record: its env state's ``LEGACY_REPLAY_FIELDS`` are regrouped into
    ``EnvState.replay`` (the counters of envs that do not replay are dropped: nothing read them)."""
    saved_env = store.checkpoint_structure(path)["train"]["env"]
    if "num_resets" not in saved_env:  # the current layout
        return store.restore_checkpoint(path, like)
    env = like["train"].env
    old_layout = {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name != "replay"}
    counter = jnp.zeros(env.done.shape, jnp.int32)
    old_layout |= {"episode_actions": env.replay.episode_actions if env.replay is not None else None,
                   "actions_recorded": counter, "num_resets": counter}
    tree = store.restore_checkpoint(path, {**like, "train": like["train"].replace(env=old_layout)})
    saved = tree["train"].env
    replay = None if env.replay is None else ReplayRecord(episode_actions=saved["episode_actions"],
                                                          actions_recorded=saved["actions_recorded"],
                                                          num_resets=saved["num_resets"])
    fields = {name: value for name, value in saved.items() if name not in LEGACY_REPLAY_FIELDS}
    return {**tree, "train": tree["train"].replace(env=type(env)(**fields, replay=replay))}


# The field of a checkpoint's ES state (``algos.es.ESRunState``) that counted envpool's auto-resets before the
# env bridge's replay record (``ESRunState.replay``, an ``envs.replay.ResetRecord``) replaced it.
LEGACY_ES_RESETS_FIELD = "env_resets"


def restore_es_checkpoint(path: Path, like: dict, generation: int) -> dict:
    """``store.restore_checkpoint`` of an ES checkpoint (``algos.es.ESRun.checkpoint_tree``) taken after
    ``generation`` generations, also of one written before the env bridge kept its replay record: there
    ``run.env_resets [L, M]`` counted only envpool's auto-resets, and the host's one reset per generation was
    implied; the record counts every reset after the first, ``num_resets = env_resets + generation - 1``."""
    if LEGACY_ES_RESETS_FIELD not in store.checkpoint_structure(path)["run"]:  # the current layout
        return store.restore_checkpoint(path, like)
    run = like["run"]
    old_layout = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name != "replay"}
    old_layout[LEGACY_ES_RESETS_FIELD] = run.replay.num_resets
    tree = store.restore_checkpoint(path, {**like, "run": old_layout})
    saved = dict(tree["run"])
    auto_resets = saved.pop(LEGACY_ES_RESETS_FIELD)
    return {**tree, "run": type(run)(**saved, replay=ResetRecord(num_resets=auto_resets + generation - 1))}


class PPOTrainer:
    """PPO as a ``plastix.runloop.Trainer``: its state is ``(train states stacked over members, env handle)``;
    ``run`` calls one chunk of ``k`` updates (``ppo_host.compile_chunk``: ``ppo.make_chunk_fn`` compiled once
    per ``k``, or the host-driven ``ppo_host.HostChunk`` on images)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.bridge, self.agent, self.fresh_states = build(cfg)
        self.members = len(member_seeds(cfg))
        self.compiled: dict[int, object] = {}
        self.heldout = HeldoutEvaluation(cfg, self.agent, self.bridge) if cfg.rounds > 1 else None
        self.schedule = Schedule(
            seeds=cfg.seed_list, num_iterations=cfg.num_updates, iterations_per_round=cfg.updates_per_round,
            log_every=cfg.chunk_updates, checkpoint_every=cfg.checkpoint_every, steps_per_iteration=cfg.batch_size,
            max_chunk=cfg.chunk_updates, parts_end_at_rounds=True, writes_rounds=cfg.rounds > 1,
            label=f"{cfg.env_id} seeds {cfg.seeds}", quiet=cfg.quiet)

    def init(self):
        return self.fresh_states, self.bridge.handle()

    def checkpoint_tree(self, state) -> dict:
        return _checkpoint_tree(self.bridge, *state)

    def restore(self, run_dir: Path, checkpoint: Path, iteration: int, fresh):
        """The checkpoint's train states; the envs come back as their ``EnvSpec.resume`` says."""
        fresh_states, handle = fresh
        tree = restore_ppo_checkpoint(checkpoint, _checkpoint_tree(self.bridge, fresh_states, handle))
        states, bridge = tree["train"], self.bridge
        if bridge.spec.resume == "replay":  # the bridge replays the record its rollout kept
            bridge.restore(jax.device_get(states.env.replay))
        elif bridge.spec.resume == "state":
            handle = tree["env"]
            bridge.restore(handle)
        else:  # the envs restarted from a reset: the learner continues on the fresh episodes
            states = states.replace(env=states.env.replace(
                obs=fresh_states.env.obs, done=fresh_states.env.done,
                episode_return=fresh_states.env.episode_return, episode_length=fresh_states.env.episode_length))
        return states, handle

    def enter_round(self, state, round_idx: int):
        states, handle = state
        return states, self.bridge.set_round(round_idx, handle)

    def start_round(self, state, round_idx: int):
        """A shift: the envs' new round (a new envpool pool for window/expand: recompile), at-switch hooks."""
        states, handle = state
        pool = getattr(self.bridge, "pool_version", 0)
        handle = self.bridge.set_round(round_idx, handle)
        if getattr(self.bridge, "pool_version", 0) != pool:  # window/expand on envpool built a new pool
            self.compiled.clear()
        return _start_round(self.cfg, self.agent, states, round_idx), handle

    def run(self, state, k: int):
        cfg, (states, handle) = self.cfg, state
        if k not in self.compiled:
            self.compiled[k] = compile_chunk(self.agent, self.bridge.step, k, states, handle)
        start = time.perf_counter()
        states, handle, (metrics, scores) = self.compiled[k](states, handle)
        metrics, scores = jax.device_get((metrics, scores))
        sps = k * cfg.batch_size * self.members / (time.perf_counter() - start)
        metrics = _split_members(cfg, metrics)
        metrics["time/sps"] = np.full((k, len(cfg.seed_list)), sps)
        scores = {key: np.asarray(v)[:, : len(cfg.seed_list)] for key, v in scores.items()} if scores else None
        return (states, handle), metrics, scores

    def round_rows(self, run_dir: Path, state, round_idx: int, update: int) -> dict:
        return _round_rows(self.cfg, run_dir, self.heldout, state[0], round_idx, update)

    def latest_return(self, metrics: dict) -> float:
        return latest_return(metrics["return/episodic"])

    def close(self) -> None:
        if self.heldout is not None:
            self.heldout.close()
        self.bridge.close()


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


def _round_rows(cfg, run_dir: Path, heldout, states: TrainState, round_idx: int, update: int) -> dict:
    """The per-round rows ``{key: [1, S]}`` at the round's last update; returns are averaged over the round's
    last quarter of updates:

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
    return rows
