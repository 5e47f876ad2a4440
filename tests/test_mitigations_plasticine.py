"""Plasticine's methods (RLE-Foundation/Plasticine): Parseval regularisation, Normalize-and-Project, TRAC,
Deep Fourier Features; and Juliani & Ash's GroupNorm. Expected values from the references' definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from plastix import nets
from plastix.mitigations import BatchInfo, redo
from plastix.mitigations.plasticine import erfi, normalize_and_project, parseval, parseval_penalty, trac

X = jax.random.normal(jax.random.PRNGKey(0), (16, 3))


def test_parseval_gradient_is_the_gradient_of_prlinear_loss_on_hidden_kernels_only():
    model = nets.MLP(hidden_sizes=(5, 4), activation="relu", output_dim=2, output_std=1.0)
    params = model.init(jax.random.PRNGKey(1), X)["params"]
    zeros = jax.tree.map(jnp.zeros_like, params)
    added, _ = parseval(1e-3, 1.0).update(zeros, parseval(1e-3, 1.0).init(params), params)
    for name in ("layer_1", "layer_2"):  # PRLinear: lam ||W W^T - s I||_F^2, W = kernel^T [out, in]
        want = jax.grad(parseval_penalty)(params[name]["kernel"], 1e-3, 1.0)
        np.testing.assert_allclose(added[name]["kernel"], want, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(added[name]["bias"], 0.0)
    np.testing.assert_array_equal(added["output"]["kernel"], 0.0)  # the output layer is not regularised
    # Orthogonal rows of squared norm s are its minimum: zero gradient.
    q = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(2), (5, 5)))[0]
    params["layer_2"]["kernel"] = q[:, :4] * math.sqrt(2.0)
    added, _ = parseval(1e-3, 2.0).update(zeros, (), params)
    np.testing.assert_allclose(added["layer_2"]["kernel"], 0.0, atol=1e-6)


def test_nap_projects_weights_to_their_initial_norms_and_keeps_biases():
    model = nets.MLP(hidden_sizes=(6,), activation="relu", output_dim=2, output_std=1.0, layer_norm=True)
    params = model.init(jax.random.PRNGKey(1), X)["params"]
    surgery = normalize_and_project()
    state = surgery.init(params, jax.random.PRNGKey(0))
    moved = jax.tree.map(lambda p: 3.0 * p + 0.5, params)
    new, _, _, _ = surgery.apply(moved, (), state, BatchInfo(), jax.random.PRNGKey(0))
    for path in (("layer_1", "kernel"), ("output", "kernel"), ("layer_norm_1", "scale")):
        got, init = new[path[0]][path[1]], params[path[0]][path[1]]
        np.testing.assert_allclose(jnp.linalg.norm(got), jnp.linalg.norm(init), rtol=1e-5)
        mv = moved[path[0]][path[1]]
        np.testing.assert_allclose(got, mv * jnp.linalg.norm(init) / jnp.linalg.norm(mv), rtol=1e-5)
    for path in (("layer_1", "bias"), ("layer_norm_1", "bias"), ("output", "bias")):
        np.testing.assert_array_equal(new[path[0]][path[1]], moved[path[0]][path[1]])


def test_erfi_matches_scipy():
    xs = np.array([-3.0, -0.5, 0.0, 1 / math.sqrt(2), 1.0, 2.5, 6.0])
    np.testing.assert_allclose(erfi(jnp.asarray(xs)), scipy.special.erfi(xs), rtol=2e-5)


def _reference_trac(theta0, grads_fn, lr, steps, betas=(0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999),
                    s_prev=1e-8, eps=1e-8):
    """plasticine/trac.py's _step around SGD, in numpy (float64, scipy's erfi)."""
    theta, ref = theta0.copy(), theta0.copy()
    betas = np.array(betas)
    s, variance, sigma = np.zeros(6), np.zeros(6), np.full(6, 1e-8)
    for _ in range(steps):
        g = grads_fn(theta)
        before = theta.copy()
        theta = theta - lr * g  # base_step (SGD)
        delta = (before - ref) / (s.sum() + eps)
        update = theta - before
        h = float(delta @ g)
        delta = delta + update
        variance = variance * betas**2 + h**2
        sigma = sigma * betas - h
        s = s_prev / scipy.special.erfi(1 / math.sqrt(2)) * scipy.special.erfi(sigma / (math.sqrt(2) * np.sqrt(variance) + eps))
        theta = ref + delta * max(s.sum(), 0.0)
    return theta


def test_trac_follows_plasticines_step():
    a = np.array([[2.0, 0.3], [0.3, 1.0]])
    target = np.array([1.0, -2.0])
    grads_fn = lambda th: a @ (th - target)
    theta0 = np.array([0.5, 0.5])
    tx = trac(optax.sgd(0.1))
    params = {"w": jnp.asarray(theta0, jnp.float32)}
    state = tx.init(params)
    for _ in range(30):
        g = {"w": jnp.asarray(grads_fn(np.asarray(params["w"], np.float64)), jnp.float32)}
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    want = _reference_trac(theta0, grads_fn, 0.1, 30)
    np.testing.assert_allclose(params["w"], want, rtol=2e-3, atol=1e-5)
    assert not np.allclose(want, theta0, atol=1e-3)  # the scale grew: TRAC moved


def test_dff_activation_is_sin_and_cos_doubling_the_width():
    model = nets.MLP(hidden_sizes=(4,), activation="dff", output_dim=1, output_std=1.0)
    params = model.init(jax.random.PRNGKey(1), X)["params"]
    _, sown = model.apply({"params": params}, X, mutable=["intermediates"])
    pre, post = nets.hidden_activations(sown["intermediates"])["layer_1"]
    np.testing.assert_allclose(post, np.concatenate([np.sin(pre), np.cos(-np.asarray(pre))], axis=-1), rtol=1e-6)
    assert params["output"]["kernel"].shape == (8, 1)
    # The unit surgeries see two outputs per unit (as CReLU): a recycled unit loses both outgoing rows.
    info = BatchInfo(activations=nets.hidden_activations(sown["intermediates"]))
    new, _, _, m = redo(lambda k: model.init(k, X)["params"], fraction=0.25).apply(
        params, optax.adam(1e-3).init(params), (), info, jax.random.PRNGKey(3))
    assert float(m["mitigation/redo/recycled"]) == 1
    zero_rows = np.where(np.all(np.asarray(new["output"]["kernel"]) == 0, axis=1))[0]
    assert len(zero_rows) == 2 and zero_rows[1] - zero_rows[0] == 4  # its sin and cos outputs


@pytest.mark.parametrize("groups", [1, 2])
def test_groupnorm_normalises_each_group_of_units(groups):
    model = nets.MLP(hidden_sizes=(4,), activation="relu", output_dim=1, output_std=1.0, norm_groups=groups)
    params = model.init(jax.random.PRNGKey(1), X)["params"]
    params["layer_norm_1"]["scale"] = jnp.array([1.0, 2.0, 0.5, 1.5])
    params["layer_norm_1"]["bias"] = jnp.array([0.1, -0.2, 0.0, 0.3])
    _, sown = model.apply({"params": params}, X, mutable=["intermediates"])
    pre = np.asarray(nets.hidden_activations(sown["intermediates"])["layer_1"][0])
    z = np.asarray(X @ params["layer_1"]["kernel"] + params["layer_1"]["bias"])
    # torch.nn.GroupNorm(groups, C): per sample, each group of C / groups channels, eps 1e-5, biased variance.
    zg = z.reshape(len(z), groups, -1)
    normed = ((zg - zg.mean(-1, keepdims=True)) / np.sqrt(zg.var(-1, keepdims=True) + 1e-5)).reshape(z.shape)
    want = normed * np.asarray(params["layer_norm_1"]["scale"]) + np.asarray(params["layer_norm_1"]["bias"])
    np.testing.assert_allclose(pre, want, rtol=1e-4, atol=1e-5)


def test_every_new_method_and_option_is_reachable_from_a_toml_experiment(tmp_path):
    from plastix import experiments as ex
    from plastix.mitigations.build import check

    text = '''
description = "issue 16's methods as arms"
analyses = ["return"]
[base]
env_id = "GridWorld-v0"
activation = "relu"
rounds = 2
shift = "permute"
[arms]
redo_fraction = { mitigations = "redo", redo = { fraction = 0.3, score = "redo_inverted", every = 1000, end = 100000 } }
cbp_weight = { mitigations = "cbp", cbp = { utility = "weight" } }
juliani_ash = { mitigations = "w2_init,mix_reset,groupnorm", w2_init = { lam = 0.02 }, mix_reset = { fraction = 0.3 }, groupnorm = { groups = 2 } }
plasticine = { mitigations = "parseval,nap,trac,dff,sam", parseval = { lam = 0.002 }, nap = { every = 8 }, sam = { rho = 0.1 } }
[quick]
seeds = [0]
[paper]
seeds = [0]
'''
    path = tmp_path / "exp.toml"
    path.write_text(text)
    exp = ex.load(path, "quick")
    cfgs = {v.values["arm"]: ex.config_for(v.overrides, exp.seeds) for v in exp.variants}
    assert cfgs["redo_fraction"].redo.score == "redo_inverted" and cfgs["redo_fraction"].redo.end == 100000
    assert cfgs["cbp_weight"].cbp.utility == "weight"
    assert cfgs["juliani_ash"].groupnorm.groups == 2 and cfgs["juliani_ash"].mix_reset.fraction == 0.3
    assert cfgs["plasticine"].nap.every == 8 and cfgs["plasticine"].sam.rho == 0.1
    for cfg in cfgs.values():
        check(cfg)
