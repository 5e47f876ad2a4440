"""Non-stationary training through `plastix train`: rounds, shifts, per-round metrics, every env family."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from plastix.cli import parse_train_args
from plastix.config import TrainConfig
from plastix.envs.envpool_bridge import EnvpoolBridge
from plastix.store import read_metrics
from plastix.training import train

GRID = ["--env-id", "GridWorld-v0", "--grid-size", "5", "--grid-max-steps", "20", "--num-levels", "8",
        "--num-envs", "32", "--num-steps", "32", "--learning-rate", "2.5e-3", "--gamma", "0.95",
        "--update-epochs", "4", "--num-minibatches", "4", "--diagnostics-every", "5", "--curvature-every", "0",
        "--quiet"]


def run(tmp_path, name, argv):
    return read_metrics(train(parse_train_args([*argv, "--run-dir", str(tmp_path / name)])))


def test_ppo_learns_the_gridworld(tmp_path):
    df = run(tmp_path, "grid", [*GRID, "--total-timesteps", str(30 * 32 * 32), "--log-every", "5"])
    returns = df[df.key == "return/episodic"].sort_values("update").value.to_numpy()
    # Random play returns about -0.1 (goal sometimes reached); the shortest path returns about 0.95.
    assert returns[-3:].mean() > returns[:3].mean() + 0.3, returns
    assert "policy/layer_1/dormant_ratio@0.025" in set(df.key)


def test_three_round_permute_run_writes_per_round_metrics(tmp_path):
    df = run(tmp_path, "permute", [*GRID, "--shift", "permute", "--rounds", "3", "--steps-per-round", str(4 * 1024),
                                   "--seeds", "0,1", "--log-every", "2"])
    rounds = df[df.key.str.startswith("round/")]
    assert set(rounds.key) == {"round/index", "round/return_train", "round/return_heldout", "round/generalization_gap"}
    for seed in (0, 1):
        index = rounds[(rounds.key == "round/index") & (rounds.seed == seed)].sort_values("update")
        assert index.value.tolist() == [0.0, 1.0, 2.0] and index["update"].tolist() == [4, 8, 12]
    gap = rounds[rounds.key == "round/generalization_gap"].set_index(["seed", "update"]).value
    train_ret = rounds[rounds.key == "round/return_train"].set_index(["seed", "update"]).value
    heldout = rounds[rounds.key == "round/return_heldout"].set_index(["seed", "update"]).value
    np.testing.assert_allclose(gap, train_ret - heldout, rtol=1e-6)


def test_round_boundaries_fire_at_switch_surgeries(tmp_path):
    df = run(tmp_path, "switch", [*GRID, "--shift", "window", "--level-step", "4", "--rounds", "3",
                                  "--steps-per-round", str(2 * 1024), "--log-every", "1",
                                  "--mitigations", "reset,adam_reset"])
    applied = df[df.key == "mitigation/reset/applied"].set_index("update").value
    assert applied.to_dict() == {1: 0.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 1.0, 6: 0.0}  # first step of rounds 1 and 2
    assert df[df.key == "mitigation/adam_reset/applied"].value.sum() == 2.0


def test_task_shift_reverses_the_running_reward():
    cfg = dataclasses.replace(TrainConfig(), shift="task", rounds=2)
    action = jnp.full((1, 1, 6), 0.5, jnp.float32)
    out = {}
    for round_idx in (0, 1):  # two pools with the same seed: the same start, the same physics
        bridge = EnvpoolBridge("HalfCheetah-v4", [0], 1, scenario=cfg)
        bridge.reset()
        handle = bridge.set_round(round_idx, bridge.handle())
        _, (obs, reward, _, _, extras) = bridge.step(handle, action)
        out[round_idx] = (np.asarray(obs), float(reward[0, 0]), float(extras["x_velocity"][0, 0]))
        bridge.close()
    np.testing.assert_array_equal(out[0][0], out[1][0])  # the task shift changes the reward only
    v = out[0][2]
    assert out[1][2] == v and abs(v) > 1e-3
    # reward = x_velocity - 0.1 |a|^2 forward; -x_velocity - 0.1 |a|^2 backward
    assert out[0][1] - out[1][1] == pytest.approx(2 * v, rel=1e-4)


@pytest.mark.parametrize("env_id", ["CoinrunEasy-v0", "MontezumaRevenge-v5"])
def test_image_envs_train_through_plastix(tmp_path, env_id):
    df = run(tmp_path, "img", ["--env-id", env_id, "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
                               "--update-epochs", "1", "--total-timesteps", "64", "--log-every", "1",
                               "--diagnostics-every", "2", "--curvature-every", "0", "--quiet"])
    assert df["update"].max() == 2 and np.isfinite(df.value).all()
    assert "torso/layer_1/dormant_ratio@0.025" in set(df.key)


def test_es_through_plastix_train(tmp_path):
    df = run(tmp_path, "es", ["--optimizer", "es", "--es.popsize", "4", "--es.episode-steps", "50",
                              "--total-timesteps", "600", "--quiet"])
    assert {"return/mean", "es/grad_norm", "policy/layer_1/dormant_ratio@0.025"} <= set(df.key)
