"""Any Gymnasium environment (``--env-id gymnasium:ID``) behind the bridge interface, stepped on the host.

``gymnasium:CartPole-v1``, ``gymnasium:Pendulum-v1``, or a user's own registered id
(``gymnasium.register("MyEnv-v0", entry_point=...)`` before ``plastix.training.train``, or
``gymnasium:my_package.module:MyEnv-v0``, which gymnasium's ``make`` imports first), so a user's env trains
with every diagnostic, scenario and mitigation of the compiled envs.

The envs are one ``gymnasium.vector.SyncVectorEnv`` of ``len(seeds) * n`` copies (gymnasium's own vector
API, ``gymnasium.make`` with its registered wrappers such as ``TimeLimit``), reset once with per-env seeds
``s + j`` (seed ``s``'s group, as the envpool bridges). The compiled rollout calls it through
``jax.experimental.io_callback`` (ordered, so steps happen in program order): each step leaves the compiled
program for Python, which is what makes this path slower than the compiled ones (``bench/throughput.py``).

Autoreset: gymnasium's default ``NEXT_STEP`` mode, as envpool's: the step after an episode end is a reset step
(action ignored, reward 0), which the trainer masks out (``EnvSpec.autoreset == "next_step"``).

Spaces: observations a ``Box`` of rank 1 (a vector, float32) or rank 3 ``uint8`` (an ``H x W x C`` image, the
CNN actor-critics); actions ``Discrete`` (categorical policy) or a rank-1 ``Box`` (Gaussian policy, clipped to
its bounds). Anything else is refused before any compute, naming the space.

Resume: a host env has no state to save, so a resumed run restarts its envs from a reset (``EnvSpec.resume
== "reset"``); the learner resumes exactly. Scenarios: ``permute`` (vector dimensions or image patches), and a
task sequence ``--env-id gymnasium:A,gymnasium:B --shift task`` (round ``r`` plays the ``r mod K``-th env;
the envs must share spaces).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plastix.envs.envpool_bridge import env_seeds

PREFIX = "gymnasium:"
EVAL_SEED_OFFSET = 1_000_000
DEFAULT_MAX_STEPS = 1_000  # an env registered without a time limit: cap of the held-out evaluation's episodes


def is_gymnasium_id(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


def gymnasium_ids(env_id: str) -> list[str]:
    """The gymnasium ids of ``--env-id gymnasium:A[,gymnasium:B,...]`` (prefix stripped)."""
    parts = [p.strip() for p in env_id.split(",") if p.strip()]
    bad = [p for p in parts if not p.startswith(PREFIX)]
    if bad:
        raise ValueError(f"--env-id: every env of a gymnasium sequence starts with {PREFIX!r}; got {', '.join(bad)}")
    return [p[len(PREFIX):] for p in parts]


def _make_one(gym_id: str):
    import gymnasium

    try:
        return gymnasium.make(gym_id)
    except Exception as err:  # gymnasium raises its own error types (NameNotFound, VersionNotFound, ...)
        raise ValueError(f"--env-id {PREFIX}{gym_id}: gymnasium cannot make it ({type(err).__name__}: {err})") from None


def space_summary(gym_id: str) -> dict:
    """``{"obs_shape", "obs_dtype", "discrete", "action_dim", "action_low", "action_high", "max_steps"}`` of a
    gymnasium id; ``ValueError`` naming ``--env-id`` for spaces plastix cannot train on."""
    from gymnasium import spaces

    env = _make_one(gym_id)
    obs_space, act_space = env.observation_space, env.action_space
    max_steps = env.spec.max_episode_steps if env.spec is not None else None
    env.close()
    where = f"--env-id {PREFIX}{gym_id}"
    if not isinstance(obs_space, spaces.Box) or not (
            len(obs_space.shape) == 1 or (len(obs_space.shape) == 3 and obs_space.dtype == np.uint8)):
        raise ValueError(f"{where}: observation space {obs_space} is not supported; allowed: a rank-1 Box "
                         "(vector) or a rank-3 uint8 Box (H x W x C image)")
    image = len(obs_space.shape) == 3
    out = dict(obs_shape=tuple(int(d) for d in obs_space.shape), obs_dtype=np.uint8 if image else np.float32,
               max_steps=int(max_steps or DEFAULT_MAX_STEPS))
    if isinstance(act_space, spaces.Discrete):
        if int(act_space.start) != 0:
            raise ValueError(f"{where}: Discrete action spaces must start at 0, got start={act_space.start}")
        return dict(out, discrete=True, action_dim=int(act_space.n), action_low=None, action_high=None)
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        return dict(out, discrete=False, action_dim=int(act_space.shape[0]),
                    action_low=np.asarray(act_space.low, np.float32), action_high=np.asarray(act_space.high, np.float32))
    raise ValueError(f"{where}: action space {act_space} is not supported; allowed: Discrete or a rank-1 Box")


def check_gymnasium_env(env_id: str, shift: str) -> dict:
    """Every env of ``env_id`` can be made, has supported spaces, and (a sequence) they share them; a sequence
    needs ``--shift task``. Returns the first env's ``space_summary``."""
    ids = gymnasium_ids(env_id)
    summaries = [space_summary(i) for i in ids]
    if len(ids) > 1:
        if shift != "task":
            raise ValueError(f"--env-id {env_id}: a sequence of envs is a task switch per round; give --shift task")
        key = lambda s: (s["obs_shape"], s["discrete"], s["action_dim"])
        if len({key(s) for s in summaries}) > 1:
            listed = ", ".join(f"{i}: obs {s['obs_shape']}, actions {s['action_dim']}" for i, s in zip(ids, summaries))
            raise ValueError(f"--env-id: the envs of a sequence must share observation and action spaces; got {listed}")
    elif shift == "task":
        raise ValueError(f"--shift task on {env_id}: give a sequence of envs (--env-id {env_id},{PREFIX}OTHER-ID)")
    return summaries[0]


