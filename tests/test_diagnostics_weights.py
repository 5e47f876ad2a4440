"""weight_stats on a hand-built params tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.diagnostics import kernels, params_rms, params_rms_distance, weight_stats


def hand_params(scale=1.0):
    return {
        "policy": {
            "layer_1": {"kernel": scale * jnp.array([[3.0, -4.0], [0.0, 0.0]]), "bias": jnp.ones(2)},
            "output": {"kernel": scale * jnp.array([[1.0], [1.0]]), "bias": jnp.zeros(1)},
        },
        "value": {"output": {"kernel": scale * jnp.array([[-2.0]]), "bias": jnp.zeros(1)}},
        "log_std": jnp.zeros(1),
    }


def test_kernels_are_found_by_path():
    assert list(kernels(hand_params())) == ["policy/layer_1", "policy/output", "value/output"]


def test_weight_stats_hand_computed():
    stats = weight_stats(hand_params())
    # kernel (3, -4, 0, 0): ||W|| = 5, N = 4, mean -1/4, squared deviations sum 24.75.
    expected = {
        "policy/layer_1/weight/l2": 5.0,
        "policy/layer_1/weight/rms": 2.5,
        "policy/layer_1/weight/mean_abs": 1.75,
        "policy/layer_1/weight/std": np.sqrt(24.75 / 4),
        "policy/layer_1/weight/max_abs": 4.0,
        "policy/output/weight/l2": np.sqrt(2.0),
        "policy/output/weight/rms": 1.0,
        "policy/output/weight/mean_abs": 1.0,
        "policy/output/weight/std": 0.0,
        "policy/output/weight/max_abs": 1.0,
        "value/output/weight/l2": 2.0,
        "value/output/weight/rms": 2.0,
        "value/output/weight/mean_abs": 2.0,
        "value/output/weight/std": 0.0,
        "value/output/weight/max_abs": 2.0,
    }
    assert set(stats) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(stats[key], value, rtol=1e-6, err_msg=key)


def test_distance_from_init_and_per_update_change():
    stats = weight_stats(hand_params(2.0), init_params=hand_params(0.0), prev_params=hand_params(1.0))
    np.testing.assert_allclose(stats["policy/layer_1/weight/dist_init"], 10.0, rtol=1e-6)
    np.testing.assert_allclose(stats["policy/layer_1/weight/update_l2"], 5.0, rtol=1e-6)
    np.testing.assert_allclose(stats["value/output/weight/dist_init"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(stats["value/output/weight/update_l2"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(stats["policy/layer_1/weight/update_rms"], 2.5, rtol=1e-6)  # 5 / sqrt(4)
    assert "policy/layer_1/weight/dist_init" not in weight_stats(hand_params())


def test_ja_weight_m_and_weight_diff_are_rms_over_every_parameter():
    """Juliani & Ash's calculate_l2_norm: sqrt(sum over ALL parameters of w^2 / their count). hand_params():
    kernels 9+16+1+1+4 = 31, biases 1+1 = 2, log_std 0 -> 33 over 4+2+2+1+1+1+1 = 12 entries; a per-layer
    mean |w| or kernel-only RMS would differ. weight_diff: RMS of (theta - theta_prev) over all entries."""
    np.testing.assert_allclose(params_rms(hand_params()), np.sqrt(33 / 12), rtol=1e-6)
    shifted = jax.tree.map(lambda x: x - 0.5, hand_params())
    np.testing.assert_allclose(params_rms_distance(hand_params(), shifted), 0.5, rtol=1e-6)
    from plastix.diagnostics.training import model_stats

    stats = model_stats(hand_params(), shifted, prev_params=hand_params(2.0))
    # hand_params(2) - hand_params(1) = kernels only: 31 over 12 entries.
    np.testing.assert_allclose(stats["model/weight_diff"], np.sqrt(31 / 12), rtol=1e-6)
    np.testing.assert_allclose(stats["model/update_rms"], np.sqrt(31 / 12), rtol=1e-6)
    np.testing.assert_allclose(stats["model/dist_init_rms"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(stats["model/weight_m"], np.sqrt(33 / 12), rtol=1e-6)
    assert "model/weight_diff" not in model_stats(hand_params(), shifted)


def test_weight_stats_jit_and_vmap_over_seeds():
    seeded = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), hand_params(1.0), hand_params(3.0))
    init = jax.tree_util.tree_map(jnp.zeros_like, seeded)
    batched = jax.jit(jax.vmap(weight_stats))(seeded, init)
    np.testing.assert_allclose(batched["policy/layer_1/weight/l2"], [5.0, 15.0], rtol=1e-6)
    np.testing.assert_allclose(batched["policy/layer_1/weight/dist_init"], [5.0, 15.0], rtol=1e-6)


@pytest.mark.parametrize("stat", ["l2", "rms", "mean_abs", "std", "max_abs"])
def test_every_stat_scales_linearly_with_the_weights(stat):
    key = f"policy/layer_1/weight/{stat}"
    np.testing.assert_allclose(weight_stats(hand_params(3.0))[key], 3 * weight_stats(hand_params())[key])
