"""Diagnostics inside training: keys, shapes, schedule, per-neuron dumps, and no effect on training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix.config import TrainConfig
from plastix.diagnostics.training import diagnostics_init, make_forward_acts, measure
from plastix.nets import ActorCritic
from plastix.store import read_metrics, read_neuron_scores
from plastix.training import train

TINY = dataclasses.replace(TrainConfig(), preset="ocp", activation="relu", total_timesteps=6 * 512, num_steps=512,
                           num_minibatches=8, log_every=3, quiet=True)


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    cfg = dataclasses.replace(TINY, seeds="0,1", diagnostics_every=2, curvature_every=3, save_neuron_scores=True,
                              probe_every=3, probe_steps=30, probe_lr=1e-2, probe_batch=128,
                              interference_samples=8,
                              run_dir=str(tmp_path_factory.mktemp("diag") / "run"))
    return train(cfg)


def updates_of(df, key):
    return sorted(df[(df.key == key) & (df.seed == 0)]["update"])


def test_in_training_keys_and_schedule(diag_run):
    df = read_metrics(diag_run)
    keys = set(df.key)
    for net in ("policy", "value"):
        for layer in ("layer_1", "layer_2"):
            for suffix in ("dormant_ratio@0", "dormant_ratio@0.025", "dormant_ratio@0.1", "zero_grad_ratio/layer",
                           "zero_grad_ratio/loss", "overlap/dormant", "overlap/zero_grad", "overlap/dormant_zero_grad",
                           "overlap/dormant_zero_grad_rel@0.025",
                           "srank", "effective_rank", "dead_units", "dead_units_every_input", "active_units",
                           "grad_norm", "weight/l2", "weight/dist_init", "weight/update_l2", "weight/update_rms",
                           "numerical_rank", "feature_norm", "feature_variance", "unit_activity", "inactive_units",
                           "weight/srank", "weight/effective_rank", "weight/numerical_rank", "grad_cosine"):
                assert f"{net}/{layer}/{suffix}" in keys, f"{net}/{layer}/{suffix}"
        assert f"{net}/output/weight/rms" in keys and f"{net}/dormant_ratio@0.025" in keys
        assert f"{net}/output/weight/srank" in keys
    assert updates_of(df, "model/grad_cosine") == [1, 2, 4, 6]
    assert ((df[df.key == "model/grad_conflict"].value >= 0) & (df[df.key == "model/grad_conflict"].value <= 1)).all()
    updates = lambda key: sorted(df[(df.key == key) & (df.seed == 0)]["update"])
    assert updates("policy/layer_1/dormant_ratio@0.025") == [1, 2, 4, 6]  # update 1, then every 2
    assert updates("policy/layer_1/overlap/dormant") == [2, 4, 6]  # needs a previous measurement
    assert updates("curvature/hessian_top_eig") == updates("curvature/hessian_min_eig") == [3, 6]
    wide = df.pivot_table(index=["seed", "update"], columns="key", values="value")
    assert (wide["curvature/hessian_min_eig"].dropna() <= wide["curvature/hessian_top_eig"].dropna()).all()
    for model_key in ("model/weight_m", "model/weight_diff", "model/update_rms", "model/dist_init_rms"):
        assert updates(model_key) == [1, 2, 4, 6], model_key
    # Update 1 starts from the initial parameters: its change is the distance from init (J&A's weight_diff
    # is taken against the parameters saved just before the update).
    first = wide.xs(1, level="update")
    np.testing.assert_allclose(first["model/weight_diff"], first["model/dist_init_rms"], rtol=1e-5)
    np.testing.assert_array_equal(wide["model/weight_diff"].dropna(), wide["model/update_rms"].dropna())
    measured = wide.dropna(subset=["model/weight_m"])
    for layer in ("policy/layer_1", "value/layer_2"):  # Plasticine's active units = 1 - J&A's dead units
        np.testing.assert_allclose(measured[f"{layer}/active_units"], 1 - measured[f"{layer}/dead_units"], atol=1e-6)
        assert (measured[f"{layer}/dead_units_every_input"] <= measured[f"{layer}/dead_units"] + 1e-7).all()
    ratios = df[df.key.str.contains("ratio|overlap|dead_units|active_units")].value
    assert ((ratios >= 0) & (ratios <= 1)).all()
    assert (df[df.key.str.endswith("/srank")].value <= 64).all()


def test_plasticity_probe_schedule_and_fit(diag_run):
    """``--probe-every 3``: per head, the loss on fresh N(0, 1) targets before and after the probe's budget."""
    df = read_metrics(diag_run)
    wide = df.pivot_table(index=["seed", "update"], columns="key", values="value")
    for head in ("policy", "value"):
        for stat in ("initial_loss", "final_loss"):
            key = f"probe/{head}/{stat}"
            assert sorted(df[(df.key == key) & (df.seed == 0)]["update"]) == [3, 6], key
        rows = wide[[f"probe/{head}/initial_loss", f"probe/{head}/final_loss"]].dropna()
        assert len(rows) == 4  # 2 seeds x 2 measurements
        # Before fitting, the MSE to unit-variance targets is at least about their variance (~1 on 128 draws);
        # 30 Adam steps at lr 0.01 lower it.
        assert (rows.iloc[:, 0] > 0.7).all() and (rows.iloc[:, 1] < rows.iloc[:, 0]).all()