class GymnasiumBridge:
    """``len(seeds) * envs_per_seed`` gymnasium envs in one ``SyncVectorEnv``, stepped from the compiled loop."""

    def __init__(self, env_id: str, seeds: list[int], envs_per_seed: int, scenario: Any = None,
                 heldout: bool = False):
        self.env_id, self.seeds, self.envs_per_seed = env_id, list(seeds), envs_per_seed
        self.scenario, self.heldout = scenario, heldout
        self.tasks = gymnasium_ids(env_id)
        self.summary = space_summary(self.tasks[0])
        self.task_idx = 0
        self.envs = self._make(self.tasks[0])
        self._perm = self.round_perm(None if heldout else 0)

    @property
    def num_envs(self) -> int:
        return len(self.seeds) * self.envs_per_seed

    @property
    def spec(self):
        from plastix.envs import EnvSpec

        s = self.summary
        return EnvSpec("gymnasium", s["obs_shape"], s["obs_dtype"], s["discrete"], s["action_dim"], s["action_low"],
                       s["action_high"], s["max_steps"], "next_step", "reset")

    def _make(self, gym_id: str):
        import gymnasium

        return gymnasium.vector.SyncVectorEnv([lambda: _make_one(gym_id) for _ in range(self.num_envs)])

    # ------------------------------------------------------------------------------------------ rounds
    def _perm_size(self) -> int:
        if len(self.summary["obs_shape"]) == 3:
            return getattr(self.scenario, "patch_grid", 16) ** 2
        return self.summary["obs_shape"][0]

    def round_perm(self, round_idx: int | None) -> jax.Array:
        """Round ``round_idx``'s permutation (``None``: the held-out one); identity without ``permute``."""
        from plastix.envs import shifts

        size = self._perm_size()
        if getattr(self.scenario, "shift", "none") != "permute":
            return jnp.arange(size, dtype=jnp.int32)
        key = jax.random.PRNGKey(self.scenario.shift_seed)
        if round_idx is None:
            return shifts.heldout_permutation(key, size)
        return shifts.observation_permutation(key, round_idx, size)

    def set_round(self, round_idx: int, handle):
        """Round ``round_idx``: its env of a sequence (a new vector env, reset) and its permutation."""
        task_idx = round_idx % len(self.tasks)
        if task_idx != self.task_idx:
            self.envs.close()
            self.task_idx = task_idx
            self.envs = self._make(self.tasks[task_idx])
            self.envs.reset(seed=env_seeds(self.seeds, self.envs_per_seed))
        return (handle[0], self.round_perm(None if self.heldout else round_idx))

    # ------------------------------------------------------------------------------------------ stepping
    def _permute(self, obs, perm):
        from plastix.envs import shifts

        image = len(self.summary["obs_shape"]) == 3
        return shifts.permute_observation(obs, perm, image, getattr(self.scenario, "patch_grid", 16))

    def reset(self) -> np.ndarray:
        """Reset every env (env ``j`` of seed ``s`` with seed ``s + j``); observations ``[S, n, ...]``."""
        obs, _ = self.envs.reset(seed=env_seeds(self.seeds, self.envs_per_seed))
        obs = np.asarray(obs, self.summary["obs_dtype"])
        return np.asarray(self._permute(jnp.asarray(self._by_seed(obs)), self._perm))

    def handle(self):
        """``(step counter, permutation)``: the envs live on the host; the counter orders nothing, it is a
        carried value so that the handle has the shape of the other bridges'."""
        return (jnp.zeros((), jnp.int32), self._perm)

    def _host_step(self, action):
        action = np.asarray(action)
        if not self.summary["discrete"]:
            action = action.astype(self.envs.single_action_space.dtype)
        obs, reward, terminated, truncated, _ = self.envs.step(action)
        return (np.asarray(obs, self.summary["obs_dtype"]), np.asarray(reward, np.float32),
                np.asarray(terminated, bool), np.asarray(truncated, bool))

    def step(self, handle, action):
        """Compiled step: the vector env's ``step`` through an ordered ``io_callback``. ``action`` ``[S, n]``
        (discrete) or ``[S, n, A]``. Returns ``handle, (obs, reward, terminated, truncated, {})``."""
        from jax.experimental import io_callback

        s, n = self.num_envs, self.summary
        flat = action.reshape((s,) if n["discrete"] else (s, n["action_dim"]))
        shapes = (jax.ShapeDtypeStruct((s,) + n["obs_shape"], n["obs_dtype"]), jax.ShapeDtypeStruct((s,), jnp.float32),
                  jax.ShapeDtypeStruct((s,), bool), jax.ShapeDtypeStruct((s,), bool))
        obs, reward, terminated, truncated = io_callback(self._host_step, shapes, flat, ordered=True)
        counter, perm = handle
        obs = self._permute(self._by_seed(obs), perm)
        by_seed = self._by_seed
        return (counter + 1, perm), (obs, by_seed(reward), by_seed(terminated), by_seed(truncated), {})

    def close(self) -> None:
        self.envs.close()

    def _by_seed(self, x):
        return x.reshape((len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))
