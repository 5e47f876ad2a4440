"""Image environments through envpool (Procgen CoinRun, Atari Montezuma's Revenge), stepped inside ``jit``.

``ImageEnvBridge`` mirrors ``plastix.envs.envpool_bridge.EnvpoolBridge`` for discrete actions: one pool of
``len(seeds) * envs_per_seed`` envs, seed ``s``'s group getting envpool env seeds ``s, s+1, ...`` (so a seed's
envs are the same whether it runs alone or in a group), and a compiled ``step`` through envpool's XLA
interface (a custom call, so the rollout lives inside ``lax.scan``)::

    bridge = ImageEnvBridge("CoinrunEasy-v0", seeds=[0, 1], envs_per_seed=4, start_level=0, num_levels=200)
    obs = bridge.reset()                                   # [S, n, H, W, C] uint8
    handle = bridge.handle()
    handle, (obs, reward, terminated, truncated, extras) = jax.jit(bridge.step)(handle, actions)  # [S, n] int32

Observation specs (channels last, the layout of ``plastix.nets`` CNNs):
- Procgen ``Coinrun{Easy,Hard,Exploration}-v0``: uint8 ``[64, 64, 3]`` RGB, 15 actions, episodes of at most
  1000 steps. ``start_level``/``num_levels`` fix the level range ``[start_level, start_level + num_levels)``
  (``num_levels = 0``: unbounded); ``extras["level_seed"]`` is the level being played. Held-out test levels
  are a disjoint range (``plastix.envs.shifts.heldout_levels``) in a second bridge. The level range is a
  pool setting, so a ``window``/``expand`` round builds a new pool. Every envpool Procgen game works the same
  way (``BigfishEasy-v0``, ``StarpilotHard-v0``, ...); under ``--shift task`` a round switches the pool to
  the next game of ``plastix.envs.shifts.procgen_task_games`` (on the same levels).
- Atari ``MontezumaRevenge-v5`` (any envpool ``*-v5``): uint8 ``[84, 84, 4]``: 4 stacked 84 x 84 grayscale
  frames (channel = frame, oldest first), 18 actions. Preprocessing is envpool's (the DQN/CleanRL pipeline):
  frame skip 4 with max-pooling of the last two frames, up to 30 no-op starts, FIRE on reset, 84 x 84
  grayscale (area interpolation), frame stack 4, episodes of at most 27,000 steps (108k frames), no sticky
  actions (``repeat_action_probability = 0``, envpool's default; pass ``repeat_action_probability=0.25``
  for Machado et al.'s protocol). plastix adds CleanRL ``ppo_atari_envpool``'s ``episodic_life=True`` (a
  lost life ends the episode for learning) and ``reward_clip=True`` (rewards clipped to their sign);
  ``extras["raw_reward"]`` is the unclipped reward and ``extras["game_over"]`` the real end of a game, to
  count episode returns as the game scores them.

Resets: envpool resets an env on the step *after* its episode ends; that step ignores its action and
returns the new episode's first observation with reward 0 (see ``EnvpoolBridge``; the trainer masks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plastix.envs.envpool_bridge import env_seeds

# Options plastix sets on top of envpool's defaults, per family.
PROCGEN_OPTIONS: dict[str, Any] = {"channel_first": False}
ATARI_OPTIONS: dict[str, Any] = {"episodic_life": True, "reward_clip": True}
# Shifts under which a Procgen pool plays the scenario's level range (``task``: games switch, levels stay).
SCENARIO_LEVEL_SHIFTS = ("none", "permute", "window", "expand", "task")


def image_env_family(env_id: str) -> str:
    """``"procgen"`` or ``"atari"``; ``ValueError`` naming ``--env-id`` otherwise."""
    from envpool.registration import registry

    entry = registry.specs.get(env_id)
    module = entry[0] if entry else ""
    if module.startswith("envpool.procgen"):
        return "procgen"
    if module.startswith("envpool.atari"):
        return "atari"
    examples = "CoinrunEasy-v0, CoinrunHard-v0, MontezumaRevenge-v5"
    raise ValueError(f"--env-id: {env_id!r} is not an envpool Procgen or Atari environment; e.g. {examples}")


@dataclass
class ImageEnvBridge:
    """A pool of ``len(seeds) * envs_per_seed`` image envs with discrete actions and its compiled ``step``.

    ``start_level``/``num_levels`` apply to Procgen only. ``options`` are extra envpool options
    (override ``PROCGEN_OPTIONS``/``ATARI_OPTIONS``).
    """

    env_id: str
    seeds: list[int]
    envs_per_seed: int
    num_threads: int = 0
    start_level: int = 0
    num_levels: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    scenario: Any = None  # a TrainConfig with shift options (permute, window, expand), or None
    heldout: bool = False  # the scenario's held-out evaluation pool (test levels / an unseen permutation)

    def __post_init__(self):
        self.family = image_env_family(self.env_id)
        procgen_scenario = self.scenario is not None and self.family == "procgen"
        if procgen_scenario and self.scenario.shift in SCENARIO_LEVEL_SHIFTS:
            from plastix.envs.shifts import heldout_levels, train_levels

            sc = self.scenario
            if self.heldout and sc.shift != "permute":  # test levels that no round trains on
                levels = heldout_levels(sc.rounds, sc.num_levels, sc.level_step, sc.heldout_levels)
            else:  # round 0's levels (permute evaluates an unseen permutation of the training levels)
                levels = train_levels(sc.shift, 0, sc.num_levels, sc.level_step)
            self.start_level, self.num_levels = levels.start, levels.num_levels
        self._build()

    def _build(self) -> None:
        import envpool

        kwargs = dict(PROCGEN_OPTIONS if self.family == "procgen" else ATARI_OPTIONS)
        if self.family == "procgen":
            if self.start_level < 0 or self.num_levels < 0:
                raise ValueError(f"--start-level/--num-levels must be >= 0 (got {self.start_level}, {self.num_levels})")
            kwargs.update(start_level=self.start_level, num_levels=self.num_levels)
        elif self.start_level or self.num_levels:
            raise ValueError(f"--start-level/--num-levels: {self.env_id} (Atari) has no levels")
        kwargs.update(self.options)
        self.env = envpool.make(
            self.env_id,
            env_type="gymnasium",
            num_envs=self.num_envs,
            seed=self.seeds[0],
            env_seed=env_seeds(self.seeds, self.envs_per_seed),
            num_threads=self.num_threads,
            **kwargs,
        )
        shape = tuple(self.env.observation_space.shape)
        self._channel_first = self.family == "atari" or bool(kwargs.get("channel_first", False))
        self.observation_shape = (shape[1], shape[2], shape[0]) if self._channel_first else shape
        self.num_actions = int(self.env.action_space.n)
        self.max_episode_steps = int(self.env.spec.config.max_episode_steps)
        self._xla_handle, _, _, self._xla_step = self.env.xla()
        # The XLA step's custom call is bound to this pool: code compiled for an older pool must be recompiled.
        self.pool_version = getattr(self, "pool_version", -1) + 1
        self._perm = self._heldout_perm() if self.heldout else self.round_perm(0)

    @property
    def spec(self):
        from plastix.envs import EnvSpec

        return EnvSpec(self.family, self.observation_shape, np.uint8, True, self.num_actions, None, None,
                       self.max_episode_steps, "next_step", "reset")

    def _patch_grid(self) -> int:
        return getattr(self.scenario, "patch_grid", 16)

    def round_perm(self, round_idx: int):
        """Round ``round_idx``'s permutation of the image's patch grid (identity without ``permute``)."""
        from plastix.envs import shifts

        grid = self._patch_grid()
        if getattr(self.scenario, "shift", "none") != "permute":
            return jnp.arange(grid * grid, dtype=jnp.int32)
        shifts.check_patch_grid(self.observation_shape[0], self.observation_shape[1], grid)
        return shifts.observation_permutation(jax.random.PRNGKey(self.scenario.shift_seed), round_idx, grid * grid)

    def _heldout_perm(self):
        """The held-out pool's patch permutation: one no round trains on under ``permute``, else identity."""
        from plastix.envs import shifts

        grid = self._patch_grid()
        if getattr(self.scenario, "shift", "none") != "permute":
            return jnp.arange(grid * grid, dtype=jnp.int32)
        return shifts.heldout_permutation(jax.random.PRNGKey(self.scenario.shift_seed), grid * grid)

    def set_round(self, round_idx: int, handle):
        """Handle for round ``round_idx``: a new patch permutation, or (``window``/``expand``) a new pool
        playing the round's level range (the XLA step is the same custom call, on the new pool)."""
        shift = getattr(self.scenario, "shift", "none")
        if shift == "task" and self.family == "procgen":  # a switch of game (rebuilt only when it changes)
            from plastix.envs.shifts import procgen_task_games

            games = procgen_task_games(self.scenario.env_id, self.scenario.shift_seed)
            game = games[round_idx % len(games)]
            if game == self.env_id:
                return handle
            self.env.close()
            self.env_id = game
            self._build()
            self.reset()
            return self.handle()
        if shift in ("window", "expand") and round_idx > 0:
            from plastix.envs.shifts import train_levels

            levels = train_levels(shift, round_idx, self.scenario.num_levels, self.scenario.level_step)
            self.env.close()
            self.start_level, self.num_levels = levels.start, levels.num_levels
            self._build()
            self.reset()
            return self.handle()
        return (handle[0], self.round_perm(round_idx))

    @property
    def num_envs(self) -> int:
        return len(self.seeds) * self.envs_per_seed

    def reset(self) -> np.ndarray:
        """Reset every env; observations ``[S, n, H, W, C]`` uint8 (patch-permuted as in round 0)."""
        obs, _ = self.env.reset()
        if self._channel_first:
            obs = np.moveaxis(obs, 1, -1)
        return np.asarray(self._permute(jnp.asarray(self._by_seed(obs)), self._perm))

    def handle(self):
        """``(XLA handle, patch permutation)`` to thread through the compiled loop."""
        return (self._xla_handle, self._perm)

    def _permute(self, obs, perm):
        from plastix.envs.shifts import permute_patches

        if getattr(self.scenario, "shift", "none") != "permute":
            return obs
        return permute_patches(obs, perm, self._patch_grid())

    def restore(self, *_) -> None:
        """Procgen/Atari cannot be replayed exactly: a resumed run's envs start from a reset (the learner's
        state, statistics and RNG resume exactly)."""

    def step(self, handle, action):
        """Compiled step. ``action``: ``[S, n]`` integer actions.

        Returns ``handle, (obs [S,n,H,W,C] uint8, reward [S,n] float32, terminated [S,n] bool,
        truncated [S,n] bool, extras)``; ``extras`` holds ``[S, n]`` arrays: Procgen ``level_seed``,
        ``prev_level_complete``; Atari ``raw_reward`` (float32), ``game_over`` (bool), ``lives``.
        """
        xla_handle, perm = handle
        flat = action.reshape(self.num_envs).astype(jnp.int32)
        xla_handle, (obs, reward, terminated, truncated, info) = self._xla_step(xla_handle, flat)
        order = info["env_id"]
        unscramble = lambda x: jnp.zeros_like(x).at[order].set(x)
        if self._channel_first:
            obs = jnp.moveaxis(obs, 1, -1)
        if self.family == "procgen":
            extras = {"level_seed": info["level_seed"], "prev_level_complete": info["prev_level_complete"]}
        else:
            extras = {
                "raw_reward": info["reward"].astype(jnp.float32),
                "game_over": info["terminated"].astype(bool),
                "lives": info["lives"],
            }
        out = (obs, reward.astype(jnp.float32), terminated.astype(bool), truncated.astype(bool), extras)
        obs, *rest = jax.tree_util.tree_map(lambda x: self._by_seed(unscramble(x)), out)
        return (xla_handle, perm), (self._permute(obs, perm), *rest)

    def _by_seed(self, x):
        return x.reshape((len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))

    def close(self) -> None:
        self.env.close()

