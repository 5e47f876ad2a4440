"""Plasticity injection (Nikishin et al. 2023): output unchanged at injection, only head a learns after."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import nets
from plastix.mitigations import (
    INJECTION_KEY,
    BatchInfo,
    add_injection_heads,
    injection_active,
    injection_freeze,
    make_injected_apply,
    make_optimizer,
    plasticity_injection,
    scheduled,
)

X = jax.random.normal(jax.random.PRNGKey(0), (32, 3))


def _changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("head_layers", [1, 2])
def test_injection_output_unchanged_and_only_new_head_learns(head_layers):
    model = nets.ActorCritic(action_dim=2, hidden_sizes=(8, 8), activation="relu")
    init_fn = lambda k: model.init(k, X)["params"]
    params = add_injection_heads(init_fn(jax.random.PRNGKey(1)), head_layers)
    forward = make_injected_apply(model, head_layers)
    tx = make_optimizer(1e-2, max_grad_norm=0.5, final_transforms=[injection_freeze(head_layers)])
    opt_state = tx.init(params)
    y_mean = jax.random.normal(jax.random.PRNGKey(2), (32, 2))
    y_value = jax.random.normal(jax.random.PRNGKey(3), (32,))

    def loss_fn(p, active):
        mean, _, value = forward(p, X, active)
        return jnp.mean((mean - y_mean) ** 2) + jnp.mean((value - y_value) ** 2)

    @jax.jit
    def train_step(p, o):
        grads = jax.grad(loss_fn)(p, injection_active(o))
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    # Before injection the heads a, b are frozen and the output is the plain network's.
    p0 = params
    for _ in range(3):
        params, opt_state = train_step(params, opt_state)
    assert not _changed(params[INJECTION_KEY], p0[INJECTION_KEY])
    assert _changed(params["policy"]["output"], p0["policy"]["output"])
    plain = model.apply({"params": {k: v for k, v in params.items() if k != INJECTION_KEY}}, X)
    for a, b in zip(forward(params, X, injection_active(opt_state)), plain):
        np.testing.assert_allclose(a, b, atol=1e-6)

    surgery = scheduled(plasticity_injection(init_fn, head_layers), at_switch=True, name="injection")
    s_state = surgery.init(params, jax.random.PRNGKey(0))
    apply = jax.jit(surgery.apply)
    before = forward(params, X, injection_active(opt_state))
    injected, opt_state, s_state, metrics = apply(
        params, opt_state, s_state, BatchInfo(task_switch=True), jax.random.PRNGKey(4)
    )
    assert float(metrics["mitigation/injection/injected"]) == 1.0
    assert float(injection_active(opt_state)) == 1.0
    after = forward(injected, X, injection_active(opt_state))
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, atol=1e-5)  # output unchanged at injection time
    assert _changed(injected[INJECTION_KEY], params[INJECTION_KEY])  # fresh heads drawn

    params = injected
    for _ in range(3):
        params, opt_state = train_step(params, opt_state)
    f_names = ["output"] if head_layers == 1 else ["layer_2", "output"]
    for net in ("policy", "value"):
        heads, old_heads = params[INJECTION_KEY][net], injected[INJECTION_KEY][net]
        assert _changed(heads["a"], old_heads["a"])  # the new head a learns
        assert not _changed(heads["b"], old_heads["b"])  # b is frozen
        for name in f_names:
            assert not _changed(params[net][name], injected[net][name])  # the old head f is frozen
        assert _changed(params[net]["layer_1"], injected[net]["layer_1"])  # the trunk still learns

    # A second injection: a 2-layer head cannot be folded into f, so it is a no-op; a linear head is
    # re-injected (f <- f + a - b, fresh a == b; tests/test_juliani_ash.py checks it at every switch).
    again, _, _, metrics = apply(
        params, opt_state, s_state, BatchInfo(task_switch=True), jax.random.PRNGKey(5)
    )
    assert float(metrics["mitigation/injection/injected"]) == float(head_layers == 1)
    assert _changed(again, params) == (head_layers == 1)


def test_injection_on_bare_mlp():
    model = nets.MLP(hidden_sizes=(8,), activation="tanh", output_dim=1, output_std=1.0)
    init_fn = lambda k: model.init(k, X)["params"]
    params = add_injection_heads(init_fn(jax.random.PRNGKey(1)), head_layers=2)  # head = whole MLP
    tx = optax.chain(optax.adam(1e-2), injection_freeze(2))
    opt_state = tx.init(params)
    forward = make_injected_apply(model, 2)
    before = forward(params, X, 0.0)
    new, opt_state, _, _ = plasticity_injection(init_fn, 2).apply(
        params, opt_state, (), BatchInfo(), jax.random.PRNGKey(2)
    )
    np.testing.assert_allclose(forward(new, X, injection_active(opt_state)), before, atol=1e-5)


# ------------------------------------------------------------------ discrete MLP and CNN actor-critics
def _leaves(tree, prefix=()):
    """``{path: leaf}`` of a nested dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {p: v for k, sub in tree.items() for p, v in _leaves(sub, prefix + (k,)).items()}


