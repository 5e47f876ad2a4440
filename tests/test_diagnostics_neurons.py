"""Dormancy, MAGI, overlap and dead units on hand-computed cases; Theorem 1 of the OCP paper checked."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.diagnostics import (
    active_units,
    dead_elements,
    dead_units,
    dead_units_every_input,
    dead_units_every_input_mask,
    dormancy_scores,
    dormant_mask,
    dormant_ratio,
    dormant_ratio_from_scores,
    magi_from_grads,
    magi_scores,
    magi_scores_preactivation,
    overlap,
    relative_zero_grad_mask,
    relative_zero_grad_ratio,
    zero_grad_mask,
    zero_grad_ratio,
)
from plastix.nets import ACTIVATIONS

X = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])


def two_layer_loss(w1, b1, w2, x, y, activation):
    """MSE of a 1-hidden-layer net ``act(x @ w1 + b1) @ w2``: the ``loss`` target's training loss."""
    hidden = ACTIVATIONS[activation](x @ w1 + b1)
    return jnp.mean((hidden @ w2 - y) ** 2)


def loss_magi(w1, b1, w2, x, y, activation):
    return magi_from_grads(jax.grad(two_layer_loss)(w1, b1, w2, x, y, activation))


# ------------------------------------------------------------------------------------------ dormancy


def test_dormancy_scores_hand_computed():
    acts = jnp.array([[1.0, 0.0, 2.0], [3.0, 0.0, -4.0]])
    # E|h| = (2, 0, 3), layer mean 5/3.
    np.testing.assert_allclose(dormancy_scores(acts), [1.2, 0.0, 1.8], rtol=1e-6)


def test_dormancy_scores_average_over_every_leading_axis():
    acts = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))  # [batch, height, width, H]
    flat = acts.reshape(-1, 4)
    np.testing.assert_allclose(dormancy_scores(acts), dormancy_scores(flat), rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(dormancy_scores(acts)), 1.0, rtol=1e-5)


def test_dormancy_of_all_zero_layer_is_zero_not_nan():
    np.testing.assert_array_equal(dormancy_scores(jnp.zeros((4, 3))), jnp.zeros(3))


def test_dormant_mask_and_ratio_use_less_or_equal():
    scores = jnp.array([1.2, 0.0, 1.8])
    np.testing.assert_array_equal(dormant_mask(scores, 0.0), [False, True, False])
    np.testing.assert_allclose(dormant_ratio_from_scores(scores, 0.0), 1 / 3)
    np.testing.assert_allclose(dormant_ratio_from_scores(scores, 1.2), 2 / 3)


def test_dormant_ratio_takes_activations():
    """Issue #3's signature: activations in. E|h| = (2, 0, 3, 0.1), layer mean 1.275, scores
    (1.569, 0, 2.353, 0.0784): one neuron <= 0.025, two <= 0.1. Read as scores, the same [2, 4] array
    would give mean(acts <= 0.1) = 5/8 at tau 0.1."""
    acts = jnp.array([[1.0, 0.0, 2.0, 0.1], [3.0, 0.0, -4.0, -0.1]])
    np.testing.assert_allclose(dormant_ratio(acts, 0.025), 1 / 4)
    np.testing.assert_allclose(dormant_ratio(acts, 0.1), 2 / 4)


def test_batch_of_activations_where_scores_are_expected_is_an_error():
    acts = jnp.array([[1.0, 0.0, 2.0], [3.0, 0.0, -4.0]])
    for fn in (dormant_ratio_from_scores, dormant_mask, relative_zero_grad_ratio, relative_zero_grad_mask):
        with pytest.raises(ValueError, match=r"expected per-neuron scores of shape \[H\], got shape \(2, 3\)"):
            fn(acts, 0.1)
    with pytest.raises(ValueError, match="expected per-neuron scores"):
        zero_grad_ratio(acts)
    with pytest.raises(ValueError, match="dormant_ratio_from_scores"):
        dormant_ratio(jnp.array([1.2, 0.0, 1.8]), 0.1)  # [H] scores where activations are expected


