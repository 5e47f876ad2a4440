"""Mitigations that act at every update, as optax ``GradientTransformation`` s.

Each factory returns an ``optax.GradientTransformation`` (``init(params) -> state``,
``update(updates, state, params) -> (updates, state)``) with its state in a small named tuple. Two places in
an Adam chain matter:

* **gradient transforms** (``l2``, ``l2_init``) add a penalty's gradient to the raw gradient, *before*
  ``scale_by_adam``; Adam then rescales it like the loss gradient (PyTorch ``Adam(weight_decay=...)``).
* **parameter transforms** (``soft_shrink_perturb``, ``weight_clipping``) rewrite the *final* update so that
  ``params + update`` equals the parameters the method prescribes after the optimizer step; they go after
  ``scale_by_learning_rate``, with ``weight_clipping`` last (only a trailing ``injection_freeze`` may follow).

``make_optimizer`` builds the whole chain in that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from plastix.mitigations._layers import fresh_params
from plastix.mitigations.optimizer_state import scale_by_adam_gnt

Params = Any


def l2(weight_decay: float) -> optax.GradientTransformation:
    """Coupled L2 regularisation: adds ``weight_decay * theta`` to the gradient; place it *before* Adam.

    This is the gradient of ``(weight_decay / 2) * ||theta||^2`` and what PyTorch's
    ``Adam(weight_decay=...)`` does (the OCP paper's PPO uses 1e-4; Juliani & Ash 2024 use 1e-3). Decoupled
    AdamW (Loshchilov & Hutter 2019) is ``decoupled_weight_decay`` *after* Adam; ``make_optimizer`` builds
    either chain.

    Example:
      >>> import optax
      >>> tx = optax.chain(l2(1e-4), optax.adam(1e-4))
    """
    return optax.add_decayed_weights(weight_decay)


def decoupled_weight_decay(weight_decay: float) -> optax.GradientTransformation:
    """Decoupled (AdamW) weight decay: adds ``weight_decay * theta`` to Adam's *output*, before the lr scale.

    ``optax.chain(optax.scale_by_adam(), decoupled_weight_decay(wd), optax.scale_by_learning_rate(lr))`` is
    ``optax.adamw(lr, weight_decay=wd)``: ``theta <- theta - lr * (adam_step + wd * theta)``.
    """
    return optax.add_decayed_weights(weight_decay)


class L2InitState(NamedTuple):
    """State of ``l2_init``: the initial parameters ``theta_0``."""

    init_params: Params


def l2_init(lam: float, form: str = "squared") -> optax.GradientTransformation:
    """Regenerative regularisation (Kumar et al. 2023, "Maintaining plasticity in continual learning via
    regenerative regularization"): a penalty on the distance from the initial parameters ``theta_0``.

    Adds the penalty's gradient to the incoming gradient; place it before Adam (like ``l2``). ``theta_0`` is
    the ``params`` given to ``init``. Two forms:

    * ``"squared"`` (default, SCIENCE.md): ``lam * ||theta - theta_0||^2``, gradient ``2 lam (theta - theta_0)``.
    * ``"norm"``: ``lam * ||theta - theta_0||_2``, the norm over *all* parameters at once, as Juliani & Ash's
      code (``algos/ppo/trainer.py``: ``torch.norm(params - params_0, 2)`` of the concatenated parameters);
      gradient ``lam (theta - theta_0) / ||theta - theta_0||_2`` (0 at ``theta_0``, as PyTorch's norm backward).

    Juliani & Ash use ``lam = 0.01`` with the norm form, added to the loss (so before the global-norm clip:
    ``make_optimizer(loss_transforms=...)``). Placed after a ``clip_by_global_norm`` the clip does not see it.

    Args:
      lam: penalty coefficient ``lambda``.
      form: ``"squared"`` or ``"norm"``.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> tx = optax.chain(l2_init(0.01), optax.adam(1e-3))
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    if form not in ("squared", "norm"):
        raise ValueError(f"l2_init: unknown form {form!r}; allowed: 'squared', 'norm'")

    def init(params):
        return L2InitState(init_params=jax.tree.map(jnp.asarray, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("l2_init needs params: call update(updates, state, params)")
        diff = jax.tree.map(lambda p, p0: p - p0, params, state.init_params)
        if form == "squared":
            scale = 2.0 * lam
        else:  # d/dtheta lam ||d|| = lam d / ||d||, and 0 where d = 0
            norm = optax.tree.norm(diff)
            scale = jnp.where(norm > 0, lam / jnp.where(norm > 0, norm, 1.0), 0.0)
        updates = jax.tree.map(lambda g, d: (g + scale * d).astype(g.dtype), updates, diff)
        return updates, state

    return optax.GradientTransformation(init, update)


BOUND_METHODS = ("fan_in", "uniform_equivalent", "max_abs")


def fan_in(kernel: jax.Array) -> int:
    """Inputs per output unit of a Flax kernel: ``n_in`` of a Dense ``[n_in, H]``, ``kh * kw * c_in`` of a
    conv ``[kh, kw, c_in, H]`` (PyTorch's ``_calculate_fan_in_and_fan_out`` on the transposed layout)."""
    return math.prod(kernel.shape[:-1])


def init_bounds(init_params: Params, method: str = "fan_in") -> Params:
    """Per-layer bound ``b_l`` for ``weight_clipping``, a scalar per leaf of ``init_params``.

    * ``"fan_in"`` (default): Elsayed et al.'s ``b_l = 1 / sqrt(fan_in_l)`` (``InitBounds`` in
      mohmdelsayed/weight-clipping, the bound of PyTorch's default uniform init), for the layer's kernel and
      its bias alike, on every layer (their RL script clips the last layer too), whatever the init's gain:
      CleanRL's orthogonal init is used unchanged, as in their ``ppo_continuous_action_clipped.py``.
    * ``"uniform_equivalent"``: the uniform with the init's standard deviation, ``sqrt(3) * rms(W_l^0)``
      (tracks the gain: a 0.01-gain head gets a 100x tighter bound).
    * ``"max_abs"``: ``max |W_l^0|``, the init's empirical bound.

    Every dict with a ``"kernel"`` is a layer; its other leaves (the bias) share the kernel's bound.
    Leaves outside layers (``log_std``, LayerNorm ``scale``/``bias``) get ``inf``: never clipped.
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"init_bounds: unknown method {method!r}; allowed: {', '.join(BOUND_METHODS)}")

    def bound(kernel: jax.Array) -> jax.Array:
        if method == "fan_in":
            return jnp.asarray(1.0 / math.sqrt(fan_in(kernel)), kernel.dtype)
        if method == "uniform_equivalent":
            return math.sqrt(3.0) * jnp.sqrt(jnp.mean(jnp.square(kernel)))
        return jnp.max(jnp.abs(kernel))

    def walk(tree):
        if isinstance(tree, dict) and "kernel" in tree and not isinstance(tree["kernel"], dict):
            b = bound(tree["kernel"])
            return {k: b for k in tree}
        if isinstance(tree, dict):
            return {k: walk(v) for k, v in tree.items()}
        return jnp.asarray(jnp.inf, jnp.result_type(tree))

    return walk(init_params)


class WeightClippingState(NamedTuple):
    """``weight_clipping`` is stateless."""


def weight_clipping(kappa: float, bounds: Params) -> optax.GradientTransformation:
    """Weight clipping (Elsayed et al. 2024, "Weight clipping for deep continual and reinforcement learning").

    After each update every weight is clipped to ``[-kappa * b_l, kappa * b_l]``, ``b_l`` the init bound of
    its layer (``init_bounds``). Clipping acts on parameters, so this transform rewrites the final update to
    ``clip(params + u, -kappa b, kappa b) - params``: ``optax.apply_updates`` then lands inside the bounds.
    Put it *last* in the chain (after the learning-rate scale and ``soft_shrink_perturb``); only
    ``injection_freeze`` may follow.

    Args:
      kappa: clipping multiplier (Elsayed et al. use 1-4).
      bounds: per-leaf ``b_l``, a tree shaped like the params with scalar (or broadcastable) leaves.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> p0 = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> tx = optax.chain(optax.adam(1.0), weight_clipping(2.0, init_bounds(p0)))
    """

    def init(params):
        del params
        return WeightClippingState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight_clipping needs params: call update(updates, state, params)")
        updates = jax.tree.map(
            lambda u, p, b: (jnp.clip(p + u, -kappa * b, kappa * b) - p).astype(u.dtype),
            updates,
            params,
            bounds,
        )
        return updates, state

    return optax.GradientTransformation(init, update)


class SoftShrinkPerturbState(NamedTuple):
    """State of ``soft_shrink_perturb``: the PRNG key of the next fresh initialisation."""

    key: jax.Array


def soft_shrink_perturb(
    init_fn: Callable[[jax.Array], Params],
    key: jax.Array | int = 0,
    lam: float = 0.999999,
    sigma: float = 1e-6,
) -> optax.GradientTransformation:
    """Soft shrink & perturb (Ash & Adams 2020; the "soft" every-update variant of Juliani & Ash 2024).

    After every optimizer step ``theta <- lam * theta + sigma * theta_fresh``, ``theta_fresh = init_fn(k)`` a
    *fresh* random initialisation drawn with a new key ``k`` each update. As a transform on the final update
    ``u``: ``u' = lam * (params + u) + sigma * theta_fresh - params``. Place it after the learning-rate scale
    and before ``weight_clipping``.

    Args:
      init_fn: ``key -> params``, the network's initializer (e.g. ``lambda k: model.init(k, x)["params"]``).
      key: PRNG key (or int seed) of the first fresh init; split every update. Under ``vmap`` over seeds build
        the optimizer inside the vmapped function with a per-seed key.
      lam: shrink factor (0.999999).
      sigma: perturbation scale (1e-6).
    """
    key0 = jax.random.PRNGKey(key) if isinstance(key, int) else key

    def init(params):
        del params
        return SoftShrinkPerturbState(key=key0)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("soft_shrink_perturb needs params: call update(updates, state, params)")
        key, sub = jax.random.split(state.key)
        fresh = fresh_params(init_fn, sub, params)
        updates = jax.tree.map(
            lambda u, p, f: (lam * (p + u) + sigma * f - p).astype(u.dtype), updates, params, fresh
        )
        return updates, SoftShrinkPerturbState(key=key)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    learning_rate: float | optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-5,
    max_grad_norm: float | None = None,
    weight_decay: float = 0.0,
    weight_decay_mode: str = "coupled",
    loss_transforms: Sequence[optax.GradientTransformation] = (),
    gradient_transforms: Sequence[optax.GradientTransformation] = (),
    parameter_transforms: Sequence[optax.GradientTransformation] = (),
    final_transforms: Sequence[optax.GradientTransformation] = (),
    per_element_count: bool = False,
    wrap_base: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = None,
) -> optax.GradientTransformation:
    """Adam with the per-update mitigations in their right places.

    The chain, in order::

        *loss_transforms                            # penalties of the loss, clipped with its gradient
        clip_by_global_norm(max_grad_norm)          # if max_grad_norm
        l2(weight_decay)                            # weight_decay_mode == "coupled"
        *gradient_transforms                        # e.g. l2_init(lam)
        scale_by_adam(b1, b2, eps)
        decoupled_weight_decay(weight_decay)        # weight_decay_mode == "decoupled" (AdamW)
        scale_by_learning_rate(learning_rate)
        *parameter_transforms                       # e.g. soft_shrink_perturb(...), weight_clipping(...)
        *final_transforms                           # e.g. injection_freeze()

    Args:
      learning_rate: float or optax schedule (CleanRL anneals it linearly).
      b1, b2, eps: Adam's (CleanRL: eps 1e-5).
      max_grad_norm: global-norm clip (CleanRL PPO: 0.5), or None.
      weight_decay: L2 coefficient (0 disables; the OCP paper's PPO: 1e-4).
      weight_decay_mode: ``"coupled"`` (L2 in the gradient, PyTorch ``Adam``) or ``"decoupled"`` (AdamW).
      loss_transforms: penalties whose gradient joins the loss gradient before the clip (Juliani & Ash's
        L2-init term, ``l2_init(lam, "norm")``).
      gradient_transforms: transforms on the clipped gradient, before Adam.
      parameter_transforms: transforms on the final update that target parameter values; put
        ``weight_clipping`` last among them.
      final_transforms: masks that must see the very last update (``injection_freeze``).
      per_element_count: Adam with a step count per parameter element (``scale_by_adam_gnt``, Dohare et
        al.'s AdamGnT, for continual backprop) instead of ``optax.scale_by_adam``.
      wrap_base: wraps the base optimizer, the part from the coupled L2 to the learning-rate scale (it sees
        the clipped gradient), e.g. ``plasticine.trac``; parameter and final transforms stay outside.
    """
    if weight_decay_mode not in ("coupled", "decoupled"):
        raise ValueError(f"weight_decay_mode must be 'coupled' or 'decoupled', got {weight_decay_mode!r}")
    head: list[optax.GradientTransformation] = list(loss_transforms)
    if max_grad_norm is not None:
        head.append(optax.clip_by_global_norm(max_grad_norm))
    parts: list[optax.GradientTransformation] = []
    if weight_decay and weight_decay_mode == "coupled":
        parts.append(l2(weight_decay))
    parts.extend(gradient_transforms)
    adam = scale_by_adam_gnt if per_element_count else optax.scale_by_adam
    parts.append(adam(b1=b1, b2=b2, eps=eps))
    if weight_decay and weight_decay_mode == "decoupled":
        parts.append(decoupled_weight_decay(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    if wrap_base is not None:
        parts = [wrap_base(optax.chain(*parts))]
    return optax.chain(*head, *parts, *parameter_transforms, *final_transforms)
