"""Juliani & Ash 2024 as their code runs it (awjuliani/deep-rl-plasticity): the preset, their networks, AdamW,
the optimizer rebuilt at every shift, the norm-form L2-init penalty and plasticity injection at every shift.

Expected values are transcribed from their files (``hyperparams.yaml``, ``shared/modules.py``,
``algos/ppo/{model,trainer}.py``) or computed by hand from their definitions, never from plastix."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import experiments as ex
from plastix import nets
from plastix.config import ConfigError, preset_config, validate
from plastix.mitigations import (
    INJECTION_KEY,
    BatchInfo,
    L2InitState,
    adam_states,
    add_injection_heads,
    injection_active,
    injection_freeze,
    l2_init,
    make_injected_apply,
    make_optimizer,
    map_adam_states,
    plasticity_injection,
    scheduled,
)
from plastix.mitigations import build as mitigation_build


def _arm(name: str, scale: str = "paper"):
    """The TrainConfig of the juliani-ash experiment's arm ``name`` on the gridworld with permute."""
    exp = ex.load("juliani-ash", scale)
    (variant,) = [v for v in exp.variants if v.values["arm"] == name and v.values.get("env_id") == "GridWorld-v0"
                  and v.values.get("shift") == "permute"]
    return ex.config_for(variant.overrides, exp.seeds)


# ---------------------------------------------------------------------------------------------- preset
def test_preset_is_their_hyperparameters():
    # hyperparams.yaml: model.{h_size 256, lr 0.0005, l2_norm 0.0, activation relu}, ppo_trainer.{batch_size 64,
    # buffer_size 1024, num_passes 3, ent_coef 0.02, gamma 0.99, lambda 0.95, clip_param 0.2}; trainer.py: loss =
    # pg + 0.5 * F.mse_loss (no value clip; plastix's v_loss is CleanRL's 0.5 * mse, so vf_coef 1.0),
    # clip_grad_norm_ 0.5, advantages normalised per minibatch; model.py:
    # optim.AdamW(lr, weight_decay=l2_norm) with torch's eps 1e-8, rebuilt by adapt() at every shift.
    cfg = preset_config("juliani-ash")
    their = dict(network="juliani-ash", hidden_sizes=(256, 256), learning_rate=0.0005, lr_schedule="off",
                 weight_decay=0.0, activation="relu", ent_coef=0.02, gamma=0.99, gae_lambda=0.95, clip_coef=0.2,
                 update_epochs=3, vf_coef=1.0, clip_vloss=False, max_grad_norm=0.5, norm_adv=True, adam_eps=1e-8,
                 normalize_obs="off", normalize_reward="off", rebuild_optimizer_at_switch=True)
    assert {k: getattr(cfg, k) for k in their} == their
    assert (cfg.batch_size, cfg.minibatch_size) == (1024, 64)  # buffer_size, batch_size
    validate(cfg.__class__(**{**cfg.__dict__, "env_id": "GridWorld-v0"}), check_env=True)


def test_preset_loss_is_their_loss_on_a_hand_case():
    # algos/ppo/trainer.py update_model: adv normalised with torch's unbiased std + 1e-8; ratio = exp(new - old);
    # policy_loss = -min(ratio * adv, clamp(ratio, 0.8, 1.2) * adv).mean(); value_loss = F.mse_loss(V, R);
    # loss = policy_loss + 0.5 * value_loss + ent_coef * -entropy.
    from plastix.algos.ppo import Categorical, Minibatch, ppo_loss

    rng = np.random.default_rng(0)
    logits, values = rng.normal(size=(6, 4)), rng.normal(size=6)
    actions, old_logp = rng.integers(0, 4, 6), np.log(rng.uniform(0.1, 0.5, 6))
    adv, ret = rng.normal(size=6), rng.normal(size=6)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ratio = np.exp(logp[np.arange(6), actions] - old_logp)
    a = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    pg = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a).mean()
    entropy = -(np.exp(logp) * logp).sum(-1).mean()
    theirs = pg + 0.5 * np.mean((values - ret) ** 2) + 0.02 * -entropy

    mb = Minibatch(jnp.zeros((6, 1)), jnp.asarray(actions), jnp.asarray(old_logp), jnp.asarray(values + 5.0),
                   jnp.asarray(adv), jnp.asarray(ret), jnp.ones(6, bool))  # stored values far off: no value clip
    apply_fn = lambda p, obs: (jnp.asarray(logits), jnp.asarray(values))
    loss = jax.jit(lambda m: ppo_loss(None, apply_fn, m, preset_config("juliani-ash"), Categorical)[0])(mb)
    np.testing.assert_allclose(float(loss), theirs, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(env_id="HalfCheetah-v4"), "categorical policy"),
        (dict(env_id="CoinrunEasy-v0", cnn_torso="impala"), "--cnn-torso impala"),
        (dict(activation="crelu", hidden_sizes=(255, 256)), "even widths"),
        (dict(env_id="CoinrunEasy-v0", hidden_sizes=(128, 256)), "equal widths"),
        (dict(mitigations="injection", rounds=3), "--injection.head_layers: 2 on --network juliani-ash"),
    ],
)
def test_network_options_that_do_not_fit_fail_before_compute(overrides, message):
    import dataclasses

    cfg = dataclasses.replace(preset_config("juliani-ash"), **{"env_id": "GridWorld-v0", **overrides})
    with pytest.raises(ConfigError, match=message):
        validate(cfg, check_env=True)


