"""Diagnostics during training: the one place where the trainer measures its networks.

``measure`` takes a network's parameters, its forward pass with sown activations, the training loss and
the update's batch, and returns a flat dict of per-layer metrics (plus per-neuron scores, and the sets
needed for the next measurement's overlaps). Everything is traced into the compiled update; the trainer
runs it under ``lax.cond`` every ``diagnostics_every`` updates, so nothing syncs with the host.

Metric keys (``<net>`` is ``policy`` or ``value``, ``<layer>`` a hidden layer ``layer_i``):

===========================================  ==========================================================
``<net>/<layer>/dormant_ratio@<tau>``        fraction of neurons with dormancy score <= tau (Eq. 2)
``<net>/dormant_ratio@<tau>``                the same over every hidden neuron of the network
``<net>/<layer>/zero_grad_ratio/layer``      fraction with MAGI <= eps, ``layer`` target (S = sum of
                                             the layer's post-activations; SCIENCE.md section 2)
``<net>/<layer>/zero_grad_ratio/loss``       the same with the training-loss gradient (``loss`` target)
``<net>/<layer>/zero_grad_ratio_rel@<tau>/layer|loss``  fraction with ``G_i / mean_k G_k <= tau``
``<net>/<layer>/overlap/dormant``            Eq. 19 between this and the previous measurement's dormant
                                             sets (dormant = score <= ``overlap_tau``)
``<net>/<layer>/overlap/zero_grad``          the same for zero-gradient sets (``layer`` target, eps)
``<net>/<layer>/overlap/dormant_zero_grad``  between the dormant and zero-gradient sets of this step
``<net>/<layer>/overlap/dormant_zero_grad_rel@<tau>``  the same with the relative zero-gradient set
                                             (``layer`` target, ``G_i / mean_k G_k <= overlap_tau``):
                                             with smooth activations no MAGI is exactly 0, so the
                                             strict set is empty and only this one tests Theorem 1
``<net>/<layer>/srank``, ``effective_rank``  of the layer's post-activation features on the batch
``<net>/<layer>/numerical_rank``             singular values above numpy's ``matrix_rank`` tolerance
``<net>/<layer>/feature_norm``               Plasticine's ``mean_b ||h_b||_2`` (``features``)
``<net>/<layer>/feature_variance``           Plasticine's ``mean_b var_j(h_bj)`` (unbiased)
``<net>/<layer>/unit_activity``              Dohare et al.'s activity (fraction of inputs with ``h > 0``)
                                             over the last ``activity_obs`` (the rollout's last steps),
                                             mean over units; ``inactive_units``: fraction <= 0.01
``<net>/<layer or output>/weight/srank``     ranks of each kernel as a ``[fan_in, units]`` matrix
                                             (also ``weight/effective_rank``, ``weight/numerical_rank``)
``<net>/<layer>/grad_cosine``                gradient interference with ``interference``: mean
                                             off-diagonal cosine of per-example loss gradients of the
                                             layer (``model/grad_cosine``, ``model/grad_conflict``: all)
``<net>/<layer>/dead_units``                 Juliani & Ash's dead-unit fraction: dead *elements* over
                                             batch x units (``neurons.dead_units``)
``<net>/<layer>/dead_units_every_input``     fraction of units dead on every input of the batch
``<net>/<layer>/active_units``               Plasticine's active-unit fraction, 1 - ``dead_units``
``<net>/<layer>/grad_norm``                  L2 norm of the loss gradient of the layer's kernel and bias
``<net>/<layer or output>/weight/<stat>``    ``plastix.diagnostics.weights`` (l2, rms, ..., dist_init,
                                             update_l2 and update_rms: the change over this update)
``model/weight_m``                           J&A's ``weight_m``: RMS of all parameters of the agent
``model/weight_diff``                        J&A's ``weight_diff``: RMS of all parameters' change over
                                             this update (their code takes it against the parameters
                                             saved right before the update)
``model/update_rms``                         the same per-update RMS change, under plastix's name
``model/dist_init_rms``                      RMS distance of all parameters from their initial values
===========================================  ==========================================================

The update's change is measured from the parameters the update started from (after any at-switch
surgery of ``round_start``) to the ones it produced; without ``prev_params`` those keys are not logged.

For CReLU a layer has H kernel columns but 2H output units: dormancy and dead units are per output
unit, MAGI per kernel column, so ``overlap/dormant_zero_grad`` is not defined and not logged.

**A new per-layer metric** is one function in its own module plus one line registering it in
``LAYER_METRICS`` (``register_layer_metric``): ``fn(post [B, H]) -> scalar``, logged as
``<net>/<layer>/<name>`` for every hidden layer, by PPO and ES alike (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from plastix.diagnostics import features, neurons, rank
from plastix.diagnostics.weights import kernels, params_rms, params_rms_distance, weight_stats
from plastix.nets import hidden_activations


# name -> fn(post-activations [B, H]) -> scalar: per-layer metrics beyond the built-in ones.
LAYER_METRICS: dict[str, Callable[[jax.Array], jax.Array]] = {}


def register_layer_metric(name: str, fn: Callable[[jax.Array], jax.Array]) -> None:
    """Log ``fn(post)`` as ``<net>/<layer>/<name>`` at every measurement (a traceable function of the layer's
    post-activations on the diagnostics batch). Register before the run is built: it is compiled in."""
    if not name or "/" in name:
        raise ValueError(f"register_layer_metric: a metric name is one path segment, got {name!r}")
    LAYER_METRICS[name] = fn


@struct.dataclass
class DiagnosticsState:
    """What one measurement leaves for the next: init parameters and the previous neuron sets."""

    init_params: Any
    prev_dormant: dict  # {"policy/layer_1": bool [H_out]}
    prev_zero_grad: dict  # {"policy/layer_1": bool [H]}
    has_prev: jax.Array  # bool scalar


def diagnostics_init(params: Any, layer_shapes: dict[str, tuple[int, int]]) -> DiagnosticsState:
    """Fresh state; ``layer_shapes`` maps each hidden layer to ``(output units, kernel columns)``."""
    return DiagnosticsState(
        init_params=params,
        prev_dormant={k: jnp.zeros((units,), bool) for k, (units, _) in layer_shapes.items()},
        prev_zero_grad={k: jnp.zeros((cols,), bool) for k, (_, cols) in layer_shapes.items()},
        has_prev=jnp.zeros((), bool),
    )


def layer_params(params: Any, path: str) -> dict | None:
    """The parameter dict of the layer sown as ``path`` (``"policy/layer_1"``), or None when no single
    layer produces it (e.g. an IMPALA residual stream).

    Layers whose parameters are named like their activations are found directly; the others (the IMPALA
    torso's ``relu(conv_0)`` layers, sown as ``torso/layer_k`` from ``stack_s_block_b_conv_0``) through the
    surgeries' layer discovery (``plastix.mitigations._layers.hidden_layers``), so diagnostics and surgeries
    see the same units."""
    node = params
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return _discovered_layer_params(params, path)
        node = node[part]
    return node if isinstance(node, dict) and "kernel" in node else _discovered_layer_params(params, path)


def _discovered_layer_params(params: Any, path: str) -> dict | None:
    """The incoming layer of the hidden layer named ``path`` in ``_layers.hidden_layers``, or None."""
    from plastix.mitigations._layers import get_path, hidden_layers, to_dict  # (mitigations import diagnostics)

    try:
        found = [layer for layer in hidden_layers(to_dict(params)) if layer.name == path]
    except (KeyError, TypeError, ValueError, AttributeError):  # a tree no discovery convention fits
        return None
    return get_path(params, found[0].incoming) if found else None


def layers_with_kernels(params: Any, layers: list[str]) -> list[str]:
    """The sown layers whose output comes from one kernel (MAGI is defined per kernel column)."""
    return [name for name in layers if layer_params(params, name) is not None]


def layer_target_magi(forward_acts: Callable, params: Any, obs: jax.Array, layers: list[str]) -> dict[str, jax.Array]:
    """MAGI with the ``layer`` target for every hidden layer, by autodiff through the real network.

    For layer l, ``S_l = sum over batch and units of its post-activations``; ``G_i = mean_j |dS_l/dW_ji|``.
    Differentiating the network itself (rather than ``sigma(xW + b)``) keeps LayerNorm and CReLU exact.
    """
    out = {}
    for name in layers:

        def total_post(p, name=name):
            return jnp.sum(forward_acts(p, obs)[name][1])

        grads = jax.grad(total_post)(params)
        out[name] = neurons.magi_from_grads(layer_params(grads, name)["kernel"])
    return out


def local_layer_magi(params: Any, acts: dict, obs: jax.Array, activation: str, layers: list[str]) -> dict[str, jax.Array]:
    """The ``layer``-target MAGI of plain MLP layers (``Dense -> activation``, no LayerNorm) from each
    layer's own input: ``plastix.diagnostics.magi_scores(x, kernel, bias, activation)`` with ``x`` the
    previous layer's post-activation (the observation for ``layer_1``). The same numbers as
    ``layer_target_magi`` at the cost of one layer's backward pass instead of the network's."""
    out = {}
    for name in layers:
        net, layer = name.rsplit("/", 1)
        index = int(layer.split("_")[1])
        x = obs if index == 1 else acts[f"{net}/layer_{index - 1}"][1]
        weights = layer_params(params, name)
        out[name] = neurons.magi_scores(x.astype(jnp.float32), weights["kernel"], weights["bias"], activation)
    return out


def measure(
    params: Any,
    forward_acts: Callable[[Any, jax.Array], dict],
    loss_fn: Callable[[Any], jax.Array],
    obs: jax.Array,
    activation: str,
    state: DiagnosticsState,
    dormant_taus: tuple[float, ...],
    overlap_tau: float,
    zero_grad_eps: float,
    plain_mlp: bool = False,
    prev_params: Any = None,
    activity_obs: jax.Array | None = None,
    interference: tuple[Callable[[Any, Any], jax.Array], Any] | None = None,
) -> tuple[dict, dict, DiagnosticsState]:
    """All diagnostics of one measurement.

    Args:
        params: the network parameters (the full actor-critic tree).
        forward_acts: ``(params, obs) -> {"policy/layer_1": (pre, post), ...}`` (sown activations).
        loss_fn: ``params -> scalar`` training loss on this batch (its gradient is the ``loss`` target).
        obs: the batch of observations ``[B, D]``.
        activation: hidden activation name (for dead units).
        state: previous ``DiagnosticsState``.
        dormant_taus, overlap_tau, zero_grad_eps: thresholds (static).
        plain_mlp: the hidden layers are ``Dense -> activation`` MLP layers named ``<net>/layer_i`` (no
            LayerNorm): the ``layer`` MAGI target is then computed layer by layer (``local_layer_magi``).
        prev_params: the parameters before this update (same structure as ``params``): adds the
            per-update change (``weight/update_*``, ``model/weight_diff``, ``model/update_rms``).
        activity_obs: the observations of the last N steps: adds ``unit_activity`` and ``inactive_units``.
        interference: ``(per_example_loss, examples)``: adds the ``grad_cosine`` keys
            (``features.gradient_cosines``).

    Returns:
        ``(metrics {key: scalar}, neuron_scores {"<layer>/dormancy|magi_layer|magi_loss": [H]}, new state)``.
    """
    acts = forward_acts(params, obs)
    layers = sorted(acts)
    loss_grads = jax.grad(loss_fn)(params)
    with_kernels = layers_with_kernels(params, layers)
    if plain_mlp:
        magi_layer = local_layer_magi(params, acts, obs, activation, with_kernels)
    else:
        magi_layer = layer_target_magi(forward_acts, params, obs, with_kernels)
    metrics: dict[str, jax.Array] = {}
    scores: dict[str, jax.Array] = {}
    dormant_sets, zero_grad_sets = {}, {}
    for name in layers:
        post = acts[name][1]
        dormancy = neurons.dormancy_scores(post)
        for tau in dormant_taus:
            metrics[f"{name}/dormant_ratio@{tau:g}"] = neurons.dormant_ratio_from_scores(dormancy, tau)
        dormant = neurons.dormant_mask(dormancy, overlap_tau)
        nan = jnp.asarray(jnp.nan, jnp.float32)
        metrics[f"{name}/overlap/dormant"] = jnp.where(state.has_prev, neurons.overlap(dormant, state.prev_dormant[name]), nan)
        ranks = rank.rank_stats(post)
        metrics[f"{name}/srank"] = ranks["srank"]
        metrics[f"{name}/effective_rank"] = ranks["effective_rank"]
        metrics[f"{name}/numerical_rank"] = ranks["numerical_rank"]
        metrics[f"{name}/feature_norm"] = features.feature_norm(post)
        metrics[f"{name}/feature_variance"] = features.feature_variance(post)
        metrics[f"{name}/dead_units"] = neurons.dead_units(post, activation)
        metrics[f"{name}/dead_units_every_input"] = neurons.dead_units_every_input(post, activation)
        metrics[f"{name}/active_units"] = neurons.active_units(post, activation)
        for metric, fn in LAYER_METRICS.items():
            metrics[f"{name}/{metric}"] = fn(post)
        scores[f"{name}/dormancy"] = dormancy
        dormant_sets[name] = dormant
        layer_grads = layer_params(loss_grads, name)
        if layer_grads is None:  # no single kernel makes this layer: no MAGI, no zero-gradient sets
            zero_grad_sets[name] = state.prev_zero_grad[name]
            continue
        magi_loss = neurons.magi_from_grads(layer_grads["kernel"])
        for target, magi in (("layer", magi_layer[name]), ("loss", magi_loss)):
            metrics[f"{name}/zero_grad_ratio/{target}"] = neurons.zero_grad_ratio(magi, zero_grad_eps)
            metrics[f"{name}/zero_grad_ratio_rel@{overlap_tau:g}/{target}"] = neurons.relative_zero_grad_ratio(
                magi, overlap_tau
            )
        zero_grad = neurons.zero_grad_mask(magi_layer[name], zero_grad_eps)
        metrics[f"{name}/overlap/zero_grad"] = jnp.where(
            state.has_prev, neurons.overlap(zero_grad, state.prev_zero_grad[name]), nan
        )
        if dormant.shape == zero_grad.shape:
            metrics[f"{name}/overlap/dormant_zero_grad"] = neurons.overlap(dormant, zero_grad)
            zero_grad_rel = neurons.relative_zero_grad_mask(magi_layer[name], overlap_tau)
            metrics[f"{name}/overlap/dormant_zero_grad_rel@{overlap_tau:g}"] = neurons.overlap(dormant, zero_grad_rel)
        metrics[f"{name}/grad_norm"] = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(layer_grads)))
        scores.update({f"{name}/magi_layer": magi_layer[name], f"{name}/magi_loss": magi_loss})
        zero_grad_sets[name] = zero_grad
    for net in sorted({name.split("/")[0] for name in layers}):
        all_scores = jnp.concatenate([scores[f"{n}/dormancy"] for n in layers if n.startswith(net + "/")])
        for tau in dormant_taus:
            metrics[f"{net}/dormant_ratio@{tau:g}"] = neurons.dormant_ratio_from_scores(all_scores, tau)
    metrics.update(weight_stats(params, state.init_params, prev_params))
    for path, kernel in kernels(params).items():
        metrics.update({f"{path}/{k}": v for k, v in features.weight_rank_stats(kernel).items()})
    if activity_obs is not None:
        recent = forward_acts(params, activity_obs)
        for name in layers:
            activity = features.unit_activity(recent[name][1])
            metrics[f"{name}/unit_activity"] = jnp.mean(activity)
            metrics[f"{name}/inactive_units"] = features.inactive_units(activity)
    if interference is not None:
        per_example_loss, examples = interference
        metrics.update(features.gradient_cosines(per_example_loss, params, examples, layer_params, layers))
    metrics.update(model_stats(params, state.init_params, prev_params))
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    new_state = state.replace(prev_dormant=dormant_sets, prev_zero_grad=zero_grad_sets, has_prev=jnp.ones((), bool))
    return metrics, scores, new_state


def model_stats(params: Any, init_params: Any, prev_params: Any = None) -> dict[str, jax.Array]:
    """Whole-agent weight statistics over every parameter (Juliani & Ash's ``weight_m`` and
    ``weight_diff``; keys in this module's docstring)."""
    out = {"model/weight_m": params_rms(params),
           "model/dist_init_rms": params_rms_distance(params, init_params)}
    if prev_params is not None:
        out["model/weight_diff"] = out["model/update_rms"] = params_rms_distance(params, prev_params)
    return out


def make_forward_acts(apply_fn: Callable) -> Callable[[Any, jax.Array], dict]:
    """``(params, obs) -> hidden_activations`` for a Flax module's ``apply`` that sows activations."""

    def forward_acts(params, obs):
        _, sown = apply_fn({"params": params}, obs, mutable=["intermediates"])
        return hidden_activations(sown["intermediates"])

    return forward_acts
