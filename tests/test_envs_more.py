"""DeepMind Control (envpool), gymnax / Craftax (compiled JAX) and any Gymnasium id (host bridge).

Each bridge is checked against its library's own API (the reference), then each env trains at tiny scale
through ``plastix train`` (the training runs are ``slow``: each compiles a whole PPO program, 30-60 s)."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.cli import parse_train_args
from plastix.config import ConfigError, validate
from plastix.store import read_metrics
from plastix.training import train


# ------------------------------------------------------------------------------------------------ DMC
def test_dmc_observation_is_the_dict_flattened_in_task_order_and_matches_envpool_host_steps():
    import envpool

    from plastix.envs.dmc_bridge import DmcBridge

    bridge = DmcBridge("WalkerWalk-v1", seeds=[3], envs_per_seed=2)
    ref = envpool.make("WalkerWalk-v1", env_type="gymnasium", num_envs=2, seed=3, env_seed=[3, 4])
    raw, _ = ref.reset()
    # Plasticine's _flatten_obs: every piece raveled, concatenated in the observation spec's order
    # (dm_control's walker: orientations 14, height 1, velocity 9).
    expect = np.stack([np.concatenate([np.ravel(raw[k][i]) for k in ("orientations", "height", "velocity")])
                       for i in range(2)])
    obs = bridge.reset()
    assert obs.shape == (1, 2, 24) and bridge.spec.family == "dmc" and not bridge.spec.discrete
    np.testing.assert_array_equal(obs[0], expect)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, 6))
    step = jax.jit(bridge.step)
    handle = bridge.handle()
    for a in actions:
        handle, (obs, reward, terminated, truncated, _) = step(handle, jnp.asarray(a[None], jnp.float32))
        raw, ref_reward, *_ = ref.step(a.astype(np.float32).astype(np.float64))
        expect = np.stack([np.concatenate([np.ravel(raw[k][i]) for k in ("orientations", "height", "velocity")])
                           for i in range(2)])
        np.testing.assert_allclose(np.asarray(obs[0]), expect, rtol=0, atol=0)
        np.testing.assert_allclose(np.asarray(reward[0]), ref_reward)
    bridge.close()


def test_dmc_sequences_need_task_and_shared_shapes():
    base = ["--num-envs", "1", "--num-steps", "64", "--num-minibatches", "1", "--total-timesteps", "128"]
    with pytest.raises(ConfigError, match="share observation and action shapes"):
        validate(parse_train_args(["--env-id", "WalkerWalk-v1,CheetahRun-v1", "--shift", "task", "--rounds", "2", *base]))
    with pytest.raises(ConfigError, match="--shift task"):
        validate(parse_train_args(["--env-id", "WalkerStand-v1,WalkerWalk-v1", *base]))
    with pytest.raises(ConfigError, match="--shift task"):
        validate(parse_train_args(["--env-id", "WalkerWalk-v1", "--shift", "task", "--rounds", "2", *base]))
    cfg = parse_train_args(["--env-id", "WalkerStand-v1,WalkerWalk-v1", "--shift", "task", "--rounds", "2", *base])
    validate(cfg)
    assert cfg.preset == "cleanrl"  # the continuous preset of the family


# ------------------------------------------------------------------------------------------------ gymnax
def test_gymnax_bridge_splits_time_limit_from_game_end_and_resets_in_the_same_step():
    pytest.importorskip("gymnax")
    from plastix.envs.jax_envs import GymnaxEnv, step_autoreset

    env = GymnaxEnv("CartPole-v1")
    _, state = env.reset(jax.random.PRNGKey(0))
    # One step before the 500-step limit, upright: the episode ends by the limit (truncated), not by the pole.
    state = state.replace(time=jnp.int32(env.max_steps - 1))
    step = jax.jit(lambda k, s, a: step_autoreset(env, k, s, a))
    obs, new, reward, terminated, truncated = step(jax.random.PRNGKey(1), state, jnp.int32(0))
    assert bool(truncated) and not bool(terminated) and float(reward) == 1.0
    assert int(new.time) == 0  # a new episode's state, in the same step
    expect_obs, _ = env.reset(jax.random.split(jax.random.PRNGKey(1))[1])
    np.testing.assert_array_equal(obs, expect_obs)
    # A pole past gymnasium's 12 degrees (0.2095 rad) terminates: the game's own end, not truncated.
    state = state.replace(time=jnp.int32(3), theta=jnp.float32(0.3))
    _, _, _, terminated, truncated = step(jax.random.PRNGKey(2), state, jnp.int32(0))
    assert bool(terminated) and not bool(truncated)


@pytest.mark.slow
def test_minatar_observation_flattened_and_permuted_per_round():
    pytest.importorskip("gymnax")
    from types import SimpleNamespace

    from plastix.envs import shifts
    from plastix.envs.jax_envs import JaxEnvBridge

    cfg = SimpleNamespace(shift="permute", shift_seed=0)
    bridge = JaxEnvBridge("Breakout-MinAtar", [0], 2, cfg)
    obs0 = bridge.reset()
    assert obs0.shape == (1, 2, 400) and bridge.spec.action_dim == 3 and bridge.spec.autoreset == "same_step"
    handle = bridge.handle()
    h1 = bridge.set_round(1, handle)
    perm = shifts.observation_permutation(jax.random.PRNGKey(0), 1, 400)
    action = jnp.zeros((1, 2), jnp.int32)
    step = jax.jit(bridge.step)
    _, (plain, *_) = step(handle, action)
    _, (permuted, *_) = step(h1, action)
    np.testing.assert_array_equal(np.asarray(permuted), np.asarray(plain)[..., np.asarray(perm)])
    assert not np.array_equal(np.asarray(perm), np.arange(400))


def test_jax_envs_refuse_a_task_shift():
    pytest.importorskip("gymnax")
    with pytest.raises(ConfigError, match="--shift task is not supported on --env-id Breakout-MinAtar"):
        validate(parse_train_args(["--env-id", "Breakout-MinAtar", "--shift", "task", "--rounds", "2",
                                   "--num-envs", "1", "--num-steps", "64", "--num-minibatches", "1"]))


# ------------------------------------------------------------------------------------------------ gymnasium
def test_gymnasium_bridge_steps_like_gymnasiums_own_vector_env():
    from plastix.envs.gymnasium_bridge import GymnasiumBridge

    bridge = GymnasiumBridge("gymnasium:CartPole-v1", seeds=[5, 9], envs_per_seed=2)
    ref = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1") for _ in range(4)])
    ref_obs, _ = ref.reset(seed=[5, 6, 9, 10])  # env j of seed s: seed s + j
    np.testing.assert_array_equal(bridge.reset().reshape(4, 4), ref_obs)
    step = jax.jit(bridge.step)
    handle = bridge.handle()
    actions = np.random.default_rng(1).integers(0, 2, (40, 4))
    ends = 0
    for a in actions:
        handle, (obs, reward, terminated, truncated, _) = step(handle, jnp.asarray(a.reshape(2, 2)))
        r_obs, r_reward, r_term, r_trunc, _ = ref.step(a)
        np.testing.assert_array_equal(np.asarray(obs).reshape(4, 4), r_obs)
        np.testing.assert_array_equal(np.asarray(reward).reshape(4), r_reward)
        np.testing.assert_array_equal(np.asarray(terminated).reshape(4), r_term)
        ends += int(r_term.sum())
    assert ends > 0  # random CartPole episodes end within 40 steps: the autoreset path was exercised
    assert bridge.spec.autoreset == "next_step" and bridge.spec.resume == "reset"
    bridge.close()


def test_gymnasium_ids_are_checked_before_any_compute():
    base = ["--num-envs", "1", "--num-steps", "64", "--num-minibatches", "1"]
    with pytest.raises(ConfigError, match="--env-id gymnasium:NoSuchEnv-v0: gymnasium cannot make it"):
        validate(parse_train_args(["--env-id", "gymnasium:NoSuchEnv-v0", *base]))
    with pytest.raises(ConfigError, match="observation space"):
        validate(parse_train_args(["--env-id", "gymnasium:FrozenLake-v1", *base]))
    with pytest.raises(ConfigError, match="share observation and action spaces"):
        validate(parse_train_args(["--env-id", "gymnasium:CartPole-v1,gymnasium:Pendulum-v1", "--shift", "task",
                                   "--rounds", "2", *base]))
    with pytest.raises(ConfigError, match="--preset cleanrl does not fit"):
        validate(parse_train_args(["--env-id", "gymnasium:CartPole-v1", "--preset", "cleanrl", *base]))
    assert parse_train_args(["--env-id", "gymnasium:CartPole-v1", *base]).preset == "cleanrl-discrete"
    assert parse_train_args(["--env-id", "gymnasium:Pendulum-v1", *base]).preset == "cleanrl"


# ------------------------------------------------------------------------------------------------ training
TINY = ["--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "1",
        "--log-every", "1", "--diagnostics-every", "1", "--curvature-every", "0", "--quiet"]


def _train(tmp_path, env_id, *extra, updates=2):
    argv = ["--env-id", env_id, *TINY, "--total-timesteps", str(updates * 32), *extra,
            "--run-dir", str(tmp_path / "run")]
    df = read_metrics(train(parse_train_args(argv)))
    assert df["update"].max() == updates
    assert np.isfinite(df[df.key == "loss/value"].value).all()
    assert (df.key.str.contains("dormant_ratio")).any()  # the diagnostics ran on this env
    return df


@pytest.mark.slow
def test_gymnasium_cartpole_trains(tmp_path):
    _train(tmp_path, "gymnasium:CartPole-v1")


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar",
                                    "SpaceInvaders-MinAtar", "CartPole-v1", "Craftax-Classic-Symbolic-v1"])
def test_jax_envs_train(tmp_path, env_id):
    pytest.importorskip("gymnax" if "Craftax" not in env_id else "craftax")
    _train(tmp_path, env_id)


@pytest.mark.slow
def test_minatar_trains_under_permute_with_round_rows(tmp_path):
    pytest.importorskip("gymnax")
    df = _train(tmp_path, "Breakout-MinAtar", "--shift", "permute", "--rounds", "2", "--heldout-episodes", "2")
    assert (df.key.str.startswith("round/")).any()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["CheetahRun-v1", "gymnasium:Pendulum-v1"])
def test_continuous_envs_train(tmp_path, env_id):
    _train(tmp_path, env_id)


@pytest.mark.slow
def test_continual_dmc_task_sequence_trains(tmp_path):
    df = _train(tmp_path, "WalkerStand-v1,WalkerWalk-v1", "--shift", "task", "--rounds", "2")
    assert (df.key.str.startswith("round/")).any()
