"""Plasticity injection (Nikishin et al. 2023, "Deep RL with plasticity injection").

At a switch the head ``f`` of each network is frozen and two fresh, identical heads ``a`` and ``b`` are added;
the output becomes ``f(x) + a(x) - stop_gradient(b(x))``: unchanged at injection time (``a == b``), after which
only ``a`` (and the shared trunk) learn. The trunk keeps training through both ``f`` and ``a``.

plastix keeps the parameter tree's *structure fixed* for the whole run so the switch can happen inside a
jitted/scanned loop: the heads are pre-allocated under ``params["injection"]`` and an ``active`` flag in the
optimizer state turns them on. How the trainer uses it:

1. ``params = add_injection_heads(params, head_layers)`` before building the optimizer (and
   ``init_fn = with_injection_heads(init_fn, head_layers)`` if ``init_fn`` feeds other mitigations; they also
   accept the plain one).
2. Put ``injection_freeze(head_layers)`` *last* in the optax chain
   (``make_optimizer(..., final_transforms=[injection_freeze()])``). It zeroes the *final* update (not the
   gradient: Adam's momentum would keep moving a zero-gradient parameter) of every frozen parameter:
   before injection ``a`` and ``b``; after it ``f`` and ``b``.
3. Replace ``model.apply`` by ``forward = make_injected_apply(model, head_layers)``, called as
   ``forward(params, obs, injection_active(opt_state))``; it returns what ``model.apply`` returns.
4. Fire ``scheduled(plasticity_injection(init_fn, head_layers), at_switch=True)``: it draws the fresh
   heads, sets ``active``, zeroes the Adam moments of the heads. A linear head (``head_layers=1``) is
   re-injected at every call, the previous ``a - b`` folded into ``f`` first (Juliani & Ash inject at every
   shift); a head with a hidden layer is injected once (it cannot be folded into one network).

``head_layers`` is how many final layers form the head: 1 = the output Dense only, 2 (default) = the last
hidden layer and the output. With a single *linear* output head, ``a(x) - b(x)`` has the same gradient as
``f`` itself, so 1-layer injection only amounts to resetting the head's Adam moments (and, with
``freeze_head=False`` as Juliani & Ash run it, ``f`` and ``a`` take the same steps: the head moves twice as
fast); 2 layers give the new head fresh hidden units.

Networks (``plastix.nets``):

* ``ActorCritic``, ``DiscreteActorCritic``, ``MLP``: every MLP (``policy``, ``value``) has its own head and
  its own pair ``a, b``; the policy's adds to the Gaussian mean or to the categorical logits.
* ``JulianiAshActorCritic``: like ``CNNActorCritic`` with ``head_layers=1`` (their ``Injector`` wraps the
  policy and value ``nn.Linear`` heads); ``freeze_head=False`` is their code (``f`` keeps training).
* ``CNNActorCritic``: the two output Dense layers ``policy_output`` and ``value_output`` sit on the shared
  torso's features, so one pair ``a, b`` (key ``"_"``) copies the network above the injection point and
  gives both outputs (logits and value). ``head_layers=1``: the head is the two output Denses, the whole
  torso keeps training (as Nikishin et al. keep the encoder). ``head_layers=2``: the head also takes the
  torso's final Dense (``layer_4`` of the Nature CNN, ``dense`` of the IMPALA CNN), so ``a`` gets fresh
  hidden units on the conv features, as in Nikishin et al.'s Atari agents (the conv encoder keeps training,
  the fully connected layers are the head). With ``head_layers=1`` the heads are linear, so the caveat above
  applies: use 2 (the default) for fresh units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from plastix import nets
from plastix.mitigations._layers import (
    INJECTION_KEY,
    get_path,
    hidden_layer_names,
    injection_key,
    injection_path,
    mlp_paths,
    select_paths,
    set_path,
    to_dict,
)
from plastix.mitigations.optimizer_state import scale_adam_moments
from plastix.mitigations.surgery import Surgery, f32, stateless_init

Params = Any


def head_names(mlp: dict, head_layers: int) -> list[str]:
    """Names of the head's parameter dicts inside an MLP: last ``head_layers - 1`` hidden layers
    (with their LayerNorms) and ``"output"``."""
    hidden = hidden_layer_names(mlp)
    if not 1 <= head_layers <= len(hidden) + 1:
        raise ValueError(f"head_layers must be in [1, {len(hidden) + 1}], got {head_layers}")
    names = []
    for name in hidden[len(hidden) - (head_layers - 1) :]:
        names.append(name)
        norm = name.replace("layer_", "layer_norm_")
        if norm in mlp:
            names.append(norm)
    return names + ["output"]


def _is_cnn_actor_critic(params: Params) -> bool:
    """The parameter layout of ``plastix.nets.CNNActorCritic``: a ``torso`` and two output Denses."""
    return isinstance(params, dict) and all(k in params for k in ("torso", "policy_output", "value_output"))


def torso_dense_name(torso: dict) -> str:
    """The CNN torso's final Dense layer (its 2-D kernel): ``"layer_4"`` (Nature), ``"dense"`` (IMPALA)."""
    names = [k for k, v in torso.items() if isinstance(v, dict) and getattr(v.get("kernel"), "ndim", 0) == 2]
    if len(names) != 1:
        raise ValueError(f"expected one Dense layer in the CNN torso, found {names}")
    return names[0]


