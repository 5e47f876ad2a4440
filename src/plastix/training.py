"""The host side of ``plastix train``: run folder, compiled chunks of updates, metrics, checkpoints, resume.

``train(cfg)`` builds the env pool (one env group per seed), the agent and the per-seed train states
(stacked on a leading seed axis), then repeatedly calls one compiled chunk of ``cfg.log_every`` updates,
writes the chunk's metrics as a Parquet part and, every ``cfg.checkpoint_every`` updates, an orbax
checkpoint. A killed run resumes from its newest checkpoint (``--resume RUN_DIR``) and produces the same
metrics as an uninterrupted run: parts written after that checkpoint are replaced.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from plastix import store
from plastix.algos.ppo import Agent, TrainState, make_chunk_fn
from plastix.config import ConfigError, TrainConfig, validate
from plastix.envs.envpool_bridge import EnvpoolBridge


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id}__{cfg.preset}__{cfg.activation}__{stamp}"


def config_from_dict(data: dict) -> TrainConfig:
    """Inverse of ``dataclasses.asdict`` for ``TrainConfig`` (JSON lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - fields
    if unknown:
        raise ConfigError(f"config.json: unknown option(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    data = dict(data)
    if "hidden_sizes" in data:
        data["hidden_sizes"] = tuple(data["hidden_sizes"])
    return TrainConfig(**data)


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
    validate(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists():
        raise ConfigError(f"--run-dir: {run_dir} already exists; pass --resume {run_dir} to continue it, or choose another folder")
    return dataclasses.replace(cfg, run_dir=str(run_dir)), run_dir, False


def build(cfg: TrainConfig) -> tuple[EnvpoolBridge, Agent, TrainState]:
    """Env pool, agent and fresh stacked train states for ``cfg.seed_list``."""
    seeds = cfg.seed_list
    bridge = EnvpoolBridge(cfg.env_id, seeds, cfg.num_envs, cfg.num_threads)
    agent = Agent(cfg, bridge.obs_dim, bridge.action_dim, bridge.action_low, bridge.action_high, bridge.max_episode_steps)
    raw_obs = jnp.asarray(bridge.reset())
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    states = jax.jit(jax.vmap(agent.init_state))(keys, raw_obs)
    return bridge, agent, states


def train(cfg: TrainConfig) -> Path:
    """Train PPO for every seed of ``cfg`` and return the run folder (see module docstring)."""
    cfg, run_dir, resuming = prepare_run(cfg)
    bridge, agent, states = build(cfg)
    if resuming:
        states = _resume(run_dir, bridge, states)
    else:
        run_dir.mkdir(parents=True)
        store.write_config(run_dir, dataclasses.asdict(cfg))
    _run_chunks(cfg, run_dir, bridge, agent, states)
    bridge.close()
    return run_dir


def _resume(run_dir: Path, bridge: EnvpoolBridge, fresh: TrainState) -> TrainState:
    latest = store.latest_checkpoint(run_dir)
    if latest is None:  # killed before the first checkpoint: start again from scratch
        store.drop_metrics_after(run_dir, 0)
        return fresh
    update, path = latest
    states = store.restore_checkpoint(path, fresh)
    env = jax.device_get(states.env)
    bridge.restore(env.num_resets, env.episode_actions, env.actions_recorded)
    store.drop_metrics_after(run_dir, update)
    return states


def _run_chunks(cfg: TrainConfig, run_dir: Path, bridge: EnvpoolBridge, agent: Agent, states: TrainState) -> None:
    seeds = cfg.seed_list
    done = int(np.asarray(states.update)[0])
    compiled: dict[int, object] = {}
    handle = bridge.handle()
    chunks_since_checkpoint = 0
    with _progress(cfg, done) as progress:
        while done < cfg.num_updates:
            k = min(cfg.chunk_updates, cfg.num_updates - done)
            if k not in compiled:
                compiled[k] = make_chunk_fn(agent, bridge.step, k).lower(states, handle).compile()
            start = time.perf_counter()
            states, handle, (metrics, scores) = compiled[k](states, handle)
            metrics, scores = jax.device_get((metrics, scores))
            elapsed = time.perf_counter() - start
            sps = k * cfg.batch_size * len(seeds) / elapsed
            metrics["time/sps"] = np.full((k, len(seeds)), sps)
            store.write_metrics_part(run_dir, store.metrics_table(metrics, seeds, done + 1, cfg.batch_size), done + 1)
            if scores:
                table = store.neuron_table(scores, seeds, done + 1, cfg.batch_size)
                store.write_metrics_part(run_dir, table, done + 1, store.NEURONS_DIR)
            done += k
            chunks_since_checkpoint += 1
            if chunks_since_checkpoint >= cfg.checkpoint_chunks or done == cfg.num_updates:
                store.save_checkpoint(run_dir, done, states)
                chunks_since_checkpoint = 0
            progress.advance(done, sps, _latest_return(metrics["return/episodic"]))


def _latest_return(returns: np.ndarray) -> float:
    """Mean over seeds of the newest update's episodic return that is not NaN."""
    for row in np.asarray(returns)[::-1]:
        if not np.all(np.isnan(row)):
            return float(np.nanmean(row))
    return float("nan")


class _progress:
    """A rich progress bar over env steps (per seed), with steps/s and the latest return; silent if quiet."""

    def __init__(self, cfg: TrainConfig, done_updates: int):
        self.cfg, self.done = cfg, done_updates
        self.bar = None

    def __enter__(self):
        if not self.cfg.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps  {task.fields[sps]:>8.0f} steps/s  return {task.fields[ret]:>9.1f}"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(
                f"{self.cfg.env_id} seeds {self.cfg.seeds}",
                total=self.cfg.num_updates * self.cfg.batch_size,
                completed=self.done * self.cfg.batch_size,
                sps=0.0,
                ret=float("nan"),
            )
        return self

    def advance(self, done_updates: int, sps: float, ret: float):
        if self.bar is not None:
            self.bar.update(self.task, completed=done_updates * self.cfg.batch_size, sps=sps, ret=ret)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
