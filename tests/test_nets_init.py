"""ImpalaCNN starts as CleanRL's ppo_procgen Agent: PyTorch's default init on the torso, orthogonal heads.

PyTorch's `nn.Conv2d` / `nn.Linear` `reset_parameters`: `kaiming_uniform_(weight, a=sqrt(5))`, i.e.
`U(-b, b)` with `b = gain * sqrt(3 / fan_in)`, `gain = sqrt(2 / (1 + a^2)) = sqrt(1/3)`, so `b = 1/sqrt(fan_in)`;
the bias is `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`; `fan_in = in_channels * kh * kw` (conv) or `in_features`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.nets import CNNActorCritic

# fan_in of every torso layer of ppo_procgen's Agent on 64x64x3 frames, by hand: channels (16, 32, 32), 3x3
# kernels; each stack's first conv reads the previous stack's channels (3 for the image), its residual convs its
# own; three max-pools take 64 -> 32 -> 16 -> 8, so the dense reads 8 * 8 * 32 = 2048 features.
FAN_IN = {"stack_1_conv": 3 * 9, "stack_2_conv": 16 * 9, "stack_3_conv": 32 * 9, "dense": 8 * 8 * 32}
for _s, _c in ((1, 16), (2, 32), (3, 32)):
    FAN_IN.update({f"stack_{_s}_block_{b}_conv_{i}": _c * 9 for b in (1, 2) for i in (0, 1)})


@pytest.fixture(scope="module")
def impala():
    model = CNNActorCritic(15, "impala")
    frames = jax.random.randint(jax.random.PRNGKey(123), (64, 64, 64, 3), 0, 256).astype(jnp.uint8)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), frames[:1])["params"], frames


def test_impala_torso_has_pytorch_default_init(impala):
    _, params, _ = impala
    torso = params["torso"]
    assert set(torso) == set(FAN_IN)
    for name, fan_in in FAN_IN.items():
        bound = 1.0 / math.sqrt(fan_in)
        for part in ("kernel", "bias"):
            w = np.asarray(torso[name][part]).ravel()
            assert np.abs(w).max() <= bound, (name, part)
            if part == "kernel":  # filled uniformly: reaches the bound, std bound / sqrt(3)
                assert np.abs(w).max() > 0.97 * bound, name
                assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.1), name
            else:  # PyTorch draws biases too (CleanRL's layer_init would zero them)
                assert np.abs(w).max() > 0.2 * bound and np.std(w) > 0.2 * bound / math.sqrt(3), name


def test_impala_heads_are_cleanrl_layer_init(impala):
    _, params, _ = impala
    for name, gain in (("policy_output", 0.01), ("value_output", 1.0)):
        kernel = np.asarray(params[name]["kernel"])  # [256, out]: orthonormal columns scaled by the gain
        np.testing.assert_allclose(kernel.T @ kernel, gain**2 * np.eye(kernel.shape[1]), atol=1e-6 * max(gain**2, 1e-2))
        np.testing.assert_array_equal(np.asarray(params[name]["bias"]), 0.0)


def test_impala_starts_near_a_uniform_policy_and_zero_value(impala):
    """The issue's claim, measured on random frames (orthogonal sqrt(2) convs gave torso features of RMS ~14,
    |V| ~18 and per-frame logit std ~0.13 over 5 init seeds; PyTorch's init ~0.06, ~0.06 and ~0.0005)."""
    model, params, frames = impala
    torso = lambda p, o: model.apply({"params": p}, o, method=lambda m, x: m.torso_net(x))
    feats, (logits, value) = jax.jit(lambda p, o: (torso(p, o), model.apply({"params": p}, o)))(params, frames)
    assert float(jnp.sqrt(jnp.mean(feats**2))) < 0.5
    assert float(jnp.mean(jnp.abs(value))) < 0.5
    assert float(jnp.mean(jnp.std(logits, axis=-1))) < 0.005
