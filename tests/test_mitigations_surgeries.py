"""Surgeries: ReDo, layer resets, hard shrink & perturb, Adam reset, OCP perturbation, scheduling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import nets
from plastix.mitigations import (
    BatchInfo,
    adam_reset,
    adam_states,
    map_adam_states,
    ocp_perturb,
    redo,
    reset_layers,
    scale_adam_moments,
    scheduled,
    shrink_perturb,
)
from plastix.mitigations import dormancy_scores as T_dormancy

X = jax.random.normal(jax.random.PRNGKey(0), (64, 3))


def _setup(activation="relu", layer_norm=False):
    model = nets.MLP(
        hidden_sizes=(8, 8), activation=activation, output_dim=2, output_std=1.0, layer_norm=layer_norm
    )
    init_fn = lambda k: model.init(k, X)["params"]
    params = init_fn(jax.random.PRNGKey(1))
    # Kill units 0, 1 of layer_1 and unit 3 of layer_2 (ReLU of a very negative pre-activation).
    params["layer_1"]["bias"] = params["layer_1"]["bias"].at[:2].set(-100.0)
    params["layer_2"]["bias"] = params["layer_2"]["bias"].at[3].set(-100.0)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    y = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
    grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, X) - y) ** 2))(params)
    # Make every moment non-zero so that zeroing is visible.
    grads = jax.tree.map(lambda g: g + 1e-3, grads)
    _, opt_state = tx.update(grads, opt_state, params)
    return model, init_fn, params, opt_state


def _batch_info(model, params, **kw):
    _, state = model.apply({"params": params}, X, mutable=["intermediates"])
    return BatchInfo(activations=nets.hidden_activations(state["intermediates"]), **kw)


def test_redo_recycles_dormant_neurons_and_preserves_outputs():
    model, init_fn, params, opt_state = _setup()
    info = _batch_info(model, params)
    key = jax.random.PRNGKey(3)
    new, new_opt, _, metrics = jax.jit(redo(init_fn, tau=0.0).apply)(params, opt_state, (), info, key)
    fresh = init_fn(key)
    mu, nu = adam_states(new_opt)[0].mu, adam_states(new_opt)[0].nu
    old_mu = adam_states(opt_state)[0].mu
    d1, d2 = np.zeros(8, bool), np.zeros(8, bool)
    d1[:2], d2[3] = True, True

    assert float(metrics["mitigation/redo/recycled"]) == 3
    assert float(metrics["mitigation/redo/layer_1/recycled"]) == 2
    # Incoming weights are fresh (the fresh init's columns, different from before), bias zero.
    np.testing.assert_array_equal(new["layer_1"]["kernel"][:, d1], fresh["layer_1"]["kernel"][:, d1])
    assert not np.allclose(new["layer_1"]["kernel"][:, d1], params["layer_1"]["kernel"][:, d1])
    np.testing.assert_array_equal(new["layer_1"]["bias"][d1], 0.0)
    np.testing.assert_array_equal(
        new["layer_2"]["kernel"][~d1][:, d2], fresh["layer_2"]["kernel"][~d1][:, d2]
    )
    # Outgoing weights zero, and the Adam moments of incoming and outgoing weights zero.
    np.testing.assert_array_equal(new["layer_2"]["kernel"][d1, :], 0.0)
    np.testing.assert_array_equal(new["output"]["kernel"][d2, :], 0.0)
    for m in (mu, nu):
        np.testing.assert_array_equal(m["layer_1"]["kernel"][:, d1], 0.0)
        np.testing.assert_array_equal(m["layer_1"]["bias"][d1], 0.0)
        np.testing.assert_array_equal(m["layer_2"]["kernel"][d1, :], 0.0)
        np.testing.assert_array_equal(m["layer_2"]["kernel"][:, d2], 0.0)
        np.testing.assert_array_equal(m["output"]["kernel"][d2, :], 0.0)
    # Other neurons untouched (weights and moments).
    np.testing.assert_array_equal(new["layer_1"]["kernel"][:, ~d1], params["layer_1"]["kernel"][:, ~d1])
    np.testing.assert_array_equal(new["layer_1"]["bias"][~d1], params["layer_1"]["bias"][~d1])
    np.testing.assert_array_equal(
        new["layer_2"]["kernel"][~d1][:, ~d2], params["layer_2"]["kernel"][~d1][:, ~d2]
    )
    np.testing.assert_array_equal(mu["layer_1"]["kernel"][:, ~d1], old_mu["layer_1"]["kernel"][:, ~d1])
    # The output layer is never recycled: its live rows and bias (and their moments) are unchanged.
    np.testing.assert_array_equal(new["output"]["kernel"][~d2], params["output"]["kernel"][~d2])
    np.testing.assert_array_equal(new["output"]["bias"], params["output"]["bias"])
    np.testing.assert_array_equal(mu["output"]["bias"], old_mu["output"]["bias"])
    # The network's outputs on the batch are unchanged.
    np.testing.assert_allclose(model.apply({"params": new}, X), model.apply({"params": params}, X), atol=1e-5)


def test_redo_crelu_preserves_outputs():
    model, init_fn, params, opt_state = _setup(activation="crelu")
    # A CReLU unit is dead only when its pre-activation is 0 on every input (both halves are 0).
    params["layer_1"]["kernel"] = params["layer_1"]["kernel"].at[:, :2].set(0.0)
    params["layer_1"]["bias"] = params["layer_1"]["bias"].at[:2].set(0.0)
    info = _batch_info(model, params)
    new, _, _, metrics = jax.jit(redo(init_fn, tau=0.0).apply)(
        params, opt_state, (), info, jax.random.PRNGKey(4)
    )
    assert float(metrics["mitigation/redo/layer_1/recycled"]) == 2
    # Both outputs of each recycled unit (rows j and j + H of the next kernel) lose their weights.
    np.testing.assert_array_equal(new["layer_2"]["kernel"][np.array([0, 1, 8, 9])], 0.0)
    np.testing.assert_allclose(model.apply({"params": new}, X), model.apply({"params": params}, X), atol=1e-5)


def test_redo_positive_tau_recycles_near_dormant_units():
    model, init_fn, params, opt_state = _setup()
    info = _batch_info(model, params)
    scores = np.asarray(T_dormancy(info.activations["layer_1"][1]))
    _new, _, _, metrics = redo(init_fn, tau=0.5).apply(params, opt_state, (), info, jax.random.PRNGKey(4))
    assert float(metrics["mitigation/redo/layer_1/recycled"]) == int(np.sum(scores <= 0.5))


def test_reset_final_reinitialises_output_and_zeroes_its_moments():
    _model, init_fn, params, opt_state = _setup()
    key = jax.random.PRNGKey(5)
    new, new_opt, _, metrics = jax.jit(reset_layers(init_fn, "final").apply)(
        params, opt_state, (), BatchInfo(), key
    )
    fresh = init_fn(key)
    np.testing.assert_array_equal(new["output"]["kernel"], fresh["output"]["kernel"])
    np.testing.assert_array_equal(new["layer_2"]["kernel"], params["layer_2"]["kernel"])
    mu = adam_states(new_opt)[0].mu
    np.testing.assert_array_equal(mu["output"]["kernel"], 0.0)
    np.testing.assert_array_equal(mu["layer_1"]["kernel"], adam_states(opt_state)[0].mu["layer_1"]["kernel"])
    assert float(metrics["mitigation/reset/params_reset"]) == 8 * 2 + 2


def test_reset_named_and_all():
    _model, init_fn, params, opt_state = _setup()
    key = jax.random.PRNGKey(6)
    fresh = init_fn(key)
    new, _, _, _ = reset_layers(init_fn, ["layer_2"]).apply(params, opt_state, (), BatchInfo(), key)
    np.testing.assert_array_equal(new["layer_2"]["kernel"], fresh["layer_2"]["kernel"])
    np.testing.assert_array_equal(new["output"]["kernel"], params["output"]["kernel"])
    new, new_opt, _, _ = reset_layers(init_fn, "all").apply(params, opt_state, (), BatchInfo(), key)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)
    for leaf in jax.tree.leaves(adam_states(new_opt)[0].nu):
        np.testing.assert_array_equal(leaf, 0.0)
    with pytest.raises(ValueError):
        reset_layers(init_fn, ["nope"]).apply(params, opt_state, (), BatchInfo(), key)


def test_hard_shrink_perturb_exact_formula():
    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([-1.0])}
    init_fn = lambda k: {"w": jax.random.normal(k, (3,)), "b": jax.random.normal(k, (1,))}
    key = jax.random.PRNGKey(0)
    opt_state = optax.adam(1e-3).init(params)
    new, _, _, _ = jax.jit(shrink_perturb(init_fn, 0.5, 0.5).apply)(params, opt_state, (), BatchInfo(), key)
    fresh = init_fn(key)
    np.testing.assert_allclose(new["w"], 0.5 * params["w"] + 0.5 * fresh["w"], rtol=1e-6)
    np.testing.assert_allclose(new["b"], 0.5 * params["b"] + 0.5 * fresh["b"], rtol=1e-6)


def test_adam_moments_found_in_nested_chains():
    params = {"w": jnp.ones((2, 3))}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((2, 3))}, state, params)
    assert len(adam_states(state)) == 1
    keep = {"w": jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])}
    new = scale_adam_moments(state, keep)
    np.testing.assert_array_equal(adam_states(new)[0].mu["w"] == 0, keep["w"] == 0)
    np.testing.assert_array_equal(adam_states(new)[0].nu["w"] == 0, keep["w"] == 0)
    bumped = map_adam_states(state, lambda s: s._replace(count=s.count + 5))
    assert int(adam_states(bumped)[0].count) == 6


def test_adam_reset_clears_moments_and_count():
    _, _, params, opt_state = _setup()
    _, new_opt, _, _ = jax.jit(adam_reset().apply)(params, opt_state, (), BatchInfo(), jax.random.PRNGKey(0))
    s = adam_states(new_opt)[0]
    assert int(s.count) == 0
    assert all(float(jnp.abs(leaf).sum()) == 0 for leaf in jax.tree.leaves((s.mu, s.nu)))


def test_ocp_perturb_changes_only_trapped_neurons():
    _model, init_fn, params, opt_state = _setup()
    g1 = jnp.array([0.0, 0.05, 0.5, 1.0, 0.1, 2.0, 0.3, 0.0])
    g2 = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    info = BatchInfo(magi={"layer_1": g1, "layer_2": g2})
    surgery = ocp_perturb(init_fn, threshold=0.1)
    new, _new_opt, _, metrics = jax.jit(surgery.apply)(params, opt_state, (), info, jax.random.PRNGKey(9))
    for name, g in (("layer_1", g1), ("layer_2", g2)):
        trapped = np.asarray(g) <= 0.1
        changed = np.any(np.asarray(new[name]["kernel"]) != np.asarray(params[name]["kernel"]), axis=0)
        np.testing.assert_array_equal(changed, trapped)
        np.testing.assert_array_equal(new[name]["bias"], params[name]["bias"])
    np.testing.assert_array_equal(new["output"]["kernel"], params["output"]["kernel"])
    assert float(metrics["mitigation/ocp_perturb/perturbed"]) == 5
    # Relative threshold: G_i / mean(G) <= tau.
    new, _, _, metrics = ocp_perturb(init_fn, threshold=0.2, relative=True).apply(
        params, opt_state, (), BatchInfo(magi={"layer_1": g1}), jax.random.PRNGKey(9)
    )
    assert float(metrics["mitigation/ocp_perturb/perturbed"]) == int(np.sum(g1 / g1.mean() <= 0.2))


def test_scheduled_fires_every_n_and_at_switch():
    params = {"w": jnp.ones(2)}
    opt_state = optax.adam(1e-3).init(params)
    init_fn = lambda k: {"w": jnp.zeros(2)}
    surgery = scheduled(shrink_perturb(init_fn, 0.5, 0.0), every=3, at_switch=True, name="sp")
    state = surgery.init(params, jax.random.PRNGKey(0))
    apply = jax.jit(surgery.apply)
    fired = []
    for t in range(1, 8):
        info = BatchInfo(task_switch=jnp.asarray(t == 5))
        params, opt_state, state, metrics = apply(params, opt_state, state, info, jax.random.PRNGKey(t))
        fired.append(float(metrics["mitigation/sp/applied"]))
        assert float(metrics["mitigation/shrink_perturb/applied"]) == fired[-1]
    assert fired == [0, 0, 1, 0, 1, 1, 0]
    np.testing.assert_allclose(params["w"], 0.5**3)


def test_trainer_phases_split_at_switch_surgeries_by_whether_they_read_the_batch():
    """In the trainer, at a switch a batch-free surgery (reset) fires at ``round_start`` (before the new
    round's rollout) and a batch-reading one (ReDo) on the round's first gradient step (``step``); a
    ``round_start`` call does not advance the gradient-step counter of periodic schedules."""
    model, init_fn, params, opt_state = _setup()
    key = jax.random.PRNGKey(3)
    surgeries = {"reset": scheduled(reset_layers(init_fn, "all"), at_switch=True, name="reset"),
                 "redo": scheduled(redo(init_fn, tau=0.1), every=2, at_switch=True, name="redo")}
    fired = {}
    for name, surgery in surgeries.items():
        state = surgery.init(params, key)
        for phase in ("round_start", "step", "any"):
            info = _batch_info(model, params, task_switch=True, phase=phase)
            _, _, new_state, m = surgery.apply(params, opt_state, state, info, key)
            fired[name, phase] = float(m[f"mitigation/{name}/applied"])
            if name == "redo":
                assert int(new_state.count) == (0 if phase == "round_start" else 1)
    assert fired == {("reset", "round_start"): 1.0, ("reset", "step"): 0.0, ("reset", "any"): 1.0,
                     ("redo", "round_start"): 0.0, ("redo", "step"): 1.0, ("redo", "any"): 1.0}
