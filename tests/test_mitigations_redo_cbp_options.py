"""ReDo's scheduled fixed fraction with dopamine's score types, and GnT's other utility types of continual
backprop; expected values computed from the references' definitions (dopamine ``labs/redo/weight_recyclers.py``
``NeuronRecyclerScheduled``/``leastk_mask``; loss-of-plasticity ``lop/algos/gnt.py`` ``update_utility``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import nets
from plastix.mitigations import BatchInfo, continual_backprop, redo, scheduled
from plastix.mitigations.redo import scheduled_fraction
from plastix.mitigations.registry import CBPOptions, ReDoOptions, check_compatible

X = jax.random.normal(jax.random.PRNGKey(0), (64, 3))


def _model_params():
    model = nets.MLP(hidden_sizes=(8, 8), activation="relu", output_dim=2, output_std=1.0)
    init_fn = lambda k: model.init(k, X)["params"]
    return model, init_fn, init_fn(jax.random.PRNGKey(1))


def _info(model, params):
    _, state = model.apply({"params": params}, X, mutable=["intermediates"])
    return BatchInfo(activations=nets.hidden_activations(state["intermediates"]))


def _dopamine_leastk_mask(scores, ones_fraction):
    """dopamine's leastk_mask, line by line, in numpy."""
    if ones_fraction is None or ones_fraction == 0:
        return np.zeros_like(scores)
    scores = -scores
    n_ones = np.round(np.size(scores) * ones_fraction)
    k = int(max(1, n_ones))
    threshold = np.sort(scores.reshape(-1))[-k]
    return (scores >= threshold).astype(scores.dtype)


def _dopamine_score(post):
    score = np.mean(np.abs(post), axis=0)
    return score / (np.mean(score) + 1e-9)


@pytest.mark.parametrize("score_type", ["redo", "redo_inverted"])
def test_redo_fraction_recycles_dopamines_least_k_units(score_type):
    model, init_fn, params = _model_params()
    info = _info(model, params)
    opt_state = optax.adam(1e-3).init(params)
    surgery = redo(init_fn, fraction=0.3, score=score_type)
    _, _, _, metrics = jax.jit(surgery.apply)(params, opt_state, (), info, jax.random.PRNGKey(3))
    for name in ("layer_1", "layer_2"):
        score = _dopamine_score(np.asarray(info.activations[name][1]))
        if score_type == "redo_inverted":
            score = -score
        expected = _dopamine_leastk_mask(score, 0.3)  # k = round(8 * 0.3) = 2 (more on ties)
        assert float(metrics[f"mitigation/redo/{name}/recycled"]) == expected.sum()
    new, *_ = jax.jit(surgery.apply)(params, opt_state, (), info, jax.random.PRNGKey(3))
    score = _dopamine_score(np.asarray(info.activations["layer_1"][1]))
    mask = _dopamine_leastk_mask(-score if score_type == "redo_inverted" else score, 0.3).astype(bool)
    np.testing.assert_array_equal(new["layer_2"]["kernel"][mask], 0.0)  # outgoing weights of chosen units
    np.testing.assert_array_equal(new["layer_1"]["kernel"][:, ~mask], params["layer_1"]["kernel"][:, ~mask])


def test_redo_random_score_recycles_k_random_units():
    model, init_fn, params = _model_params()
    params["layer_1"]["bias"] = params["layer_1"]["bias"] + 5.0  # no dead unit: no ties at the threshold
    params["layer_2"]["bias"] = params["layer_2"]["bias"] + 5.0
    info = _info(model, params)
    opt_state = optax.adam(1e-3).init(params)
    surgery = jax.jit(redo(init_fn, fraction=0.5, score="random").apply)
    chosen = []
    for seed in range(4):
        new, _, _, metrics = surgery(params, opt_state, (), info, jax.random.PRNGKey(seed))
        assert float(metrics["mitigation/redo/layer_1/recycled"]) == 4  # round(8 * 0.5)
        chosen.append(tuple(np.asarray(jnp.all(new["layer_2"]["kernel"] == 0, axis=1))))
    assert len(set(chosen)) > 1  # different keys, different units


def test_redo_fraction_follows_dopamines_cosine_schedule_and_window():
    # dopamine: ones_fraction = recycle_rate * cos(pi/2 * step / reset_end_step), inside [start, end).
    np.testing.assert_allclose(scheduled_fraction(0.3, jnp.int32(500), 0, 1000), 0.3 * math.cos(math.pi / 4),
                               rtol=1e-6)
    assert float(scheduled_fraction(0.3, jnp.int32(1000), 0, 1000)) == 0.0
    assert float(scheduled_fraction(0.3, jnp.int32(99), 100, 1000)) == 0.0
    assert float(scheduled_fraction(0.3, jnp.int32(7), 0, None)) == pytest.approx(0.3)
    model, init_fn, params = _model_params()
    params["layer_1"]["bias"] = params["layer_1"]["bias"] + 5.0
    params["layer_2"]["bias"] = params["layer_2"]["bias"] + 5.0
    info = _info(model, params)
    opt_state = optax.adam(1e-3).init(params)
    surgery = scheduled(redo(init_fn, fraction=0.3, start=2, end=4), every=1, name="redo")
    state = surgery.init(params, jax.random.PRNGKey(0))
    apply = jax.jit(surgery.apply)
    counts = []
    for step in range(1, 5):
        _, _, state, metrics = apply(params, opt_state, state, info, jax.random.PRNGKey(step))
        counts.append(float(metrics["mitigation/redo/layer_1/recycled"]))
    # step 1: before start; 2: round(8 * 0.3 * cos(pi/4)) = 2; 3: max(1, round(8 * 0.3 * cos(3 pi/8))) = 1;
    # step 4: the end (excluded).
    assert counts == [0.0, 2.0, 1.0, 0.0]


