"""Mitigations on the CNN actor-critics: conv channels are neurons (ReDo, CBP, OCP perturbation), the heads
are the final layers (reset), CReLU and LayerNorm sit in the torso; each checked on parameters against a
case computed from the references' definitions (dopamine's recycler, Dohare et al.'s convGnT / AdamGnT)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import nets
from plastix.config import ConfigError, preset_config, validate
from plastix.mitigations import BatchInfo, adam_states, continual_backprop, ocp_perturb, redo, reset_layers
from plastix.mitigations._layers import hidden_layers, ones_like_tree, recycle_units
from plastix.mitigations.ocp import hidden_layer_magi
from plastix.mitigations.optimizer_state import ScaleByAdamGnTState, scale_by_adam_gnt
from plastix.mitigations.registry import CBPOptions, InjectionOptions
from plastix.mitigations.transforms import make_optimizer

NATURE = [
    ("torso/layer_1", ("torso", "layer_1"), [("torso", "layer_2")]),
    ("torso/layer_2", ("torso", "layer_2"), [("torso", "layer_3")]),
    ("torso/layer_3", ("torso", "layer_3"), [("torso", "layer_4")]),
    ("torso/layer_4", ("torso", "layer_4"), [("policy_output",), ("value_output",)]),
]
IMPALA = [
    (
        f"torso/layer_{4 * (s - 1) + 2 * b}",
        ("torso", f"stack_{s}_block_{b}_conv_0"),
        [("torso", f"stack_{s}_block_{b}_conv_1")],
    )
    for s in (1, 2, 3)
    for b in (1, 2)
]
IMPALA += [("torso/layer_14", ("torso", "dense"), [("policy_output",), ("value_output",)])]
X = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype(np.float32)
# Test arrays are numpy: an eager jax op compiles once per shape, which costs more than the tests themselves.


class TinyChain(nn.Module):
    """NatureCNN in miniature, by the chain convention: conv 3x3/2 (4 ch) -> conv 2x2/1 (5 ch) -> flatten
    (2 x 2 x 5, so the NHWC flatten order matters) -> dense 6, through ``nets.activation_point``."""

    activation: str = "relu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for i, (features, kernel, stride) in enumerate([(4, 3, 2), (5, 2, 1)], start=1):
            z = nets.orthogonal_conv(features, kernel, stride, 1.4, f"layer_{i}")(x)
            x = nets.activation_point(self, z, i, self.activation, self.layer_norm, conv=True)
        x = x.reshape(x.shape[:-3] + (-1,))
        z = nets.orthogonal_dense(6, 1.4, "layer_3")(x)
        return nets.activation_point(self, z, 3, self.activation, self.layer_norm, conv=False)


class TinyActorCritic(nn.Module):
    """``CNNActorCritic``'s layout (``torso``, ``policy_output``, ``value_output``) on a tiny torso: the chain
    above or the real ``ImpalaCNN`` with 2 stacks of 3 channels and a 5-unit dense."""

    torso_kind: str
    activation: str = "relu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        if self.torso_kind == "chain":
            torso = TinyChain(self.activation, self.layer_norm, name="torso")
        else:
            torso = nets.ImpalaCNN((3, 3), 5, self.activation, self.layer_norm, name="torso")
        h = torso(x)
        return nets.orthogonal_dense(3, 0.01, "policy_output")(h), nets.orthogonal_dense(
            1, 1.0, "value_output"
        )(h)[..., 0]


@functools.cache
def _net(torso, activation="relu", layer_norm=False):
    """Jitted ``init_fn(key) -> params`` and ``run(params) -> ((logits, value), activations)`` on ``X``."""
    model = TinyActorCritic(torso, activation, layer_norm)
    init_fn = jax.jit(lambda k: model.init(k, X)["params"])
    init_fn(jax.random.PRNGKey(0))  # compiled once here (lru_cache), not inside the first test's timing
    forward = jax.jit(lambda p: model.apply({"params": p}, X, mutable=["intermediates"]))

    def run(params):
        out, state = forward(params)
        return out, nets.hidden_activations(state["intermediates"])

    return init_fn, run


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return np.asarray(tree)


def _params(init_fn, seed):
    """Fresh parameters as numpy arrays."""
    return jax.tree.map(np.asarray, init_fn(jax.random.PRNGKey(seed)))


def _adam_state(params):
    """Adam's state after one update with gradient 0.1 everywhere (non-zero moments), compiled once."""
    tx = optax.adam(1e-3)
    return jax.jit(lambda p: tx.update(jax.tree.map(lambda x: jnp.full_like(x, 0.1), p), tx.init(p), p)[1])(
        params
    )


