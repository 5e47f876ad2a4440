"""Continual backpropagation (Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from plastix.mitigations._layers import (
    HiddenLayer,
    fresh_params,
    get_path,
    hidden_layers,
    layer_width,
    ones_like_tree,
    outputs_to_units,
    recycle_units,
    set_path,
    to_dict,
    unit_to_outputs,
)
from plastix.mitigations.optimizer_state import scale_adam_moments
from plastix.mitigations.registry import CBP_UTILITIES
from plastix.mitigations.surgery import Surgery, f32

Params = Any


@flax.struct.dataclass
class CBPLayerState:
    """Continual-backprop statistics of one hidden layer with ``H`` units and ``W`` outputs.

    Attributes:
      utility: ``[H]`` running contribution utility ``u`` (not bias-corrected).
      mean_activation: ``[R]`` running mean (signed) of each input feature of the layer's Dense consumers
        (``R = W``, or ``P * W`` for a flattened conv map), used for the bias fold; for a layer that feeds
        convolutions (no fold there, as Dohare et al.'s ``convGnT``) the mean of each output channel ``[W]``.
      age: ``[H]`` int32, updates since the unit was (re)initialised.
      to_replace: scalar float32, the fractional number of replacements carried over (``rr * eligible``
        accumulates; its integer part is replaced).
    """

    utility: jax.Array
    mean_activation: jax.Array
    age: jax.Array
    to_replace: jax.Array


class _UnitStats(NamedTuple):
    """One layer's CBP statistics after this step's update (before any replacement)."""

    utility: jax.Array  # [H] running contribution utility
    mean_activation: jax.Array  # [R] running mean activation of the Dense consumers' input features
    age: jax.Array  # [H]
    correction: jax.Array  # [H] 1 - decay^age (bias correction of the running averages)
    eligible: jax.Array  # [H] bool: older than the maturity threshold
    score: jax.Array  # [H] corrected utility, +inf where not eligible
    to_replace: jax.Array  # fractional replacements carried to the next step
    n_replace: jax.Array  # whole units to replace this step


def _dense_consumers(params: Params, layer: HiddenLayer) -> list[tuple[str, ...]]:
    """The consumers of ``layer`` that are Dense layers (2-D kernels): where the bias fold goes."""
    return [c for c in layer.consumers if get_path(params, c + ("kernel",)).ndim == 2]


def _mean_width(params: Params, layer: HiddenLayer) -> int:
    """Length of ``CBPLayerState.mean_activation``: the input features of the layer's Dense consumers, or its
    output channels when it feeds only convolutions."""
    dense = _dense_consumers(params, layer)
    path = dense[0] + ("kernel",) if dense else layer.consumers[0] + ("kernel",)
    return get_path(params, path).shape[0 if dense else -2]


def outgoing_magnitude(params: Params, layer: HiddenLayer, positions: int, width: int) -> jax.Array:
    """``mean_out |w_out|`` per position and output, ``[P, W]``: the mean absolute outgoing weight of
    output ``j`` at position ``p``, over every consumer's output features (and a Conv consumer's kernel
    window, which reads every position alike: Dohare et al.'s ``convGnT``, ``mean(dim=(0, 2, 3))``)."""
    total, count = jnp.zeros((positions, width), jnp.float32), 0
    for consumer in layer.consumers:
        kernel = jnp.abs(get_path(params, consumer + ("kernel",)).astype(jnp.float32))
        if kernel.ndim == 2:  # Dense [P * W, n_out] (NHWC flatten order) or [W, n_out]
            total = total + jnp.sum(kernel, axis=1).reshape(positions, width)
            count += kernel.shape[1]
        else:  # Conv [kh, kw, W, n_out]
            total = total + jnp.sum(kernel, axis=(0, 1, 3))[None, :]
            count += kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
    return total / count


def incoming_magnitude(params: Params, layer: HiddenLayer) -> jax.Array:
    """``mean_in |w_in|`` per unit, ``[H]``: the mean absolute incoming weight (a Dense column, a conv filter
    over its window and input channels; GnT's ``weight.abs().mean(dim=1)``, convGnT's ``dim=(1, 2, 3)``)."""
    kernel = jnp.abs(get_path(params, layer.incoming + ("kernel",)).astype(jnp.float32))
    return jnp.mean(kernel.reshape(-1, kernel.shape[-1]), axis=0)


def unit_utility(params: Params, layer: HiddenLayer, post: jax.Array, mean_act: jax.Array,
                 correction: jax.Array, utility_type: str) -> jax.Array:
    """This step's utility ``new_util [H]`` of GnT (``lop/algos/gnt.py``, ``convGnT.py``) for ``post [B, P, W]``.

    With ``o = mean_out|w_out|`` (``outgoing_magnitude``), ``i = mean_in|w_in|`` (``incoming_magnitude``) and
    ``m_hat = m / (1 - decay^age)`` the bias-corrected running mean activation (per channel for a conv map):

    * ``contribution``: ``mean_p(mean_batch|h| * o)``;  ``weight``: ``mean_p(o)``;  ``adaptation``: ``1 / i``;
    * ``zero_contribution``: ``mean_p(mean_batch|h - m_hat| * o)``;
    * ``adaptable_contribution``: ``zero_contribution / i``;  ``feature_by_input``: ``mean|h - m_hat| / i``.

    A CReLU unit adds the terms of its two outputs (``1 / i`` is per unit).
    """
    width = layer_width(params, layer)
    positions, outputs = post.shape[1], post.shape[2]
    if utility_type == "adaptation":
        return 1.0 / incoming_magnitude(params, layer)
    out_mag = outgoing_magnitude(params, layer, positions, outputs)  # [P, W]
    if utility_type == "weight":
        return outputs_to_units(jnp.mean(out_mag, axis=0), width).sum(axis=0)
    centre = 0.0
    if utility_type != "contribution":  # centred by the running mean of each output channel
        per_channel = jnp.mean(mean_act.reshape(-1, outputs), axis=0)
        centre = per_channel / unit_to_outputs(correction, outputs)
    magnitude = jnp.mean(jnp.abs(post - centre), axis=0)  # [P, W]
    if utility_type == "feature_by_input":
        per_output = jnp.mean(magnitude, axis=0)
    else:
        per_output = jnp.mean(magnitude * out_mag, axis=0)
    result = outputs_to_units(per_output, width).sum(axis=0)
    if utility_type in ("adaptable_contribution", "feature_by_input"):
        result = result / incoming_magnitude(params, layer)
    return result


def continual_backprop(
    init_fn: Callable[[jax.Array], Params],
    replacement_rate: float = 1e-4,
    maturity_threshold: int = 10_000,
    decay: float = 0.99,
    reset_adam_counts: bool = True,
    utility_type: str = "contribution",
) -> Surgery:
    """Continual backprop (Dohare et al. 2024; their ``GnT`` generate-and-test), called after *every* update.

    Per hidden layer (``plastix.mitigations._layers``: Dense units and conv channels), with ``h [B, P, W]``
    the batch's post-activations (``batch_info.activations``; ``P`` spatial positions of a conv map, 1 for a
    Dense layer) and the outgoing weights in the layer's consumers (after the optimizer step), in this order:

    1. ``age <- age + 1``;
    2. contribution utility
       ``u <- decay * u + (1 - decay) * mean_p(mean_batch|h[p, j]| * mean_out|w_out[p, j]|)``
       (``outgoing_magnitude``; a CReLU unit sums over its two outputs ``j``; for a conv channel this is
       ``convGnT``'s utility, for a Dense unit ``GnT``'s); running mean activation of the Dense consumers'
       input features (of its channels if it feeds convolutions)
       ``m <- decay * m + (1 - decay) * mean_batch(h)``; other utilities: ``utility_type``;
    3. bias-corrected utility ``u_hat = u / (1 - decay^age)``; eligible units: ``age > maturity_threshold``;
    4. ``to_replace += replacement_rate * n_eligible``; the ``floor(to_replace)`` eligible units with the
       lowest ``u_hat`` are replaced and ``to_replace`` keeps the fraction;
    5. replaced units: each Dense consumer's bias gets ``sum_r m_r / (1 - decay^age) * w_out[r, :]`` over
       the input features ``r`` they feed (their bias-corrected mean contribution, so its pre-activation is
       unchanged in expectation; ``GnT``); a Conv consumer gets no fold (``convGnT`` has none); then fresh
       incoming weights (the columns / filters of a fresh ``init_fn(key)``), zero bias, zero outgoing weights,
       Adam ``mu``/``nu`` of those incoming and outgoing entries zeroed, and ``u = m = age = 0``.

    With ``reset_adam_counts`` (and the per-element-count Adam of ``optimizer_state.scale_by_adam_gnt`` in the
    chain) the Adam step count of every rewritten entry is also reset to 0, as Dohare et al.'s ``AdamGnT``
    does, so a replaced weight's first update is bias-corrected like a fresh optimizer's first step. With
    optax's Adam (one shared count) only the moments are zeroed.

    Args:
      init_fn: ``key -> params`` of a fresh network.
      replacement_rate: ``rr``, fraction of eligible units replaced per update (RL: 1e-4).
      maturity_threshold: minimum age before a unit can be replaced (RL: 1e4 updates).
      decay: utility decay ``eta`` (0.99).
      reset_adam_counts: reset per-element Adam step counts of rewritten entries (AdamGnT).
      utility_type: GnT's ``util_type`` (``CBP_UTILITIES``; ``unit_utility``): ``contribution`` (Dohare et
        al.'s RL runs) or ``weight``, ``adaptation``, ``zero_contribution``, ``adaptable_contribution``,
        ``feature_by_input``, ``random`` (a fresh uniform score each step).

    Returns:
      A ``Surgery`` whose state is ``{layer_name: CBPLayerState}``. Metrics:
      ``mitigation/cbp/replaced`` (total this update), ``mitigation/cbp/<layer>/replaced`` and
      ``mitigation/cbp/<layer>/eligible``.
    """

    if utility_type not in CBP_UTILITIES:
        raise ValueError(f"continual_backprop: unknown utility {utility_type!r}; allowed: {', '.join(CBP_UTILITIES)}")

    def init(params, key):
        del key
        params = to_dict(params)
        layers = hidden_layers(params)
        if not layers:
            raise ValueError("continual_backprop: no hidden layers in params "
                             "(see plastix.mitigations._layers)")
        state = {}
        for layer in layers:
            width = layer_width(params, layer)
            state[layer.name] = CBPLayerState(
                utility=jnp.zeros(width, jnp.float32),
                mean_activation=jnp.zeros(_mean_width(params, layer), jnp.float32),
                age=jnp.zeros(width, jnp.int32),
                to_replace=jnp.zeros((), jnp.float32),
            )
        return state

    def apply(params, opt_state, state, batch_info, key):
        if batch_info.activations is None:
            raise ValueError(
                "continual_backprop needs batch_info.activations (plastix.nets.hidden_activations)"
            )
        params = to_dict(params)
        layers = hidden_layers(params)
        stats = [_unit_statistics(params, layer, state[layer.name], batch_info.activations[layer.name][1],
                                  jax.random.fold_in(key, 0xC0B + index))
                 for index, layer in enumerate(layers)]

        # Which units to replace needs a sort per layer; with rr = 1e-4 most steps replace none, so sort only
        # on steps where some layer's accumulated count reached a whole unit.
        def choose(_):
            return tuple(st.eligible & (jnp.argsort(jnp.argsort(st.score)) < st.n_replace) for st in stats)

        nothing = lambda _: tuple(jnp.zeros_like(st.eligible) for st in stats)
        masks = jax.lax.cond(sum(jnp.sum(st.n_replace) for st in stats) > 0, choose, nothing, None)

        new_state, metrics, total, recycled, folds = {}, {}, f32(0.0), [], []
        for layer, st, replace in zip(layers, stats, masks):
            rows = unit_to_outputs(replace, st.mean_activation.shape[0])
            # Fold the replaced units' mean contribution into the Dense consumers' biases, before w_out is 0.
            mean_corr = st.mean_activation / unit_to_outputs(st.correction, st.mean_activation.shape[0])
            for consumer in _dense_consumers(params, layer):
                kernel = get_path(params, consumer + ("kernel",))
                fold = jnp.sum(jnp.where(rows, mean_corr, 0.0)[:, None] * kernel, axis=0)
                folds.append((consumer + ("bias",), fold))
            recycled.append((layer, replace))
            new_state[layer.name] = CBPLayerState(
                utility=jnp.where(replace, 0.0, st.utility),
                mean_activation=jnp.where(rows, 0.0, st.mean_activation),
                age=jnp.where(replace, 0, st.age).astype(jnp.int32),
                to_replace=st.to_replace,
            )
            n = f32(jnp.sum(replace))
            metrics[f"mitigation/cbp/{layer.name}/replaced"] = n
            metrics[f"mitigation/cbp/{layer.name}/eligible"] = f32(jnp.sum(st.eligible))
            total = total + n
        metrics["mitigation/cbp/replaced"] = total

        def rewrite(args):  # all statistics above read the parameters as they were; now rewrite them
            params, opt_state = args
            for path, fold in folds:
                bias = get_path(params, path)
                params = set_path(params, path, (bias + fold).astype(bias.dtype))
            fresh = fresh_params(init_fn, key, params)
            params, keep = recycle_units(params, ones_like_tree(params), fresh, recycled)
            return params, scale_adam_moments(opt_state, keep, reset_counts=reset_adam_counts)

        # With rr = 1e-4 a replacement happens on a small fraction of steps; the fresh initialisation it
        # needs costs about one gradient step, so draw it only then (when nothing is replaced the rewrite
        # is the identity: zero folds, all-keep masks).
        params, opt_state = jax.lax.cond(total > 0, rewrite, lambda args: args, (params, opt_state))
        return params, opt_state, new_state, metrics

    def apply_outside_round_start(params, opt_state, state, batch_info, key):
        if batch_info.phase == "round_start":  # CBP acts on gradient steps only: same metrics, all zero
            shapes = jax.eval_shape(apply, params, opt_state, state, batch_info, key)[3]
            return params, opt_state, state, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)
        return apply(params, opt_state, state, batch_info, key)

    def _unit_statistics(params, layer, st, post, key) -> _UnitStats:
        """``u <- decay u + (1 - decay) * new_util`` (``unit_utility``, GnT's ``util_type``) and the
        replacement budget ``to_replace += rr * #eligible`` (Dohare et al. 2024), for one hidden layer."""
        width = layer_width(params, layer)
        conv = get_path(params, layer.incoming + ("kernel",)).ndim == 4
        positions = math.prod(post.shape[-3:-1]) if conv else 1  # a conv map is [..., h, w, W]
        post = post.astype(jnp.float32).reshape(-1, positions, post.shape[-1])  # [B, P, W]
        age = st.age + 1
        if _dense_consumers(params, layer):  # [B, P * W]: the input features of a (flattening) Dense consumer
            per_feature = post.reshape(post.shape[0], -1)
        else:  # feeds convolutions: per channel
            per_feature = post.reshape(-1, post.shape[-1])
        mean_act = decay * st.mean_activation + (1.0 - decay) * jnp.mean(per_feature, axis=0)
        correction = 1.0 - decay ** age.astype(jnp.float32)
        if utility_type == "random":  # GnT: a fresh uniform score per unit every step, utility not fed
            utility = decay * st.utility
            corrected = jax.random.uniform(key, (width,))
        else:
            utility = decay * st.utility + (1.0 - decay) * unit_utility(
                params, layer, post, mean_act, correction, utility_type)
            corrected = utility / correction
        eligible = age > maturity_threshold
        to_replace = st.to_replace + replacement_rate * jnp.sum(eligible)
        n_replace = jnp.floor(to_replace)
        score = jnp.where(eligible, corrected, jnp.inf)
        return _UnitStats(utility, mean_act, age, correction, eligible, score, to_replace - n_replace,
                          n_replace)

    return Surgery(init, apply_outside_round_start, reads_batch=True)
