"""ReDo: recycle dormant neurons (Sokar et al. 2023, "The dormant neuron phenomenon in deep RL")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from plastix.mitigations._layers import (
    dormancy_scores,
    fresh_params,
    hidden_layers,
    layer_width,
    ones_like_tree,
    outputs_to_units,
    recycle_units,
    to_dict,
)
from plastix.mitigations.optimizer_state import scale_adam_moments
from plastix.mitigations.surgery import Surgery, f32, stateless_init

Params = Any


from plastix.mitigations.registry import REDO_SCORES  # dopamine's NeuronRecyclerScheduled score types


def least_k_mask(scores: jax.Array, fraction: jax.Array) -> jax.Array:
    """Dopamine's ``leastk_mask``: the units whose score is at most the ``k``-th smallest, with
    ``k = max(1, round(n * fraction))`` (``n`` units). Ties at the threshold are all selected, as there."""
    k = jnp.maximum(1, jnp.round(scores.shape[0] * fraction)).astype(jnp.int32)
    threshold = jnp.sort(scores)[k - 1]
    return scores <= threshold


def scheduled_fraction(fraction: float, step: jax.Array | None, start: int = 0, end: int | None = None) -> jax.Array:
    """The fraction of each layer that dopamine's ``NeuronRecyclerScheduled`` recycles at ``step``:
    ``fraction * cos(pi/2 * step / end)`` for ``start <= step < end`` and 0 outside (its ``is_reset``
    window); with ``end=None`` a constant ``fraction`` from ``start`` on."""
    if step is None:
        if end is not None or start > 0:
            raise ValueError("redo: a start/end window needs the step count (wrap the surgery in scheduled)")
        return jnp.asarray(fraction, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    inside = step >= start
    value = jnp.asarray(fraction, jnp.float32)
    if end is not None:
        inside = inside & (step < end)
        value = value * jnp.cos(jnp.pi * 0.5 * jnp.maximum(0.0, step / end))
    return jnp.where(inside, value, 0.0)


def fraction_mask(unit_scores: jax.Array, fraction: jax.Array, score: str, key: jax.Array) -> jax.Array:
    """Units a scheduled ReDo recycles in one layer: the ``least_k_mask`` of the layer's scores after
    dopamine's ``_score2mask`` transform (``redo``: the dormancy scores; ``random``: the same scores randomly
    permuted among the units; ``redo_inverted``: negated, so the most active units go); none when
    ``fraction`` is 0 (outside the schedule's window)."""
    if score == "random":
        unit_scores = jax.random.permutation(key, unit_scores)
    elif score == "redo_inverted":
        unit_scores = -unit_scores
    elif score != "redo":
        raise ValueError(f"redo: unknown score {score!r}; allowed: {', '.join(REDO_SCORES)}")
    return least_k_mask(unit_scores, fraction) & (fraction > 0)


def redo(init_fn: Callable[[jax.Array], Params], tau: float = 0.1, fraction: float | None = None,
         score: str = "redo", start: int = 0, end: int | None = None) -> Surgery:
    """ReDo (Sokar et al. 2023): recycle the tau-dormant neurons of every hidden layer, or (``fraction``
    given) a scheduled fixed fraction of each layer's units by score (dopamine's ``NeuronRecyclerScheduled``).

    Hidden layers are those of ``plastix.mitigations._layers.hidden_layers``: MLP units and conv channels (a
    feature map is a neuron, as in dopamine's ``NeuronRecycler``). Each call (wrap it in
    ``scheduled(..., every=period)`` for ReDo's "every ``period`` updates"):

    1. dormancy index of every hidden output on the batch, ``s_i = E|h_i| / (mean_k E|h_k| + 1e-9)``
       (Eq. 2; the expectation over batch and, for a conv map, spatial positions), from
       ``batch_info.activations[name][1]`` (post-activations);
    2. a unit is dormant when ``s_i <= tau`` for all of its outputs (one output per unit, two for CReLU);
       with ``fraction``, instead the ``least_k_mask`` of the unit scores (``fraction_mask``; a CReLU unit
       scores the larger of its two outputs), ``k = max(1, round(H * f))`` with
       ``f = scheduled_fraction(fraction, step, start, end)`` (``batch_info.step``, set by ``scheduled``);
    3. dormant units get *fresh incoming weights*: the matching columns (conv filters) of a fresh
       initialisation of the whole network, ``init_fn(key)`` (for plastix's nets an orthogonal kernel with
       the layer's gain, so a fresh column is distributed as at init), their bias is zeroed, their LayerNorm
       scale/bias reset;
    4. their outgoing weights are set to 0: the rows of a Dense consumer they feed (all spatial positions of
       a flattened conv map), the input-channel slice of a Conv consumer, both heads of a CNN torso;
    5. Adam's ``mu`` and ``nu`` of those incoming (kernel column, bias, LayerNorm) and outgoing entries are
       zeroed in every Adam node of ``opt_state``; Adam's step count is kept.

    The output layer is never recycled. With zero outgoing weights the network's outputs on any input are
    unchanged at the moment of recycling, except under LayerNorm, whose statistics mix the recycled unit
    with the others of its layer.

    Args:
      init_fn: ``key -> params`` (``variables["params"]`` of a fresh network).
      tau: dormancy threshold (ReDo: 0.1 in its main experiments, 0.025 in its demonstration; 0 = dead);
        unused with ``fraction``.
      fraction: dopamine's ``recycle_rate`` (0.3 there), or None for the threshold rule.
      score: ``redo``, ``random`` or ``redo_inverted`` (``REDO_SCORES``), with ``fraction``.
      start, end: dopamine's ``reset_start_step`` and ``reset_end_step`` in gradient steps; with ``end`` the
        fraction decays as ``cos(pi/2 * step / end)``.

    Returns:
      A stateless ``Surgery``. Metrics: ``mitigation/redo/recycled`` (total) and
      ``mitigation/redo/<layer>/recycled`` per layer.
    """

    if score not in REDO_SCORES:
        raise ValueError(f"redo: unknown score {score!r}; allowed: {', '.join(REDO_SCORES)}")

    def apply(params, opt_state, state, batch_info, key):
        if batch_info.activations is None:
            raise ValueError("redo needs batch_info.activations (plastix.nets.hidden_activations)")
        params = to_dict(params)
        fresh = fresh_params(init_fn, key, params)
        keep = ones_like_tree(params)
        metrics, total, recycled = {}, f32(0.0), []
        layers = hidden_layers(params)
        if not layers:
            raise ValueError("redo: no hidden layers in params (see plastix.mitigations._layers)")
        if fraction is not None:
            current = scheduled_fraction(fraction, batch_info.step, start, end)
        for index, layer in enumerate(layers):
            post = batch_info.activations[layer.name][1]
            width = layer_width(params, layer)
            scores = outputs_to_units(dormancy_scores(post), width)
            if fraction is None:
                units = jnp.all(scores <= tau, axis=0)
            else:
                units = fraction_mask(jnp.max(scores, axis=0), current, score, jax.random.fold_in(key, index))
            recycled.append((layer, units))
            n = f32(jnp.sum(units))
            metrics[f"mitigation/redo/{layer.name}/recycled"] = n
            total = total + n
        params, keep = recycle_units(params, keep, fresh, recycled)
        metrics["mitigation/redo/recycled"] = total
        return params, scale_adam_moments(opt_state, keep), state, metrics

    return Surgery(stateless_init, apply, reads_batch=True)
