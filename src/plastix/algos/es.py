"""OpenAI-ES (Salimans et al. 2017) for the actor network, with the same diagnostics as PPO.

The search distribution is ``N(theta, sigma^2 I)`` over the *flattened* policy parameters
(``jax.flatten_util.ravel_pytree``). One generation, following ``openai/evolution-strategies-starter``:

1. **Antithetic (mirrored) sampling**: ``n = popsize / 2`` noise vectors ``eps_i ~ N(0, I)``; the population
   is ``theta + sigma eps_i`` (members ``0..n-1``) and ``theta - sigma eps_i`` (members ``n..2n-1``), so
   member ``i`` and member ``i + n`` are a pair whose perturbations sum to exactly zero.
2. **Fitness shaping**: centred ranks over all ``2n`` fitnesses, ``u = rank / (2n - 1) - 0.5`` in
   ``[-0.5, 0.5]`` (ranks 0-based, ties broken by order, as the reference ``compute_centered_ranks``).
3. **Gradient estimate**: ``g = sum_i (u_i^+ - u_i^-) eps_i / (2n)``. As in the reference code there is no
   ``1 / sigma`` factor (Adam is invariant to it), which fixes the scale that ``weight_decay`` is relative to.
4. **Weight decay and Adam**: Adam (beta1 0.9, beta2 0.999, eps 1e-8) descends ``-g + weight_decay * theta``
   (the reference's ``l2coeff``), ``theta <- theta - lr * adam(-g + wd theta)``.

Fitness is *maximised*. The pure core is ``es_init`` / ``es_ask`` / ``es_tell`` and ``es_step`` (ask, a
vmapped per-member fitness, tell); batched evaluators (the envpool pool below) call ask and tell
themselves. Every function is jit-able and vmap-able over seeds (``ESState`` is a pytree; ``popsize`` is
static, ``sigma``, ``learning_rate`` and ``weight_decay`` are dynamic leaves and may be vmapped over).

**Env fitness** (``train_es``): one envpool pool holds, per training seed, one env per population member
(plus one for the unperturbed mean policy when ``eval_mean_policy``). Each generation the host resets the
whole pool, then one compiled call runs exactly ``episode_steps`` steps: a member's fitness is its raw
(unnormalised) episode return. Resetting from the host (rather than relying on envpool's auto-reset, which
happens on the step *after* ``done``, with reward 0 and the action ignored) keeps every member's episode
aligned even for tasks that terminate early: after a member's episode ends (terminated or truncated) the
rest of its steps are masked out of its return, its length and the observation statistics. ``episode_steps``
may not exceed the task's own episode limit (1000 for HalfCheetah-v4).
The policy is deterministic: its mean action, clipped to the action bounds.

With ``same_start_pairs`` (default) the two members of an antithetic pair get the same envpool env seed,
so they start every generation from the same initial state (common random numbers: the pair's fitness
difference is then due to the perturbation only). Training seed ``s`` owns env seeds
``s * M .. s * M + M - 1`` (``M`` envs per seed), so seeds never share env streams.

**Observation normalisation**: as PPO's (``plastix.envs.normalize``: running mean/var, ``clip((o - mu) /
sqrt(var + 1e-8), +-obs_clip)``), but *one* statistic per training seed shared by the whole population and
frozen during a generation (every member sees the same input transform, as in the reference's ``ob_stat``).
It starts from the first reset's observations and, after each generation, merges every observation the
members acted on (the reference merges a random 1% of rollouts; here all of them).

**Rounds, the task shift and the fresh baseline** (SCIENCE.md section 4; Juliani & Ash 2024). Training runs
in ``rounds`` rounds of ``G = steps_per_round // (popsize * episode_steps)`` generations each
(``steps_per_round`` defaults to ``total_timesteps / rounds``). With ``shift = "task"`` the fitness of every
generation of round ``r`` is the return under the running direction ``d_r = shifts.task_direction(r)`` (+1
forward on even rounds, -1 backward on odd ones): each step's reward is
``shifts.direction_reward(reward, x_velocity, d_r) = reward + (d_r - 1) x_velocity``, applied by the
envpool bridge from the round's ``RoundState``, which the host sets before the round's first generation.
Nothing else changes at a boundary: the search distribution, Adam's moments and the observation statistics
carry over (ES runs without mitigations), so round ``r > 0`` measures how well a *trained* ES adapts.

``baseline = "fresh"`` trains, beside each seed, a *fresh copy* (as PPO's ``--baseline fresh``). In round 0
the copy is the seed itself (same key, same env seeds: the same run, so the normalised return is 1). At the
start of every later round ``r`` its ES state (mean, Adam's moments, generation counter), its PRNG stream
and its diagnostics state are re-initialised from ``fresh_key(seed, r) = fold_in(fold_in(PRNGKey(seed),
FRESH_STREAM), r)`` (a new network, never the seed's own init), while its observation statistics carry on,
as PPO's copies keep their envs' normalisation: the only thing the copy lacks in round ``r`` is the seed's
trained search distribution. It then trains on the same round (same direction, same env seeds, so the same
start states). The copies are extra *lanes* of the seed axis (lanes ``0..S-1`` are the seeds, ``S..2S-1``
their copies): the pool holds ``2S`` env groups and one compiled generation steps both, and a seed's lane
computes exactly what it computes without the baseline. Per generation, the seeds' metrics are written and,
of the copies, ``baseline/return/episodic`` only; checkpoints hold every lane (``ESRun``).

Per-round rows (``update`` = the round's last generation; written when ``rounds > 1`` or a baseline is on;
the keys and part names of PPO's ``training.PPOTrainer.round_rows``):

==============================  ==========================================================================
``round/index``                 ``r``
``round/return_train``          mean of ``return/episodic`` over the round's last ``max(1, G // 4)``
                                generations: the *mean policy's* raw return (the centre of the search
                                distribution, what ES optimises and would deploy; the population's returns
                                carry the exploration noise), or the population mean without
                                ``eval_mean_policy``
``round/return_fresh``          the same for the fresh copy (``baseline = "fresh"``)
``round/normalized_return``     ``return_train / return_fresh`` (Juliani & Ash's normalised return: below 1
                                the seed lost ground to a fresh start; NaN, not written, when the fresh
                                return is 0). Only meaningful when the fresh return is clearly positive: a
                                barely trained HalfCheetah policy returns about 0 or less
==============================  ==========================================================================

**Diagnostics** (the same keys as PPO's ``policy/...`` ones; ``plastix.diagnostics.training.measure``): of
the mean policy after the generation's update, on ``diagnostics_batch`` observations drawn uniformly from
the generation's rollouts (all evaluated members), normalised as the members saw them. ES has no training
loss, so the ``loss``-target MAGI and ``grad_norm`` keys are not logged; the ``layer`` target is.

Logged keys per generation (``update`` = generation, ``env_step`` = ``popsize * episode_steps`` per
generation; the mean-policy episode is not counted as a training sample):

==============================  ==========================================================================
``return/mean|max|min|std``     raw episode returns of the population
``return/mean_policy``          raw return of the unperturbed mean policy (``eval_mean_policy``)
``return/episodic``             ``return/mean_policy`` when evaluated, else ``return/mean`` (PPO's key)
``episode/length_mean``         mean episode length of the population
``es/grad_norm``                ``||g||`` (step 3, before weight decay)
``es/update_norm``              ``||theta' - theta||``
``es/param_norm``               ``||theta'||``
``es/sigma``, ``es/lr``         the noise std and Adam's learning rate
``time/sps``                    env steps simulated per second (all lanes and members, the host reset included)
``time/peak_rss_mb``            the process's peak resident memory so far (MiB; the run loop logs it)
``policy/...``                  diagnostics (above), every ``diagnostics_every`` generations
==============================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from plastix import store
from plastix.diagnostics import training as diag
from plastix.envs import normalize as nz
from plastix.envs.replay import ResetReplay
from plastix.nets import ACTIVATIONS, MLP, hidden_activations
from plastix.runloop import NoLoggers, Schedule, latest_return, resume_point, run_loop

# Shifts ES can train under: the reward-only task switch needs nothing from the trainer but a RoundState.
ES_SHIFTS = ("none", "task")
# fold_in tag of the fresh copies' keys (fresh_key): a stream no seed's own key ever reaches.
FRESH_STREAM = 0x0F5E5
# The env bridge's replay record of the pool, for an exact resume: the host resets every env before each
# generation, so what the envs did after that reset never matters again and the record keeps only resets.
REPLAY = ResetReplay()

# openai/evolution-strategies-starter's Adam.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def _adam() -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)


# ================================================================================================ core
@struct.dataclass
class ESState:
    """OpenAI-ES state of one run: the search distribution's centre and Adam's moments."""

    mean: jax.Array  # [P] float32: theta, the flattened parameters of the mean policy
    opt_state: Any  # optax.ScaleByAdamState of the descent direction -g + wd * theta
    sigma: jax.Array  # scalar float32: noise standard deviation
    learning_rate: jax.Array  # scalar float32: Adam's step size
    weight_decay: jax.Array  # scalar float32: L2 coefficient on theta (the reference's l2coeff)
    generation: jax.Array  # scalar int32: generations done
    popsize: int = struct.field(pytree_node=False)  # even; 2n members, n antithetic pairs


def es_init(mean: jax.Array, popsize: int, sigma: float, learning_rate: float, weight_decay: float = 0.0) -> ESState:
    """A fresh ``ESState`` centred on the flat parameter vector ``mean`` ``[P]``.

    Example:
        >>> flat, unravel = ravel_pytree(params)
        >>> state = es_init(flat, popsize=64, sigma=0.02, learning_rate=0.01, weight_decay=0.005)
    """
    if popsize < 2 or popsize % 2:
        raise ValueError(f"--popsize: must be an even number >= 2 (antithetic pairs), got {popsize}")
    mean = jnp.asarray(mean, jnp.float32)
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return ESState(mean, _adam().init(mean), f32(sigma), f32(learning_rate), f32(weight_decay),
                   jnp.zeros((), jnp.int32), popsize)


def mirrored_perturbations(noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """``[sigma eps; -(sigma eps)]`` ``[2n, P]`` from ``noise`` ``[n, P]``: pair ``(i, i + n)`` sums to exactly 0."""
    half = sigma * noise
    return jnp.concatenate([half, -half], axis=0)


def es_ask(state: ESState, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample the mirrored population.

    Returns:
        ``(population [popsize, P], noise [popsize / 2, P])``: member ``i < n`` is ``theta + sigma eps_i``,
        member ``i + n`` is ``theta - sigma eps_i``. Pass ``noise`` to ``es_tell``.
    """
    noise = jax.random.normal(key, (state.popsize // 2, state.mean.shape[0]), jnp.float32)
    return state.mean + mirrored_perturbations(noise, state.sigma), noise


def centered_ranks(fitness: jax.Array) -> jax.Array:
    """Centred-rank fitness shaping: ``rank(x) / (N - 1) - 0.5`` in ``[-0.5, 0.5]`` (ranks 0-based).

    As ``compute_centered_ranks`` of openai/evolution-strategies-starter (``argsort().argsort()``: ties are
    ranked by position). ``fitness`` ``[N]`` (N >= 2) -> ``[N]`` float32.

    Example:
        >>> centered_ranks(jnp.array([10.0, -3.0, 7.0]))  # ranks (2, 0, 1) -> [0.5, -0.5, 0.0]
    """
    n = fitness.shape[0]
    ranks = jnp.argsort(jnp.argsort(fitness)).astype(jnp.float32)
    return ranks / (n - 1) - 0.5


def es_gradient(noise: jax.Array, fitness: jax.Array) -> jax.Array:
    """The reference's ES gradient estimate ``g = sum_i (u_i^+ - u_i^-) eps_i / (2n)`` ``[P]`` (no 1/sigma).

    ``noise`` ``[n, P]``; ``fitness`` ``[2n]`` ordered as ``es_ask``'s population; ``u = centered_ranks``.
    """
    n = noise.shape[0]
    shaped = centered_ranks(fitness)
    return (shaped[:n] - shaped[n:]) @ noise / (2 * n)


def es_tell(state: ESState, noise: jax.Array, fitness: jax.Array) -> tuple[ESState, dict[str, jax.Array]]:
    """One Adam step on ``-g + weight_decay * theta`` from the population's ``fitness`` ``[popsize]`` (maximised).

    Returns the new state and ``{"es/grad_norm", "es/update_norm", "es/param_norm", "es/sigma", "es/lr"}``.
    """
    g = es_gradient(noise, fitness.astype(jnp.float32))
    descent = -g + state.weight_decay * state.mean
    direction, opt_state = _adam().update(descent, state.opt_state)
    step = -state.learning_rate * direction
    mean = state.mean + step
    metrics = {
        "es/grad_norm": jnp.linalg.norm(g),
        "es/update_norm": jnp.linalg.norm(step),
        "es/param_norm": jnp.linalg.norm(mean),
        "es/sigma": state.sigma,
        "es/lr": state.learning_rate,
    }
    return state.replace(mean=mean, opt_state=opt_state, generation=state.generation + 1), metrics


def es_step(state: ESState, fitness_fn: Callable[[jax.Array], jax.Array], key: jax.Array) -> tuple[ESState, dict]:
    """One OpenAI-ES generation: ``es_ask``, ``jax.vmap(fitness_fn)`` over the population, ``es_tell``.

    Args:
        state: the current ``ESState``.
        fitness_fn: ``flat params [P] -> scalar`` fitness to maximise (vmapped over the population, so it
            must be traceable; draw any randomness it needs from a key closed over per generation).
        key: PRNG key of this generation's noise.

    Returns:
        ``(new state, metrics)``: ``es_tell``'s metrics plus ``es/fitness_mean`` and ``es/fitness_max``.
    """
    population, noise = es_ask(state, key)
    fitness = jax.vmap(fitness_fn)(population)
    state, metrics = es_tell(state, noise, fitness)
    return state, dict(metrics, **{"es/fitness_mean": jnp.mean(fitness), "es/fitness_max": jnp.max(fitness)})


# ============================================================================================== config
@dataclass(frozen=True)
class ESConfig:
    """OpenAI-ES for the actor network on a continuous-control envpool task (``plastix.algos.es``)."""

    optimizer: str = "es"
    """the trainer (always `es`; recorded in config.json so readers can tell ES runs from PPO runs)"""
    env_id: str = "HalfCheetah-v4"
    """the id of the environment (an envpool id with continuous actions)"""
    seeds: str = "0"
    """comma-separated integer seeds trained together in one process (vmapped), e.g. `0,1,2,3`"""
    total_timesteps: int = 20_000_000
    """env steps per seed consumed by the population (popsize * episode_steps per generation)"""
    strategy: str = "openai"
    """the search strategy: openai (this module's OpenAI-ES), or evosax's cma_es, snes, pgpe
    (``plastix.algos.es_strategies``)"""
    popsize: int = 64
    """population size (even: popsize / 2 antithetic pairs)"""
    sigma: float = 0.02
    """standard deviation of the parameter noise (Salimans et al.: 0.02)"""
    learning_rate: float = 0.01
    """Adam step size on the ES gradient estimate (Salimans et al.: 0.01)"""
    weight_decay: float = 0.005
    """L2 coefficient on the mean parameters, added to Adam's descent direction (the reference's l2coeff)"""
    episode_steps: int = 1000
    """steps per evaluation episode (the episode is truncated there; HalfCheetah-v4's own limit is 1000)"""
    same_start_pairs: bool = True
    """the two members of an antithetic pair start from the same initial state (same envpool env seed)"""
    eval_mean_policy: bool = True
    """also run one episode of the unperturbed mean policy per generation (return/mean_policy)"""
    rounds: int = 1
    """training rounds; the shift happens between rounds"""
    steps_per_round: int | None = None
    """env steps per seed per round (default: total_timesteps / rounds); sets the total when given"""
    shift: str = "none"
    """what changes between rounds: none, or task (MuJoCo running direction: forward, backward, ...)"""
    shift_seed: int = 0
    """seed of the shifts' randomness (unused by `task`, which is deterministic; kept for the bridge)"""
    baseline: str = "none"
    """fresh: also train, beside each seed, a copy re-initialised at every round start (round/return_fresh)"""
    activation: str = "tanh"
    """hidden activation: tanh, relu, none (identity, the OCP paper's No-Act), gelu, silu, softplus, sigmoid, crelu"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the policy network"""
    layer_norm: bool = False
    """LayerNorm after each hidden linear layer, before the activation"""
    normalize_obs: bool = True
    """normalise observations with running statistics shared by the population (frozen within a generation)"""
    obs_clip: float = 10.0
    """clip normalised observations to [-obs_clip, obs_clip]"""
    diagnostics_every: int = 1
    """measure dormancy, zero gradients, overlaps, ranks, weights, dead units every K generations (0 = off)"""
    diagnostics_batch: int = 1024
    """observations drawn from the generation's rollouts for the diagnostics"""
    dormant_taus: tuple[float, ...] = (0.0, 0.025, 0.1)
    """dormancy thresholds tau reported as `dormant_ratio@tau`"""
    overlap_tau: float = 0.025
    """tau defining the dormant set used by overlaps and the relative zero-gradient ratio"""
    zero_grad_eps: float = 0.0
    """a neuron is zero-gradient when its MAGI <= this (0 = strictly zero)"""
    run_dir: str | None = None
    """results folder (default: runs/<env-id>__es__<activation>__<time>)"""
    log_every: int = 10
    """generations per metrics part (and per progress-bar step)"""
    checkpoint_every: int = 50
    """generations between checkpoints (rounded up to a multiple of log_every); the last is always saved"""
    num_threads: int = 0
    """envpool worker threads (0: envpool's default)"""
    quiet: bool = False
    """no progress messages (for scripts)"""

    @property
    def seed_list(self) -> list[int]:
        from plastix.config import parse_seeds

        return parse_seeds(self.seeds)

    @property
    def steps_per_generation(self) -> int:
        """Training env steps per seed and generation (the population's episodes)."""
        return self.popsize * self.episode_steps

    @property
    def round_steps(self) -> int:
        """Env steps per seed and round (``steps_per_round``, else ``total_timesteps // rounds``)."""
        return self.steps_per_round if self.steps_per_round is not None else self.total_timesteps // max(self.rounds, 1)

    @property
    def generations_per_round(self) -> int:
        return self.round_steps // self.steps_per_generation

    @property
    def num_generations(self) -> int:
        return self.rounds * self.generations_per_round

    @property
    def envs_per_seed(self) -> int:
        return self.popsize + int(self.eval_mean_policy)

    @property
    def lanes_per_seed(self) -> int:
        """1, or 2 with the fresh baseline (the seed and its fresh copy; see the module docstring)."""
        return 2 if self.baseline == "fresh" else 1

    @property
    def writes_rounds(self) -> bool:
        """Whether per-round rows are written (as PPO: with several rounds; also with a baseline)."""
        return self.rounds > 1 or self.baseline != "none"

    def validate(self, check_env: bool = True) -> None:
        """Raise ``ValueError`` naming the option for any bad input, before any compute."""
        self.seed_list  # noqa: B018  (parse_seeds raises naming --seeds)
        if self.optimizer != "es":
            raise ValueError(f"--optimizer: ESConfig is the `es` trainer, got {self.optimizer!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation: unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.popsize < 2 or self.popsize % 2:
            raise ValueError(f"--popsize: must be an even number >= 2 (antithetic pairs), got {self.popsize}")
        from plastix.algos.es_strategies import check_strategy

        check_strategy(self.strategy, self.learning_rate, ESConfig.learning_rate)
        for name in ("sigma", "learning_rate", "episode_steps", "obs_clip", "log_every", "checkpoint_every",
                     "diagnostics_batch"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "diagnostics_every", "num_threads", "overlap_tau", "zero_grad_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"--hidden-sizes: need one or more positive widths, got {self.hidden_sizes}")
        if any(t < 0 for t in self.dormant_taus):
            raise ValueError(f"--dormant-taus: thresholds must be >= 0, got {self.dormant_taus}")
        self._validate_rounds()
        if check_env:
            from plastix.envs.envpool_bridge import check_env_id
            from plastix.envs.shifts import check_shift_supported

            check_env_id(self.env_id)
            check_shift_supported(self.env_id, self.shift)

    def _validate_rounds(self) -> None:
        if self.shift not in ES_SHIFTS:
            raise ValueError(f"--shift: ES trains with --shift {' or '.join(ES_SHIFTS)}, got {self.shift!r}")
        if self.baseline not in ("none", "fresh"):
            raise ValueError(f"--baseline: none or fresh, got {self.baseline!r}")
        if self.rounds < 1:
            raise ValueError(f"--rounds: must be >= 1, got {self.rounds}")
        if self.generations_per_round < 1:
            option = "--steps-per-round" if self.steps_per_round is not None else "--total-timesteps"
            raise ValueError(
                f"{option}: {self.round_steps} env steps per round is less than one generation "
                f"(popsize * episode_steps = {self.steps_per_generation})"
            )


def _ask_tell(strategy: str) -> tuple[Callable, Callable]:
    """``(ask, tell)`` of ``--es.strategy``: ``es_ask``/``es_tell``, or evosax's through ``es_strategies``."""
    if strategy == "openai":
        return es_ask, es_tell
    from plastix.algos.es_strategies import strategy_ask, strategy_tell

    return strategy_ask, strategy_tell


def es_config_from_train_config(train_cfg: Any, **es_options: Any) -> ESConfig:
    """An ``ESConfig`` sharing a PPO ``TrainConfig``'s env, seeds, budget, network and diagnostics options.

    Copied: ``env_id, seeds, total_timesteps, rounds, steps_per_round, shift, shift_seed, baseline,
    activation, hidden_sizes, layer_norm, obs_clip, diagnostics_every, dormant_taus, overlap_tau,
    zero_grad_eps, run_dir, log_every, checkpoint_every, num_threads, quiet`` (``log_every`` and
    ``checkpoint_every`` count generations).
    Not copied (different meaning or scale in ES): ``learning_rate`` and ``weight_decay``; give the ES ones
    (and ``popsize``, ``sigma``, ``episode_steps``...) as ``es_options``.
    """
    shared = ("env_id", "seeds", "total_timesteps", "rounds", "steps_per_round", "shift", "shift_seed", "baseline",
              "activation", "hidden_sizes", "layer_norm", "obs_clip", "diagnostics_every", "dormant_taus",
              "overlap_tau", "zero_grad_eps", "run_dir", "log_every", "checkpoint_every", "num_threads", "quiet")
    values = {name: getattr(train_cfg, name) for name in shared if hasattr(train_cfg, name)}
    return ESConfig(**{**values, **es_options})


def is_legacy_es_config(data: dict) -> bool:
    """Whether a run folder's ``config.json`` ``config`` is an ``ESConfig`` (plastix before the one run loop,
    up to ``cf1bde5``: ES runs saved their own config; now they save the ``TrainConfig`` with ``es.*``)."""
    return data.get("optimizer") == "es" and "es" not in data and "popsize" in data


def train_config_dict_from_es_config(data: dict, where: str) -> dict:
    """The ``TrainConfig`` dict of an ES run whose ``config.json`` holds an ``ESConfig``
    (``is_legacy_es_config``): ``ESOptions``' fields into the ``es`` group, the options that
    ``es_config_from_train_config`` copies at the top.

    Exact or refused: the converted config must give back the saved ``ESConfig`` through
    ``es_config_from_train_config``, else ``ConfigError`` naming the options it cannot express
    (``eval_mean_policy``, ``normalize_obs`` and ``diagnostics_batch`` have no ``TrainConfig`` option for ES:
    they must be ``ESConfig``'s defaults)."""
    from plastix.config import ConfigError, ESOptions, TrainConfig, config_from_dict

    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    group = {f.name for f in dataclasses.fields(ESOptions)}
    top = {f.name for f in dataclasses.fields(TrainConfig)} - group - {"es"}
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(ESConfig)})
    if unknown:
        raise ConfigError(f"{where}: an ES run's config (ESConfig) with options this plastix does not know: "
                          f"{', '.join(unknown)}")
    converted = {k: v for k, v in saved.items() if k in top}
    converted["es"] = {k: v for k, v in saved.items() if k in group}
    cfg = config_from_dict(converted)
    # Older ES runs had no --checkpoint-every (they saved only at the end): any value expresses them.
    expected = ESConfig(**{**saved, "checkpoint_every": cfg.checkpoint_every})
    got = es_config_from_train_config(cfg, **dataclasses.asdict(cfg.es))
    lost = [f.name for f in dataclasses.fields(ESConfig) if getattr(got, f.name) != getattr(expected, f.name)]
    if lost:
        raise ConfigError(f"{where}: an ES run's config (ESConfig) whose {', '.join(lost)} "
                          f"({', '.join(repr(getattr(expected, n)) for n in lost)}) no plastix train option "
                          "expresses; this plastix cannot read the run")
    return converted


# ====================================================================================== env rollouts
@struct.dataclass
class Rollout:
    """One generation's episodes, per training seed ``S`` and evaluated member ``M``."""

    returns: jax.Array  # [S, M] float64: raw episode return (rewards until the episode's end)
    lengths: jax.Array  # [S, M] int32: steps until the end (episode_steps if it never ended)
    obs_rms: nz.RunningMeanStd  # [S, ...]: the statistics merged with every observation acted on
    sample: jax.Array  # [S, T * k, D] float32: normalised observations of k random members per step
    replay: Any  # the env bridge's replay record (envs.replay.ResetRecord [S, M]) after the episodes' steps


def member_env_seeds(seed: int, popsize: int, eval_mean_policy: bool, same_start_pairs: bool) -> list[int]:
    """envpool env seeds of training seed ``seed``'s ``popsize (+1)`` envs (see the module docstring)."""
    m = popsize + int(eval_mean_policy)
    base = seed * m
    if not same_start_pairs:
        return [base + j for j in range(m)]
    half = popsize // 2
    pairs = [base + (j % half) for j in range(popsize)]
    return pairs + ([base + half] if eval_mean_policy else [])


def merge_moments(rms: nz.RunningMeanStd, total: jax.Array, total_sq: jax.Array, count: jax.Array) -> nz.RunningMeanStd:
    """Merge a batch given by its sums (``sum x``, ``sum x^2``, count) into ``rms``, as ``nz.rms_update``."""
    count = jnp.maximum(count, 1.0)
    batch_mean = total / count
    batch_var = jnp.maximum(total_sq / count - batch_mean**2, 0.0)
    delta = batch_mean - rms.mean
    n = rms.count + count
    mean = rms.mean + delta * count / n
    m2 = rms.var * rms.count + batch_var * count + delta**2 * rms.count * count / n
    return nz.RunningMeanStd(mean, m2 / n, n)


def rollout(
    policy_fn: Callable[[jax.Array, jax.Array], jax.Array],
    pool_step: Callable,
    members: jax.Array,
    obs_rms: nz.RunningMeanStd,
    raw_obs: jax.Array,
    handle: Any,
    sample_members: jax.Array,
    obs_clip: float,
    normalize: bool,
    action_low: np.ndarray,
    action_high: np.ndarray,
    replay: Any,
) -> tuple[Any, Rollout]:
    """Run one episode per member, all seeds at once, inside a ``lax.scan`` (``T`` = ``sample_members.shape[1]``).

    Args:
        policy_fn: ``(flat params [P], obs [D] float32) -> mean action [A]``.
        pool_step: ``(handle, action [S, M, A]) -> handle, (obs [S, M, D], reward, terminated, truncated)``.
        members: flat parameters ``[S, M, P]``.
        obs_rms: per-seed observation statistics (leading axis S), frozen during the episode.
        raw_obs: the pool's reset observations ``[S, M, D]``.
        handle: envpool's XLA handle.
        sample_members: ``[S, T, k]`` int32 members whose observations are kept for the diagnostics.
        obs_clip, normalize: observation normalisation (static).
        action_low, action_high: action bounds ``[A]``.
        replay: the env bridge's replay record of the pool (``[S, M]``), advanced by every step
            (``REPLAY.record``) for an exact resume; the rollout does not look inside.
    """
    s, m = members.shape[:2]
    if normalize:
        normalize_fn = lambda rms, o: nz.normalize_obs(rms, o, obs_clip)
    else:
        normalize_fn = lambda rms, o: o.astype(jnp.float32)
    act_fn = jax.vmap(jax.vmap(policy_fn))

    def body(carry, idx):
        handle, raw, alive, ret, length, total, total_sq, count, ended, replay = carry
        obs = jax.vmap(normalize_fn)(obs_rms, raw)
        action = jnp.clip(act_fn(members, obs), action_low, action_high)
        handle, (next_raw, reward, terminated, truncated) = pool_step(handle, action)
        replay = REPLAY.record(replay, action, ~ended)  # a reset step: the one after an episode ended
        weight = alive.astype(jnp.float64)[..., None]
        total = total + jnp.sum(weight * raw, axis=1)
        total_sq = total_sq + jnp.sum(weight * raw**2, axis=1)
        count = count + jnp.sum(alive, axis=1).astype(jnp.float64)
        ret = ret + jnp.where(alive, reward.astype(jnp.float64), 0.0)
        length = length + alive.astype(jnp.int32)
        alive = alive & ~(terminated | truncated)
        kept = jnp.take_along_axis(obs, idx[..., None], axis=1)  # [S, k, D]
        ended = terminated | truncated
        return (handle, next_raw, alive, ret, length, total, total_sq, count, ended, replay), kept

    d = raw_obs.shape[-1]
    zeros_sd = jnp.zeros((s, d), jnp.float64)
    init = (handle, raw_obs, jnp.ones((s, m), bool), jnp.zeros((s, m), jnp.float64), jnp.zeros((s, m), jnp.int32),
            zeros_sd, zeros_sd, jnp.zeros((s,), jnp.float64), jnp.zeros((s, m), bool), replay)
    carry, kept = jax.lax.scan(body, init, jnp.swapaxes(sample_members, 0, 1))
    handle, _, _, ret, length, total, total_sq, count, _, replay = carry
    new_rms = jax.vmap(merge_moments)(obs_rms, total, total_sq, count)
    sample = jnp.swapaxes(kept, 0, 1).reshape(s, -1, d)
    return handle, Rollout(ret, length, new_rms, sample, replay)


# =============================================================================================== train
@struct.dataclass
class ESRunState:
    """Everything ``train_es`` carries between generations, stacked over lanes (the seeds, then any fresh copies)."""

    es: ESState
    obs_rms: nz.RunningMeanStd
    diagnostics: diag.DiagnosticsState
    key: jax.Array  # [S] per-seed root keys
    replay: Any  # the env bridge's replay record of the lane's envs (``REPLAY``; ESRun.restore hands it back)


class ESTrainer:
    """The compiled pieces of ``train_es`` for one config and env pool (see the module docstring)."""

    def __init__(self, cfg: ESConfig, obs_dim: int, action_dim: int, action_low, action_high):
        self.cfg = cfg
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)
        # CleanRL's policy-mean MLP (orthogonal init, output gain 0.01), as ActorCritic's params["policy"].
        self.net = MLP(tuple(cfg.hidden_sizes), cfg.activation, action_dim, 0.01, cfg.layer_norm)
        shapes = jax.eval_shape(self.net.init, jax.random.PRNGKey(0), jnp.zeros((1, obs_dim), jnp.float32))["params"]
        _, self.unravel = ravel_pytree(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
        self.samples_per_step = max(1, math.ceil(cfg.diagnostics_batch / cfg.episode_steps))

    def policy_fn(self, flat: jax.Array, obs: jax.Array) -> jax.Array:
        """Deterministic mean action of the policy with flat parameters ``flat`` ``[P]``."""
        return self.net.apply({"params": self.unravel(flat)}, obs)

    def forward_acts(self, params: dict, obs: jax.Array) -> dict:
        """``{"policy/layer_i": (pre, post)}`` of ``params = {"policy": mlp params}``."""
        _, sown = self.net.apply({"params": params["policy"]}, obs, mutable=["intermediates"])
        return {f"policy/{k}": v for k, v in hidden_activations(sown["intermediates"]).items()}

    def init(self, seed_key: jax.Array, raw_obs: jax.Array) -> ESRunState:
        """Fresh state of one seed; ``raw_obs`` ``[M, D]`` are the pool's first reset observations."""
        init_key, run_key = jax.random.split(seed_key)
        params = self.net.init(init_key, jnp.zeros((1, self.obs_dim), jnp.float32))["params"]
        flat, _ = ravel_pytree(params)
        cfg = self.cfg
        if cfg.strategy == "openai":
            es = es_init(flat, cfg.popsize, cfg.sigma, cfg.learning_rate, cfg.weight_decay)
        else:  # evosax's CMA-ES / SNES / PGPE, with the same ask / tell interface
            from plastix.algos.es_strategies import strategy_init

            es = strategy_init(cfg.strategy, flat, cfg.popsize, cfg.sigma, cfg.learning_rate, cfg.weight_decay)
        obs_rms = nz.rms_update(nz.rms_init((self.obs_dim,)), raw_obs)
        tree = {"policy": params}
        return ESRunState(es, obs_rms, diag.diagnostics_init(tree, self.layer_shapes(tree)), run_key,
                          REPLAY.init(raw_obs.shape[0]))

    def layer_shapes(self, tree: dict) -> dict[str, tuple[int, int]]:
        """``{"policy/layer_i": (output units, kernel columns)}`` (they differ for CReLU)."""
        acts = jax.eval_shape(self.forward_acts, tree, jnp.zeros((1, self.obs_dim), jnp.float32))
        return {name: (post.shape[-1], tree["policy"][name.split("/")[1]]["kernel"].shape[1])
                for name, (_, post) in acts.items()}

    def generation(self, state: ESRunState, raw_obs: jax.Array, handle: Any, pool_step: Callable, measure: jax.Array):
        """One generation for every lane: ask, roll out (the pool), tell, merge obs statistics, diagnostics.

        ``raw_obs`` ``[L, M, D]`` (the host reset; ``L`` lanes: the seeds, then any fresh copies), ``measure``
        a bool scalar. Returns ``(state, handle, metrics {key: [L]})``.
        """
        cfg = self.cfg
        gen_keys = jax.vmap(jax.random.fold_in)(state.key, state.es.generation)
        ask_keys, sample_keys, diag_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(gen_keys), 1, 0)
        ask, tell = _ask_tell(cfg.strategy)
        population, noise = jax.vmap(ask)(state.es, ask_keys)
        members = jnp.concatenate([population, state.es.mean[:, None]], axis=1) if cfg.eval_mean_policy else population
        m = members.shape[1]
        sample_members = jax.vmap(
            lambda k: jax.random.randint(k, (cfg.episode_steps, self.samples_per_step), 0, m, jnp.int32)
        )(sample_keys)
        handle, ro = rollout(self.policy_fn, pool_step, members, state.obs_rms, raw_obs, handle, sample_members,
                             cfg.obs_clip, cfg.normalize_obs, self.action_low, self.action_high, state.replay)
        pop_returns = ro.returns[:, : cfg.popsize]
        es, es_metrics = jax.vmap(tell)(state.es, noise, pop_returns.astype(jnp.float32))
        metrics = dict(es_metrics)
        metrics["return/mean"] = jnp.mean(pop_returns, axis=1)
        metrics["return/max"] = jnp.max(pop_returns, axis=1)
        metrics["return/min"] = jnp.min(pop_returns, axis=1)
        metrics["return/std"] = jnp.std(pop_returns, axis=1)
        metrics["episode/length_mean"] = jnp.mean(ro.lengths[:, : cfg.popsize].astype(jnp.float32), axis=1)
        if cfg.eval_mean_policy:
            metrics["return/mean_policy"] = ro.returns[:, -1]
        metrics["return/episodic"] = metrics.get("return/mean_policy", metrics["return/mean"])
        obs_rms = ro.obs_rms if cfg.normalize_obs else state.obs_rms
        diag_metrics, diagnostics = self.diagnostics(
            es, state.es.mean, state.diagnostics, ro.sample, diag_keys, measure)
        metrics.update(diag_metrics)
        return ESRunState(es, obs_rms, diagnostics, state.key, ro.replay), handle, metrics

    def diagnostics(self, es: ESState, prev_mean: jax.Array, dstate: diag.DiagnosticsState, sample: jax.Array,
                    keys: jax.Array, measure):
        """PPO's policy diagnostics of the mean policies (``[S]``) under ``lax.cond``; NaN when not measured.
        ``prev_mean`` ``[S, P]``, the means before this generation's step, gives the per-update change."""
        if self.cfg.diagnostics_every == 0:
            return {}, dstate
        batch = min(self.cfg.diagnostics_batch, sample.shape[1])

        def one(flat, prev_flat, ds, obs, key):
            obs = obs[jax.random.permutation(key, obs.shape[0])[:batch]]
            tree = {"policy": self.unravel(flat)}
            metrics, _, ds = diag.measure(tree, self.forward_acts, lambda p: jnp.zeros((), jnp.float32), obs,
                                          self.cfg.activation, ds, tuple(self.cfg.dormant_taus),
                                          self.cfg.overlap_tau, self.cfg.zero_grad_eps,
                                          prev_params={"policy": self.unravel(prev_flat)})
            return {k: v for k, v in metrics.items() if not (k.endswith("/loss") or k.endswith("/grad_norm"))}, ds

        # lax.map over lanes, not vmap: vmapped, the rank diagnostics' QR and SVD become *batched* LAPACK
        # calls, and jaxlib 0.10's batched kernels (ParallelBatchMap) queue their batch on XLA's CPU pool and
        # block until it is done. Two of them running at once (the features' QR and an SVD) hold both threads
        # of a 2-core pool waiting for work no thread is left to run: the ES run hangs for ever (found with
        # gdb at the evidence scale's second measured generation). Unbatched, each call runs on its thread.
        run = lambda: jax.lax.map(lambda x: one(*x), (es.mean, prev_mean, dstate, sample, keys))
        shapes = jax.eval_shape(run)
        skip = lambda: (jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes[0]), dstate)
        return jax.lax.cond(measure, run, skip)


