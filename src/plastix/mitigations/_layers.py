"""Where the neurons are: find the hidden units of a ``plastix.nets`` parameter tree and edit them by unit.

Internal helpers shared by the surgeries. A *hidden layer* (``HiddenLayer``) is a sown activation
(``plastix.nets.hidden_activations`` name, e.g. ``"policy/layer_1"`` or ``"torso/layer_2"``) whose units are
the output channels of one parameter dict, its *incoming* layer: a Dense ``kernel [n_in, H]`` or a Conv
``kernel [kh, kw, c_in, H]``, unit ``i`` owning ``kernel[..., i]`` and ``bias[i]``. Its *outputs* are the
channels of the post-activation ``[..., W]``: ``W == H`` for ordinary activations, ``W == 2H`` for CReLU,
whose output ``j`` comes from unit ``j % H``. Its *consumers* are the parameter dicts that read those
outputs, and its *outgoing weights* are the consumers' kernel entries fed by them: the rows of a Dense
kernel ``[W, n_out]`` (or ``[P * W, n_out]`` after flattening a ``[..., h, w, W]`` map, Flax NHWC order
``(h, w, W)``: row ``r`` is fed by output ``r % W``, so by unit ``r % H``), or the input-channel slice
``kernel[:, :, j, :]`` of a Conv.

Naming convention (how ``hidden_layers`` finds them; a network of your own that follows it gets every
unit surgery):

* **MLP** (``plastix.nets.MLP``): a dict with an ``"output"`` Dense and ``"layer_1" .. "layer_n"``; param
  ``layer_i`` makes the units sown as ``layer_i``, which feed ``layer_{i+1}`` (``output`` for the last).
* **Chain torso** (``plastix.nets.NatureCNN``): a dict without ``"output"`` holding ``"layer_1" ..
  "layer_n"`` (Conv or Dense), sown as ``layer_i``; ``layer_i`` feeds ``layer_{i+1}``, and the last feeds
  the *heads*: every Dense beside the torso in its parent dict (``policy_output`` and ``value_output`` of
  ``plastix.nets.CNNActorCritic``).
* **Residual torso** (``plastix.nets.ImpalaCNN``, CleanRL's names): a dict with ``"stack_s_conv"``,
  ``"stack_s_block_b_conv_0|1"`` and ``"dense"``, whose ReLUs are sown ``layer_k`` in depth order (per stack:
  the block input, ``conv_0`` of block 1, the block input, ``conv_0`` of block 2; then the stream and the
  dense). Its hidden layers are the ReLUs whose input is one layer's output and whose output feeds one
  layer: ``relu(conv_0)`` of every block (consumer: the block's ``conv_1``; sown ``layer_{2B(s-1) + 2b}``
  with ``B`` blocks per stack) and ``relu(dense)`` (consumers: the heads; sown last). The ReLUs of the
  residual stream are not: their input is a sum of several convolutions (stack conv and every earlier
  block's ``conv_1``), and their channel also reaches the next block through the skip connection, so a
  "unit" there has no incoming weights of its own and outgoing weights that cannot be zeroed. Dopamine's
  ResNet recycler makes the same choice (``labs/redo/weight_recyclers.py``: only ``Conv_1``, ``Conv_3``
  and ``Dense`` of each stack are recycled).

In every case a LayerNorm at the activation point of sown layer ``layer_i`` is the dict ``layer_norm_i``
beside the incoming layer's dict (its ``scale``/``bias`` are per output channel).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
Path = tuple[str, ...]
INJECTION_KEY = "injection"
"""Top-level key under which ``add_injection_heads`` stores the plasticity-injection heads."""

_LAYER_RE = re.compile(r"^layer_(\d+)$")
_BLOCK_RE = re.compile(r"^stack_(\d+)_block_(\d+)_conv_0$")


class HiddenLayer(NamedTuple):
    """One hidden layer: its sown name, the layer making its units and the layers reading them."""

    name: str  # activation name, as in plastix.nets.hidden_activations ("policy/layer_1")
    incoming: Path  # parameter path of the Dense/Conv whose output channels are the units
    consumers: tuple[Path, ...]  # parameter paths of the Dense/Conv layers that read the outputs
    norm: Path  # parameter path of the LayerNorm at the activation point (absent without LayerNorm)


def _is_layer(tree: Any) -> bool:
    return isinstance(tree, dict) and "kernel" in tree and not isinstance(tree["kernel"], dict)


def _is_dense(tree: Any) -> bool:
    return _is_layer(tree) and getattr(tree["kernel"], "ndim", 0) == 2


def _is_mlp(tree: Any) -> bool:
    return isinstance(tree, dict) and _is_layer(tree.get("output")) and any(_LAYER_RE.match(k) for k in tree)


def _is_chain_torso(tree: Any) -> bool:
    return (isinstance(tree, dict) and "output" not in tree
            and any(_LAYER_RE.match(k) and _is_layer(v) for k, v in tree.items()))


def _is_residual_torso(tree: Any) -> bool:
    return isinstance(tree, dict) and _is_dense(tree.get("dense")) and any(_BLOCK_RE.match(k) for k in tree)


def _networks(params: Params) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every MLP (``"mlp"``), residual torso (``"residual"``) and chain torso
    (``"chain"``) in ``params``, in key order; the injection heads are skipped and a network is not looked
    into."""
    found: list[tuple[str, Path]] = []

    def walk(tree: Any, path: Path):
        if not isinstance(tree, dict) or _is_layer(tree):
            return
        kind = ("mlp" if _is_mlp(tree) else "residual" if _is_residual_torso(tree)
                else "chain" if _is_chain_torso(tree) else None)
        if kind:
            found.append((kind, path))
            return
        for key in sorted(tree):
            if path or key != INJECTION_KEY:
                walk(tree[key], path + (key,))

    walk(params, ())
    return found


