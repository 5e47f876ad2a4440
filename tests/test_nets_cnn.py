"""CNN and discrete-action actor-critics: shapes, sown activations, float32 parameters."""

import jax
import jax.numpy as jnp
import pytest

import plastix  # noqa: F401
from plastix.nets import CNNActorCritic, DiscreteActorCritic, hidden_activations


@pytest.mark.parametrize(
    "torso,shape,n_layers",
    [("nature", (84, 84, 4), 4), ("impala", (64, 64, 3), 14)],
)
def test_cnn_actor_critic(torso, shape, n_layers):
    net = CNNActorCritic(7, torso)
    x = jax.random.randint(jax.random.PRNGKey(0), (3,) + shape, 0, 256, jnp.int32).astype(jnp.uint8)
    variables = jax.jit(net.init)(jax.random.PRNGKey(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    (logits, value), state = jax.jit(lambda v, x: net.apply(v, x, mutable=["intermediates"]))(variables, x)
    assert logits.shape == (3, 7) and value.shape == (3,) and logits.dtype == value.dtype == jnp.float32
    acts = hidden_activations(state["intermediates"])
    assert sorted(acts) == sorted(f"torso/layer_{i}" for i in range(1, n_layers + 1))
    for name, (pre, post) in acts.items():
        assert pre.shape == post.shape and pre.shape[0] == 3
        assert jnp.array_equal(post, jax.nn.relu(pre))
    assert acts["torso/layer_1"][1].ndim == 4  # conv: [B, H, W, C]
    assert acts[f"torso/layer_{n_layers}"][1].ndim == 2  # dense
    # CleanRL heads: policy gain 0.01 gives near-uniform logits at init.
    assert float(jnp.abs(logits).max()) < 0.5


def test_nature_cnn_param_names_match_sown_layers():
    net = CNNActorCritic(4, "nature")
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 84, 84, 4), jnp.uint8))
    assert sorted(variables["params"]["torso"]) == ["layer_1", "layer_2", "layer_3", "layer_4"]
    assert variables["params"]["torso"]["layer_1"]["kernel"].shape == (8, 8, 4, 32)


def test_discrete_mlp_actor_critic():
    net = DiscreteActorCritic(4, (32, 32), "relu")
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 192), jnp.float32)
    variables = net.init(jax.random.PRNGKey(1), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    assert sorted(variables["params"]) == ["policy", "value"]
    (logits, value), state = net.apply(variables, x, mutable=["intermediates"])
    assert logits.shape == (5, 4) and value.shape == (5,)
    assert sorted(hidden_activations(state["intermediates"])) == ["policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2"]
