"""Plasticity probes: how well a network, from its current parameters, fits a fresh regression task.

- ``eq15`` / ``eq15_dataset``: the OCP paper's task-switch regression (Appendix A, Eq. 15).
- ``regression_probe``: the OCP Fig 3/5 protocol: train a copy of a (e.g. PPO-trained value) network on a
  regression task with Adam and MSE, and return its train and test loss curves.
- ``interpolated_targets``: targets at a controlled distance ``alpha`` from a network's own task (the OCP
  paper's Sec. 3.2 made quantitative: ``plastix.experiments.task_switch``, ``ocp-task-relevance``).
- ``random_target_probe``: Lyle et al. (2023)-style probe: train a copy on fresh random targets for a fixed
  budget of steps and report how low the loss gets (lower = more plastic).

``apply_fn(params, x) -> predictions`` is any function of the parameters (e.g.
``lambda p, x: MLP(...).apply({"params": p}, x)``); its output is reshaped to the targets' shape, so a value
head returning ``[N, 1]`` works with targets ``[N]``. Training loops are ``lax.scan``s: every function is
jit-able (with ``apply_fn``, ``steps`` and ``batch_size`` static) and vmap-able over keys, parameters and
learning rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

EQ15_INPUT_DIM = 17  # HalfCheetah-v4's observation size
EQ15_NOISE_STD = 0.1

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def eq15(X: jax.Array, noise_std: float = EQ15_NOISE_STD, key: jax.Array | None = None) -> jax.Array:
    """The OCP paper's regression target (Appendix A, Eq. 15).

    ``y = 2.5 X0 - 1.2 X1^2 + 0.8 sin(X2) + 1.5 cos(X3) + 0.7 X4 X5 - 0.3 X6^3 + exp(-0.1 X7^2) + 1.1 X8
    - 0.5 X9^2 + 0.9 tanh(X10) + 0.2 X11^2 - 0.6 sqrt(|X12|) + 0.5 X13 X14 - 0.4 X15 + 0.3 X16 + eps``,
    ``eps ~ N(0, noise_std^2)`` (sigma = 0.1 in the paper).

    Args:
        X: inputs ``[..., 17]``.
        noise_std: standard deviation of the additive Gaussian noise.
        key: PRNG key of the noise; ``None`` gives the noise-free function.

    Returns:
        ``y`` of shape ``X.shape[:-1]``.
    """
    x = [X[..., j] for j in range(EQ15_INPUT_DIM)]
    y = (
        2.5 * x[0]
        - 1.2 * x[1] ** 2
        + 0.8 * jnp.sin(x[2])
        + 1.5 * jnp.cos(x[3])
        + 0.7 * x[4] * x[5]
        - 0.3 * x[6] ** 3
        + jnp.exp(-0.1 * x[7] ** 2)
        + 1.1 * x[8]
        - 0.5 * x[9] ** 2
        + 0.9 * jnp.tanh(x[10])
        + 0.2 * x[11] ** 2
        - 0.6 * jnp.sqrt(jnp.abs(x[12]))
        + 0.5 * x[13] * x[14]
        - 0.4 * x[15]
        + 0.3 * x[16]
    )
    if key is not None:
        y = y + noise_std * jax.random.normal(key, y.shape, y.dtype)
    return y


def eq15_dataset(
    key: jax.Array,
    n_train: int = 1000,
    n_test: int = 1000,
    x_dist: str = "normal",
    noise_std: float = EQ15_NOISE_STD,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Train and test sets of the Eq. 15 regression (OCP Fig 3/5: 1,000 + 1,000 samples).

    The paper does not say how X is drawn (SCIENCE.md): ``x_dist="normal"`` (default) draws every coordinate
    from N(0, 1), ``"uniform"`` from U(-1, 1). Both sets carry the N(0, noise_std^2) noise of Eq. 15.

    Args:
        key: PRNG key.
        n_train, n_test: sample counts (static).
        x_dist: ``"normal"`` or ``"uniform"`` (static).
        noise_std: Eq. 15's sigma.

    Returns:
        ``(x_train [n_train, 17], y_train [n_train], x_test [n_test, 17], y_test [n_test])``.
    """
    k_x_train, k_x_test, k_eps_train, k_eps_test = jax.random.split(key, 4)

    def draw(k, n):
        shape = (n, EQ15_INPUT_DIM)
        if x_dist == "normal":
            return jax.random.normal(k, shape)
        if x_dist == "uniform":
            return jax.random.uniform(k, shape, minval=-1.0, maxval=1.0)
        raise ValueError(f"x_dist: unknown distribution {x_dist!r}; allowed: normal, uniform")

    x_train = draw(k_x_train, n_train)
    x_test = draw(k_x_test, n_test)
    y_train = eq15(x_train, noise_std, k_eps_train)
    y_test = eq15(x_test, noise_std, k_eps_test)
    return x_train, y_train, x_test, y_test


def interpolated_targets(own: jax.Array, new: jax.Array, alpha: float | jax.Array) -> jax.Array:
    """Regression targets at task distance ``alpha`` from a network's own task (OCP Sec. 3.2, quantified).

    ``y_alpha = (1 - alpha) * own + alpha * new``, where ``own = v_theta0(X)`` are the trained network's own
    outputs on the inputs (the task it already solves) and ``new`` a new task's targets on the same inputs
    (e.g. ``eq15(X)`` with its noise). Task distance is ``alpha``: 0 is the network's own task, 1 the new
    task (the OCP Fig 3 switch). In function space the target moves linearly,
    ``mean((y_alpha - own)^2) = alpha^2 * mean((new - own)^2)``, so distance is measured in units of the
    whole switch; the same ``y_alpha`` is given to a random-init network for comparison.

    Args:
        own: ``v_theta0(X)`` ``[N]``.
        new: the new task's targets ``[N]``.
        alpha: task distance (may be traced, e.g. vmapped over).

    Returns:
        ``y_alpha`` ``[N]``.
    """
    return (1.0 - alpha) * own + alpha * new


