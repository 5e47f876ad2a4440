"""Where the neurons are: find the MLPs of a ``plastix.nets`` parameter tree and edit them by unit.

Internal helpers shared by the surgeries. An *MLP* is any dict of the parameter tree holding an
``"output"`` Dense and one or more ``"layer_i"`` Dense layers (``plastix.nets.MLP``); its path is the tuple of
keys leading to it (``("policy",)``, ``("value",)``, or ``()`` for a bare ``MLP``). Hidden layer ``layer_i``
of the MLP at ``path`` is named ``"/".join(path + ("layer_i",))``, the same name
``plastix.nets.hidden_activations`` gives its activations (``"policy/layer_1"``).

A hidden *unit* is a column of its layer's kernel ``[n_in, H]``. Its *outputs* are the columns of the
post-activation ``[..., W]`` that it produces: ``W == H`` for ordinary activations, ``W == 2H`` for CReLU,
whose output ``j`` comes from unit ``j % H``. Its *outgoing weights* are the rows of the next layer's kernel
``[W, n_out]`` fed by those outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
INJECTION_KEY = "injection"
"""Top-level key under which ``add_injection_heads`` stores the plasticity-injection heads."""

_LAYER_RE = re.compile(r"^layer_(\d+)$")


class HiddenLayer(NamedTuple):
    """One hidden Dense layer of an MLP, with the layer its outputs feed."""

    mlp_path: tuple[str, ...]
    layer: str  # "layer_i"
    next_layer: str  # "layer_{i+1}" or "output"
    layer_norm: str  # "layer_norm_i" (present in the tree only when the MLP has LayerNorm)

    @property
    def name(self) -> str:
        """Activation name, as in ``plastix.nets.hidden_activations`` (``"policy/layer_1"``)."""
        return "/".join(self.mlp_path + (self.layer,))


def _is_mlp(tree: Any) -> bool:
    return (
        isinstance(tree, dict)
        and isinstance(tree.get("output"), dict)
        and "kernel" in tree["output"]
        and any(_LAYER_RE.match(k) for k in tree)
    )


def mlp_paths(params: Params) -> list[tuple[str, ...]]:
    """Paths of every ``plastix.nets.MLP`` in ``params`` (the injection heads excluded), in key order."""
    found: list[tuple[str, ...]] = []

    def walk(tree: Any, path: tuple[str, ...]):
        if _is_mlp(tree):
            found.append(path)
            return
        if isinstance(tree, dict):
            for key in sorted(tree):
                if not path and key == INJECTION_KEY:
                    continue
                walk(tree[key], path + (key,))

    walk(params, ())
    return found


def hidden_layer_names(mlp: dict) -> list[str]:
    """``["layer_1", "layer_2", ...]`` of an MLP's parameter dict, in depth order."""
    return sorted((k for k in mlp if _LAYER_RE.match(k)), key=lambda k: int(k.split("_")[1]))


def hidden_layers(params: Params) -> list[HiddenLayer]:
    """Every hidden layer of every MLP in ``params``, each with the layer it feeds."""
    out = []
    for path in mlp_paths(params):
        names = hidden_layer_names(get_path(params, path))
        for i, name in enumerate(names):
            nxt = names[i + 1] if i + 1 < len(names) else "output"
            out.append(HiddenLayer(path, name, nxt, name.replace("layer_", "layer_norm_")))
    return out


def layer_width(params: Params, layer: HiddenLayer) -> int:
    """Number of units ``H`` of a hidden layer (its kernel's last dimension)."""
    return get_path(params, layer.mlp_path + (layer.layer, "kernel")).shape[-1]


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
    """``tree[path[0]][path[1]]...``."""
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """A copy of ``tree`` with ``tree[path...] = value``; only the dicts along ``path`` are copied."""
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = set_path(tree[path[0]], path[1:], value)
    return new


def to_dict(params: Params) -> Params:
    """Plain nested dicts (Flax ``FrozenDict`` unfrozen) so that ``set_path`` can copy them."""
    if hasattr(params, "unfreeze"):
        return params.unfreeze()
    return params


def fresh_params(init_fn: Callable[[jax.Array], Params], key: jax.Array, like: Params) -> Params:
    """A fresh random initialisation shaped like ``like``.

    ``init_fn(key)`` must return the network's parameter collection (``variables["params"]``). If ``like``
    carries plasticity-injection heads that ``init_fn`` does not create, both heads ``a`` and ``b`` of each
    network are filled with the *same* fresh head taken from the fresh network (the parameters at the same
    paths as the head's, below the network's path), which keeps ``a(x) - b(x) == 0`` for a not-yet-injected
    network.
    """
    fresh = to_dict(init_fn(key))
    if isinstance(like, dict) and INJECTION_KEY in like and INJECTION_KEY not in fresh:
        heads = {}
        for net_key, pair in like[INJECTION_KEY].items():
            head = select_like(get_path(fresh, injection_path(net_key)), pair["a"])
            heads[net_key] = {"a": head, "b": head}
        fresh = {**fresh, INJECTION_KEY: heads}
    return fresh


