"""Each shift changes exactly what it should between rounds, and nothing else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plastix  # noqa: F401
from plastix.envs import shifts as sh
from plastix.envs.gridworld import GRIDWORLD_ID, GridWorld

KEY = jax.random.PRNGKey(7)


def test_permute_vector_same_values_consistent_within_and_different_across_rounds():
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 48), jnp.float32)
    p0, p1, p2 = (sh.observation_permutation(KEY, r, 48) for r in range(3))
    assert jnp.array_equal(p0, jnp.arange(48))  # round 0: the original task
    assert jnp.array_equal(sh.observation_permutation(KEY, 1, 48), p1)  # fixed within a round
    assert not jnp.array_equal(p1, p2)
    out = sh.permute_vector(obs, p1)
    assert jnp.array_equal(jnp.sort(out, -1), jnp.sort(obs, -1))  # same multiset per observation
    assert jnp.array_equal(out, obs[:, p1])
    held = sh.heldout_permutation(KEY, 48)
    assert all(not jnp.array_equal(held, sh.observation_permutation(KEY, r, 48)) for r in range(10))
    jitted = jax.jit(lambda r: sh.observation_permutation(KEY, r, 48))  # round index may be traced
    assert jnp.array_equal(jitted(1), p1)


def test_permute_patches_moves_whole_patches():
    img = jax.random.randint(jax.random.PRNGKey(1), (2, 64, 64, 3), 0, 256, jnp.int32).astype(jnp.uint8)
    perm = sh.patch_permutation(KEY, 1, 16)
    out = sh.permute_patches(img, perm, 16)
    assert out.shape == img.shape and out.dtype == jnp.uint8
    patches = lambda x: np.asarray(x).reshape(2, 16, 4, 16, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 256, 4, 4, 3)
    assert np.array_equal(patches(out), patches(img)[:, np.asarray(perm)])
    assert np.array_equal(np.sort(np.asarray(out).ravel()), np.sort(np.asarray(img).ravel()))
    assert jnp.array_equal(sh.permute_patches(img, sh.patch_permutation(KEY, 0, 16), 16), img)
    with pytest.raises(ValueError, match="grids that do: .*12"):
        sh.permute_patches(jnp.zeros((84, 84, 4), jnp.uint8), sh.patch_permutation(KEY, 1, 16), 16)


def test_window_and_expand_level_ranges():
    assert [sh.window_levels(r, 10, 3).ids() for r in range(3)] == [list(range(0, 10)), list(range(3, 13)), list(range(6, 16))]
    assert [sh.expand_levels(r, 10, 3).ids() for r in range(3)] == [list(range(10)), list(range(13)), list(range(16))]
    held = sh.heldout_levels(3, 10, 3, 50)
    assert (held.start, held.num_levels) == (16, 50)
    for r in range(3):
        for f in (sh.window_levels, sh.expand_levels):
            assert not set(f(r, 10, 3).ids()) & set(held.ids())
    assert sh.train_levels("permute", 5, 10, 3) == sh.LevelRange(0, 10)


def test_gridworld_round_params_window_expand():
    env = GridWorld()
    w = [sh.gridworld_round_params(env, "window", r, KEY, n=4, k=2) for r in range(2)]
    assert list(w[1].level_ids) == [2, 3, 4, 5]
    assert jnp.array_equal(w[0].walls[2:], w[1].walls[:2])  # shared levels identical: the level index is the seed
    e = [sh.gridworld_round_params(env, "expand", r, KEY, n=4, k=2, num_rounds=3) for r in range(3)]
    assert [int(p.num_active) for p in e] == [4, 6, 8] and all(p.walls.shape == (8, 8, 8) for p in e)
    assert jnp.array_equal(e[0].walls, e[2].walls)  # same bank, only the active count grows
    # reset only ever draws active levels
    levels = jax.jit(jax.vmap(lambda k: env.reset(k, e[0])[1].level))(jax.random.split(KEY, 256))
    assert set(np.asarray(levels).tolist()) == {0, 1, 2, 3}


def test_gridworld_task_moves_goals_only_and_dynamics_changes_slip_only():
    env = GridWorld()
    p0, p1, p2 = (sh.gridworld_round_params(env, "task", r, KEY, n=4) for r in range(3))
    base = env.make_params(jnp.arange(4))
    assert jnp.array_equal(p0.goals, base.goals)
    for p in (p1, p2):
        assert jnp.array_equal(p.walls, base.walls) and jnp.array_equal(p.starts, base.starts)
        assert jnp.all(jnp.any(p.goals != base.goals, -1))
        assert not jnp.any(p.walls[jnp.arange(4), p.goals[:, 0], p.goals[:, 1]])  # goals on free cells
    assert not jnp.array_equal(p1.goals, p2.goals)
    d = [sh.gridworld_round_params(env, "dynamics", r, KEY, n=4) for r in range(3)]
    assert float(d[0].slip_prob) == 0.0 and 0 < float(d[1].slip_prob) < 0.5 and float(d[1].slip_prob) != float(d[2].slip_prob)
    assert jnp.array_equal(d[1].walls, base.walls) and jnp.array_equal(d[1].goals, base.goals)


def test_task_rewards():
    assert [float(sh.task_direction(r)) for r in range(3)] == [1.0, -1.0, 1.0]
    # HalfCheetah: reward = reward_run (= x_velocity) + reward_ctrl
    v, ctrl = jnp.float32(2.0), jnp.float32(-0.3)
    assert float(sh.direction_reward(v + ctrl, v, 1.0)) == pytest.approx(1.7)
    assert float(sh.direction_reward(v + ctrl, v, -1.0)) == pytest.approx(-2.3)
    assert float(sh.target_velocity_reward(v + ctrl, v, 1.5)) == pytest.approx(-0.8)
    t1, t2 = sh.target_velocity(KEY, 1), sh.target_velocity(KEY, 2)
    assert 0.0 <= float(t1) < 3.0 and float(t1) != float(t2) and float(sh.target_velocity(KEY, 1)) == float(t1)


def test_check_shift_supported():
    for shift in sh.SHIFTS:
        sh.check_shift_supported(GRIDWORLD_ID, shift)
    sh.check_shift_supported("HalfCheetah-v4", "task")
    sh.check_shift_supported("CoinrunEasy-v0", "window")
    sh.check_shift_supported("MontezumaRevenge-v5", "permute")
    with pytest.raises(ValueError, match=r"--shift dynamics .*HalfCheetah-v4.*friction.*supports: none, permute, task"):
        sh.check_shift_supported("HalfCheetah-v4", "dynamics")
    with pytest.raises(ValueError, match="MontezumaRevenge-v5.*supports: none, permute"):
        sh.check_shift_supported("MontezumaRevenge-v5", "window")
    with pytest.raises(ValueError, match="--shift: unknown shift 'rotate'"):
        sh.check_shift_supported(GRIDWORLD_ID, "rotate")
    with pytest.raises(ValueError, match="--env-id: unknown environment"):
        sh.check_shift_supported("NoSuchEnv-v9", "none")


def test_relative_permutation_maps_one_view_onto_another():
    x = np.arange(10.0) * 3
    old, new = np.random.default_rng(0).permutation(10), np.random.default_rng(1).permutation(10)
    rel = sh.relative_permutation(jnp.asarray(old), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(sh.permute_vector(jnp.asarray(x[old]), rel)), x[new])


def test_permuted_mujoco_envs_normalise_like_the_unshifted_envs_permuted():
    """HalfCheetah with and without --shift permute, same seeds and actions, through the trainer's pieces
    (bridge step, Agent.observe, the round switch): after the switch the permuted env's normalised
    observations are the unshifted env's, permuted (before the fix, dimension i was normalised with the
    running statistics of the dimension that sat at i in round 0)."""
    import dataclasses

    from plastix.cli import parse_train_args
    from plastix.training import _start_round, build

    base = parse_train_args(["--env-id", "HalfCheetah-v4", "--num-envs", "2", "--num-steps", "8", "--num-minibatches",
                             "1", "--rounds", "2", "--steps-per-round", "16", "--quiet"])
    runs = []
    for cfg in (base, dataclasses.replace(base, shift="permute")):
        bridge, agent, states = build(cfg)

        def step(states, handle, action, bridge=bridge, agent=agent):
            handle, (raw_obs, reward, terminated, truncated, extras) = bridge.step(handle, action)
            env, *_ = jax.vmap(agent.observe)(states.env, action, raw_obs, reward, terminated, truncated, extras)
            return states.replace(env=env), handle

        runs.append([cfg, bridge, agent, states, bridge.handle(), jax.jit(step)])
    actions = np.clip(np.random.default_rng(0).normal(size=(20, 1, 2, 6)), -1, 1).astype(np.float32)
    perm = np.asarray(runs[1][2].observation_permutation(1))
    assert not np.array_equal(perm, np.arange(17))
    for t, action in enumerate(actions):
        if t == 10:  # the shift
            for run in runs:
                cfg, bridge, agent, states, handle, _ = run
                run[4] = bridge.set_round(1, handle)
                run[3] = _start_round(cfg, agent, states, 1)
        for run in runs:
            run[3], run[4] = run[5](run[3], run[4], jnp.asarray(action))
        plain, permuted = (np.asarray(run[3].env.obs) for run in runs)
        np.testing.assert_allclose(permuted, plain[..., perm] if t >= 10 else plain, rtol=1e-6, atol=1e-6)
    plain_rms, permuted_rms = (run[3].env.obs_rms for run in runs)
    np.testing.assert_allclose(np.asarray(permuted_rms.var), np.asarray(plain_rms.var)[..., perm], rtol=1e-12)
    for run in runs:
        run[1].close()
