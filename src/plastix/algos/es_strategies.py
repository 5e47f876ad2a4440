"""Evolution strategies of evosax (CMA-ES, SNES, PGPE) behind OpenAI-ES's population interface (``algos.es``).

``--es.strategy openai`` (default) is plastix's own OpenAI-ES (``es.es_init`` / ``es_ask`` / ``es_tell``).
``cma_es``, ``snes`` and ``pgpe`` are evosax's ``CMA_ES`` (Hansen's covariance matrix adaptation, full
``P x P`` covariance: memory and an eigendecomposition in ``P``, so only small policies), ``SNES`` (separable
natural ES, Schaul et al. 2011) and ``PGPE`` (Sehnke et al. 2010, with ClipUp), each through the same three
functions, so ``ESTrainer`` runs them unchanged::

    state = strategy_init(name, mean [P], popsize, sigma, learning_rate, weight_decay)
    population [popsize, P], aux = strategy_ask(state, key)
    state, metrics = strategy_tell(state, aux, fitness [popsize])     # fitness maximised

evosax minimises, so ``strategy_tell`` hands it ``-fitness``. Settings: ``sigma`` is every strategy's initial
standard deviation (evosax's ``std_init``); ``learning_rate`` is PGPE's ClipUp step (``max_velocity = 2 lr``,
evosax's default ratio), CMA-ES and SNES set their own step sizes (the config refuses another value there);
``weight_decay`` is evosax's ``add_weight_decay`` on the fitness (``f - wd * ||x||^2`` in evosax's minimising
sign), the analogue of OpenAI-ES's L2 on the mean. Fitness shaping is each strategy's evosax default
(CMA-ES: its recombination weights; SNES: its utilities; PGPE: centred ranks). evosax's ``tell`` takes a key
that none of these three uses; it gets ``fold_in(PRNGKey(0), generation)`` (deterministic).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

STRATEGIES = ("openai", "cma_es", "snes", "pgpe")
OWN_STEP_SIZE = ("cma_es", "snes")  # strategies whose mean update sets its own step size


def check_strategy(strategy: str, learning_rate: float, default_learning_rate: float) -> None:
    """``ValueError`` naming ``--es.strategy`` / ``--es.learning-rate`` for an unknown strategy, a missing evosax,
    or a learning rate given to a strategy that sets its own step size."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--es.strategy: unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if strategy == "openai":
        return
    try:
        import evosax  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--es.strategy {strategy}: needs evosax ({err}); `pip install 'plastix[evosax]'`") from None
    if strategy in OWN_STEP_SIZE and learning_rate != default_learning_rate:
        raise ValueError(f"--es.learning-rate: {strategy} sets its own step size (evosax's defaults); the option "
                         f"applies to openai (Adam) and pgpe (ClipUp); drop it")


@lru_cache(maxsize=None)
def evosax_strategy(name: str, popsize: int, num_dims: int, learning_rate: float, weight_decay: float):
    """The evosax strategy object of ``name`` for ``num_dims``-dimensional solutions (cached: static)."""
    try:
        from evosax.algorithms import CMA_ES, PGPE, SNES
        from evosax.core.fitness_shaping import add_weight_decay
        from evosax.core.optimizer import clipup
    except ImportError as err:
        raise ImportError(f"--es.strategy {name}: needs evosax ({err}); `pip install 'plastix[evosax]'`") from None
    solution = jnp.zeros((num_dims,), jnp.float32)
    cls = {"cma_es": CMA_ES, "snes": SNES, "pgpe": PGPE}[name]
    kwargs = {}
    if name == "pgpe":
        kwargs["optimizer"] = clipup(learning_rate=learning_rate, max_velocity=2 * learning_rate)
    strategy = cls(population_size=popsize, solution=solution, **kwargs)
    if weight_decay:
        strategy.fitness_shaping_fn = add_weight_decay(strategy.fitness_shaping_fn, weight_decay)
    return strategy


def _x32(tree):
    """Every 64-bit leaf of ``tree`` in 32 bits (Python scalars in evosax's states come out 64-bit otherwise)."""
    narrow = {jnp.dtype(jnp.int64): jnp.int32, jnp.dtype(jnp.float64): jnp.float32}
    return jax.tree.map(lambda x: jnp.asarray(x).astype(narrow.get(jnp.asarray(x).dtype, jnp.asarray(x).dtype)), tree)


@struct.dataclass
class StrategyState:
    """An evosax strategy's state, with ``mean`` and ``generation`` as ``ESState`` has them."""

    inner: Any  # evosax's state
    params: Any  # evosax's params (std_init = sigma)
    mean: jax.Array  # [P] float32: the search distribution's centre (the mean policy)
    generation: jax.Array  # scalar int32
    popsize: int = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False)
    learning_rate: float = struct.field(pytree_node=False)
    weight_decay: float = struct.field(pytree_node=False)

    def strategy(self):
        return evosax_strategy(self.name, self.popsize, self.mean.shape[-1], self.learning_rate, self.weight_decay)


def strategy_init(name: str, mean: jax.Array, popsize: int, sigma: float, learning_rate: float,
                  weight_decay: float = 0.0) -> StrategyState:
    """A fresh evosax ``name`` state centred on ``mean`` ``[P]`` with initial standard deviation ``sigma``."""
    mean = jnp.asarray(mean, jnp.float32)
    strategy = evosax_strategy(name, popsize, mean.shape[0], float(learning_rate), float(weight_decay))
    params = strategy.default_params.replace(std_init=jnp.asarray(sigma, jnp.float32))
    with jax.enable_x64(False):  # evosax's own 32-bit setting (importing plastix turns 64-bit types on)
        inner = _x32(strategy.init(jax.random.PRNGKey(0), mean, params))  # the key is unused by these inits
    return StrategyState(inner, params, inner.mean, jnp.zeros((), jnp.int32), popsize, name,
                         float(learning_rate), float(weight_decay))


def strategy_ask(state: StrategyState, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(population [popsize, P], population)``: the second is what ``strategy_tell`` needs back."""
    with jax.enable_x64(False):
        population, inner = state.strategy().ask(key, state.inner, state.params)
    population, inner = _x32((population, inner))
    # ask may update the state (CMA-ES caches its eigendecomposition): kept through the population's pass.
    return population, (population, inner)


def strategy_tell(state: StrategyState, aux, fitness: jax.Array) -> tuple[StrategyState, dict[str, jax.Array]]:
    """Update the strategy from ``fitness`` ``[popsize]`` (maximised; evosax gets ``-fitness``)."""
    population, inner = aux
    key = jax.random.fold_in(jax.random.PRNGKey(0), state.generation)
    with jax.enable_x64(False):
        inner, _ = state.strategy().tell(key, population, -fitness.astype(jnp.float32), inner, state.params)
    inner = _x32(inner)
    step = inner.mean - state.mean
    metrics = {
        "es/update_norm": jnp.linalg.norm(step),
        "es/param_norm": jnp.linalg.norm(inner.mean),
        "es/sigma": jnp.mean(inner.std) if hasattr(inner, "std") else jnp.float32(jnp.nan),
    }
    return state.replace(inner=inner, mean=inner.mean, generation=state.generation + 1), metrics
