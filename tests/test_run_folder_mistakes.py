"""Layer names are checked against the network before compute; a run that fails before its first update
leaves no run folder behind (a folder with metrics stays, to be resumed)."""

import types

import jax.numpy as jnp
import pytest

from plastix import store, training
from plastix.cli import main, parse_train_args
from plastix.mitigations.build import check_layer_names, layer_names

GRID = ["--env-id", "GridWorld-v0", "--grid-size", "4", "--grid-max-steps", "8", "--num-envs", "2",
        "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "1", "--hidden-sizes", "8",
        "--total-timesteps", "64", "--log-every", "1", "--diagnostics-every", "0", "--curvature-every", "0",
        "--quiet"]
PARAMS = {"policy": {"layer_1": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)},
                     "output": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}},
          "log_std": jnp.zeros(2)}


def test_layer_names_are_the_module_paths():
    assert layer_names(PARAMS) == ["log_std", "policy", "policy/layer_1", "policy/output"]  # tree (sorted) order


@pytest.mark.parametrize("layers, message", [
    (("finall",), "no layer 'finall' in this network; did you mean 'final'?"),
    (("policy/layer_2",), "did you mean 'policy/layer_1'?"),
    (("policy/output", "valu"), "no layer 'valu'"),
])
def test_a_misnamed_layer_is_refused_with_the_closest_name(layers, message):
    cfg = parse_train_args(["--mitigations", "reset", "--reset.layers", *layers])
    with pytest.raises(ValueError, match=r"^--reset.layers: .*" + message.replace("?", r"\?")) as err:
        check_layer_names(cfg, ("reset",), PARAMS)
    assert "allowed: final, all, or layers log_std, policy, policy/layer_1, policy/output" in str(err.value)
    for good in (("final",), ("all",), ("policy/layer_1", "log_std"), ("policy/output/kernel",)):
        check_layer_names(parse_train_args(["--mitigations", "reset", "--reset.layers", *good]), ("reset",), PARAMS)


def test_train_refuses_a_misnamed_layer_before_making_the_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [*GRID, "--rounds", "2", "--mitigations", "reset", "--reset.layers", "finall", "--run-dir", str(run_dir)]
    assert main(["train", *argv]) == 2
    assert "--reset.layers: no layer 'finall' in this network; did you mean 'final'?" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_run_failing_before_its_first_update_leaves_no_folder(tmp_path, monkeypatch):
    def fail(trainer, run_dir, *args):
        raise RuntimeError("compile failed")

    bridge = types.SimpleNamespace(handle=lambda: None, close=lambda: None)
    monkeypatch.setattr(training, "build", lambda cfg: (bridge, None, None))  # no env or network: no compute
    monkeypatch.setattr(training, "run_loop", fail)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="compile failed"):
        training.train(parse_train_args([*GRID, "--run-dir", str(run_dir)]))
    assert not run_dir.exists()

    def fail_after_one_update(trainer, run_dir, *args):  # a part written: the run can be resumed, it stays
        table = store.metrics_table({"loss/value": jnp.zeros((1, 1))}, [0], 1, trainer.cfg.batch_size)
        store.write_metrics_part(run_dir, table, 1)
        raise RuntimeError("killed")

    monkeypatch.setattr(training, "run_loop", fail_after_one_update)
    with pytest.raises(RuntimeError, match="killed"):
        training.train(parse_train_args([*GRID, "--run-dir", str(run_dir)]))
    assert (run_dir / "config.json").exists()


def test_an_es_run_failing_before_its_first_generation_leaves_no_folder(tmp_path, monkeypatch):
    import plastix.algos.es as es

    def fail(es_cfg, run_dir, loggers=None, **kwargs):
        run_dir.mkdir(parents=True, exist_ok=True)  # as train_es does before its first generation
        raise RuntimeError("compile failed")

    monkeypatch.setattr(es, "train_es", fail)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="compile failed"):
        training.train(parse_train_args(["--optimizer", "es", "--quiet", "--run-dir", str(run_dir)]))
    assert not run_dir.exists()
