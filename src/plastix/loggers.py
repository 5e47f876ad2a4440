"""Optional mirrors of the metrics: TensorBoard scalars and W&B runs (``--tensorboard``, ``--wandb``).

``metrics.parquet`` stays the record; these loggers copy every row of each metrics part as it is written
(tag = metric key, step = ``env_step``), one stream per seed:

- TensorBoard (``tensorboardX``, no TensorFlow): one event file writer per seed under
  ``<run-dir>/tensorboard/seed_<s>/``, so TensorBoard shows the seeds as runs to overlay
  (``tensorboard --logdir <run-dir>/tensorboard``, or a sweep folder to see every run).
- Weights & Biases: one W&B run per seed, named ``<run folder>/seed_<s>`` and grouped by the run folder's
  name (W&B's UI then averages the group across seeds), with the full config plus ``seed``. Every key is
  plotted against ``env_step`` (``define_metric``), so W&B's own step counter never has to be monotonic.
  ``offline`` writes ``<run-dir>/wandb/offline-run-*`` and needs no network (upload later with
  ``wandb sync``); ``online`` needs ``wandb login``. The run ids are kept in ``<run-dir>/wandb/ids.json``
  so a resumed training continues the same W&B runs.

A resumed run first drops the metric parts written after its checkpoint; the TensorBoard writers then purge
their events past the last kept step (``purge_step``), so nothing is shown twice. W&B cannot delete history,
so a W&B run may show those few steps twice (the rows in ``metrics.parquet`` are not duplicated).

With both off, :func:`open_loggers` returns a logger that does nothing and imports nothing.

Example::

    loggers = open_loggers(cfg, run_dir)   # after a resumed run has dropped its stale metric parts
    loggers.log(store.metrics_table(metrics, seeds, first_update, cfg.batch_size))
    loggers.close()
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import secrets
from pathlib import Path

import numpy as np

from plastix.config import ConfigError

EXTRA = "pip install 'plastix[log]'"


def check_loggers(cfg) -> None:
    """Raise ``ConfigError`` (before any compute) if ``--tensorboard`` / ``--wandb`` need a missing package."""
    if cfg.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError(f"--tensorboard needs the tensorboardX package: {EXTRA}")
    if cfg.wandb != "off" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"--wandb {cfg.wandb} needs the wandb package: {EXTRA}")


class MetricLoggers:
    """The loggers a run asked for; ``log(table)`` sends a tidy metrics table to each, ``close()`` ends them.

    Also a context manager (``with open_loggers(cfg, run_dir) as loggers: ...``).
    """

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, table) -> None:
        """Write every row of a ``store.metrics_table`` table (seed, update, env_step, key, value)."""
        if not self.sinks or table.num_rows == 0:
            return
        names = ("seed", "env_step", "key", "value")
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}
        for seed in np.unique(cols["seed"]):
            rows = cols["seed"] == seed
            steps, keys, values = cols["env_step"][rows], cols["key"][rows], cols["value"][rows]
            for sink in self.sinks:
                sink.log(int(seed), steps, keys, values)

    def close(self) -> None:
        """Flush and close every logger (safe to call twice)."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> MetricLoggers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_loggers(cfg, run_dir: str | Path) -> MetricLoggers:
    """The loggers ``cfg`` asks for (``cfg.tensorboard``, ``cfg.wandb``), writing under ``run_dir``.

    Call it after a resumed run has dropped its metric parts past the checkpoint: the TensorBoard writers
    purge their events after the last step still in ``metrics.parquet``.
    """
    check_loggers(cfg)
    run_dir = Path(run_dir)
    sinks: list = []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(run_dir, purge_after=_last_env_step(run_dir)))
    if cfg.wandb != "off":
        sinks.append(WandbSink(cfg, run_dir))
    return MetricLoggers(sinks)


def _last_env_step(run_dir: Path) -> int | None:
    """The largest env_step already in metrics.parquet (None for a fresh run)."""
    from plastix import store

    if not any((run_dir / store.METRICS_DIR).glob("part-*.parquet")):
        return None
    return int(store.read_metrics(run_dir).env_step.max())


