"""Juliani & Ash 2024's own interventions (awjuliani/deep-rl-plasticity): the W2-init regulariser and the
"mix" reset. (Their GroupNorm is a network option: ``plastix.nets``, ``--mitigations groupnorm``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from plastix.mitigations._layers import fresh_params, to_dict
from plastix.mitigations.optimizer_state import scale_adam_moments
from plastix.mitigations.surgery import Surgery, f32, stateless_init

Params = Any


class W2InitState(NamedTuple):
    """State of ``w2_init``: each initial parameter tensor, flattened and sorted."""

    sorted_init: Params


def w2_distance(params: Params, sorted_init: Params) -> jax.Array:
    """``|| concat_l sort(theta_l) - concat_l sort(theta_0,l) ||_2``: the 2-Wasserstein distance between
    each tensor's empirical weight distribution and its initial one, summed in quadrature over tensors (J&A's
    ``w2`` in ``algos/ppo/trainer.py``, every tensor sorted on its own)."""
    sq = jax.tree.map(lambda p, s0: jnp.sum((jnp.sort(p.reshape(-1)) - s0) ** 2), params, sorted_init)
    return jnp.sqrt(sum(jax.tree.leaves(sq)))


def w2_init(lam: float = 0.01) -> optax.GradientTransformation:
    """W2-init (Juliani & Ash 2024, "regen reg (W2)"): the gradient of ``lam * w2_distance(theta, theta_0)``
    added to the incoming gradient.

    Unlike ``l2_init`` the penalty only asks each tensor's *distribution* of values to stay that of its
    initialisation: any permutation of a tensor's initial entries costs 0. Gradient, per tensor:
    ``lam * (sort(theta) - sort(theta_0))[rank(theta_i)] / w2`` (the sorted difference sent back to the
    entries' positions), and 0 at ``w2 = 0`` (as PyTorch's norm backward). Their code adds the penalty to
    the loss, so before the global-norm clip (``make_optimizer(loss_transforms=...)``). ``theta_0`` is the
    ``params`` given to ``init``.
    """

    def init(params):
        return W2InitState(sorted_init=jax.tree.map(lambda p: jnp.sort(jnp.asarray(p).reshape(-1)), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("w2_init needs params: call update(updates, state, params)")
        order = jax.tree.map(lambda p: jnp.argsort(p.reshape(-1)), params)
        diff = jax.tree.map(lambda p, o, s0: p.reshape(-1)[o] - s0, params, order, state.sorted_init)
        norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(diff)))
        scale = jnp.where(norm > 0, lam / jnp.where(norm > 0, norm, 1.0), 0.0)

        def add(g, d, o):
            grad = jnp.zeros_like(d).at[o].set(scale * d)  # back from sorted order to the entries
            return (g + grad.reshape(g.shape)).astype(g.dtype)

        return jax.tree.map(add, updates, diff, order), state

    return optax.GradientTransformation(init, update)


def mix_reset(init_fn: Callable[[jax.Array], Params], fraction: float = 0.5) -> Surgery:
    """Juliani & Ash's "mix" reset (``shared/modules.py`` ``mix_reset_module``, called by ``model._mix`` at
    every shift): each parameter entry, independently with probability ``fraction``, takes its value in a
    fresh initialisation ``init_fn(key)``; the others are kept. Every parameter of the agent (encoder,
    heads, ``log_std``, norms) is mixed, as their encoder, policy and value modules are.

    Adam's ``mu`` and ``nu`` of the replaced entries are zeroed (their code rebuilds the whole AdamW at every
    shift: add ``--rebuild-optimizer-at-switch`` for that).

    Returns:
      A stateless ``Surgery``; metric ``mitigation/mix_reset/params_reset`` (entries replaced).
    """

    def apply(params, opt_state, state, batch_info, key):
        params = to_dict(params)
        fresh_key, mask_key = jax.random.split(key)
        fresh = fresh_params(init_fn, fresh_key, params)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(mask_key, len(leaves))
        masks = [jax.random.uniform(k, leaf.shape) < fraction for k, leaf in zip(keys, leaves)]
        masks = jax.tree.unflatten(treedef, masks)
        params = jax.tree.map(lambda p, f, m: jnp.where(m, f, p).astype(p.dtype), params, fresh, masks)
        keep = jax.tree.map(lambda m: (~m).astype(jnp.float32), masks)
        replaced = sum(jnp.sum(m) for m in jax.tree.leaves(masks))
        return params, scale_adam_moments(opt_state, keep), state, {"mitigation/mix_reset/params_reset": f32(replaced)}

    return Surgery(stateless_init, apply)