def test_two_layer_injection_heads_cannot_fire_twice():
    import dataclasses

    cfg = dataclasses.replace(preset_config("cleanrl-discrete"), mitigations="injection", rounds=3, num_envs=1,
                              num_steps=64, total_timesteps=3 * 64)
    with pytest.raises(ConfigError, match="injected only once"):
        validate(cfg, check_env=True)
    validate(dataclasses.replace(cfg, rounds=2, total_timesteps=2 * 64), check_env=True)  # one switch: fine


# -------------------------------------------------------------------------------------------- networks
def _torch_shapes(encoder: str, activation: str, layer_norm: bool, obs: int, actions: int) -> dict:
    """Their modules' parameter shapes (PyTorch layout), written from shared/modules.py by hand."""
    h, half = 256, (2 if activation == "crelu" else 1)
    if encoder == "mlp":  # LinearEncoder: enc_a Linear(obs, h'), enc_b Linear(h' * half, h'), h' = h // half
        layers = {"enc_a": (h // half, obs), "enc_b": (h // half, h)}
        norms = {"enc_a": h // half, "enc_b": h // half}
    else:  # ConvEncoder.conv64: Conv2d(3, 32, 4, 2, 1) ... Linear(2048, h); CReLU: conv_depths halved
        depths = [32, 32, 64, 64, 128, 128, 128, h] if half == 1 else [16, 32, 32, 64, 64, 128, 64, h // 2]
        layers = {"conv1": (depths[0], 3, 4, 4), "conv2": (depths[2], depths[1], 4, 4),
                  "conv3": (depths[4], depths[3], 4, 4), "conv4": (depths[6], depths[5], 4, 4),
                  "linear": (depths[7], 2048)}
        norms = {name: shape[0] for name, shape in layers.items()}  # GroupNorm(1, C) / LayerNorm(h)
    shapes = {f"{n}.weight": s for n, s in layers.items()} | {f"{n}.bias": (s[0],) for n, s in layers.items()}
    if layer_norm:
        shapes |= {f"{n}.norm.{w}": (c,) for n, c in norms.items() for w in ("weight", "bias")}
    return shapes | {"policy.weight": (actions, h), "policy.bias": (actions,), "value.weight": (1, h),
                     "value.bias": (1,)}


def _as_torch(params: dict, encoder: str) -> dict:
    """plastix's parameter shapes in PyTorch's layout (Dense [in, out] -> [out, in]; Conv HWIO -> OIHW)."""
    names = ["enc_a", "enc_b"] if encoder == "mlp" else ["conv1", "conv2", "conv3", "conv4", "linear"]
    out = {}
    for i, name in enumerate(names, start=1):
        kernel = params["torso"][f"layer_{i}"]["kernel"]
        out[f"{name}.weight"] = tuple(kernel.shape[::-1]) if kernel.ndim == 2 else (
            kernel.shape[3], kernel.shape[2], kernel.shape[0], kernel.shape[1])
        out[f"{name}.bias"] = params["torso"][f"layer_{i}"]["bias"].shape
        if f"layer_norm_{i}" in params["torso"]:
            norm = params["torso"][f"layer_norm_{i}"]
            out[f"{name}.norm.weight"], out[f"{name}.norm.bias"] = norm["scale"].shape, norm["bias"].shape
    for head, key in (("policy", "policy_output"), ("value", "value_output")):
        out[f"{head}.weight"] = tuple(params[key]["kernel"].shape[::-1])
        out[f"{head}.bias"] = params[key]["bias"].shape
    return out


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("activation, layer_norm", [("relu", False), ("crelu", False), ("relu", True)])
def test_network_parameter_shapes_are_theirs(encoder, activation, layer_norm):
    obs = jnp.zeros((1, 75)) if encoder == "mlp" else jnp.zeros((1, 64, 64, 3), jnp.uint8)  # 5x5x3 / CoinRun
    net = nets.JulianiAshActorCritic(15, encoder, (256, 256), activation, layer_norm)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), obs)["params"]  # shapes only: no compute
    assert _as_torch(params, encoder) == _torch_shapes(encoder, activation, layer_norm, 75, 15)
    logits, value = jax.eval_shape(net.apply, {"params": params}, obs)
    assert logits.shape == (1, 15) and value.shape == (1,)


def test_network_init_is_pytorch_default_uniform():
    # nn.Linear / nn.Conv2d reset_parameters: weight kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    # bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = in_features, or in_channels * 4 * 4.
    def check(leaf, fan_in, name):
        w, bound = np.asarray(leaf).ravel(), 1 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.75 * bound, name
        if w.size > 500:
            np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1, err_msg=name)  # a uniform's std

    net = nets.JulianiAshActorCritic(15, "mlp", (256, 256))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 75)))["params"]
    for layer, fan_in in ((params["torso"]["layer_1"], 75), (params["torso"]["layer_2"], 256),
                          (params["policy_output"], 256), (params["value_output"], 256)):
        check(layer["kernel"], fan_in, "kernel")
        check(layer["bias"], fan_in, "bias")
    conv = nets.torch_conv(128, 64, "layer_3")  # the conv encoder's layers (their initializers, no conv run)
    for init, shape in ((conv.kernel_init, (4, 4, 64, 128)), (conv.bias_init, (128,))):
        check(init(jax.random.PRNGKey(1), shape), 64 * 16, "conv")