def test_probe_gives_the_same_numbers_for_the_same_seed_and_never_changes_training(diag_run, tmp_path):
    """Seed 0's probe alone equals seed 0's probe beside seed 1 (the seeds are lax.map-ped), with other
    diagnostic schedules; and training with the probe on equals training with it off."""
    cfg = dataclasses.replace(TINY, probe_every=3, probe_steps=30, probe_lr=1e-2, probe_batch=128, diagnostics_every=0,
                              curvature_every=0, run_dir=str(tmp_path / "alone"))
    alone, grouped = read_metrics(train(cfg)), read_metrics(diag_run)
    probe = lambda df: df[df.key.str.startswith("probe/") & (df.seed == 0)].sort_values(["key", "update"]).value.to_numpy()
    np.testing.assert_array_equal(probe(alone), probe(grouped))
    off = read_metrics(train(dataclasses.replace(cfg, probe_every=0, run_dir=str(tmp_path / "off"))))
    training = lambda df: df[df.key.str.match(r"^(loss|optim|return)/")].reset_index(drop=True)
    pd.testing.assert_frame_equal(training(alone), training(off))
    assert not off.key.str.startswith("probe/").any()


def test_neuron_scores_have_one_row_per_neuron_and_measurement(diag_run):
    scores = read_neuron_scores(diag_run)
    assert set(scores.layer) == {"policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2"}
    per = scores.groupby(["layer", "seed", "update"]).neuron.count()
    assert (per == 64).all() and len(per) == 4 * 2 * 4
    assert {"dormancy", "magi_layer", "magi_loss"} <= set(scores.columns)
    # The dormancy scores of a layer average to 1 by construction (Eq. 2), unless all are zero.
    means = scores.groupby(["layer", "seed", "update"]).dormancy.mean()
    np.testing.assert_allclose(means, 1.0, rtol=1e-5)
    # The logged ratio is the fraction of the dumped scores under tau.
    df = read_metrics(diag_run)
    row = df[(df.key == "value/layer_2/dormant_ratio@0.1") & (df.seed == 1) & (df["update"] == 4)].value.item()
    layer = scores[(scores.layer == "value/layer_2") & (scores.seed == 1) & (scores["update"] == 4)]
    assert row == pytest.approx((layer.dormancy <= 0.1).mean())


def test_measuring_does_not_change_training(tmp_path):
    on = read_metrics(train(dataclasses.replace(TINY, diagnostics_every=1, curvature_every=2, interference_samples=4,
                                                run_dir=str(tmp_path / "on"))))
    off = read_metrics(train(dataclasses.replace(TINY, diagnostics_every=0, curvature_every=0, run_dir=str(tmp_path / "off"))))
    training_keys = lambda df: df[df.key.str.match(r"^(loss|optim|return)/")].reset_index(drop=True)
    pd.testing.assert_frame_equal(training_keys(on), training_keys(off))