def head_paths(params: Params, head_layers: int = 2) -> dict[str, list[tuple[str, ...]]]:
    """``{net key: [path of each parameter dict of its head f, relative to the network's path]}``.

    An MLP at ``path`` (key ``injection_key(path)``): ``[(name,) for name in head_names(...)]``. The CNN
    actor-critic (key ``"_"``): ``[("policy_output",), ("value_output",)]``, after
    ``("torso", torso_dense_name(...))`` when ``head_layers == 2``.
    """
    if _is_cnn_actor_critic(params):
        if head_layers not in (1, 2):
            raise ValueError(f"head_layers must be 1 or 2 for the CNN actor-critic, got {head_layers}")
        hidden = [("torso", torso_dense_name(params["torso"]))] if head_layers == 2 else []
        return {injection_key(()): hidden + [("policy_output",), ("value_output",)]}
    return {
        injection_key(path): [(name,) for name in head_names(get_path(params, path), head_layers)]
        for path in mlp_paths(params)
    }


def add_injection_heads(params: Params, head_layers: int = 2) -> Params:
    """``params`` plus ``params["injection"][net] = {"a": head, "b": head}`` per network (``head_paths``).

    The pre-allocated heads are copies of the current head (``a == b``, so ``a(x) - b(x) == 0``); they stay
    frozen until ``plasticity_injection`` fires. A head keeps the tree structure of its network's parameters
    (``{"layer_2": ..., "output": ...}``; ``{"torso": {"dense": ...}, "policy_output": ..., ...}``).
    """
    params = to_dict(params)
    heads = {}
    for net_key, paths in head_paths(params, head_layers).items():
        head = select_paths(get_path(params, injection_path(net_key)), paths)
        heads[net_key] = {"a": head, "b": jax.tree.map(jnp.array, head)}
    return {**params, INJECTION_KEY: heads}


def with_injection_heads(init_fn: Callable[[jax.Array], Params], head_layers: int = 2):
    """Wrap ``init_fn`` so that fresh parameters carry injection heads (``a == b`` fresh heads)."""
    return lambda key: add_injection_heads(init_fn(key), head_layers)


class InjectionFreezeState(NamedTuple):
    """State of ``injection_freeze``: ``active`` is 1.0 once the heads have been injected."""

    active: jax.Array


def _is_freeze(node: Any) -> bool:
    return isinstance(node, InjectionFreezeState)


def trainable_mask(params: Params, active: jax.Array, head_layers: int = 2, freeze_head: bool = True) -> Params:
    """Per-parameter update multiplier: 1 trainable, 0 frozen (scalar leaves).

    Inactive: the injection heads ``a``, ``b`` are frozen. Active: ``a`` trains, ``b`` is frozen, and every
    network's head ``f`` is frozen when ``freeze_head`` (Nikishin et al.), else keeps training (Juliani &
    Ash's ``Injector``). Everything else (the trunk, ``log_std``) always trains.
    """
    active = jnp.asarray(active, jnp.float32)
    mask = jax.tree.map(lambda p: jnp.ones((), p.dtype), params)
    frozen_heads = head_paths(params, head_layers).items() if freeze_head else ()
    for net_key, paths in frozen_heads:
        for path in paths:
            full = injection_path(net_key) + path
            frozen = jax.tree.map(lambda m: (1.0 - active).astype(m.dtype), get_path(mask, full))
            mask = set_path(mask, full, frozen)
    if INJECTION_KEY in params:
        for net_key, pair in params[INJECTION_KEY].items():
            mask = set_path(
                mask,
                (INJECTION_KEY, net_key),
                {
                    "a": jax.tree.map(lambda p: active.astype(p.dtype), pair["a"]),
                    "b": jax.tree.map(lambda p: jnp.zeros((), p.dtype), pair["b"]),
                },
            )
    return mask