def _set(params, path, name, value):
    params = jax.tree.map(lambda a: a, params)  # a copy of the dicts
    node = params
    for k in path:
        node = node[k]
    node[name] = value
    return params


TINY = {
    "chain": [
        ("torso/layer_1", ("torso", "layer_1"), [("torso", "layer_2")]),
        ("torso/layer_2", ("torso", "layer_2"), [("torso", "layer_3")]),
        ("torso/layer_3", ("torso", "layer_3"), [("policy_output",), ("value_output",)]),
    ],
    "impala": [
        (
            f"torso/layer_{4 * (s - 1) + 2 * b}",
            ("torso", f"stack_{s}_block_{b}_conv_0"),
            [("torso", f"stack_{s}_block_{b}_conv_1")],
        )
        for s in (1, 2)
        for b in (1, 2)
    ]
    + [("torso/layer_10", ("torso", "dense"), [("policy_output",), ("value_output",)])],
}


def _wiring(params):
    return [(h.name, h.incoming, list(h.consumers)) for h in hidden_layers(params)]


def test_hidden_layers_of_the_nature_and_impala_torsos():
    for torso, expected, shape in (("nature", NATURE, (1, 84, 84, 4)), ("impala", IMPALA, (1, 64, 64, 3))):
        params = jax.eval_shape(nets.CNNActorCritic(3, torso).init, jax.random.PRNGKey(0), jnp.zeros(shape))[
            "params"
        ]
        assert _wiring(params) == expected


@pytest.mark.parametrize("torso", ["chain", "impala"])
def test_hidden_layers_are_the_channels_of_their_incoming_kernels(torso):
    init_fn, run = _net(torso)
    params = _params(init_fn, 1)
    assert _wiring(params) == TINY[torso]
    # Silencing filter 1 (kernel and bias) zeroes channel 1 of the sown pre-activation, and only it.
    for h in hidden_layers(params):
        pre = np.asarray(run(_silence(params, h.incoming, [1]))[1][h.name][0])
        assert np.all(pre[..., 1] == 0) and np.all(np.any(pre != 0, axis=tuple(range(pre.ndim - 1)))[[0, 2]])


def _silence(params, path, channels):
    """Zero the filters (kernel and bias) of ``channels``: their pre-activation is 0 on every input."""
    kernel, bias = _get(params, path + ("kernel",)).copy(), _get(params, path + ("bias",)).copy()
    kernel[..., channels], bias[channels] = 0.0, 0.0
    return _set(_set(params, path, "kernel", kernel), path, "bias", bias)


@pytest.mark.parametrize("torso,activation", [("chain", "crelu"), ("impala", "crelu")])
def test_recycling_silent_channels_leaves_the_outputs_unchanged(torso, activation):
    """Dopamine's recycler property: units that contribute nothing, recycled (fresh incoming weights, zero
    outgoing weights: next conv's input channels, the flattened dense rows in NHWC order, both heads), still
    contribute nothing, so the network function is unchanged; a missed outgoing weight would show."""
    init_fn, run = _net(torso, activation)
    params, fresh = _params(init_fn, 1), _params(init_fn, 2)
    layers = hidden_layers(params)
    masks = [
        np.arange(_get(params, h.incoming + ("kernel",)).shape[-1]) % 2 == i % 2 for i, h in enumerate(layers)
    ]
    for h, mask in zip(layers, masks):
        params = _silence(params, h.incoming, np.flatnonzero(mask))
    recycle = jax.jit(lambda p, f: recycle_units(p, ones_like_tree(p), f, list(zip(layers, masks)))[0])
    new = recycle(params, fresh)
    (logits, value), _ = run(params)
    (new_logits, new_value), _ = run(new)
    np.testing.assert_allclose(new_logits, logits, atol=1e-6)
    np.testing.assert_allclose(new_value, value, atol=1e-6)
    for h, mask in zip(
        layers, masks
    ):  # the silenced filters are fresh again (0 where they read a recycled unit)
        kernel, fresh_kernel = (
            _get(new, h.incoming + ("kernel",))[..., mask],
            _get(fresh, h.incoming + ("kernel",))[..., mask],
        )
        assert np.all((kernel == fresh_kernel) | (kernel == 0)) and np.all(
            np.any(kernel != 0, axis=(0, 1, 2)[: kernel.ndim - 1])
        )


