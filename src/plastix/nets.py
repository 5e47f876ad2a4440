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

import functools
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
    # Deep Fourier features as Plasticine's DFF4Linear / DFF4Conv2d: [sin(x), cos(-x)], doubling the width too.
    "dff": lambda x: jnp.concatenate([jnp.sin(x), jnp.cos(-x)], axis=-1),
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
    norm_groups: int = 0  # > 0: GroupNorm with this many groups instead of LayerNorm (``hidden_norm``)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        x = x.astype(jnp.float32)
        for i, width in enumerate(self.hidden_sizes, start=1):
            z = orthogonal_dense(width, math.sqrt(2.0), f"layer_{i}")(x)
            if self.layer_norm or self.norm_groups:
                z = hidden_norm(f"layer_norm_{i}", -1, self.norm_groups)(z)
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
    norm_groups: int = 0

    def setup(self):
        self.policy = MLP(self.hidden_sizes, self.activation, self.action_dim, 0.01, self.layer_norm, self.norm_groups)
        self.value = MLP(self.hidden_sizes, self.activation, 1, 1.0, self.layer_norm, self.norm_groups)
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


# ================================================================================================ discrete
# Discrete-action actor-critics (categorical policy). Parameters are float32; image inputs may be uint8
# (scaled by 1/255 inside). Every hidden unit's activation is sown as "layer_i/pre" / "layer_i/post", so
# ``hidden_activations`` and the diagnostics work unchanged; conv layers sow ``[B, H, W, C]`` maps
# (dormancy averages a channel's activation over batch and spatial axes).


def orthogonal_conv(features: int, kernel: int, stride: int, std: float, name: str, padding: str = "VALID") -> nn.Conv:
    """CleanRL's ``layer_init`` for ``Conv2d``: orthogonal kernel with gain ``std``, zero bias, float32."""
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=padding,
        kernel_init=nn.initializers.orthogonal(std),
        bias_init=nn.initializers.zeros,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        name=name,
    )


def hidden_norm(name: str, axes: int | tuple[int, ...] = -1, norm_groups: int = 0, epsilon: float = 1e-6) -> nn.Module:
    """The normalisation before a hidden activation: LayerNorm over ``axes`` (``norm_groups == 0``), or
    Juliani & Ash's GroupNorm (``--mitigations groupnorm``: ``nn.GroupNorm(norm_groups, C)`` in
    ``shared/modules.py`` ``map_activation``, PyTorch's eps 1e-5): the ``C`` channels in ``norm_groups``
    groups, each normalised over its channels (and a conv map's positions), per-channel scale and bias. With
    one group it is a LayerNorm over the same axes. Parameters ``scale``/``bias`` ``[C]`` under ``name``."""
    if norm_groups:
        reduction = (axes,) if isinstance(axes, int) else axes
        return nn.GroupNorm(num_groups=norm_groups, reduction_axes=reduction, epsilon=1e-5, param_dtype=jnp.float32,
                            name=name)
    return nn.LayerNorm(reduction_axes=axes, feature_axes=-1, epsilon=epsilon, param_dtype=jnp.float32, name=name)


def activation_point(module: nn.Module, z: jax.Array, index: int, activation: str, layer_norm: bool,
                     conv: bool, norm_groups: int = 0) -> jax.Array:
    """Hidden layer ``layer_<index>`` of a CNN torso: ``[LayerNorm ->] activation``, pre and post sown.

    LayerNorm sits before the activation, as in Juliani & Ash's encoders (``shared/modules.py``
    ``map_activation``); on a conv map ``[..., h, w, C]`` it normalises each sample over ``(h, w, C)`` with a
    per-channel scale and bias (their ``GroupNorm(1, C)``), on a dense layer over its features. Its
    parameters are ``layer_norm_<index>`` (the convention of ``plastix.mitigations._layers``).
    """
    if layer_norm or norm_groups:
        axes = (-3, -2, -1) if conv else -1
        z = hidden_norm(f"layer_norm_{index}", axes, norm_groups)(z)
    h = activation_fn(activation)(z)
    module.sow("intermediates", f"layer_{index}/pre", z)
    module.sow("intermediates", f"layer_{index}/post", h)
    return h


