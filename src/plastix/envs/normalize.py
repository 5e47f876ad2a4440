"""Running observation and reward normalisation, exactly as CleanRL's gymnasium / gym wrappers.

CleanRL's ``ppo_continuous_action.py`` wraps every env (one wrapper instance per env, so statistics are
per env) in ``NormalizeObservation`` -> clip to [-10, 10] -> ``NormalizeReward(gamma)`` -> clip to
[-10, 10] (gymnasium 0.29.1): ``normalize_obs``, ``normalize_reward``. CleanRL's ``ppo_procgen.py`` wraps the
*vector* env in gym 0.23.1's ``NormalizeReward`` -> clip to [-10, 10]: one statistic for all envs, updated
each step with the batch of every env's discounted return (``normalize_reward_shared``). These are pure-JAX
versions of those wrappers; statistics are kept in float64 as numpy does.

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


def rms_update_masked_batch(rms: RunningMeanStd, batch: jax.Array, mask: jax.Array) -> RunningMeanStd:
    """Merge the rows of ``batch`` (``[n_b, *shape]``) where ``mask`` (``[n_b]``) is true as one batch
    (population mean and variance over those rows, count = their number); unchanged when none is."""
    batch = batch.astype(rms.mean.dtype)
    w = mask.astype(rms.mean.dtype).reshape(mask.shape + (1,) * (batch.ndim - 1))
    count = jnp.sum(mask).astype(rms.mean.dtype)
    safe = jnp.maximum(count, 1.0)
    batch_mean = jnp.sum(w * batch, axis=0) / safe
    batch_var = jnp.sum(w * (batch - batch_mean) ** 2, axis=0) / safe
    delta = batch_mean - rms.mean
    total = rms.count + count
    mean = rms.mean + delta * count / total
    m2 = rms.var * rms.count + batch_var * count + delta**2 * rms.count * count / total
    updated = RunningMeanStd(mean, m2 / total, total)
    return jax.tree.map(lambda new, old: jnp.where(count > 0, new, old), updated, rms)


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


def shared_reward_norm_init(num_envs: int, dtype=jnp.float64) -> RewardNormState:
    """Fresh vector-env ``NormalizeReward`` state: a discounted return per env ``[num_envs]``, one statistic."""
    return RewardNormState(jnp.zeros((num_envs,), dtype), rms_init((), dtype))


def normalize_reward_shared(
    state: RewardNormState, reward: jax.Array, done: jax.Array, gamma: float, clip: float, mask: jax.Array
) -> tuple[RewardNormState, jax.Array]:
    """One step of gym 0.23.1's ``NormalizeReward`` on a vector env of ``n`` envs, then clip (CleanRL's
    ``ppo_procgen``). All arrays ``[n]``.

    ``G <- G * gamma + r``; the one statistic merges the batch ``G[valid envs]`` (gym merges all ``n``: it has
    no reset steps); ``r / sqrt(var + 1e-8)`` clipped to ``[-clip, clip]``; then ``G <- 0`` where the episode
    ended (``done``: terminated or truncated, as gym 0.23's single done flag). Where ``mask`` is false (an
    envpool reset step) that env's ``G`` is unchanged, it is left out of the batch and its reward is 0.
    """
    dtype = state.discounted_return.dtype
    g = state.discounted_return * gamma + reward.astype(dtype)
    rms = rms_update_masked_batch(state.rms, g, mask)
    normed = jnp.clip(reward.astype(dtype) / jnp.sqrt(rms.var + EPSILON), -clip, clip)
    g = jnp.where(mask, jnp.where(done, 0.0, g), state.discounted_return)
    return RewardNormState(g, rms), jnp.where(mask, normed, 0.0).astype(jnp.float32)
