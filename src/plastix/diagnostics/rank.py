"""Rank of a feature (or weight) matrix from its singular values (OCP Fig 8; rank collapse in the survey).

``features`` is ``[batch, H]`` (any extra leading axes are folded into the batch); a weight matrix
``[n_in, H]`` works the same way. All functions are pure and jit/vmap compatible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy


def _matrix(features: jax.Array) -> jax.Array:
    return features.reshape(-1, features.shape[-1])


def singular_values(features: jax.Array) -> jax.Array:
    """Singular values ``s_1 >= s_2 >= ...`` of ``features [..., H]`` (leading axes folded), ``[min(B, H)]``.

    A tall matrix (``B > H``, e.g. conv features over batch x positions) is first reduced to its ``[H, H]``
    QR factor ``R`` (same singular values: ``X = QR`` with orthonormal ``Q``), which keeps memory at
    ``O(B H)`` where a direct SVD of a very tall matrix may allocate ``O(B^2)``.
    """
    matrix = _matrix(features)
    if matrix.shape[0] > matrix.shape[1]:
        matrix = jnp.linalg.qr(matrix, mode="r")
    return jnp.linalg.svd(matrix, compute_uv=False)


def srank(features: jax.Array, delta: float = 0.01) -> jax.Array:
    """Effective feature rank srank_delta (Kumar et al. 2021, "Implicit under-parameterization").

    ``srank_delta = min { k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta }``.

    Args:
        features: ``[batch, H]``.
        delta: tolerated fraction of the singular-value mass (0.01 as in Kumar et al.).

    Returns:
        Integer scalar (int32) in ``[0, min(batch, H)]``; 0 for an all-zero matrix.
    """
    return _srank_from_singular_values(singular_values(features), delta)


def _srank_from_singular_values(s: jax.Array, delta: float) -> jax.Array:
    total = jnp.sum(s)
    cumulative = jnp.cumsum(s) / jnp.where(total > 0, total, 1.0)
    k = jnp.sum(cumulative < 1.0 - delta) + 1
    k = jnp.minimum(k, s.shape[0])
    return jnp.where(total > 0, k, 0).astype(jnp.int32)


def effective_rank(features: jax.Array) -> jax.Array:
    """Effective rank (Roy & Vetterli 2007): ``exp(-sum_i p_i log p_i)`` with ``p_i = s_i / sum_k s_k``.

    Args:
        features: ``[batch, H]``.

    Returns:
        Float scalar in ``[1, min(batch, H)]``; 0 for an all-zero matrix.
    """
    return _effective_rank_from_singular_values(singular_values(features))


def _effective_rank_from_singular_values(s: jax.Array) -> jax.Array:
    total = jnp.sum(s)
    p = s / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(xlogy(p, p))  # xlogy gives 0 log 0 = 0
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def numerical_rank(features: jax.Array, tol: float | jax.Array | None = None) -> jax.Array:
    """Number of singular values above a tolerance (as ``numpy.linalg.matrix_rank``).

    Args:
        features: ``[batch, H]``.
        tol: absolute threshold; ``None`` uses numpy's default ``max(batch, H) * eps * s_max``, ``eps`` the
            machine epsilon of the features' dtype.

    Returns:
        Integer scalar (int32).
    """
    matrix = _matrix(features)
    return _numerical_rank_from_singular_values(singular_values(matrix), matrix.shape, tol)


def _numerical_rank_from_singular_values(s: jax.Array, shape: tuple[int, ...], tol) -> jax.Array:
    if tol is None:
        tol = max(shape) * jnp.finfo(s.dtype).eps * jnp.max(s)
    return jnp.sum(s > tol).astype(jnp.int32)


def rank_stats(features: jax.Array, delta: float = 0.01) -> dict[str, jax.Array]:
    """``{"srank": ..., "effective_rank": ..., "numerical_rank": ...}`` of ``features [batch, H]``."""
    matrix = _matrix(features)
    s = singular_values(matrix)  # one SVD for all three
    return {
        "srank": _srank_from_singular_values(s, delta),
        "effective_rank": _effective_rank_from_singular_values(s),
        "numerical_rank": _numerical_rank_from_singular_values(s, matrix.shape, None),
    }
