"""Running observation and reward normalisation, exactly as CleanRL's gymnasium wrappers.

CleanRL's ``ppo_continuous_action.py`` wraps every env (one wrapper instance per env, so statistics are
per env) in ``NormalizeObservation`` -> clip to [-10, 10] -> ``NormalizeReward(gamma)`` -> clip to
[-10, 10]. These are pure-JAX versions of those wrappers; statistics are kept in float64 as numpy does.

``RunningMeanStd`` (gymnasium ``utils.RunningMeanStd``, Chan et al. parallel variance):
starts at mean 0, var 1, count 1e-4, and merges a batch (mean m_b, population variance v_b, count n_b):

    delta = m_b - mean;  n = count + n_b
    mean' = mean + delta * n_b / n
    var'  = (var * count + v_b * n_b + delta^2 * count * n_b / n) / n
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

EPSILON = 1e-8  # gymnasium's epsilon inside sqrt(var + eps) of both wrappers
INITIAL_COUNT = 1e-4  # gymnasium's RunningMeanStd(epsilon=1e-4)


@struct.dataclass
class RunningMeanStd:
    """Running mean/variance of a stream; ``mean``/``var`` have the stream's shape, ``count`` is scalar."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def rms_init(shape: tuple[int, ...], dtype=jnp.float64) -> RunningMeanStd:
    """A fresh ``RunningMeanStd`` for samples of ``shape`` (mean 0, var 1, count 1e-4)."""
    return RunningMeanStd(jnp.zeros(shape, dtype), jnp.ones(shape, dtype), jnp.asarray(INITIAL_COUNT, dtype))


def rms_update(rms: RunningMeanStd, batch: jax.Array) -> RunningMeanStd:
    """Merge ``batch`` (``[n_b, *shape]``) into ``rms`` with the parallel-variance formula above."""
    batch = batch.astype(rms.mean.dtype)
    batch_mean = batch.mean(axis=0)
    batch_var = batch.var(axis=0)
    batch_count = batch.shape[0]
    delta = batch_mean - rms.mean
    total = rms.count + batch_count
    mean = rms.mean + delta * batch_count / total
    m2 = rms.var * rms.count + batch_var * batch_count + delta**2 * rms.count * batch_count / total
    return RunningMeanStd(mean, m2 / total, total)


def rms_update_masked(rms: RunningMeanStd, sample: jax.Array, mask: jax.Array) -> RunningMeanStd:
    """Merge one sample (a batch of size 1) when ``mask`` is true; otherwise return ``rms`` unchanged."""
    updated = rms_update(rms, sample[None])
    return jax.tree.map(lambda new, old: jnp.where(mask, new, old), updated, rms)


def normalize_obs(rms: RunningMeanStd, obs: jax.Array, clip: float) -> jax.Array:
    """``clip((obs - mean) / sqrt(var + 1e-8), -clip, clip)`` as float32 (what the network sees)."""
    normed = (obs.astype(rms.mean.dtype) - rms.mean) / jnp.sqrt(rms.var + EPSILON)
    return jnp.clip(normed, -clip, clip).astype(jnp.float32)


@struct.dataclass
class RewardNormState:
    """``NormalizeReward`` state of one env: the discounted return and its running statistics."""

    discounted_return: jax.Array  # scalar float64
    rms: RunningMeanStd


def reward_norm_init(dtype=jnp.float64) -> RewardNormState:
    """Fresh ``NormalizeReward`` state (discounted return 0)."""
    return RewardNormState(jnp.zeros((), dtype), rms_init((), dtype))


def normalize_reward(
    state: RewardNormState, reward: jax.Array, terminated: jax.Array, gamma: float, clip: float, mask: jax.Array
) -> tuple[RewardNormState, jax.Array]:
    """One ``NormalizeReward`` + clip step (gymnasium >= 0.29 semantics).

    ``G <- G * gamma * (1 - terminated) + r``; update the statistics with ``G``; return
    ``clip(r / sqrt(var + 1e-8), -clip, clip)``. Only termination (not truncation) zeroes ``G``, as in
    gymnasium. Where ``mask`` is false (an envpool auto-reset step, which CleanRL's same-step autoreset
    never produces) the state is unchanged and the returned reward is 0.
    """
    dtype = state.discounted_return.dtype
    g = state.discounted_return * gamma * (1.0 - terminated.astype(dtype)) + reward.astype(dtype)
    rms = rms_update_masked(state.rms, g, mask)
    new_state = RewardNormState(jnp.where(mask, g, state.discounted_return), rms)
    normed = jnp.clip(reward.astype(dtype) / jnp.sqrt(rms.var + EPSILON), -clip, clip)
    return new_state, jnp.where(mask, normed, 0.0).astype(jnp.float32)
