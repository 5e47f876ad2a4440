"""Non-stationary training through `plastix train`: rounds, shifts, per-round metrics, every env family."""

import dataclasses

import jax
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


def test_baseline_fresh_copies_match_round_zero_and_restart_each_round(tmp_path):
    """``--baseline fresh``: in round 0 the copy *is* the seed (same init, same env seeds), so its return equals
    the seed's and the normalised return is exactly 1; in later rounds the copy restarts from a new network."""
    run_dir = train(parse_train_args([*GRID, "--shift", "permute", "--rounds", "3", "--steps-per-round", str(4 * 1024),
                                      "--seeds", "0,1", "--log-every", "2", "--baseline", "fresh",
                                      "--run-dir", str(tmp_path / "fresh")]))
    df = read_metrics(run_dir)
    assert set(df.seed) == {0, 1}  # the copies are not written as seeds
    warm = df[df.key == "return/episodic"].set_index(["seed", "update"]).value
    fresh = df[df.key == "baseline/return/episodic"].set_index(["seed", "update"]).value
    round0 = warm.index.get_level_values("update") <= 4
    np.testing.assert_array_equal(warm[round0], fresh.reindex(warm.index)[round0])
    assert not np.allclose(warm[~round0], fresh.reindex(warm.index)[~round0])
    rows = df[df.key.str.startswith("round/")]
    ratio = rows[rows.key == "round/normalized_return"].set_index(["update", "seed"]).value.sort_index()
    assert ratio.loc[4].tolist() == [1.0, 1.0]
    train_ret = rows[rows.key == "round/return_train"].set_index(["update", "seed"]).value
    fresh_ret = rows[rows.key == "round/return_fresh"].set_index(["update", "seed"]).value
    np.testing.assert_allclose(ratio, (train_ret / fresh_ret).reindex(ratio.index), rtol=1e-12)
    # The trained seeds' checkpoint layout for consumers (probes) holds the seeds only.
    from plastix.training import load_checkpoint

    _, states = load_checkpoint(run_dir)
    assert np.asarray(states.update).shape == (2,)


def test_reinit_fresh_members_gives_new_networks_and_keeps_the_rest():
    from plastix.training import build, reinit_fresh_members

    cfg = parse_train_args([*GRID, "--seeds", "3,4", "--baseline", "fresh", "--total-timesteps", "1024"])
    bridge, agent, states = build(cfg)
    states = states.replace(update=states.update + 7)
    new = reinit_fresh_members(agent, states, round_idx=1)
    leaf = lambda s: np.asarray([x for x in jax.tree.leaves(s.params) if x.ndim == 3][0])  # a kernel [M, in, out]
    np.testing.assert_array_equal(leaf(new)[:2], leaf(states)[:2])  # the seeds are untouched
    assert not np.allclose(leaf(new)[2:], leaf(states)[2:])  # the copies have new weights ...
    assert not np.allclose(leaf(new)[2], leaf(new)[3])  # ... one per seed
    np.testing.assert_array_equal(np.asarray(new.update), np.asarray(states.update))  # same lr schedule
    np.testing.assert_array_equal(np.asarray(new.key), np.asarray(states.key))
    bridge.close()


@pytest.mark.parametrize("env_id,shift", [("HalfCheetah-v4", "permute"), ("CoinrunEasy-v0", "window")])
def test_envpool_scenarios_write_heldout_returns(tmp_path, env_id, shift):
    df = run(tmp_path, "held", ["--env-id", env_id, "--shift", shift, "--rounds", "2", "--steps-per-round", "64",
                                "--num-envs", "2", "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1",
                                "--num-levels", "10", "--level-step", "5", "--heldout-levels", "20",
                                "--heldout-episodes", "2", "--log-every", "1", "--diagnostics-every", "0",
                                "--curvature-every", "0", "--quiet"])
    heldout = df[df.key == "round/return_heldout"]
    assert len(heldout) == 2 and np.isfinite(heldout.value).all()
    if env_id == "HalfCheetah-v4":  # a 1,000-step episode of a barely trained policy: clearly non-zero
        assert (heldout.value.abs() > 1.0).all()


def test_heldout_pools_hold_unseen_levels_and_permutations():
    from plastix.envs.image_envs import ImageEnvBridge
    from plastix.envs.shifts import heldout_permutation

    cfg = parse_train_args(["--env-id", "CoinrunEasy-v0", "--shift", "window", "--rounds", "3", "--num-levels", "10",
                            "--level-step", "5", "--heldout-levels", "7"])
    pool = ImageEnvBridge(cfg.env_id, [0], 1, scenario=cfg, heldout=True)
    assert (pool.start_level, pool.num_levels) == (20, 7)  # past round 2's window [10, 20)
    pool.close()
    cfg = dataclasses.replace(cfg, env_id="HalfCheetah-v4", shift="permute")
    pool = EnvpoolBridge(cfg.env_id, [0], 1, scenario=cfg, heldout=True)
    perm = np.asarray(pool.handle()[1].perm)
    np.testing.assert_array_equal(perm, np.asarray(heldout_permutation(jax.random.PRNGKey(0), 17)))
    assert not np.array_equal(perm, np.arange(17))
    pool.close()
