"""Gradient-free plasticity probe: the OCP Eq. 15 task switch trained with OpenAI-ES instead of Adam.

``es_regression_probe`` is ``plastix.probes.regression_probe`` with the optimiser swapped: a copy of the
network is trained on the regression by ``plastix.algos.es.es_step`` (antithetic sampling, centred-rank
shaping, Adam on the ES gradient estimate, optional weight decay), with fitness ``-MSE`` on the full
training set. It returns the same ``RegressionCurves``, so the task-switch experiment can compare gradient
and gradient-free optimisers from the same starting networks (PPO-trained, ES-trained or random init).

Budget note: one ES step evaluates ``popsize`` networks on the whole training set, i.e. ``popsize``
forward passes against Adam's one forward and one backward pass.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from plastix.algos.es import es_init, es_step
from plastix.probes import ApplyFn, RegressionCurves, _mse


def es_regression_probe(
    apply_fn: ApplyFn,
    params: Any,
    x_train: jax.Array,
    y_train: jax.Array,
    x_test: jax.Array,
    y_test: jax.Array,
    steps: int,
    popsize: int,
    sigma: float | jax.Array,
    lr: float | jax.Array,
    key: jax.Array,
    weight_decay: float | jax.Array = 0.0,
) -> RegressionCurves:
    """Train a copy of ``params`` on a regression task with OpenAI-ES; return train/test MSE curves.

    Args:
        apply_fn: ``(params, x [N, d]) -> predictions`` reshapeable to ``y``'s shape.
        params: starting parameters (not modified; float32 leaves).
        x_train, y_train: ``[N, d]``, ``[N]``.
        x_test, y_test: ``[M, d]``, ``[M]``.
        steps: number of ES generations (static).
        popsize: population size, even (static).
        sigma: parameter-noise standard deviation.
        lr: Adam's step size on the ES gradient estimate.
        key: PRNG key of the parameter noise.
        weight_decay: L2 coefficient on the mean parameters (the reference's ``l2coeff``).

    Returns:
        ``RegressionCurves``: ``train_loss`` and ``test_loss`` ``[steps + 1]``, entry 0 before training and
        entry t the loss of the search distribution's *mean* after t generations.

    Example:
        >>> x_tr, y_tr, x_te, y_te = eq15_dataset(jax.random.PRNGKey(0))
        >>> curves = es_regression_probe(apply_fn, value_params, x_tr, y_tr, x_te, y_te,
        ...                              steps=500, popsize=64, sigma=0.02, lr=0.01, key=jax.random.PRNGKey(1))
    """
    flat, unravel = ravel_pytree(params)
    loss = lambda f, x, y: _mse(apply_fn, unravel(f), x, y)
    fitness_fn = lambda f: -loss(f, x_train, y_train)
    state = es_init(flat, popsize, 1.0, 1.0, 0.0)
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    state = state.replace(sigma=f32(sigma), learning_rate=f32(lr), weight_decay=f32(weight_decay))

    def step(state, step_key):
        state, _ = es_step(state, fitness_fn, step_key)
        return state, (loss(state.mean, x_train, y_train), loss(state.mean, x_test, y_test))

    _, (train, test) = lax.scan(step, state, jax.random.split(key, steps))
    train0, test0 = loss(flat, x_train, y_train), loss(flat, x_test, y_test)
    return RegressionCurves(
        train_loss=jnp.concatenate([train0[None], train]),
        test_loss=jnp.concatenate([test0[None], test]),
    )
