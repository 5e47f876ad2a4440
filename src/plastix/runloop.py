"""One run loop for every trainer: run folder, chunks, metrics parts, loggers, rounds, checkpoints, resume.

A trainer (PPO in ``plastix.training``, OpenAI-ES in ``plastix.algos.es``) is an object with a ``Schedule``
and six methods (``Trainer``); ``run_loop`` does everything else, the same way for both::

    state = trainer.init()                       # fresh state, or the newest usable checkpoint (resume)
    trainer.enter_round(state, r)                # the envs of the round the run (re)starts in
    loop until schedule.num_iterations:
        at a round start r > 0: state = trainer.start_round(state, r)   # the shift, at-switch hooks
        state, metrics, scores = trainer.run(state, k)                  # k compiled iterations
        -> a metrics part every ``log_every`` iterations (and the loggers), a ``-round`` part at a round's end
        -> a checkpoint every ``checkpoint_every`` iterations (after a part) and at the end

An *iteration* is a PPO update or an ES generation. A resumed run restarts from its newest checkpoint
before any damaged metrics part, drops the parts written after it, and recomputes them: the metrics are
those of an uninterrupted run.
"""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from plastix import store
from plastix.progress import TrainProgress


@dataclass(frozen=True)
class Schedule:
    """When a trainer's iterations write parts, rounds and checkpoints."""

    seeds: list[int]
    num_iterations: int  # PPO updates or ES generations, all rounds
    iterations_per_round: int
    log_every: int  # iterations per metrics part
    checkpoint_every: int  # iterations between checkpoints (rounded up to whole parts); the last is always saved
    steps_per_iteration: int  # env steps per seed and iteration (the ``env_step`` column)
    max_chunk: int  # most iterations one ``Trainer.run`` call may take
    parts_end_at_rounds: bool  # a part never spans a round boundary (PPO compiles its chunks per round)
    writes_rounds: bool  # per-round rows at each round's last iteration
    label: str = ""  # the progress bar's description
    quiet: bool = False

    @property
    def checkpoint_parts(self) -> int:
        return max(1, math.ceil(self.checkpoint_every / self.log_every))


class Trainer(Protocol):
    """What ``run_loop`` needs of a trainer (``state`` is the trainer's own: train states, env handle...)."""

    schedule: Schedule

    def init(self) -> Any:
        """The fresh state of iteration 0 (the envs reset, the networks initialised)."""

    def restore(self, run_dir: Path, checkpoint: Path, iteration: int, fresh: Any) -> Any:
        """The state saved in ``checkpoint`` (iteration ``iteration``), its envs brought back; ``fresh`` is
        ``init()``'s state (the structure to restore into)."""

    def checkpoint_tree(self, state: Any) -> Any:
        """The pytree a checkpoint holds."""

    def enter_round(self, state: Any, round_idx: int) -> Any:
        """The envs of round ``round_idx``, where a run starts or resumes (no at-switch hook fires)."""

    def start_round(self, state: Any, round_idx: int) -> Any:
        """A shift into round ``round_idx > 0``: the envs change and at-switch hooks fire."""

    def run(self, state: Any, k: int) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """``k`` iterations: ``(state, metrics {key: [k, S]} with time/sps, neuron scores {key: [k, S, H]} or
        None)``."""

    def round_rows(self, run_dir: Path, state: Any, round_idx: int, iteration: int) -> dict[str, np.ndarray]:
        """Round ``round_idx``'s summary rows ``{key: [1, S]}`` at its last iteration (its parts are written)."""

    def latest_return(self, metrics: dict[str, np.ndarray]) -> float:
        """The progress bar's return."""

    def close(self) -> None:
        """Release the envs."""