# ------------------------------------------------------------------------------------------- optimizer
def _one_step(cfg, params, grads):
    names = mitigation_build.check(cfg)
    tx = mitigation_build.build_optimizer(cfg, names, None, cfg.learning_rate)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_l2_arm_is_adamw_decoupled_decay():
    # torch.optim.AdamW step 1: p <- p (1 - lr wd), then p <- p - lr m_hat / (sqrt(v_hat) + eps) with
    # m_hat = g, v_hat = g^2 (bias-corrected first step). Coupled L2 would add wd * p to g instead, which flips
    # the first entry's step (g = -5e-4, wd * p = +1e-3).
    cfg = _arm("l2")
    lr, wd, eps = 5e-4, 1e-3, 1e-8
    p = np.array([1.0, 100.0])
    g = np.array([-5e-4, 0.3])  # global norm < 0.5: not clipped
    expected = p * (1 - lr * wd) - lr * g / (np.abs(g) + eps)
    new, _ = _one_step(cfg, {"w": jnp.asarray(p)}, {"w": jnp.asarray(g)})
    np.testing.assert_allclose(np.asarray(new["w"]), expected, rtol=0, atol=1e-12)


def test_l2_init_norm_form_gradient_hand_case():
    # Their trainer: loss += 0.01 * torch.norm(cat(params) - cat(params_0), 2): one norm over all parameters,
    # gradient 0.01 * d / ||d||; with d = (3, 4) over two leaves: 0.01 * (0.6, 0.8). Zero at theta_0.
    theta0 = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    theta = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    zero = jax.tree.map(jnp.zeros_like, theta)
    tx = l2_init(0.01, "norm")
    grads, _ = tx.update(zero, tx.init(theta0), theta)
    np.testing.assert_allclose([grads["a"][0], grads["b"][0]], [0.006, 0.008], atol=1e-12)
    grads, _ = tx.update(zero, tx.init(theta0), theta0)
    np.testing.assert_array_equal(np.concatenate([grads["a"], grads["b"]]), 0.0)
    squared, _ = l2_init(0.01).update(zero, l2_init(0.01).init(theta0), theta)  # the default is unchanged
    np.testing.assert_allclose([squared["a"][0], squared["b"][0]], [0.06, 0.08], atol=1e-12)


