"""Continual backprop (Dohare et al. 2024): utility, maturity, replacement count, replacement effects."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix import nets
from plastix.mitigations import BatchInfo, adam_states, continual_backprop


def _hand_params():
    return {
        "layer_1": {
            "kernel": jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]),
            "bias": jnp.array([0.1, 0.2, 0.3]),
        },
        "output": {
            "kernel": jnp.array([[1.0, -3.0], [0.5, 0.5], [-2.0, 0.0]]),
            "bias": jnp.array([0.0, 1.0]),
        },
    }


def _init_fn(key):
    return jax.tree.map(lambda p: jax.random.normal(key, p.shape), _hand_params())


def test_utility_update_matches_formula_on_hand_case():
    params = _hand_params()
    post = jnp.array([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])  # [B=2, H=3]
    info = BatchInfo(activations={"layer_1": (post, post)})
    cbp = continual_backprop(_init_fn, replacement_rate=0.0, maturity_threshold=100, decay=0.99)
    state = cbp.init(params, jax.random.PRNGKey(0))
    opt_state = optax.adam(1e-3).init(params)
    apply = jax.jit(cbp.apply)
    _, _, state1, _ = apply(params, opt_state, state, info, jax.random.PRNGKey(1))
    mean_abs_h = np.array([2.0, 1.0, 0.5])
    mean_abs_w = np.array([2.0, 0.5, 1.0])
    c = mean_abs_h * mean_abs_w
    np.testing.assert_allclose(state1["layer_1"].utility, 0.01 * c, rtol=1e-6)
    np.testing.assert_allclose(
        state1["layer_1"].mean_activation, 0.01 * np.array([2.0, -1.0, -0.5]), rtol=1e-6
    )
    np.testing.assert_array_equal(state1["layer_1"].age, [1, 1, 1])
    _, _, state2, _ = apply(params, opt_state, state1, info, jax.random.PRNGKey(2))
    np.testing.assert_allclose(state2["layer_1"].utility, 0.99 * 0.01 * c + 0.01 * c, rtol=1e-6)
    # Bias-corrected by age: u / (1 - 0.99^age) recovers c for a constant contribution.
    np.testing.assert_allclose(state2["layer_1"].utility / (1 - 0.99**2), c, rtol=1e-5)


def test_replacement_count_accumulates_and_immature_units_are_never_replaced():
    model = nets.MLP(hidden_sizes=(4, 4), activation="tanh", output_dim=1, output_std=1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    init_fn = lambda k: model.init(k, x)["params"]
    params = init_fn(jax.random.PRNGKey(1))
    rr, maturity = 0.25, 2
    cbp = continual_backprop(init_fn, replacement_rate=rr, maturity_threshold=maturity)
    state = cbp.init(params, jax.random.PRNGKey(0))
    opt_state = optax.adam(1e-3).init(params)

    @jax.jit
    def step(params, opt_state, state, key):
        _, inter = model.apply({"params": params}, x, mutable=["intermediates"])
        info = BatchInfo(activations=nets.hidden_activations(inter["intermediates"]))
        return cbp.apply(params, opt_state, state, info, key)

    ages = {name: np.zeros(4, int) for name in ("layer_1", "layer_2")}
    acc = {name: 0.0 for name in ages}
    total = 0
    for t in range(14):
        params, opt_state, state, metrics = step(params, opt_state, state, jax.random.PRNGKey(10 + t))
        for name in ("layer_1", "layer_2"):
            ages[name] += 1
            eligible = ages[name] > maturity
            acc[name] += rr * eligible.sum()
            expected = math.floor(acc[name])
            acc[name] -= expected
            assert float(metrics[f"mitigation/cbp/{name}/eligible"]) == eligible.sum()
            assert float(metrics[f"mitigation/cbp/{name}/replaced"]) == expected
            replaced = np.asarray(state[name].age) == 0
            assert replaced.sum() == expected
            assert np.all(eligible[replaced])  # immature units never replaced
            ages[name][replaced] = 0
            np.testing.assert_allclose(float(state[name].to_replace), acc[name], atol=1e-6)
            total += expected
    assert total > 0

    # A maturity threshold longer than the run: nothing is ever replaced, whatever rr.
    cbp = continual_backprop(init_fn, replacement_rate=1.0, maturity_threshold=1000)
    state = cbp.init(params, jax.random.PRNGKey(0))
    _, inter = model.apply({"params": params}, x, mutable=["intermediates"])
    info = BatchInfo(activations=nets.hidden_activations(inter["intermediates"]))
    apply = jax.jit(cbp.apply)
    for t in range(3):
        _, _, state, metrics = apply(params, opt_state, state, info, jax.random.PRNGKey(t))
        assert float(metrics["mitigation/cbp/replaced"]) == 0


def test_replaced_unit_fresh_in_zero_out_bias_folded_moments_zeroed():
    params = _hand_params()
    post = jnp.array([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])
    info = BatchInfo(activations={"layer_1": (post, post)})
    # rr = 1/3 with 3 eligible units after one update (maturity 0): exactly one replacement, the unit of
    # lowest corrected utility.
    cbp = continual_backprop(_init_fn, replacement_rate=1.0 / 3.0 + 1e-6, maturity_threshold=0)
    state = cbp.init(params, jax.random.PRNGKey(0))
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    key = jax.random.PRNGKey(5)
    new, new_opt, new_state, metrics = jax.jit(cbp.apply)(params, opt_state, state, info, key)
    # contributions: [2*2, 1*0.5, 0.5*1] = [4, 0.5, 0.5]; ties broken by index -> unit 1 replaced.
    assert float(metrics["mitigation/cbp/replaced"]) == 1
    unit = 1
    fresh = _init_fn(key)
    np.testing.assert_array_equal(new["layer_1"]["kernel"][:, unit], fresh["layer_1"]["kernel"][:, unit])
    assert float(new["layer_1"]["bias"][unit]) == 0.0
    np.testing.assert_array_equal(new["output"]["kernel"][unit], 0.0)
    # Folded bias: bias-corrected mean activation (age 1: m / (1 - 0.99)) = mean_batch(h) = -1.0 at unit 1.
    expected_bias = params["output"]["bias"] + (-1.0) * params["output"]["kernel"][unit]
    np.testing.assert_allclose(new["output"]["bias"], expected_bias, rtol=1e-5)
    # Other units untouched.
    keep = np.array([True, False, True])
    np.testing.assert_array_equal(new["layer_1"]["kernel"][:, keep], params["layer_1"]["kernel"][:, keep])
    np.testing.assert_array_equal(new["output"]["kernel"][keep], params["output"]["kernel"][keep])
    # Adam moments of incoming and outgoing weights zeroed; others kept.
    s = adam_states(new_opt)[0]
    for m in (s.mu, s.nu):
        np.testing.assert_array_equal(m["layer_1"]["kernel"][:, unit], 0.0)
        assert float(m["layer_1"]["bias"][unit]) == 0.0
        np.testing.assert_array_equal(m["output"]["kernel"][unit], 0.0)
        assert np.all(np.asarray(m["output"]["kernel"][keep]) != 0)
    assert int(new_state["layer_1"].age[unit]) == 0
    assert float(new_state["layer_1"].utility[unit]) == 0.0
    # Pre-activation of the output is unchanged in expectation: with the unit's batch mean folded in,
    # the batch-mean output is the same as before.
    h_mean_before = post.mean(0) @ params["output"]["kernel"] + params["output"]["bias"]
    post_after = post.at[:, unit].set(0.0)  # the fresh unit's outgoing weights are 0 anyway
    h_mean_after = post_after.mean(0) @ new["output"]["kernel"] + new["output"]["bias"]
    np.testing.assert_allclose(h_mean_after, h_mean_before, rtol=1e-5)
