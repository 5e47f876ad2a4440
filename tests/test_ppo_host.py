"""The host-driven PPO learner (``plastix.algos.ppo_host``) against the compiled one (``make_update_fn``) on a
tiny CNN: the same updates within float tolerance (the maths is the same functions; XLA fuses the two programs
differently), and through ``plastix train`` with rounds, fresh copies, a surgery, diagnostics and a resume."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix.algos.ppo import make_update_fn
from plastix.algos.ppo_host import HostChunk, host_driven
from plastix.cli import parse_train_args
from plastix.store import latest_checkpoint, read_metrics
from plastix.training import build, load_checkpoint, train

# The image gridworld (12x12x3 frames) with a 2-stack IMPALA-like CNN is the smallest CNN PPO plastix runs.
TINY = ["--env-id", "GridWorld-v0", "--grid-obs", "image", "--grid-size", "6", "--patch-grid", "2",
        "--cnn-torso", "impala", "--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2",
        "--update-epochs", "2", "--total-timesteps", "32", "--curvature-every", "0", "--quiet"]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_host_learner_takes_the_compiled_learners_update():
    cfg = parse_train_args([*TINY, "--seeds", "0,1", "--diagnostics-every", "0", "--target-kl", "0.001"])
    bridge, agent, states = build(cfg)
    assert host_driven(agent)  # auto: image observations learn host-driven
    handle = bridge.handle()
    compiled, _, (c_metrics, _) = jax.jit(make_update_fn(agent, bridge.step))(states, handle)
    host, _, (h_metrics, _) = HostChunk(agent, bridge.step, 1).update(states, handle)
    for a, b in zip(_leaves(compiled.params), _leaves(host.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(_leaves(compiled.opt_state), _leaves(host.opt_state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert set(c_metrics) == set(h_metrics)
    for key in c_metrics:
        np.testing.assert_allclose(np.asarray(c_metrics[key]), np.asarray(h_metrics[key]), rtol=1e-4,
                                   atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(np.asarray(compiled.key), np.asarray(host.key))
    # The update moved the network (an equality of two unchanged networks would prove nothing).
    assert max(np.abs(a - b).max() for a, b in zip(_leaves(states.params), _leaves(host.params))) > 1e-4
    bridge.close()


def _rows(run_dir):
    df = read_metrics(run_dir)
    return df[~df.key.str.startswith("time/")].set_index(["key", "seed", "update"]).value.sort_index()


@pytest.mark.slow
def test_host_learner_runs_rounds_fresh_copies_surgeries_diagnostics_and_resumes(tmp_path):
    flags = [*TINY, "--seeds", "0,1", "--rounds", "2", "--steps-per-round", "48", "--baseline", "fresh",
             "--shift", "permute", "--mitigations", "redo", "--redo.every", "2", "--diagnostics-every", "2",
             "--log-every", "1", "--checkpoint-every", "1"]
    runs = {name: train(parse_train_args([*flags, "--learner", name, "--run-dir", str(tmp_path / name)]))
            for name in ("compiled", "host")}
    compiled, host = _rows(runs["compiled"]), _rows(runs["host"])
    pd.testing.assert_index_equal(compiled.index, host.index)
    keys = set(host.index.get_level_values("key"))
    expected = {"round/normalized_return", "torso/layer_2/dormant_ratio@0.025", "mitigation/redo/recycled"}
    assert expected <= keys
    np.testing.assert_allclose(host.to_numpy(), compiled.to_numpy(), rtol=1e-3, atol=1e-5)
    # Resume: drop the newest checkpoint (a run killed after update 5) and continue it.
    killed = tmp_path / "killed"
    shutil.copytree(runs["host"], killed)
    shutil.rmtree(latest_checkpoint(killed)[1])
    resumed = train(parse_train_args(["--resume", str(killed), "--quiet"]))
    pd.testing.assert_series_equal(_rows(resumed), host)
    resumed_params, host_params = (load_checkpoint(run)[1].params for run in (resumed, runs["host"]))
    for a, b in zip(_leaves(resumed_params), _leaves(host_params)):
        np.testing.assert_array_equal(a, b)