def _kill(params, path, channels):
    bias = _get(params, path + ("bias",)).copy()
    bias[channels] = -100.0
    return _set(params, path, "bias", bias)


@pytest.mark.parametrize("torso", ["chain", "impala"])
def test_redo_recycles_dead_cnn_channels(torso):
    init_fn, run = _net(torso)
    params = _params(init_fn, 1)
    conv_path = ("torso", "layer_2") if torso == "chain" else ("torso", "stack_1_block_1_conv_0")
    dense_path = ("torso", "layer_3") if torso == "chain" else ("torso", "dense")
    conv_name, dense_name = (
        ("torso/layer_2", "torso/layer_3") if torso == "chain" else ("torso/layer_2", "torso/layer_10")
    )
    params = _kill(_kill(params, conv_path, [0, 2]), dense_path, [3])
    opt_state = _adam_state(params)
    (logits, value), acts = run(params)
    key = jax.random.PRNGKey(7)
    new, new_opt, _, metrics = jax.jit(redo(init_fn, tau=0.0).apply)(
        params, opt_state, (), BatchInfo(activations=acts), key
    )
    fresh = init_fn(key)
    # tau = 0: a unit is recycled when its activation is 0 on every sample and position.
    dead = {
        h.name: np.all(np.asarray(acts[h.name][1]) == 0, axis=tuple(range(acts[h.name][1].ndim - 1)))
        for h in hidden_layers(params)
    }
    assert float(metrics["mitigation/redo/recycled"]) == sum(int(m.sum()) for m in dead.values())
    assert dead[conv_name][[0, 2]].all() and dead[dense_name][3]
    mu, nu = adam_states(new_opt)[0].mu, adam_states(new_opt)[0].nu
    d = dead[conv_name]
    live_in = ~dead["torso/layer_1"] if torso == "chain" else slice(None)  # inputs from recycled units stay 0
    np.testing.assert_array_equal(
        _get(new, conv_path + ("kernel",))[:, :, live_in][..., d],
        _get(fresh, conv_path + ("kernel",))[:, :, live_in][..., d],
    )
    np.testing.assert_array_equal(_get(new, conv_path + ("bias",))[d], 0.0)
    if torso == "chain":  # layer_2's 2 x 2 x 5 map is flattened into layer_3: rows (y, x, c) in NHWC order
        outgoing = lambda tree: _get(tree, dense_path + ("kernel",)).reshape(4, 5, -1)[:, d]
    else:  # relu(conv_0) feeds the block's conv_1: its input-channel slice
        outgoing = lambda tree: _get(tree, ("torso", "stack_1_block_1_conv_1", "kernel"))[:, :, d]
    for tree in (new, mu, nu):
        np.testing.assert_array_equal(outgoing(tree), 0.0)
        for head in ("policy_output", "value_output"):  # the dense unit's outgoing weights: both heads' rows
            np.testing.assert_array_equal(_get(tree, (head, "kernel"))[dead[dense_name]], 0.0)
    for m in (mu, nu):
        np.testing.assert_array_equal(_get(m, conv_path + ("kernel",))[..., d], 0.0)
    (new_logits, new_value), _ = run(new)
    np.testing.assert_allclose(new_logits, logits, atol=1e-6)
    np.testing.assert_allclose(new_value, value, atol=1e-6)


