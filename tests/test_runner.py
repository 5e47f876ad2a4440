"""Sweeps end to end on HalfCheetah-v4: local and Ray backends, kill and rerun, retries, query."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from plastix import experiments as ex
from plastix.query import metrics
from plastix.runner import LocalBackend, SweepError, read_manifest, run_sweep
from plastix.store import latest_checkpoint

TINY = """
description = "tiny sweep for tests"
analyses = ["return", "dormancy", "weights"]
[base]
preset = "ocp"
total_timesteps = 2048
num_steps = 256
num_minibatches = 4
update_epochs = 2
log_every = 2
checkpoint_every = 2
[grid]
activation = ["relu", "none"]
[quick]
seeds = [0, 1]
[paper]
seeds = [0, 1]
"""
UPDATES = 8  # 2048 / 256
RUNS = ["activation=relu", "activation=none"]


def tiny_file(folder: Path) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY)
    return path


def plastix(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "plastix.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def deterministic(frame: pd.DataFrame) -> pd.DataFrame:
    """Every metric row except the wall-clock ones, in a canonical order."""
    frame = frame[~frame.key.str.startswith("time/")]
    return frame.sort_values(["run", "key", "seed", "update"]).reset_index(drop=True)


def assert_complete(sweep: Path):
    """Every run finished, and each per-update key has exactly one row per seed and update."""
    for run in RUNS:
        assert latest_checkpoint(sweep / "runs" / run)[0] == UPDATES
    rows = metrics(sweep, "SELECT run, seed, \"update\", count(*) AS n FROM metrics WHERE key = 'loss/value' "
                          "GROUP BY ALL ORDER BY ALL")
    assert len(rows) == len(RUNS) * 2 * UPDATES and (rows.n == 1).all(), rows
    assert sorted(rows["update"].unique()) == list(range(1, UPDATES + 1))


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    result = plastix("run", tiny_file(folder), "--out", folder / "sweep", "--jobs", "2", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "sweep"


def test_tiny_sweep_end_to_end(full_sweep):
    assert_complete(full_sweep)
    manifest = read_manifest(full_sweep)
    assert manifest["experiments"]["tiny"]["scale"] == "quick"
    assert manifest["experiments"]["tiny"]["runs"] == RUNS
    assert manifest["runs"]["activation=none"]["values"] == {"activation": "none"}
    cfg = json.loads((full_sweep / "runs" / "activation=none" / "config.json").read_text())["config"]
    assert cfg["activation"] == "none" and cfg["seeds"] == "0,1" and cfg["preset"] == "ocp"
    # The query view recovers the run and its variant fields from the file paths and the manifest.
    df = metrics(full_sweep)
    assert {"run", "activation", "seed", "update", "env_step", "key", "value"} <= set(df.columns)
    assert set(df.activation) == {"relu", "none"} and set(df.seed) == {0, 1}
    assert (df.run == "activation=" + df.activation).all()
    # The CLI prints a table; rerunning a finished sweep trains nothing.
    out = plastix("query", full_sweep, "SELECT activation, count(DISTINCT seed) AS s FROM metrics GROUP BY 1 ORDER BY 1")
    assert out.returncode == 0 and "none" in out.stdout and "relu" in out.stdout, out.stderr
    again = plastix("run", tiny_file(full_sweep.parent), "--out", full_sweep, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2, again.stdout


class FlakyBackend(LocalBackend):
    """Local backend whose first attempt of every run crashes (exit 3) before training."""

    def __init__(self):
        super().__init__(jobs=2)
        self.attempts: list[list[str]] = []

    def start(self, cmd, log):
        self.attempts.append(cmd)
        if len(self.attempts) <= 2:
            cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
        return super().start(cmd, log)


def test_killed_sweep_reruns_to_the_uninterrupted_result_and_crashes_are_retried(full_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    runner = subprocess.Popen([sys.executable, "-m", "plastix.cli", "run", str(tiny_file(tmp_path)), "--out", str(sweep),
                               "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and runner.poll() is None:
        if any(latest_checkpoint(p) for p in (sweep / "runs").glob("*") if p.is_dir()):
            break
        time.sleep(0.2)
    assert runner.poll() is None, "the sweep finished before it could be killed"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    time.sleep(1.0)  # the trainer subprocess dies with its runner (PR_SET_PDEATHSIG)
    started = [r for r in RUNS if (sweep / "runs" / r / "config.json").exists()]
    assert started and not all(latest_checkpoint(sweep / "runs" / r) and
                               latest_checkpoint(sweep / "runs" / r)[0] == UPDATES for r in RUNS)

    backend = FlakyBackend()
    run_sweep([ex.load(tmp_path / "tiny.toml")], sweep, backend=backend, retries=1, log=lambda *_: None)
    assert len(backend.attempts) == 4  # two crashes, two retries
    assert any("--resume" in cmd for cmd in backend.attempts[2:])  # the killed run was continued, not restarted
    assert_complete(sweep)
    pd.testing.assert_frame_equal(deterministic(metrics(sweep)), deterministic(metrics(full_sweep)))


def trainers_writing_into(folder: Path) -> list[int]:
    """Pids of live processes whose command line names ``folder`` (trainers get ``--run-dir``/``--resume``)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline and "plastix.cli\0train" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_sweep_on_local_ray_killed_halfway_reruns_to_the_uninterrupted_result(full_sweep, tmp_path):
    """The Ray backend end to end (CI runs it): `plastix run --backend ray` is killed after its first
    checkpoint; its trainer dies with it (no orphan keeps writing); rerunning on a fresh local Ray instance
    resumes the killed run, trains the other, and gives exactly the local backend's rows. (One test for
    both: each tiny sweep costs about 20 CPU seconds of compiling per run.)"""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "plastix.cli", "run", str(tiny_file(tmp_path)), "--out", str(sweep),
           "--backend", "ray", "--jobs", "1"]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and runner.poll() is None:
        if any(latest_checkpoint(p) for p in (sweep / "runs").glob("*") if p.is_dir()):
            break
        time.sleep(0.05)
    assert runner.poll() is None, "the sweep finished before it could be killed"
    # Freeze the trainer at its checkpoint: Ray takes seconds to notice its driver died, time enough to
    # finish these tiny runs. Killing it is left to the death of its Ray worker.
    for pid in trainers_writing_into(sweep):
        os.kill(pid, signal.SIGSTOP)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 60  # Ray's processes share the driver's fate; the trainer dies with its worker
    while trainers_writing_into(sweep) and time.time() < deadline:
        time.sleep(0.5)
    assert not trainers_writing_into(sweep), "a trainer outlived its killed Ray sweep"
    checkpoints = [latest_checkpoint(sweep / "runs" / r) for r in RUNS]
    assert not all(c and c[0] == UPDATES for c in checkpoints), "the sweep was killed too late"

    lines: list[str] = []
    run_sweep([ex.load(tmp_path / "tiny.toml")], sweep, backend="ray", jobs=2, log=lines.append)
    assert "[sweep] activation=relu: resuming" in lines, lines  # --jobs 1: the first run was the one killed
    assert_complete(sweep)
    pd.testing.assert_frame_equal(deterministic(metrics(sweep)), deterministic(metrics(full_sweep)))


