"""Normalisation wrappers against a hand-written copy of gymnasium's RunningMeanStd/NormalizeReward."""

import jax.numpy as jnp
import numpy as np
import pytest

from plastix.envs import normalize as nz


class ReferenceRMS:
    """gymnasium.wrappers.utils.RunningMeanStd, transcribed."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        bm, bv, bc = np.mean(x, axis=0), np.var(x, axis=0), x.shape[0]
        delta, tot = bm - self.mean, self.count + bc
        self.mean = self.mean + delta * bc / tot
        self.var = (self.var * self.count + bv * bc + delta**2 * self.count * bc / tot) / tot
        self.count = tot


def test_running_mean_std_by_hand():
    # Two samples 1 and 3 after the initial (mean 0, var 1, count 1e-4) state.
    rms = nz.rms_init(())
    rms = nz.rms_update(rms, jnp.array([1.0]))
    rms = nz.rms_update(rms, jnp.array([3.0]))
    c0 = 1e-4
    m1 = 1.0 / (c0 + 1)
    v1 = (c0 + 1.0 * c0 / (c0 + 1)) / (c0 + 1)
    m2 = m1 + (3 - m1) / (c0 + 2)
    v2 = (v1 * (c0 + 1) + (3 - m1) ** 2 * (c0 + 1) / (c0 + 2)) / (c0 + 2)
    assert float(rms.mean) == pytest.approx(m2, rel=1e-12)
    assert float(rms.var) == pytest.approx(v2, rel=1e-12)
    assert float(rms.count) == pytest.approx(c0 + 2)


def test_observation_stream_matches_reference():
    rng = np.random.default_rng(0)
    ref, rms = ReferenceRMS((3,)), nz.rms_init((3,))
    for _ in range(50):
        x = rng.normal(2.0, 5.0, size=3)
        ref.update(x[None])
        rms = nz.rms_update_masked(rms, jnp.asarray(x), True)
        out = nz.normalize_obs(rms, jnp.asarray(x), 10.0)
        expected = np.clip((x - ref.mean) / np.sqrt(ref.var + 1e-8), -10, 10)
        np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(rms.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(rms.var, ref.var, rtol=1e-12)


def test_reward_normalisation_matches_reference_and_skips_masked_steps():
    rng = np.random.default_rng(1)
    gamma, ref, g = 0.99, ReferenceRMS(()), 0.0
    state = nz.reward_norm_init()
    for t in range(60):
        r, term = rng.normal() * 3, t == 30
        masked = t == 31  # an envpool reset step: must change nothing
        state, out = nz.normalize_reward(state, jnp.asarray(r), jnp.asarray(term), gamma, 10.0, jnp.asarray(not masked))
        if masked:
            assert float(out) == 0.0
            continue
        g = g * gamma * (1 - term) + r
        ref.update(np.array([g]))
        expected = np.clip(r / np.sqrt(ref.var + 1e-8), -10, 10)
        assert float(out) == pytest.approx(expected, rel=1e-5)
    assert float(state.rms.var) == pytest.approx(ref.var, rel=1e-12)


def _gym_0_23_normalize_reward(rewards, dones, gamma, clip=10.0):
    """gym 0.23.1's NormalizeReward on a vector env (gym/wrappers/normalize.py) then CleanRL ppo_procgen's
    np.clip(reward, -10, 10), transcribed: one RunningMeanStd(shape=()) updated with the batch of all envs'
    returns each step; the return is zeroed where done *after* normalising. rewards, dones: [T, n]."""
    rms, returns, out = ReferenceRMS(), np.zeros(rewards.shape[1]), []
    for r, d in zip(rewards, dones):
        returns = returns * gamma + r
        rms.update(returns)
        out.append(np.clip(r / np.sqrt(rms.var + 1e-8), -clip, clip))
        returns[d] = 0.0
    return np.array(out), rms


def test_shared_reward_normalisation_matches_gym_0_23_on_a_vector_env():
    rng = np.random.default_rng(1)
    T, n, gamma = 60, 4, 0.999
    rewards = rng.choice([0.0, 0.0, 1.0, 10.0], size=(T, n))
    dones = rng.random((T, n)) < 0.1
    expected, ref = _gym_0_23_normalize_reward(rewards, dones, gamma)
    state, got = nz.shared_reward_norm_init(n), []
    for r, d in zip(rewards, dones):
        state, normed = nz.normalize_reward_shared(state, jnp.asarray(r), jnp.asarray(d), gamma, 10.0,
                                                   jnp.ones(n, bool))
        got.append(np.asarray(normed))
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5)
    assert float(state.rms.var) == pytest.approx(ref.var, rel=1e-10)
    assert float(state.rms.count) == pytest.approx(ref.count)
    # Per-env statistics (gymnasium's per-env wrappers, the other mode) give other numbers on this stream.
    per_env = [nz.reward_norm_init() for _ in range(n)]
    first = [float(nz.normalize_reward(per_env[i], jnp.asarray(rewards[0, i]), jnp.asarray(False), gamma, 10.0,
                                       jnp.asarray(True))[1]) for i in range(n)]
    assert not np.allclose(first, expected[0])


def test_shared_reward_normalisation_leaves_reset_steps_out():
    # Env 1 is in an envpool reset step: its return is kept, it is not in the batch, its reward is 0.
    state = nz.shared_reward_norm_init(2).replace(discounted_return=jnp.array([1.0, 5.0], jnp.float64))
    state, normed = nz.normalize_reward_shared(state, jnp.array([2.0, 7.0]), jnp.array([False, False]), 0.5, 1e3,
                                               jnp.array([True, False]))
    ref = ReferenceRMS()
    ref.update(np.array([0.5 * 1.0 + 2.0]))  # the batch is env 0's return alone
    np.testing.assert_allclose(np.asarray(state.discounted_return), [2.5, 5.0])
    assert float(state.rms.var) == pytest.approx(ref.var) and float(state.rms.count) == pytest.approx(ref.count)
    np.testing.assert_allclose(np.asarray(normed), [2.0 / np.sqrt(ref.var + 1e-8), 0.0], rtol=1e-6)


def test_procgen_agent_normalises_rewards_with_one_statistic_per_seed():
    """The trainer's wiring: on Procgen (auto) the agent's reward statistic is one scalar per seed, updated as
    gym 0.23's vector wrapper; --reward-norm-stats per-env gives one per env."""
    import dataclasses

    import jax

    from plastix.algos.ppo import Agent
    from plastix.config import preset_config
    from plastix.envs import EnvSpec

    spec = EnvSpec("procgen", (8,), np.float32, True, 3, None, None, 100, "next_step", "reset")  # tiny stand-in
    cfg = dataclasses.replace(preset_config("cleanrl-procgen"), num_envs=3, hidden_sizes=(4,))
    agent = Agent(cfg, spec)
    assert agent.shared_reward_norm
    env = agent.init_state(jax.random.PRNGKey(0), jnp.zeros((3, 8))).env
    assert env.reward_norm.rms.var.shape == () and env.reward_norm.discounted_return.shape == (3,)
    reward, done = jnp.array([1.0, 0.0, 3.0]), jnp.array([False, True, False])
    _, learn_reward, _, _ = agent.observe(env, jnp.zeros(3, jnp.int32), jnp.zeros((3, 8)), reward, done,
                                          jnp.zeros(3, bool), {})
    expected, _ = _gym_0_23_normalize_reward(np.asarray(reward)[None], np.asarray(done)[None], cfg.gamma)
    np.testing.assert_allclose(np.asarray(learn_reward), expected[0], rtol=1e-5)
    per_env = Agent(dataclasses.replace(cfg, reward_norm_stats="per-env"), spec)
    assert per_env.init_state(jax.random.PRNGKey(0), jnp.zeros((3, 8))).env.reward_norm.rms.var.shape == (3,)