def mlp_paths(params: Params) -> list[Path]:
    """Paths of every ``plastix.nets.MLP`` in ``params`` (the injection heads excluded), in key order."""
    return [path for kind, path in _networks(params) if kind == "mlp"]


def hidden_layer_names(mlp: dict) -> list[str]:
    """``["layer_1", "layer_2", ...]`` of an MLP's (or chain torso's) parameter dict, in depth order."""
    return sorted((k for k in mlp if _LAYER_RE.match(k)), key=lambda k: int(k.split("_")[1]))


def torso_heads(params: Params, torso_path: Path) -> tuple[Path, ...]:
    """The heads of the torso at ``torso_path``: every Dense beside it in its parent dict."""
    if not torso_path:
        return ()
    parent = get_path(params, torso_path[:-1])
    beside = [k for k in sorted(parent) if k != torso_path[-1] and _is_dense(parent[k])]
    return tuple(torso_path[:-1] + (k,) for k in beside)


def _chain_layers(params: Params, path: Path, last_consumers: tuple[Path, ...]) -> list[HiddenLayer]:
    names = hidden_layer_names(get_path(params, path))
    out = []
    for i, name in enumerate(names):
        consumers = (path + (names[i + 1],),) if i + 1 < len(names) else last_consumers
        if consumers:  # a chain torso's last layer without heads is the network's output
            norm = path + (name.replace("layer_", "layer_norm_"),)
            out.append(HiddenLayer("/".join(path + (name,)), path + (name,), consumers, norm))
    return out


def _residual_layers(params: Params, path: Path) -> list[HiddenLayer]:
    torso = get_path(params, path)
    blocks = sorted((int(m[1]), int(m[2])) for m in map(_BLOCK_RE.match, torso) if m)
    per_stack = max(b for _, b in blocks)
    out = []
    for s, b in blocks:
        index = 2 * per_stack * (s - 1) + 2 * b
        out.append(HiddenLayer("/".join(path + (f"layer_{index}",)), path + (f"stack_{s}_block_{b}_conv_0",),
                               (path + (f"stack_{s}_block_{b}_conv_1",),), path + (f"layer_norm_{index}",)))
    stacks = max(s for s, _ in blocks)
    index = 2 * per_stack * stacks + 2
    heads = torso_heads(params, path)
    if heads:
        out.append(HiddenLayer("/".join(path + (f"layer_{index}",)), path + ("dense",), heads,
                               path + (f"layer_norm_{index}",)))
    return out


