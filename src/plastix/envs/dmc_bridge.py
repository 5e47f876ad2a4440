"""DeepMind Control Suite tasks through envpool (``CheetahRun-v1``, ``WalkerWalk-v1``, ...), in the compiled loop.

envpool's DMC tasks return a dict of observations (``position``, ``velocity``, ...); the bridge flattens it to
one float64 vector, the pieces concatenated in the task's own order (dm_control's ``observation_spec()``
order, which envpool keeps), each raveled: what Plasticine's ``dmc_wrappers._flatten_obs`` does. Rewards lie
in ``[0, 1]`` per step; no task terminates, every episode is truncated at 1,000 steps (envpool's
``max_episode_steps``, dm_control's 20 s at the suites' control timesteps).

Everything else is ``EnvpoolBridge``'s: per-env seeds ``s + j``, envpool's next-step autoreset (the trainer
masks reset steps), exact resume by replaying the recorded actions (DMC tasks draw random numbers only at
reset), the ``permute`` shift on the flattened vector.

Continual DMC (Plasticine's ``ContinualDMC`` ``task`` mode): ``--env-id WalkerStand-v1,WalkerWalk-v1,
WalkerRun-v1 --shift task --rounds R`` trains round ``r`` on the ``r mod K``-th task of the sequence. The tasks
must share observation and action shapes (one domain: walker, quadruped, ...). A switch builds a new pool
(``pool_version`` tells the trainer to recompile, as the Procgen window shift does) and resets its envs; the
learner's last observation of the old task starts the new round, as on Procgen. A run with a task sequence
resumes from a reset (``EnvSpec.resume == "reset"``), since replay would need every earlier pool's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plastix.envs.envpool_bridge import EnvpoolBridge, env_seeds, heldout_round_state, round_state


def task_sequence(env_id: str) -> list[str]:
    """The ids of a comma-separated ``--env-id`` (one id: a one-task sequence)."""
    return [part.strip() for part in env_id.split(",") if part.strip()]


def is_dmc(env_id: str) -> bool:
    """Whether envpool registers ``env_id`` as a DeepMind Control Suite task."""
    from envpool.registration import registry

    entry = registry.specs.get(env_id)
    return entry is not None and entry[0].startswith("envpool.mujoco.dmc")


def observation_keys(env_id: str) -> list[str]:
    """The observation dict's keys in the task's order (the flattening order)."""
    import envpool

    return list(envpool.make_spec(env_id).observation_space.keys())


def flat_size(env_id: str) -> int:
    """Length of the flattened observation: the sum of the pieces' sizes (a scalar piece counts 1)."""
    import envpool

    space = envpool.make_spec(env_id).observation_space
    return sum(int(np.prod(space[k].shape)) for k in space.keys())


def flatten_observation(obs: dict, keys: list[str], xp=np):
    """``concatenate([obs[k].reshape(B, -1) for k in keys], axis=-1)``: ``[B, D]`` from a dict of ``[B, ...]``."""
    return xp.concatenate([xp.reshape(obs[k], (obs[k].shape[0], -1)) for k in keys], axis=-1)


def check_task_sequence(env_id: str) -> None:
    """``ValueError`` naming ``--env-id`` unless every id is a DMC task and all share observation and action
    shapes (one network must play them all)."""
    import envpool

    ids = task_sequence(env_id)
    unknown = [i for i in ids if not is_dmc(i)]
    if unknown:
        raise ValueError(f"--env-id: {', '.join(unknown)} not DeepMind Control tasks; a task sequence lists "
                         "envpool DMC ids such as WalkerStand-v1,WalkerWalk-v1,WalkerRun-v1")
    shapes = {i: (flat_size(i), envpool.make_spec(i).action_space.shape) for i in ids}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{i}: obs {s[0]}, action {s[1]}" for i, s in shapes.items())
        raise ValueError(f"--env-id: the tasks of a sequence must share observation and action shapes "
                         f"(one domain, e.g. WalkerStand-v1,WalkerWalk-v1,WalkerRun-v1); got {listed}")


@dataclass
class DmcBridge(EnvpoolBridge):
    """``EnvpoolBridge`` for DMC: flattened dict observations, and a task per round for a task sequence."""

    pool_version: int = 0

    def __post_init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)  # before env.xla(): its float64 outputs stay float64
        self.tasks = task_sequence(self.env_id)
        self.task_idx = 0
        self._build(self.tasks[0])
        self._round = (heldout_round_state(self.scenario, self.obs_dim) if self.heldout
                       else round_state(self.scenario, 0, self.obs_dim))

    def _build(self, task: str) -> None:
        import envpool

        self.env = envpool.make(task, env_type="gymnasium", num_envs=self.num_envs, seed=self.seeds[0],
                                env_seed=env_seeds(self.seeds, self.envs_per_seed), num_threads=self.num_threads)
        space = self.env.action_space
        self.keys = list(self.env.observation_space.keys())
        self.obs_dim = flat_size(task)
        self.action_dim = int(np.prod(space.shape))
        self.action_low = np.asarray(space.low, np.float32)
        self.action_high = np.asarray(space.high, np.float32)
        self.max_episode_steps = int(self.env.spec.config.max_episode_steps)
        self._xla_handle, _, _, self._xla_step = self.env.xla()

    @property
    def spec(self):
        from plastix.envs import EnvSpec

        resume = "replay" if len(self.tasks) == 1 else "reset"
        return EnvSpec("dmc", (self.obs_dim,), np.float64, False, self.action_dim, self.action_low,
                       self.action_high, self.max_episode_steps, "next_step", resume)

    def set_round(self, round_idx: int, handle):
        """Round ``round_idx``: its task of the sequence (a new pool when it changes) and its permutation."""
        task_idx = round_idx % len(self.tasks)
        if task_idx != self.task_idx:
            self.env.close()
            self.task_idx = task_idx
            self._build(self.tasks[task_idx])
            self.env.reset()
            self.pool_version += 1
            handle = (self._xla_handle, handle[1])
        return (handle[0], round_state(self.scenario, round_idx, self.obs_dim))

    def reset(self) -> np.ndarray:
        """Reset every env; flattened observations ``[S, n, D]`` (float64), permuted as in round 0."""
        obs, _ = self.env.reset()
        return self._by_seed(flatten_observation(obs, self.keys))[..., np.asarray(self._round.perm)]

    def step(self, handle, action):
        """Compiled step (``EnvpoolBridge.step``) with the observation dict flattened before the permutation."""
        import jax.numpy as jnp

        xla_handle, rnd = handle
        flat = action.reshape(self.num_envs, self.action_dim).astype(jnp.float64)
        xla_handle, (obs, reward, terminated, truncated, info) = self._xla_step(xla_handle, flat)
        order = info["env_id"]
        unscramble = lambda x: self._by_seed(jnp.zeros_like(x).at[order].set(x))
        obs = flatten_observation(obs, self.keys, jnp)
        obs, reward, terminated, truncated = map(unscramble, (obs, reward, terminated, truncated))
        obs = jnp.take(obs, rnd.perm, axis=-1)
        return (xla_handle, rnd), (obs, reward, terminated, truncated, {})
