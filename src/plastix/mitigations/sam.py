"""Sharpness-aware minimisation (Foret et al. 2021, "Sharpness-aware minimization for efficiently improving
generalization"; an ingredient of PLASTIC, Lee et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

Params = Any


def sam_gradient(loss_fn: Callable[[Params], jax.Array], params: Params, grads: Params, rho: float = 0.05) -> Params:
    """The SAM gradient ``grad L(theta + e)`` with ``e = rho * g / ||g||_2``, ``g = grads = grad L(theta)``.

    SAM minimises ``max_{||e|| <= rho} L(theta + e)``; to first order the maximiser is ``e`` above (the
    global L2 norm over every parameter, Foret et al.'s Eq. 2 with p = 2), and the update uses the gradient
    at ``theta + e`` in place of ``g`` (their Algorithm 1; ``g`` is the trainer's own gradient, so SAM costs
    one more forward and backward pass per step). The optimizer chain (clip, Adam, ...) then treats it as
    the gradient. Foret et al.'s code divides by ``||g|| + 1e-12``, as here.

    Args:
      loss_fn: ``params -> scalar`` loss of the minibatch.
      params: ``theta``.
      grads: ``grad L(theta)`` (already computed by the trainer).
      rho: neighbourhood radius (Foret et al.: 0.05).
    """
    scale = rho / (optax.tree.norm(grads) + 1e-12)
    perturbed = jax.tree.map(lambda p, g: p + scale * g.astype(p.dtype), params, grads)
    return jax.grad(loss_fn)(perturbed)