def default_run_dir(cfg: ESConfig) -> Path:
    """``runs/<env-id>__es__<activation>__<time>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id}__es__{cfg.activation}__{stamp}"


def make_pool(cfg: ESConfig):
    """The envpool bridge holding ``envs_per_seed`` envs per lane (flat: one env per "seed" entry).

    Lanes are the seeds, then (``baseline = "fresh"``) their fresh copies, which reuse their seed's env
    seeds: a copy faces the same start states as its seed. The bridge applies the round's shift (``cfg``
    is its scenario: ``shift``, ``shift_seed``).
    """
    from plastix.envs.envpool_bridge import EnvpoolBridge

    lane_seeds = cfg.seed_list * cfg.lanes_per_seed
    env_seeds = [e for s in lane_seeds for e in member_env_seeds(s, cfg.popsize, cfg.eval_mean_policy, cfg.same_start_pairs)]
    bridge = EnvpoolBridge(cfg.env_id, env_seeds, 1, cfg.num_threads, scenario=cfg)
    if cfg.episode_steps > bridge.max_episode_steps:
        bridge.close()
        raise ValueError(f"--episode-steps: {cfg.episode_steps} exceeds {cfg.env_id}'s episode limit of "
                         f"{bridge.max_episode_steps} steps")
    return bridge


# ========================================================================================== rounds
def fresh_key(seed: int, round_idx: int) -> jax.Array:
    """Root key of seed ``seed``'s fresh copy in round ``round_idx``: ``fold_in(fold_in(PRNGKey(seed), FRESH_STREAM), r)``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), FRESH_STREAM), round_idx)


