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

    # A second injection is a no-op.
    again, _, _, metrics = apply(
        params, opt_state, s_state, BatchInfo(task_switch=True), jax.random.PRNGKey(5)
    )
    assert float(metrics["mitigation/injection/injected"]) == 0.0
    assert not _changed(again, params)


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
