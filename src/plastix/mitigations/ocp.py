"""OCP perturbation: shake trapped (zero-gradient) neurons out of their local optimum."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from plastix.mitigations._layers import fresh_params, get_path, hidden_layers, set_path, to_dict
from plastix.mitigations.surgery import Surgery, f32, stateless_init

Params = Any


def hidden_layer_magi(forward_acts: Callable[[Params, jax.Array], dict], params: Params,
                      obs: jax.Array) -> dict:
    """MAGI with the ``layer`` target (SCIENCE.md Eqs. 16-18) of every hidden layer
    (``_layers.hidden_layers``).

    ``G_i = mean_j |dS/dW_ji|`` with ``S`` the sum over batch, positions and outputs of the layer's
    post-activation on ``obs`` and ``W`` its incoming kernel (a Dense column, or a conv filter's
    ``kh * kw * c_in`` weights): also the IMPALA torso's ``relu(conv_0)`` layers, whose parameters are not
    named like their activations. ``forward_acts(params, obs)`` returns ``plastix.nets.hidden_activations``.
    Returns ``{name: G [H]}``.
    """
    out = {}
    for layer in hidden_layers(to_dict(params)):

        def total_post(p, name=layer.name):
            return jnp.sum(forward_acts(p, obs)[name][1])

        grad = get_path(jax.grad(total_post)(params), layer.incoming + ("kernel",))
        out[layer.name] = jnp.mean(jnp.abs(grad.reshape(-1, grad.shape[-1])), axis=0)
    return out


def ocp_perturb(
    init_fn: Callable[[jax.Array], Params],
    threshold: float = 0.0,
    relative: bool = False,
    noise_scale: float = 1.0,
) -> Surgery:
    """Perturb the incoming weights of zero-gradient neurons (the OCP paper's claim, Sec. 1 and 5).

    A hidden neuron ``i`` of a layer listed in ``batch_info.layer_magi()`` (its zero-gradient index ``G_i``,
    SCIENCE.md Eqs. 16-18) is trapped when ``G_i <= threshold`` (``relative=False``; 0 = strictly zero
    gradient) or ``G_i / mean_k G_k <= threshold`` (``relative=True``). Its incoming kernel column gets
    ``W[:, i] += noise_scale * std_l * N(0, I)``, ``std_l`` the layer's init scale: the root-mean-square of
    the layer's kernel in a fresh ``init_fn(key)`` (for an orthogonal ``[n_in, H]`` init with gain ``g``,
    ``g / sqrt(max(n_in, H))``). The bias, outgoing weights, all other neurons, the output layer and the
    optimizer state are untouched: the network function moves continuously (by at most the noise), no
    neuron is re-initialised.

    Args:
      init_fn: ``key -> params`` of a fresh network (only its per-layer scale is used).
      threshold: ``eps_grad`` (absolute) or ``tau`` (relative).
      relative: compare ``G_i / mean_k G_k`` instead of ``G_i``.
      noise_scale: multiplier of the init scale.

    Returns:
      A stateless ``Surgery``; metrics ``mitigation/ocp_perturb/perturbed`` and per layer.
    """

    def apply(params, opt_state, state, batch_info, key):
        magi = batch_info.layer_magi()
        if magi is None:
            raise ValueError("ocp_perturb needs batch_info.magi ({layer_name: MAGI [H]}) or batch_info.magi_fn")
        params = to_dict(params)
        init_key, noise_key = jax.random.split(key)
        fresh = fresh_params(init_fn, init_key, params)
        metrics, total = {}, f32(0.0)
        layers = [layer for layer in hidden_layers(params) if layer.name in magi]
        if not layers:
            raise ValueError(f"ocp_perturb: batch_info.magi ({sorted(magi)}) names none of the hidden layers")
        for layer, k in zip(layers, jax.random.split(noise_key, max(len(layers), 1))):
            g = magi[layer.name]
            score = g / (jnp.mean(g) + 1e-12) if relative else g
            trapped = score <= threshold
            path = layer.incoming + ("kernel",)
            kernel = get_path(params, path)
            std = jnp.sqrt(jnp.mean(jnp.square(get_path(fresh, path))))
            noise = noise_scale * std * jax.random.normal(k, kernel.shape, kernel.dtype)
            params = set_path(
                params, path, (kernel + jnp.where(trapped[None, :], noise, 0.0)).astype(kernel.dtype)
            )
            n = f32(jnp.sum(trapped))
            metrics[f"mitigation/ocp_perturb/{layer.name}/perturbed"] = n
            total = total + n
        metrics["mitigation/ocp_perturb/perturbed"] = total
        return params, opt_state, state, metrics

    return Surgery(stateless_init, apply, reads_batch=True)