def reinit_fresh_lanes(init_fn: Callable, state: ESRunState, seeds: list[int], round_idx: int,
                       raw_obs: jax.Array) -> ESRunState:
    """Re-initialise the fresh copies' lanes (``S..2S-1``) of ``state`` for round ``round_idx``.

    ``init_fn(keys [S], raw_obs [S, M, D]) -> ESRunState`` (the trainer's init over lanes); ``raw_obs``
    ``[2S, M, D]`` the round's reset observations. The copies get a new ES state, diagnostics state and PRNG
    stream from ``fresh_key(seed, round_idx)`` and keep their observation statistics (module docstring); the
    seeds' lanes are returned untouched.
    """
    s = len(seeds)
    new = init_fn(jnp.stack([fresh_key(sd, round_idx) for sd in seeds]), raw_obs[s:])
    fresh = jax.tree.map(lambda x: x[s:], state).replace(es=new.es, diagnostics=new.diagnostics, key=new.key)
    return jax.tree.map(lambda old, copy: jnp.concatenate([old[:s], copy]), state, fresh)


def split_lanes(metrics: dict[str, np.ndarray], num_seeds: int) -> dict[str, np.ndarray]:
    """The seeds' metrics ``{key: [S]}`` of ``{key: [lanes]}``, plus the fresh copies' ``return/episodic`` as
    ``baseline/return/episodic`` when there are copies (PPO's key; their other metrics are not written)."""
    out = {k: np.asarray(v)[:num_seeds] for k, v in metrics.items()}
    if np.asarray(metrics["return/episodic"]).shape[0] > num_seeds:
        out["baseline/return/episodic"] = np.asarray(metrics["return/episodic"])[num_seeds:]
    return out


