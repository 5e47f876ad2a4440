"""Find and edit Adam's moments inside any optax optimizer state.

An optax state is a pytree of nested tuples and named tuples (``chain``, ``inject_hyperparams``,
``multi_steps`` ...). Every ``optax.ScaleByAdamState`` in it (from ``adam``, ``adamw``, ``scale_by_adam``)
holds ``count`` and the moment trees ``mu`` and ``nu``, shaped like the parameters. The helpers here map over
the whole state and rewrite every such node, so surgeries need not know how the trainer built its chain.
Other moment-carrying states (e.g. ``ScaleByAmsgradState``, a ``masked`` Adam's ``MaskedNode`` leaves) are
not touched. ``ScaleByAdamGnTState`` (``scale_by_adam_gnt``, per-element step counts) counts as an Adam node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any


class ScaleByAdamGnTState(NamedTuple):
    """State of ``scale_by_adam_gnt``: Adam's moments and a step count *per parameter element*."""

    count: Params  # int32 tree shaped like the parameters
    mu: Params
    nu: Params


def scale_by_adam_gnt(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam with a step count per parameter element: Dohare et al.'s ``AdamGnT`` (loss-of-plasticity,
    ``lop/utils/AdamGnT.py``, ``state['step'] = torch.zeros_like(p.data)``).

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``, ``t <- t + 1`` (element-wise), update
    ``(m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``: ``optax.scale_by_adam`` exactly while every count is
    the same; continual backprop resets the counts of the entries it rewrites
    (``scale_adam_moments(..., reset_counts=True)``), so their next update is bias-corrected as a first step.
    (AdamGnT's own code discards its ``sqrt(1 - b2^t) / (1 - b1^t)`` factor, see the README's differences.)
    """

    def init(params):
        zeros = lambda dtype=None: jax.tree.map(lambda p: jnp.zeros(p.shape, dtype or p.dtype), params)
        return ScaleByAdamGnTState(count=zeros(jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = jax.tree.map(optax.safe_increment, state.count)
        correct = lambda t, decay, c: t / (1 - decay**c).astype(t.dtype)
        step = lambda m, v, c: correct(m, b1, c) / (jnp.sqrt(correct(v, b2, c)) + eps)
        out = jax.tree.map(step, mu, nu, count)
        return out, ScaleByAdamGnTState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _is_adam(node: Any) -> bool:
    return isinstance(node, (optax.ScaleByAdamState, ScaleByAdamGnTState))


def map_adam_states(
    opt_state: optax.OptState, fn: Callable[[optax.ScaleByAdamState], optax.ScaleByAdamState]
) -> optax.OptState:
    """Replace every ``optax.ScaleByAdamState`` node ``s`` of ``opt_state`` by ``fn(s)``.

    Args:
      opt_state: any optax optimizer state.
      fn: maps an Adam state to a new one with the same structure.

    Returns:
      ``opt_state`` with every Adam node rewritten; everything else is returned as is.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-3))
      >>> state = tx.init({"w": jnp.ones(3)})
      >>> state = map_adam_states(state, lambda s: s._replace(count=s.count + 1))
    """
    return jax.tree.map(lambda node: fn(node) if _is_adam(node) else node, opt_state, is_leaf=_is_adam)


def adam_states(opt_state: optax.OptState) -> list[optax.ScaleByAdamState]:
    """Every ``optax.ScaleByAdamState`` found in ``opt_state``, in traversal order."""
    return [n for n in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(n)]


def scale_adam_moments(opt_state: optax.OptState, keep: Params, reset_counts: bool = False) -> optax.OptState:
    """Multiply Adam's first and second moments ``mu`` and ``nu`` entry-wise by ``keep``.

    ``keep`` is a tree shaped like the parameters (leaves broadcastable to them); a 0 entry zeroes the
    moments of that parameter entry, a 1 keeps them. The step ``count`` is left as is (optax has one count for
    all parameters), except that with ``reset_counts`` the per-element counts of ``scale_by_adam_gnt`` are
    set to 0 where ``keep`` is 0 (Dohare et al.'s AdamGnT step reset).

    Args:
      opt_state: any optax optimizer state.
      keep: per-parameter multiplier, same tree structure as ``mu``.
      reset_counts: also reset per-element step counts where ``keep == 0``.

    Returns:
      The optimizer state with ``mu <- mu * keep`` and ``nu <- nu * keep`` in every Adam node.
    """

    def scale(state):
        mul = lambda m, k: (m * k).astype(m.dtype)
        state = state._replace(mu=jax.tree.map(mul, state.mu, keep), nu=jax.tree.map(mul, state.nu, keep))
        if reset_counts and isinstance(state, ScaleByAdamGnTState):
            restart = lambda c, k: jnp.where(k == 0, jnp.zeros((), c.dtype), c)
            state = state._replace(count=jax.tree.map(restart, state.count, keep))
        return state

    return map_adam_states(opt_state, scale)


def reset_adam_states(opt_state: optax.OptState, reset_count: bool = True) -> optax.OptState:
    """Zero ``mu`` and ``nu`` of every Adam node and, if ``reset_count``, its step ``count`` too.

    This is the Adam reset of Asadi et al. 2023 ("Resetting the optimizer in deep RL"): with the count reset,
    Adam's bias correction restarts as for a fresh optimizer.
    """

    def reset(state: optax.ScaleByAdamState) -> optax.ScaleByAdamState:
        count = jax.tree.map(jnp.zeros_like, state.count) if reset_count else state.count
        return state._replace(
            count=count,
            mu=optax.tree_utils.tree_zeros_like(state.mu),
            nu=optax.tree_utils.tree_zeros_like(state.nu),
        )

    return map_adam_states(opt_state, reset)
