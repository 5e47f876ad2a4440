"""MJX HalfCheetah-v4 (plastix.envs.mjx_halfcheetah) against envpool's, and its functional API.

The compiled rollout is built once per module (compilation dominates the time on CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco.mjx", reason="needs the `mjx` extra (mujoco-mjx)")

import envpool  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import plastix  # noqa: E402,F401  (x64)
from plastix.envs.mjx_halfcheetah import MJXBridge, MJXHalfCheetah  # noqa: E402
from plastix.envs.replay import ReplayRecord  # noqa: E402

HORIZON = 25  # env steps compared with envpool (the feet touch the ground within it)
# Measured max |MJX - envpool| over 32 envs, same initial state and uniform random actions (float64):
# obs 1e-10 at 10 steps, 4e-8 at 25, 3e-6 at 35, 1e-4 at 40-50, 2e-3 at 60; rewards (float32) equal up to
# ~30 steps. Differences at rounding level grow chaotically (MuJoCo C 4.0 vs envpool's MuJoCo 3.6 diverges
# from envpool just as fast), so only a short horizon is testable; ~300x margin at 25 steps.
OBS_TOL = 1e-5
REWARD_TOL = 1e-5
SEEDS, N = [0, 5], 2  # 4 envs


@pytest.fixture(scope="module")
def bridge():
    return MJXBridge("HalfCheetah-v4", SEEDS, N)


@pytest.fixture(scope="module")
def rollout(bridge):
    """``(handle, actions [T,S,n,A]) -> (handle, (obs, reward, terminated, truncated, extras) over T)``."""
    return jax.jit(lambda h, a: jax.lax.scan(bridge.step, h, a))


def _envpool_reference(actions):
    """envpool HalfCheetah-v4 with the same per-env seeds: initial obs, x0, and per-step obs / reward."""
    env = envpool.make("HalfCheetah-v4", env_type="gymnasium", num_envs=4, seed=0, env_seed=[0, 1, 5, 6])
    obs0, _ = env.reset()
    obs, rew, x0 = [], [], None
    for t, a in enumerate(actions.reshape(len(actions), 4, 6)):
        o, r, term, trunc, info = env.step(a.astype(np.float64))
        assert not term.any() and not trunc.any()
        if t == 0:  # envpool reports x_position 0 at reset; recover qpos[0] = x1 - v1 * dt
            x0 = info["x_position"] - info["x_velocity"] * 0.05
        obs.append(o)
        rew.append(r)
    env.close()
    return obs0, x0, np.array(obs), np.array(rew)


def test_matches_envpool_on_short_horizon(bridge, rollout):
    actions = np.random.default_rng(0).uniform(-1, 1, (HORIZON, 2, 2, 6)).astype(np.float32)
    obs0, x0, ref_obs, ref_rew = _envpool_reference(actions)
    bridge.reset()
    env = bridge.env
    qpos = np.concatenate([x0[:, None], obs0[:, :8]], axis=1)
    state, rnd = bridge.handle()
    state = env.state_from(qpos, obs0[:, 8:], state.key)
    _, (obs, rew, term, trunc, extras) = rollout((state, rnd), jnp.asarray(actions))
    obs = np.asarray(obs).reshape(HORIZON, 4, 17)
    rew = np.asarray(rew).reshape(HORIZON, 4)
    assert not np.asarray(term).any() and not np.asarray(trunc).any()
    assert np.abs(obs[:10] - ref_obs[:10]).max() < 1e-9
    assert np.abs(obs - ref_obs).max() < OBS_TOL
    assert np.abs(rew - ref_rew).max() < REWARD_TOL
    assert np.abs(ref_rew).max() > 0.5  # the comparison is not vacuous


def test_bridge_interface_and_auto_reset(bridge, rollout):
    raw = bridge.reset()
    assert raw.shape == (2, 2, 17) and raw.dtype == np.float64
    assert (bridge.obs_dim, bridge.action_dim, bridge.max_episode_steps) == (17, 6, 1000)
    np.testing.assert_array_equal(bridge.action_low, -np.ones(6, np.float32))
    np.testing.assert_array_equal(bridge.action_high, np.ones(6, np.float32))
    h, rnd = bridge.handle()
    # env 1 is 2 steps from truncation: steps 0,1 step; step 1 truncates; step 2 is envpool's reset step.
    h = h.replace(steps=h.steps.at[1].set(998))
    actions = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (HORIZON, 2, 2, 6)), jnp.float32)
    first = rollout((h, rnd), actions)
    (h_end, _), (obs, rew, term, trunc, extras) = first
    assert obs.shape == (HORIZON, 2, 2, 17) and obs.dtype == jnp.float64
    assert rew.shape == (HORIZON, 2, 2) and rew.dtype == jnp.float32
    assert term.dtype == jnp.bool_ and not term.any()
    trunc = np.asarray(trunc).reshape(HORIZON, 4)
    assert trunc[1, 1] and trunc.sum() == 1
    assert np.asarray(rew).reshape(HORIZON, 4)[2, 1] == 0.0
    # the reset step's obs is a fresh episode's first obs, drawn from the env's own key chain
    fresh_obs, _ = bridge.env.reset(h.key[1])
    np.testing.assert_allclose(np.asarray(obs).reshape(HORIZON, 4, 17)[2, 1], np.asarray(fresh_obs), rtol=0, atol=1e-12)
    assert int(h_end.steps[1]) == HORIZON - 3 and int(h_end.steps[0]) == HORIZON
    # determinism: the same handle and actions give identical results
    xv = np.asarray(extras["x_velocity"]).reshape(HORIZON, 4)
    assert xv[2, 1] == 0.0 and np.abs(xv[:, 0]).max() > 0
    np.testing.assert_allclose(  # reward = x_velocity - 0.1 |a|^2 (float32)
        np.asarray(rew)[:, 0, 0], xv[:, 0] - 0.1 * np.sum(np.asarray(actions, np.float64)[:, 0, 0] ** 2, -1), atol=1e-5
    )
    jax.tree_util.tree_map(np.testing.assert_array_equal, rollout((h, rnd), actions), first)


def test_reset_distribution_and_determinism(bridge):
    env = MJXHalfCheetah()
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    obs, state = jax.jit(jax.vmap(env.reset))(keys)
    init = np.asarray(env.init_qpos)
    dq = np.asarray(state.qpos) - init
    assert np.abs(dq).max() <= 0.1 and np.abs(dq).max() > 0.099  # U(-0.1, 0.1)
    assert abs(dq.mean()) < 0.005 and abs(dq.std() - 0.1 / np.sqrt(3)) < 0.003
    v = np.asarray(state.qvel)
    assert abs(v.mean()) < 0.005 and abs(v.std() - 0.1) < 0.003  # 0.1 * N(0, 1)
    np.testing.assert_array_equal(np.asarray(obs), np.concatenate([state.qpos[:, 1:], state.qvel], axis=1))
    assert (np.asarray(state.steps) == 0).all() and not np.asarray(state.done).any()
    obs2, _ = jax.jit(jax.vmap(env.reset))(keys)
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(obs2))  # same key, same start
    assert not np.allclose(obs[0], obs[1])  # different keys, different starts
    # the bridge: same seeds, same obs; envs of different seeds differ
    a, b = bridge.reset(), bridge.reset()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0, 0], a[0, 1]) and not np.allclose(a[0, 0], a[1, 0])


@pytest.mark.slow
def test_single_step_jit_equals_vmap():
    env = MJXHalfCheetah()
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    _, states = jax.vmap(env.reset)(keys)
    actions = jax.random.uniform(jax.random.PRNGKey(2), (3, 6), jnp.float64, -1, 1)
    batched = jax.jit(jax.vmap(env.step))(states, actions)
    single = jax.jit(env.step)
    for i in range(3):
        one = single(jax.tree_util.tree_map(lambda x: x[i], states), actions[i])
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y), rtol=0, atol=1e-12), batched, one
        )


def test_bad_env_id_and_shift():
    with pytest.raises(ValueError, match="--env-id"):
        MJXBridge("Hopper-v4", [0], 1)

    class Scenario:
        shift = "window"

    with pytest.raises(ValueError, match="--shift"):
        MJXBridge("HalfCheetah-v4", [0], 1, scenario=Scenario())


@pytest.mark.slow
def test_restore_replays_records(bridge, rollout):
    """``restore`` of the rollout's replay record (resets, actions since the last reset) rebuilds it."""
    bridge.reset()
    h, rnd = bridge.handle()
    h = h.replace(steps=h.steps.at[1].set(998))  # env 1: truncates at step 1, resets at step 2
    actions = np.random.default_rng(3).uniform(-1, 1, (HORIZON, 2, 2, 6)).astype(np.float32)
    (h_end, _), _ = rollout((h, rnd), jnp.asarray(actions))
    flat = actions.reshape(HORIZON, 4, 6)
    rec = np.zeros((4, 1000, 6), np.float32)
    lengths = np.array([HORIZON, HORIZON - 3, HORIZON, HORIZON])
    for i in range(4):
        rec[i, : lengths[i]] = flat[HORIZON - lengths[i] :, i]
    other = MJXBridge("HalfCheetah-v4", SEEDS, N)
    other.reset()
    other.restore(ReplayRecord(episode_actions=rec, actions_recorded=lengths,
                               num_resets=np.array([0, 1, 0, 0])))
    got, _ = other.handle()
    np.testing.assert_allclose(np.asarray(got.qpos), np.asarray(h_end.qpos), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(got.qvel), np.asarray(h_end.qvel), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(got.steps), np.asarray(h_end.steps))
