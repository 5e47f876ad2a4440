"""Per-neuron diagnostics: dormancy (Sokar et al. 2023), zero gradients (OCP's MAGI), overlap, dead units.

Every function is pure: JAX arrays in, JAX arrays out, no Python branching on array values, so each one
can be wrapped in ``jax.jit`` and ``jax.vmap`` (e.g. over a leading seed axis). Arguments that select
code paths (activation names, thresholds given as Python floats) are static.

Conventions: a layer has ``H`` neurons; activations ``acts`` are ``[..., H]`` with every batch (and, for
conv layers, spatial) axis first; a layer's kernel is ``[n_in, H]`` (Flax layout, so neuron ``i`` owns
column ``i``), its bias ``[H]``. See SCIENCE.md section 2 for the definitions followed here.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from plastix.nets import ACTIVATIONS

Activation = Callable[[jax.Array], jax.Array] | str

# Public implementations of ReDo add this to the denominator of the dormancy index.
DORMANCY_EPS = 1e-9

# Output thresholds of the dead-unit criteria (Juliani & Ash 2024; SCIENCE.md section 2).
SATURATION_THRESHOLD = 0.99
SIGMOID_LOW_THRESHOLD = 0.01
# Used for gelu/silu/softplus, whose exactly-zero output is not a meaningful "dead" criterion.
SMOOTH_DEAD_THRESHOLD = 0.01


def _as_activation(activation: Activation) -> Callable[[jax.Array], jax.Array]:
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[activation]
    return activation


def _per_neuron_mean_abs(acts: jax.Array) -> jax.Array:
    """``E|h_i|`` over every leading axis of ``acts [..., H]``, as ``[H]``."""
    return jnp.mean(jnp.abs(acts).reshape(-1, acts.shape[-1]), axis=0)


# --------------------------------------------------------------------------------------------- dormancy


def dormancy_scores(acts: jax.Array) -> jax.Array:
    """Dormancy index of every neuron of a layer (Sokar et al. 2023, Eq. 2 of the OCP paper).

    ``s_i = E_x|h_i(x)| / ((1/H) sum_k E_x|h_k(x)| + 1e-9)``, the expectation running over every
    leading axis (batch, and spatial positions for conv layers).

    Args:
        acts: post-activation outputs ``[..., H]``, neuron axis last.

    Returns:
        ``[H]`` scores; a layer whose activations are all zero scores 0 everywhere.

    Example:
        >>> dormancy_scores(jnp.array([[1.0, 0.0], [3.0, 0.0]]))  # E|h| = (2, 0), layer mean 1: [2, 0]
    """
    mean_abs = _per_neuron_mean_abs(acts)
    return mean_abs / (jnp.mean(mean_abs) + DORMANCY_EPS)


def _check_scores(scores: jax.Array, name: str, hint: str = "activations [..., H] go to dormant_ratio"):
    """Refuse anything but a ``[H]`` vector of per-neuron scores (a ``[B, H]`` batch of activations would
    otherwise give a silent, meaningless number)."""
    if jnp.ndim(scores) != 1:
        shape = jnp.shape(scores)
        raise ValueError(f"{name}: expected per-neuron scores of shape [H], got shape {shape}; {hint}")


def dormant_mask(scores: jax.Array, tau: float | jax.Array) -> jax.Array:
    """Boolean ``[H]``: neuron ``i`` is tau-dormant when ``s_i <= tau`` (``scores [H]``, ``dormancy_scores``).

    tau = 0 (strictly dead), 0.025 (ReDo's demonstration, Plasticine, Juliani & Ash) and 0.1 (ReDo's
    main experiments) are all used in the literature: report which one. Raises ``ValueError`` unless
    ``scores`` is one-dimensional.
    """
    _check_scores(scores, "dormant_mask")
    return scores <= tau


def dormant_ratio_from_scores(scores: jax.Array, tau: float | jax.Array) -> jax.Array:
    """Fraction (float scalar in [0, 1]) of neurons whose dormancy score is ``<= tau``.

    Args:
        scores: ``[H]`` dormancy scores (``dormancy_scores``; several layers' scores may be concatenated).
        tau: threshold.

    Raises ``ValueError`` for anything but a ``[H]`` vector (use ``dormant_ratio`` on activations).
    """
    _check_scores(scores, "dormant_ratio_from_scores")
    return jnp.mean(dormant_mask(scores, tau).astype(jnp.float32))


def dormant_ratio(acts: jax.Array, tau: float | jax.Array) -> jax.Array:
    """Fraction (float scalar in [0, 1]) of tau-dormant neurons of a layer, from its activations.

    ``mean_i [s_i <= tau]`` with ``s_i`` the dormancy index of Eq. 2 (``dormancy_scores``).

    Args:
        acts: post-activation outputs ``[..., H]`` with at least one batch axis (``[B, H]``, or
            ``[B, height, width, C]`` for a conv layer).
        tau: threshold.

    Raises ``ValueError`` for a one-dimensional array: scores go to ``dormant_ratio_from_scores``.
    """
    if jnp.ndim(acts) < 2:
        raise ValueError(
            f"dormant_ratio: expected activations [..., H] with a batch axis, got shape {jnp.shape(acts)}; "
            "per-neuron scores [H] go to dormant_ratio_from_scores"
        )
    return dormant_ratio_from_scores(dormancy_scores(acts), tau)


# ------------------------------------------------------------------------------------- zero gradients


def magi_from_grads(kernel_grad: jax.Array) -> jax.Array:
    """Mean Absolute Gradient Intensity (OCP Eq. 16) from a kernel gradient: the ``loss`` target.

    ``G_i = (1/n_in) sum_j |dS/dw_ij|``. Pass the gradient of the actual training loss with respect to the
    layer's kernel to get the ``loss`` target of SCIENCE.md section 2.

    Args:
        kernel_grad: ``[n_in, H]`` (Flax layout: neuron ``i`` owns column ``i``), or a conv kernel
            ``[kh, kw, c_in, H]``, whose ``kh * kw * c_in`` incoming weights per output channel are the ``j``.

    Returns:
        ``[H]`` non-negative scores.
    """
    return jnp.mean(jnp.abs(kernel_grad.reshape(-1, kernel_grad.shape[-1])), axis=0)


def magi_scores(x: jax.Array, kernel: jax.Array, bias: jax.Array, activation: Activation) -> jax.Array:
    """MAGI with the ``layer`` target: the gradient flows through the activation (SCIENCE.md section 2).

    ``S = sum_k sum_i sigma(z_ki)`` with ``z = x @ kernel + bias``, so
    ``dS/dw_ji = sum_k sigma'(z_ki) x_kj`` and ``G_i = mean_j |dS/dw_ji|``. Computed with ``jax.grad`` of
    ``S`` with respect to the kernel, so any activation works, with JAX's derivative conventions at kinks
    (``relu'(0) = 0``).

    Args:
        x: the layer's input ``[B, n_in]``.
        kernel: ``[n_in, H]``.
        bias: ``[H]``.
        activation: a callable or a name from ``plastix.nets.ACTIVATIONS``. For ``"crelu"`` the layer's
            ``H`` kernel columns each feed two outputs; the score is still per kernel column.

    Returns:
        ``[H]`` non-negative scores.
    """
    act = _as_activation(activation)

    def target(w):
        return jnp.sum(act(x @ w + bias))

    return magi_from_grads(jax.grad(target)(kernel))


def magi_scores_preactivation(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """MAGI with the paper's literal target (Eqs. 17-18): ``S = sum of Y = X W^T + b``, pre-activation.

    Then ``dS/dw_ji = sum_k x_kj`` does not depend on ``i``: every neuron of the layer gets the same
    score, so this target cannot tell neurons apart. Kept only to demonstrate that pitfall; use
    ``magi_scores`` (``layer`` target) or ``magi_from_grads`` (``loss`` target).

    Args:
        x: ``[B, n_in]``. kernel: ``[n_in, H]``. bias: ``[H]``.

    Returns:
        ``[H]`` scores, all equal to ``mean_j |sum_k x_kj|``.
    """

    def target(w):
        return jnp.sum(x @ w + bias)

    return magi_from_grads(jax.grad(target)(kernel))


def zero_grad_mask(scores: jax.Array, eps: float | jax.Array = 0.0) -> jax.Array:
    """Boolean ``[H]``: neuron ``i`` is zero-gradient when its MAGI ``G_i <= eps`` (default 0: strict).

    Raises ``ValueError`` unless ``scores`` is ``[H]``."""
    _check_scores(scores, "zero_grad_mask", "MAGI scores come from magi_scores / magi_from_grads")
    return scores <= eps


def zero_grad_ratio(scores: jax.Array, eps: float | jax.Array = 0.0) -> jax.Array:
    """Fraction (float scalar) of neurons with MAGI ``G_i <= eps``; ``scores`` is ``[H]``."""
    return jnp.mean(zero_grad_mask(scores, eps).astype(jnp.float32))


def relative_zero_grad_mask(scores: jax.Array, tau: float | jax.Array) -> jax.Array:
    """Boolean ``[H]``: ``G_i / (mean_k G_k + 1e-9) <= tau``, the dormancy-style relative threshold.

    A layer whose gradients are all zero marks every neuron. ``ValueError`` unless ``scores`` is ``[H]``.
    """
    _check_scores(scores, "relative_zero_grad_mask", "MAGI scores come from magi_scores / magi_from_grads")
    return scores / (jnp.mean(scores) + DORMANCY_EPS) <= tau


def relative_zero_grad_ratio(scores: jax.Array, tau: float | jax.Array) -> jax.Array:
    """Fraction (float scalar) of neurons with ``G_i / mean_k G_k <= tau``; ``scores`` is ``[H]``."""
    return jnp.mean(relative_zero_grad_mask(scores, tau).astype(jnp.float32))


# ------------------------------------------------------------------------------------------- overlap


def overlap(a: jax.Array, b: jax.Array) -> jax.Array:
    """Overlap coefficient of two neuron sets (OCP Eq. 19): ``|A ∩ B| / min(|A|, |B|)``.

    Used between the dormant (or zero-gradient) sets of two consecutive measurements, or between the
    dormant and the zero-gradient set of one measurement. 1.0 when both sets are empty, 0.0 when exactly
    one is.

    Args:
        a, b: boolean membership masks ``[H]``.

    Returns:
        Float scalar in [0, 1].
    """
    a = a.astype(bool)
    b = b.astype(bool)
    n_a = jnp.sum(a)
    n_b = jnp.sum(b)
    inter = jnp.sum(a & b).astype(jnp.float32)
    smaller = jnp.minimum(n_a, n_b)
    both_empty = (n_a == 0) & (n_b == 0)
    # smaller == 0 with both_empty false means exactly one is empty, where inter is 0 too.
    ratio = inter / jnp.maximum(smaller, 1).astype(jnp.float32)
    return jnp.where(both_empty, 1.0, ratio)


# ---------------------------------------------------------------------------------------- dead units


def dead_elements(acts: jax.Array, activation: str) -> jax.Array:
    """Boolean, shaped like ``acts``: which outputs are "dead" (Juliani & Ash 2024, ``calc_dead_units`` in
    awjuliani/deep-rl-plasticity ``shared/modules.py``; Plasticine uses the same criteria).

    - ``relu``, ``crelu``: output exactly 0 (for CReLU each of the 2H outputs is judged alone).
    - ``tanh``: ``|h| > 0.99`` (saturated, either sign).
    - ``sigmoid``: ``h < 0.01`` or ``h > 0.99`` (saturated, either side).
    - ``none`` (identity, the OCP paper's No-Act): a linear unit always passes gradient, so never dead
      (J&A's code raises ``NotImplementedError`` here); ``dff`` (``[sin, cos]``) likewise.
    - ``gelu``, ``silu``, ``softplus`` (J&A's code raises here too): ``|h| < 0.01``, mirroring sigmoid's
      low-saturation threshold; on the negative tail this is where the slope is about 0.01 or less.
      Caveat: gelu/silu also have ``|h| < 0.01`` in a thin band ``|z| < ~0.02`` where the unit is not
      gradient-dead; post-activations alone cannot tell the two apart.

    Args:
        acts: post-activation outputs ``[..., H]``.
        activation: the activation's name (static), one of ``plastix.nets.ACTIVATIONS``.
    """
    h = acts
    if activation in ("relu", "crelu"):
        return h == 0
    if activation == "tanh":
        return jnp.abs(h) > SATURATION_THRESHOLD
    if activation == "sigmoid":
        return (h < SIGMOID_LOW_THRESHOLD) | (h > SATURATION_THRESHOLD)
    if activation in ("none", "dff"):  # sin and cos (Plasticine's DFF) are never flat in both outputs
        return jnp.zeros_like(h, dtype=bool)
    if activation in ("gelu", "silu", "softplus"):
        return jnp.abs(h) < SMOOTH_DEAD_THRESHOLD
    raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")


def dead_units(acts: jax.Array, activation: str) -> jax.Array:
    """Juliani & Ash's dead-unit fraction: the fraction of *elements* of ``acts`` (over batch, space and
    units) that are dead, ``mean(dead_elements(acts, activation))`` (their ``calc_dead_units``: for ReLU
    ``torch.mean((x == 0).float())``). A float scalar in [0, 1].

    This is not a count of units: a unit that is zero on half the batch contributes half. The per-unit
    measure (dead on every input) is ``dead_units_every_input``.

    Args:
        acts: post-activation outputs ``[..., H]``.
        activation: the activation's name (static); criteria in ``dead_elements``.
    """
    return jnp.mean(dead_elements(acts, activation).astype(jnp.float32))


def active_units(acts: jax.Array, activation: str) -> jax.Array:
    """Plasticine's fraction of active units (``compute_active_units`` in RLE-Foundation/Plasticine):
    ``1 - dead_units(acts, activation)``, a float scalar in [0, 1]."""
    return 1.0 - dead_units(acts, activation)


def dead_units_every_input_mask(acts: jax.Array, activation: str) -> jax.Array:
    """Boolean ``[H]``: units dead on *every* element of the leading (batch/spatial) axes of ``acts [..., H]``
    (criteria in ``dead_elements``). A stricter, per-unit quantity than J&A's ``dead_units``."""
    dead = dead_elements(acts, activation)
    return jnp.all(dead.reshape(-1, dead.shape[-1]), axis=0)


def dead_units_every_input(acts: jax.Array, activation: str) -> jax.Array:
    """Fraction (float scalar) of units dead on every input of the batch (``dead_units_every_input_mask``)."""
    return jnp.mean(dead_units_every_input_mask(acts, activation).astype(jnp.float32))
