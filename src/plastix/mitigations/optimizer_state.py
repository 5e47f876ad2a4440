"""Find and edit Adam's moments inside any optax optimizer state.

An optax state is a pytree of nested tuples and named tuples (``chain``, ``inject_hyperparams``,
``multi_steps`` ...). Every ``optax.ScaleByAdamState`` in it (from ``adam``, ``adamw``, ``scale_by_adam``)
holds ``count`` and the moment trees ``mu`` and ``nu``, shaped like the parameters. The helpers here map over
the whole state and rewrite every such node, so surgeries need not know how the trainer built its chain.
Other moment-carrying states (e.g. ``ScaleByAmsgradState``, a ``masked`` Adam's ``MaskedNode`` leaves) are
not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


def _is_adam(node: Any) -> bool:
    return isinstance(node, optax.ScaleByAdamState)


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


def scale_adam_moments(opt_state: optax.OptState, keep: Params) -> optax.OptState:
    """Multiply Adam's first and second moments ``mu`` and ``nu`` entry-wise by ``keep``.

    ``keep`` is a tree shaped like the parameters (leaves broadcastable to them); a 0 entry zeroes the
    moments of that parameter entry, a 1 keeps them. The step ``count`` is left as is (optax has one count for
    all parameters, unlike Dohare et al.'s per-weight AdamGnT step).

    Args:
      opt_state: any optax optimizer state.
      keep: per-parameter multiplier, same tree structure as ``mu``.

    Returns:
      The optimizer state with ``mu <- mu * keep`` and ``nu <- nu * keep`` in every Adam node.
    """

    def scale(state: optax.ScaleByAdamState) -> optax.ScaleByAdamState:
        mul = lambda m, k: (m * k).astype(m.dtype)
        return state._replace(mu=jax.tree.map(mul, state.mu, keep), nu=jax.tree.map(mul, state.nu, keep))

    return map_adam_states(opt_state, scale)


def reset_adam_states(opt_state: optax.OptState, reset_count: bool = True) -> optax.OptState:
    """Zero ``mu`` and ``nu`` of every Adam node and, if ``reset_count``, its step ``count`` too.

    This is the Adam reset of Asadi et al. 2023 ("Resetting the optimizer in deep RL"): with the count reset,
    Adam's bias correction restarts as for a fresh optimizer.
    """

    def reset(state: optax.ScaleByAdamState) -> optax.ScaleByAdamState:
        count = jnp.zeros_like(state.count) if reset_count else state.count
        return state._replace(
            count=count,
            mu=optax.tree_utils.tree_zeros_like(state.mu),
            nu=optax.tree_utils.tree_zeros_like(state.nu),
        )

    return map_adam_states(opt_state, reset)
