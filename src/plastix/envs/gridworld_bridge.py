"""The JAX gridworld behind the bridge interface (``plastix.envs``): the whole training is one program.

The handle is the envs' state itself (``GridHandle``: env states, the round's level bank, per-env keys and
the round's observation permutation), so checkpoints hold it and resume is exact (``EnvSpec.resume ==
"state"``). Envs reset within the step that ends an episode (same-step autoreset, like CleanRL's vector
envs), so no step is masked.

Env ``j`` of seed ``s`` draws its randomness from ``fold_in(PRNGKey(s + j), ...)``: the same stream
whether the seed trains alone or in a group. Rounds (``set_round``) swap the level bank and the
permutation without changing shapes, so no round recompiles.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from plastix.envs import EnvSpec
from plastix.envs import shifts
from plastix.envs.envpool_bridge import env_seeds
from plastix.envs.gridworld import GridParams, GridState, GridWorld, batch_reset, batch_step_autoreset


@struct.dataclass
class GridHandle:
    state: GridState  # [S * n]
    params: GridParams  # the round's level bank, shared by every env
    keys: jax.Array  # [S * n, 2]
    perm: jax.Array  # [obs dim] (vector) or [grid * grid] (image patches)


def make_gridworld(cfg: Any) -> GridWorld:
    """The ``GridWorld`` of a ``TrainConfig`` (``--grid-size``, ``--grid-obs``, ``--grid-max-steps``)."""
    return GridWorld(size=cfg.grid_size, max_steps=cfg.grid_max_steps, obs_type=cfg.grid_obs)


class GridworldBridge:
    """``len(seeds) * envs_per_seed`` gridworld envs; round ``r``'s levels and permutation from ``cfg``."""

    def __init__(self, seeds: list[int], envs_per_seed: int, cfg: Any):
        self.seeds, self.envs_per_seed, self.cfg = list(seeds), envs_per_seed, cfg
        self.env = make_gridworld(cfg)
        self.num_envs = len(self.seeds) * envs_per_seed
        self.shift_key = jax.random.PRNGKey(cfg.shift_seed)
        self._handle = None

    @property
    def spec(self) -> EnvSpec:
        env = self.env
        return EnvSpec("gridworld", env.observation_shape, env.observation_dtype, True, env.num_actions, None, None,
                       env.max_steps, "same_step", "state")

    # -------------------------------------------------------------------------------------------- rounds
    def round_params(self, round_idx: int) -> GridParams:
        cfg = self.cfg
        return shifts.gridworld_round_params(self.env, cfg.shift, round_idx, self.shift_key, cfg.num_levels,
                                             cfg.level_step, cfg.rounds)

    def round_perm(self, round_idx: int) -> jax.Array:
        size = self._perm_size()
        if self.cfg.shift != "permute":
            return jnp.arange(size, dtype=jnp.int32)
        return shifts.observation_permutation(self.shift_key, round_idx, size)

    def heldout(self) -> tuple[GridParams, jax.Array]:
        """Held-out evaluation: unseen levels (level shifts) or an unseen permutation (``permute``)."""
        cfg = self.cfg
        if cfg.shift == "permute":
            return self.round_params(0), shifts.heldout_permutation(self.shift_key, self._perm_size())
        params = shifts.gridworld_heldout_params(self.env, cfg.rounds, cfg.num_levels, cfg.level_step, cfg.heldout_levels)
        return params, self.round_perm(cfg.rounds - 1)

    def set_round(self, round_idx: int, handle: GridHandle) -> GridHandle:
        return handle.replace(params=self.round_params(round_idx), perm=self.round_perm(round_idx))

    # ------------------------------------------------------------------------------------------ stepping
    def reset(self) -> np.ndarray:
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 0))(jnp.asarray(env_seeds(self.seeds, self.envs_per_seed)))
        params = self.round_params(0)
        perm = self.round_perm(0)
        reset_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        obs, state = batch_reset(self.env, reset_keys, params)
        self._handle = GridHandle(state, params, keys, perm)
        return np.asarray(self._by_seed(self.observe(obs, perm)))

    def handle(self) -> GridHandle:
        return self._handle

    def step(self, handle: GridHandle, action):
        """Compiled step; ``action`` ``[S, n]`` ints. Returns ``handle, (obs, reward, terminated, truncated, {})``."""
        handle, (obs, reward, terminated, truncated) = self._step_flat(handle, action.reshape(self.num_envs))
        by_seed = self._by_seed
        return handle, (by_seed(obs), by_seed(reward), by_seed(terminated), by_seed(truncated), {})

    def _step_flat(self, handle: GridHandle, action):
        split = jax.vmap(jax.random.split)(handle.keys)
        keys, step_keys = split[:, 0], split[:, 1]
        obs, state, reward, terminated, truncated, _ = batch_step_autoreset(
            self.env, step_keys, handle.state, action.astype(jnp.int32), handle.params
        )
        handle = handle.replace(state=state, keys=keys)
        return handle, (self.observe(obs, handle.perm), reward, terminated, truncated)

    def observe(self, obs, perm):
        """The round's permutation applied to observations (dimensions, or a grid of image patches)."""
        if self.env.obs_type == "vector":
            return shifts.permute_vector(obs, perm)
        return shifts.permute_patches(obs, perm, self._patch_grid())

    def evaluate(self, act_fn, key: jax.Array, num_envs: int = 64) -> jax.Array:
        """Mean return of ``num_envs`` held-out episodes (``heldout``), each run to its end, no resets.

        ``act_fn(key, obs [B, ...]) -> actions [B]`` is the policy to evaluate (traceable)."""
        params, perm = self.heldout()
        env = self.env
        reset_key, run_key = jax.random.split(key)
        obs, state = batch_reset(env, jax.random.split(reset_key, num_envs), params)

        def body(carry, step_key):
            obs, state, total, alive = carry
            act_key, env_key = jax.random.split(step_key)
            action = act_fn(act_key, self.observe(obs, perm))
            obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(env_key, num_envs), state, action, params
            )
            total = total + jnp.where(alive, reward, 0.0)
            return (obs, state, total, alive & ~(terminated | truncated)), None

        init = (obs, state, jnp.zeros((num_envs,), jnp.float32), jnp.ones((num_envs,), bool))
        (_, _, total, _), _ = jax.lax.scan(body, init, jax.random.split(run_key, env.max_steps))
        return total.mean()

    def restore(self, handle: GridHandle) -> None:
        self._handle = handle

    def close(self) -> None:
        pass

    def _patch_grid(self) -> int:
        return self.cfg.patch_grid

    def _perm_size(self) -> int:
        if self.env.obs_type == "vector":
            return int(np.prod(self.env.observation_shape))
        return self._patch_grid() ** 2

    def _by_seed(self, x):
        return x.reshape((len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))
