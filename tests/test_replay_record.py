"""The env bridge's replay record (plastix.envs.replay) and checkpoints written before PPO's env state carried
it as one opaque field, and ES checkpoints written before ES's state carried the bridge's reset record
(plastix.envs.replay.ResetRecord): they still load and resume to the metrics the older code computed."""

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from plastix import store
from plastix.cli import parse_train_args
from plastix.envs.replay import ActionReplay, ResetReplay
from plastix.training import LEGACY_ES_RESETS_FIELD, LEGACY_REPLAY_FIELDS, load_checkpoint, train

# Written by plastix 1dc0eef (the record's arrays were fields of PPO's env state) with
#   plastix train --env-id HalfCheetah-v4 --total-timesteps 2048 --num-steps 512 --num-minibatches 4
#     --hidden-sizes 8 8 --log-every 1 --checkpoint-every 2 --seeds 3
#     --run-dir tests/fixtures/ppo_run_before_replay_record
# then its last checkpoint (update 4) deleted: a resume starts from update 2's and recomputes parts 3 and 4.
OLD_REPLAY_RUN = Path(__file__).parent / "fixtures" / "ppo_run_before_replay_record"
GRID = ["--env-id", "GridWorld-v0", "--grid-size", "5", "--grid-max-steps", "20", "--num-levels", "8",
        "--num-envs", "8", "--num-steps", "16", "--update-epochs", "1", "--num-minibatches", "2",
        "--hidden-sizes", "8", "8", "--lr-schedule", "off", "--log-every", "1", "--checkpoint-every", "2",
        "--total-timesteps", "512", "--seeds", "0", "--quiet"]


def deterministic(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df.key.str.startswith("time/")].reset_index(drop=True)


def test_record_appends_actions_and_a_reset_step_empties_them():
    book = ActionReplay(max_episode_steps=3, action_dim=1)
    rec = book.init(2)
    actions = [jnp.array([[a], [10 * a]], jnp.float32) for a in (1.0, 2.0, 3.0, 4.0)]  # clipped env actions
    valid = [jnp.array(v) for v in ([True, True], [True, False], [True, True], [True, True])]
    for a, v in zip(actions, valid):
        rec = book.record(rec, a, v)
    # env 0: four valid steps into 3 slots: the 4th overwrites the last slot (an episode never outlasts it).
    # env 1: its 2nd step is a reset step (action ignored): count 1 reset, start over; 30 then 40 recorded.
    np.testing.assert_array_equal(rec.episode_actions[..., 0], [[1.0, 2.0, 4.0], [30.0, 40.0, 0.0]])
    np.testing.assert_array_equal(rec.actions_recorded, [4, 2])
    np.testing.assert_array_equal(rec.num_resets, [0, 1])


def test_a_replay_checkpoint_of_the_older_layout_resumes_to_the_older_codes_metrics(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_REPLAY_RUN, run_dir)
    before = store.read_metrics(run_dir)  # parts 1-4 of the uninterrupted run, by the older code
    assert set(store.checkpoint_structure(run_dir / "checkpoints" / "000000002")["train"]["env"]) >= set(
        LEGACY_REPLAY_FIELDS)
    cfg, state = load_checkpoint(run_dir, final=False)
    # 1024 steps of 1000-step episodes: the reset step is step 1001, then 23 actions of the second episode.
    np.testing.assert_array_equal(state.env.replay.num_resets, [[1]])
    np.testing.assert_array_equal(state.env.replay.actions_recorded, [[23]])
    assert state.env.replay.episode_actions.shape == (1, 1, 1000, 6)
    resumed = store.read_metrics(train(parse_train_args(["--resume", str(run_dir), "--quiet"])))
    assert resumed["update"].max() == 4
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(before))


def test_a_state_checkpoint_of_the_older_layout_loads(tmp_path):
    """Envs that resume from their state (the gridworld): the older layout also held the two counters, for
    every env, and ``episode_actions = None``; they are dropped on load, the rest is restored as saved."""
    from plastix.training import PPOTrainer, restore_ppo_checkpoint

    trainer = PPOTrainer(parse_train_args(GRID + ["--run-dir", str(tmp_path / "run")]))
    tree = trainer.checkpoint_tree(trainer.init())
    trainer.close()
    env = tree["train"].env
    assert env.replay is None
    counters = jnp.full(env.done.shape, 7, jnp.int32)
    old_env = {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name != "replay"}
    old_env |= {"episode_actions": None, "actions_recorded": counters, "num_resets": counters}
    path = store.save_checkpoint(tmp_path, 2, {**tree, "train": tree["train"].replace(env=old_env)})
    assert {"num_resets", "actions_recorded"} <= set(store.checkpoint_structure(path)["train"]["env"])
    like = jax.tree.map(jnp.zeros_like, tree)  # the restored values come from the checkpoint, not from `like`
    restored = restore_ppo_checkpoint(path, like)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    jax.tree.map(np.testing.assert_array_equal, restored, tree)


# Written by plastix fe02107 (ES state counted envpool's auto-resets in ESRunState.env_resets) with
#   plastix train --optimizer es --env-id Hopper-v4 --shift task --rounds 2 --baseline fresh --es.popsize 4
#     --es.episode-steps 100 --steps-per-round 800 --hidden-sizes 8 8 --diagnostics-every 2 --log-every 1
#     --checkpoint-every 2 --seeds 0 --run-dir tests/fixtures/es_run_before_reset_record
# then its last checkpoint (generation 4) deleted: a resume starts from generation 2's (Hopper's episodes end
# early, so the pool auto-resets) and recomputes generations 3 and 4 (round 1, new fresh copies).
OLD_ES_RUN = Path(__file__).parent / "fixtures" / "es_run_before_reset_record"


def test_reset_record_counts_reset_steps_and_resets_of_the_pool():
    book = ResetReplay()
    rec = book.init(3)
    action = jnp.zeros((3, 2), jnp.float32)  # not kept: the next reset of the pool discards its effect
    rec = book.record(rec, action, jnp.array([True, False, True]))  # env 1's episode ended: a reset step
    rec = book.record(rec, action, jnp.array([False, False, True]))
    rec = book.reset(rec)  # the trainer resets every env
    np.testing.assert_array_equal(rec.num_resets, [2, 3, 1])


def test_an_es_checkpoint_of_the_older_layout_resumes_to_the_older_codes_metrics(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_ES_RUN, run_dir)
    before = store.read_metrics(run_dir)  # generations 1-4 and both rounds' rows, by the older code
    checkpoint = run_dir / "checkpoints" / "000000002"
    assert LEGACY_ES_RESETS_FIELD in store.checkpoint_structure(checkpoint)["run"]
    auto_resets = ocp.StandardCheckpointer().restore(checkpoint.absolute())["run"][LEGACY_ES_RESETS_FIELD]
    assert auto_resets.shape == (2, 5) and auto_resets.min() > 0  # lanes x members; every env auto-reset
    cfg, final = load_checkpoint(run_dir, final=False)
    # The seed's lane; generation 2 began with the one host reset after the first.
    np.testing.assert_array_equal(final.run.replay.num_resets, auto_resets[:1] + 1)
    resumed = store.read_metrics(train(parse_train_args(["--resume", str(run_dir), "--quiet"])))
    assert resumed["update"].max() == 4
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(before))
