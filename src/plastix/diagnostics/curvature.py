"""Loss-landscape curvature (Lyle et al. 2023, "Understanding plasticity in neural networks").

All estimators use Hessian-vector products ``Hv = d/de grad L(theta + e v)``, computed forward-over-reverse
with ``jax.jvp(jax.grad(loss_fn))``, so the Hessian is never built. Parameters may be any pytree of float
arrays; ``loss_fn`` maps that pytree to a scalar. Loops are ``lax`` loops, so every function is jit-able
(mark ``loss_fn`` and the iteration counts static, or close over them) and vmap-able over keys or params.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

LossFn = Callable[[Any], jax.Array]


def hvp(loss_fn: LossFn, params: Any, vector: Any) -> Any:
    """Hessian-vector product ``H(params) @ vector`` of ``loss_fn``; ``vector`` has the pytree structure of
    ``params`` and so does the result."""
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _flat_hvp(loss_fn: LossFn, params: Any) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """``(v -> H v)`` on the flattened parameter vector, and that vector."""
    flat, unravel = ravel_pytree(params)

    def flat_loss(theta):
        return loss_fn(unravel(theta))

    grad_fn = jax.grad(flat_loss)

    def matvec(v):
        return jax.jvp(grad_fn, (flat,), (v,))[1]

    return matvec, flat


def hessian_top_eigenvalue(loss_fn: LossFn, params: Any, key: jax.Array, num_iters: int = 20) -> jax.Array:
    """Dominant Hessian eigenvalue by power iteration on Hessian-vector products.

    ``v_0 ~ N(0, I)`` normalised; ``v_{t+1} = H v_t / ||H v_t||``; returns the Rayleigh quotient
    ``v^T H v`` of the last iterate. Power iteration converges to the eigenvalue of largest *magnitude*,
    at rate ``|lambda_2 / lambda_1|`` per step; near a minimum the Hessian's large eigenvalues are positive
    and this is the top eigenvalue of Lyle et al. (2023). A zero Hessian gives 0.

    Args:
        loss_fn: ``params -> scalar``.
        params: pytree of float arrays (P parameters in all).
        key: PRNG key of the start vector.
        num_iters: power-iteration steps (static).

    Returns:
        Float scalar.
    """
    matvec, flat = _flat_hvp(loss_fn, params)

    def normalise(v):
        return v / (jnp.linalg.norm(v) + 1e-30)

    v0 = normalise(jax.random.normal(key, flat.shape, flat.dtype))
    v = lax.fori_loop(0, num_iters, lambda _, v: normalise(matvec(v)), v0)
    return jnp.vdot(v, matvec(v))


def hessian_trace(loss_fn: LossFn, params: Any, key: jax.Array, num_samples: int = 10) -> jax.Array:
    """Hutchinson's estimate of the Hessian trace with Rademacher probes.

    ``tr(H) ~= (1/m) sum_{r=1}^m z_r^T H z_r``, ``z_r`` with i.i.d. +-1 entries (unbiased; exact for a
    diagonal Hessian, since ``z_i^2 = 1``).

    Args:
        loss_fn: ``params -> scalar``.
        params: pytree of float arrays.
        key: PRNG key of the probes.
        num_samples: m, the number of probes (static).

    Returns:
        Float scalar.
    """
    matvec, flat = _flat_hvp(loss_fn, params)

    def one_probe(total, probe_key):
        z = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
        return total + jnp.vdot(z, matvec(z)), None

    total, _ = lax.scan(one_probe, jnp.zeros((), flat.dtype), jax.random.split(key, num_samples))
    return total / num_samples


def gradient_cosine_matrix(
    per_example_loss: Callable[[Any, Any], jax.Array], params: Any, batch: Any
) -> jax.Array:
    """Cosine similarity between the loss gradients of every pair of examples (gradient interference).

    ``C_ab = <g_a, g_b> / (||g_a|| ||g_b||)``, ``g_a = grad_theta l(theta; x_a)``, the normalised gradient
    covariance Lyle et al. relate to plasticity: large positive off-diagonal mass means updates on one
    input move the others the same way (less independent capacity). A zero gradient gives a zero row.

    Args:
        per_example_loss: ``(params, example) -> scalar``.
        params: pytree.
        batch: pytree whose leaves have a leading batch axis ``B``.

    Returns:
        ``[B, B]`` float matrix.
    """
    grads = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0))(params, batch)
    leaves = jax.tree_util.tree_leaves(grads)
    g = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)
    norms = jnp.linalg.norm(g, axis=1)
    unit = g / jnp.where(norms > 0, norms, 1.0)[:, None]
    return unit @ unit.T
