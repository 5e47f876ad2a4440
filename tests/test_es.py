"""OpenAI-ES (plastix.algos.es), its Eq. 15 probe (plastix.probes_es) and the ES run folder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from plastix import store
from plastix.algos import es
from plastix.nets import MLP
from plastix.probes import eq15_dataset
from plastix.probes_es import es_regression_probe

TARGET = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32)


def quadratic(x):
    return -jnp.sum((x - TARGET) ** 2)


def run_es(fitness_fn, x0, key, generations, **kwargs):
    state = es.es_init(x0, **kwargs)

    def body(state, k):
        state, metrics = es.es_step(state, fitness_fn, k)
        return state, metrics["es/fitness_mean"]

    return jax.lax.scan(body, state, jax.random.split(key, generations))


QUADRATIC_ES = dict(popsize=32, sigma=0.05, learning_rate=0.05)
quadratic_es = jax.jit(lambda key: run_es(quadratic, jnp.zeros((10,), jnp.float32), key, 300, **QUADRATIC_ES))


def test_es_reaches_the_optimum_of_a_quadratic():
    state, fitness = quadratic_es(jax.random.PRNGKey(0))
    assert float(jnp.linalg.norm(TARGET)) > 1.5
    assert float(jnp.linalg.norm(state.mean - TARGET)) < 0.15
    assert fitness[-1] > fitness[0]
    assert int(state.generation) == 300


def test_weight_decay_pulls_the_mean_towards_zero():
    # With a flat fitness the shaped gradient has no preferred direction: only the L2 term moves theta.
    x0 = jnp.full((10,), 2.0, jnp.float32)
    run = jax.jit(lambda wd: run_es(lambda x: jnp.zeros(()), x0, jax.random.PRNGKey(0), 50, popsize=8, sigma=0.1,
                                    learning_rate=0.01, weight_decay=wd)[0].mean)
    assert float(jnp.linalg.norm(run(1.0))) < float(jnp.linalg.norm(x0)) - 0.3


def test_mirrored_sampling_is_exact():
    state = es.es_init(jnp.arange(7, dtype=jnp.float32), popsize=6, sigma=0.3, learning_rate=0.01)
    population, noise = es.es_ask(state, jax.random.PRNGKey(3))
    assert population.shape == (6, 7) and noise.shape == (3, 7)
    assert population.dtype == noise.dtype == jnp.float32
    perturbations = es.mirrored_perturbations(noise, state.sigma)
    np.testing.assert_array_equal(np.asarray(perturbations[:3] + perturbations[3:]), 0.0)
    np.testing.assert_allclose(np.asarray(population - state.mean), np.asarray(perturbations), atol=1e-6)
    pair_sums = np.asarray(population[:3] + population[3:])
    np.testing.assert_allclose(pair_sums, np.broadcast_to(2 * np.asarray(state.mean), (3, 7)), rtol=1e-6)


def test_popsize_must_be_even():
    with pytest.raises(ValueError, match="--popsize"):
        es.es_init(jnp.zeros(3, jnp.float32), popsize=5, sigma=0.1, learning_rate=0.1)


def test_centered_ranks_by_hand():
    np.testing.assert_allclose(np.asarray(es.centered_ranks(jnp.array([10.0, -3.0, 7.0]))), [0.5, -0.5, 0.0])
    # ranks of [0.3, -1, 5, 2, 0] are [2, 0, 4, 3, 1]; / 4 - 0.5
    got = es.centered_ranks(jnp.array([0.3, -1.0, 5.0, 2.0, 0.0]))
    np.testing.assert_allclose(np.asarray(got), [0.0, -0.5, 0.5, 0.25, -0.25])


def test_gradient_estimate_by_hand():
    noise = jnp.array([[1.0, 0.0], [0.0, 2.0]], jnp.float32)
    fitness = jnp.array([4.0, 1.0, 3.0, 2.0])  # ranks 3, 0, 2, 1 -> u = 0.5, -0.5, 1/6, -1/6
    u = np.array([0.5, -0.5, 1 / 6, -1 / 6])
    expected = ((u[0] - u[2]) * np.array([1.0, 0.0]) + (u[1] - u[3]) * np.array([0.0, 2.0])) / 4
    np.testing.assert_allclose(np.asarray(es.es_gradient(noise, fitness)), expected, rtol=1e-6)


def test_population_evaluation_is_vmapped_and_deterministic_per_seed():
    calls = []

    def fitness(x):
        calls.append(x.shape)
        return quadratic(x)

    state = es.es_init(jnp.zeros((10,), jnp.float32), **QUADRATIC_ES)
    jax.make_jaxpr(lambda k: es.es_step(state, fitness, k))(jax.random.PRNGKey(0))
    assert calls == [(10,)]  # traced once, on one member: evaluated with vmap over the population
    a = quadratic_es(jax.random.PRNGKey(1))[0].mean
    np.testing.assert_array_equal(np.asarray(a), np.asarray(quadratic_es(jax.random.PRNGKey(1))[0].mean))
    assert not np.array_equal(np.asarray(a), np.asarray(quadratic_es(jax.random.PRNGKey(2))[0].mean))
    # Many seeds in one program (vmap over seeds) give each seed's lone result.
    keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
    both = jax.jit(jax.vmap(lambda k: quadratic_es(k)[0].mean))(keys)
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(a), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ a toy control task
POINT_MASS_STEPS = 30


def point_mass_return(policy_apply, flat):
    """A 2-D point mass pushed by a force in [-1, 1]^2 toward the origin from (1, -1); reward -|pos|."""

    def step(carry, _):
        pos, vel = carry
        force = jnp.clip(policy_apply(flat, jnp.concatenate([pos, vel])), -1.0, 1.0)
        vel = 0.9 * vel + 0.1 * force
        pos = pos + 0.1 * vel
        return (pos, vel), -jnp.linalg.norm(pos)

    init = (jnp.array([1.0, -1.0], jnp.float32), jnp.zeros(2, jnp.float32))
    _, rewards = jax.lax.scan(step, init, None, length=POINT_MASS_STEPS)
    return jnp.sum(rewards)


def test_es_improves_a_short_control_task():
    net = MLP((16, 16), "tanh", 2, 0.01)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.float32))["params"]
    flat, unravel = ravel_pytree(params)
    apply = lambda f, obs: net.apply({"params": unravel(f)}, obs)
    fitness = lambda f: point_mass_return(apply, f)
    state, _ = jax.jit(lambda k: run_es(fitness, flat, k, 40, popsize=16, sigma=0.05, learning_rate=0.05))(
        jax.random.PRNGKey(0)
    )
    before, after = float(fitness(flat)), float(fitness(state.mean))
    assert after > before + 0.3 * abs(before), (before, after)


def test_es_regression_probe_reduces_the_eq15_test_loss():
    x_tr, y_tr, x_te, y_te = eq15_dataset(jax.random.PRNGKey(0), n_train=128, n_test=256)
    net = MLP((16, 16), "relu", 1, 1.0)
    params = net.init(jax.random.PRNGKey(1), jnp.zeros((1, 17), jnp.float32))["params"]
    apply = lambda p, x: net.apply({"params": p}, x)
    probe = jax.jit(lambda k: es_regression_probe(apply, params, x_tr, y_tr, x_te, y_te, steps=100, popsize=32,
                                                  sigma=0.02, lr=0.02, key=k))
    curves = probe(jax.random.PRNGKey(2))
    assert curves.train_loss.shape == curves.test_loss.shape == (101,)
    assert float(curves.test_loss[-1]) < 0.6 * float(curves.test_loss[0]), curves.test_loss[::20]
    assert float(curves.train_loss[-1]) < float(curves.train_loss[0])


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "change, option",
    [
        (dict(popsize=7), "--popsize"),
        (dict(sigma=0.0), "--sigma"),
        (dict(learning_rate=-1.0), "--learning-rate"),
        (dict(weight_decay=-0.1), "--weight-decay"),
        (dict(episode_steps=0), "--episode-steps"),
        (dict(activation="swish3"), "--activation"),
        (dict(hidden_sizes=()), "--hidden-sizes"),
        (dict(seeds="a,b"), "--seeds"),
        (dict(total_timesteps=10), "--total-timesteps"),
        (dict(diagnostics_every=-1), "--diagnostics-every"),
        (dict(env_id="NoSuchEnv-v0"), "--env-id"),
        (dict(shift="permute", rounds=2), "--shift"),
        (dict(shift="task", env_id="Swimmer-v4", rounds=2), "--shift"),
        (dict(baseline="warm"), "--baseline"),
        (dict(rounds=0), "--rounds"),
        (dict(rounds=2, steps_per_round=1000), "--steps-per-round"),
        (dict(rounds=1000, total_timesteps=64_000), "--total-timesteps"),
    ],
)
def test_config_validate_names_the_option(change, option):
    with pytest.raises(ValueError, match=option):
        dataclasses.replace(es.ESConfig(), **change).validate()


def test_member_env_seeds_pair_antithetic_members():
    assert es.member_env_seeds(0, 4, True, True) == [0, 1, 0, 1, 2]
    assert es.member_env_seeds(1, 4, True, True) == [5, 6, 5, 6, 7]
    assert es.member_env_seeds(1, 4, False, False) == [4, 5, 6, 7]


# ------------------------------------------------------------------------------------------ run folder
SMALL = dict(popsize=8, episode_steps=40, total_timesteps=8 * 40 * 3, log_every=2, diagnostics_batch=64, quiet=True)


def test_train_es_writes_a_run_folder_deterministic_per_seed(tmp_path):
    cfg = es.ESConfig(seeds="0,1", **SMALL)
    run_dir = es.train_es(cfg, tmp_path / "run")
    assert store.read_config(run_dir)["optimizer"] == "es"
    assert sorted(p.name for p in (run_dir / "metrics.parquet").glob("*.parquet")) == [
        "part-000000001.parquet", "part-000000003.parquet"]
    df = store.read_metrics(run_dir)
    keys = set(df.key)
    for key in ("return/mean", "return/max", "return/mean_policy", "return/episodic", "es/grad_norm", "es/sigma",
                "time/sps", "policy/layer_1/dormant_ratio@0.025", "policy/layer_2/zero_grad_ratio/layer",
                "policy/layer_1/srank", "policy/layer_1/effective_rank", "policy/layer_1/weight/l2",
                "policy/output/weight/dist_init", "policy/dormant_ratio@0"):
        assert key in keys, key
    assert not any(k.endswith("/loss") for k in keys)
    assert set(df["update"]) == {1, 2, 3} and set(df["seed"]) == {0, 1}
    assert set(df["env_step"]) == {320, 640, 960}
    ret = df[df.key == "return/mean"].pivot(index="update", columns="seed", values="value")
    assert np.all(np.isfinite(ret.values)) and not np.allclose(ret[0], ret[1])
    sigma = df[df.key == "es/sigma"].value
    np.testing.assert_allclose(sigma, 0.02, rtol=1e-6)
    assert store.latest_checkpoint(run_dir)[0] == 3
    # Seed 1 trained alone (without diagnostics) reproduces its run inside the group.
    alone = es.train_es(dataclasses.replace(cfg, seeds="1", diagnostics_every=0), tmp_path / "alone")
    lone = store.read_metrics(alone)
    for key in ("return/mean", "return/mean_policy", "es/grad_norm", "es/param_norm"):
        a = df[(df.key == key) & (df.seed == 1)].value.to_numpy()
        b = lone[lone.key == key].value.to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=key)