def test_redo_option_ranges_are_checked():
    with pytest.raises(ValueError, match="fraction must be in"):
        check_compatible(["redo"], {"redo": ReDoOptions(fraction=1.5)})
    with pytest.raises(ValueError, match="score must be one of"):
        check_compatible(["redo"], {"redo": ReDoOptions(fraction=0.3, score="cbp2")})
    with pytest.raises(ValueError, match="only with a fraction"):
        check_compatible(["redo"], {"redo": ReDoOptions(score="random")})
    with pytest.raises(ValueError, match="end must be > start"):
        check_compatible(["redo"], {"redo": ReDoOptions(fraction=0.3, start=10, end=5)})
    with pytest.raises(ValueError, match="utility must be one of"):
        check_compatible(["cbp"], {"cbp": CBPOptions(utility="contrib")})


# ----------------------------------------------------------------------------------------- CBP utilities
def _gnt_new_util(util_type, features, w_in, w_out, mean_feature_act, age, decay):
    """GnT.update_utility's new_util with torch layouts (w_in [H, n_in], w_out [n_out, H])."""
    bias_correction = 1 - decay**age
    mean_feature_act = mean_feature_act * decay + (1 - decay) * features.mean(axis=0)
    bias_corrected_act = mean_feature_act / bias_correction
    output_wight_mag = np.abs(w_out).mean(axis=0)
    input_wight_mag = np.abs(w_in).mean(axis=1)
    new_util = {
        "weight": lambda: output_wight_mag,
        "contribution": lambda: output_wight_mag * np.abs(features).mean(axis=0),
        "adaptation": lambda: 1 / input_wight_mag,
        "zero_contribution": lambda: output_wight_mag * np.abs(features - bias_corrected_act).mean(axis=0),
        "adaptable_contribution": lambda: (output_wight_mag * np.abs(features - bias_corrected_act).mean(axis=0)
                                           / input_wight_mag),
        "feature_by_input": lambda: np.abs(features - bias_corrected_act).mean(axis=0) / input_wight_mag,
    }[util_type]()
    return new_util, mean_feature_act


@pytest.mark.parametrize("util_type", ["weight", "contribution", "adaptation", "zero_contribution",
                                       "adaptable_contribution", "feature_by_input"])
def test_cbp_utility_types_match_gnt(util_type):
    params = {
        "layer_1": {"kernel": jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]), "bias": jnp.zeros(3)},
        "output": {"kernel": jnp.array([[1.0, -3.0], [0.5, 0.5], [-2.0, 0.0]]), "bias": jnp.zeros(2)},
    }
    init_fn = lambda k: jax.tree.map(lambda p: jax.random.normal(k, p.shape), params)
    batches = [np.array([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]]), np.array([[0.5, 1.0, 2.0], [-1.0, 4.0, 0.0]])]
    decay = 0.9
    cbp = continual_backprop(init_fn, replacement_rate=0.0, maturity_threshold=100, decay=decay,
                             utility_type=util_type)
    state = cbp.init(params, jax.random.PRNGKey(0))
    opt_state = optax.adam(1e-3).init(params)
    util, mean_act = np.zeros(3), np.zeros(3)
    w_in, w_out = np.asarray(params["layer_1"]["kernel"]).T, np.asarray(params["output"]["kernel"]).T
    for age, post in enumerate(batches, start=1):
        info = BatchInfo(activations={"layer_1": (jnp.asarray(post), jnp.asarray(post))})
        _, _, state, _ = jax.jit(cbp.apply)(params, opt_state, state, info, jax.random.PRNGKey(age))
        new_util, mean_act = _gnt_new_util(util_type, post, w_in, w_out, mean_act, age, decay)
        util = util * decay + (1 - decay) * new_util
        np.testing.assert_allclose(state["layer_1"].utility, util, rtol=1e-5)


def test_cbp_random_utility_replaces_random_units():
    model = nets.MLP(hidden_sizes=(6,), activation="relu", output_dim=1, output_std=1.0)
    init_fn = lambda k: model.init(k, X)["params"]
    params = init_fn(jax.random.PRNGKey(1))
    _, sown = model.apply({"params": params}, X, mutable=["intermediates"])
    info = BatchInfo(activations=nets.hidden_activations(sown["intermediates"]))
    cbp = continual_backprop(init_fn, replacement_rate=1 / 6, maturity_threshold=0, utility_type="random")
    opt_state = optax.adam(1e-3).init(params)
    chosen = set()
    for seed in range(5):
        state = cbp.init(params, jax.random.PRNGKey(0))
        new, _, _, metrics = jax.jit(cbp.apply)(params, opt_state, state, info, jax.random.PRNGKey(seed))
        assert float(metrics["mitigation/cbp/replaced"]) == 1
        chosen.add(int(np.argmax(np.all(np.asarray(new["output"]["kernel"]) == 0, axis=1))))
    assert len(chosen) > 1
