"""Composition of mitigations on a tiny regression loop, and the registry's compatibility rules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import nets
from plastix.mitigations import (
    MITIGATIONS,
    NETWORK,
    SURGERY,
    TRANSFORM,
    BatchInfo,
    adam_reset,
    adam_states,
    chain_surgeries,
    check_compatible,
    continual_backprop,
    init_bounds,
    l2_init,
    make_optimizer,
    redo,
    scheduled,
    soft_shrink_perturb,
    weight_clipping,
)

X = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
Y = jnp.sin(X[:, :1]) + X[:, 1:2] ** 2


def _regression(layer_norm=False):
    model = nets.MLP(
        hidden_sizes=(16, 16), activation="relu", output_dim=1, output_std=1.0, layer_norm=layer_norm
    )
    init_fn = lambda k: model.init(k, X)["params"]
    return model, init_fn, init_fn(jax.random.PRNGKey(1))


def test_transforms_and_surgeries_compose_in_one_training_loop():
    model, init_fn, params = _regression(layer_norm=True)
    kappa = 3.0
    # Bounds that follow the init's scale, so that the fresh weights ReDo and CBP draw after the clip stay
    # inside them (the default 1/sqrt(fan_in) is below some orthogonal-init entries until the next clip).
    bounds = init_bounds(params, "uniform_equivalent")
    tx = make_optimizer(
        1e-2,
        max_grad_norm=0.5,
        weight_decay=1e-4,
        gradient_transforms=[l2_init(0.01)],
        parameter_transforms=[
            soft_shrink_perturb(init_fn, jax.random.PRNGKey(9)),
            weight_clipping(kappa, bounds),
        ],
    )
    surgery = chain_surgeries(
        scheduled(redo(init_fn, tau=0.1), every=3, name="redo"),
        continual_backprop(init_fn, replacement_rate=0.05, maturity_threshold=2),
        scheduled(adam_reset(), at_switch=True, name="adam_reset"),
    )
    opt_state = tx.init(params)
    s_state = surgery.init(params, jax.random.PRNGKey(2))

    @jax.jit
    def update(params, opt_state, s_state, task_switch, key):
        def loss_fn(p):
            pred, inter = model.apply({"params": p}, X, mutable=["intermediates"])
            return jnp.mean((pred - Y) ** 2), nets.hidden_activations(inter["intermediates"])

        (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        info = BatchInfo(activations=acts, task_switch=task_switch)
        params, opt_state, s_state, metrics = surgery.apply(params, opt_state, s_state, info, key)
        return params, opt_state, s_state, {"loss": loss, **metrics}

    losses, fired = [], []
    for t in range(1, 9):
        params, opt_state, s_state, metrics = update(
            params, opt_state, s_state, jnp.asarray(t == 5), jax.random.PRNGKey(t)
        )
        assert all(np.isfinite(float(v)) for v in metrics.values())
        for p, b in zip(jax.tree.leaves(params), jax.tree.leaves(bounds)):
            assert np.all(np.abs(np.asarray(p)) <= kappa * float(b) + 1e-5)
        losses.append(float(metrics["loss"]))
        fired.append(
            (float(metrics["mitigation/redo/applied"]), float(metrics["mitigation/adam_reset/applied"]))
        )
        if t == 5:
            assert int(adam_states(opt_state)[0].count) == 0
    assert [f[0] for f in fired] == [0, 0, 1, 0, 0, 1, 0, 0]
    assert [f[1] for f in fired] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert np.all(np.isfinite(losses))
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params))


def test_redo_and_adam_reset_under_vmap_over_seeds():
    model, init_fn, _ = _regression()
    tx = optax.adam(1e-2)
    surgery = chain_surgeries(scheduled(redo(init_fn, tau=0.1), every=2), scheduled(adam_reset(), every=3))

    def run(key):
        params = init_fn(key)
        opt_state, s_state = tx.init(params), surgery.init(params, key)

        def body(carry, k):
            params, opt_state, s_state = carry

            def loss_fn(p):
                pred, inter = model.apply({"params": p}, X, mutable=["intermediates"])
                return jnp.mean((pred - Y) ** 2), nets.hidden_activations(inter["intermediates"])

            (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            params, opt_state, s_state, m = surgery.apply(
                params, opt_state, s_state, BatchInfo(activations=acts), k
            )
            return (params, opt_state, s_state), (loss, m["mitigation/redo/recycled"])

        _, out = jax.lax.scan(body, (params, opt_state, s_state), jax.random.split(key, 6))
        return out

    losses, recycled = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 2))
    assert losses.shape == (2, 6)
    assert np.all(np.isfinite(np.asarray(losses))) and np.all(np.isfinite(np.asarray(recycled)))


def test_registry_lists_every_mitigation_with_kind_and_options():
    expected = {
        "l2": TRANSFORM,
        "l2_init": TRANSFORM,
        "weight_clip": TRANSFORM,
        "soft_sp": TRANSFORM,
        "w2_init": TRANSFORM,
        "sam": TRANSFORM,
        "parseval": TRANSFORM,
        "trac": TRANSFORM,
        "shrink_perturb": SURGERY,
        "mix_reset": SURGERY,
        "nap": SURGERY,
        "redo": SURGERY,
        "reset": SURGERY,
        "cbp": SURGERY,
        "adam_reset": SURGERY,
        "injection": SURGERY,
        "ocp_perturb": SURGERY,
        "layernorm": NETWORK,
        "crelu": NETWORK,
        "groupnorm": NETWORK,
        "dff": NETWORK,
    }
    assert {k: v.kind for k, v in MITIGATIONS.items()} == expected
    assert MITIGATIONS["soft_sp"].options.lam == 0.999999
    assert MITIGATIONS["shrink_perturb"].options.lam == 0.5
    assert MITIGATIONS["cbp"].options.maturity_threshold == 10_000
    for spec in MITIGATIONS.values():
        assert dataclasses.is_dataclass(spec.options)


def test_check_compatible():
    check_compatible(list(MITIGATIONS.keys() - {"reset", "crelu", "groupnorm"}), activation="relu")
    check_compatible(
        ["reset", "injection"],
        {"reset": dataclasses.replace(MITIGATIONS["reset"].options, layers=("policy/layer_1",))},
    )
    check_compatible(["crelu", "layernorm", "l2"], activation="relu", base_weight_decay=1e-4)
    with pytest.raises(ValueError, match="'reset'.*'injection'"):
        check_compatible(["reset", "injection"])
    with pytest.raises(ValueError, match="'reset'.*'injection'"):
        check_compatible(
            ["injection", "reset"], {"reset": dataclasses.replace(MITIGATIONS["reset"].options, layers="all")}
        )
    with pytest.raises(ValueError, match="coupled"):
        check_compatible(
            ["l2"],
            {"l2": dataclasses.replace(MITIGATIONS["l2"].options, mode="decoupled")},
            base_weight_decay=1e-4,
            base_weight_decay_mode="coupled",
        )
    with pytest.raises(ValueError, match="'crelu'"):
        check_compatible(["crelu"], activation="none")
    with pytest.raises(ValueError, match="'layernorm'"):
        check_compatible(["layernorm"], activation="none")
    with pytest.raises(ValueError, match="twice"):
        check_compatible(["redo", "redo"])
    with pytest.raises(ValueError, match="unknown"):
        check_compatible(["dropout"])