def injection_freeze(head_layers: int = 2, freeze_head: bool = True) -> optax.GradientTransformation:
    """Zero the final updates of frozen parameters (``trainable_mask``); place it *last* in the chain.

    Its state holds the ``active`` flag that ``plasticity_injection`` sets; read it with ``injection_active``.
    ``freeze_head=False`` keeps the old head ``f`` training after injection (Juliani & Ash).
    """

    def init(params):
        del params
        return InjectionFreezeState(active=jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("injection_freeze needs params: call update(updates, state, params)")
        mask = trainable_mask(params, state.active, head_layers, freeze_head)
        return jax.tree.map(lambda u, m: (u * m).astype(u.dtype), updates, mask), state

    return optax.GradientTransformation(init, update)


def injection_active(opt_state: optax.OptState) -> jax.Array:
    """The ``active`` flag (float32 scalar, 0 or 1) of the ``injection_freeze`` in ``opt_state``."""
    nodes = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_freeze) if _is_freeze(n)]
    if not nodes:
        raise ValueError("no injection_freeze() in the optimizer chain")
    return nodes[0].active


def _set_active(opt_state: optax.OptState, value: float) -> optax.OptState:
    return jax.tree.map(
        lambda n: InjectionFreezeState(active=jnp.full_like(n.active, value)) if _is_freeze(n) else n,
        opt_state,
        is_leaf=_is_freeze,
    )


def plasticity_injection(init_fn: Callable[[jax.Array], Params], head_layers: int = 2) -> Surgery:
    """Inject fresh heads: ``a, b <- `` the head of a fresh ``init_fn(key)`` (the same for both), ``active <- 1``.

    A linear head (``head_layers=1``) is injected at *every* call, as Juliani & Ash's ``Injector``
    (``shared/modules.py``): the previous pair is first folded into the head, ``f <- f + a - b`` (before
    the first injection ``a == b``, so ``f`` is unchanged), then fresh ``a == b`` are drawn; the output is
    unchanged at each injection. A head with a hidden layer cannot be folded, so it is injected at the first
    call only (later calls are no-ops and report ``injected = 0``; ``plastix.config`` refuses schedules
    that would fire it again). Zeroes Adam's ``mu``/``nu`` of the injection heads and of every head ``f``
    (the count is kept). Requires ``add_injection_heads`` params and ``injection_freeze`` in the optimizer.

    Returns:
      A stateless ``Surgery``; metric ``mitigation/injection/injected`` (1.0 when it injected).
    """

    def inject(args):
        params, opt_state, key = args
        fresh = to_dict(init_fn(key))
        keep = jax.tree.map(lambda p: jnp.ones((), p.dtype), params)
        zeros = lambda t: jax.tree.map(lambda p: jnp.zeros((), p.dtype), t)
        for net_key, paths in head_paths(params, head_layers).items():
            net_path = injection_path(net_key)
            if head_layers == 1:
                params = _fold_pair(params, net_key, paths)
            head = select_paths(get_path(fresh, net_path), paths)
            params = set_path(
                params, (INJECTION_KEY, net_key), {"a": head, "b": jax.tree.map(jnp.array, head)}
            )
            keep = set_path(keep, (INJECTION_KEY, net_key), zeros(params[INJECTION_KEY][net_key]))
            for path in paths:
                keep = set_path(keep, net_path + path, zeros(get_path(params, net_path + path)))
        opt_state = _set_active(scale_adam_moments(opt_state, keep), 1.0)
        return params, opt_state, f32(1.0)

    def apply(params, opt_state, state, batch_info, key):
        params = to_dict(params)
        if INJECTION_KEY not in params:
            raise ValueError("plasticity_injection needs params from add_injection_heads(params)")
        once_only = head_layers > 1 and injection_active(opt_state) > 0
        params, opt_state, injected = jax.lax.cond(
            once_only, lambda a: (a[0], a[1], f32(0.0)), inject, (params, opt_state, key)
        )
        return params, opt_state, state, {"mitigation/injection/injected": injected}

    return Surgery(stateless_init, apply)


def _fold_pair(params: Params, net_key: str, paths: list[tuple[str, ...]]) -> Params:
    """``f <- f + a - b`` for each linear layer of network ``net_key``'s head (Juliani & Ash's re-injection:
    ``Injector.original.weight = aw + bw - cw``), so that ``f(x) + a(x) - b(x)`` is one linear head again."""
    net_path, pair = injection_path(net_key), params[INJECTION_KEY][net_key]
    for path in paths:
        f = get_path(params, net_path + path)
        folded = jax.tree.map(lambda w, a, b: w + (a - b), f, get_path(pair["a"], path), get_path(pair["b"], path))
        params = set_path(params, net_path + path, folded)
    return params