class ConfigErrorBackend(LocalBackend):
    """Runs a real `plastix train` that fails with a ConfigError (exit 2) for one run, and a trainer that
    dies by a signal (a crash) for the other; trains nothing."""

    def __init__(self, folder: Path):
        super().__init__(jobs=2)
        self.folder, self.attempts = folder, []

    def start(self, cmd, log):
        self.attempts.append(log.stem)
        if log.stem == "activation=relu":
            cmd = [sys.executable, "-m", "plastix.cli", "train", "--resume", str(self.folder / "nowhere")]
        else:
            cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        return super().start(cmd, log)


def test_a_config_error_is_reported_at_once_and_not_retried_while_crashes_are(tmp_path):
    backend, lines = ConfigErrorBackend(tmp_path), []
    with pytest.raises(SweepError) as err:
        run_sweep([ex.load(tiny_file(tmp_path))], tmp_path / "sweep", backend=backend, retries=2,
                  log=lines.append)
    assert backend.attempts.count("activation=relu") == 1 and backend.attempts.count("activation=none") == 3
    report = next(line for line in lines if line.startswith("[sweep] activation=relu: config error"))
    assert "not retried" in report and "--resume" in report and "no config.json" in report  # the log's end
    assert "activation=relu (config error: plastix train: error: --resume:" in str(err.value)
    assert "activation=none (crashed after 2 retries, exit -9)" in str(err.value)


def test_an_es_run_counts_as_finished_at_its_last_generation():
    """ES checkpoints once, at its last generation: the sweep must not take a finished ES run for a killed one."""
    from plastix.algos.es import es_config_from_train_config
    from plastix.config import preset_config
    from plastix.runner import final_checkpoint_step

    cfg = dataclasses.replace(preset_config("ocp"), optimizer="es", total_timesteps=65536)
    generations = es_config_from_train_config(cfg, **dataclasses.asdict(cfg.es)).num_generations
    assert final_checkpoint_step(cfg) == generations != cfg.num_updates
    assert final_checkpoint_step(dataclasses.replace(cfg, optimizer="ppo")) == cfg.num_updates


def test_a_sweeps_trainer_is_not_refused_for_its_own_spelled_out_options(tmp_path, monkeypatch):
    """ocp-gradient-free's quick base sets `es.popsize` for both arms; the sweep judged that on the file's keys
    (the ES arm uses it), and its PPO trainer, whose flags spell out every option, must not refuse it."""
    import plastix.cli as cli
    import plastix.runner
    import plastix.training

    ppo = next(s for s in plastix.runner.plan([ex.load("ocp-gradient-free", "quick")]) if s.values["optimizer"] == "ppo")
    cmd = plastix.runner.train_command(tmp_path / "run", ppo)
    assert cmd[4] == cli.SWEEP_CHECKED and "--es.popsize" in cmd
    ran = []
    monkeypatch.setattr(plastix.training, "train", lambda cfg: ran.append(cfg) or tmp_path)
    assert cli.train_main(cmd[4:]) == 0 and ran[0].es.popsize == 16
    assert cli.train_main(cmd[5:]) == 2  # typed by a user, the same flags are refused: es.popsize is ignored
