"""Sweeps: train every variant of one or more experiments, locally or on Ray; resumable; retried.

A sweep folder::

    SWEEP_DIR/sweep.json              manifest: experiments (name, scale, file, variants) and runs
    SWEEP_DIR/runs/<variant>/         one ``plastix train`` run folder per variant (all seeds inside)
    SWEEP_DIR/logs/<variant>.log      stdout and stderr of every attempt of that run
    SWEEP_DIR/analyses/<experiment>/  results of non-training experiments (e.g. task_switch.parquet)

Each variant is one ``python -m plastix.cli train ...`` subprocess whose seeds are trained together (vmapped)
in one process. The local backend runs up to ``jobs`` (default: the CPU count) of them at once; the Ray
backend runs each as a Ray task (``num_cpus=1``) that starts the same subprocess on a worker (run folders
must then be on a file system every node sees). Experiments that share a variant with the same config
share its run folder, so ``ocp-fig1``, ``ocp-weights`` and ``ocp-ranks`` in one sweep train once.

Resuming: a run whose newest checkpoint is at its final update is skipped; a run folder with a
``config.json`` but no final checkpoint is continued with ``train --resume`` (which drops metric parts
written after its newest checkpoint, so no row is duplicated or lost); a run whose subprocess crashes (a
signal, or a non-zero exit) is retried (``retries`` times, resuming each time). A trainer that exits with
code 2 (``plastix train``'s exit for a ``ConfigError`` or a bad flag) is not retried, since it would fail
the same way: the sweep reports it at once with the end of its log, finishes the other runs, then fails.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plastix import experiments as ex
from plastix import store

MANIFEST = "sweep.json"
CONFIG_ERROR_EXIT = 2  # `plastix train`'s exit code for a ConfigError (and argparse/tyro usage errors)


class SweepError(RuntimeError):
    """A sweep that cannot run (conflicting runs, a run that failed after every retry, ...)."""


@dataclass
class RunSpec:
    """One run of a sweep: a variant with its TrainConfig overrides and seeds."""

    name: str
    values: dict[str, Any]
    overrides: dict[str, Any]
    seeds: list[int]

    def config(self, run_dir: Path):
        return ex.config_for(self.overrides, self.seeds, run_dir=str(run_dir), quiet=True)

    def key(self) -> str:
        """What makes two runs the same run (for sharing between experiments)."""
        return json.dumps({"overrides": self.overrides, "seeds": self.seeds}, sort_keys=True, default=list)


# ------------------------------------------------------------------------------------------- planning
def training_experiment(exp: ex.Experiment) -> ex.Experiment:
    """The experiment whose runs ``exp`` needs (its source for a task switch)."""
    return ex.load(exp.source, exp.scale) if exp.kind == "task-switch" else exp


def plan(experiments: list[ex.Experiment]) -> list[RunSpec]:
    """The distinct runs the experiments need, in order; a name used twice with different configs fails."""
    runs: dict[str, RunSpec] = {}
    for exp in experiments:
        src = training_experiment(exp)
        for v in src.variants:
            spec = RunSpec(v.name, _jsonable(v.values), _jsonable(v.overrides), list(src.seeds))
            if v.name in runs and runs[v.name].key() != spec.key():
                raise SweepError(
                    f"run {v.name!r} is needed by two experiments with different configs; run them in separate sweep folders"
                )
            runs[v.name] = spec
    return list(runs.values())


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def write_manifest(sweep_dir: Path, experiments: list[ex.Experiment], runs: list[RunSpec]) -> dict:
    """Create or extend ``sweep.json``; an existing run with a different config fails (no silent mixing)."""
    path = sweep_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"experiments": {}, "runs": {}}
    for spec in runs:
        old = manifest["runs"].get(spec.name)
        new = dataclasses.asdict(spec)
        if old is not None and RunSpec(**old).key() != spec.key():
            raise SweepError(
                f"{path}: run {spec.name!r} already exists with another config ({old['overrides']}, seeds "
                f"{old['seeds']}); use another --out folder"
            )
        manifest["runs"][spec.name] = new
    for exp in experiments:
        data = exp.to_dict()
        data["runs"] = [v.name for v in training_experiment(exp).variants]
        manifest["experiments"][exp.name] = data
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=list))
    os.replace(tmp, path)
    return manifest


def read_manifest(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise SweepError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- run state
def run_status(run_dir: Path, spec: RunSpec) -> str:
    """``done`` (final checkpoint present), ``partial`` (a config.json: resume it) or ``new``."""
    if not (run_dir / "config.json").exists():
        return "new"
    latest = store.latest_checkpoint(run_dir)
    if latest is not None and latest[0] >= final_checkpoint_step(spec.config(run_dir)):
        return "done"
    return "partial"


def final_checkpoint_step(cfg) -> int:
    """The step number of a finished run's last checkpoint: PPO updates, or ES generations (``--optimizer es``)."""
    if cfg.optimizer == "es":
        from plastix.algos.es import es_config_from_train_config

        return es_config_from_train_config(cfg, **dataclasses.asdict(cfg.es)).num_generations
    return cfg.num_updates