def torch_default_uniform(fan_in: int) -> Callable:
    """PyTorch's default init of ``nn.Linear`` / ``nn.Conv2d`` (``reset_parameters``): weights
    ``kaiming_uniform_(a=sqrt(5))`` and biases alike are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, with
    ``fan_in = in_features`` (dense) or ``in_channels * kh * kw`` (conv). An initializer for any shape."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_conv(features: int, kernel: int, in_features: int, name: str, padding: str = "SAME") -> nn.Conv:
    """A stride-1 ``kernel x kernel`` conv with PyTorch's default init (``torch_default_uniform`` with
    ``fan_in = in_features * kernel^2``), float32: ``nn.Conv2d`` without CleanRL's ``layer_init``."""
    init = torch_default_uniform(in_features * kernel * kernel)
    return nn.Conv(features, (kernel, kernel), padding=padding, kernel_init=init, bias_init=init,
                   param_dtype=jnp.float32, dtype=jnp.float32, name=name)


def torch_default_dense(features: int, in_features: int, name: str) -> nn.Dense:
    """A dense layer with PyTorch's default init (``fan_in = in_features``): ``nn.Linear`` without ``layer_init``."""
    init = torch_default_uniform(in_features)
    return nn.Dense(features, kernel_init=init, bias_init=init, param_dtype=jnp.float32, dtype=jnp.float32,
                    name=name)


def _image_input(x: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1]; float inputs are only cast."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


