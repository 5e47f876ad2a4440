"""Whole-layer surgeries for task switches: layer resets, hard shrink & perturb, Adam reset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from plastix.mitigations._layers import fresh_params, output_layer_paths, to_dict
from plastix.mitigations.optimizer_state import reset_adam_states, scale_adam_moments
from plastix.mitigations.surgery import Surgery, f32, stateless_init

Params = Any


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def reset_prefixes(params: Params, layers: str | Sequence[str]) -> tuple[str, ...]:
    """The parameter-path prefixes that ``reset_layers(layers=...)`` re-initialises.

    ``"final"``: the layers that make the outputs (``_layers.output_layer_paths``): the ``output`` layer of
    every MLP (``"policy/output"``, ``"value/output"``; not ``log_std``), the two heads of the CNN
    actor-critic (``"policy_output"``, ``"value_output"``); ``"all"``: every parameter (``""``); otherwise
    the given name(s), e.g. ``("value/layer_2", "log_std")``.
    """
    if layers == "final":
        paths = output_layer_paths(params)
        if not paths:
            raise ValueError("reset_layers: layers='final' found no output layer in params")
        return tuple("/".join(p) for p in paths)
    if layers == "all":
        return ("",)
    return (layers,) if isinstance(layers, str) else tuple(layers)


def _selected(path_str: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or path_str == p or path_str.startswith(p + "/") for p in prefixes)


def reset_layers(init_fn: Callable[[jax.Array], Params], layers: str | Sequence[str] = "final") -> Surgery:
    """Reset-final / reset-all / reset named layers (Nikishin et al. 2022; Juliani & Ash 2024).

    Re-initialises the chosen parameters from a fresh ``init_fn(key)`` and zeroes Adam's ``mu`` and ``nu``
    of exactly those parameters (the step count is kept; combine with ``adam_reset`` to clear it too).
    Meant for task switches: ``scheduled(reset_layers(init_fn, "final"), at_switch=True)``.

    Args:
      init_fn: ``key -> params`` of a fresh network.
      layers: ``"final"`` (every MLP's ``output`` layer, the CNN's two heads), ``"all"`` (every parameter,
        including ``log_std`` and LayerNorm), or a sequence of path prefixes such as
        ``("policy/output", "log_std")``.

    Returns:
      A stateless ``Surgery``; metric ``mitigation/reset/params_reset`` (number of scalars re-initialised).
    """

    def apply(params, opt_state, state, batch_info, key):
        params = to_dict(params)
        prefixes = reset_prefixes(params, layers)
        fresh = fresh_params(init_fn, key, params)
        flags = jax.tree_util.tree_map_with_path(lambda path, _: _selected(_path_str(path), prefixes), params)
        unknown = [
            p
            for p in prefixes
            if p
            and not any(
                _selected(_path_str(path), (p,)) for path, _ in jax.tree_util.tree_leaves_with_path(params)
            )
        ]
        if unknown:
            raise ValueError(f"reset_layers: no parameters under {unknown}")
        params = jax.tree.map(lambda flag, p, f: f if flag else p, flags, params, fresh)
        keep = jax.tree.map(
            lambda flag, p: jnp.zeros((), p.dtype) if flag else jnp.ones((), p.dtype), flags, params
        )
        n = sum(p.size for flag, p in zip(jax.tree.leaves(flags), jax.tree.leaves(params)) if flag)
        return params, scale_adam_moments(opt_state, keep), state, {"mitigation/reset/params_reset": f32(n)}

    return Surgery(stateless_init, apply)


def shrink_perturb(init_fn: Callable[[jax.Array], Params], lam: float = 0.5, sigma: float = 0.5) -> Surgery:
    """Hard shrink & perturb (Ash & Adams 2020): ``theta <- lam * theta + sigma * theta_fresh``.

    ``theta_fresh = init_fn(key)`` is a fresh random initialisation; applied to every parameter (including
    ``log_std``). Juliani & Ash 2024 use 0.5 / 0.5 at each task switch:
    ``scheduled(shrink_perturb(init_fn), at_switch=True)``. The optimizer state is left as is.

    Returns:
      A stateless ``Surgery``; metric ``mitigation/shrink_perturb/applied`` (1.0).
    """

    def apply(params, opt_state, state, batch_info, key):
        params = to_dict(params)
        fresh = fresh_params(init_fn, key, params)
        params = jax.tree.map(lambda p, f: (lam * p + sigma * f).astype(p.dtype), params, fresh)
        return params, opt_state, state, {"mitigation/shrink_perturb/applied": f32(1.0)}

    return Surgery(stateless_init, apply)


def adam_reset(reset_count: bool = True) -> Surgery:
    """Adam reset (Asadi et al. 2023, "Resetting the optimizer in deep RL"): clear ``mu``, ``nu`` and count.

    Zeroes the moments (and, with ``reset_count``, the step count) of every ``optax.ScaleByAdamState`` in the
    optimizer state; parameters are untouched. Meant for task switches:
    ``scheduled(adam_reset(), at_switch=True)``.

    Returns:
      A stateless ``Surgery``; metric ``mitigation/adam_reset/applied`` (1.0).
    """

    def apply(params, opt_state, state, batch_info, key):
        return (
            params,
            reset_adam_states(opt_state, reset_count),
            state,
            {"mitigation/adam_reset/applied": f32(1.0)},
        )

    return Surgery(stateless_init, apply)


__all__ = ["adam_reset", "reset_layers", "reset_prefixes", "shrink_perturb"]