def train_command(run_dir: Path, spec: RunSpec) -> list[str]:
    """``python -m plastix.cli train ...`` for a fresh run, or ``... train --resume RUN_DIR`` for a started one."""
    cmd = [sys.executable, "-m", "plastix.cli", "train"]
    if (run_dir / "config.json").exists():
        return cmd + ["--resume", str(run_dir), "--quiet"]
    if run_dir.exists():  # killed before config.json was written: nothing to keep
        shutil.rmtree(run_dir)
    from plastix.cli import SWEEP_CHECKED

    return cmd + [SWEEP_CHECKED] + config_flags(spec.config(run_dir))


def config_flags(cfg) -> list[str]:
    """The ``plastix train`` flags that reproduce ``cfg`` (tyro's spelling: ``--a-b``, ``--no-flag``,
    ``--group.option`` for nested option groups)."""
    return ["--preset", cfg.preset] + _flags(cfg, "")


def _flags(obj, prefix: str) -> list[str]:
    hints = typing.get_type_hints(type(obj))
    flags: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = "--" + prefix + f.name.replace("_", "-")
        if f.name == "preset" and not prefix:
            continue
        if dataclasses.is_dataclass(value):
            flags += _flags(value, prefix + f.name.replace("_", "-") + ".")
        elif value is None:
            if f.default is not None:
                flags += [name, "None"]
        elif hints[f.name] is bool:
            flags.append(name if value else f"--{prefix}no-{f.name.replace('_', '-')}")
        elif isinstance(value, tuple):
            flags += [name, *map(str, value)]
        else:
            flags += [name, repr(value) if isinstance(value, float) else str(value)]
    return flags


# -------------------------------------------------------------------------------------------- backends
def _prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: trainers then outlive a killed runner
        return None


_PRCTL = _prctl()  # looked up here: the forked child of a threaded process must not import or load


def _die_with_parent():  # runs in the child before exec: a killed runner takes its trainers with it
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalBackend:
    """Subprocesses on this machine, at most ``jobs`` at once."""

    def __init__(self, jobs: int | None = None):
        self.jobs = max(1, jobs or os.cpu_count() or 1)

    def start(self, cmd: list[str], log: Path):
        out = open(log, "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        out.close()
        return proc

    def poll(self, handle) -> int | None:
        return handle.poll()

    def stop(self, handle) -> None:
        if handle.poll() is None:
            handle.terminate()
            try:
                handle.wait(10)
            except subprocess.TimeoutExpired:
                handle.kill()

    def close(self) -> None:
        pass


def _ray_train(cmd: list[str], log: str) -> int:
    """Ray task body: the same subprocess, on whichever node runs the task."""
    cmd = [sys.executable, *cmd[1:]]
    with open(log, "ab") as out:
        # A cancelled task or a dead worker must not leave its trainer writing into the run folder (Ray 2.x
        # also kills a dead worker's children; this holds without that setting too).
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


class RayBackend:
    """Each run is a Ray task (1 CPU) that starts the trainer subprocess.

    ``address``: a cluster to join (as for ``ray.init``); without it ``RAY_ADDRESS``, and without that a
    new local instance with ``jobs`` CPUs (never a cluster some other ``ray start`` left on this machine).
    """

    def __init__(self, address: str | None = None, jobs: int | None = None):
        try:
            import ray
        except ImportError:
            raise SweepError("--backend ray needs Ray: pip install 'plastix[ray]'") from None
        self.ray = ray
        self.owns = not ray.is_initialized()
        if self.owns:
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = dict(num_cpus=jobs or os.cpu_count()) if address == "local" else {}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
        self.task = ray.remote(num_cpus=1, max_retries=0)(_ray_train)
        self.jobs = max(1, jobs or int(ray.cluster_resources().get("CPU", 1)))

    def start(self, cmd: list[str], log: Path):
        return self.task.remote(cmd, str(log.absolute()))

    def poll(self, handle) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(handle))
        except Exception:  # the worker died: count it as a crash and retry
            return -1

    def stop(self, handle) -> None:
        self.ray.cancel(handle, force=True)

    def close(self) -> None:
        if self.owns:
            self.ray.shutdown()


