"""Held-out evaluation at the end of each round: how well the current policy does on what it never trained on.

What "held out" means depends on the scenario (SCIENCE.md section 4):

- ``permute``: an observation permutation that no round uses (``shifts.heldout_permutation``), on every
  family (MuJoCo dimensions, image patches, the gridworld);
- ``window``/``expand``/``none`` on Procgen and the gridworld: ``--heldout-levels`` test levels past every
  round's levels (``shifts.heldout_levels``);
- other combinations (e.g. MuJoCo ``task``, Atari without ``permute``) have no held-out set: no row.

The JAX envs evaluate inside their bridge (``GridworldBridge.evaluate``, ``JaxEnvBridge.evaluate``). envpool environments use a
second pool, built once per run at the first evaluation: ``--heldout-episodes`` envs per seed with env
seeds ``1_000_000 + s + j`` (disjoint from training's ``s + j``), each playing one episode (at most
``MAX_EVAL_STEPS`` steps) with actions sampled from the policy. MuJoCo observations are normalised with the
seed's frozen running statistics of its first training env (under ``permute``, moved to the held-out
permutation's dimensions).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EVAL_SEED_OFFSET = 1_000_000
MAX_EVAL_STEPS = 5_000  # caps Atari's 27k-step episodes; MuJoCo and Procgen episodes are <= 1,000 steps


def has_heldout(cfg: Any) -> bool:
    """Whether ``cfg``'s scenario has a held-out set (see the module docstring)."""
    from plastix.envs.shifts import env_family

    family = env_family(cfg.env_id)
    if family == "gridworld" or cfg.shift == "permute":
        return True
    return family == "procgen" and cfg.shift in ("none", "window", "expand")


class HeldoutEvaluation:
    """Mean held-out return per seed of the current policies: ``evaluate(states, round_idx) -> [S]``."""

    def __init__(self, cfg: Any, agent: Any, bridge: Any):
        self.cfg, self.agent, self.train_bridge = cfg, agent, bridge
        self.available = has_heldout(cfg)
        self._bridge = None
        self._run = None

    def evaluate(self, states: Any, round_idx: int) -> np.ndarray:
        """Held-out return of each seed of ``states`` (stacked over ``cfg.seed_list``), sampled actions with
        keys ``fold_in(PRNGKey(seed), 10_000 + round_idx)``."""
        seeds = jnp.asarray(self.cfg.seed_list)
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 10_000 + round_idx))(seeds)
        if hasattr(self.train_bridge, "evaluate"):  # the JAX gridworld
            if self._run is None:  # compiled once per run, not once per round
                self._run = jax.jit(jax.vmap(self._jax_bridge_episodes))
            return np.asarray(self._run(states.params, states.opt_state, keys))
        if self._bridge is None:
            self._bridge = self._make_pool()
            self._run = jax.jit(self._episodes)
        raw_obs = jnp.asarray(self._bridge.reset())
        env = states.env
        if self.cfg.shift == "permute":  # the statistics follow the held-out permutation (Agent.follow_permutation)
            old, new = self.agent.observation_permutation(round_idx), self.agent.observation_permutation(None)
            env = jax.vmap(self.agent.follow_permutation, in_axes=(0, None, None))(env, old, new)
        returns = self._run(states.params, states.opt_state, env.obs_rms, self._bridge.handle(), raw_obs, keys)
        return np.asarray(returns)

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.close()

    # ------------------------------------------------------------------------------------------ internals
    def _jax_bridge_episodes(self, params, opt_state, key):
        """One seed's held-out return on the JAX gridworld (``GridworldBridge.evaluate``)."""
        act = lambda k, obs: self.agent.policy.sample(k, self.agent.forward(params, opt_state, obs)[0])
        return self.train_bridge.evaluate(act, key, num_envs=self.cfg.heldout_episodes)

    def _make_pool(self):
        cfg = self.cfg
        seeds = [EVAL_SEED_OFFSET + s for s in cfg.seed_list]
        if self.agent.spec.family == "dmc":
            from plastix.envs.dmc_bridge import DmcBridge

            return DmcBridge(cfg.env_id, seeds, cfg.heldout_episodes, cfg.num_threads, scenario=cfg, heldout=True)
        if self.agent.spec.family == "gymnasium":
            from plastix.envs.gymnasium_bridge import GymnasiumBridge

            return GymnasiumBridge(cfg.env_id, seeds, cfg.heldout_episodes, scenario=cfg, heldout=True)
        if self.agent.spec.family == "mujoco":
            from plastix.envs.envpool_bridge import EnvpoolBridge

            return EnvpoolBridge(cfg.env_id, seeds, cfg.heldout_episodes, cfg.num_threads, scenario=cfg,
                                 heldout=True)
        from plastix.envs.image_envs import ImageEnvBridge

        return ImageEnvBridge(cfg.env_id, seeds, cfg.heldout_episodes, cfg.num_threads, scenario=cfg,
                              heldout=True)

    def _episodes(self, params, opt_state, obs_rms, handle, raw_obs, keys):
        """One episode per held-out env: the sum of its (raw, Atari: unclipped) rewards until it ends."""
        agent, spec, bridge = self.agent, self.agent.spec, self._bridge
        num_seeds, envs = raw_obs.shape[:2]

        def policy(p, o, rms, obs, key):
            if rms is not None:  # the seed's first training env's statistics, frozen, for every held-out env
                rms = jax.tree.map(lambda x: jnp.broadcast_to(x[0], (envs,) + x.shape[1:]), rms)
            dist, _ = agent.forward(p, o, agent._normalize(rms, obs))
            action = agent.policy.sample(key, dist)
            return action if spec.discrete else jnp.clip(action, spec.action_low, spec.action_high)

        def body(carry):
            t, handle, obs, total, alive, keys = carry
            split = jax.vmap(jax.random.split)(keys)
            action = jax.vmap(policy)(params, opt_state, obs_rms, obs, split[:, 1])
            handle, (obs, reward, terminated, truncated, extras) = bridge.step(handle, action)
            over = extras.get("game_over", terminated | truncated)
            score = extras.get("raw_reward", reward).astype(jnp.float64)
            return t + 1, handle, obs, total + jnp.where(alive, score, 0.0), alive & ~over, split[:, 0]

        steps = min(spec.max_episode_steps, MAX_EVAL_STEPS)
        cond = lambda c: (c[0] < steps) & jnp.any(c[4])
        shape = (num_seeds, envs)
        init = (0, handle, raw_obs, jnp.zeros(shape, jnp.float64), jnp.ones(shape, bool), keys)
        total = jax.lax.while_loop(cond, body, init)[3]
        return total.mean(axis=1)