def _changed_paths(new, old):
    old = _leaves(old)
    return {p for p, v in _leaves(new).items() if not np.array_equal(v, old[p])}


DISCRETE_CASES = {
    # name: (model, obs, head_layers, paths of the head f; everything not in f and not an injection head
    # is the trunk, which keeps training)
    "mlp": (nets.DiscreteActorCritic(num_actions=3, hidden_sizes=(8, 8), activation="relu"),
            jax.random.normal(jax.random.PRNGKey(0), (16, 5)), 2,
            [("policy", "layer_2"), ("policy", "output"), ("value", "layer_2"), ("value", "output")]),
    "impala_h1": (nets.CNNActorCritic(num_actions=3, torso="impala"),
                  jax.random.randint(jax.random.PRNGKey(0), (8, 16, 16, 3), 0, 256).astype(jnp.uint8), 1,
                  [("policy_output",), ("value_output",)]),
    "impala_h2": (nets.CNNActorCritic(num_actions=3, torso="impala"),
                  jax.random.randint(jax.random.PRNGKey(0), (8, 16, 16, 3), 0, 256).astype(jnp.uint8), 2,
                  [("torso", "dense"), ("policy_output",), ("value_output",)]),
    "nature_h2": (nets.CNNActorCritic(num_actions=3, torso="nature"),
                  jax.random.uniform(jax.random.PRNGKey(0), (8, 36, 36, 3)), 2,
                  [("torso", "layer_4"), ("policy_output",), ("value_output",)]),
}