# ----------------------------------------------------------------------------------------------- sweep
def run_sweep(
    experiments: list[ex.Experiment],
    sweep_dir: str | Path,
    backend: str | Any = "local",
    address: str | None = None,
    jobs: int | None = None,
    retries: int = 2,
    log=print,
) -> Path:
    """Train every run the experiments need into ``sweep_dir`` (skipping finished ones), then run their
    non-training steps (task switch). Returns ``sweep_dir``.

    ``backend``: ``"local"`` (subprocesses, ``jobs`` at once), ``"ray"`` (``ray.init(address)``, a local
    instance when ``address`` is None) or an object with ``start(cmd, log)``, ``poll``, ``stop``, ``close``
    and ``jobs``. A run whose subprocess fails is retried ``retries`` times (resuming its folder).
    """
    sweep_dir = Path(sweep_dir)
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    lock = open(sweep_dir / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SweepError(f"{sweep_dir}: another `plastix run` is using this sweep folder") from None
    try:
        runs = plan(experiments)
        write_manifest(sweep_dir, experiments, runs)
        if backend == "local":
            engine = LocalBackend(jobs)
        elif backend == "ray":
            engine = RayBackend(address, jobs)
        elif hasattr(backend, "start"):  # a backend object (start, poll, stop, close, jobs)
            engine = backend
        else:
            raise SweepError(f"--backend: unknown backend {backend!r}; allowed: local, ray")
        try:
            _train_all(runs, sweep_dir, engine, retries, log)
        finally:
            engine.close()
        for exp in experiments:
            if exp.kind == "task-switch":
                from plastix.experiments.task_switch import run_task_switch

                t0 = time.perf_counter()
                out = run_task_switch(exp, sweep_dir)
                log(f"[sweep] {exp.name}: task switch done in {time.perf_counter() - t0:.0f}s -> {out}")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    return sweep_dir


def _train_all(runs: list[RunSpec], sweep_dir: Path, engine, retries: int, log) -> None:
    pending = [(spec, 0) for spec in runs if _needs_training(spec, sweep_dir, log)]
    active: dict[str, tuple[Any, RunSpec, int, float]] = {}
    failed: list[str] = []
    try:
        while pending or active:
            while pending and len(active) < engine.jobs:
                spec, attempt = pending.pop(0)
                cmd = train_command(sweep_dir / "runs" / spec.name, spec)
                handle = engine.start(cmd, sweep_dir / "logs" / f"{spec.name}.log")
                active[spec.name] = (handle, spec, attempt, time.perf_counter())
            time.sleep(0.2)
            for name, (handle, spec, attempt, t0) in list(active.items()):
                rc = engine.poll(handle)
                if rc is None:
                    continue
                del active[name]
                outcome = _judge(spec, rc, attempt, time.perf_counter() - t0, sweep_dir, retries, log)
                if outcome == "retry":
                    pending.append((spec, attempt + 1))
                elif outcome != "done":
                    failed.append(f"{name} ({outcome})")
    except BaseException:
        for handle, *_ in active.values():
            engine.stop(handle)
        raise
    if failed:
        raise SweepError(f"runs failed: {'; '.join(failed)} (logs in {sweep_dir}/logs)")


def _needs_training(spec: RunSpec, sweep_dir: Path, log) -> bool:
    status = run_status(sweep_dir / "runs" / spec.name, spec)
    log(f"[sweep] {spec.name}: {dict(done='finished, skipped', partial='resuming', new='queued')[status]}")
    return status != "done"


def _judge(spec: RunSpec, rc: int, attempt: int, seconds: float, sweep_dir: Path, retries: int, log) -> str:
    """What an ended attempt means: ``done``, ``retry`` (a crash with retries left) or why the run failed."""
    name, logfile = spec.name, sweep_dir / "logs" / f"{spec.name}.log"
    if rc == 0 and run_status(sweep_dir / "runs" / name, spec) == "done":
        log(f"[sweep] {name}: done in {seconds:.0f}s")
        return "done"
    if rc == CONFIG_ERROR_EXIT:
        tail = log_tail(logfile)
        log(f"[sweep] {name}: config error (exit {rc}), not retried; the end of {logfile}:\n{tail}")
        return f"config error: {tail.splitlines()[-1] if tail else 'no output'}"
    if attempt < retries:
        log(f"[sweep] {name}: crashed (exit {rc}), retry {attempt + 1}/{retries}; see logs/{name}.log")
        return "retry"
    log(f"[sweep] {name}: crashed (exit {rc}) after {retries} retries; see {logfile}")
    return f"crashed after {retries} retries, exit {rc}"


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` non-empty lines of a log file ('' if it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))  # the end is enough, and logs can be long
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