def hidden_layers(params: Params) -> list[HiddenLayer]:
    """Every hidden layer of ``params`` (MLPs, chain and residual torsos: see the module docstring)."""
    out: list[HiddenLayer] = []
    for kind, path in _networks(params):
        if kind == "mlp":
            out.extend(_chain_layers(params, path, (path + ("output",),)))
        elif kind == "residual":
            out.extend(_residual_layers(params, path))
        else:
            out.extend(_chain_layers(params, path, torso_heads(params, path)))
    return out


def output_layer_paths(params: Params) -> list[Path]:
    """The layers that make the network's outputs: every MLP's ``output`` and every torso's heads."""
    out: list[Path] = []
    for kind, path in _networks(params):
        heads = (path + ("output",),) if kind == "mlp" else torso_heads(params, path)
        out.extend(h for h in heads if h not in out)
    return out


def layer_width(params: Params, layer: HiddenLayer) -> int:
    """Number of units ``H`` of a hidden layer (its incoming kernel's last dimension)."""
    return get_path(params, layer.incoming + ("kernel",)).shape[-1]
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


def has_path(tree: Any, path: Path) -> bool:
    """``tree[path[0]][path[1]]...`` exists."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def outgoing_mask(units: jax.Array, kernel: jax.Array) -> jax.Array:
    """Boolean mask, broadcastable to a consumer's ``kernel``, of the outgoing weights of ``units [H]``.

    Dense ``[R, n_out]``: the rows ``r`` with ``r % H`` a chosen unit (``R = W``, or ``P * W`` rows of a
    flattened ``[..., h, w, W]`` map in NHWC order); Conv ``[kh, kw, W, n_out]``: the input channels ``j``
    with ``j % H`` a chosen unit.
    """
    if kernel.ndim == 2:
        return unit_to_outputs(units, kernel.shape[0])[:, None]
    return unit_to_outputs(units, kernel.shape[-2])[:, None]


def recycle_units(
    params: Params,
    keep: Params,
    fresh: Params,
    recycled: list[tuple[HiddenLayer, jax.Array]],
) -> tuple[Params, Params]:
    """Give recycled units fresh incoming weights and zero outgoing weights, for several layers at once.

    For each ``(layer, units [H] bool)``: the units' incoming kernel entries (``kernel[..., i]``: a Dense
    column or a Conv filter) take the fresh initialisation's, their bias is zeroed, their LayerNorm scale and
    bias (if any) take their fresh values; then, after *all* incoming resets, the units' outgoing weights in
    every consumer are zeroed (``outgoing_mask``; so a recycled unit's outgoing weights are 0 even where it
    feeds another recycled unit). ``keep`` (a tree shaped like ``params``) gets 0 wherever a parameter was
    rewritten, to zero those entries' Adam moments (``optimizer_state.scale_adam_moments``). This is
    dopamine's ``NeuronRecycler`` and Dohare et al.'s ``gen_new_features`` (conv filters: ``convGnT``).
    """
    zero = lambda mask, x: jnp.where(mask, jnp.zeros((), x.dtype), x)
    for layer, units in recycled:
        layer_params, layer_keep = get_path(params, layer.incoming), get_path(keep, layer.incoming)
        new = get_path(fresh, layer.incoming)
        kernel = layer_params["kernel"]
        rewritten = {"kernel": jnp.where(units, new["kernel"], kernel).astype(kernel.dtype)}
        kept = {"kernel": zero(units, layer_keep["kernel"])}
        if "bias" in layer_params:
            rewritten["bias"] = zero(units, layer_params["bias"])
            kept["bias"] = zero(units, layer_keep["bias"])
        params = set_path(params, layer.incoming, {**layer_params, **rewritten})
        keep = set_path(keep, layer.incoming, {**layer_keep, **kept})
        if has_path(params, layer.norm):
            norm = jax.tree.map(lambda old, new, units=units: jnp.where(units, new, old).astype(old.dtype),
                                get_path(params, layer.norm), get_path(fresh, layer.norm))
            params = set_path(params, layer.norm, norm)
            keep = set_path(keep, layer.norm, jax.tree.map(lambda k, units=units: zero(units, k),
                                                          get_path(keep, layer.norm)))
    for layer, units in recycled:
        for consumer in layer.consumers:
            path = consumer + ("kernel",)
            kernel = get_path(params, path)
            mask = outgoing_mask(units, kernel)
            params = set_path(params, path, zero(mask, kernel))
            keep = set_path(keep, path, zero(mask, get_path(keep, path)))
    return params, keep
