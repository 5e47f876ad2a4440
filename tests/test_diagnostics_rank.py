"""srank, effective rank and numerical rank on matrices whose singular values are known by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from plastix.diagnostics import effective_rank, numerical_rank, rank_stats, singular_values, srank


def test_identity_features_have_full_rank():
    n = 8
    features = jnp.eye(n)
    assert srank(features) == n
    np.testing.assert_allclose(effective_rank(features), n, rtol=1e-5)
    assert numerical_rank(features) == n


def test_rank_one_matrix():
    u = jnp.array([1.0, 2.0, -1.0, 0.5, 3.0])
    v = jnp.array([0.5, -1.0, 2.0])
    features = jnp.outer(u, v)
    assert srank(features) == 1
    assert numerical_rank(features) == 1
    np.testing.assert_allclose(effective_rank(features), 1.0, atol=1e-3)


def test_hand_computed_singular_values_3_and_1():
    features = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(singular_values(features), [3.0, 1.0], rtol=1e-6)
    # p = (0.75, 0.25)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    np.testing.assert_allclose(effective_rank(features), expected, rtol=1e-5)
    assert srank(features, delta=0.01) == 2  # cumsum (0.75, 1.0): needs both
    assert srank(features, delta=0.3) == 1  # 0.75 >= 0.7
    assert srank(features, delta=0.25) == 1  # boundary: 0.75 >= 0.75
    assert numerical_rank(features, tol=2.0) == 1
    assert numerical_rank(features, tol=0.5) == 2


def test_numerical_rank_default_tolerance_matches_numpy():
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    features = jax.random.normal(key_a, (20, 3)) @ jax.random.normal(key_b, (3, 10))  # rank 3
    assert numerical_rank(features) == np.linalg.matrix_rank(np.asarray(features)) == 3
    s = np.linalg.svd(np.asarray(features), compute_uv=False)
    np.testing.assert_allclose(singular_values(features), s, rtol=1e-4, atol=1e-4)


def test_zero_matrix_has_rank_zero_and_no_nan():
    features = jnp.zeros((4, 3))
    assert srank(features) == 0
    assert effective_rank(features) == 0.0
    assert numerical_rank(features) == 0


def test_leading_axes_are_folded_into_the_batch():
    features = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 4))
    flat = features.reshape(12, 4)
    assert srank(features) == srank(flat)
    np.testing.assert_allclose(effective_rank(features), effective_rank(flat), rtol=1e-6)


def test_rank_stats_agrees_with_the_single_functions():
    features = jnp.diag(jnp.array([5.0, 2.0, 1.0, 0.01]))
    stats = rank_stats(features, delta=0.01)
    assert stats["srank"] == srank(features, 0.01) == 3  # (5 + 2 + 1) / 8.01 = 0.9988 >= 0.99
    np.testing.assert_allclose(stats["effective_rank"], effective_rank(features), rtol=1e-6)
    assert stats["numerical_rank"] == numerical_rank(features) == 4


def test_rank_functions_jit_and_vmap_over_seeds():
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    features = jax.vmap(lambda k: jax.random.normal(k, (16, 6)))(keys)
    features = features.at[0].set(jnp.outer(jnp.arange(16.0), jnp.ones(6)))  # seed 0: rank 1

    def metrics(f):
        return {
            "srank": srank(f),
            "effective_rank": effective_rank(f),
            "numerical_rank": numerical_rank(f),
            "numerical_rank_tol": numerical_rank(f, tol=1e-3),
            "stats": rank_stats(f),
        }

    batched = jax.jit(jax.vmap(metrics))(features)
    np.testing.assert_array_equal(batched["srank"], batched["stats"]["srank"])
    assert batched["srank"][0] == 1 and batched["numerical_rank"][0] == 1
    for s in range(3):
        np.testing.assert_allclose(batched["effective_rank"][s], effective_rank(features[s]), rtol=1e-5)
        assert batched["numerical_rank"][s] == numerical_rank(features[s])