class TensorBoardSink:
    """One tensorboardX event file writer per seed, under ``<run_dir>/tensorboard/seed_<s>``.

    It writes ``Summary`` protos itself rather than calling ``SummaryWriter.add_scalar``, which renames
    tags that are not TensorFlow op names (``dormant_ratio@0.1`` would become ``dormant_ratio_0.1``); this
    keeps tag = metric key and puts all keys of one step in one event.
    """

    def __init__(self, run_dir: Path, purge_after: int | None):
        from tensorboardX import FileWriter
        from tensorboardX.proto import event_pb2, summary_pb2

        self._file_writer, self._pb, self._event_pb = FileWriter, summary_pb2, event_pb2
        self.folder = run_dir / "tensorboard"
        self.purge_after = purge_after
        self.writers: dict[int, object] = {}

    def log(self, seed: int, steps, keys, values) -> None:
        writer = self.writers.get(seed) or self._open(seed)
        summaries: dict[int, list] = {}
        for step, key, value in zip(steps.tolist(), keys.tolist(), values.tolist()):
            summaries.setdefault(step, []).append(self._pb.Summary.Value(tag=key, simple_value=value))
        for step, items in summaries.items():
            writer.add_summary(self._pb.Summary(value=items), step)
        writer.flush()  # a killed run keeps what it logged, as it keeps its metric parts

    def _open(self, seed: int):
        folder = self.folder / f"seed_{seed}"
        # Event files are named by the second they were opened in and read in name order: a numbered suffix
        # keeps a resumed attempt's file from overwriting (or sorting before) one opened in the same second.
        attempt = len(list(folder.glob("events.out.tfevents.*"))) if folder.exists() else 0
        writer = self._file_writer(str(folder), filename_suffix=f".{attempt:04d}")
        if self.purge_after is not None:
            # A session START at step T makes TensorBoard drop the events at steps >= T that earlier
            # (killed) attempts wrote (what SummaryWriter's purge_step writes).
            step = self.purge_after + 1
            writer.add_event(self._event_pb.Event(step=step, file_version="brain.Event:2"))
            start = self._event_pb.SessionLog(status=self._event_pb.SessionLog.START)
            writer.add_event(self._event_pb.Event(step=step, session_log=start))
        self.writers[seed] = writer
        return writer

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandbSink:
    """One W&B run per seed (group = run folder name), each key plotted against ``env_step``."""

    def __init__(self, cfg, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.cfg, self.run_dir = cfg, run_dir
        self.folder = run_dir / "wandb"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runs: dict[int, object] = {}

    def log(self, seed: int, steps, keys, values) -> None:
        run = self.runs.get(seed) or self._start(seed)
        # One W&B history row per env step, holding every key logged at that step.
        rows: dict[int, dict] = {}
        for step, key, value in zip(steps.tolist(), keys.tolist(), values.tolist()):
            rows.setdefault(step, {"env_step": step})[key] = value
        for step in sorted(rows):
            run.log(rows[step])

    def _start(self, seed: int):
        config = {**dataclasses.asdict(self.cfg), "seed": seed}
        run = self.wandb.init(
            project=self.cfg.wandb_project,
            mode=self.cfg.wandb,
            dir=str(self.run_dir),
            group=self.run_dir.name,
            name=f"{self.run_dir.name}/seed_{seed}",
            id=self._run_id(seed),
            resume="allow",
            job_type="train",
            config=config,
            reinit="create_new",  # one run per seed in this process
            # No console capture (it would wrap the progress bar), no system-metrics sampler thread (the
            # trainer has the cores), no git probing.
            settings=self.wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True),
        )
        run.define_metric("env_step")
        run.define_metric("*", step_metric="env_step")
        self.runs[seed] = run
        return run

    def _run_id(self, seed: int) -> str:
        """A random W&B run id per seed, stored in the run folder so a resumed training reuses it."""
        path = self.folder / "ids.json"
        ids = json.loads(path.read_text()) if path.exists() else {}
        if str(seed) not in ids:
            ids[str(seed)] = secrets.token_hex(4)
            path.write_text(json.dumps(ids, indent=1))
        return ids[str(seed)]

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()
