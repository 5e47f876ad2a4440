"""Plasticine's interventions (RLE-Foundation/Plasticine): Parseval regularisation, Normalize-and-Project and
TRAC. (Its Deep Fourier Features are the activation ``"dff"`` of ``plastix.nets``: ``--mitigations dff``.)"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from plastix.mitigations._layers import get_path, hidden_layers, to_dict
from plastix.mitigations.surgery import Surgery, f32

Params = Any

TRAC_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
"""``start_trac``'s default betas (``plasticine/trac.py``)."""


# ------------------------------------------------------------------------------------------------ Parseval
class ParsevalState(NamedTuple):
    """``parseval`` is stateless."""


def parseval_layers(params: Params) -> list[tuple[str, ...]]:
    """Kernel paths that ``parseval`` regularises: the Dense (2-D) incoming kernel of every hidden layer
    (``plastix.mitigations._layers.hidden_layers``); never an output layer or a conv."""
    params = to_dict(params)
    paths = [layer.incoming + ("kernel",) for layer in hidden_layers(params)]
    return [p for p in paths if get_path(params, p).ndim == 2]


def parseval_penalty(kernel: jax.Array, lam: float, s: float) -> jax.Array:
    """Plasticine's ``PRLinear.pr_loss``: ``lam * ||W W^T - s I||_F^2`` with ``W = kernel^T`` ``[out, in]``."""
    w = kernel.T
    return lam * jnp.sum((w @ w.T - s * jnp.eye(w.shape[0], dtype=w.dtype)) ** 2)


def parseval(lam: float = 1e-3, s: float = 1.0) -> optax.GradientTransformation:
    """Parseval regularisation (Chung et al. 2024, "Parseval regularization for continual RL"; Plasticine's
    ``PRLinear``): adds the gradient of ``lam * ||W W^T - s I||_F^2`` for each hidden Dense kernel
    (``parseval_layers``), ``4 lam K (K^T K - s I)`` for a Flax kernel ``K = W^T``, so each layer's rows
    stay orthogonal with squared norm ``s``. Plasticine adds it to the loss (before the clip:
    ``make_optimizer(loss_transforms=...)``); lam 1e-3, s 1.0 are its defaults."""

    def init(params):
        del params
        return ParsevalState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("parseval needs params: call update(updates, state, params)")
        updates, params = to_dict(updates), to_dict(params)
        for path in parseval_layers(params):
            k = get_path(params, path).astype(jnp.float32)
            grad = 4.0 * lam * k @ (k.T @ k - s * jnp.eye(k.shape[1], dtype=k.dtype))
            g = get_path(updates, path)
            updates = _set(updates, path, (g + grad).astype(g.dtype))
        return updates, state

    return optax.GradientTransformation(init, update)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


# ------------------------------------------------------------------------------------- Normalize-and-Project
def _is_weight(path) -> bool:
    """A weight in Plasticine's sense (a parameter named ``weight``: Linear and conv kernels and a norm's
    scale), in Flax names: ``kernel`` or ``scale``. Biases and ``log_std`` are not."""
    last = path[-1]
    return str(getattr(last, "key", last)) in ("kernel", "scale")


def normalize_and_project() -> Surgery:
    """Normalize-and-Project's projection (Lyle et al. 2024; Plasticine's ``plasticine_normalize_and_project``):
    every weight tensor ``W`` (kernels and norm scales, ``_is_weight``) is rescaled to its norm at
    initialisation, ``W <- W * ||W_0||_F / ||W||_F`` (when ``||W|| > 0``); biases are left alone. Plasticine
    applies it after each rollout (``plastix train``: once per update, ``--nap.every`` to change it).
    Optimizer state untouched, as there.

    Returns:
      A ``Surgery`` whose state holds the initial norms; metric ``mitigation/nap/scale_mean``: the mean
      factor applied.
    """

    def init(params, key):
        del key
        return jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.linalg.norm(p.astype(jnp.float32).reshape(-1)), to_dict(params))

    def apply(params, opt_state, state, batch_info, key):
        del batch_info, key
        params = to_dict(params)
        factors = []

        def project(path, p, n0):
            if not _is_weight(path):
                return p
            norm = jnp.linalg.norm(p.astype(jnp.float32).reshape(-1))
            factor = jnp.where(norm > 0, n0 / jnp.where(norm > 0, norm, 1.0), 1.0)
            factors.append(factor)
            return (p * factor).astype(p.dtype)

        params = jax.tree_util.tree_map_with_path(project, params, state)
        scale = jnp.mean(jnp.stack(factors)) if factors else f32(1.0)
        return params, opt_state, state, {"mitigation/nap/scale_mean": f32(scale)}

    return Surgery(init, apply)