def test_measure_finds_a_dead_relu_neuron():
    net = ActorCritic(2, (8, 8), "relu")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.float32))["params"]
    # Neuron 5 of policy layer_1: zero incoming weights and a negative bias -> 0 on every input.
    layer = params["policy"]["layer_1"]
    params["policy"]["layer_1"] = {"kernel": layer["kernel"].at[:, 5].set(0.0), "bias": layer["bias"].at[5].set(-1.0)}
    obs = jax.random.normal(jax.random.PRNGKey(1), (32, 3), jnp.float32)
    forward = make_forward_acts(net.apply)
    loss_fn = lambda p: jnp.sum(net.apply({"params": p}, obs)[0] ** 2) + jnp.sum(net.apply({"params": p}, obs)[2] ** 2)
    shapes = {k: (8, 8) for k in ("policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2")}
    state = diagnostics_init(params, shapes)
    metrics, scores, state = jax.jit(lambda s: measure(params, forward, loss_fn, obs, "relu", s, (0.0,), 0.0, 0.0))(state)
    assert float(scores["policy/layer_1/dormancy"][5]) == 0.0
    assert float(scores["policy/layer_1/magi_layer"][5]) == 0.0
    assert float(scores["policy/layer_1/magi_loss"][5]) == 0.0
    assert float(metrics["policy/layer_1/dormant_ratio@0"]) >= 1 / 8
    post = np.asarray(forward(params, obs)["policy/layer_1"][1])
    np.testing.assert_allclose(metrics["policy/layer_1/dead_units"], np.mean(post == 0), rtol=1e-6)  # J&A
    np.testing.assert_allclose(metrics["policy/layer_1/dead_units_every_input"], np.mean(np.all(post == 0, axis=0)))
    assert float(metrics["policy/layer_1/dead_units_every_input"]) >= 1 / 8
    assert float(metrics["policy/layer_1/overlap/dormant_zero_grad"]) == 1.0
    # The relative zero-gradient set (G_i / mean G <= tau) with tau = 0 holds the dead neuron only, as the
    # dormant set (score <= 0) does: they coincide.
    dormant, rel = scores["policy/layer_1/dormancy"] <= 0.0, scores["policy/layer_1/magi_layer"] <= 0.0
    expected = np.sum(dormant & rel) / min(np.sum(dormant), np.sum(rel))
    assert float(metrics["policy/layer_1/overlap/dormant_zero_grad_rel@0"]) == expected == 1.0
    assert bool(state.prev_dormant["policy/layer_1"][5]) and np.isnan(float(metrics["policy/layer_1/overlap/dormant"]))
    metrics, _, _ = measure(params, forward, loss_fn, obs, "relu", state, (0.0,), 0.0, 0.0)
    assert float(metrics["policy/layer_1/overlap/dormant"]) == 1.0


@pytest.mark.parametrize("activation", ["relu", "tanh", "crelu", "none"])
def test_layer_by_layer_magi_equals_autodiff_through_the_network(activation):
    from plastix.diagnostics.training import layer_target_magi, local_layer_magi

    net = ActorCritic(2, (8, 8), activation)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.float32))["params"]
    obs = jax.random.normal(jax.random.PRNGKey(1), (16, 3), jnp.float32)
    forward = make_forward_acts(net.apply)
    layers = ["policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2"]
    local = local_layer_magi(params, forward(params, obs), obs, activation, layers)
    full = layer_target_magi(forward, params, obs, layers)
    for name in layers:
        np.testing.assert_allclose(local[name], full[name], rtol=1e-5, atol=1e-7)


def test_a_smooth_activation_separates_dormant_from_zero_gradient_neurons():
    """SCIENCE.md, Theorem 1 and the weight gradient: a tanh neuron with zero weights and bias outputs 0 on every
    input (dormant) but has a non-zero weight gradient, while a saturated one (bias 20: h = 1) is not dormant and
    has an (almost) zero one. Its dormant set {5} and relative zero-gradient set {3} do not overlap: 0."""
    net = ActorCritic(2, (8, 8), "tanh")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.float32))["params"]
    layer = params["policy"]["layer_1"]
    kernel = layer["kernel"].at[:, 5].set(0.0).at[:, 3].set(0.0)
    params["policy"]["layer_1"] = {"kernel": kernel, "bias": layer["bias"].at[5].set(0.0).at[3].set(20.0)}
    obs = jax.random.normal(jax.random.PRNGKey(1), (32, 3), jnp.float32)
    forward = make_forward_acts(net.apply)
    loss_fn = lambda p: jnp.sum(net.apply({"params": p}, obs)[2] ** 2)
    shapes = {k: (8, 8) for k in ("policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2")}
    metrics, scores, _ = measure(params, forward, loss_fn, obs, "tanh", diagnostics_init(params, shapes), (0.025,),
                                 0.025, 0.0, plain_mlp=True)
    dormancy, magi = np.asarray(scores["policy/layer_1/dormancy"]), np.asarray(scores["policy/layer_1/magi_layer"])
    assert dormancy[5] == 0.0 and magi[5] > 0.1 * magi.mean()  # dormant, with a weight gradient
    assert dormancy[3] > 1.0 and magi[3] < 1e-6 * magi.mean()  # saturated: active, no weight gradient
    assert set(np.flatnonzero(dormancy <= 0.025)) == {5} and set(np.flatnonzero(magi / magi.mean() <= 0.025)) == {3}
    assert float(metrics["policy/layer_1/overlap/dormant_zero_grad_rel@0.025"]) == 0.0
    assert float(metrics["policy/layer_1/overlap/dormant_zero_grad"]) == 0.0  # tanh'(20) is 0 in float32: {3}