def test_reset_final_resets_the_cnn_heads():
    init_fn, _ = _net("chain")
    params = _params(init_fn, 1)
    opt_state = _adam_state(params)
    key = jax.random.PRNGKey(4)
    new, new_opt, _, metrics = jax.jit(reset_layers(init_fn, "final").apply)(
        params, opt_state, (), BatchInfo(), key
    )
    fresh = init_fn(key)
    for head in ("policy_output", "value_output"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(_get(new, (head, leaf)), _get(fresh, (head, leaf)))
            np.testing.assert_array_equal(_get(adam_states(new_opt)[0].mu, (head, leaf)), 0.0)
    np.testing.assert_array_equal(
        _get(new, ("torso", "layer_3", "kernel")), _get(params, ("torso", "layer_3", "kernel"))
    )
    assert float(metrics["mitigation/reset/params_reset"]) == 6 * 3 + 3 + 6 + 1


def _conv_magi_by_hand(x, kernel_shape, z):
    """Layer-target MAGI of a SAME 3x3 / stride-1 conv from its input ``x [B, h, w, c_in]`` and its
    pre-activation ``z [B, h, w, C]``: ``dS/dW[a, b, j, i] = sum_{n, y, x} relu'(z[n, y, x, i]) x_pad[n, y + a, x + b, j]``."""
    kh, kw, _, _ = kernel_shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    active = (z > 0).astype(np.float64)
    h, w = z.shape[1:3]
    grad = np.zeros(kernel_shape)
    for a in range(kh):
        for b in range(kw):
            grad[a, b] = np.einsum("nyxj,nyxi->ji", xp[:, a : a + h, b : b + w], active)
    return np.abs(grad).reshape(-1, kernel_shape[-1]).mean(0)


def test_ocp_perturbation_finds_and_perturbs_trapped_impala_channels():
    init_fn, run = _net("impala")
    params = _kill(_params(init_fn, 1), ("torso", "stack_1_block_1_conv_0"), [0, 2])
    _, acts = run(params)
    magi = jax.jit(lambda p: hidden_layer_magi(lambda q, _: run(q)[1], p, None))(params)
    assert sorted(magi) == sorted(name for name, _, _ in TINY["impala"])
    # relu(conv_0) of stack 1 block 1 reads relu(stream) (sown layer_1) through a SAME 3x3 conv.
    kernel = _get(params, ("torso", "stack_1_block_1_conv_0", "kernel"))
    expected = _conv_magi_by_hand(
        np.asarray(acts["torso/layer_1"][1], np.float64),
        kernel.shape,
        np.asarray(acts["torso/layer_2"][0], np.float64),
    )
    np.testing.assert_allclose(magi["torso/layer_2"], expected, rtol=1e-4, atol=1e-6)
    # The dense layer: dS/dW_ji = sum_n relu'(z_ni) x_nj with x the flattened relu(stream).
    x = np.asarray(acts["torso/layer_9"][1], np.float64).reshape(X.shape[0], -1)
    active = (np.asarray(acts["torso/layer_10"][0]) > 0).astype(np.float64)
    np.testing.assert_allclose(magi["torso/layer_10"], np.abs(x.T @ active).mean(0), rtol=1e-4, atol=1e-6)
    trapped = np.asarray(magi["torso/layer_2"]) == 0
    assert trapped[[0, 2]].all()
    # The training diagnostics see the same units: MAGI and zero-gradient sets for relu(conv_0) too (they
    # used to skip every IMPALA layer whose parameters are not named like its activation).
    from plastix.diagnostics import training as diag

    assert diag.layers_with_kernels(params, sorted(acts)) == sorted(magi)
    diag_magi = jax.jit(lambda p: diag.layer_target_magi(lambda q, _: run(q)[1], p, None, sorted(magi)))(params)
    for name in magi:
        np.testing.assert_allclose(diag_magi[name], magi[name], rtol=1e-6, atol=1e-9)
    surgery = ocp_perturb(init_fn, threshold=0.0)
    new, _, _, metrics = jax.jit(surgery.apply)(
        params, _adam_state(params), (), BatchInfo(magi=magi), jax.random.PRNGKey(5)
    )
    assert float(metrics["mitigation/ocp_perturb/perturbed"]) == sum(
        int((np.asarray(g) == 0).sum()) for g in magi.values()
    )
    path = ("torso", "stack_1_block_1_conv_0", "kernel")
    np.testing.assert_array_equal(np.any(_get(new, path) != _get(params, path), axis=(0, 1, 2)), trapped)


def test_layernorm_and_crelu_sit_in_the_cnn_torsos():
    """Juliani & Ash's encoders (``shared/modules.py``): norm after each conv / dense, before the activation;
    a conv map is normalised per sample over (h, w, C) (their ``GroupNorm(1, C)``); CReLU concatenates
    ``relu(x), relu(-x)`` on the channel axis."""
    for torso, n, shape in (("nature", 4, (1, 84, 84, 4)), ("impala", 14, (1, 64, 64, 3))):
        model = nets.CNNActorCritic(3, torso, "crelu", True)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
        assert {f"layer_norm_{i}" for i in range(1, n + 1)} <= set(params["torso"])
        if torso == "nature":  # CReLU doubles the channels the next layer sees
            assert params["torso"]["layer_2"]["kernel"].shape == (4, 4, 64, 64)
    init_fn, run = _net("chain", "crelu", layer_norm=True)  # the same activation_point as both torsos
    _, acts = run(_params(init_fn, 1))
    for pre, post in acts.values():
        pre, post = np.asarray(pre, np.float64), np.asarray(post)
        per_sample = pre.reshape(pre.shape[0], -1)
        np.testing.assert_allclose(per_sample.mean(1), 0.0, atol=1e-4)
        np.testing.assert_allclose(per_sample.var(1), 1.0, atol=1e-2)
        np.testing.assert_array_equal(
            post, np.concatenate([np.maximum(pre, 0), np.maximum(-pre, 0)], -1).astype(np.float32)
        )


def _conv_cbp_case():
    """A chain torso: conv layer_1 (2 ch) -> 1x1 conv layer_2 (3 ch) -> flatten (2 x 2 x 3) -> dense layer_3 (4)
    -> two heads; post-activations given directly (CBP reads only them and the weights)."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    layer = lambda *shape: {"kernel": normal(*shape), "bias": normal(shape[-1])}
    params = {
        "torso": {"layer_1": layer(2, 2, 1, 2), "layer_2": layer(1, 1, 2, 3), "layer_3": layer(12, 4)},
        "policy_output": layer(4, 2),
        "value_output": layer(4, 1),
    }
    posts = {
        "torso/layer_1": normal(5, 3, 3, 2),
        "torso/layer_2": normal(5, 2, 2, 3),
        "torso/layer_3": normal(5, 4),
    }
    init_fn = lambda k: jax.tree.map(lambda p: jax.random.normal(k, p.shape, p.dtype), params)
    return params, {k: (v, v) for k, v in posts.items()}, init_fn


def test_cbp_conv_utility_and_replacement_match_convgnt_by_hand():
    p, acts, init_fn = _conv_cbp_case()
    h1, h2, h3 = (np.abs(acts[f"torso/layer_{i}"][1]) for i in (1, 2, 3))
    # convGnT: conv -> conv: mean_{b,y,x}|h_c| * mean_{kh,kw,out}|w_next[:, :, c, :]|;
    # conv -> flatten -> dense: mean over positions p of mean_b|h_{p,c}| * mean_out|w[(p, c), :]|.
    u1 = h1.mean((0, 1, 2)) * np.abs(p["torso"]["layer_2"]["kernel"]).mean((0, 1, 3))
    u2 = (h2.mean(0).reshape(4, 3) * np.abs(p["torso"]["layer_3"]["kernel"]).mean(1).reshape(4, 3)).mean(0)
    heads = np.concatenate([p["policy_output"]["kernel"], p["value_output"]["kernel"]], 1)
    u3 = h3.mean(0) * np.abs(heads).mean(1)
    # rr 0.34 of 2, 3, 4 eligible units (maturity 0): none of layer_1, one of layer_2 and one of layer_3 replaced.
    cbp = continual_backprop(init_fn, replacement_rate=0.34, maturity_threshold=0)
    state = cbp.init(p, None)
    assert state["torso/layer_1"].mean_activation.shape == (
        2,
    )  # feeds a conv: per channel, no fold (convGnT)
    key = jax.random.PRNGKey(2)
    new, _, s1, metrics = jax.jit(cbp.apply)(p, _adam_state(p), state, BatchInfo(activations=acts), key)
    new, s1 = jax.tree.map(np.asarray, new), jax.tree.map(np.asarray, s1)
    assert [float(metrics[f"mitigation/cbp/torso/layer_{i}/replaced"]) for i in (1, 2, 3)] == [0.0, 1.0, 1.0]
    c, j = int(np.argmin(u2)), int(np.argmin(u3))
    for name, u, replaced in (
        ("torso/layer_1", u1, []),
        ("torso/layer_2", u2, [c]),
        ("torso/layer_3", u3, [j]),
    ):
        np.testing.assert_allclose(
            s1[name].utility, np.where(np.isin(np.arange(len(u)), replaced), 0.0, 0.01 * u), rtol=1e-5
        )
    fresh = jax.tree.map(np.asarray, init_fn(key))
    np.testing.assert_array_equal(
        new["torso"]["layer_2"]["kernel"][..., c], fresh["torso"]["layer_2"]["kernel"][..., c]
    )
    assert new["torso"]["layer_2"]["bias"][c] == 0.0 and s1["torso/layer_2"].age[c] == 0
    rows = np.arange(12) % 3 == c  # the flattened (y, x, c) rows channel c feeds
    np.testing.assert_array_equal(new["torso"]["layer_3"]["kernel"][rows], 0.0)
    # Fold (GnT): layer_3's bias gains, over those rows, the bias-corrected mean activation (age 1: the batch
    # mean) times the old outgoing weights; layer_3's own replaced unit j has its bias zeroed instead.
    mean = acts["torso/layer_2"][1].mean(0).reshape(12)
    fold = (mean[rows, None] * p["torso"]["layer_3"]["kernel"][rows]).sum(0)
    others = np.arange(4) != j
    np.testing.assert_allclose(
        new["torso"]["layer_3"]["bias"][others], (p["torso"]["layer_3"]["bias"] + fold)[others], rtol=1e-5
    )
    # No fold into a conv consumer: layer_2's other biases are untouched.
    np.testing.assert_array_equal(
        new["torso"]["layer_2"]["bias"][np.arange(3) != c], p["torso"]["layer_2"]["bias"][np.arange(3) != c]
    )
    for head in ("policy_output", "value_output"):
        np.testing.assert_array_equal(new[head]["kernel"][j], 0.0)


def test_adam_gnt_is_optax_adam_while_no_count_is_reset():
    rng = np.random.default_rng(1)
    params = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    ref, gnt = optax.scale_by_adam(eps=1e-5), scale_by_adam_gnt(eps=1e-5)
    s_ref, s_gnt = ref.init(params), gnt.init(params)
    ref_update, gnt_update = jax.jit(ref.update), jax.jit(gnt.update)
    for _ in range(4):
        g = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        u_ref, s_ref = ref_update(g, s_ref, params)
        u_gnt, s_gnt = gnt_update(g, s_gnt, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_gnt, u_ref)  # XLA rounding
    np.testing.assert_array_equal(s_gnt.count["w"], 4)


def test_cbp_resets_adam_gnt_counts_so_a_replaced_units_next_update_is_a_first_step():
    """Dohare et al.'s AdamGnT keeps a step per weight and CBP sets it to 0 for a replaced unit's incoming and
    outgoing weights (``gnt.py`` / ``convGnT.py`` ``update_optim_params``): the next update of those weights is
    Adam's first step, ``-lr * g / (|g| + eps)``; every other weight continues its own bias correction."""
    f32 = lambda x: np.array(x, np.float32)
    params = {
        "layer_1": {"kernel": f32([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]), "bias": f32([0.1, 0.2, 0.3])},
        "output": {"kernel": f32([[1.0, -3.0], [0.5, 0.5], [-2.0, 0.0]]), "bias": f32([0.0, 1.0])},
    }
    init_fn = lambda k: jax.tree.map(lambda p: jax.random.normal(k, p.shape, p.dtype), params)
    post = f32([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])  # unit 1 has the lowest contribution (hand case)
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    tx = make_optimizer(lr, b1=b1, b2=b2, eps=eps, per_element_count=True)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(2)
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(5)]
    opt_state = tx.init(params)
    for g in grads[:4]:
        _, opt_state = update(g, opt_state, params)
    cbp = continual_backprop(init_fn, replacement_rate=1.0 / 3.0 + 1e-6, maturity_threshold=0)
    info = BatchInfo(activations={"layer_1": (post, post)})
    _, opt_state, _, metrics = jax.jit(cbp.apply)(
        params, opt_state, cbp.init(params, None), info, jax.random.PRNGKey(3)
    )
    assert float(metrics["mitigation/cbp/replaced"]) == 1
    is_gnt = lambda n: isinstance(n, ScaleByAdamGnTState)
    gnt = next(s for s in jax.tree.leaves(opt_state, is_leaf=is_gnt) if is_gnt(s))
    replaced = {
        "layer_1": {"kernel": np.array([[0, 1, 0]] * 2, bool), "bias": np.array([0, 1, 0], bool)},
        "output": {"kernel": np.array([[0, 0], [1, 1], [0, 0]], bool), "bias": np.zeros(2, bool)},
    }
    jax.tree.map(lambda c, r: np.testing.assert_array_equal(c, np.where(r, 0, 4)), gnt.count, replaced)
    updates, _ = update(grads[4], opt_state, params)

    def adam_by_hand(history, t0):  # numpy Adam over the gradients since the weight's count restarted at t0
        m = v = 0.0
        for t, g in enumerate(history[t0:], start=1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        return -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)

    for path in (("layer_1", "kernel"), ("layer_1", "bias"), ("output", "kernel")):
        history = [g[path[0]][path[1]].astype(np.float64) for g in grads]
        r = replaced[path[0]][path[1]]
        expected = np.where(r, adam_by_hand(history, 4), adam_by_hand(history, 0))
        np.testing.assert_allclose(updates[path[0]][path[1]], expected, rtol=1e-4)
        np.testing.assert_allclose(
            np.asarray(updates[path[0]][path[1]])[r], -lr * np.sign(history[4][r]), rtol=1e-4
        )


