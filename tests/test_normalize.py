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
