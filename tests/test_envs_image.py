"""CoinRun and Montezuma's Revenge start, step and reset through plastix (envpool XLA step inside jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plastix  # noqa: F401
from plastix.envs import shifts as sh
from plastix.envs.image_envs import ImageEnvBridge


def _run(bridge, steps):
    obs0 = bridge.reset()
    step = jax.jit(bridge.step)
    handle = bridge.handle()
    actions = jnp.asarray(np.random.default_rng(0).integers(0, bridge.num_actions, (steps,) + obs0.shape[:2]), jnp.int32)
    outs = []
    for t in range(steps):
        handle, out = step(handle, actions[t])
        outs.append(out)
    return obs0, outs


def test_coinrun_train_and_heldout_levels():
    train = sh.train_levels("window", 1, 5, 5)  # levels [5, 10)
    test = sh.heldout_levels(2, 5, 5, 5)  # levels [10, 15)
    b_train = ImageEnvBridge("CoinrunEasy-v0", [0, 1], 2, start_level=train.start, num_levels=train.num_levels)
    b_test = ImageEnvBridge("CoinrunEasy-v0", [0, 1], 2, start_level=test.start, num_levels=test.num_levels)
    assert b_train.observation_shape == (64, 64, 3) and b_train.num_actions == 15
    for bridge, levels in ((b_train, train), (b_test, test)):
        obs0, outs = _run(bridge, 5)
        assert obs0.shape == (2, 2, 64, 64, 3) and obs0.dtype == np.uint8
        obs, reward, term, trunc, extras = outs[-1]
        assert obs.shape == (2, 2, 64, 64, 3) and obs.dtype == jnp.uint8
        assert reward.shape == (2, 2) and reward.dtype == jnp.float32 and term.dtype == jnp.bool_
        seeds = np.concatenate([np.asarray(o[4]["level_seed"]).ravel() for o in outs])
        assert set(seeds.tolist()) <= set(levels.ids())
        bridge.close()
    assert not set(train.ids()) & set(test.ids())


def test_montezuma_start_step_reset():
    bridge = ImageEnvBridge("MontezumaRevenge-v5", [3], 2)
    assert bridge.observation_shape == (84, 84, 4) and bridge.num_actions == 18
    assert bridge.env.spec.config.episodic_life and bridge.env.spec.config.reward_clip
    obs0, outs = _run(bridge, 5)
    assert obs0.shape == (1, 2, 84, 84, 4) and obs0.dtype == np.uint8
    obs, reward, term, trunc, extras = outs[-1]
    assert obs.shape == (1, 2, 84, 84, 4) and obs.dtype == jnp.uint8
    assert set(extras) == {"raw_reward", "game_over", "lives"}
    # The stack's newest frame (channel 3) is the current frame; it moved one slot older after a step.
    assert jnp.array_equal(outs[-1][0][..., 2], outs[-2][0][..., 3])
    assert bridge.reset().shape == (1, 2, 84, 84, 4)
    bridge.close()


def test_image_bridge_rejects_bad_input():
    with pytest.raises(ValueError, match="--env-id"):
        ImageEnvBridge("HalfCheetah-v4", [0], 1)
    with pytest.raises(ValueError, match="no levels"):
        ImageEnvBridge("MontezumaRevenge-v5", [0], 1, num_levels=3)
