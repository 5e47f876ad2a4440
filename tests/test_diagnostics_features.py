"""Plasticine's feature norm and variance, Dohare et al.'s unit activity, weight-matrix ranks and gradient
interference: hand-checked cases, and measuring them leaves every other diagnostic unchanged."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from plastix.diagnostics import features
from plastix.diagnostics.training import diagnostics_init, layer_params, make_forward_acts, measure
from plastix.nets import ActorCritic


def test_feature_norm_and_variance_hand_case():
    post = jnp.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    # Plasticine: mean_b ||h_b||_2 = (5 + 0 + 1) / 3; mean_b torch.var(h_b) (unbiased) = (0.5 + 0 + 0.5) / 3.
    assert float(features.feature_norm(post)) == 2.0
    np.testing.assert_allclose(features.feature_variance(post), 1 / 3, rtol=1e-6)
    conv = post.reshape(3, 1, 2, 1)  # a conv map [B, h, w, C]: each input's positions and channels together
    assert float(features.feature_norm(conv)) == 2.0


def test_unit_activity_hand_case():
    post = jnp.array([[1.0, 0.0, 0.0], [2.0, -1.0, 0.0], [0.0, 3.0, 0.0], [5.0, 0.0, 0.0]])
    activity = features.unit_activity(post)  # Dohare: mean_t [h > 0]
    np.testing.assert_allclose(activity, [0.75, 0.25, 0.0])
    np.testing.assert_allclose(features.inactive_units(activity), 1 / 3)  # activity <= 0.01


def test_weight_rank_hand_case():
    kernel = jnp.diag(jnp.array([3.0, 2.0, 0.0]))
    stats = features.weight_rank_stats(kernel)
    assert float(stats["weight/numerical_rank"]) == 2
    assert float(stats["weight/srank"]) == 2  # cumulative 0.6, 1.0: one below 0.99, plus one
    np.testing.assert_allclose(stats["weight/effective_rank"], math.exp(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4))),
                               rtol=1e-6)


def test_gradient_cosines_hand_case():
    # l(theta; x) = <kernel, x[:2]> + c * x[2]: the per-example gradient is (x0, x1, bias 0, x2).
    params = {"a": {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)}, "c": jnp.zeros(())}
    loss = lambda p, x: p["a"]["kernel"] @ x[:2] + p["c"] * x[2] + 0.0 * p["a"]["bias"][0]
    examples = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0]])
    out = features.gradient_cosines(loss, params, examples, lambda tree, name: tree.get(name), ["a", "missing"])
    np.testing.assert_allclose(out["model/grad_cosine"], (-0.5 + 0.5 + 0.5) / 3, rtol=1e-6)
    np.testing.assert_allclose(out["model/grad_conflict"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(out["a/grad_cosine"], (0 + 2 / math.sqrt(2)) / 3, rtol=1e-6)
    assert "missing/grad_cosine" not in out


def test_new_metrics_leave_the_other_diagnostics_unchanged():
    net = ActorCritic(2, (8, 8), "relu")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.float32))["params"]
    obs = jax.random.normal(jax.random.PRNGKey(1), (32, 3), jnp.float32)
    forward = make_forward_acts(net.apply)
    loss_fn = lambda p: jnp.sum(net.apply({"params": p}, obs)[0] ** 2)
    per_example = lambda p, x: jnp.sum(net.apply({"params": p}, x[None])[0] ** 2)
    state = diagnostics_init(params, {k: (8, 8) for k in ("policy/layer_1", "policy/layer_2", "value/layer_1",
                                                           "value/layer_2")})
    base, _, _ = jax.jit(lambda s: measure(params, forward, loss_fn, obs, "relu", s, (0.0,), 0.0, 0.0))(state)
    extra, _, _ = jax.jit(lambda s: measure(params, forward, loss_fn, obs, "relu", s, (0.0,), 0.0, 0.0,
                                            activity_obs=obs[-16:], interference=(per_example, obs[:8])))(state)
    for key, value in base.items():
        np.testing.assert_allclose(extra[key], value, rtol=1e-6, atol=0, err_msg=key)  # one XLA program each
    post = forward(params, obs)["policy/layer_1"][1]
    np.testing.assert_allclose(extra["policy/layer_1/feature_norm"], features.feature_norm(post))
    recent = forward(params, obs[-16:])["policy/layer_1"][1]
    np.testing.assert_allclose(extra["policy/layer_1/unit_activity"], np.mean(np.asarray(recent) > 0))
    assert "policy/layer_1/grad_cosine" in extra and "value/layer_2/grad_cosine" in extra
    assert "policy/layer_1/weight/numerical_rank" in base
    assert layer_params(params, "policy/layer_1") is not None


def test_metric_options_are_range_checked():
    import dataclasses

    import pytest

    from plastix.config import ConfigError, TrainConfig, validate

    with pytest.raises(ConfigError, match="--interference-samples"):
        validate(dataclasses.replace(TrainConfig(), interference_samples=1), check_env=False)
    with pytest.raises(ConfigError, match="--activity-steps"):
        validate(dataclasses.replace(TrainConfig(), activity_steps=-1), check_env=False)