# ---------------------------------------------------------------------------------------------- MAGI


def test_magi_layer_target_hand_computed_relu():
    kernel = jnp.array([[1.0, -1.0], [0.0, 0.0]])  # z_0 = x_0 > 0 on every row, z_1 = -x_0 < 0
    x = X[:2]
    # G_0 = mean_j |sum_k x_kj| = mean(|1 + 3|, |2 - 1|) = 2.5; G_1: relu' = 0 everywhere.
    np.testing.assert_allclose(magi_scores(x, kernel, jnp.zeros(2), "relu"), [2.5, 0.0])
    np.testing.assert_allclose(magi_scores(x, kernel, jnp.zeros(2), jax.nn.relu), [2.5, 0.0])


def test_magi_from_grads_is_mean_abs_over_inputs():
    np.testing.assert_allclose(magi_from_grads(jnp.array([[1.0, -2.0], [3.0, 0.0]])), [2.0, 1.0])


def test_relu_neuron_pushed_negative_by_its_bias_is_dormant_and_zero_gradient_for_both_targets():
    key_w, key_v, key_y = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jnp.abs(jax.random.normal(key_w, (16, 3)))  # non-negative inputs
    w1 = jnp.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.2, 0.4, 1.0]])
    b1 = jnp.array([0.0, 0.0, -100.0])  # neuron 2: z < 0 on every input
    w2 = jax.random.normal(key_v, (3, 1))
    y = jax.random.normal(key_y, (16, 1))
    h = jax.nn.relu(x @ w1 + b1)
    scores = dormancy_scores(h)
    assert scores[2] == 0.0 and jnp.all(scores[:2] > 0)
    layer = magi_scores(x, w1, b1, "relu")
    loss = loss_magi(w1, b1, w2, x, y, "relu")
    assert layer[2] == 0.0 and jnp.all(layer[:2] > 0)
    assert loss[2] == 0.0 and jnp.all(loss[:2] > 0)
    np.testing.assert_array_equal(zero_grad_mask(layer), dormant_mask(scores, 0.0))


def test_eq18_pitfall_preactivation_target_gives_every_neuron_the_same_score():
    kernel = jax.random.normal(jax.random.PRNGKey(2), (2, 5))
    bias = jnp.array([0.0, -100.0, 1.0, 2.0, -3.0])
    literal = magi_scores_preactivation(X, kernel, bias)
    # dS/dw_ji = sum_k x_kj for every i: mean(|4.5|, |1.5|) = 3.
    np.testing.assert_allclose(literal, jnp.full(5, 3.0), rtol=1e-6)
    # The layer target tells the neurons apart (neuron 1 is dead under ReLU).
    layer = magi_scores(X, kernel, bias, "relu")
    assert layer[1] == 0.0 and jnp.ptp(layer) > 0


def test_zero_grad_ratios_absolute_and_relative():
    scores = jnp.array([0.0, 1e-3, 1.0, 2.0])
    np.testing.assert_allclose(zero_grad_ratio(scores), 0.25)
    np.testing.assert_allclose(zero_grad_ratio(scores, eps=1e-3), 0.5)
    np.testing.assert_allclose(relative_zero_grad_ratio(scores, 0.1), 0.5)  # 1e-3 / 0.75 <= 0.1
    np.testing.assert_array_equal(relative_zero_grad_mask(scores, 0.0), [True, False, False, False])
    np.testing.assert_allclose(relative_zero_grad_ratio(jnp.zeros(3), 0.0), 1.0)


# ---------------------------------------------------------------------------------- Theorem 1 (OCP)


def neuron_output(x_row, w1, b1, activation, i):
    return ACTIVATIONS[activation](x_row @ w1 + b1)[i]


