"""Curvature on quadratic losses 0.5 theta^T A theta, whose Hessian is A."""

import jax
import jax.numpy as jnp
import numpy as np

from plastix.diagnostics import (
    gradient_cosine_matrix,
    hessian_eigenvalue_range,
    hessian_min_eigenvalue,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
)

EIGENVALUES = jnp.array([4.0, 2.0, 1.0, 0.5, 0.25])


def dense_a():
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (5, 5)))
    return q @ jnp.diag(EIGENVALUES) @ q.T


def split(theta):
    """A pytree (not a flat vector) of the 5 parameters, to exercise the flattening."""
    return {"a": theta[:2], "b": {"c": theta[2:].reshape(3, 1)}}


def quadratic(a):
    def loss_fn(params):
        theta = jnp.concatenate([params["a"], params["b"]["c"].ravel()])
        return 0.5 * theta @ a @ theta

    return loss_fn


PARAMS = split(jnp.array([0.3, -1.0, 2.0, 0.5, 0.1]))


def test_hvp_is_a_times_v():
    a = dense_a()
    v = jnp.arange(5.0)
    out = hvp(quadratic(a), PARAMS, split(v))
    flat = jnp.concatenate([out["a"], out["b"]["c"].ravel()])
    np.testing.assert_allclose(flat, a @ v, rtol=1e-5, atol=1e-5)


def test_top_eigenvalue_of_quadratic_is_that_of_a():
    value = hessian_top_eigenvalue(quadratic(dense_a()), PARAMS, jax.random.PRNGKey(1), num_iters=60)
    np.testing.assert_allclose(value, 4.0, rtol=1e-4)


def test_indefinite_diagonal_hessian_top_is_largest_algebraic_not_largest_magnitude():
    """diag(3, -5, 1): power iteration converges to -5 (largest |lambda|); the top eigenvalue is 3."""
    loss_fn = lambda theta: 0.5 * jnp.sum(jnp.array([3.0, -5.0, 1.0]) * theta**2)
    theta = jnp.array([0.1, 0.2, 0.3])
    key = jax.random.PRNGKey(0)
    np.testing.assert_allclose(hessian_top_eigenvalue(loss_fn, theta, key), 3.0, rtol=1e-5)
    np.testing.assert_allclose(hessian_min_eigenvalue(loss_fn, theta, key), -5.0, rtol=1e-5)


def test_dense_indefinite_hessian_extremes():
    """A rotated diag with eigenvalues in [-7, 6] (12 distinct): exact once the Krylov space spans them
    (20 steps asked, capped at P = 12)."""
    eigenvalues = jnp.array([6.0, 5.5, 2.0, 1.0, 0.5, 0.0, -0.1, -1.0, -2.0, -3.0, -6.5, -7.0])
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(5), (12, 12)))
    a = q @ jnp.diag(eigenvalues) @ q.T
    top, low = hessian_eigenvalue_range(lambda t: 0.5 * t @ a @ t, jnp.ones(12), jax.random.PRNGKey(6), 20)
    np.testing.assert_allclose([top, low], [6.0, -7.0], rtol=1e-4)


def test_definite_hessians_and_zero_hessian_survive_lanczos_breakdown():
    """2 I has one distinct eigenvalue (breakdown after one step): both extremes are 2, not a padded 0."""
    theta = jnp.array([0.1, 0.2, 0.3, 0.4])
    key = jax.random.PRNGKey(0)
    np.testing.assert_allclose(hessian_eigenvalue_range(lambda t: jnp.sum(t**2), theta, key), [2.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(hessian_eigenvalue_range(lambda t: jnp.sum(t), theta, key), [0.0, 0.0], atol=1e-7)


def test_trace_is_exact_for_a_diagonal_hessian():
    a = jnp.diag(jnp.array([3.0, -1.0, 0.5, 2.0, 7.0]))
    np.testing.assert_allclose(hessian_trace(quadratic(a), PARAMS, jax.random.PRNGKey(2), 3), 11.5, rtol=1e-6)


def test_trace_of_dense_hessian_within_hutchinson_error():
    a = dense_a()
    m = 2000
    estimate = hessian_trace(quadratic(a), PARAMS, jax.random.PRNGKey(3), num_samples=m)
    # Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z.
    std = jnp.sqrt(2 * (jnp.sum(a**2) - jnp.sum(jnp.diag(a) ** 2)) / m)
    assert abs(estimate - jnp.sum(EIGENVALUES)) < 4 * std


def test_gradient_cosine_matrix_hand_computed():
    # l(w; x, y) = 0.5 (w.x - y)^2 at w = 0: gradient -y x.
    def per_example_loss(w, example):
        x, y = example
        return 0.5 * (w @ x - y) ** 2

    xs = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    ys = jnp.array([1.0, 1.0, -1.0, 1.0])
    c = gradient_cosine_matrix(per_example_loss, jnp.zeros(2), (xs, ys))
    r = 1 / np.sqrt(2)
    expected = [[1, 0, -r, 0], [0, 1, -r, 0], [-r, -r, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(c, expected, atol=1e-6)


def test_curvature_jit_and_vmap_over_seeds():
    scales = jnp.array([1.0, 2.0, 3.0])
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    a = dense_a()

    def metrics(scale, key):
        loss_fn = quadratic(scale * a)
        k1, k2 = jax.random.split(key)
        return hessian_top_eigenvalue(loss_fn, PARAMS, k1, 60), hessian_trace(loss_fn, PARAMS, k2, 500)

    top, trace = jax.jit(jax.vmap(metrics))(scales, keys)
    np.testing.assert_allclose(top, 4.0 * scales, rtol=1e-4)
    np.testing.assert_allclose(trace / scales, jnp.sum(EIGENVALUES), rtol=0.15)
