"""Networks: CleanRL's continuous actor-critic in Flax, with every hidden layer's activations recorded.

Parameter layout (plain pytrees, so neuron surgery is array indexing)::

    params = {"policy": {"layer_1": {"kernel": [n_in, H1], "bias": [H1]}, ..., "output": {...}},
              "value":  {"layer_1": ..., "output": {"kernel": [H, 1], "bias": [1]}},
              "log_std": [act_dim]}

Hidden layer ``layer_i`` records, through Flax ``sow`` in the ``"intermediates"`` collection, its
pre-activation ``z`` (key ``"layer_i/pre"``) and its post-activation output ``h = sigma(z)``
(key ``"layer_i/post"``); ``hidden_activations`` collects them as ``{name: (pre, post)}``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "none": lambda x: x,  # the OCP paper's "No-Act"
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    # CReLU (Abbas et al. 2023): [relu(x), relu(-x)], doubling the width seen by the next layer.
    "crelu": lambda x: jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1),
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The hidden activation called ``name`` (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"--activation: unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def orthogonal_dense(features: int, std: float, name: str) -> nn.Dense:
    """CleanRL's ``layer_init``: orthogonal kernel with gain ``std``, zero bias, float32 parameters."""
    return nn.Dense(
        features,
        kernel_init=nn.initializers.orthogonal(std),
        bias_init=nn.initializers.zeros,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        name=name,
    )


class MLP(nn.Module):
    """``Dense -> [LayerNorm] -> activation`` per hidden layer, then a linear ``output`` layer.

    Hidden kernels use orthogonal init with gain sqrt(2), the output layer gain ``output_std``
    (CleanRL: 0.01 for the policy mean, 1.0 for the value). LayerNorm, when on, sits after each hidden
    linear layer and before the activation (SCIENCE.md section 3).
    """

    hidden_sizes: Sequence[int]
    activation: str
    output_dim: int
    output_std: float
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        x = x.astype(jnp.float32)
        for i, width in enumerate(self.hidden_sizes, start=1):
            z = orthogonal_dense(width, math.sqrt(2.0), f"layer_{i}")(x)
            if self.layer_norm:
                z = nn.LayerNorm(name=f"layer_norm_{i}", param_dtype=jnp.float32)(z)
            x = act(z)
            self.sow("intermediates", f"layer_{i}/pre", z)
            self.sow("intermediates", f"layer_{i}/post", x)
        return orthogonal_dense(self.output_dim, self.output_std, "output")(x)


class ActorCritic(nn.Module):
    """CleanRL's continuous ``Agent``: separate policy-mean and value MLPs, state-independent log-std.

    Returns ``(mean [..., act_dim], log_std [act_dim], value [...])``.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    layer_norm: bool = False

    def setup(self):
        self.policy = MLP(self.hidden_sizes, self.activation, self.action_dim, 0.01, self.layer_norm)
        self.value = MLP(self.hidden_sizes, self.activation, 1, 1.0, self.layer_norm)
        self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,), jnp.float32)

    def __call__(self, obs: jax.Array):
        return self.policy(obs), self.log_std, self.value(obs)[..., 0]


def hidden_activations(intermediates: dict) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Flatten a sown ``intermediates`` collection into ``{"policy/layer_1": (pre, post), ...}``.

    Works for any Flax module that sows ``"<layer>/pre"`` and ``"<layer>/post"`` (each sown once per
    call) into ``"intermediates"``: call ``module.apply(variables, x, mutable=["intermediates"])`` and
    pass ``state["intermediates"]``.
    """
    out: dict[str, tuple[jax.Array, jax.Array]] = {}

    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            if isinstance(value, tuple):
                layer, kind = key.rsplit("/", 1)
                name = f"{prefix}{layer}"
                pre, post = out.get(name, (None, None))
                out[name] = (value[0], post) if kind == "pre" else (pre, value[0])
            else:
                walk(value, f"{prefix}{key}/")

    walk(intermediates, "")
    return out
