"""Presets per reference (CleanRL's three PPO files), which env families each fits, and the learning-rate
schedule over rounds (`--lr-schedule whole | per-round | off`, CleanRL's `--anneal-lr` mapped onto it)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from plastix.algos.ppo import fresh_members, learning_rate
from plastix.cli import main, parse_train_args
from plastix.config import (PRESET_FAMILIES, PRESETS, ConfigError, TrainConfig, config_from_dict, preset_config,
                            validate)

# The `Args` of vwxyzjn/cleanrl's files (cleanrl/ppo_atari_envpool.py lines 39-72, ppo_procgen.py lines 38-71,
# ppo.py lines 37-70), copied by hand from the reference; `anneal_lr` is lr_schedule whole / off here.
ATARI_ENVPOOL_ARGS = dict(env_id="Breakout-v5", total_timesteps=10_000_000, learning_rate=2.5e-4, num_envs=8,
                          num_steps=128, lr_schedule="whole", gamma=0.99, gae_lambda=0.95, num_minibatches=4,
                          update_epochs=4, norm_adv=True, clip_coef=0.1, clip_vloss=True, ent_coef=0.01,
                          vf_coef=0.5, max_grad_norm=0.5, target_kl=None, adam_eps=1e-5)
PROCGEN_ARGS = dict(env_id="StarpilotEasy-v0", total_timesteps=25_000_000, learning_rate=5e-4, num_envs=64,
                    num_steps=256, lr_schedule="off", gamma=0.999, gae_lambda=0.95, num_minibatches=8,
                    update_epochs=3, norm_adv=True, clip_coef=0.2, clip_vloss=True, ent_coef=0.01, vf_coef=0.5,
                    max_grad_norm=0.5, target_kl=None, adam_eps=1e-5, reward_norm_stats="shared")
PPO_DISCRETE_ARGS = dict(total_timesteps=500_000, learning_rate=2.5e-4, num_envs=4, num_steps=128,
                         lr_schedule="whole", gamma=0.99, gae_lambda=0.95, num_minibatches=4, update_epochs=4,
                         norm_adv=True, clip_coef=0.2, clip_vloss=True, ent_coef=0.01, vf_coef=0.5,
                         max_grad_norm=0.5, target_kl=None)


@pytest.mark.parametrize("preset, args", [("cleanrl-atari", ATARI_ENVPOOL_ARGS), ("cleanrl-procgen", PROCGEN_ARGS),
                                          ("cleanrl-discrete", PPO_DISCRETE_ARGS)])
def test_cleanrl_image_presets_are_their_files_args(preset, args):
    cfg = parse_train_args(["--preset", preset])
    assert {k: getattr(cfg, k) for k in args} == args
    validate(cfg)  # and it fits its own default env


def test_every_preset_declares_the_env_families_it_fits():
    assert set(PRESET_FAMILIES) == set(PRESETS)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "cleanrl", "--env-id", "CoinrunEasy-v0"],
     "--preset cleanrl does not fit --env-id CoinrunEasy-v0 (procgen): it is made for mujoco, dmc, gymnasium-box. "
     "Presets that fit CoinrunEasy-v0: cleanrl-procgen"),
    (["--preset", "ocp", "--env-id", "MontezumaRevenge-v5"], "Presets that fit MontezumaRevenge-v5: cleanrl-atari"),
    (["--preset", "cleanrl-atari", "--env-id", "HalfCheetah-v4"], "Presets that fit HalfCheetah-v4: cleanrl, ocp"),
    (["--preset", "cleanrl-procgen", "--env-id", "GridWorld-v0"], "Presets that fit GridWorld-v0: cleanrl-discrete"),
])
def test_a_preset_that_does_not_fit_the_env_is_refused_before_compute(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_without_a_preset_the_env_family_picks_its_cleanrl_preset():
    coinrun = parse_train_args(["--env-id", "CoinrunEasy-v0"])  # was: the continuous defaults (entropy 0, 1 env)
    assert (coinrun.preset, coinrun.ent_coef, coinrun.num_envs, coinrun.num_steps) == ("cleanrl-procgen", 0.01, 64, 256)
    assert parse_train_args(["--env-id", "MontezumaRevenge-v5"]).preset == "cleanrl-atari"
    assert parse_train_args(["--env-id", "GridWorld-v0"]).preset == "cleanrl-discrete"
    assert parse_train_args([]).preset == "cleanrl"
    with pytest.raises(ConfigError, match="--preset cleanrl does not fit"):  # the Python API's default too
        validate(TrainConfig(env_id="CoinrunEasy-v0"))


def test_reward_norm_stats_on_unnormalised_rewards_is_refused():
    with pytest.raises(ConfigError, match="--reward-norm-stats shared: rewards of GridWorld-v0 are not normalised"):
        validate(dataclasses.replace(preset_config("cleanrl-discrete"), reward_norm_stats="shared"))


# ------------------------------------------------------------------------------------- learning-rate schedule
def test_anneal_lr_maps_onto_lr_schedule():
    assert parse_train_args(["--no-anneal-lr"]).lr_schedule == "off"
    assert parse_train_args(["--preset", "cleanrl-procgen", "--anneal-lr"]).lr_schedule == "whole"
    assert parse_train_args(["--anneal-lr", "--lr-schedule", "per-round"]).lr_schedule == "per-round"
    with pytest.raises(ConfigError, match="anneal_lr = false contradicts lr_schedule = 'per-round'"):
        parse_train_args(["--no-anneal-lr", "--lr-schedule", "per-round"])
    assert config_from_dict({"anneal_lr": False}).lr_schedule == "off"  # config.json of older versions
    assert config_from_dict({"anneal_lr": True}).lr_schedule == "whole"


def _lrs(cfg, fresh=False):
    return [float(learning_rate(cfg, jnp.asarray(u), fresh)) for u in range(cfg.num_updates)]


def test_lr_schedules_over_rounds():
    # 2 rounds of 2 updates; CleanRL's anneal lr * (1 - update / num_updates), restarted per round or not.
    base = dataclasses.replace(TrainConfig(), learning_rate=1.0, num_steps=8, num_minibatches=1, rounds=2,
                               total_timesteps=32)
    assert base.updates_per_round == 2
    whole = dataclasses.replace(base, lr_schedule="whole")
    per_round = dataclasses.replace(base, lr_schedule="per-round")
    off = dataclasses.replace(base, lr_schedule="off")
    np.testing.assert_allclose(_lrs(whole), [1.0, 0.75, 0.5, 0.25])  # round 2 at half the rate
    np.testing.assert_allclose(_lrs(per_round), [1.0, 0.5, 1.0, 0.5])  # every round starts like a fresh run
    np.testing.assert_allclose(_lrs(off), [1.0] * 4)
    # The --baseline fresh copy is a fresh run at each round start from round 1 (in round 0 it is the seed):
    # it anneals per round unless off.
    np.testing.assert_allclose(_lrs(whole, fresh=True), [1.0, 0.75, 1.0, 0.5])
    np.testing.assert_allclose(_lrs(per_round, fresh=True), [1.0, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(_lrs(off, fresh=True), [1.0] * 4)


def test_fresh_members_are_the_second_half_with_a_fresh_baseline():
    cfg = dataclasses.replace(TrainConfig(), baseline="fresh")
    np.testing.assert_array_equal(fresh_members(cfg, jnp.zeros((4, 3))), [False, False, True, True])
    np.testing.assert_array_equal(fresh_members(TrainConfig(), jnp.zeros((2, 3))), [False, False])


@pytest.mark.slow  # ~30 s on 2 busy cores; learning_rate and fresh_members are tested above in the default suite
def test_fresh_copy_trains_with_a_fresh_runs_schedule(tmp_path):
    """End to end on the gridworld: 2 rounds x 2 updates under `whole`: the seed anneals over the run, its
    fresh copy (written as baseline/optim/lr) over each round from round 1, as a fresh one-round run would."""
    from plastix.store import read_metrics
    from plastix.training import train

    cfg = parse_train_args([
        "--env-id", "GridWorld-v0", "--grid-size", "4", "--grid-max-steps", "8", "--num-levels", "2",
        "--num-envs", "4", "--num-steps", "8", "--num-minibatches", "1", "--update-epochs", "1",
        "--hidden-sizes", "8", "--learning-rate", "1e-3", "--lr-schedule", "whole", "--rounds", "2",
        "--steps-per-round", "64", "--baseline", "fresh", "--log-every", "1", "--diagnostics-every", "0",
        "--curvature-every", "0", "--heldout-episodes", "1", "--quiet", "--run-dir", str(tmp_path / "r")])
    df = read_metrics(train(cfg)).set_index(["key", "update"]).value
    np.testing.assert_allclose(df["optim/lr"].sort_index().to_numpy(), [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-6)
    np.testing.assert_allclose(df["baseline/optim/lr"].sort_index().to_numpy(), [1e-3, 0.75e-3, 1e-3, 0.5e-3],
                               rtol=1e-6)
