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


def _lanczos_tridiagonal(matvec: Callable, v0: jax.Array, num_iters: int) -> tuple[jax.Array, jax.Array]:
    """``num_iters`` Lanczos steps from the unit vector ``v0``, with full reorthogonalisation (twice).

    Returns ``(alphas [m], betas [m])``, the diagonal and sub-diagonal of the tridiagonal ``T = V^T H V``
    (``betas[j]`` couples steps ``j`` and ``j+1``; the last is unused). At a breakdown (the Krylov space is
    invariant, e.g. after ``P`` steps in ``P`` dimensions) the remaining steps are padded with
    ``alphas[0] = v0^T H v0`` and zero couplings: a Rayleigh quotient of the valid block, so the padding
    never moves the extreme eigenvalues of ``T``.
    """
    m = num_iters
    basis = jnp.zeros((m, v0.shape[0]), v0.dtype)

    def orthogonalise(w, basis):
        for _ in range(2):  # "twice is enough" (Parlett) in float32
            w = w - basis.T @ (basis @ w)
        return w

    def step(j, carry):
        basis, alphas, betas, v, v_prev, beta_prev, scale, alive = carry
        basis = basis.at[j].set(jnp.where(alive, v, 0.0))
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        w = orthogonalise(w - alpha * v - beta_prev * v_prev, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        alphas = alphas.at[j].set(jnp.where(alive, alpha, jnp.nan))
        next_alive = alive & (beta > 1e-5 * scale)  # an (almost) invariant subspace: stop here
        betas = betas.at[j].set(jnp.where(next_alive, beta, 0.0))
        v_next = jnp.where(next_alive, w / jnp.where(beta > 0, beta, 1.0), 0.0)
        return basis, alphas, betas, v_next, v, beta, scale, next_alive

    zero = jnp.zeros((), v0.dtype)
    alphas, betas = jnp.zeros(m, v0.dtype), jnp.zeros(m, v0.dtype)
    init = (basis, alphas, betas, v0, jnp.zeros_like(v0), zero, zero, jnp.array(True))
    _, alphas, betas, *_ = lax.fori_loop(0, m, step, init)
    alphas = jnp.where(jnp.isnan(alphas), alphas[0], alphas)
    return alphas, betas


def hessian_eigenvalue_range(
    loss_fn: LossFn, params: Any, key: jax.Array, num_iters: int = 20
) -> tuple[jax.Array, jax.Array]:
    """Largest and smallest *algebraic* Hessian eigenvalues by Lanczos on Hessian-vector products.

    The PPO surrogate's Hessian is indefinite (SCIENCE.md section 2, curvature), so plain power iteration
    finds the eigenvalue of largest *magnitude*, which can be the most negative one. Lanczos builds the
    tridiagonal ``T = V^T H V`` on the Krylov space of a random start ``v_0 ~ N(0, I)`` and returns the
    extreme eigenvalues of ``T`` (Ritz values), which converge to ``lambda_max`` and ``lambda_min`` from
    inside: ``lambda_min <= ritz_min <= ritz_max <= lambda_max``, exact once the Krylov space holds their
    eigenvectors (at most ``P`` steps). A zero Hessian gives ``(0, 0)``.

    Args:
        loss_fn: ``params -> scalar``.
        params: pytree of float arrays (P parameters in all).
        key: PRNG key of the start vector.
        num_iters: Lanczos steps (static; capped at P). Keeps a ``[num_iters, P]`` basis in memory.

    Returns:
        ``(lambda_max, lambda_min)``, float scalars.
    """
    matvec, flat = _flat_hvp(loss_fn, params)
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    alphas, betas = _lanczos_tridiagonal(matvec, v0, max(1, min(num_iters, flat.size)))
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    ritz = jnp.linalg.eigvalsh(tridiagonal)
    return ritz[-1], ritz[0]


def hessian_top_eigenvalue(loss_fn: LossFn, params: Any, key: jax.Array, num_iters: int = 20) -> jax.Array:
    """Largest algebraic Hessian eigenvalue ``lambda_max`` (Lyle et al. 2023's top eigenvalue), by Lanczos;
    see ``hessian_eigenvalue_range`` (which also returns ``lambda_min`` from the same iterations)."""
    return hessian_eigenvalue_range(loss_fn, params, key, num_iters)[0]


def hessian_min_eigenvalue(loss_fn: LossFn, params: Any, key: jax.Array, num_iters: int = 20) -> jax.Array:
    """Smallest algebraic Hessian eigenvalue ``lambda_min`` (negative where the loss has a direction of
    negative curvature), by Lanczos; see ``hessian_eigenvalue_range``."""
    return hessian_eigenvalue_range(loss_fn, params, key, num_iters)[1]


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
    return cosine_matrix(grads)


def cosine_matrix(grads: Any) -> jax.Array:
    """``[B, B]`` cosines between the ``B`` per-example gradients stacked on the leading axis of every leaf of
    ``grads`` (``gradient_cosine_matrix``'s second half: the gradients flattened and concatenated)."""
    leaves = jax.tree_util.tree_leaves(grads)
    g = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)
    norms = jnp.linalg.norm(g, axis=1)
    unit = g / jnp.where(norms > 0, norms, 1.0)[:, None]
    return unit @ unit.T