def input_gradients(x, w1, b1, activation, i):
    """``grad_x h_i(x)`` on every row of x: the gradient Theorem 1 is about (Assumption 1)."""
    return jax.vmap(jax.grad(neuron_output), in_axes=(0, None, None, None, None))(x, w1, b1, activation, i)


def theorem_setup(activation, dormant_bias):
    key_x, key_w, key_v, key_y = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(key_x, (12, 3))
    w1 = jax.random.normal(key_w, (3, 4)).at[:, 0].set(0.0)  # neuron 0: zero incoming weights
    b1 = jnp.zeros(4).at[0].set(dormant_bias)
    w2 = jax.random.normal(key_v, (4, 1))
    y = jax.random.normal(key_y, (12, 1))
    return x, w1, b1, w2, y


@pytest.mark.parametrize("activation", ["tanh", "gelu", "silu"])
def test_theorem1_dormant_smooth_neuron_has_zero_input_gradient_but_not_zero_weight_gradient(activation):
    """sigma(0) = 0 with zero weights and bias: h == 0 on every input, so s = 0 (A), and grad_x h = 0 on D
    (Theorem 1's (B)). But MAGI differentiates w.r.t. the *weights*: dS/dw_ji = sigma'(0) x_kj summed,
    with sigma'(0) = 1 (tanh) or 0.5 (gelu, silu), so the dormant neuron is NOT zero-gradient for MAGI,
    in either target: Theorem 1 does not license reading MAGI == 0 off dormancy for these activations."""
    x, w1, b1, w2, y = theorem_setup(activation, 0.0)
    h = ACTIVATIONS[activation](x @ w1 + b1)
    assert jnp.all(h[:, 0] == 0.0)
    assert dormancy_scores(h)[0] == 0.0
    np.testing.assert_array_equal(input_gradients(x, w1, b1, activation, 0), jnp.zeros((12, 3)))
    slope_at_zero = jax.grad(ACTIVATIONS[activation])(0.0)
    expected_layer = slope_at_zero * jnp.mean(jnp.abs(jnp.sum(x, axis=0)))
    np.testing.assert_allclose(magi_scores(x, w1, b1, activation)[0], expected_layer, rtol=1e-5)
    assert loss_magi(w1, b1, w2, x, y, activation)[0] > 1e-3


@pytest.mark.parametrize("activation", ["gelu", "silu", "softplus"])
def test_theorem1_smooth_neuron_dormant_on_its_negative_tail_has_zero_gradients(activation):
    """Deep in the negative tail (z = -1e4) h and sigma' both underflow to exactly 0 (float32 or float64):
    s = 0, grad_x h = 0, and MAGI = 0 for both targets. Softplus can only be dormant this way
    (softplus(z) > 0 for every real z), and tanh cannot at all (its tails saturate at -1 and 1)."""
    x, w1, b1, w2, y = theorem_setup(activation, -1e4)
    h = ACTIVATIONS[activation](x @ w1 + b1)
    assert dormancy_scores(h)[0] == 0.0
    np.testing.assert_array_equal(input_gradients(x, w1, b1, activation, 0), jnp.zeros((12, 3)))
    assert magi_scores(x, w1, b1, activation)[0] == 0.0
    assert loss_magi(w1, b1, w2, x, y, activation)[0] == 0.0


def test_theorem1_converse_needs_one_zero_activation():
    """(B) without the zero activation: a tanh neuron with zero weights and bias 0.5 has grad_x h = 0 on D
    but outputs tanh(0.5) != 0, so it is not dormant."""
    x, w1, b1, _, _ = theorem_setup("tanh", 0.5)
    np.testing.assert_array_equal(input_gradients(x, w1, b1, "tanh", 0), jnp.zeros((12, 3)))
    assert dormancy_scores(jnp.tanh(x @ w1 + b1))[0] > 0.1


