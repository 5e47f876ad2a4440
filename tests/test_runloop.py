"""The run loop (plastix.runloop) through `plastix train`: resume semantics, damaged metrics parts, and a
per-layer metric added by registering one function (docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import pandas as pd
import pytest

from plastix import store
from plastix.cli import main, parse_train_args
from plastix.config import TrainConfig
from plastix.diagnostics import training as diag
from plastix.training import load_checkpoint, train

GRID = ["--env-id", "GridWorld-v0", "--grid-size", "5", "--grid-max-steps", "20", "--num-levels", "8",
        "--num-envs", "8", "--num-steps", "16", "--update-epochs", "1", "--num-minibatches", "2",
        "--diagnostics-every", "2", "--curvature-every", "0", "--lr-schedule", "off", "--log-every", "1",
        "--checkpoint-every", "1", "--seeds", "0", "--quiet"]
UPDATE = 8 * 16


def train_cli(argv):
    return train(parse_train_args(argv))


def deterministic(df):
    return df[~df.key.str.startswith("time/")].reset_index(drop=True)  # every row but the wall-clock ones


def saved_run(tmp_path, **change):
    """A run folder holding only a config.json (what `--resume` reads before any compute)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = dataclasses.replace(TrainConfig(), run_dir=str(run_dir), **change)
    store.write_config(run_dir, dataclasses.asdict(cfg))
    return run_dir


