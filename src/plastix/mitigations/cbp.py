"""Continual backpropagation (Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from plastix.mitigations._layers import (
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
from plastix.mitigations.surgery import Surgery, f32

Params = Any


@flax.struct.dataclass
class CBPLayerState:
    """Continual-backprop statistics of one hidden layer with ``H`` units and ``W`` outputs.

    Attributes:
      utility: ``[H]`` running contribution utility ``u`` (not bias-corrected).
      mean_activation: ``[W]`` running mean of each output's activation (signed), used for the bias fold.
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

    utility: jax.Array  # [W] running contribution utility
    mean_activation: jax.Array  # [outputs] running mean activation
    age: jax.Array  # [W]
    correction: jax.Array  # [W] 1 - decay^age (bias correction of the running averages)
    eligible: jax.Array  # [W] bool: older than the maturity threshold
    score: jax.Array  # [W] corrected utility, +inf where not eligible
    to_replace: jax.Array  # fractional replacements carried to the next step
    n_replace: jax.Array  # whole units to replace this step


def continual_backprop(
    init_fn: Callable[[jax.Array], Params],
    replacement_rate: float = 1e-4,
    maturity_threshold: int = 10_000,
    decay: float = 0.99,
) -> Surgery:
    """Continual backprop (Dohare et al. 2024; their ``GnT`` generate-and-test), called after *every* update.

    Per hidden layer, with ``h [B, W]`` the batch's post-activations (``batch_info.activations``) and
    ``w_out [W, n_out]`` the next layer's kernel (after the optimizer step), in this order:

    1. ``age <- age + 1``;
    2. contribution utility ``u <- decay * u + (1 - decay) * mean_batch|h| * mean_out|w_out|``
       (a CReLU unit sums over its two outputs);
       running mean activation ``m <- decay * m + (1 - decay) * mean_batch(h)``;
    3. bias-corrected utility ``u_hat = u / (1 - decay^age)``; eligible units: ``age > maturity_threshold``;
    4. ``to_replace += replacement_rate * n_eligible``; the ``floor(to_replace)`` eligible units with the
       lowest ``u_hat`` are replaced and ``to_replace`` keeps the fraction;
    5. replaced units: the next layer's bias gets ``sum_j m_j / (1 - decay^age) * w_out[j, :]`` over their
       outputs ``j`` (their bias-corrected mean contribution, so the next layer's pre-activation is unchanged
       in expectation), then fresh incoming weights (the columns of a fresh ``init_fn(key)``), zero bias,
       zero outgoing weights, Adam ``mu``/``nu`` of those incoming and outgoing entries zeroed, and
       ``u = m = age = 0``.

    Dohare et al.'s AdamGnT also resets a *per-weight* Adam step count; optax has one shared count, which
    is kept, so a replaced weight's first Adam steps are not bias-corrected like a fresh optimizer's.

    Args:
      init_fn: ``key -> params`` of a fresh network.
      replacement_rate: ``rr``, fraction of eligible units replaced per update (RL: 1e-4).
      maturity_threshold: minimum age before a unit can be replaced (RL: 1e4 updates).
      decay: utility decay ``eta`` (0.99).

    Returns:
      A ``Surgery`` whose state is ``{layer_name: CBPLayerState}``. Metrics:
      ``mitigation/cbp/replaced`` (total this update), ``mitigation/cbp/<layer>/replaced`` and
      ``mitigation/cbp/<layer>/eligible``.
    """

    def init(params, key):
        del key
        params = to_dict(params)
        state = {}
        for layer in hidden_layers(params):
            width = layer_width(params, layer)
            outputs = get_path(params, layer.mlp_path + (layer.next_layer, "kernel")).shape[0]
            state[layer.name] = CBPLayerState(
                utility=jnp.zeros(width, jnp.float32),
                mean_activation=jnp.zeros(outputs, jnp.float32),
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
        stats = [_unit_statistics(params, layer, state[layer.name], batch_info.activations[layer.name][1])
                 for layer in layers]

        # Which units to replace needs a sort per layer; with rr = 1e-4 most steps replace none, so sort only
        # on steps where some layer's accumulated count reached a whole unit.
        def choose(_):
            return tuple(st.eligible & (jnp.argsort(jnp.argsort(st.score)) < st.n_replace) for st in stats)

        nothing = lambda _: tuple(jnp.zeros_like(st.eligible) for st in stats)
        masks = jax.lax.cond(sum(jnp.sum(st.n_replace) for st in stats) > 0, choose, nothing, None)

        new_state, metrics, total, recycled, folds = {}, {}, f32(0.0), [], []
        for layer, st, replace in zip(layers, stats, masks):
            nxt = get_path(params, layer.mlp_path + (layer.next_layer,))
            # Fold the replaced units' mean contribution into the next layer's bias before zeroing w_out.
            out_rows = unit_to_outputs(replace, nxt["kernel"].shape[0])
            mean_corr = st.mean_activation / unit_to_outputs(st.correction, nxt["kernel"].shape[0])
            fold = jnp.sum(jnp.where(out_rows, mean_corr, 0.0)[:, None] * nxt["kernel"], axis=0)
            folds.append((layer.mlp_path + (layer.next_layer, "bias"), fold))
            recycled.append((layer, replace))
            new_state[layer.name] = CBPLayerState(
                utility=jnp.where(replace, 0.0, st.utility),
                mean_activation=jnp.where(out_rows, 0.0, st.mean_activation),
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
            params, keep = recycle_units(params, ones_like_tree(params), fresh_params(init_fn, key, params), recycled)
            return params, scale_adam_moments(opt_state, keep)

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

    def _unit_statistics(params, layer, st, post) -> _UnitStats:
        """``u <- decay u + (1 - decay) mean_batch|h| mean_out|w_out|`` and the replacement budget
        ``to_replace += rr * #eligible`` (Dohare et al. 2024), for one hidden layer."""
        width = layer_width(params, layer)
        post = post.reshape(-1, post.shape[-1]).astype(jnp.float32)
        nxt = get_path(params, layer.mlp_path + (layer.next_layer,))
        out_mag = jnp.mean(jnp.abs(nxt["kernel"]), axis=1)  # [W]
        contribution = outputs_to_units(jnp.mean(jnp.abs(post), axis=0) * out_mag, width).sum(axis=0)
        age = st.age + 1
        utility = decay * st.utility + (1.0 - decay) * contribution
        mean_act = decay * st.mean_activation + (1.0 - decay) * jnp.mean(post, axis=0)
        correction = 1.0 - decay ** age.astype(jnp.float32)
        eligible = age > maturity_threshold
        to_replace = st.to_replace + replacement_rate * jnp.sum(eligible)
        n_replace = jnp.floor(to_replace)
        score = jnp.where(eligible, utility / correction, jnp.inf)
        return _UnitStats(utility, mean_act, age, correction, eligible, score, to_replace - n_replace, n_replace)

    return Surgery(init, apply_outside_round_start, reads_batch=True)
