"""TensorBoard and W&B mirrors of the metrics: written per seed, read back with independent readers."""

import dataclasses
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from plastix import loggers as lg
from plastix import store
from plastix.config import ConfigError, preset_config

SEEDS = [3, 7]
BATCH = 256
KEYS = ["loss/value", "policy/dormant_ratio@0.025", "return/episodic"]


def chunk(first_update: int, updates: int = 3, offset: float = 0.0):
    """A metrics table as training writes it: ``{key: [K, S]}``, one NaN return (no episode ended)."""
    rng = np.random.default_rng(first_update)
    metrics = {k: rng.normal(size=(updates, len(SEEDS))) + offset for k in KEYS}
    metrics["return/episodic"][0, 1] = np.nan
    return store.metrics_table(metrics, SEEDS, first_update, BATCH)


def rows(table, seed: int) -> dict[tuple[str, int], float]:
    df = table.to_pandas()
    df = df[df.seed == seed]
    return {(k, int(s)): v for k, s, v in zip(df.key, df.env_step, df.value)}


def config(**changes):
    return dataclasses.replace(preset_config("cleanrl"), **changes)


def test_off_is_a_no_op_that_imports_nothing(tmp_path):
    code = (
        "import sys; from plastix import loggers, store, config; import numpy as np\n"
        "cfg = config.preset_config('cleanrl')\n"
        f"with loggers.open_loggers(cfg, {str(tmp_path)!r}) as lg:\n"
        "    assert lg.sinks == []\n"
        "    lg.log(store.metrics_table({'a': np.ones((2, 1))}, [0], 1, 8))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboardX', 'wandb', 'tbparse')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_package_is_a_config_error_naming_the_flag_and_the_extra(monkeypatch):
    real = lg.importlib.util.find_spec
    monkeypatch.setattr(lg.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboardX", "wandb") else real(name, *a))
    lg.check_loggers(config())  # both off: nothing needed
    with pytest.raises(ConfigError, match=r"--tensorboard.*plastix\[log\]"):
        lg.check_loggers(config(tensorboard=True))
    with pytest.raises(ConfigError, match=r"--wandb offline.*plastix\[log\]"):
        lg.check_loggers(config(wandb="offline"))


# ------------------------------------------------------------------------------------------ TensorBoard
def read_tensorboard(folder) -> dict[int, dict[tuple[str, int], float]]:
    """``{seed: {(tag, step): value}}`` as TensorBoard's Python loader sees each seed's folder (every event
    file in name order, events a restarted writer purged left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, dict] = {}
    for sub in sorted(folder.iterdir()):
        events = EventAccumulator(str(sub), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        seed_rows = out[int(sub.name.removeprefix("seed_"))] = {}
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                assert (tag, event.step) not in seed_rows, f"{tag} at step {event.step} logged twice"
                seed_rows[(tag, event.step)] = event.value
    return out


def assert_same_rows(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)], rtol=1e-6)


def test_tensorboard_writes_every_row_per_seed(tmp_path):
    pytest.importorskip("tensorboard")
    first, second = chunk(1), chunk(4)
    with lg.open_loggers(config(tensorboard=True), tmp_path) as loggers:
        loggers.log(first)
        loggers.log(second)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["seed_3", "seed_7"]
    got = read_tensorboard(tmp_path / "tensorboard")
    for seed in SEEDS:
        assert_same_rows(got[seed], {**rows(first, seed), **rows(second, seed)})
    assert ("return/episodic", BATCH) not in got[7]  # the NaN row was not written


def test_tensorboard_of_a_resumed_run_hides_the_steps_it_rewrites(tmp_path):
    pytest.importorskip("tensorboard")
    first, stale, redone = chunk(1), chunk(4), chunk(4, offset=100.0)
    with lg.open_loggers(config(tensorboard=True), tmp_path) as loggers:
        loggers.log(first)
        loggers.log(stale)
    # The resumed run kept only the first part (its checkpoint is at update 3) and trains updates 4-6 again.
    store.write_metrics_part(tmp_path, first, 1)
    with lg.open_loggers(config(tensorboard=True), tmp_path) as loggers:
        loggers.log(redone)
    got = read_tensorboard(tmp_path / "tensorboard")
    for seed in SEEDS:
        assert_same_rows(got[seed], {**rows(first, seed), **rows(redone, seed)})


# ------------------------------------------------------------------------------------ Weights & Biases
def wandb_records(path):
    """The protobuf records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of chunked records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_wandb(folder) -> dict[str, dict]:
    """``{run name: {"group", "project", "rows": {(key, env_step): value}}}`` from offline run files."""
    out = {}
    for path in sorted(folder.glob("offline-run-*/run-*.wandb")):
        run, rows_ = None, {}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run = rec.run
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                for key, value in row.items():
                    if not key.startswith("_") and key != "env_step":
                        rows_[(key, row["env_step"])] = value
        out[run.display_name] = dict(group=run.run_group, project=run.project, id=run.run_id, rows=rows_)
    return out


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """Keep W&B's settings, cache and staging out of the home folder, and off the network."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_wandb_offline_writes_one_run_per_seed_grouped_by_run_folder(tmp_path, wandb_home):
    run_dir = tmp_path / "HalfCheetah-v4__ocp__relu__20261123-010000"
    run_dir.mkdir()
    first, second = chunk(1), chunk(4)
    with lg.open_loggers(config(wandb="offline", wandb_project="plastix-test"), run_dir) as loggers:
        loggers.log(first)
        loggers.log(second)
    import wandb

    wandb.teardown()  # wandb-core writes the run files; let it finish before reading them
    runs = read_wandb(run_dir / "wandb")
    assert sorted(runs) == [f"{run_dir.name}/seed_{s}" for s in SEEDS]
    ids = json.loads((run_dir / "wandb" / "ids.json").read_text())
    for seed in SEEDS:
        run = runs[f"{run_dir.name}/seed_{seed}"]
        assert (run["group"], run["project"], run["id"]) == (run_dir.name, "plastix-test", ids[str(seed)])
        assert_same_rows(run["rows"], {**rows(first, seed), **rows(second, seed)})


def test_plastix_train_sends_every_metric_row_to_tensorboard(tmp_path):
    """The trainer's hook: every row of metrics.parquet (per-update and per-round) reaches TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    run_dir = train(parse_train_args([
        "--env-id", "GridWorld-v0", "--grid-size", "5", "--num-levels", "8", "--num-envs", "8", "--num-steps", "32",
        "--num-minibatches", "2", "--update-epochs", "1", "--shift", "permute", "--rounds", "2",
        "--steps-per-round", "512", "--log-every", "1", "--diagnostics-every", "0", "--curvature-every", "0",
        "--seeds", "0,1", "--tensorboard", "--quiet", "--run-dir", str(tmp_path / "run")]))
    df = read_metrics(run_dir)
    for seed in (0, 1):
        acc = EventAccumulator(str(run_dir / "tensorboard" / f"seed_{seed}"), size_guidance={"scalars": 0})
        acc.Reload()
        rows = df[df.seed == seed]
        assert set(acc.Tags()["scalars"]) == set(rows.key)
        for key in ("return/episodic", "round/return_heldout"):
            events = {e.step: e.value for e in acc.Scalars(key)}
            expected = rows[rows.key == key].set_index("env_step").value
            assert events.keys() == set(expected.index)
            np.testing.assert_allclose([events[s] for s in expected.index], expected.to_numpy(), rtol=1e-6)