# ------------------------------------------------------------------------------------------------------ TRAC
def erfi(x: jax.Array, terms: int = 200) -> jax.Array:
    """The imaginary error function ``erfi(x) = -i erf(ix) = 2/sqrt(pi) sum_n x^(2n+1) / (n! (2n+1))``, by its
    series (every term has the sign of ``x``: no cancellation). Arguments are clipped to ``|x| <= 9``, where
    float32 ``erfi`` (about ``e^81``) still fits."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), -9.0, 9.0)
    x2 = x * x

    def body(n, carry):
        term, total = carry  # term = x^(2n+1) / n!
        term = term * x2 / n
        return term, total + term / (2 * n + 1)

    _, total = jax.lax.fori_loop(1, terms, body, (x, x))
    return 2.0 / math.sqrt(math.pi) * total


class TRACState(NamedTuple):
    """TRAC's state (``plasticine/trac.py`` ``_init_state``): the base optimizer's state, the reference
    parameters ``theta_ref`` and, per beta, ``s``, ``variance`` and ``sigma``."""

    inner: Any
    theta_ref: Params
    s: jax.Array
    variance: jax.Array
    sigma: jax.Array


def trac(base: optax.GradientTransformation, betas: Sequence[float] = TRAC_BETAS, s_prev: float = 1e-8,
         eps: float = 1e-8) -> optax.GradientTransformation:
    """TRAC (Muppidi et al. 2024, "Fast TRAC: a parameter-free optimizer for lifelong RL"), wrapping ``base``
    as Plasticine's ``start_trac`` wraps Adam. With ``theta`` the parameters, ``g`` the gradient and ``u`` the
    base optimizer's update, each step (``_step``)::

        delta = (theta - theta_ref) / (sum(s) + eps);   h = <delta, g>;   delta <- delta + u
        variance <- betas^2 variance + h^2;             sigma <- betas sigma - h
        s <- s_prev / erfi(1/sqrt 2) * erfi(sigma / (sqrt 2 sqrt(variance) + eps))
        theta <- theta_ref + delta * max(sum(s), 0)

    ``theta_ref`` is the ``params`` given to ``init``; ``s`` starts at 0, ``variance`` at 0, ``sigma`` at
    1e-8. Returned as the update ``theta_new - theta``.
    """
    betas_arr = jnp.asarray(betas, jnp.float32)
    f_term = s_prev / erfi(1.0 / math.sqrt(2.0))

    def init(params):
        n = len(betas)
        return TRACState(base.init(params), jax.tree.map(jnp.asarray, params), jnp.zeros(n, jnp.float32),
                         jnp.zeros(n, jnp.float32), jnp.full((n,), 1e-8, jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("trac needs params: call update(updates, state, params)")
        step, inner = base.update(updates, state.inner, params)
        s_sum = jnp.sum(state.s)
        delta = jax.tree.map(lambda p, r: (p - r) / (s_sum + eps), params, state.theta_ref)
        h = sum(jnp.vdot(d, g) for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(updates)))
        delta = jax.tree.map(lambda d, u: d + u, delta, step)
        variance = betas_arr**2 * state.variance + h**2
        sigma = betas_arr * state.sigma - h
        s = f_term * erfi(sigma / (jnp.sqrt(2.0) * jnp.sqrt(variance) + eps))
        scale = jnp.maximum(jnp.sum(s), 0.0)
        new = jax.tree.map(lambda r, d, p: (r + d * scale - p).astype(p.dtype), state.theta_ref, delta, params)
        return new, TRACState(inner, state.theta_ref, s, variance, sigma)

    return optax.GradientTransformation(init, update)