def usable_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint a resume can start from: before every damaged metrics part (which is then
    recomputed), or None (start again from iteration 0)."""
    damaged = store.damaged_parts(run_dir)
    first_damaged = store.part_update(damaged[0]) if damaged else None
    for iteration, path in reversed(store.checkpoints(run_dir)):
        # A part named u holds iterations from u (or is the round summary at u): a checkpoint at c < u precedes it.
        if first_damaged is None or iteration < first_damaged:
            return iteration, path
    return None


def resume_point(trainer: Trainer, run_dir: Path) -> tuple[Any, int]:
    """``(state, iteration)`` to continue ``run_dir`` from; parts after that iteration are dropped."""
    fresh = trainer.init()
    latest = usable_checkpoint(run_dir)
    if latest is None:  # killed before the first checkpoint (or every checkpoint follows a damaged part)
        store.drop_metrics_after(run_dir, 0)
        return fresh, 0
    iteration, path = latest
    state = trainer.restore(run_dir, path, iteration, fresh)
    store.drop_metrics_after(run_dir, iteration)
    return state, iteration


def run_loop(trainer: Trainer, run_dir: Path, state: Any, done: int, loggers) -> Any:
    """Run ``trainer`` from iteration ``done`` (state ``state``) to the schedule's end: metrics parts, neuron
    parts, per-round rows (all also sent to ``loggers``), checkpoints, the progress bar. Returns the state."""
    sched = trainer.schedule
    per_round = sched.iterations_per_round
    parts_since_checkpoint = 0
    buffer: list[tuple[dict, dict | None]] = []  # the chunks of the part being filled
    first = done + 1  # the part's first iteration
    if done < sched.num_iterations:
        state = trainer.enter_round(state, done // per_round)
    steps = sched.steps_per_iteration
    with TrainProgress(sched.label, sched.num_iterations * steps, done * steps, quiet=sched.quiet,
                       unit=steps) as progress:
        while done < sched.num_iterations:
            round_idx, into_round = divmod(done, per_round)
            if into_round == 0 and done > 0:
                state = trainer.start_round(state, round_idx)
            k = min(sched.max_chunk, sched.log_every - (done + 1 - first), sched.num_iterations - done)
            if sched.parts_end_at_rounds:
                k = min(k, per_round - into_round)
            state, metrics, scores = trainer.run(state, k)
            metrics["time/peak_rss_mb"] = np.full_like(np.asarray(metrics["time/sps"], np.float64), peak_rss_mb())
            buffer.append((metrics, scores))
            done += k
            round_end = done % per_round == 0
            if (done + 1 - first >= sched.log_every or done == sched.num_iterations
                    or (sched.parts_end_at_rounds and round_end)):
                _write_part(run_dir, sched, buffer, first, loggers)
                progress.advance(done, _mean_sps(buffer), trainer.latest_return(buffer[-1][0]))
                buffer, first = [], done + 1
                parts_since_checkpoint += 1
            if sched.writes_rounds and round_end:
                rows = trainer.round_rows(run_dir, state, done // per_round - 1, done)
                table = store.metrics_table(rows, sched.seeds, done, sched.steps_per_iteration)
                store.write_metrics_part(run_dir, table, done, store.METRICS_DIR, suffix="-round")
                loggers.log(table)
            if not buffer and (parts_since_checkpoint >= sched.checkpoint_parts or done == sched.num_iterations):
                store.save_checkpoint(run_dir, done, trainer.checkpoint_tree(state))
                parts_since_checkpoint = 0
    return state


def _write_part(run_dir: Path, sched: Schedule, buffer: list, first: int, loggers) -> None:
    """One metrics part (and neuron-score part) of the buffered chunks, named by its first iteration."""
    metrics = {key: np.concatenate([np.asarray(m[key]) for m, _ in buffer]) for key in buffer[0][0]}
    table = store.metrics_table(metrics, sched.seeds, first, sched.steps_per_iteration)
    store.write_metrics_part(run_dir, table, first)
    loggers.log(table)
    if buffer[0][1]:
        scores = {key: np.concatenate([np.asarray(s[key]) for _, s in buffer]) for key in buffer[0][1]}
        table = store.neuron_table(scores, sched.seeds, first, sched.steps_per_iteration)
        store.write_metrics_part(run_dir, table, first, store.NEURONS_DIR)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``getrusage``'s ``ru_maxrss``: KiB on Linux, bytes
    on macOS): logged as ``time/peak_rss_mb`` with every chunk, so a run's page can say what it needed."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _mean_sps(buffer: list) -> float:
    return float(np.mean(np.concatenate([np.asarray(m["time/sps"])[:, 0] for m, _ in buffer])))


class NoLoggers:
    """``open_loggers``' interface for callers without TensorBoard / W&B."""

    def log(self, table) -> None:
        pass


def latest_return(returns: np.ndarray) -> float:
    """Mean over seeds of the newest iteration's return that is not NaN."""
    for row in np.asarray(returns)[::-1]:
        if not np.all(np.isnan(row)):
            return float(np.nanmean(row))
    return float("nan")