class NatureCNN(nn.Module):
    """Mnih et al. (2015)'s torso, as CleanRL's ``ppo_atari``: conv 32x8x8/4, conv 64x4x4/2, conv 64x3x3/1,
    dense 512, ReLU after each (orthogonal gain sqrt(2)). Input ``[B, H, W, C]`` (H, W >= 36), output ``[B, 512]``.

    Param ``layer_i`` produces the units sown as ``layer_i`` (as in ``MLP``): ``layer_1..3`` conv, ``layer_4`` dense.
    ``activation`` (``"relu"``, or ``"crelu"``: twice the channels seen by the next layer) and ``layer_norm``
    act at every activation point (``activation_point``).
    """

    hidden: int = 512
    activation: str = "relu"
    layer_norm: bool = False
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _image_input(x)
        layers = [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
        for i, (features, kernel, stride) in enumerate(layers, start=1):
            z = orthogonal_conv(features, kernel, stride, math.sqrt(2.0), f"layer_{i}")(x)
            x = activation_point(self, z, i, self.activation, self.layer_norm, True, self.norm_groups)
        x = x.reshape(x.shape[:-3] + (-1,))
        z = orthogonal_dense(self.hidden, math.sqrt(2.0), f"layer_{len(layers) + 1}")(x)
        return activation_point(self, z, len(layers) + 1, self.activation, self.layer_norm, False, self.norm_groups)


class ImpalaCNN(nn.Module):
    """Espeholt et al. (2018)'s residual torso as CleanRL's ``ppo_procgen``: per channel count in ``channels``
    a conv 3x3 (SAME) + max-pool 3x3/2 + two residual blocks ``x + conv(relu(conv(relu(x))))``; then ReLU,
    flatten, dense ``hidden`` + ReLU. Input ``[B, H, W, C]``, output ``[B, hidden]``.

    Init as CleanRL's: the torso (every conv and the dense) keeps PyTorch's default init, ``U(+-1/sqrt(fan_in))``
    for weights and biases (``torch_default_uniform``); only ``CNNActorCritic``'s two heads are orthogonal.
    Every ReLU is a sown layer, numbered in depth order: per stack
    ``relu(block input)``, ``relu(conv_0)`` for each of the 2 blocks (4 per stack), then the final
    ``relu(stream)`` and ``relu(dense)`` (14 layers for 3 stacks). The ``pre`` of a block-input ReLU is the
    residual stream, not one conv's output; conv parameters are named ``stack_s_conv``,
    ``stack_s_block_b_conv_0|1`` and the dense ``dense``. ``activation`` (``"relu"`` or ``"crelu"``) and
    ``layer_norm`` (before each activation, pre-activation-ResNet style) act at every ReLU
    (``activation_point``; LayerNorm parameters ``layer_norm_k`` for sown layer ``k``).
    """

    channels: Sequence[int] = (16, 32, 32)
    hidden: int = 256
    activation: str = "relu"
    layer_norm: bool = False
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _image_input(x)
        layer = 0

        def relu(z, conv=True):
            nonlocal layer
            layer += 1
            return activation_point(self, z, layer, self.activation, self.layer_norm, conv, self.norm_groups)

        def torch_conv(features, name, inputs):  # fan_in from what the conv reads (CReLU doubles it)
            return torch_default_conv(features, 3, inputs.shape[-1], name)(inputs)

        for s, features in enumerate(self.channels, start=1):
            x = torch_conv(features, f"stack_{s}_conv", x)
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
            for b in (1, 2):
                h = torch_conv(features, f"stack_{s}_block_{b}_conv_0", relu(x))
                x = x + torch_conv(features, f"stack_{s}_block_{b}_conv_1", relu(h))
        x = relu(x)
        x = x.reshape(x.shape[:-3] + (-1,))
        return relu(torch_default_dense(self.hidden, x.shape[-1], "dense")(x), conv=False)


class CNNActorCritic(nn.Module):
    """CleanRL's ``ppo_atari`` / ``ppo_procgen`` ``Agent``: a shared CNN torso, a categorical policy head
    (``Dense(num_actions)``, orthogonal gain 0.01) and a value head (``Dense(1)``, gain 1).

    ``torso``: ``"nature"`` (Atari) or ``"impala"`` (Procgen). Input ``[B, H, W, C]`` (uint8 or float).
    Returns ``(logits [B, num_actions] float32, value [B] float32)``. Params:
    ``{"torso": {...}, "policy_output": {...}, "value_output": {...}}``; activations ``"torso/layer_i"``.
    ``activation`` (``"relu"`` or ``"crelu"``) and ``layer_norm`` are the torso's (``activation_point``).
    """

    num_actions: int
    torso: str = "nature"
    activation: str = "relu"
    layer_norm: bool = False
    norm_groups: int = 0

    def setup(self):
        if self.torso not in ("nature", "impala"):
            raise ValueError(f"--torso: unknown CNN torso {self.torso!r}; allowed: 'nature', 'impala'")
        torso = NatureCNN if self.torso == "nature" else ImpalaCNN
        self.torso_net = torso(activation=self.activation, layer_norm=self.layer_norm, norm_groups=self.norm_groups,
                               name="torso")
        self.policy_head = orthogonal_dense(self.num_actions, 0.01, "policy_output")
        self.value_head = orthogonal_dense(1, 1.0, "value_output")

    def __call__(self, obs: jax.Array):
        h = self.torso_net(obs)
        return self.policy_head(h), self.value_head(h)[..., 0]


class DiscreteActorCritic(nn.Module):
    """CleanRL's ``ppo.py`` discrete ``Agent`` for vector observations: separate policy and value ``MLP``s
    (the same module as ``ActorCritic``), the policy's output being categorical logits (gain 0.01).

    Returns ``(logits [..., num_actions], value [...])``. Params ``{"policy": MLP, "value": MLP}``, so the
    MLP surgeries and ``hidden_activations`` keys (``"policy/layer_1"``) are those of ``ActorCritic``.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    layer_norm: bool = False
    norm_groups: int = 0

    def setup(self):
        self.policy = MLP(self.hidden_sizes, self.activation, self.num_actions, 0.01, self.layer_norm, self.norm_groups)
        self.value = MLP(self.hidden_sizes, self.activation, 1, 1.0, self.layer_norm, self.norm_groups)

    def __call__(self, obs: jax.Array):
        return self.policy(obs), self.value(obs)[..., 0]


# =========================================================================================== Juliani & Ash
# The networks of Juliani & Ash 2024 (awjuliani/deep-rl-plasticity: ``shared/modules.py``,
# ``algos/ppo/model.py``): one encoder shared by a linear policy head and a linear value head, every layer at
# PyTorch's default init. Parameters: ``{"torso": {"layer_i": ..., "layer_norm_i": ...}, "policy_output": ...,
# "value_output": ...}`` (the layout of ``CNNActorCritic``); activations are sown as ``"torso/layer_i"``.

JA_CONV_CHANNELS = (32, 64, 128, 128)
"""Output channels of the four 4x4/stride-2 convolutions of their ``ConvEncoder.conv64`` (CoinRun, 64x64)."""
JA_MIN_IMAGE_SIDE = 16
"""Smallest image side the four stride-2 convolutions reduce to at least 1x1 (side -> floor(side / 2) each)."""


def torch_conv(features: int, in_channels: int, name: str) -> nn.Conv:
    """``nn.Conv2d(in_channels, features, 4, 2, 1)`` of their conv encoders, at PyTorch's default init
    (``torch_default_uniform``)."""
    init = torch_default_uniform(in_channels * 4 * 4)
    return nn.Conv(features, (4, 4), (2, 2), padding=((1, 1), (1, 1)), kernel_init=init, bias_init=init,
                   param_dtype=jnp.float32, dtype=jnp.float32, name=name)


class JulianiAshEncoder(nn.Module):
    """Their ``LinearEncoder`` (``encoder="mlp"``) or ``ConvEncoder.conv64`` (``encoder="conv"``).

    ``mlp``: per width ``h`` of ``hidden_sizes`` (theirs: 256, 256) ``Dense(h) -> [LayerNorm] -> activation``.
    ``conv``: four ``Conv 4x4/2 (pad 1) -> [GroupNorm(1)] -> activation`` with ``JA_CONV_CHANNELS``, flatten,
    ``Dense(hidden_sizes[-1]) -> [LayerNorm] -> activation`` (their ``Linear(2048, h_size)`` on 64x64 input).
    With CReLU every layer has half the units (their ``h_size // 2`` and halved channels), so the width after
    the activation is the same as with ReLU. Their ``layernorm`` option is a ``LayerNorm`` before each dense
    activation and a ``GroupNorm(1, C)`` (normalising over channels and space) before each conv activation;
    PyTorch's eps 1e-5. Input ``[B, D]`` or ``[B, H, W, C]`` (uint8 scaled by 1/255); output ``[B, width]``.
    """

    encoder: str = "mlp"
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    layer_norm: bool = False
    norm_groups: int = 0  # > 0: their GroupNorm(norm_groups, C) at every layer (map_activation's groupnorm)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        split = 2 if self.activation == "crelu" else 1  # CReLU doubles each layer's outputs: half the units
        layer = 0

        def unit(z, norm):
            nonlocal layer
            if self.norm_groups:
                z = nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-5, param_dtype=jnp.float32,
                                 name=f"layer_norm_{layer}")(z)
            elif self.layer_norm:
                z = norm(epsilon=1e-5, param_dtype=jnp.float32, name=f"layer_norm_{layer}")(z)
            h = act(z)
            self.sow("intermediates", f"layer_{layer}/pre", z)
            self.sow("intermediates", f"layer_{layer}/post", h)
            return h

        widths = tuple(self.hidden_sizes)
        if self.encoder == "conv":
            x = _image_input(x)
            for channels in JA_CONV_CHANNELS:
                layer += 1
                z = torch_conv(channels // split, x.shape[-1], f"layer_{layer}")(x)
                x = unit(z, functools.partial(nn.GroupNorm, num_groups=1))
            x = x.reshape(x.shape[:-3] + (-1,))
            widths = widths[-1:]
        elif self.encoder == "mlp":
            x = x.astype(jnp.float32)
        else:
            raise ValueError(f"JulianiAshEncoder: unknown encoder {self.encoder!r}; allowed: 'mlp', 'conv'")
        for width in widths:
            layer += 1
            x = unit(torch_default_dense(width // split, x.shape[-1], f"layer_{layer}")(x), nn.LayerNorm)
        return x


class JulianiAshActorCritic(nn.Module):
    """Their ``PPOModel``: a shared ``JulianiAshEncoder`` (key ``"torso"``), then ``policy_output``
    (``Linear(h, num_actions)``, categorical logits) and ``value_output`` (``Linear(h, 1)``), PyTorch's init.

    Returns ``(logits [B, num_actions], value [B])`` like ``CNNActorCritic``.
    """

    num_actions: int
    encoder: str = "mlp"
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    layer_norm: bool = False
    norm_groups: int = 0

    @nn.compact
    def __call__(self, obs: jax.Array):
        h = JulianiAshEncoder(self.encoder, self.hidden_sizes, self.activation, self.layer_norm, self.norm_groups,
                              name="torso")(obs)
        logits = torch_default_dense(self.num_actions, h.shape[-1], "policy_output")(h)
        value = torch_default_dense(1, h.shape[-1], "value_output")(h)
        return logits, value[..., 0]
