"""Per-layer weight statistics (OCP Fig 7; parameter-norm growth in the survey; Juliani & Ash).

A *layer* is any dict of the params tree that holds a ``"kernel"`` (a Flax ``Dense``); its name is the
'/'-joined path to it, e.g. ``"policy/layer_1"`` or ``"value/output"``. Leaves that are not inside such a
dict (``log_std``) and biases are ignored. Keys of the returned flat dict are ``"<layer path>/<stat>"``:

=======================  =====================================================================
``weight/l2``            ``||W||_2 = sqrt(sum w^2)`` (Frobenius norm of the kernel)
``weight/rms``           ``sqrt(sum w^2 / N)``, N the number of kernel entries
``weight/mean_abs``      ``sum |w| / N``
``weight/std``           population standard deviation of the kernel entries
``weight/max_abs``       ``max |w|``
``weight/dist_init``     ``||W - W_0||_2`` (only with ``init_params``)
``weight/update_l2``     ``||W - W_prev||_2``, the per-update change (only with ``prev_params``)
``weight/update_rms``    ``sqrt(sum (W - W_prev)^2 / N)`` (only with ``prev_params``)
=======================  =====================================================================

Example: ``weight_stats(params)["policy/layer_1/weight/l2"]``.

Whole-network statistics over *every* parameter leaf (kernels, biases, ``log_std``, LayerNorm, injection
heads), as Juliani & Ash's code computes them (``calculate_l2_norm`` and ``compute_l2_norm_difference`` in
awjuliani/deep-rl-plasticity ``shared/modules.py``; Plasticine's ``compute_weight_magnitude`` is the same):
``params_rms`` (their ``weight_m``) and ``params_rms_distance`` (their ``weight_diff``, taken between the
parameters before and after one update).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def kernels(params: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Every kernel of a params tree as ``{"<net>/<layer>": kernel}``, in the tree's iteration order.

    A dict holding a ``"kernel"`` entry is a layer; its path is the '/'-joined keys leading to it.
    """
    out: dict[str, jax.Array] = {}

    def walk(tree: Mapping[str, Any], prefix: tuple[str, ...]):
        if "kernel" in tree:
            out["/".join(prefix)] = tree["kernel"]
            return
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, prefix + (str(key),))

    walk(params, ())
    return out


def kernel_stats(kernel: jax.Array) -> dict[str, jax.Array]:
    """``{"weight/l2", "weight/rms", "weight/mean_abs", "weight/std", "weight/max_abs"}`` of one kernel."""
    w = kernel.astype(jnp.float32)
    sum_sq = jnp.sum(w**2)
    return {
        "weight/l2": jnp.sqrt(sum_sq),
        "weight/rms": jnp.sqrt(sum_sq / w.size),
        "weight/mean_abs": jnp.mean(jnp.abs(w)),
        "weight/std": jnp.std(w),
        "weight/max_abs": jnp.max(jnp.abs(w)),
    }


def weight_stats(
    params: Mapping[str, Any],
    init_params: Mapping[str, Any] | None = None,
    prev_params: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """Per-layer kernel statistics of a params tree as a flat ``{"<net>/<layer>/<stat>": scalar}`` dict.

    Stats and key names are listed in this module's docstring.

    Args:
        params: e.g. ``{"policy": {"layer_1": {"kernel": [n_in, H], "bias": [H]}, ...}, "value": ...}``.
        init_params: the parameters at initialisation, same structure; adds ``weight/dist_init``.
        prev_params: the parameters before the last update, same structure; adds ``weight/update_l2``.

    Returns:
        Flat dict of float32 scalars.
    """
    current = kernels(params)
    initial = kernels(init_params) if init_params is not None else None
    previous = kernels(prev_params) if prev_params is not None else None
    out: dict[str, jax.Array] = {}
    for path, kernel in current.items():
        for stat, value in kernel_stats(kernel).items():
            out[f"{path}/{stat}"] = value
        if initial is not None:
            out[f"{path}/weight/dist_init"] = jnp.linalg.norm((kernel - initial[path]).ravel())
        if previous is not None:
            change = (kernel - previous[path]).astype(jnp.float32)
            out[f"{path}/weight/update_l2"] = jnp.linalg.norm(change.ravel())
            out[f"{path}/weight/update_rms"] = jnp.sqrt(jnp.mean(change**2))
    return out


def params_rms(params: Any) -> jax.Array:
    """RMS over every parameter of the tree: ``sqrt(sum_leaves sum w^2 / N)``, N all entries of all leaves.

    Juliani & Ash's ``weight_m`` (``calculate_l2_norm(model.parameters())``): one number for the whole
    network, biases and heads included, not a mean of per-layer statistics. A float32 scalar.
    """
    leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(params)]
    total = sum(jnp.sum(leaf**2) for leaf in leaves)
    return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


def params_rms_distance(params: Any, other: Any) -> jax.Array:
    """RMS distance between two parameter trees of the same structure: ``params_rms(params - other)``.

    Juliani & Ash's ``weight_diff`` (``compute_l2_norm_difference(model, model_copy)``) with ``other`` the
    parameters saved just before the update (``algos/ppo/trainer.py``: ``model_copy`` is taken right before
    ``update_model``): the RMS size of one update's change. A float32 scalar.
    """
    return params_rms(jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32) - b, params, other))
