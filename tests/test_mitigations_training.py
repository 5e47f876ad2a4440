"""Mitigations inside `plastix train`: combined in one run, logged, and rejected when contradictory."""

import dataclasses

import numpy as np
import pytest

from plastix.cli import main
from plastix.config import ConfigError, TrainConfig
from plastix.mitigations.registry import ReDoOptions
from plastix.store import read_metrics
from plastix.training import train

TINY = dataclasses.replace(TrainConfig(), preset="ocp", activation="relu", weight_decay=1e-4, total_timesteps=2048,
                           num_steps=512, num_minibatches=8, log_every=2, quiet=True, diagnostics_every=2)


def test_several_mitigations_compose_in_one_run(tmp_path):
    cfg = dataclasses.replace(
        TINY,
        mitigations="redo,l2_init,layernorm,soft_sp,weight_clip,cbp,adam_reset",
        redo=ReDoOptions(tau=0.1, every=16),
        adam_reset=dataclasses.replace(TINY.adam_reset, every=40, at_switch=False),
        run_dir=str(tmp_path / "run"),
    )
    df = read_metrics(train(cfg))
    assert np.isfinite(df.value).all()
    keys = set(df.key)
    assert {"mitigation/redo/recycled", "mitigation/cbp/replaced", "mitigation/adam_reset/applied"} <= keys
    # 4 updates x 80 gradient steps: ReDo fires every 16 steps -> 5 times per update.
    assert set(df[df.key == "mitigation/redo/applied"].value) == {5.0}
    assert set(df[df.key == "mitigation/adam_reset/applied"].value) == {2.0}
    assert "policy/layer_1/dormant_ratio@0.1" in keys  # diagnostics still on


def test_scheduled_ocp_perturbation_fires_on_schedule_in_training(tmp_path):
    """The trainer hands MAGI to the OCP perturbation lazily (``BatchInfo.magi_fn``); it must still be
    computed, and the perturbation act, on exactly the scheduled gradient steps."""
    from plastix.mitigations.registry import OCPPerturbOptions

    cfg = dataclasses.replace(
        TINY, mitigations="ocp_perturb", run_dir=str(tmp_path / "run"),
        ocp_perturb=OCPPerturbOptions(threshold=0.5, relative=True, every=20, at_switch=False),
    )
    df = read_metrics(train(cfg))
    assert set(df[df.key == "mitigation/ocp_perturb/applied"].value) == {4.0}  # 80 steps per update / 20
    perturbed = df[df.key == "mitigation/ocp_perturb/perturbed"].value
    assert (perturbed > 0).all()  # relative threshold 0.5: some neurons sit below half the layer's mean MAGI


def test_contradictory_mitigations_fail_before_compute(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--mitigations", "crelu", "--activation", "tanh", "--run-dir", str(run_dir)])
    assert code == 2 and not run_dir.exists()
    err = capsys.readouterr().err
    assert "--mitigations" in err and "crelu" in err and "tanh" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mitigations", "redo,magic"], "unknown mitigation"),
        (["--mitigations", "reset,injection"], "injection"),
        (["--mitigations", "redo", "--redo.every", "0"], "--redo.every"),
        (["--mitigations", "redo", "--redo.every", "None"], "never fire"),
    ],
)
def test_bad_mitigation_options_name_the_option(tmp_path, capsys, argv, message):
    run_dir = tmp_path / "run"
    assert main(["train", *argv, "--run-dir", str(run_dir)]) == 2
    assert message in capsys.readouterr().err and not run_dir.exists()