def _mse(apply_fn: ApplyFn, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    pred = apply_fn(params, x).reshape(y.shape)
    return jnp.mean((pred - y) ** 2)


@flax.struct.dataclass
class RegressionCurves:
    """Loss curves of ``regression_probe``: entry 0 is before training, entry t after t Adam steps."""

    train_loss: jax.Array  # [steps + 1], full-batch MSE on the training set
    test_loss: jax.Array  # [steps + 1], MSE on the test set


def regression_probe(
    apply_fn: ApplyFn,
    params: Any,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
    y_test: jax.Array,
    lr: float | jax.Array,
    steps: int,
    batch_size: int | None = None,
    key: jax.Array | None = None,
) -> RegressionCurves:
    """Train a copy of ``params`` on a regression task with Adam and MSE; return train/test loss curves.

    The OCP Fig 3/5 task-switch protocol: a PPO-trained value network (and a randomly initialised one for
    comparison) is trained on the Eq. 15 regression (``eq15_dataset``) with lr 0.01 or 0.005.

    Args:
        apply_fn: ``(params, x [N, d]) -> predictions`` reshapeable to ``y``'s shape.
        params: starting parameters (not modified).
        x_train, y_train: ``[N, d]``, ``[N]``.
        x_test, y_test: ``[M, d]``, ``[M]``.
        lr: Adam's learning rate (may be traced, e.g. vmapped over).
        steps: number of Adam updates (static).
        batch_size: ``None`` for full-batch updates; otherwise each update uses ``batch_size`` training
            examples drawn without replacement, which needs ``key`` (static).
        key: PRNG key of the minibatches.

    Returns:
        ``RegressionCurves`` with ``train_loss`` and ``test_loss``, each ``[steps + 1]``.
    """
    if batch_size is not None and key is None:
        raise ValueError("regression_probe: batch_size needs a key to draw the minibatches")
    optimizer = optax.adam(lr)
    n_train = x_train.shape[0]
    step_keys = jax.random.split(key, steps) if key is not None else jnp.zeros((steps,))

    def step(carry, step_key):
        p, opt_state = carry
        if batch_size is None:
            xb, yb = x_train, y_train
        else:
            idx = jax.random.choice(step_key, n_train, (batch_size,), replace=False)
            xb, yb = x_train[idx], y_train[idx]
        grads = jax.grad(lambda q: _mse(apply_fn, q, xb, yb))(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        losses = (_mse(apply_fn, p, x_train, y_train), _mse(apply_fn, p, x_test, y_test))
        return (p, opt_state), losses

    _, (train, test) = lax.scan(step, (params, optimizer.init(params)), step_keys)
    train0 = _mse(apply_fn, params, x_train, y_train)
    test0 = _mse(apply_fn, params, x_test, y_test)
    return RegressionCurves(
        train_loss=jnp.concatenate([train0[None], train]),
        test_loss=jnp.concatenate([test0[None], test]),
    )


@flax.struct.dataclass
class RandomTargetProbe:
    """Result of ``random_target_probe``."""

    final_loss: jax.Array  # scalar: MSE after the last step (the probe's score; lower = more plastic)
    loss_curve: jax.Array  # [steps + 1]: entry 0 before training, entry t after t Adam steps


def random_target_probe(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: jax.Array,
    steps: int = 200,
    lr: float | jax.Array = 1e-3,
    targets: jax.Array | None = None,
    target_std: float = 1.0,
) -> RandomTargetProbe:
    """Plasticity probe (Lyle et al. 2023): fit fresh random targets from the current parameters.

    A copy of ``params`` is trained with full-batch Adam on the MSE to random regression targets for a
    fixed budget of ``steps``; the final loss measures how much the network can still learn. plastix's
    default targets are i.i.d. ``N(0, target_std^2)`` per example and output (random-label memorisation:
    needs no initialiser and depends on nothing the network has learned). To regress instead onto a random
    *function* of the inputs, pass ``targets=apply_fn(fresh_params, x)`` with a freshly initialised copy of
    the network.

    Args:
        apply_fn: ``(params, x) -> predictions [N, ...]``.
        params: starting parameters (not modified).
        x: probe inputs ``[N, d]`` (e.g. recent observations).
        key: PRNG key of the Gaussian targets (unused when ``targets`` is given).
        steps: number of Adam updates (static).
        lr: Adam's learning rate.
        targets: optional targets with the predictions' shape.
        target_std: standard deviation of the Gaussian targets.

    Returns:
        ``RandomTargetProbe(final_loss, loss_curve)``.
    """
    if targets is None:
        pred_shape = jax.eval_shape(apply_fn, params, x).shape
        targets = target_std * jax.random.normal(key, pred_shape)
    optimizer = optax.adam(lr)

    def step(carry, _):
        p, opt_state = carry
        grads = jax.grad(lambda q: _mse(apply_fn, q, x, targets))(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        return (p, opt_state), _mse(apply_fn, p, x, targets)

    _, losses = lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    curve = jnp.concatenate([_mse(apply_fn, params, x, targets)[None], losses])
    return RandomTargetProbe(final_loss=curve[-1], loss_curve=curve)
