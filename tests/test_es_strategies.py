"""evosax's CMA-ES, SNES and PGPE through OpenAI-ES's population interface (``plastix.algos.es_strategies``)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from plastix.algos import es

pytest.importorskip("evosax")
from plastix.algos.es_strategies import strategy_ask, strategy_init, strategy_tell  # noqa: E402


@pytest.mark.parametrize("name", [pytest.param("cma_es", marks=pytest.mark.slow),
                                  pytest.param("snes", marks=pytest.mark.slow), "pgpe"])
def test_each_strategy_maximises_the_fitness_it_is_told(name):
    """Fitness -||x - 1||^2 (maximised at x = 1): plastix maximises, evosax minimises; the sign must be right."""
    state = strategy_init(name, jnp.zeros(6), popsize=16, sigma=0.5, learning_rate=0.05)
    fitness = lambda x: -jnp.sum((x - 1.0) ** 2)

    @jax.jit
    def generation(state, key):
        population, aux = strategy_ask(state, key)
        assert population.shape == (16, 6)
        return strategy_tell(state, aux, jax.vmap(fitness)(population))

    start = float(jnp.linalg.norm(state.mean - 1.0))
    for g in range(60):
        state, metrics = generation(state, jax.random.PRNGKey(g))
    assert int(state.generation) == 60 and state.mean.dtype == jnp.float32
    assert float(jnp.linalg.norm(state.mean - 1.0)) < 0.5 * start  # toward the maximum, not away (-f)


def test_unknown_strategy_and_a_learning_rate_cma_es_does_not_use_are_refused():
    base = dict(popsize=8, episode_steps=40, total_timesteps=8 * 40 * 3)
    with pytest.raises(ValueError, match="--es.strategy: unknown strategy 'xnes'"):
        dataclasses.replace(es.ESConfig(), strategy="xnes", **base).validate(check_env=False)
    with pytest.raises(ValueError, match="--es.learning-rate: cma_es sets its own step size"):
        dataclasses.replace(es.ESConfig(), strategy="cma_es", learning_rate=0.1, **base).validate(check_env=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["snes", "pgpe"])
def test_es_trainer_runs_an_evosax_strategy(tmp_path, name):
    from plastix.store import read_metrics

    cfg = es.ESConfig(strategy=name, popsize=4, episode_steps=20, total_timesteps=4 * 20 * 2, log_every=1,
                      diagnostics_batch=32, quiet=True, hidden_sizes=(8,))
    df = read_metrics(es.train_es(cfg, tmp_path / name))
    assert df["update"].max() == 2
    assert (df.key == "es/update_norm").any() and (df.key.str.contains("dormant_ratio")).any()