def test_theorem1_relu_kink_depends_on_the_derivative_convention():
    """ReLU is not C^1 at 0 (the review's criticism). A ReLU neuron sitting exactly at z = 0 (zero weights
    and bias) is dormant; with JAX's relu'(0) = 0 its weight gradient is 0 too, so dormancy and MAGI agree.
    The other one-sided derivative, relu'(0) = 1 (equally valid as a subgradient), gives a nonzero gradient:
    at the kink the equivalence is a convention, not a theorem."""
    assert jax.grad(jax.nn.relu)(0.0) == 0.0
    x, w1, b1, w2, y = theorem_setup("relu", 0.0)
    h = jax.nn.relu(x @ w1 + b1)
    assert dormancy_scores(h)[0] == 0.0
    assert magi_scores(x, w1, b1, "relu")[0] == 0.0
    assert loss_magi(w1, b1, w2, x, y, "relu")[0] == 0.0
    relu_right_derivative = lambda z: jnp.where(z >= 0, z, 0.0)  # noqa: E731  (relu'(0) = 1)
    assert jax.grad(relu_right_derivative)(0.0) == 1.0
    np.testing.assert_array_equal(relu_right_derivative(x @ w1 + b1), h)  # same forward pass
    assert magi_scores(x, w1, b1, relu_right_derivative)[0] > 1e-3


def test_theorem1_relu_all_negative_neuron_has_zero_gradients():
    x, w1, b1, w2, y = theorem_setup("relu", -1.0)  # z = -1 on every input
    assert dormancy_scores(jax.nn.relu(x @ w1 + b1))[0] == 0.0
    np.testing.assert_array_equal(input_gradients(x, w1, b1, "relu", 0), jnp.zeros((12, 3)))
    assert magi_scores(x, w1, b1, "relu")[0] == 0.0
    assert loss_magi(w1, b1, w2, x, y, "relu")[0] == 0.0


# ------------------------------------------------------------------------------------------- overlap


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # both empty
        ([1, 0, 0, 0], [0, 0, 0, 0], 0.0),  # exactly one empty
        ([0, 0, 0, 0], [0, 1, 1, 0], 0.0),
        ([1, 1, 0, 0], [0, 1, 1, 1], 0.5),  # |A ∩ B| = 1, min(2, 3) = 2
        ([0, 1, 0, 0], [0, 1, 1, 1], 1.0),  # A inside B
        ([1, 0, 1, 0], [0, 1, 0, 1], 0.0),  # disjoint
        ([1, 1, 1, 1], [1, 1, 1, 1], 1.0),
    ],
)
def test_overlap_eq19(a, b, expected):
    value = overlap(jnp.array(a, bool), jnp.array(b, bool))
    np.testing.assert_allclose(value, expected)
    np.testing.assert_allclose(overlap(jnp.array(b, bool), jnp.array(a, bool)), expected)


# ---------------------------------------------------------------------------------------- dead units


@pytest.mark.parametrize(
    "activation, acts, dead",
    [
        ("relu", [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], [[1, 1, 0], [1, 0, 1]]),
        ("crelu", [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], [[1, 1, 0], [1, 0, 1]]),
        ("tanh", [[0.995, 0.995, 0.5], [-0.999, 0.98, 0.999]], [[1, 1, 0], [1, 0, 1]]),
        ("sigmoid", [[0.001, 0.995, 0.5], [0.999, 0.5, 0.999]], [[1, 1, 0], [1, 0, 1]]),
        ("none", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0, 0, 0], [0, 0, 0]]),
        ("gelu", [[-0.001, 0.0, 0.5], [-0.009, -0.02, 0.5]], [[1, 1, 0], [1, 0, 0]]),
        ("softplus", [[0.001, 0.001, 0.5], [0.005, 0.7, 0.5]], [[1, 1, 0], [1, 0, 0]]),
    ],
)
def test_dead_units_criteria(activation, acts, dead):
    """Juliani & Ash's calc_dead_units is the mean over *elements* (relu: torch.mean((x == 0).float())):
    e.g. relu [[0, 0, 1], [0, 2, 0]] has 4 zero elements of 6 -> 2/3, where only 1 of 3 units is zero on
    every input (the old plastix dead_units gave that 1/3)."""
    acts = jnp.array(acts)
    dead = np.array(dead, bool)
    np.testing.assert_array_equal(dead_elements(acts, activation), dead)
    np.testing.assert_allclose(dead_units(acts, activation), dead.mean())
    np.testing.assert_allclose(active_units(acts, activation), 1.0 - dead.mean())  # Plasticine's FAU
    np.testing.assert_array_equal(dead_units_every_input_mask(acts, activation), dead.all(axis=0))
    np.testing.assert_allclose(dead_units_every_input(acts, activation), dead.all(axis=0).mean())


