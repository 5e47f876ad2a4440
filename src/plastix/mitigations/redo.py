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


def redo(init_fn: Callable[[jax.Array], Params], tau: float = 0.1) -> Surgery:
    """ReDo (Sokar et al. 2023): recycle the tau-dormant neurons of every hidden layer.

    Hidden layers are those of ``plastix.mitigations._layers.hidden_layers``: MLP units and conv channels (a
    feature map is a neuron, as in dopamine's ``NeuronRecycler``). Each call (wrap it in
    ``scheduled(..., every=period)`` for ReDo's "every ``period`` updates"):

    1. dormancy index of every hidden output on the batch, ``s_i = E|h_i| / (mean_k E|h_k| + 1e-9)``
       (Eq. 2; the expectation over batch and, for a conv map, spatial positions), from
       ``batch_info.activations[name][1]`` (post-activations);
    2. a unit is dormant when ``s_i <= tau`` for all of its outputs (one output per unit, two for CReLU);
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
      tau: dormancy threshold (ReDo: 0.1 in its main experiments, 0.025 in its demonstration; 0 = dead).

    Returns:
      A stateless ``Surgery``. Metrics: ``mitigation/redo/recycled`` (total) and
      ``mitigation/redo/<layer>/recycled`` per layer.
    """

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
        for layer in layers:
            post = batch_info.activations[layer.name][1]
            width = layer_width(params, layer)
            scores = outputs_to_units(dormancy_scores(post), width)
            units = jnp.all(scores <= tau, axis=0)
            recycled.append((layer, units))
            n = f32(jnp.sum(units))
            metrics[f"mitigation/redo/{layer.name}/recycled"] = n
            total = total + n
        params, keep = recycle_units(params, keep, fresh, recycled)
        metrics["mitigation/redo/recycled"] = total
        return params, scale_adam_moments(opt_state, keep), state, metrics

    return Surgery(stateless_init, apply, reads_batch=True)
