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
So the rollout keeps this bridge's ``replay.ReplayRecord`` (``spec.replay``): per env, how many auto-resets
happened and the actions since the last reset; ``restore`` replays it on a fresh pool (reset
``1 + num_resets`` times, then the actions), which reproduces the simulator state bit for bit. A rollout
that resets the whole pool before every episode (ES) keeps a ``replay.ResetRecord`` instead: resets alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import struct


@struct.dataclass
class RoundState:
    """What a round of a scenario changes in a bridge's step (traced, so rounds never recompile).

    ``perm``: the round's permutation of observation dimensions (vector observations) or of the patch
    grid (images); the identity without ``permute``. ``direction``: +1 forward / -1 backward running
    (``task`` shift on MuJoCo, ``shifts.task_direction``).
    """

    perm: Any
    direction: Any


def round_state(scenario: Any, round_idx: int, obs_size: int) -> RoundState:
    """The ``RoundState`` of round ``round_idx`` of ``scenario`` (a ``TrainConfig``, or None: no shift)."""
    import jax
    import jax.numpy as jnp

    from plastix.envs import shifts

    shift = getattr(scenario, "shift", "none")
    key = jax.random.PRNGKey(getattr(scenario, "shift_seed", 0))
    if shift == "permute":
        perm = shifts.observation_permutation(key, round_idx, obs_size)
    else:
        perm = jnp.arange(obs_size, dtype=jnp.int32)
    direction = shifts.task_direction(round_idx) if shift == "task" else jnp.float32(1.0)
    return RoundState(perm=perm, direction=direction)


def heldout_round_state(scenario: Any, obs_size: int) -> RoundState:
    """The held-out evaluation's ``RoundState``: a permutation no round trains on (``permute``), running
    forward."""
    import jax
    import jax.numpy as jnp

    from plastix.envs import shifts

    if getattr(scenario, "shift", "none") != "permute":
        raise ValueError("held-out evaluation of a MuJoCo task exists only for --shift permute "
                         "(an unseen permutation)")
    perm = shifts.heldout_permutation(jax.random.PRNGKey(scenario.shift_seed), obs_size)
    return RoundState(perm=perm, direction=jnp.float32(1.0))


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
    scenario: Any = None  # a TrainConfig with shift options, or None for a stationary task
    heldout: bool = False  # the scenario's held-out evaluation pool (an unseen permutation) instead of round 0

    def __post_init__(self):
        import envpool
        import jax

        jax.config.update("jax_enable_x64", True)
        self.env = envpool.make(
            self.env_id,
            env_type="gymnasium",
            num_envs=self.num_envs,
            seed=self.seeds[0],
            env_seed=env_seeds(self.seeds, self.envs_per_seed),
            num_threads=self.num_threads,
        )
        space = self.env.action_space
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.action_dim = int(np.prod(space.shape))
        self.action_low = np.asarray(space.low, np.float32)
        self.action_high = np.asarray(space.high, np.float32)
        self.max_episode_steps = int(self.env.spec.config.max_episode_steps)
        self._xla_handle, _, _, self._xla_step = self.env.xla()
        self._round = (heldout_round_state(self.scenario, self.obs_dim) if self.heldout
                       else round_state(self.scenario, 0, self.obs_dim))

    @property
    def spec(self):
        from plastix.envs import EnvSpec

        return EnvSpec("mujoco", (self.obs_dim,), np.float64, False, self.action_dim, self.action_low,
                       self.action_high, self.max_episode_steps, "next_step", "replay")

    def set_round(self, round_idx: int, handle):
        """Handle for round ``round_idx`` of the scenario (permutation / running direction)."""
        return (handle[0], round_state(self.scenario, round_idx, self.obs_dim))

    @property
    def num_envs(self) -> int:
        return len(self.seeds) * self.envs_per_seed

    def reset(self) -> np.ndarray:
        """Reset every env; raw observations ``[S, n, obs_dim]`` (float64), permuted as in round 0."""
        obs, _ = self.env.reset()
        return self._by_seed(obs)[..., np.asarray(self._round.perm)]

    def handle(self):
        """``(XLA handle, RoundState)`` to thread through the compiled loop."""
        return (self._xla_handle, self._round)

    def step(self, handle, action):
        """Compiled step. ``action``: ``[S, n, A]`` float32 (already clipped to the action bounds).

        Returns ``handle, (obs [S,n,D] float64, reward [S,n], terminated [S,n], truncated [S,n], extras)``;
        the round's shift is applied (observation permutation; running direction of the ``task`` shift).
        """
        import jax.numpy as jnp

        from plastix.envs.shifts import direction_reward

        xla_handle, rnd = handle
        flat = action.reshape(self.num_envs, self.action_dim).astype(jnp.float64)
        xla_handle, (obs, reward, terminated, truncated, info) = self._xla_step(xla_handle, flat)
        # envpool returns sync-mode batches ordered by env id; scatter by id anyway so that holds by construction.
        order = info["env_id"]
        unscramble = lambda x: self._by_seed(jnp.zeros_like(x).at[order].set(x))
        obs, reward, terminated, truncated = map(unscramble, (obs, reward, terminated, truncated))
        extras = {}
        if "x_velocity" in info:
            x_velocity = unscramble(info["x_velocity"])
            extras["x_velocity"] = x_velocity
            reward = direction_reward(reward, x_velocity, rnd.direction).astype(reward.dtype)
        obs = jnp.take(obs, rnd.perm, axis=-1)
        return (xla_handle, rnd), (obs, reward, terminated, truncated, extras)

    def restore(self, record) -> None:
        """Bring a pool that was reset once (``reset()``, as every new run does) to a recorded state.

        ``record``: the rollout's record of every env (flat over the pool, any leading shape). A
        ``replay.ReplayRecord``: env ``i`` is reset ``num_resets[i]`` more times, then replays its
        ``actions_recorded[i]`` recorded actions (see module docstring). A ``replay.ResetRecord`` (a rollout
        that resets the pool before every episode): env ``i`` is reset ``num_resets[i]`` more times, so the
        pool's next reset draws the start states the recorded pool's would.
        """
        from plastix.envs.replay import ResetRecord

        num_resets = np.asarray(record.num_resets).reshape(-1)
        if isinstance(record, ResetRecord):
            lengths, actions = np.zeros_like(num_resets), None
        else:
            lengths = np.asarray(record.actions_recorded).reshape(-1)
            actions = np.asarray(record.episode_actions).reshape(self.num_envs, -1, self.action_dim)
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
