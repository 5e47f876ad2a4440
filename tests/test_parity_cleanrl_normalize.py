"""plastix's observation/reward normalisation against gymnasium's own wrappers, as CleanRL chains them.

CleanRL's ``make_env`` wraps each env in ``NormalizeObservation`` -> clip [-10, 10] ->
``NormalizeReward(gamma)`` -> clip [-10, 10], and ``SyncVectorEnv`` resets an env inside the step that ends
its episode (the reset observation passes through ``NormalizeObservation`` and updates its statistics).
envpool instead returns the reset observation on the *next* step (reward 0, action ignored), which plastix's
``Agent.observe`` masks out of the reward statistics. Both see the same stream of observations, rewards and
episode ends here; the normalised observations and rewards must agree.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.algos.ppo import Agent
from plastix.config import preset_config
from plastix.envs import EnvSpec

gym = pytest.importorskip("gymnasium")
from gymnasium.wrappers import NormalizeObservation, NormalizeReward
from gymnasium.wrappers.utils import RunningMeanStd

OBS_DIM, NUM_ENVS, GAMMA = 5, 2, 0.99
# Per env: steps of each episode and whether it ends by termination (True) or truncation (False).
EPISODES = [[(12, False), (30, True), (90, False)], [(7, True), (25, False), (100, False)]]


def _env_stream(rng, episodes, outlier_at):
    """One env's scripted stream: a list of episodes, each
    ``(reset_obs, [(obs, reward, terminated, truncated)])``."""
    scale = np.array([1.0, 10.0, 0.1, 3.0, 50.0])
    stream = []
    for k, (length, by_termination) in enumerate(episodes):
        reset_obs = rng.normal(size=OBS_DIM) * scale + 2.0
        steps = []
        for t in range(length):
            obs = rng.normal(size=OBS_DIM) * scale + 2.0
            if (k, t) == outlier_at:  # far outside the statistics: the clip at 10 acts
                obs = obs + 1e3
            end = t == length - 1
            steps.append((obs, 5.0 * rng.normal() + 1.0, end and by_termination, end and not by_termination))
        stream.append((reset_obs, steps))
    return stream


class ScriptedEnv(gym.Env):
    """A gymnasium env that replays one scripted stream (float64 observations, as MuJoCo's)."""

    def __init__(self, stream):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.stream, self.episode, self.t = stream, -1, 0

    def reset(self, *, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return self.stream[self.episode][0], {}

    def step(self, action):
        obs, reward, terminated, truncated = self.stream[self.episode][1][self.t]
        self.t += 1
        return obs, reward, terminated, truncated, {}


def gymnasium_outputs(stream):
    """CleanRL's wrapper chain over one env's stream, reset inside the episode-ending step (SyncVectorEnv).

    Returns the normalised observations (reset and step ones, in stream order) and the step rewards.
    gymnasium 0.29.1 (CleanRL's pin) keeps the observation statistics in float64; gymnasium 1.x keeps them
    in the observation space's dtype, which its wrapper sets to float32, so the float64 statistics are
    put back here.
    """
    env = NormalizeObservation(ScriptedEnv(stream))
    env.obs_rms = RunningMeanStd(shape=(OBS_DIM,), dtype=np.float64)
    env = NormalizeReward(env, gamma=GAMMA)
    observations, rewards = [], []
    for _ in stream:
        obs, _ = env.reset()
        observations.append(np.clip(obs, -10, 10))
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
            observations.append(np.clip(obs, -10, 10))
            rewards.append(np.clip(reward, -10, 10))
            done = terminated or truncated
    return np.array(observations, np.float32), np.array(rewards, np.float32)


def _envpool_events(stream):
    """envpool's view of one env's stream after the initial reset: a step per transition, then a reset
    step (the reset observation, reward 0, no episode end) after each episode but the last."""
    events = []
    for k, (_, steps) in enumerate(stream):
        events.extend(steps)
        if k + 1 < len(stream):
            events.append((stream[k + 1][0], 0.0, False, False))
    return events


def plastix_outputs(streams):
    """``Agent.observe`` over every env's envpool-ordered stream; returns per env the normalised
    observations (initial reset, then every step) and the rewards of the valid steps."""
    cfg = dataclasses.replace(
        preset_config("cleanrl"), num_envs=NUM_ENVS, gamma=GAMMA, diagnostics_every=0, curvature_every=0
    )
    spec = EnvSpec(
        family="mujoco",
        obs_shape=(OBS_DIM,),
        obs_dtype=jnp.float64,
        discrete=False,
        action_dim=1,
        action_low=-np.ones(1),
        action_high=np.ones(1),
        max_episode_steps=1000,
        autoreset="next_step",
        resume="state",
    )
    agent = Agent(cfg, spec)
    first = jnp.asarray(np.stack([s[0][0] for s in streams]))
    env = agent.init_state(jax.random.PRNGKey(0), first).env
    events = [_envpool_events(s) for s in streams]
    length = len(events[0])
    assert all(len(e) == length for e in events)
    column = lambda i, dtype: jnp.asarray(
        np.array([[ev[t][i] for ev in events] for t in range(length)], dtype)
    )
    xs = (column(0, np.float64), column(1, np.float64), column(2, bool), column(3, bool))
    action = jnp.zeros((NUM_ENVS, 1), jnp.float32)

    def step(env, x):
        env, reward, valid, _ = agent.observe(env, action, *x, {})
        return env, (env.obs, reward, valid)

    _, (obs, reward, valid) = jax.jit(lambda e: jax.lax.scan(step, e, xs))(env)
    obs = np.concatenate([np.asarray(env.obs)[None], np.asarray(obs)])
    return [(obs[:, i], np.asarray(reward)[np.asarray(valid[:, i]), i]) for i in range(NUM_ENVS)]


def test_normalisation_matches_gymnasium_wrappers():
    rng = np.random.default_rng(0)
    # Both envs: 132 steps and 2 reset steps, at different times. An outlier after ~125 samples normalises
    # to about sqrt(124) > 10 standard deviations, so the observation clip acts.
    streams = [
        _env_stream(rng, EPISODES[0], outlier_at=(2, 80)),
        _env_stream(rng, EPISODES[1], outlier_at=(2, 95)),
    ]
    for stream, (obs, reward) in zip(streams, plastix_outputs(streams)):
        want_obs, want_reward = gymnasium_outputs(stream)
        np.testing.assert_allclose(obs, want_obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(reward, want_reward, rtol=1e-6, atol=1e-6)
        assert np.abs(want_obs).max() == 10.0 and np.abs(want_reward).max() == 10.0  # both clips acted
