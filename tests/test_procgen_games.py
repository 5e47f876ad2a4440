"""Every envpool Procgen game by name, and ``--shift task`` on Procgen as a switch of game (Plasticine's
continual Procgen: RLE-Foundation/Plasticine ``PlasticineProcgen`` in ``task`` mode, one game per round)."""

import jax
import numpy as np
import pytest
from envpool.registration import registry

from plastix.cli import parse_train_args
from plastix.config import ConfigError, validate
from plastix.envs.image_envs import ImageEnvBridge
from plastix.envs.shifts import procgen_task_games
from plastix.store import read_metrics
from plastix.training import train

# Procgen's 16 games (openai/procgen's ENV_NAMES), as envpool names them.
PROCGEN_GAMES = ["bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
                 "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot"]


def test_task_sequence_is_every_game_of_the_mode_starting_with_env_id():
    games = procgen_task_games("BigfishHard-v0", shift_seed=3)
    assert games[0] == "BigfishHard-v0"
    assert sorted(g.removesuffix("Hard-v0").lower() for g in games) == PROCGEN_GAMES
    assert games == procgen_task_games("BigfishHard-v0", shift_seed=3)  # the shift seed fixes the order
    assert games[1:] != procgen_task_games("BigfishHard-v0", shift_seed=4)[1:]
    with pytest.raises(ValueError, match="--env-id"):
        procgen_task_games("HalfCheetah-v4", 0)


def test_every_procgen_game_validates_by_name():
    for game in PROCGEN_GAMES:
        env_id = f"{game.capitalize()}Easy-v0"
        assert env_id in registry.specs
        validate(parse_train_args(["--env-id", env_id, "--shift", "task", "--rounds", "2"]))
    with pytest.raises(ConfigError, match="--env-id"):
        validate(parse_train_args(["--env-id", "BigFishEasy-v0"]))


def test_task_rounds_switch_the_pools_game():
    cfg = parse_train_args(["--env-id", "CoinrunEasy-v0", "--shift", "task", "--rounds", "3",
                            "--num-levels", "5"])
    bridge = ImageEnvBridge(cfg.env_id, [0], 2, scenario=cfg)
    assert (bridge.start_level, bridge.num_levels) == (0, 5)
    games = procgen_task_games("CoinrunEasy-v0", 0)
    handle = bridge.handle()
    for round_idx in (1, 2):
        handle = bridge.set_round(round_idx, handle)
        assert bridge.env_id == games[round_idx] and bridge.num_actions == 15
        assert bridge.observation_shape == (64, 64, 3) and (bridge.start_level, bridge.num_levels) == (0, 5)
        _, (obs, reward, *_) = jax.jit(bridge.step)(handle, np.zeros((1, 2), np.int32))
        assert obs.shape == (1, 2, 64, 64, 3)
    bridge.close()


@pytest.mark.slow
def test_procgen_task_shift_trains_in_rounds_with_fresh_copies(tmp_path):
    run_dir = train(parse_train_args([
        "--env-id", "BigfishEasy-v0", "--shift", "task", "--rounds", "2", "--steps-per-round", "64",
        "--baseline", "fresh", "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "1", "--log-every", "1", "--diagnostics-every", "0", "--curvature-every", "0",
        "--seeds", "0", "--run-dir", str(tmp_path / "task"), "--quiet"]))
    df = read_metrics(run_dir)
    rounds = df[df.key == "round/index"].sort_values("update")
    assert rounds.value.tolist() == [0.0, 1.0] and rounds.update.tolist() == [2, 4]
    assert {"round/return_train", "round/return_fresh"} <= set(df.key)