def _head_apply(head: dict, h: jax.Array, activation: str) -> jax.Array:
    """Run a head (``layer_i`` [-> ``layer_norm_i``] -> activation ..., then ``output``) on features ``h``."""
    act = nets.activation_fn(activation)
    hidden = hidden_layer_names(head)
    for name in hidden:
        z = h @ head[name]["kernel"] + head[name]["bias"]
        norm = name.replace("layer_", "layer_norm_")
        if norm in head:
            z = nn.LayerNorm(param_dtype=jnp.float32).apply({"params": head[norm]}, z)
        h = act(z)
    return h @ head["output"]["kernel"] + head["output"]["bias"]


def _cnn_head_apply(head: dict, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A CNN actor-critic head on features ``z [..., F]``: ``(logits [..., A], value [...])``; with the
    torso's final Dense in the head (``head_layers=2``), ``z`` is the flattened conv output and goes through
    it and a ReLU first."""
    for dense in head.get("torso", {}).values():
        z = jax.nn.relu(z @ dense["kernel"] + dense["bias"])
    logits = z @ head["policy_output"]["kernel"] + head["policy_output"]["bias"]
    value = z @ head["value_output"]["kernel"] + head["value_output"]["bias"]
    return logits, value[..., 0]


def _cnn_head_input(acts: dict, head_layers: int) -> jax.Array:
    """The input of the CNN head, from the torso's sown activations: the torso's output (its last sown
    layer) for ``head_layers=1``; the flattened layer below it (the final Dense's input) for 2."""
    n = max(int(name.rsplit("_", 1)[1]) for name in acts if name.startswith("torso/layer_"))
    if head_layers == 1:
        return acts[f"torso/layer_{n}"][1]
    post = acts[f"torso/layer_{n - 1}"][1]
    return post.reshape(post.shape[:-3] + (-1,))


def make_injected_apply(model: nn.Module, head_layers: int = 2) -> Callable:
    """Forward pass with injection: ``forward(params, x, active)`` returns what ``model.apply`` returns, each
    network's output plus ``active * (a(h) - stop_gradient(b(h)))``.

    ``h`` is the input of the head: the post-activation of the hidden layer just below it (read from the
    sown intermediates), or ``x`` when the head is the whole MLP. Supports ``plastix.nets.ActorCritic``
    (adds to the policy mean and the value), ``DiscreteActorCritic`` (to the logits and the value),
    ``CNNActorCritic`` (one pair for both outputs, see the module docstring) and ``MLP``.

    Args:
      model: the Flax module.
      head_layers: as in ``add_injection_heads``.
    """
    shared_torso = (nets.CNNActorCritic, nets.JulianiAshActorCritic)  # one pair for both outputs
    supported = (nets.ActorCritic, nets.DiscreteActorCritic, *shared_torso, nets.MLP)
    if not isinstance(model, supported):
        names = ", ".join(t.__name__ for t in supported)
        raise TypeError(f"make_injected_apply supports {names}, got {type(model)}")

    def forward(params, x, active):
        params = to_dict(params)
        base = {k: v for k, v in params.items() if k != INJECTION_KEY}
        out, state = model.apply({"params": base}, x, mutable=["intermediates"])
        acts = nets.hidden_activations(state["intermediates"])
        if isinstance(model, shared_torso):
            pair, z = params[INJECTION_KEY]["_"], _cnn_head_input(acts, head_layers)
            deltas = [
                jnp.asarray(active, a.dtype) * (a - jax.lax.stop_gradient(b))
                for a, b in zip(_cnn_head_apply(pair["a"], z), _cnn_head_apply(pair["b"], z))
            ]
            return out[0] + deltas[0], out[1] + deltas[1]
        deltas = {}
        for net_key, pair in params[INJECTION_KEY].items():
            path = injection_path(net_key)
            n_hidden = len(hidden_layer_names(get_path(base, path)))
            below = n_hidden - (head_layers - 1)
            h = acts["/".join(path + (f"layer_{below}",))][1] if below >= 1 else x.astype(jnp.float32)
            a = _head_apply(pair["a"], h, model.activation)
            b = _head_apply(pair["b"], h, model.activation)
            deltas[net_key] = jnp.asarray(active, a.dtype) * (a - jax.lax.stop_gradient(b))
        if isinstance(model, nets.ActorCritic):
            mean, log_std, value = out
            return mean + deltas["policy"], log_std, value + deltas["value"][..., 0]
        if isinstance(model, nets.DiscreteActorCritic):
            logits, value = out
            return logits + deltas["policy"], value + deltas["value"][..., 0]
        return out + deltas["_"]

    return forward
