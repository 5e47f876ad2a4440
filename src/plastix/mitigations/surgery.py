"""The surgery interface: mitigations that rewrite parameters *and* optimizer state.

A ``Surgery`` is a pair of pure functions, like an optax transform but on the whole training state::

    state = surgery.init(params, key)
    params, opt_state, state, metrics = surgery.apply(params, opt_state, state, batch_info, key)

``batch_info`` (``BatchInfo``) carries what surgeries read from the current batch: the hidden activations
(``plastix.nets.hidden_activations``), per-neuron zero-gradient (MAGI) scores, and whether this update is a
task switch. ``metrics`` is a flat dict of float32 scalars under ``"mitigation/<name>/..."``.

``scheduled`` decides *when* a surgery fires (every N calls, at task switches, or both) with ``lax.cond``,
and ``chain_surgeries`` runs several in sequence; both return a ``Surgery`` again, so the trainer makes one
call per update step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

Params = Any
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class BatchInfo:
    """What a surgery may read about the current batch.

    Attributes:
      activations: ``{"policy/layer_1": (pre, post), ...}`` from ``plastix.nets.hidden_activations`` on the
        current batch (``post`` is ``[..., W]``; batch axes are averaged). Needed by ReDo and continual
        backprop.
      magi: ``{"policy/layer_1": G [H], ...}`` per-neuron zero-gradient index (SCIENCE.md Eqs. 16-18). Needed
        by the OCP perturbation.
      task_switch: scalar bool, true on the first update after a task switch (read by ``scheduled``).
      phase: where the trainer calls the surgeries (static): ``"any"`` (default, for hand-written loops: an
        at-switch surgery fires on the call whose ``task_switch`` is true), or the trainer's two phases:
        ``"round_start"`` (once per update, before the rollout: only at-switch surgeries that read no batch
        fire, so a reset network collects the new round's first rollout itself) and ``"step"`` (after each
        gradient step: periodic surgeries, and at-switch surgeries that read the batch, e.g. ReDo, on the
        new task's data).
      magi_fn: optional ``() -> magi``, used when ``magi`` is None. The trainer passes this instead of
        ``magi`` so a ``scheduled`` surgery computes MAGI only inside its firing branch (the MAGI costs
        a backward pass per layer; computed at every gradient step it cost 18% of throughput).
      step: int32 scalar, the gradient step counted by ``scheduled`` (its call count, from 1), given to the
        wrapped surgery when it fires; None outside ``scheduled``. ReDo's scheduled fraction reads it.
    """

    activations: Any = None
    magi: Any = None
    task_switch: Any = False
    step: Any = None
    magi_fn: Callable[[], Any] | None = flax.struct.field(pytree_node=False, default=None)
    phase: str = flax.struct.field(pytree_node=False, default="any")

    def layer_magi(self) -> Any:
        """``magi``, or ``magi_fn()`` when only the function was given, or None."""
        if self.magi is not None or self.magi_fn is None:
            return self.magi
        return self.magi_fn()


class Surgery(NamedTuple):
    """A parameter-and-optimizer-state rewrite: ``init(params, key) -> state`` and
    ``apply(params, opt_state, state, batch_info, key) -> (params, opt_state, state, metrics)``.

    ``apply`` is pure and jit-/vmap-compatible; unscheduled, it acts at every call except the trainer's
    ``round_start`` call (``BatchInfo.phase``). ``reads_batch``: it reads ``BatchInfo`` activations or MAGI
    (so at a switch it waits for the new round's first batch).
    """

    init: Callable[[Params, jax.Array], Any]
    apply: Callable[
        [Params, optax.OptState, Any, BatchInfo, jax.Array], tuple[Params, optax.OptState, Any, Metrics]
    ]
    reads_batch: bool = False


class EmptyState(NamedTuple):
    """State of a stateless surgery."""


def stateless_init(params: Params, key: jax.Array) -> EmptyState:
    """``Surgery.init`` of surgeries without state."""
    del params, key
    return EmptyState()


def f32(x: Any) -> jax.Array:
    """A metric value as a float32 scalar."""
    return jnp.asarray(x, jnp.float32)


class ScheduledState(NamedTuple):
    """State of ``scheduled``: the number of calls so far and the wrapped surgery's state."""

    count: jax.Array
    inner: Any


def scheduled(surgery: Surgery, every: int | None = None, at_switch: bool = False, name: str = "") -> Surgery:
    """Fire ``surgery`` on every ``every``-th call, and/or on calls where ``batch_info.task_switch`` is true.

    The call counter counts ``apply`` calls (the trainer's gradient steps; not its ``round_start`` calls),
    the ``every``-th, ``2*every``-th, ... fire. At a switch, see ``BatchInfo.phase``: in the trainer an
    at-switch surgery that reads no batch fires before the new round's first rollout, one that reads the
    batch on the round's first gradient step. Uses ``jax.lax.cond``, so it works under ``jit``; under
    ``vmap`` the cond becomes a select and both branches run. On calls that do not fire, parameters, optimizer state and the surgery's state are
    returned unchanged and its metrics are zeros. Adds ``"mitigation/<name>/applied"`` (1.0 or 0.0) when
    ``name`` is given.

    Args:
      surgery: the surgery to schedule.
      every: period in calls (None: never by count).
      at_switch: also fire when ``batch_info.task_switch``.
      name: metric namespace of the ``applied`` flag.

    Example:
      >>> redo_every_1000 = scheduled(redo(init_fn, tau=0.1), every=1000, name="redo")  # doctest: +SKIP
    """
    if every is None and not at_switch:
        raise ValueError("scheduled: give every=N, at_switch=True, or both")
    if every is not None and every < 1:
        raise ValueError(f"scheduled: every must be >= 1, got {every}")

    def init(params, key):
        return ScheduledState(count=jnp.zeros((), jnp.int32), inner=surgery.init(params, key))

    def apply(params, opt_state, state, batch_info, key):
        phase, switch = batch_info.phase, jnp.asarray(batch_info.task_switch, bool)
        count = state.count if phase == "round_start" else state.count + 1  # counts gradient steps only
        fire = jnp.zeros((), bool)
        if every is not None and phase != "round_start":
            fire = fire | (count % every == 0)
        if at_switch and (phase == "any" or (phase == "round_start") != surgery.reads_batch):
            fire = fire | switch

        def run(args):
            p, o, s, b, k = args
            return surgery.apply(p, o, s, b.replace(step=count), k)

        def skip(args):
            p, o, s, b, k = args
            metrics_shape = jax.eval_shape(surgery.apply, p, o, s, b.replace(step=count), k)[3]
            return p, o, s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

        args = (params, opt_state, state.inner, batch_info, key)
        if phase == "round_start" and not (at_switch and not surgery.reads_batch):  # cannot fire: no branch
            params, opt_state, inner, metrics = skip(args)
            metrics = _applied(dict(metrics), name, fire)
            return params, opt_state, ScheduledState(count=count, inner=inner), metrics

        params, opt_state, inner, metrics = jax.lax.cond(fire, run, skip, args)
        return params, opt_state, ScheduledState(count=count, inner=inner), _applied(dict(metrics), name, fire)

    return Surgery(init, apply, surgery.reads_batch)


def _applied(metrics: dict, name: str, fire: jax.Array) -> dict:
    """Add ``mitigation/<name>/applied`` (1.0 when the scheduled surgery fired) when ``name`` is given."""
    if name:
        metrics[f"mitigation/{name}/applied"] = f32(fire)
    return metrics


def chain_surgeries(*surgeries: Surgery) -> Surgery:
    """Run several surgeries in sequence (each sees the previous one's output); metrics are merged.

    The state is a tuple of the surgeries' states; each gets its own subkey.
    """

    def init(params, key):
        keys = jax.random.split(key, max(len(surgeries), 1))
        return tuple(s.init(params, k) for s, k in zip(surgeries, keys))

    def apply(params, opt_state, state, batch_info, key):
        keys = jax.random.split(key, max(len(surgeries), 1))
        new_states, metrics = [], {}
        for s, st, k in zip(surgeries, state, keys):
            params, opt_state, st, m = s.apply(params, opt_state, st, batch_info, k)
            new_states.append(st)
            metrics.update(m)
        return params, opt_state, tuple(new_states), metrics

    return Surgery(init, apply)