def round_rows(episodic: np.ndarray, num_seeds: int, round_idx: int) -> dict[str, np.ndarray]:
    """The round's summary rows ``{key: [1, S]}`` from ``return/episodic`` of its generations ``[G, lanes]``.

    ``return_train`` (and ``return_fresh`` when there are fresh lanes) is the mean over the last
    ``max(1, G // 4)`` generations; ``normalized_return = return_train / return_fresh`` (module docstring).
    """
    last = episodic[-max(1, episodic.shape[0] // 4):]
    per_lane = np.mean(last, axis=0)
    train = per_lane[:num_seeds]
    rows = {"round/index": np.full((1, num_seeds), float(round_idx)), "round/return_train": train[None]}
    if per_lane.shape[0] > num_seeds:
        fresh = per_lane[num_seeds:]
        rows["round/return_fresh"] = fresh[None]
        with np.errstate(divide="ignore", invalid="ignore"):  # undefined (NaN: not written) when fresh is 0
            rows["round/normalized_return"] = np.where(fresh != 0, train / fresh, np.nan)[None]
    return rows


# =============================================================================================== train
@struct.dataclass
class ESFinal:
    """What ``training.load_checkpoint`` returns for an ES run: the seeds' mean policies as PPO's
    ``params["policy"]`` (stacked over seeds), their observation statistics and their whole ES state (None for
    a run of plastix up to ``cf1bde5``, whose only checkpoint held the first two: ``holds_es_state``)."""

    params: dict
    obs_rms: nz.RunningMeanStd
    run: ESRunState | None


def holds_es_state(checkpoint: Path) -> bool:
    """Whether an ES checkpoint holds the lanes' ES state (``ESRun.checkpoint_tree``'s ``run``), which a
    resume needs; plastix up to ``cf1bde5`` saved only the final mean policies and observation statistics."""
    return "run" in store.checkpoint_structure(checkpoint)


@dataclass
class ESLoopState:
    """``ESRun``'s state between ``run_loop`` calls: the lanes' ES state, the env handle, the observations of a
    reset already done for the next generation (at a round start) and the generations done."""

    run: ESRunState
    handle: Any
    raw_obs: Any
    done: int


class ESRun:
    """``train_es`` as a ``plastix.runloop.Trainer``: one generation per ``run`` call (the host resets the
    pool before each), rounds with fresh lanes, checkpoints of every lane, exact resume.

    A checkpoint holds ``{"run": ESRunState of every lane, "params": {"policy": ...}, "obs_rms": ...}`` (the
    last two: the seeds' lanes in the layout of PPO's ``params["policy"]``, for the task-switch probes). On
    resume the pool is brought back by the env bridge from the replay record the lanes carry
    (``ESRunState.replay``: the rollout records its steps, ``reset`` the host's resets after the first), so
    the next generation starts where it would have.
    """

    def __init__(self, cfg: ESConfig, bridge: Any = None):
        self.cfg = cfg
        self.seeds = cfg.seed_list
        self.lanes, self.m = len(self.seeds) * cfg.lanes_per_seed, cfg.envs_per_seed
        self.bridge = bridge if bridge is not None else make_pool(cfg)
        b = self.bridge
        self.trainer = ESTrainer(cfg, b.obs_dim, b.action_dim, b.action_low, b.action_high)
        # lax.map: vmapped orthogonal inits batch LAPACK QRs, which can deadlock jaxlib 0.10 on 2 cores.
        self.init_fn = jax.jit(lambda k, o: jax.lax.map(lambda x: self.trainer.init(*x), (k, o)))
        self.generation = None  # compiled at the first generation (time/sps excludes compiling)
        self.history: dict[int, np.ndarray] = {}  # generation (1-based) -> return/episodic of every lane
        self.schedule = Schedule(
            seeds=self.seeds, num_iterations=cfg.num_generations, iterations_per_round=cfg.generations_per_round,
            log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            steps_per_iteration=cfg.steps_per_generation, max_chunk=1, parts_end_at_rounds=False,
            writes_rounds=cfg.writes_rounds, label=f"{cfg.env_id} ES seeds {cfg.seeds}", quiet=cfg.quiet)

    def pool_step(self, handle, action):
        lanes, m = self.lanes, self.m
        handle, out = self.bridge.step(handle, action.reshape(lanes * m, 1, -1))
        return handle, tuple(x.reshape((lanes, m) + x.shape[2:]) for x in out[:4])  # obs, reward, terminated, truncated

    def reset_obs(self) -> jax.Array:
        """Reset every env of the pool: its observations ``[lanes, M, D]``."""
        return jnp.asarray(self.bridge.reset().reshape(self.lanes, self.m, -1))

    def reset(self, run: ESRunState) -> tuple[jax.Array, ESRunState]:
        """A reset of every env after the first (before a generation), recorded in ``run``'s replay record."""
        return self.reset_obs(), run.replace(replay=REPLAY.reset(run.replay))

    def init(self) -> ESLoopState:
        first_obs = self.first_obs = self.reset_obs()
        # Every lane starts from its seed's key: in round 0 a fresh copy is its seed (module docstring).
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(self.seeds * self.cfg.lanes_per_seed))
        return ESLoopState(self.init_fn(keys, first_obs), self.bridge.handle(), first_obs, 0)

    def checkpoint_tree(self, state: ESLoopState) -> dict:
        seed_lanes = jax.tree.map(lambda x: x[: len(self.seeds)], state.run)
        return {"run": state.run, "params": {"policy": jax.vmap(self.trainer.unravel)(seed_lanes.es.mean)},
                "obs_rms": seed_lanes.obs_rms}

    def restore(self, run_dir: Path, checkpoint: Path, iteration: int, fresh: ESLoopState) -> ESLoopState:
        from plastix.training import restore_es_checkpoint

        run = restore_es_checkpoint(checkpoint, self.checkpoint_tree(fresh), iteration)["run"]
        self.bridge.restore(jax.device_get(run.replay))  # init() reset the new pool once, as the first reset
        if self.schedule.writes_rounds:
            self.history = episodic_history(store.read_metrics(run_dir), self.seeds, self.lanes, iteration)
        return ESLoopState(run, fresh.handle, None, iteration)

    def enter_round(self, state: ESLoopState, round_idx: int) -> ESLoopState:
        return dataclasses.replace(state, handle=self.bridge.set_round(round_idx, state.handle))

    def start_round(self, state: ESLoopState, round_idx: int) -> ESLoopState:
        """The round's reset, its direction, and (``baseline = "fresh"``) new fresh copies."""
        raw_obs, run = self.reset(state.run)
        handle = self.bridge.set_round(round_idx, state.handle)
        if self.cfg.lanes_per_seed == 2:
            run = reinit_fresh_lanes(self.init_fn, run, self.seeds, round_idx, raw_obs)
        return ESLoopState(run, handle, raw_obs, state.done)

    def run(self, state: ESLoopState, k: int):
        assert k == 1, "ESRun runs one generation per call (the host resets the pool between generations)"
        cfg, g = self.cfg, state.done
        if self.generation is None:
            fn = jax.jit(lambda st, obs, h, do: self.trainer.generation(st, obs, h, self.pool_step, do))
            obs = state.raw_obs if state.raw_obs is not None else self.first_obs
            self.generation = fn.lower(state.run, obs, state.handle, jnp.asarray(True)).compile()
        t0 = time.perf_counter()
        run, raw_obs = state.run, state.raw_obs
        if raw_obs is None:  # no round start reset the pool for this generation
            raw_obs, run = self.reset(run)
        measure = cfg.diagnostics_every > 0 and g % cfg.diagnostics_every == 0
        run, handle, metrics = self.generation(run, raw_obs, state.handle, jnp.asarray(measure))
        metrics = jax.device_get(metrics)
        self.history[g + 1] = np.asarray(metrics["return/episodic"])
        metrics = split_lanes(metrics, len(self.seeds))
        metrics["time/sps"] = np.full((len(self.seeds),), self.lanes * self.m * cfg.episode_steps
                                      / (time.perf_counter() - t0))
        return ESLoopState(run, handle, None, g + 1), {key: v[None] for key, v in metrics.items()}, None

    def round_rows(self, run_dir: Path, state: ESLoopState, round_idx: int, iteration: int) -> dict:
        per_round = self.cfg.generations_per_round
        episodic = np.stack([self.history[g] for g in range(iteration - per_round + 1, iteration + 1)])
        return round_rows(episodic, len(self.seeds), round_idx)

    def latest_return(self, metrics: dict) -> float:
        return latest_return(metrics["return/episodic"])

    def close(self) -> None:
        self.bridge.close()


def episodic_history(df, seeds: list[int], lanes: int, last: int) -> dict[int, np.ndarray]:
    """``{generation: return/episodic of every lane}`` for generations ``1..last`` from a run's metrics (the
    seeds' ``return/episodic``, then the fresh copies' ``baseline/return/episodic``), exactly as written."""
    keys = ["return/episodic"] + (["baseline/return/episodic"] if lanes > len(seeds) else [])
    rows = df[df.key.isin(keys) & (df["update"] <= last)]
    table = rows.pivot_table(index="update", columns=["key", "seed"], values="value", aggfunc="first")
    columns = [(key, seed) for key in keys for seed in seeds]
    return {int(u): table.loc[u, columns].to_numpy(np.float64) for u in table.index}


def train_es(cfg: ESConfig, run_dir: str | Path | None = None, bridge: Any = None, loggers: Any = None,
             resume: bool = False, config: dict | None = None) -> Path:
    """Train OpenAI-ES for every seed of ``cfg`` and write a plastix run folder; returns it.

    The folder holds ``config.json`` (``config``, default ``cfg``'s fields), ``metrics.parquet`` parts of
    ``log_every`` generations (``update`` = generation), one ``-round`` part per round (``round_rows``,
    when ``cfg.writes_rounds``) and orbax checkpoints every ``checkpoint_every`` generations and at the last
    (``ESRun``). ``resume``: continue ``run_dir`` from its newest usable checkpoint (``plastix.runloop``).

    ``bridge``: an already built pool of ``lanes_per_seed * S * envs_per_seed`` envs with
    ``EnvpoolBridge``'s interface (tests pass a JAX stand-in); default ``make_pool(cfg)``.
    """
    cfg.validate(check_env=bridge is None)
    run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
    if resume and not (run_dir / "config.json").exists():
        raise ValueError(f"--resume: {run_dir} is not a plastix run folder (no config.json)")
    if not resume and run_dir.exists():
        raise ValueError(f"--run-dir: {run_dir} already exists; choose another folder")
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    trainer = ESRun(cfg, bridge)
    if resume:
        state, done = resume_point(trainer, run_dir)
    else:
        state, done = trainer.init(), 0
        run_dir.mkdir(parents=True, exist_ok=True)  # the loggers may have made it already
    if not resume or config is not None:
        store.write_config(run_dir, config if config is not None else dataclasses.asdict(cfg))
    run_loop(trainer, run_dir, state, done, loggers if loggers is not None else NoLoggers())
    trainer.close()
    return run_dir
