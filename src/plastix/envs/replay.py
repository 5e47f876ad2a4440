"""Exact resume by replay: the record a rollout keeps for bridges whose envs cannot save their state.

envpool cannot save a simulator state, but MuJoCo and DeepMind Control tasks draw random numbers only at a
reset. So the envs of a checkpoint are rebuilt on a fresh pool from, per env, the number of auto-resets
since the first reset and the actions since the last one (``EnvpoolBridge.restore``: reset ``1 + num_resets``
times, then step the actions), which reproduces the simulator state bit for bit. ``MJXBridge.restore`` reads
the same record.

The rollout carries a ``ReplayRecord`` per env group without looking inside: ``EnvSpec.replay`` (an
``ActionReplay`` when ``EnvSpec.resume == "replay"``, else None) starts it (``init``) and advances it by one
step (``record``); the trainer checkpoints it and hands it to ``bridge.restore``.

A rollout that resets the whole pool before each of its episodes (ES: one host reset per generation) needs no
action: what its envs do after their last reset is thrown away by the next one. It keeps a ``ResetRecord``
(``ResetReplay``: ``init``, ``record`` of a step, ``reset`` of the pool) that ``EnvpoolBridge.restore``
replays by resets alone: a fresh pool's next reset then draws the start states the recorded pool's would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


class ReplayRecord(NamedTuple):
    """What ``restore`` replays, per env (``n`` envs; a trainer may stack groups on leading axes).

    The field names are those of the env-state fields that held the record before it moved here, so a
    checkpoint's leaves keep their names (``plastix.training`` regroups an older checkpoint's).
    """

    episode_actions: jax.Array  # [n, max_episode_steps, A] float32: the actions since the last reset
    actions_recorded: jax.Array  # [n] int32: how many of those are filled (kept after an episode ends, until
    #                              its reset step)
    num_resets: jax.Array  # [n] int32: auto-resets since the first reset


@dataclass(frozen=True)
class ActionReplay:
    """The replay record of a bridge whose episodes last at most ``max_episode_steps`` steps of
    ``action_dim``-dimensional continuous actions."""

    max_episode_steps: int
    action_dim: int

    def init(self, num_envs: int) -> ReplayRecord:
        """The record of ``num_envs`` envs just after the first reset: no action, no auto-reset."""
        return ReplayRecord(
            episode_actions=jnp.zeros((num_envs, self.max_episode_steps, self.action_dim), jnp.float32),
            actions_recorded=jnp.zeros((num_envs,), jnp.int32),
            num_resets=jnp.zeros((num_envs,), jnp.int32),
        )

    @staticmethod
    def record(record: ReplayRecord, action: jax.Array, valid: jax.Array) -> ReplayRecord:
        """``record`` after one step of its envs with ``action [n, A]`` (the clipped actions the envs got).

        ``valid [n]`` is false on a reset step (envpool's next-step auto-reset: the action is ignored): that
        env's recorded actions empty and its reset count grows by one; elsewhere the action is appended.
        """
        last = record.episode_actions.shape[1] - 1
        index = jnp.minimum(record.actions_recorded, last)
        appended = jax.vmap(lambda buf, i, a: buf.at[i].set(a))(record.episode_actions, index, action)
        return ReplayRecord(
            episode_actions=jnp.where(valid[:, None, None], appended, record.episode_actions),
            actions_recorded=jnp.where(valid, record.actions_recorded + 1, 0),
            num_resets=record.num_resets + (~valid).astype(jnp.int32),
        )


class ResetRecord(NamedTuple):
    """What ``restore`` replays for a rollout that resets the pool before every episode (``ResetReplay``).

    Any leading shape (a trainer may stack groups on leading axes); ``EnvpoolBridge.restore`` reads it flat.
    """

    num_resets: jax.Array  # [n] int32: resets since the first reset (envpool's auto-resets and the pool's)


@dataclass(frozen=True)
class ResetReplay:
    """The replay record of a rollout whose episodes all start at a reset of the whole pool: only the resets
    of each env matter (a MuJoCo env's start state depends only on its seed and its resets so far)."""

    @staticmethod
    def init(num_envs: int) -> ResetRecord:
        """The record of ``num_envs`` envs just after the first reset."""
        return ResetRecord(num_resets=jnp.zeros((num_envs,), jnp.int32))

    @staticmethod
    def record(record: ResetRecord, action: jax.Array, valid: jax.Array) -> ResetRecord:
        """``record`` after one step of its envs (``ActionReplay.record``'s arguments; no action is kept).

        ``valid`` is false on a reset step (envpool resets an env on the step after its episode ended): that
        env's reset count grows by one.
        """
        del action  # the next reset of the pool discards what the actions did
        return ResetRecord(num_resets=record.num_resets + (~valid).astype(jnp.int32))

    @staticmethod
    def reset(record: ResetRecord) -> ResetRecord:
        """``record`` after a reset of every env (the trainer's ``bridge.reset()``)."""
        return ResetRecord(num_resets=record.num_resets + 1)