def test_dead_units_of_a_conv_layer_count_every_position():
    """[B=1, 2, 2, C=2]: channel 0 is zero at 3 of 4 positions, channel 1 at 1: 4/8 elements dead;
    no channel is zero everywhere."""
    acts = jnp.array([[[[0.0, 1.0], [0.0, 0.0]], [[0.0, 2.0], [5.0, 3.0]]]])
    np.testing.assert_allclose(dead_units(acts, "relu"), 0.5)
    np.testing.assert_allclose(dead_units_every_input(acts, "relu"), 0.0)


def test_dead_units_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        dead_units(jnp.zeros((2, 2)), "swish2")


# ---------------------------------------------------------------------------------------- jit / vmap


def test_neuron_diagnostics_jit_and_vmap_over_seeds():
    seeds = 3
    keys = jax.random.split(jax.random.PRNGKey(4), seeds)
    acts = jax.nn.relu(jax.vmap(lambda k: jax.random.normal(k, (8, 5)))(keys))  # [S, B, H]
    kernels = jax.vmap(lambda k: jax.random.normal(k, (2, 5)))(keys)
    biases = jnp.zeros((seeds, 5)).at[:, 0].set(-100.0)
    xs = jnp.broadcast_to(X, (seeds,) + X.shape)

    def all_metrics(acts, x, kernel, bias):
        scores = dormancy_scores(acts)
        magi = magi_scores(x, kernel, bias, "relu")
        return {
            "scores": scores,
            "dormant": dormant_ratio_from_scores(scores, 0.025),
            "dormant_acts": dormant_ratio(acts, 0.0),
            "magi": magi,
            "magi_pre": magi_scores_preactivation(x, kernel, bias),
            "magi_grads": magi_from_grads(kernel),
            "zero_grad": zero_grad_ratio(magi),
            "rel_zero_grad": relative_zero_grad_ratio(magi, 0.1),
            "overlap": overlap(dormant_mask(scores, 0.0), zero_grad_mask(magi)),
            "rel_mask": relative_zero_grad_mask(magi, 0.1),
            "dead": dead_units(acts, "relu"),
            "dead_every_input": dead_units_every_input(acts, "relu"),
            "dead_mask": dead_units_every_input_mask(acts, "relu"),
        }

    batched = jax.jit(jax.vmap(all_metrics))(acts, xs, kernels, biases)
    assert batched["scores"].shape == (seeds, 5)
    assert batched["zero_grad"].shape == (seeds,)
    single = all_metrics(acts[1], xs[1], kernels[1], biases[1])
    for name, value in single.items():
        np.testing.assert_allclose(batched[name][1], value, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(batched["magi"][:, 0], jnp.zeros(seeds))  # bias -100: dead in every seed
    # tau as a traced argument: one compiled program for several thresholds.
    ratios = jax.jit(jax.vmap(functools.partial(dormant_ratio_from_scores, batched["scores"][0])))(jnp.array([0.0, 2.0]))
    assert ratios[0] <= ratios[1]
