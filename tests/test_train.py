"""End-to-end training on HalfCheetah-v4: run folder, learning, determinism, seed groups, kill and resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plastix.config import TrainConfig
from plastix.store import latest_checkpoint, read_metrics
from plastix.training import train

TINY = dataclasses.replace(
    TrainConfig(), total_timesteps=4096, num_steps=512, num_minibatches=8, log_every=2, checkpoint_every=2, quiet=True
)


def deterministic_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Every row but the wall-clock ones (time/*), which no two runs share."""
    return df[~df.key.str.startswith("time/")].reset_index(drop=True)


def test_short_ocp_run_writes_a_valid_folder(tmp_path):
    cfg = dataclasses.replace(TINY, preset="ocp", activation="relu", learning_rate=1e-4, weight_decay=1e-4,
                              run_dir=str(tmp_path / "run"))
    run_dir = train(cfg)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["weight_decay"] == 1e-4 and saved["config"]["activation"] == "relu"
    assert {"plastix", "jax", "envpool"} <= set(saved["versions"])
    df = read_metrics(run_dir)
    assert list(df.columns) == ["seed", "update", "env_step", "key", "value"]
    for key in ("return/episodic", "loss/value", "loss/policy", "loss/entropy", "optim/grad_norm", "optim/lr", "time/sps"):
        assert key in set(df.key), key
    assert df["update"].max() == 8 and df["env_step"].max() == 4096
    assert np.isfinite(df.value).all()
    assert latest_checkpoint(run_dir)[0] == 8
    # One episode of HalfCheetah is 1000 steps; 4096 steps end 4 (the 4th at step 4003: 1000 + 3 reset steps).
    assert (df.key == "return/episodic").sum() == 4
    assert set(df[df.key == "return/episode_length"].value) == {1000.0}


def test_ppo_learns_halfcheetah(tmp_path):
    cfg = dataclasses.replace(TrainConfig(), seeds="0,1", num_envs=2, num_steps=1024, total_timesteps=50_000,
                              learning_rate=1e-3, quiet=True, run_dir=str(tmp_path / "run"))
    df = read_metrics(train(cfg))
    gains = []
    for _, g in df[df.key == "return/episodic"].groupby("seed"):
        values = g.sort_values("update").value.to_numpy()
        gains.append(values[-3:].mean() - values[:3].mean())
    # Measured: -380 -> -180 in both seeds (gain ~180); random-policy returns vary by ~50.
    assert min(gains) > 80 and np.mean(gains) > 100, gains


def test_same_seed_same_config_gives_identical_metrics(tmp_path):
    a = read_metrics(train(dataclasses.replace(TINY, run_dir=str(tmp_path / "a"))))
    b = read_metrics(train(dataclasses.replace(TINY, run_dir=str(tmp_path / "b"))))
    pd.testing.assert_frame_equal(deterministic_rows(a), deterministic_rows(b))
    c = read_metrics(train(dataclasses.replace(TINY, seeds="5", run_dir=str(tmp_path / "c"))))
    assert not deterministic_rows(a).value.equals(deterministic_rows(c).value)


def test_seed_in_a_group_equals_seed_alone(tmp_path):
    group = read_metrics(train(dataclasses.replace(TINY, seeds="1,4,7", run_dir=str(tmp_path / "g"))))
    alone = read_metrics(train(dataclasses.replace(TINY, seeds="4", run_dir=str(tmp_path / "a"))))
    pd.testing.assert_frame_equal(
        deterministic_rows(group[group.seed == 4].reset_index(drop=True)), deterministic_rows(alone)
    )


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    flags = ["--total-timesteps", "20480", "--num-steps", "512", "--num-minibatches", "8", "--log-every", "2",
             "--checkpoint-every", "4", "--seeds", "0,2", "--quiet"]
    full = read_metrics(train_cli(flags + ["--run-dir", str(tmp_path / "full")]))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "plastix.cli", "train", *flags, "--run-dir", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(killed) if killed.exists() else None
        if ckpt is not None and ckpt[0] >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = latest_checkpoint(killed)[0]
    assert interrupted_at < 40
    resumed = read_metrics(train_cli(["--resume", str(killed), "--quiet"]))
    pd.testing.assert_frame_equal(deterministic_rows(resumed), deterministic_rows(full))


def train_cli(argv):
    from plastix.cli import parse_train_args

    return train(parse_train_args(argv))
