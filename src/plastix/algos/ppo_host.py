"""The host-driven PPO learner: the image envs' learner, because XLA's CPU backend runs convolution
gradients inside loops (``lax.scan``/``lax.map``/``while``) on a slow path (jax-ml/jax#12868; measured by
``bench/cnn_in_loop.py``: tens of times slower than the same gradient jitted alone).

The maths is ``plastix.algos.ppo``'s, function for function; only where the loops run changes:

- the rollout (surgeries' ``round_start``, then ``num_steps`` env steps) is one jitted call for every member
  (``make_rollout_fn``: forward passes inside ``lax.scan`` are not on the slow path);
- each member then learns in its own calls: ``Agent.learn_begin`` (GAE, batch, minibatch order), one jitted
  ``Agent.minibatch_step`` (``ppo_minibatch_update``) per minibatch, driven from Python for ``update_epochs``
  x ``num_minibatches`` steps, ``Agent.learn_end``, then ``Agent.measure`` with its schedule decided on the
  host (no ``lax.cond``). No convolution gradient runs inside an XLA loop.

Members are learned one after the other, not ``vmap``-ped: a ``vmap`` over members turns each convolution
into a grouped convolution, whose gradient XLA's CPU backend runs ~4x slower than the members' convolutions
one by one (``bench/image_ppo.py`` measures both). It also keeps the compiled learner's property that a seed
trained in a group is bit-identical to the seed trained alone. Results equal the compiled learner's
(``make_chunk_fn``) within float tolerance (XLA fuses the two programs differently).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from plastix.algos.ppo import (
    Agent,
    TrainState,
    fresh_members,
    finish_metrics,
    make_rollout_fn,
    stop_after_epoch,
)


def stack_trees(trees: list):
    """Stack pytrees of the same structure along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class HostChunk:
    """``num_updates`` consecutive PPO updates of every member, driven from Python:
    ``(states [M], handle) -> (states, handle, (metrics [K, M], scores [K, M]))``, the signature of
    ``plastix.algos.ppo.make_chunk_fn``'s compiled chunk."""

    def __init__(self, agent: Agent, env_step, num_updates: int):
        cfg = agent.cfg
        self.agent, self.num_updates = agent, num_updates
        self._rollout = jax.jit(make_rollout_fn(agent, env_step))
        self._begin = jax.jit(agent.learn_begin)
        self._step = jax.jit(lambda carry, batch, perms, i, lr: agent.minibatch_step(
            carry, batch, perms.reshape(-1, cfg.minibatch_size)[i], lr))
        self._stop = jax.jit(lambda carry, aux: stop_after_epoch(carry, aux, cfg.target_kl))
        self._end = jax.jit(agent.learn_end)
        self._measure = jax.jit(agent.measure, static_argnames="due")
        self._finish = jax.jit(finish_metrics)
        self._split = jax.jit(lambda tree: [jax.tree.map(lambda x: x[m], tree)
                                            for m in range(_members(tree))])
        self._stack = jax.jit(stack_trees)

    def __call__(self, states: TrainState, handle):
        results = []
        for _ in range(self.num_updates):
            states, handle, out = self.update(states, handle)
            results.append(out)
        return states, handle, self._stack(results)

    def update(self, states: TrainState, handle):
        """One PPO update of every member (``plastix.algos.ppo.make_update_fn``'s, host-driven)."""
        cfg = self.agent.cfg
        update = int(np.asarray(states.update)[0]) + 1  # every member shares the counter (fresh copies too)
        due = (cfg.diagnostics_every > 0 and (update % cfg.diagnostics_every == 0 or update == 1),
               cfg.curvature_every > 0 and update % cfg.curvature_every == 0,
               cfg.probe_every > 0 and update % cfg.probe_every == 0)
        states, handle, traj, start_metrics = self._rollout(states, handle)
        fresh = np.asarray(fresh_members(cfg, np.asarray(traj.done)))
        members = self._split((states, traj))
        results = [self.learn_member(state, member_traj, fresh[m], due)
                   for m, (state, member_traj) in enumerate(members)]
        states, metrics, scores = self._stack(results)
        return states, handle, (self._finish(metrics, start_metrics, traj), scores)

    def learn_member(self, state: TrainState, traj, fresh_copy, due: tuple[bool, bool, bool]):
        """``Agent.learn`` then ``Agent.measure`` of one member, one jitted call per gradient step."""
        cfg = self.agent.cfg
        begin = self._begin(state, traj, fresh_copy)
        carry, steps = begin.carry, []
        for epoch in range(cfg.update_epochs):
            for j in range(cfg.num_minibatches):
                index = np.int32(epoch * cfg.num_minibatches + j)
                carry, aux = self._step(carry, begin.batch, begin.perms, index, begin.lr)
                steps.append(aux)
            if cfg.target_kl is not None:
                carry = self._stop(carry, aux)
        new_state, metrics = self._end(state, begin, carry, self._stack(steps))
        new_state, diag_metrics, scores = self._measure(new_state, begin.batch, state.params, due=due)
        return new_state, {**metrics, **diag_metrics}, scores


def _members(tree) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


def host_driven(agent: Agent) -> bool:
    """Whether ``agent`` learns host-driven: ``--learner host``, or ``auto`` on image observations (their
    convolution gradients are slow inside XLA loops on the CPU); ``compiled`` keeps the one-program chunk."""
    choice = agent.cfg.learner
    return choice == "host" or (choice == "auto" and agent.spec.is_image)


def compile_chunk(agent: Agent, env_step, num_updates: int, states: TrainState, handle):
    """The chunk of ``num_updates`` updates that ``plastix.training`` calls: ``HostChunk`` (``host_driven``)
    or ``make_chunk_fn``'s program compiled for ``states``/``handle``."""
    from plastix.algos.ppo import make_chunk_fn

    if host_driven(agent):
        return HostChunk(agent, env_step, num_updates)
    return make_chunk_fn(agent, env_step, num_updates).lower(states, handle).compile()
