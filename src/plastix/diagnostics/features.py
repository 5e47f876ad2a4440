"""Feature statistics of a hidden layer beyond dormancy and rank: Plasticine's feature norm and feature
variance, Dohare et al.'s per-unit activity, weight-matrix ranks and per-layer gradient interference.

``post`` is a layer's post-activation ``[B, ..., W]`` on a batch of ``B`` inputs (a conv map ``[B, h, w, C]``);
all functions are pure and jit/vmap compatible.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from plastix.diagnostics import rank
from plastix.diagnostics.curvature import cosine_matrix

ACTIVITY_THRESHOLD = 0.01
"""Dohare et al.'s threshold on a unit's activity below which it counts as inactive (``lop/rl/plots/fig4b.py``)."""


def _per_sample(post: jax.Array) -> jax.Array:
    """``[B, F]``: each input's features, a conv map's positions and channels flattened together."""
    return post.reshape(post.shape[0], -1).astype(jnp.float32)


def feature_norm(post: jax.Array) -> jax.Array:
    """Plasticine's feature norm (``plasticine_metrics/norm.py`` ``compute_feature_norm``): the mean over
    the batch of each input's L2 norm, ``mean_b ||h_b||_2``."""
    return jnp.mean(jnp.linalg.norm(_per_sample(post), axis=1))


def feature_variance(post: jax.Array) -> jax.Array:
    """Plasticine's feature variance (``plasticine_metrics/metrics.py`` ``compute_feature_variance``): the mean
    over the batch of the variance of each input's features, ``mean_b var_j(h_bj)``, with ``torch.var``'s
    default unbiased estimate (divide by ``F - 1``)."""
    return jnp.mean(jnp.var(_per_sample(post), axis=1, ddof=1))


def unit_activity(post: jax.Array) -> jax.Array:
    """Dohare et al.'s per-unit activity (``lop/rl/run_ppo.py``, ``pol_features_activity``): the fraction of
    the inputs on which each unit's output is positive, ``mean_t [h_i(x_t) > 0]``, ``[W]`` (a conv channel over
    inputs and positions). They take it over the last 1000 acting steps."""
    return jnp.mean((post > 0).reshape(-1, post.shape[-1]).astype(jnp.float32), axis=0)


def inactive_units(activity: jax.Array, threshold: float = ACTIVITY_THRESHOLD) -> jax.Array:
    """Fraction of units whose activity is at most ``threshold`` (Dohare et al.'s Fig. 4b: 0.01)."""
    return jnp.mean((activity <= threshold).astype(jnp.float32))


def weight_rank_stats(kernel: jax.Array) -> dict[str, jax.Array]:
    """``{"weight/srank", "weight/effective_rank", "weight/numerical_rank"}`` of a kernel as a matrix
    ``[fan_in, units]`` (a conv kernel ``[kh, kw, c_in, c_out]`` as ``[kh * kw * c_in, c_out]``), with the
    definitions of ``plastix.diagnostics.rank`` (one SVD)."""
    stats = rank.rank_stats(kernel.astype(jnp.float32))
    return {f"weight/{k}": jnp.asarray(v, jnp.float32) for k, v in stats.items()}


def gradient_cosines(per_example_loss: Callable[[Any, Any], jax.Array], params: Any, batch: Any,
                     layer_params: Callable[[Any, str], Any], layers: list[str]) -> dict[str, jax.Array]:
    """Gradient interference: the mean off-diagonal cosine ``C_ab`` (``a != b``) of the per-example loss
    gradients (``plastix.diagnostics.curvature.gradient_cosine_matrix``, computed once here), over every parameter
    (``model/grad_cosine``) and over each hidden layer's kernel and bias (``<layer>/grad_cosine``); and the
    fraction of pairs with a negative cosine (``model/grad_conflict``: updates on ``a`` raise the loss on
    ``b``). One per-example backward pass serves all of them."""
    grads = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0))(params, batch)
    out = {}
    whole = cosine_matrix(grads)
    out["model/grad_cosine"] = _off_diagonal_mean(whole)
    n = whole.shape[0]
    out["model/grad_conflict"] = jnp.sum((whole < 0) & ~jnp.eye(n, dtype=bool)) / (n * (n - 1))
    for name in layers:
        layer = layer_params(grads, name)
        if layer is not None:
            out[f"{name}/grad_cosine"] = _off_diagonal_mean(cosine_matrix(layer))
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


def _off_diagonal_mean(matrix: jax.Array) -> jax.Array:
    n = matrix.shape[0]
    return (jnp.sum(matrix) - jnp.trace(matrix)) / (n * (n - 1))
