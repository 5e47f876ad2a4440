"""envpool inside the compiled loop: one pool holding an env group per seed.

Seed ``s`` run alone with ``n`` envs gets envpool env seeds ``s, s+1, ..., s+n-1`` (envpool's own
convention for ``seed=s``). A group of seeds ``[s_0, s_1, ...]`` builds one pool of ``S * n`` envs with
exactly those per-env seeds (``env_seed=``), so each seed's envs are identical to a lone run's.

Stepping goes through envpool's XLA interface (a custom call), so the rollout lives inside ``lax.scan``.
MuJoCo tasks demand float64 actions there, hence ``jax_enable_x64`` is switched on by ``make_bridge``;
networks stay float32 by construction (``plastix.nets``).

envpool auto-resets on the step *after* an episode ends (the action of that step is ignored, reward 0).
CleanRL's gymnasium vector env resets within the same step, so the trainer masks those "reset steps" out
of everything (loss, reward statistics, episode statistics); see ``plastix.algos.ppo``.

Exact resume: envpool cannot save a simulator state, but MuJoCo tasks draw random numbers only at reset.
So the trainer records, per env, how many auto-resets happened and the actions since the last reset;
``restore`` replays them on a fresh pool (reset ``1 + num_resets`` times, then the actions), which
reproduces the simulator state bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def list_envpool_envs() -> list[str]:
    """Every env id envpool registers."""
    import envpool

    return sorted(envpool.list_all_envs())


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` naming ``--env-id`` unless envpool knows ``env_id`` and its actions are continuous."""
    import envpool

    known = list_envpool_envs()
    if env_id not in known:
        mujoco = [e for e in known if e.endswith("-v4")]
        raise ValueError(
            f"--env-id: unknown environment {env_id!r}; continuous-control ids include: {', '.join(mujoco)}"
        )
    space = envpool.make_spec(env_id).action_space
    if not hasattr(space, "low"):
        raise ValueError(f"--env-id: {env_id!r} has discrete actions; plastix PPO needs a continuous (Box) action space")


def env_seeds(seeds: list[int], envs_per_seed: int) -> list[int]:
    """Per-env seeds of a group: ``[s + j for s in seeds for j in range(envs_per_seed)]``."""
    return [s + j for s in seeds for j in range(envs_per_seed)]


@dataclass
class EnvpoolBridge:
    """A pool of ``len(seeds) * envs_per_seed`` envs and its compiled ``step``."""

    env_id: str
    seeds: list[int]
    envs_per_seed: int
    num_threads: int = 0
    max_episode_steps_override: int | None = None

    def __post_init__(self):
        import envpool
        import jax

        jax.config.update("jax_enable_x64", True)
        kwargs: dict[str, Any] = {}
        if self.max_episode_steps_override is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps_override
        self.env = envpool.make(
            self.env_id,
            env_type="gymnasium",
            num_envs=self.num_envs,
            seed=self.seeds[0],
            env_seed=env_seeds(self.seeds, self.envs_per_seed),
            num_threads=self.num_threads,
            **kwargs,
        )
        space = self.env.action_space
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.action_dim = int(np.prod(space.shape))
        self.action_low = np.asarray(space.low, np.float32)
        self.action_high = np.asarray(space.high, np.float32)
        self.max_episode_steps = int(self.env.spec.config.max_episode_steps)
        self._handle, _, _, self._xla_step = self.env.xla()

    @property
    def num_envs(self) -> int:
        return len(self.seeds) * self.envs_per_seed

    def reset(self) -> np.ndarray:
        """Reset every env; raw observations ``[S, n, obs_dim]`` (float64)."""
        obs, _ = self.env.reset()
        return self._by_seed(obs)

    def handle(self):
        """The XLA handle to thread through the compiled loop."""
        return self._handle

    def step(self, handle, action):
        """Compiled step. ``action``: ``[S, n, A]`` float32 (already clipped to the action bounds).

        Returns ``handle, (obs [S,n,D] float64, reward [S,n], terminated [S,n], truncated [S,n])``.
        """
        import jax.numpy as jnp

        flat = action.reshape(self.num_envs, self.action_dim).astype(jnp.float64)
        handle, (obs, reward, terminated, truncated, info) = self._xla_step(handle, flat)
        # envpool returns sync-mode batches ordered by env id; scatter by id anyway so that holds by construction.
        order = info["env_id"]
        unscramble = lambda x: jnp.zeros_like(x).at[order].set(x)
        obs, reward, terminated, truncated = map(unscramble, (obs, reward, terminated, truncated))
        return handle, (self._by_seed(obs), self._by_seed(reward), self._by_seed(terminated), self._by_seed(truncated))

    def restore(self, num_resets: np.ndarray, episode_actions: np.ndarray, episode_lengths: np.ndarray) -> None:
        """Bring a pool that was reset once (``reset()``, as every new run does) to a recorded state.

        Env ``i`` is reset ``num_resets[i]`` more times, then replays its ``episode_lengths[i]`` recorded
        actions (see module docstring). Arrays are ``[S, n, ...]``.
        """
        num_resets = np.asarray(num_resets).reshape(-1)
        lengths = np.asarray(episode_lengths).reshape(-1)
        actions = np.asarray(episode_actions).reshape(self.num_envs, -1, self.action_dim)
        for env_id in range(self.num_envs):
            ids = np.array([env_id], np.int32)
            for _ in range(int(num_resets[env_id])):
                self.env.reset(ids)
            for t in range(int(lengths[env_id])):
                self.env.step(actions[env_id, t][None].astype(np.float64), ids)

    def _by_seed(self, x):
        return x.reshape((len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))

    def close(self) -> None:
        self.env.close()