def test_cbp_uses_adam_gnt_by_default_and_cnn_options_are_checked():
    from plastix.mitigations.build import build_optimizer, check

    grid = dataclasses.replace(  # 2 rounds: the at-switch surgeries (reset, injection) fire at the switch
        preset_config("cleanrl-discrete"), grid_obs="image", grid_size=18, patch_grid=2, activation="relu", rounds=2
    )
    for adam_gnt in (True, False):
        cfg = dataclasses.replace(grid, mitigations="cbp", cbp=CBPOptions(adam_gnt=adam_gnt))
        state = jax.eval_shape(build_optimizer(cfg, check(cfg), None, 1e-3).init, {"w": jnp.zeros(2)})
        found = [
            n
            for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, ScaleByAdamGnTState))
            if isinstance(n, ScaleByAdamGnTState)
        ]
        assert bool(found) == adam_gnt
    # CReLU and LayerNorm are accepted on the CNN...
    validate(dataclasses.replace(grid, mitigations="crelu,layernorm,redo,cbp,ocp_perturb,reset"))
    # ... but not with injection's two-layer head, which re-runs the torso's dense with a plain ReLU.
    with pytest.raises(ConfigError, match="injection.*crelu"):
        validate(dataclasses.replace(grid, mitigations="crelu,injection"))
    validate(
        dataclasses.replace(grid, mitigations="crelu,injection", injection=InjectionOptions(head_layers=1))
    )


