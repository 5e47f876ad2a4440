"""Per-update mitigations (optax transforms): L2, L2-init, weight clipping, soft shrink & perturb."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
    bounds = init_bounds(params, "uniform_equivalent")
    # orthogonal [8, 16] with gain sqrt(2): rms = sqrt(2) / sqrt(16)
    np.testing.assert_allclose(bounds["layer_1"]["kernel"], np.sqrt(3) * np.sqrt(2) / 4, rtol=1e-5)
    assert bounds["layer_1"]["bias"] == bounds["layer_1"]["kernel"]


def test_weight_clipping_default_bound_is_elsayed_one_over_sqrt_fan_in_on_every_layer():
    """mohmdelsayed/weight-clipping ``InitBounds.get``: 1/sqrt(fan_in) for a weight, the same for the bias
    that follows it, whatever the init's gain. CleanRL's policy head (orthogonal, gain 0.01) over 64 units:
    bound 1/8 (the old default, sqrt(3) * rms = sqrt(3) * 0.01 / 8, clipped it to +-0.0043 at kappa 2)."""
    shapes = jax.eval_shape(nets.ActorCritic(6, (64, 64), "tanh", False).init, jax.random.PRNGKey(0), jnp.zeros((1, 17)))
    bounds = init_bounds(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"]))  # only shapes matter
    for net in ("policy", "value"):
        for layer, n_in in (("layer_1", 17), ("layer_2", 64), ("output", 64)):
            for leaf in ("kernel", "bias"):
                np.testing.assert_allclose(bounds[net][layer][leaf], 1 / np.sqrt(n_in), rtol=1e-6)
    assert np.isinf(bounds["log_std"]).all()  # not a layer's weight: never clipped (README: differences)
    # A conv kernel [kh, kw, c_in, c_out]: fan_in = kh * kw * c_in (PyTorch's for [c_out, c_in, kh, kw]).
    conv = init_bounds({"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros(8)}})
    np.testing.assert_allclose(conv["conv"]["kernel"], 1 / 6)
    np.testing.assert_allclose(conv["conv"]["bias"], 1 / 6)
    from plastix.mitigations.registry import WeightClipOptions

    assert WeightClipOptions() == WeightClipOptions(kappa=3.0, bound_method="fan_in")  # their RL script's defaults


def test_weight_clip_bound_method_checked_before_compute():
    import dataclasses

    from plastix.config import ConfigError, TrainConfig, validate
    from plastix.mitigations.registry import WeightClipOptions

    cfg = TrainConfig(mitigations="weight_clip", weight_clip=WeightClipOptions(bound_method="fanin"))
    with pytest.raises(ConfigError, match=r"--weight-clip.bound-method: unknown method 'fanin'; allowed: fan_in"):
        validate(cfg, check_env=False)
    validate(dataclasses.replace(cfg, weight_clip=WeightClipOptions()), check_env=False)


def test_adam_betas_reach_the_agent_optimizer():
    """Two steps of --adam-b1 0.99 --adam-b2 0.99 (Dohare et al.'s non-stationary Adam), hand-computed:
    m_t = b1 m + (1 - b1) g, v_t = b2 v + (1 - b2) g^2, step -lr m_t / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps).
    The first step is -lr g / (|g| + eps) for any betas, the second is not."""
    from plastix.config import TrainConfig
    from plastix.mitigations.build import build_optimizer

    lr, eps, b1, b2 = 0.1, 1e-5, 0.99, 0.99
    cfg = TrainConfig(adam_b1=b1, adam_b2=b2, adam_eps=eps)
    params = {"w": jnp.zeros(2)}
    tx = build_optimizer(cfg, (), lambda key: params, lr)
    grads = [np.array([0.1, -0.2]), np.array([0.3, 0.05])]  # global norms < 0.5: the grad clip is idle
    state, m, v = tx.init(params), np.zeros(2), np.zeros(2)
    for t, g in enumerate(grads, start=1):
        update, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        expected = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(update["w"], expected, rtol=1e-5)
    default = build_optimizer(TrainConfig(), (), lambda key: params, lr)
    s = default.init(params)
    for g in grads:
        u, s = default.update({"w": jnp.asarray(g, jnp.float32)}, s, params)
    assert not np.allclose(u["w"], update["w"], rtol=1e-3)  # 0.9 / 0.999 give another second step


def test_adam_betas_checked_and_refused_under_es():
    from plastix.config import ConfigError, TrainConfig, validate
    from plastix.training import _train_es

    with pytest.raises(ConfigError, match=r"--adam-b2: must be in \[0, 1\), got 1.0"):
        validate(TrainConfig(adam_b2=1.0), check_env=False)
    with pytest.raises(ConfigError, match="--adam-b1/--adam-b2: set PPO's Adam; --optimizer es keeps OpenAI-ES's"):
        _train_es(TrainConfig(optimizer="es", adam_b1=0.99))
    with pytest.raises(ConfigError, match="--probe-every, --interference-samples: PPO's measurements; --optimizer es"):
        _train_es(TrainConfig(optimizer="es", probe_every=4, interference_samples=2))