def test_l2_init_arm_penalty_is_clipped_with_the_loss_gradient():
    # In their trainer the penalty is part of the loss, so clip_grad_norm_(0.5) scales loss and penalty
    # gradients together: Adam's first step is the sign of clip(g + pen). Here g = (5, -0.02), pen = (0, 0.01):
    # sign(g + pen) = (+, -); clipping g alone first would give g * 0.1 + pen = (0.5, +0.008): (+, +).
    cfg = _arm("l2_init")
    theta0 = {"w": jnp.array([0.0, 0.0])}
    theta = {"w": jnp.array([0.0, 1.0])}  # d = (0, 1): pen = 0.01 * (0, 1)
    names = mitigation_build.check(cfg)
    tx = mitigation_build.build_optimizer(cfg, names, None, cfg.learning_rate)
    state = tx.init(theta0)
    assert isinstance(state[0], L2InitState)  # first in the chain: before the clip
    updates, _ = tx.update({"w": jnp.array([5.0, -0.02])}, state, theta)
    np.testing.assert_array_equal(np.sign(np.asarray(updates["w"])), [-1.0, 1.0])  # step = -lr * sign


ARMS = list(ex.load("juliani-ash", "paper").arms)
FAST_ARMS = ("warm_start", "l2_init")  # the others are the same check (slow: a compile each)


@pytest.mark.parametrize("arm", [a if a in FAST_ARMS else pytest.param(a, marks=pytest.mark.slow) for a in ARMS])
def test_optimizer_is_rebuilt_at_every_switch_in_every_arm(arm):
    # shift_dist() -> model.adapt() -> a new optim.AdamW in every condition: Adam's step count restarts at 0
    # (and its moments are empty) after each shift, whatever the arm; the L2-init anchor theta_0 is kept
    # (their init_model is copied once, in the trainer's constructor).
    import dataclasses

    from plastix.algos.ppo import Agent
    from plastix.envs import EnvSpec

    spec = EnvSpec("gridworld", (75,), jnp.float32, True, 4, None, None, 20, "same_step", "state")
    for arm in [arm]:
        cfg = dataclasses.replace(_arm(arm), hidden_sizes=(8, 8))
        agent = Agent(cfg, spec)
        params = agent.init_params(jax.random.PRNGKey(0))
        opt_state = agent.optimizer(cfg.learning_rate).init(params)
        opt_state = map_adam_states(opt_state, lambda s: s._replace(count=s.count + 7,
                                                                    mu=jax.tree.map(jnp.ones_like, s.mu)))
        apply = jax.jit(agent.surgery.apply)  # as the trainer's round_start call before a new round's rollout
        info = agent.batch_info(params, None, jnp.zeros((1, 75)), True).replace(phase="round_start")
        state = agent.surgery.init(params, jax.random.PRNGKey(1))
        for switch in range(2):  # the 2nd and 3rd rounds
            params, opt_state, state, _ = apply(params, opt_state, state, info, jax.random.PRNGKey(2 + switch))
            for adam in adam_states(opt_state):
                assert int(adam.count) == 0, arm
                assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(adam.mu)), arm
            opt_state = map_adam_states(opt_state, lambda s: s._replace(count=s.count + 5))
        if arm == "l2_init":
            (anchor,) = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, L2InitState))
                         if isinstance(n, L2InitState)]
            assert not any(np.array_equal(a, 0 * a) for a in jax.tree.leaves(anchor.init_params))