@pytest.mark.parametrize("flags, named", [
    (["--learning-rate", "0.5"], "--learning-rate: the run in .* was trained with 0.0003, not 0.5"),
    (["--activation", "relu"], "--activation: the run in .* was trained with 'tanh', not 'relu'"),
    (["--total-timesteps", "4096"], "would have 2 updates, fewer than the 488"),
    (["--rounds", "4"], "has 244 updates per round, the extended one would have 122"),
    (["--preset", "ocp"], "--preset: the run in .* was trained with 'cleanrl', not 'ocp'"),
])
def test_resume_refuses_an_option_that_changes_the_run_before_compute(tmp_path, capsys, flags, named):
    run_dir = saved_run(tmp_path, rounds=2)
    assert main(["train", "--resume", str(run_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(named, err), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]  # nothing was computed


@pytest.mark.slow  # four gridworld trainings: ~8 min on 2 cores under a load of 25; the refusals above run by default
def test_resume_extends_a_finished_run_and_rewrites_a_damaged_part(tmp_path, capsys):
    full = deterministic(store.read_metrics(train_cli([*GRID, "--total-timesteps", str(4 * UPDATE),
                                                        "--run-dir", str(tmp_path / "full")])))
    run_dir = train_cli([*GRID, "--total-timesteps", str(2 * UPDATE), "--run-dir", str(tmp_path / "run")])
    parts = sorted((run_dir / store.METRICS_DIR).iterdir())
    # A finished run that is not extended: nothing computed, and said so.
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert "has finished its 2 updates; nothing to do" in capsys.readouterr().err
    assert sorted((run_dir / store.METRICS_DIR).iterdir()) == parts
    # More steps continue it: the metrics of the run trained for 4 updates at once (constant learning rate).
    train_cli(["--resume", str(run_dir), "--total-timesteps", str(4 * UPDATE), "--quiet"])
    assert store.read_config(run_dir)["total_timesteps"] == 4 * UPDATE
    pd.testing.assert_frame_equal(deterministic(store.read_metrics(run_dir)), full)
    # A truncated part: readers name it, can skip it; a resume rewrites it (from the checkpoint before it).
    part = run_dir / store.METRICS_DIR / "part-000000004.parquet"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(store.DamagedPartError, match="part-000000004.parquet: damaged metrics part"):
        store.read_metrics(run_dir)
    with pytest.warns(UserWarning, match="part-000000004.parquet"):
        partial = store.read_metrics(run_dir, skip_damaged=True)
    assert set(partial["update"]) == {1, 2, 3}
    train_cli(["--resume", str(run_dir), "--quiet"])
    pd.testing.assert_frame_equal(deterministic(store.read_metrics(run_dir)), full)


def test_a_registered_layer_metric_is_logged(tmp_path, monkeypatch):
    # The whole of adding a metric: a traceable function of a layer's post-activations, and one registry line.
    def width(post):
        return jnp.asarray(post.shape[-1], jnp.float32)

    monkeypatch.setattr(diag, "LAYER_METRICS", dict(diag.LAYER_METRICS))  # unregistered after the test
    diag.register_layer_metric("toy_width", width)
    df = store.read_metrics(train_cli([*GRID, "--total-timesteps", str(UPDATE), "--diagnostics-every", "1",
                                       "--run-dir", str(tmp_path / "run")]))
    rows = df[df.key.str.endswith("/toy_width")]
    assert set(rows.key) == {"policy/layer_1/toy_width", "policy/layer_2/toy_width", "value/layer_1/toy_width",
                             "value/layer_2/toy_width"}
    assert (rows.value == 64.0).all()


def test_a_damaged_part_is_named_skipped_with_a_warning_and_resumed_from_before_it(tmp_path):
    from plastix.runloop import usable_checkpoint

    run_dir = tmp_path / "run"
    for first in (1, 3, 5):  # parts of two updates each
        store.write_metrics_part(run_dir, store.metrics_table({"return/episodic": [[1.0], [2.0]]}, [0], first, 10), first)
    for update in (2, 4):
        (run_dir / store.CHECKPOINT_DIR / f"{update:09d}").mkdir(parents=True)
    assert usable_checkpoint(run_dir)[0] == 4
    part = run_dir / store.METRICS_DIR / "part-000000003.parquet"
    part.write_bytes(part.read_bytes()[:-20])  # the footer lost, as after a full disk
    with pytest.raises(store.DamagedPartError, match=r"part-000000003\.parquet: damaged metrics part.*--resume"):
        store.read_metrics(run_dir)
    with pytest.warns(UserWarning, match=r"part-000000003\.parquet"):
        assert sorted(store.read_metrics(run_dir, skip_damaged=True)["update"]) == [1, 2, 5, 6]
    assert store.damaged_parts(run_dir) == [part]
    assert usable_checkpoint(run_dir)[0] == 2  # updates 3 and on are recomputed, the damaged part rewritten


@pytest.mark.slow  # three ES trainings on HalfCheetah-v4 (envpool): a few minutes on 2 busy cores
def test_an_es_run_extended_by_resume_equals_the_run_trained_at_once(tmp_path):
    # The resumed pool is brought back by replaying each env's resets (algos.es.ESRun.restore): the
    # generations after the resume start from the states they start from in the uninterrupted run.
    es = ["--optimizer", "es", "--shift", "task", "--rounds", "2", "--baseline", "fresh", "--es.popsize", "4",
          "--es.episode-steps", "20", "--diagnostics-every", "2", "--log-every", "2", "--checkpoint-every", "2",
          "--seeds", "0,1", "--quiet"]
    full = store.read_metrics(train_cli([*es, "--steps-per-round", "480", "--run-dir", str(tmp_path / "full")]))
    run_dir = train_cli([*es, "--steps-per-round", "480", "--rounds", "1", "--run-dir", str(tmp_path / "run")])
    assert store.latest_checkpoint(run_dir)[0] == 6
    train_cli(["--resume", str(run_dir), "--rounds", "2", "--quiet"])
    pd.testing.assert_frame_equal(deterministic(store.read_metrics(run_dir)), deterministic(full))
    cfg, final = load_checkpoint(run_dir)  # reads ES checkpoints as PPO's: the seeds' policies stacked
    assert cfg.optimizer == "es" and final.params["policy"]["layer_1"]["kernel"].shape[0] == 2


def test_query_names_and_skips_a_damaged_part(tmp_path):
    import json

    from plastix.query import connect

    run_dir = tmp_path / "run"
    for first in (1, 3):
        store.write_metrics_part(run_dir, store.metrics_table({"return/episodic": [[1.0], [2.0]]}, [0], first, 10), first)
    (run_dir / "config.json").write_text(json.dumps({"config": {"seeds": "0"}}))
    part = run_dir / store.METRICS_DIR / "part-000000003.parquet"
    part.write_bytes(part.read_bytes()[:-20])
    with pytest.warns(UserWarning, match=r"part-000000003\.parquet: damaged metrics part.*--resume"):
        con = connect(run_dir)
    assert sorted(con.execute('SELECT "update" FROM metrics').fetchdf()["update"]) == [1, 2]


def test_peak_memory_is_logged_per_part_and_shown_with_steps_per_s_in_the_report(tmp_path):
    import resource

    from plastix.report.build import build_report

    run = train_cli([*GRID, "--total-timesteps", str(2 * UPDATE), "--run-dir", str(tmp_path / "run")])
    df = store.read_metrics(run)
    peak = df[df.key == "time/peak_rss_mb"]
    assert sorted(peak["update"]) == [1, 2]  # a row per iteration, as time/sps
    # ru_maxrss of this very process (the trainer ran in it), in MiB: the run's peak is at most the peak now.
    assert 0 < peak.value.max() <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    page = build_report(run, tmp_path / "report").read_text()
    sps = df[df.key == "time/sps"].value.median()
    assert "median_steps_per_s" in page and "peak_memory_mb" in page
    assert f"<td>{round(sps)}</td>" in page and f"<td>{round(peak.value.max())}</td>" in page