def _image_grid_config(**kw):
    from plastix.mitigations.registry import OCPPerturbOptions, ReDoOptions, ResetOptions

    return dataclasses.replace(
        preset_config("cleanrl-discrete"),
        grid_obs="image",
        grid_size=4,
        patch_grid=2,
        cnn_torso="impala",
        num_envs=2,
        num_steps=8,
        num_minibatches=2,
        update_epochs=1,
        total_timesteps=32,
        log_every=1,
        diagnostics_every=0,
        curvature_every=0,
        quiet=True,
        mitigations="redo,cbp,ocp_perturb,reset,crelu,layernorm",
        redo=ReDoOptions(tau=1.0, every=1),
        cbp=CBPOptions(replacement_rate=0.5, maturity_threshold=0),
        ocp_perturb=OCPPerturbOptions(threshold=1.0, relative=True, every=2, at_switch=False),
        reset=ResetOptions(layers="final", every=2, at_switch=False),
        **{"activation": "relu", **kw},
    )


def test_the_trainer_gives_the_cnn_its_mitigations():
    """``plastix train``'s agent on the image gridworld: the CNN gets CReLU and LayerNorm, and every unit
    surgery finds the CNN's layers (shapes only: traced, not compiled)."""
    from plastix.algos.ppo import Agent
    from plastix.envs import EnvSpec

    spec = EnvSpec("gridworld", (8, 8, 3), np.uint8, True, 4, None, None, 20, "same_step", "state")
    agent = Agent(_image_grid_config(), spec)
    assert (
        isinstance(agent.net, nets.CNNActorCritic)
        and agent.net.activation == "crelu"
        and agent.net.layer_norm
    )
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(agent.init_params, key)
    assert {"layer_norm_1", "layer_norm_14"} <= set(params["torso"])
    obs = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.uint8)

    def surgery_metrics(p, o, k):
        info = agent.batch_info(p, None, o, True).replace(phase="step")
        opt_state = agent.optimizer(1e-3).init(p)
        return agent.surgery.apply(p, opt_state, agent.surgery.init(p, k), info, k)[3]

    keys = set(jax.eval_shape(surgery_metrics, params, obs, key))
    for name, _, _ in IMPALA:  # (the OCP perturbation names a layer only when the trainer's MAGI covers it)
        assert {
            f"mitigation/redo/{name}/recycled",
            f"mitigation/cbp/{name}/replaced",
            f"mitigation/ocp_perturb/{name}/perturbed",
        } <= keys
    assert "mitigation/reset/params_reset" in keys
    # The image gridworld's default 16 x 16 images are too small for the Nature torso: refused, not trained
    # into a 0-input dense layer.
    with pytest.raises(ConfigError, match="cnn-torso auto.*16x16"):
        Agent(
            dataclasses.replace(_image_grid_config(), cnn_torso="auto"),
            dataclasses.replace(spec, obs_shape=(16, 16, 3)),
        )