# ------------------------------------------------------------------------------------------- injection
def test_injection_at_every_switch_folds_a_minus_b_and_keeps_outputs():
    # Their Injector (shared/modules.py): at the first shift original = the trained head f, new_a fresh,
    # new_b = deepcopy(new_a); at each later shift original = Linear(f + a - b), fresh new_a == new_b; the
    # forward is original(x) + new_a(x) - new_b(x).detach(), and `original` keeps training (no detach).
    obs = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
    net = nets.JulianiAshActorCritic(3, "mlp", (8, 8))
    init_fn = lambda k: add_injection_heads(net.init(k, obs)["params"], 1)
    params = init_fn(jax.random.PRNGKey(1))
    forward = make_injected_apply(net, 1)
    tx = make_optimizer(1e-2, max_grad_norm=0.5, final_transforms=[injection_freeze(1, freeze_head=False)])
    opt_state = tx.init(params)
    targets = jax.random.normal(jax.random.PRNGKey(2), (16, 3)), jax.random.normal(jax.random.PRNGKey(3), (16,))

    @jax.jit
    def train(p, o):
        loss = lambda q: sum(jnp.mean((y - t) ** 2) for y, t in zip(forward(q, obs, injection_active(o)), targets))
        updates, o = tx.update(jax.grad(loss)(p), o, p)
        return optax.apply_updates(p, updates), o

    surgery = scheduled(plasticity_injection(init_fn, 1), at_switch=True, name="injection")
    s_state = surgery.init(params, jax.random.PRNGKey(0))
    apply = jax.jit(surgery.apply)
    heads = ("policy_output", "value_output")
    for switch in range(3):  # the shifts into rounds 2, 3 and 4
        params, opt_state = train(params, opt_state)
        before = forward(params, obs, injection_active(opt_state))
        pair = params[INJECTION_KEY]["_"]
        new, opt_state, s_state, metrics = apply(params, opt_state, s_state, BatchInfo(task_switch=True),
                                                 jax.random.PRNGKey(10 + switch))
        assert float(metrics["mitigation/injection/injected"]) == 1.0, switch
        for y, y0 in zip(forward(new, obs, injection_active(opt_state)), before):
            np.testing.assert_allclose(y, y0, atol=1e-5)  # outputs unchanged at each injection
        for head in heads:  # f <- f + a - b (a == b before the first injection: f unchanged)
            for leaf in ("kernel", "bias"):
                folded = params[head][leaf] + pair["a"][head][leaf] - pair["b"][head][leaf]
                np.testing.assert_allclose(new[head][leaf], folded, atol=1e-6)
                a, b = new[INJECTION_KEY]["_"]["a"][head][leaf], new[INJECTION_KEY]["_"]["b"][head][leaf]
                np.testing.assert_array_equal(a, b)  # fresh a == b
                assert not np.array_equal(a, pair["a"][head][leaf])  # freshly drawn at this shift
        if switch:
            assert not np.array_equal(pair["a"]["policy_output"]["kernel"], pair["b"]["policy_output"]["kernel"])
        trained, _ = train(new, opt_state)
        assert not np.array_equal(trained["policy_output"]["kernel"], new["policy_output"]["kernel"])  # f trains
        params = new


def test_conv_encoder_refuses_images_its_convolutions_cannot_reduce():
    import dataclasses

    from plastix.algos.ppo import Agent
    from plastix.envs import EnvSpec

    cfg = dataclasses.replace(preset_config("juliani-ash"), env_id="GridWorld-v0", grid_obs="image")
    small = EnvSpec("gridworld", (10, 10, 3), jnp.uint8, True, 4, None, None, 20, "same_step", "state")
    with pytest.raises(ConfigError, match="images of 10x10 are too small"):
        Agent(cfg, small)  # 10 -> 5 -> 2 -> 1 -> 0: no output left after the 4th stride-2 convolution
    Agent(cfg, dataclasses.replace(small, obs_shape=(16, 16, 3)))


@pytest.mark.slow
def test_preset_trains_in_rounds_with_injection_and_a_new_optimizer_at_every_switch(tmp_path):
    """End to end: `--preset juliani-ash` on the gridworld, 3 rounds of 1 update: injection and the optimizer
    rebuild fire at the first update of rounds 2 and 3; J&A's regression keys are logged."""
    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    argv = ["--preset", "juliani-ash", "--env-id", "GridWorld-v0", "--grid-size", "5", "--grid-max-steps", "20",
            "--num-levels", "4", "--num-envs", "8", "--num-steps", "16", "--num-minibatches", "2",
            "--update-epochs", "1", "--hidden-sizes", "16", "16", "--steps-per-round", "128", "--rounds", "3",
            "--shift", "permute", "--mitigations", "injection", "--injection.head-layers", "1",
            "--injection.no-freeze-head", "--log-every", "1", "--diagnostics-every", "1", "--curvature-every", "0",
            "--quiet", "--run-dir", str(tmp_path / "r")]
    df = read_metrics(train(parse_train_args(argv)))
    assert np.isfinite(df.value).all()
    for key in ("mitigation/injection/injected", "mitigation/optimizer_rebuild/applied"):
        assert df[df.key == key].set_index("update").value.to_dict() == {1: 0.0, 2: 1.0, 3: 1.0}, key
    assert {"model/weight_m", "torso/layer_2/dead_units"} <= set(df.key)
