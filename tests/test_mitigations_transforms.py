"""Per-update mitigations (optax transforms): L2, L2-init, weight clipping, soft shrink & perturb."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix import nets
from plastix.mitigations import (
    init_bounds,
    l2_init,
    make_optimizer,
    soft_shrink_perturb,
    weight_clipping,
)


def _tree(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"dense": {"kernel": jax.random.normal(k1, (3, 2)), "bias": jax.random.normal(k2, (2,))}}


def _init_fn(key):
    k1, k2 = jax.random.split(key)
    return {"dense": {"kernel": jax.random.normal(k1, (3, 2)), "bias": jax.random.normal(k2, (2,))}}


def _assert_tree_close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-6)


def test_l2_init_adds_twice_lambda_times_distance_to_init():
    lam = 0.01
    theta0 = _tree(0)
    theta = jax.tree.map(lambda p: p + 0.5, _tree(1))
    grads = _tree(2)
    tx = l2_init(lam)
    state = tx.init(theta0)
    updates, _ = jax.jit(tx.update)(grads, state, theta)
    expected = jax.tree.map(lambda g, p, p0: g + 2 * lam * (p - p0), grads, theta, theta0)
    _assert_tree_close(updates, expected)


def test_coupled_and_decoupled_weight_decay_chains():
    params, grads, lr, wd = _tree(0), _tree(1), 1e-2, 0.1
    for mode, reference in [
        ("coupled", optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, eps=1e-5))),
        ("decoupled", optax.adamw(lr, eps=1e-5, weight_decay=wd)),
    ]:
        tx = make_optimizer(lr, weight_decay=wd, weight_decay_mode=mode)
        ours, _ = tx.update(grads, tx.init(params), params)
        ref, _ = reference.update(grads, reference.init(params), params)
        _assert_tree_close(ours, ref)


def test_soft_shrink_perturb_exact_formula_and_fresh_noise_each_update():
    lam, sigma, key = 0.9, 0.1, jax.random.PRNGKey(7)
    tx = soft_shrink_perturb(_init_fn, key, lam=lam, sigma=sigma)
    params, u = _tree(0), _tree(1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    new_u, _state1 = update(u, state, params)
    _, sub = jax.random.split(key)
    expected = jax.tree.map(lambda p, du, f: lam * (p + du) + sigma * f, params, u, _init_fn(sub))
    _assert_tree_close(optax.apply_updates(params, new_u), expected, atol=1e-5)

    # With zero params and zero update, the result is sigma * fresh: two updates draw different inits.
    zeros = jax.tree.map(jnp.zeros_like, params)
    n1, s1 = update(zeros, state, zeros)
    n2, _ = update(zeros, s1, zeros)
    for a, b in zip(jax.tree.leaves(n1), jax.tree.leaves(n2)):
        assert not np.allclose(a, b)


def test_weight_clipping_bounds_hold_after_every_update():
    model = nets.MLP(hidden_sizes=(8,), activation="relu", output_dim=1, output_std=1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
    y = jnp.sum(x**2, axis=-1, keepdims=True) * 5.0
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    kappa = 1.5
    bounds = init_bounds(params)
    tx = make_optimizer(0.3, parameter_transforms=[weight_clipping(kappa, bounds)])
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    at_bound = 0
    for _ in range(10):
        params, opt_state = step(params, opt_state)
        for p, b in zip(jax.tree.leaves(params), jax.tree.leaves(bounds)):
            assert np.all(np.abs(np.asarray(p)) <= kappa * float(b) + 1e-6)
            at_bound += int(np.sum(np.isclose(np.abs(np.asarray(p)), kappa * float(b))))
    assert at_bound > 0  # the clip was active


def test_init_bounds_uniform_equivalent_matches_orthogonal_std():
    model = nets.MLP(hidden_sizes=(16,), activation="relu", output_dim=4, output_std=1.0)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    bounds = init_bounds(params)
    # orthogonal [8, 16] with gain sqrt(2): rms = sqrt(2) / sqrt(16)
    np.testing.assert_allclose(bounds["layer_1"]["kernel"], np.sqrt(3) * np.sqrt(2) / 4, rtol=1e-5)
    assert bounds["layer_1"]["bias"] == bounds["layer_1"]["kernel"]