@pytest.mark.parametrize("case", list(DISCRETE_CASES))
def test_injection_on_discrete_actor_critics(case):
    """Logits and value unchanged at injection; afterwards only a (and the trunk: the MLPs' first layers, the
    CNN torso below the head) learn, f and b stay fixed."""
    model, obs, head_layers, f_paths = DISCRETE_CASES[case]
    init_fn = lambda k: model.init(k, obs)["params"]
    params = add_injection_heads(init_fn(jax.random.PRNGKey(1)), head_layers)
    net_key = "_" if isinstance(model, nets.CNNActorCritic) else None
    if net_key:  # one pair for both outputs, shaped like the head's part of the tree
        assert set(params[INJECTION_KEY]) == {"_"}
        f_leaves = {p + (n,) for p in f_paths for n in ("kernel", "bias")}
        assert set(_leaves(params[INJECTION_KEY]["_"]["a"])) == f_leaves
    forward = make_injected_apply(model, head_layers)
    tx = make_optimizer(1e-2, max_grad_norm=0.5, final_transforms=[injection_freeze(head_layers)])
    opt_state = tx.init(params)
    target = jax.random.randint(jax.random.PRNGKey(2), (obs.shape[0],), 0, 3)
    y_value = jax.random.normal(jax.random.PRNGKey(3), (obs.shape[0],))

    def loss_fn(p, active):
        logits, value = forward(p, obs, active)
        policy_loss = optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
        return policy_loss + jnp.mean((value - y_value) ** 2)

    @jax.jit
    def train_step(p, o):
        grads = jax.grad(loss_fn)(p, injection_active(o))
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    p0 = params
    for _ in range(2):
        params, opt_state = train_step(params, opt_state)
    assert not _changed(params[INJECTION_KEY], p0[INJECTION_KEY])  # a, b frozen before injection
    plain = model.apply({"params": {k: v for k, v in params.items() if k != INJECTION_KEY}}, obs)
    for x, y in zip(forward(params, obs, injection_active(opt_state)), plain):
        np.testing.assert_allclose(x, y, atol=1e-6)

    surgery = scheduled(plasticity_injection(init_fn, head_layers), at_switch=True, name="injection")
    before = forward(params, obs, injection_active(opt_state))
    injected, opt_state, _, metrics = jax.jit(surgery.apply)(
        params, opt_state, surgery.init(params, jax.random.PRNGKey(0)), BatchInfo(task_switch=True),
        jax.random.PRNGKey(4),
    )
    assert float(metrics["mitigation/injection/injected"]) == 1.0
    for x, y in zip(forward(injected, obs, injection_active(opt_state)), before):  # (logits, value)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert _changed(injected[INJECTION_KEY], params[INJECTION_KEY])  # fresh heads drawn

    params = injected
    for _ in range(3):
        params, opt_state = train_step(params, opt_state)
    changed = _changed_paths(params, injected)
    leaves = set(_leaves(params))
    in_f = lambda p: any(p[: len(f)] == f for f in f_paths)
    a_leaves = {p for p in leaves if p[0] == INJECTION_KEY and p[2] == "a"}
    trunk = {p for p in leaves if p[0] != INJECTION_KEY and not in_f(p)}
    assert a_leaves and trunk and changed == a_leaves | trunk  # f and b fixed; a and the trunk all learn


# ---------------------------------------------------------------------------------- plastix train
TRAIN_SMALL = ["--num-minibatches", "2", "--update-epochs", "1", "--log-every", "1", "--diagnostics-every",
               "0", "--curvature-every", "0", "--mitigations", "injection", "--quiet"]


@pytest.mark.parametrize(
    "env_args, round_2",
    [
        (["--env-id", "GridWorld-v0", "--grid-size", "5", "--grid-max-steps", "20", "--num-levels", "4",
          "--num-envs", "8", "--num-steps", "16", "--steps-per-round", "256"], 3),  # 2 updates per round
        (["--env-id", "CoinrunEasy-v0", "--num-levels", "4", "--heldout-levels", "2", "--heldout-episodes",
          "1", "--num-envs", "2", "--num-steps", "16", "--steps-per-round", "32"], 2),  # 1 update per round
    ],
    ids=["gridworld", "coinrun"],
)
def test_injection_fires_in_training_at_the_second_round(tmp_path, env_args, round_2):
    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    argv = [*env_args, "--shift", "permute", "--rounds", "2", *TRAIN_SMALL, "--run-dir", str(tmp_path / "r")]
    df = read_metrics(train(parse_train_args(argv)))
    assert np.isfinite(df.value).all()
    applied = df[df.key == "mitigation/injection/applied"].set_index("update").value.to_dict()
    injected = df[df.key == "mitigation/injection/injected"].set_index("update").value.to_dict()
    expected = {u: float(u == round_2) for u in range(1, 2 * round_2 - 1)}
    assert applied == expected and injected == expected  # the first update of round 2 (its round_start call)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env-id", "CoinrunEasy-v0", "--injection.head_layers", "3"], r"1 \(the output layers\) or 2"),
        (["--env-id", "GridWorld-v0", "--hidden-sizes", "8", "8", "--injection.head_layers", "4"],
         r"in \[1, 3\]"),
    ],
)
def test_injection_head_layers_must_fit_the_network(argv, message):
    from plastix.cli import parse_train_args
    from plastix.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(parse_train_args([*argv, "--mitigations", "injection", "--rounds", "2"]), check_env=True)
