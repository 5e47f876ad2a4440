"""Environments behind one bridge interface, so the trainer does not care where steps come from.

A *bridge* holds ``S`` env groups of ``n`` envs (one group per seed) and offers:

- ``spec``: an ``EnvSpec`` (observation shape/dtype, action space, reset semantics, how resume works);
- ``reset() -> obs [S, n, *obs_shape]`` (host; the very first reset of a run);
- ``handle()``: a pytree threaded through the compiled loop (an envpool XLA handle, or a JAX env state);
- ``step(handle, action [S, n, ...]) -> handle, (obs, reward, terminated, truncated, extras)`` (compiled);
- ``set_round(round_idx, handle) -> handle`` (host, between rounds of a non-stationary scenario);
- ``restore(...)``: bring a fresh bridge back to a checkpointed state (see ``EnvSpec.resume``): the
  handle (``"state"``), or the rollout's ``replay.ReplayRecord`` (``"replay"``; ``EnvSpec.replay`` says how
  the rollout keeps it, the trainer carries it without looking inside).

``make_bridge(cfg)`` picks the bridge from ``cfg.env_id``:

==================  =============================  ==============================================
family              env ids                        bridge
==================  =============================  ==============================================
``mujoco``          envpool ``HalfCheetah-v4``...  ``envpool_bridge.EnvpoolBridge`` (continuous)
``procgen``         ``CoinrunEasy-v0``...          ``image_envs.ImageEnvBridge`` (discrete)
``atari``           ``MontezumaRevenge-v5``...     ``image_envs.ImageEnvBridge`` (discrete)
``gridworld``       ``GridWorld-v0``               ``gridworld_bridge.GridworldBridge`` (JAX)
``mujoco`` + mjx    ``HalfCheetah-v4``             ``mjx_halfcheetah.MJXBridge`` (``--env-backend mjx``)
``dmc``             envpool ``CheetahRun-v1``...   ``dmc_bridge.DmcBridge`` (continuous, dict obs flattened)
``gymnax``          ``Breakout-MinAtar``...        ``jax_envs.JaxEnvBridge`` (JAX, discrete)
``craftax``         ``Craftax-Classic-Symbolic-v1`` ``jax_envs.JaxEnvBridge`` (JAX, discrete)
``gymnasium``       ``gymnasium:ID``               ``gymnasium_bridge.GymnasiumBridge`` (host callback)
==================  =============================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What the trainer needs to know about a bridge's envs."""

    family: str  # "mujoco" | "procgen" | "atari" | "gridworld" | "dmc" | "gymnax" | "craftax" | "gymnasium"
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    discrete: bool
    action_dim: int  # continuous: action dimensions; discrete: number of actions
    action_low: np.ndarray | None  # continuous only
    action_high: np.ndarray | None
    max_episode_steps: int
    autoreset: str  # "next_step" (envpool: the step after an episode end is a reset step) or "same_step"
    resume: str  # "replay" (MuJoCo: replay recorded actions), "state" (JAX env state in the checkpoint),
    #              "reset" (Procgen/Atari: envs restart from a reset; the learner resumes exactly)

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @property
    def replay(self):
        """How a rollout keeps the record that ``restore`` replays (``replay.ActionReplay``: ``init`` /
        ``record``) when the envs resume by replay (``resume == "replay"``), else None."""
        from plastix.envs.replay import ActionReplay

        return ActionReplay(self.max_episode_steps, self.action_dim) if self.resume == "replay" else None


def make_bridge(cfg: Any, seeds: list[int]):
    """The bridge for ``cfg.env_id`` with one group of ``cfg.num_envs`` envs per seed."""
    from plastix.envs.shifts import env_family

    family = env_family(cfg.env_id)
    if family == "mujoco" and getattr(cfg, "env_backend", "envpool") == "mjx":
        from plastix.envs.mjx_halfcheetah import make_mjx_bridge

        return make_mjx_bridge(cfg, seeds)
    if family == "mujoco":
        from plastix.envs.envpool_bridge import EnvpoolBridge

        return EnvpoolBridge(cfg.env_id, seeds, cfg.num_envs, cfg.num_threads, scenario=cfg)
    if family == "gridworld":
        from plastix.envs.gridworld_bridge import GridworldBridge

        return GridworldBridge(seeds, cfg.num_envs, cfg)
    if family == "dmc":
        from plastix.envs.dmc_bridge import DmcBridge

        return DmcBridge(cfg.env_id, seeds, cfg.num_envs, cfg.num_threads, scenario=cfg)
    if family in ("gymnax", "craftax"):
        from plastix.envs.jax_envs import JaxEnvBridge

        return JaxEnvBridge(cfg.env_id, seeds, cfg.num_envs, cfg)
    if family == "gymnasium":
        from plastix.envs.gymnasium_bridge import GymnasiumBridge

        return GymnasiumBridge(cfg.env_id, seeds, cfg.num_envs, scenario=cfg)
    from plastix.envs.image_envs import ImageEnvBridge

    return ImageEnvBridge(cfg.env_id, seeds, cfg.num_envs, cfg.num_threads, scenario=cfg)