def select_paths(tree: dict, paths: list[tuple[str, ...]]) -> dict:
    """The sub-tree of ``tree`` holding only the nodes at ``paths`` (nested dicts along each path)."""
    out: dict = {}
    for path in paths:
        out = _merge_path(out, path, get_path(tree, path))
    return out


def _merge_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _merge_path(tree.get(path[0], {}), path[1:], value)}


def select_like(tree: Any, template: Any) -> Any:
    """The nodes of ``tree`` at the keys of ``template``, recursively: ``tree`` cut to ``template``'s keys."""
    if not isinstance(template, dict):
        return tree
    return {k: select_like(tree[k], v) for k, v in template.items()}


def injection_key(mlp_path: tuple[str, ...]) -> str:
    """Key of a network's heads inside ``params["injection"]``: its path joined (``"policy"``), ``"_"``
    for the root (a bare MLP, or the CNN actor-critic, whose two output heads share one injection pair)."""
    return "/".join(mlp_path) if mlp_path else "_"


def injection_path(net_key: str) -> tuple[str, ...]:
    """Inverse of ``injection_key``."""
    return () if net_key == "_" else tuple(net_key.split("/"))


def dormancy_scores(post: jax.Array, eps: float = 1e-9) -> jax.Array:
    """Dormancy index (Sokar et al. 2023, Eq. 2) of every output column of ``post [..., W]``.

    ``s_i = E_x|h_i| / ((1/W) sum_k E_x|h_k| + eps)``; the expectation runs over all leading axes.
    """
    mean_abs = jnp.mean(jnp.abs(post).reshape(-1, post.shape[-1]), axis=0)
    return mean_abs / (jnp.mean(mean_abs) + eps)


def outputs_per_unit(post_width: int, units: int) -> int:
    """How many post-activation outputs each unit produces (1, or 2 for CReLU)."""
    if post_width % units:
        raise ValueError(f"post-activation width {post_width} is not a multiple of the layer width {units}")
    return post_width // units


def unit_to_outputs(unit_mask: jax.Array, post_width: int) -> jax.Array:
    """Unit mask ``[H]`` -> mask of the outputs ``[W]`` they produce (output ``j`` from unit ``j % H``)."""
    return jnp.tile(unit_mask, outputs_per_unit(post_width, unit_mask.shape[0]))


def outputs_to_units(per_output: jax.Array, units: int) -> jax.Array:
    """Per-output values ``[W]`` -> ``[k, H]`` grouped by unit (``k`` outputs per unit)."""
    return per_output.reshape(outputs_per_unit(per_output.shape[0], units), units)


def ones_like_tree(params: Params) -> Params:
    """A tree of ones shaped like ``params``: the starting point of an Adam-moment keep mask."""
    return jax.tree.map(jnp.ones_like, params)


def recycle_units(
    params: Params,
    keep: Params,
    fresh: Params,
    recycled: list[tuple[HiddenLayer, jax.Array]],
) -> tuple[Params, Params]:
    """Give recycled units fresh incoming weights and zero outgoing weights, for several layers at once.

    For each ``(layer, units [H] bool)``: the units' incoming kernel columns take the fresh initialisation's
    columns, their bias is zeroed, their LayerNorm scale and bias (if any) take their fresh values; then,
    after *all* incoming resets, the rows of the next layer's kernel fed by the units are zeroed (so a
    recycled unit's outgoing weights are 0 even where it feeds another recycled unit). ``keep`` (a tree
    shaped like ``params``) gets 0 wherever a parameter was rewritten, to zero those entries' Adam moments
    (``optimizer_state.scale_adam_moments``).
    """
    zero = lambda mask, x: jnp.where(mask, jnp.zeros((), x.dtype), x)
    for layer, units in recycled:
        mlp, mlp_keep = dict(get_path(params, layer.mlp_path)), dict(get_path(keep, layer.mlp_path))
        mlp_fresh = get_path(fresh, layer.mlp_path)
        col = units[None, :]
        dense, dense_keep = mlp[layer.layer], mlp_keep[layer.layer]
        mlp[layer.layer] = {
            "kernel": jnp.where(col, mlp_fresh[layer.layer]["kernel"], dense["kernel"]),
            "bias": zero(units, dense["bias"]),
        }
        mlp_keep[layer.layer] = {
            "kernel": zero(col, dense_keep["kernel"]),
            "bias": zero(units, dense_keep["bias"]),
        }
        if layer.layer_norm in mlp:
            mlp[layer.layer_norm] = jax.tree.map(
                lambda old, new, units=units: jnp.where(units, new, old),
                mlp[layer.layer_norm],
                mlp_fresh[layer.layer_norm],
            )
            mlp_keep[layer.layer_norm] = jax.tree.map(
                lambda k, units=units: zero(units, k), mlp_keep[layer.layer_norm]
            )
        params = set_path(params, layer.mlp_path, mlp)
        keep = set_path(keep, layer.mlp_path, mlp_keep)
    for layer, units in recycled:
        path = layer.mlp_path + (layer.next_layer, "kernel")
        kernel = get_path(params, path)
        rows = unit_to_outputs(units, kernel.shape[0])[:, None]
        params = set_path(params, path, zero(rows, kernel))
        keep = set_path(keep, path, zero(rows, get_path(keep, path)))
    return params, keep