def test_the_cnn_takes_the_activation_flag():
    """``--activation`` acts on CleanRL's CNN torsos (it used to be replaced by ReLU without a word): a tanh
    torso's sown post-activations are tanh of its pre-activations; injection's two-layer head, which re-runs
    the torso's dense with a plain ReLU, is refused with a non-ReLU activation."""
    from plastix.algos.ppo import Agent
    from plastix.envs import EnvSpec

    spec = EnvSpec("gridworld", (8, 8, 3), np.uint8, True, 4, None, None, 20, "same_step", "state")
    cfg = dataclasses.replace(_image_grid_config(), mitigations="", activation="tanh")
    agent = Agent(cfg, spec)
    assert agent.net.activation == "tanh"
    params = agent.init_params(jax.random.PRNGKey(0))
    obs = jax.random.randint(jax.random.PRNGKey(1), (2, 8, 8, 3), 0, 255).astype(jnp.uint8)
    pre, post = agent.forward_acts(params, obs)["torso/layer_2"]
    np.testing.assert_allclose(post, np.tanh(pre), rtol=1e-6, atol=1e-6)
    grid = dataclasses.replace(preset_config("cleanrl-discrete"), grid_obs="image", grid_size=18, patch_grid=2,
                               rounds=2)
    with pytest.raises(ConfigError, match="injection.*--activation tanh"):
        validate(dataclasses.replace(grid, activation="tanh", mitigations="injection"))
    validate(dataclasses.replace(grid, activation="relu", mitigations="injection"))


@pytest.mark.slow
def test_cnn_training_run_applies_every_unit_surgery(tmp_path):
    """One tiny image-gridworld run (IMPALA torso with CReLU and LayerNorm) in which ReDo, continual backprop,
    the OCP perturbation and the reset of the heads all act, each logging what it touched."""
    from plastix.store import read_metrics
    from plastix.training import train

    df = read_metrics(train(_image_grid_config(run_dir=str(tmp_path / "run"))))
    total = df.groupby("key").value.sum()
    # 2 updates x 2 gradient steps; tau = 1 recycles every unit below its layer's mean activity.
    assert total["mitigation/redo/recycled"] > 0 and total["mitigation/redo/torso/layer_2/recycled"] > 0
    assert total["mitigation/cbp/replaced"] > 0 and total["mitigation/cbp/torso/layer_14/replaced"] > 0
    assert total["mitigation/ocp_perturb/perturbed"] > 0
    # The heads: policy 4 actions x (2 x 256 CReLU features) + 4, value 512 + 1; fired on 2 of 4 steps.
    assert total["mitigation/reset/params_reset"] == 2 * (4 * 512 + 4 + 512 + 1)
