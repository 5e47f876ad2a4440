"""Eq. 15 against hand-computed values; the regression and random-target probes on a small MLP."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.nets import MLP
from plastix.probes import eq15, eq15_dataset, random_target_probe, regression_probe

NET = MLP(hidden_sizes=(32, 32), activation="relu", output_dim=1, output_std=1.0)


PROBE = jax.jit(regression_probe, static_argnames=("apply_fn", "steps", "batch_size"))
DATASET = jax.jit(eq15_dataset, static_argnames=("n_train", "n_test", "x_dist"))


def apply_fn(params, x):
    return NET.apply({"params": params}, x)[..., 0]


def init_params(seed=0):
    return NET.init(jax.random.PRNGKey(seed), jnp.zeros((1, 17)))["params"]


def test_eq15_hand_computed_rows():
    rows = jnp.zeros((3, 17))
    # Row 0: every term a simple number.
    rows = rows.at[0].set(jnp.array([1, 2, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 4, 1, 1, 1, 1], jnp.float32))
    # 2.5 - 4.8 + 0 + 1.5 + 0.7 - 0.3 + 1 + 1.1 - 0.5 + 0 + 0.2 - 1.2 + 0.5 - 0.4 + 0.3 = 0.6
    # Row 1: the transcendental terms and odd powers, with a negative X12 under sqrt(|.|).
    row1 = {2: math.pi / 2, 3: math.pi, 6: -2.0, 7: 2.0, 10: 1.0, 12: -9.0}
    for j, v in row1.items():
        rows = rows.at[1, j].set(v)
    y1 = 0.8 * 1.0 + 1.5 * -1.0 - 0.3 * (-8.0) + math.exp(-0.4) + 0.9 * math.tanh(1.0) - 0.6 * 3.0
    # Row 2: X = 0 leaves 1.5 cos(0) + exp(0).
    np.testing.assert_allclose(eq15(rows), [0.6, y1, 2.5], rtol=1e-5, atol=1e-6)


def test_eq15_every_coordinate_matters():
    x = jnp.full(17, 0.5)
    for j in range(17):
        assert eq15(x.at[j].set(1.5)) != eq15(x), j


def test_eq15_noise_is_gaussian_with_std_0_1():
    x = jax.random.normal(jax.random.PRNGKey(0), (5000, 17))
    noise = eq15(x, key=jax.random.PRNGKey(1)) - eq15(x)
    np.testing.assert_allclose(jnp.std(noise), 0.1, rtol=0.05)
    np.testing.assert_allclose(jnp.mean(noise), 0.0, atol=0.01)
    np.testing.assert_array_equal(eq15(x[:5]), eq15(x[:5], noise_std=0.5))  # key None: noise-free


def test_eq15_dataset_shapes_and_distributions():
    x_tr, y_tr, x_te, y_te = DATASET(jax.random.PRNGKey(2), n_train=128, n_test=64)
    assert x_tr.shape == (128, 17) and y_tr.shape == (128,)
    assert x_te.shape == (64, 17) and y_te.shape == (64,)
    assert jnp.std(y_tr - eq15(x_tr)) > 0.05  # noisy
    x_u, *_ = DATASET(jax.random.PRNGKey(2), n_train=128, n_test=64, x_dist="uniform")
    assert jnp.min(x_u) < -0.5 and jnp.max(x_u) > 0.5
    assert jnp.all(jnp.abs(x_u) <= 1.0)
    with pytest.raises(ValueError, match="x_dist"):
        eq15_dataset(jax.random.PRNGKey(2), x_dist="cauchy")


def test_regression_probe_reduces_the_eq15_loss():
    x_tr, y_tr, x_te, y_te = DATASET(jax.random.PRNGKey(3), n_train=128, n_test=64)
    curves = PROBE(apply_fn, init_params(), x_tr, y_tr, x_te, y_te, lr=0.01, steps=150)
    assert curves.train_loss.shape == curves.test_loss.shape == (151,)
    assert curves.train_loss[-1] < 0.3 * curves.train_loss[0]
    assert curves.test_loss[-1] < 0.7 * curves.test_loss[0]


def test_regression_probe_minibatches_need_a_key_and_learn():
    x_tr, y_tr, x_te, y_te = DATASET(jax.random.PRNGKey(4), n_train=128, n_test=64)
    with pytest.raises(ValueError, match="key"):
        regression_probe(apply_fn, init_params(), x_tr, y_tr, x_te, y_te, 0.01, 5, batch_size=32)
    curves = PROBE(
        apply_fn, init_params(), x_tr, y_tr, x_te, y_te, 0.01, 40, batch_size=32, key=jax.random.PRNGKey(5)
    )
    assert curves.train_loss[-1] < 0.6 * curves.train_loss[0]


def test_random_target_probe_separates_a_healthy_net_from_a_dead_one():
    x = jax.random.normal(jax.random.PRNGKey(6), (64, 17))
    healthy = init_params()
    # Every hidden ReLU of layer 2 dead: the output is its bias, so only the targets' mean can be fit.
    dead = jax.tree_util.tree_map(lambda p: p, healthy)
    dead["layer_2"]["bias"] = jnp.full_like(dead["layer_2"]["bias"], -1e4)
    key = jax.random.PRNGKey(7)
    good = random_target_probe(apply_fn, healthy, x, key, steps=100, lr=1e-2)
    bad = random_target_probe(apply_fn, dead, x, key, steps=100, lr=1e-2)
    assert good.loss_curve.shape == (101,) and good.final_loss == good.loss_curve[-1]
    assert good.final_loss < 0.5 * good.loss_curve[0]
    targets = 1.0 * jax.random.normal(key, (64,))
    np.testing.assert_allclose(bad.final_loss, jnp.var(targets), rtol=0.05)  # best constant fit
    assert good.final_loss < 0.5 * bad.final_loss


def test_random_target_probe_with_given_targets():
    x = jax.random.normal(jax.random.PRNGKey(8), (32, 17))
    params = init_params()
    result = random_target_probe(apply_fn, params, x, None, steps=3, targets=apply_fn(params, x))
    assert result.loss_curve[0] == 0.0


def test_probes_jit_and_vmap_over_seeds_and_learning_rates():
    x_tr, y_tr, x_te, y_te = DATASET(jax.random.PRNGKey(9), n_train=128, n_test=64)
    params = jax.tree_util.tree_map(lambda *p: jnp.stack(p), init_params(0), init_params(1))
    lrs = jnp.array([0.01, 0.0])  # lr 0: the curve must stay flat
    keys = jax.random.split(jax.random.PRNGKey(10), 2)

    def run(p, lr, key):
        curves = regression_probe(apply_fn, p, x_tr, y_tr, x_te, y_te, lr, 10)
        probe = random_target_probe(apply_fn, p, x_tr, key, steps=10, lr=lr)
        return curves, probe

    curves, probe = jax.jit(jax.vmap(run))(params, lrs, keys)
    assert curves.train_loss.shape == (2, 11) and probe.final_loss.shape == (2,)
    assert curves.train_loss[0, -1] < curves.train_loss[0, 0]
    np.testing.assert_allclose(curves.test_loss[1], curves.test_loss[1, 0], rtol=1e-6)
    np.testing.assert_allclose(probe.loss_curve[1], probe.loss_curve[1, 0], rtol=1e-6)
    # Different seeds start from different networks.
    assert curves.train_loss[0, 0] != curves.train_loss[1, 0]
    x_batched = jax.vmap(lambda k: jax.random.normal(k, (8, 17)))(keys)
    np.testing.assert_allclose(jax.jit(jax.vmap(eq15))(x_batched)[1], eq15(x_batched[1]), rtol=1e-6)
