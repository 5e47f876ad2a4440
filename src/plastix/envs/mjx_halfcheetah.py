"""HalfCheetah-v4 in JAX with MuJoCo MJX: the accelerator path (``--backend mjx``).

What is the same as envpool's ``HalfCheetah-v4`` (and gymnasium's):

- the model: the very MJCF file envpool loads (``<envpool_assets>/mujoco/assets_gym/half_cheetah.xml``,
  byte-identical to gymnasium's ``half_cheetah.xml``), compiled by the ``mujoco`` package and put on the
  device with ``mujoco.mjx.put_model`` (float64 when ``jax_enable_x64`` is on, which importing plastix does);
- frame skip 5 (``dt = 5 * 0.01 = 0.05``), action written to ``ctrl`` (MuJoCo clamps it to ``ctrlrange``);
- reward ``forward_reward_weight * (x_after - x_before) / dt - ctrl_cost_weight * sum(action**2)`` (the
  unclipped action in the cost, like envpool), returned as float32 like envpool;
- observation ``concat(qpos[1:], qvel)`` (17 dims, float64);
- no termination; truncation when the episode reaches ``max_episode_steps`` (1000) steps;
- reset ``qpos = init_qpos + U(-0.1, 0.1)``, ``qvel = init_qvel + 0.1 * N(0, 1)``, solver warm start zero
  (``mj_resetData``); the random numbers come from JAX keys, so they differ from envpool's, the
  distribution does not.

The physics is MJX's JAX re-implementation of MuJoCo (Newton solver, pyramidal cones, Euler with implicit
damping, as the MJCF asks). Measured against envpool (MuJoCo C) from an identical initial state and the
same uniform random actions, float64 (``bench/mjx_throughput.py --validate``; 8 episodes, max abs error):

=====  ===========  ===========  =====================  =====================
steps  MJX obs      MJX reward   MuJoCo C 4.0 obs       MuJoCo C 4.0 reward
=====  ===========  ===========  =====================  =====================
10     1.4e-12      0            7.3e-13                0
25     3.0e-10      0            9.9e-11                0
50     1.9e-8       6.6e-11      3.8e-8                 1.5e-11
100    0.38         0.054        0.39                   0.056
1000   19           3.5          19                     3.5
=====  ===========  ===========  =====================  =====================

Rounding-level differences grow chaotically once the feet hit the ground (over 32 envs the worst is 4e-8
at 25 steps, 1e-4 at 40-50, 2e-3 at 60); MuJoCo C itself (the ``mujoco`` 4.0 package on the same MJCF)
departs from envpool's MuJoCo 3.6 just as fast, so this is the model's sensitivity, not an MJX defect.
Trajectories are therefore equal only over a short horizon (tested: 25 steps, tolerance 1e-5); over
whole episodes the two backends are the same *distribution* of dynamics, not the same numbers.

API (gymnax-style, pure functions; every state is a pytree):

- ``env = MJXHalfCheetah()``; ``obs, state = env.reset(key)``;
  ``obs, state, reward, terminated, truncated = env.step(state, action)`` (no auto-reset);
- ``env.auto_step(state, action)``: envpool's auto-reset semantics: the step *after* an episode ended is a
  reset step (the action is ignored, reward 0, terminated = truncated = False, the obs is the new
  episode's first obs). The reset draws from ``state.key``, so a run is a pure function of the reset key;
- ``MJXBridge``: a drop-in for ``plastix.envs.envpool_bridge.EnvpoolBridge`` (same constructor arguments,
  attributes, ``spec / reset / handle / step / set_round / restore / close``) whose handle holds the batched
  ``MJXState``; ``make_mjx_bridge(cfg, seeds)`` mirrors ``plastix.envs.make_bridge(cfg, seeds)``.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ENV_ID = "HalfCheetah-v4"



def _import_mjx():
    """``mujoco.mjx`` (prints a warning about the optional ``warp`` backend on import: silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import mujoco
        from mujoco import mjx
    return mujoco, mjx


def envpool_xml_path(env_id: str = ENV_ID) -> str:
    """Path of the MJCF file envpool's ``env_id`` loads (``config.base_path/mujoco/assets_gym/xml_file``)."""
    import envpool

    cfg = envpool.make_spec(env_id).config
    path = os.path.join(cfg.base_path, "mujoco", "assets_gym", cfg.xml_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"envpool's MJCF for {env_id} not found at {path}")
    return path


@struct.dataclass
class MJXState:
    """One env's state (batched: every leaf gains leading axes).

    Only what ``mj_step`` reads from the previous step is kept (``qpos``, ``qvel`` and the solver's warm start
    ``qacc_warmstart``); the rest of ``mjx.Data`` is recomputed by the next step's forward pass, so the
    dynamics are exactly those of carrying the whole ``mjx.Data``, at a fraction of the size.
    """

    qpos: jax.Array  # [nq] float64
    qvel: jax.Array  # [nv] float64
    qacc_warmstart: jax.Array  # [nv] float64
    time: jax.Array  # [] float64, simulated seconds in this episode
    steps: jax.Array  # [] int32, env steps in this episode
    done: jax.Array  # [] bool, the last step ended the episode (the next auto_step resets)
    key: jax.Array  # PRNGKey (uint32 [2]) for the next reset


@dataclass(frozen=True)
class HalfCheetahConfig:
    """envpool's HalfCheetah-v4 defaults (``envpool.make_spec("HalfCheetah-v4").config``)."""

    frame_skip: int = 5
    forward_reward_weight: float = 1.0
    ctrl_cost_weight: float = 0.1
    reset_noise_scale: float = 0.1
    max_episode_steps: int = 1000
    xml_path: str | None = None  # None: envpool's half_cheetah.xml


class MJXHalfCheetah:
    """Functional HalfCheetah-v4 on MJX. Methods are pure and can be jitted / vmapped."""

    def __init__(self, config: HalfCheetahConfig = HalfCheetahConfig()):
        jax.config.update("jax_enable_x64", True)  # float64 physics, as MuJoCo C
        mujoco, mjx = _import_mjx()
        self.config = config
        self.xml_path = config.xml_path or envpool_xml_path()
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(lambda msg: None)  # 'settotalmass is deprecated' (MuJoCo >= 3.7): harmless
        try:
            self.mj_model = mujoco.MjModel.from_xml_path(self.xml_path)
        finally:
            mujoco.set_mju_user_warning(previous)
        self.mjx = mjx
        self.model = mjx.put_model(self.mj_model)
        self._template = mjx.make_data(self.model)
        self.nq, self.nv, self.nu = self.mj_model.nq, self.mj_model.nv, self.mj_model.nu
        self.obs_dim = self.nq - 1 + self.nv
        self.action_dim = self.nu
        self.action_low = np.asarray(self.mj_model.actuator_ctrlrange[:, 0], np.float32)
        self.action_high = np.asarray(self.mj_model.actuator_ctrlrange[:, 1], np.float32)
        self.init_qpos = jnp.asarray(self.mj_model.qpos0, jnp.float64)
        self.init_qvel = jnp.zeros(self.nv, jnp.float64)
        self.dt = config.frame_skip * float(self.mj_model.opt.timestep)
        self.max_episode_steps = config.max_episode_steps

    # ------------------------------------------------------------------ state <-> observation
    def observation(self, state: MJXState) -> jax.Array:
        return jnp.concatenate([state.qpos[..., 1:], state.qvel], axis=-1)

    def state_from(self, qpos, qvel, key, qacc_warmstart=None) -> MJXState:
        """A fresh-episode state at a given ``qpos, qvel`` (e.g. copied from envpool; warm start zero)."""
        qpos = jnp.asarray(qpos, jnp.float64)
        qvel = jnp.asarray(qvel, jnp.float64)
        return MJXState(
            qpos=qpos,
            qvel=qvel,
            qacc_warmstart=jnp.zeros_like(qvel) if qacc_warmstart is None else jnp.asarray(qacc_warmstart),
            time=jnp.zeros(qpos.shape[:-1], jnp.float64),
            steps=jnp.zeros(qpos.shape[:-1], jnp.int32),
            done=jnp.zeros(qpos.shape[:-1], bool),
            key=key,
        )

    # ------------------------------------------------------------------ gymnax-style API
    def reset(self, key: jax.Array) -> tuple[jax.Array, MJXState]:
        """``obs, state``: ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + s * N(0, 1)``, ``s = 0.1``."""
        key, k_pos, k_vel = jax.random.split(key, 3)
        s = self.config.reset_noise_scale
        qpos = self.init_qpos + jax.random.uniform(k_pos, (self.nq,), jnp.float64, -s, s)
        qvel = self.init_qvel + s * jax.random.normal(k_vel, (self.nv,), jnp.float64)
        state = self.state_from(qpos, qvel, key)
        return self.observation(state), state

    def step(self, state: MJXState, action: jax.Array):
        """``obs, state, reward, terminated, truncated`` (no auto-reset; see ``auto_step``)."""
        action = jnp.asarray(action, jnp.float64)
        d = self._template.replace(
            qpos=state.qpos, qvel=state.qvel, qacc_warmstart=state.qacc_warmstart, time=state.time, ctrl=action
        )
        d = jax.lax.fori_loop(0, self.config.frame_skip, lambda _, d: self.mjx.step(self.model, d), d)
        x_velocity = (d.qpos[0] - state.qpos[0]) / self.dt
        ctrl_cost = self.config.ctrl_cost_weight * jnp.sum(jnp.square(action))
        reward = (self.config.forward_reward_weight * x_velocity - ctrl_cost).astype(jnp.float32)
        steps = state.steps + 1
        terminated = jnp.zeros((), bool)
        truncated = steps >= self.max_episode_steps
        new = state.replace(
            qpos=d.qpos,
            qvel=d.qvel,
            qacc_warmstart=d.qacc_warmstart,
            time=d.time,
            steps=steps,
            done=terminated | truncated,
        )
        return self.observation(new), new, reward, terminated, truncated

    def auto_step(self, state: MJXState, action: jax.Array):
        """envpool semantics: if ``state.done``, this step resets (action ignored, reward 0, flags False)."""
        obs_s, stepped, reward, terminated, truncated = self.step(state, action)
        obs_r, fresh = self.reset(state.key)
        d = state.done
        pick = lambda a, b: jnp.where(d, a, b)
        return (
            pick(obs_r, obs_s),
            jax.tree_util.tree_map(pick, fresh, stepped),
            pick(jnp.zeros_like(reward), reward),
            pick(False, terminated),
            pick(False, truncated),
        )


# ----------------------------------------------------------------------------------------------- bridge
def check_mjx_env(env_id: str, shift: str = "none") -> None:
    """Raise ``ValueError`` naming the option unless the mjx backend can run ``env_id`` with ``shift``."""
    if env_id != ENV_ID:
        raise ValueError(f"--env-id: the mjx backend implements only {ENV_ID!r}, not {env_id!r} (use --backend envpool)")
    if shift not in ("none", "permute", "task"):
        raise ValueError(f"--shift: {shift!r} is not available on the mjx backend; allowed: none, permute, task")


@dataclass
class MJXBridge:
    """Drop-in for ``EnvpoolBridge`` backed by ``MJXHalfCheetah`` (selected by ``--backend mjx``).

    Same constructor arguments (``num_threads`` is accepted and ignored: XLA decides the parallelism), same
    attributes (``spec``, ``obs_dim``, ``action_dim``, ``action_low``, ``action_high``, ``max_episode_steps``,
    ``num_envs``) and methods (``reset``, ``handle``, ``step``, ``set_round``, ``restore``, ``close``), same
    outputs (``obs [S,n,17]`` float64, ``reward [S,n]`` float32, bool flags, ``extras["x_velocity"]``), same
    auto-reset (the step after an episode end is a reset step with reward 0) and the same scenario shifts
    (observation permutation, running direction), through ``envpool_bridge.round_state``.

    Env ``j`` of seed ``s`` draws its resets from ``jax.random.PRNGKey(s + j)`` (envpool's per-env seed
    convention, ``env_seeds``). The handle is ``(MJXState [S*n], RoundState)``: a plain pytree, so
    ``spec.resume == "state"``: the trainer checkpoints it and hands it back to ``restore(handle)``; the
    envpool path's replay record (``restore(replay.ReplayRecord)``) works too.
    """

    env_id: str
    seeds: list[int]
    envs_per_seed: int
    num_threads: int = 0
    scenario: Any = None  # a TrainConfig with shift options, or None for a stationary task
    max_episode_steps_override: int | None = None

    def __post_init__(self):
        check_mjx_env(self.env_id, getattr(self.scenario, "shift", "none"))
        cfg = HalfCheetahConfig()
        if self.max_episode_steps_override is not None:
            cfg = HalfCheetahConfig(max_episode_steps=int(self.max_episode_steps_override))
        self.env = MJXHalfCheetah(cfg)
        self.obs_dim = self.env.obs_dim
        self.action_dim = self.env.action_dim
        self.action_low = self.env.action_low
        self.action_high = self.env.action_high
        self.max_episode_steps = self.env.max_episode_steps
        self._reset_fn = jax.jit(jax.vmap(self.env.reset))
        self._state: MJXState | None = None
        self._round = self._round_state(0)

    @property
    def spec(self):
        from plastix.envs import EnvSpec

        return EnvSpec("mujoco", (self.obs_dim,), np.float64, False, self.action_dim, self.action_low,
                       self.action_high, self.max_episode_steps, "next_step", "state")

    @property
    def num_envs(self) -> int:
        return len(self.seeds) * self.envs_per_seed

    def _round_state(self, round_idx: int):
        from plastix.envs.envpool_bridge import round_state

        return round_state(self.scenario, round_idx, self.obs_dim)

    def set_round(self, round_idx: int, handle):
        """Handle for round ``round_idx`` of the scenario (permutation / running direction)."""
        return (handle[0], self._round_state(round_idx))

    def _keys(self) -> jax.Array:
        from plastix.envs.envpool_bridge import env_seeds

        return jax.vmap(jax.random.PRNGKey)(jnp.asarray(env_seeds(self.seeds, self.envs_per_seed), jnp.uint32))

    def reset(self) -> np.ndarray:
        """Reset every env; raw observations ``[S, n, obs_dim]`` (float64), permuted as in round 0."""
        obs, self._state = self._reset_fn(self._keys())
        return np.asarray(self._by_seed(obs))[..., np.asarray(self._round.perm)]

    def handle(self):
        """``(MJXState [S*n], RoundState)`` to thread through the compiled loop."""
        if self._state is None:
            raise RuntimeError("MJXBridge.handle(): call reset() first")
        return (self._state, self._round)

    def step(self, handle, action):
        """Compiled step with envpool's auto-reset. ``action``: ``[S, n, A]`` (clipped to the action bounds).

        Returns ``handle, (obs [S,n,D] float64, reward [S,n] float32, terminated [S,n], truncated [S,n],
        extras)``, the round's shift applied as ``EnvpoolBridge.step`` does.
        """
        from plastix.envs.shifts import direction_reward

        state, rnd = handle
        flat = jnp.reshape(action, (self.num_envs, self.action_dim)).astype(jnp.float64)
        obs, new, reward, terminated, truncated = jax.vmap(self.env.auto_step)(state, flat)
        # envpool's info["x_velocity"]: 0 on a reset step
        x_velocity = jnp.where(state.done, 0.0, (new.qpos[:, 0] - state.qpos[:, 0]) / self.env.dt)
        obs, reward, terminated, truncated, x_velocity = map(
            self._by_seed, (obs, reward, terminated, truncated, x_velocity)
        )
        reward = direction_reward(reward, x_velocity, rnd.direction).astype(reward.dtype)
        obs = jnp.take(obs, rnd.perm, axis=-1)
        return (new, rnd), (obs, reward, terminated, truncated, {"x_velocity": x_velocity})

    def restore(self, saved) -> None:
        """Bring a bridge that was ``reset()`` once back to a recorded state.

        ``restore(handle)``: the checkpointed handle (``spec.resume == "state"``), used as it is.
        ``restore(record)``: the envpool path's ``replay.ReplayRecord`` (``[S, n, ...]``): env ``i`` advances
        its reset key ``num_resets[i]`` times (each auto-reset draws from ``state.key``) and replays its
        ``actions_recorded[i]`` recorded actions.
        """
        from plastix.envs.replay import ReplayRecord

        if not isinstance(saved, ReplayRecord):
            self._state = saved[0] if isinstance(saved, tuple) else saved
            return
        num_resets = jnp.asarray(np.asarray(saved.num_resets).reshape(-1), jnp.int32)
        lengths = jnp.asarray(np.asarray(saved.actions_recorded).reshape(-1), jnp.int32)
        actions = jnp.asarray(np.asarray(saved.episode_actions).reshape(self.num_envs, -1, self.action_dim),
                              jnp.float64)
        self._state = _replay(self.env, self.handle()[0], num_resets, actions, lengths)

    def _by_seed(self, x):
        return jnp.reshape(x, (len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))

    def close(self) -> None:
        pass


@partial(jax.jit, static_argnums=0)
def _replay(env: MJXHalfCheetah, state: MJXState, num_resets, actions, lengths) -> MJXState:
    def one(state, n_resets, acts, length):
        state = jax.lax.fori_loop(0, n_resets, lambda _, s: env.reset(s.key)[1], state)

        def body(s, xs):
            t, a = xs
            _, nxt, *_ = env.step(s, a)
            return jax.tree_util.tree_map(lambda x, y: jnp.where(t < length, x, y), nxt, s), None

        state, _ = jax.lax.scan(body, state, (jnp.arange(acts.shape[0]), acts))
        return state

    return jax.vmap(one)(state, num_resets, actions, lengths)


def make_mjx_bridge(cfg: Any, seeds: list[int]) -> MJXBridge:
    """``MJXBridge`` for a ``TrainConfig`` (``cfg.env_id``, ``cfg.num_envs``, shift options), like ``make_bridge``."""
    return MJXBridge(cfg.env_id, seeds, cfg.num_envs, getattr(cfg, "num_threads", 0), scenario=cfg)
