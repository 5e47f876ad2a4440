"""`plastix train` rejects bad input before any compute, naming the option and what is allowed."""

import pytest

from plastix.cli import main, parse_train_args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env-id", "HalfCheetah-v9"], "--env-id: unknown environment 'HalfCheetah-v9'"),
        (["--env-id", "Pendulum-v1"], "--env-id"),
        (["--shift", "dynamics"], "dynamics"),
        (["--env-id", "MontezumaRevenge-v5", "--shift", "window"], "window"),
        (["--activation", "swish"], "--activation: unknown activation 'swish'; allowed: tanh, relu, none"),
        (["--learning-rate", "0"], "--learning-rate: must be positive"),
        (["--learning-rate", "-1e-4"], "--learning-rate: must be positive"),
        (["--total-timesteps", "0"], "--total-timesteps: must be positive"),
        (["--num-steps", "-5"], "--num-steps: must be positive"),
        (["--total-timesteps", "100"], "less than one rollout"),
        (["--seeds", "0,a"], "--seeds: expected comma-separated integers"),
        (["--seeds", "1.5"], "--seeds: expected comma-separated integers"),
        (["--seeds", "1,1"], "--seeds: seeds must be distinct"),
        (["--num-minibatches", "3"], "--num-minibatches: 3 does not divide"),
        (["--gamma", "1.5"], "--gamma: must be in [0, 1]"),
        (["--dormant-taus", "-0.1"], "--dormant-taus"),
        (["--preset", "fast"], "--preset"),
    ],
)
def test_bad_input_is_reported_before_compute(tmp_path, capsys, argv, message):
    run_dir = tmp_path / "run"
    try:
        code = main(["train", *argv, "--run-dir", str(run_dir)])
    except SystemExit as exit_:  # tyro rejects some values (e.g. a preset outside its choices) itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_existing_run_dir_needs_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert main(["train", "--run-dir", str(run_dir)]) == 2
    assert f"--run-dir: {run_dir} already exists; pass --resume" in capsys.readouterr().err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "--resume:" in capsys.readouterr().err


def test_presets_and_overrides():
    ocp = parse_train_args(["--preset", "ocp"])
    assert (ocp.learning_rate, ocp.weight_decay, ocp.activation, ocp.total_timesteps) == (1e-4, 1e-4, "relu", 20_000_000)
    assert (ocp.gamma, ocp.gae_lambda, ocp.num_minibatches, ocp.update_epochs) == (0.99, 0.95, 32, 10)
    assert (ocp.clip_coef, ocp.vf_coef, ocp.max_grad_norm, ocp.lr_schedule) == (0.2, 0.5, 0.5, "whole")
    override = parse_train_args(["--preset", "ocp", "--activation", "none", "--learning-rate", "3e-4"])
    assert (override.activation, override.learning_rate, override.weight_decay) == ("none", 3e-4, 1e-4)
    cleanrl = parse_train_args([])
    assert (cleanrl.learning_rate, cleanrl.weight_decay, cleanrl.activation, cleanrl.num_steps) == (3e-4, 0.0, "tanh", 2048)
