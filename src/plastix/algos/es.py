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
``time/sps``                    env steps simulated per second (all seeds and members, the host reset included)
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
from plastix.nets import ACTIVATIONS, MLP, hidden_activations

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
    """generations per metrics part (and per progress line)"""
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
    def num_generations(self) -> int:
        return self.total_timesteps // self.steps_per_generation

    @property
    def envs_per_seed(self) -> int:
        return self.popsize + int(self.eval_mean_policy)

    def validate(self, check_env: bool = True) -> None:
        """Raise ``ValueError`` naming the option for any bad input, before any compute."""
        self.seed_list  # noqa: B018  (parse_seeds raises naming --seeds)
        if self.optimizer != "es":
            raise ValueError(f"--optimizer: ESConfig is the `es` trainer, got {self.optimizer!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation: unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if self.popsize < 2 or self.popsize % 2:
            raise ValueError(f"--popsize: must be an even number >= 2 (antithetic pairs), got {self.popsize}")
        for name in ("sigma", "learning_rate", "episode_steps", "obs_clip", "log_every", "diagnostics_batch"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "diagnostics_every", "num_threads", "overlap_tau", "zero_grad_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"--hidden-sizes: need one or more positive widths, got {self.hidden_sizes}")
        if any(t < 0 for t in self.dormant_taus):
            raise ValueError(f"--dormant-taus: thresholds must be >= 0, got {self.dormant_taus}")
        if self.num_generations < 1:
            raise ValueError(
                f"--total-timesteps: {self.total_timesteps} is less than one generation "
                f"(popsize * episode_steps = {self.steps_per_generation})"
            )
        if check_env:
            from plastix.envs.envpool_bridge import check_env_id

            check_env_id(self.env_id)


def es_config_from_train_config(train_cfg: Any, **es_options: Any) -> ESConfig:
    """An ``ESConfig`` sharing a PPO ``TrainConfig``'s env, seeds, budget, network and diagnostics options.

    Copied: ``env_id, seeds, total_timesteps, activation, hidden_sizes, layer_norm, obs_clip,
    diagnostics_every, dormant_taus, overlap_tau, zero_grad_eps, run_dir, log_every, num_threads, quiet``.
    Not copied (different meaning or scale in ES): ``learning_rate`` and ``weight_decay``; give the ES ones
    (and ``popsize``, ``sigma``, ``episode_steps``...) as ``es_options``.
    """
    shared = ("env_id", "seeds", "total_timesteps", "activation", "hidden_sizes", "layer_norm", "obs_clip",
              "diagnostics_every", "dormant_taus", "overlap_tau", "zero_grad_eps", "run_dir", "log_every",
              "num_threads", "quiet")
    values = {name: getattr(train_cfg, name) for name in shared if hasattr(train_cfg, name)}
    return ESConfig(**{**values, **es_options})


# ====================================================================================== env rollouts
@struct.dataclass
class Rollout:
    """One generation's episodes, per training seed ``S`` and evaluated member ``M``."""

    returns: jax.Array  # [S, M] float64: raw episode return (rewards until the episode's end)
    lengths: jax.Array  # [S, M] int32: steps until the end (episode_steps if it never ended)
    obs_rms: nz.RunningMeanStd  # [S, ...]: the statistics merged with every observation acted on
    sample: jax.Array  # [S, T * k, D] float32: normalised observations of k random members per step


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
    """
    s, m = members.shape[:2]
    if normalize:
        normalize_fn = lambda rms, o: nz.normalize_obs(rms, o, obs_clip)
    else:
        normalize_fn = lambda rms, o: o.astype(jnp.float32)
    act_fn = jax.vmap(jax.vmap(policy_fn))

    def body(carry, idx):
        handle, raw, alive, ret, length, total, total_sq, count = carry
        obs = jax.vmap(normalize_fn)(obs_rms, raw)
        action = jnp.clip(act_fn(members, obs), action_low, action_high)
        handle, (next_raw, reward, terminated, truncated) = pool_step(handle, action)
        weight = alive.astype(jnp.float64)[..., None]
        total = total + jnp.sum(weight * raw, axis=1)
        total_sq = total_sq + jnp.sum(weight * raw**2, axis=1)
        count = count + jnp.sum(alive, axis=1).astype(jnp.float64)
        ret = ret + jnp.where(alive, reward.astype(jnp.float64), 0.0)
        length = length + alive.astype(jnp.int32)
        alive = alive & ~(terminated | truncated)
        kept = jnp.take_along_axis(obs, idx[..., None], axis=1)  # [S, k, D]
        return (handle, next_raw, alive, ret, length, total, total_sq, count), kept

    d = raw_obs.shape[-1]
    zeros_sd = jnp.zeros((s, d), jnp.float64)
    init = (handle, raw_obs, jnp.ones((s, m), bool), jnp.zeros((s, m), jnp.float64), jnp.zeros((s, m), jnp.int32),
            zeros_sd, zeros_sd, jnp.zeros((s,), jnp.float64))
    carry, kept = jax.lax.scan(body, init, jnp.swapaxes(sample_members, 0, 1))
    handle, _, _, ret, length, total, total_sq, count = carry
    new_rms = jax.vmap(merge_moments)(obs_rms, total, total_sq, count)
    sample = jnp.swapaxes(kept, 0, 1).reshape(s, -1, d)
    return handle, Rollout(ret, length, new_rms, sample)


# =============================================================================================== train
@struct.dataclass
class ESRunState:
    """Everything ``train_es`` carries between generations, stacked over training seeds."""

    es: ESState
    obs_rms: nz.RunningMeanStd
    diagnostics: diag.DiagnosticsState
    key: jax.Array  # [S] per-seed root keys


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
        es = es_init(flat, cfg.popsize, cfg.sigma, cfg.learning_rate, cfg.weight_decay)
        obs_rms = nz.rms_update(nz.rms_init((self.obs_dim,)), raw_obs)
        tree = {"policy": params}
        return ESRunState(es, obs_rms, diag.diagnostics_init(tree, self.layer_shapes(tree)), run_key)

    def layer_shapes(self, tree: dict) -> dict[str, tuple[int, int]]:
        """``{"policy/layer_i": (output units, kernel columns)}`` (they differ for CReLU)."""
        acts = jax.eval_shape(self.forward_acts, tree, jnp.zeros((1, self.obs_dim), jnp.float32))
        return {name: (post.shape[-1], tree["policy"][name.split("/")[1]]["kernel"].shape[1])
                for name, (_, post) in acts.items()}

    def generation(self, state: ESRunState, raw_obs: jax.Array, handle: Any, pool_step: Callable, measure: jax.Array):
        """One generation for every seed: ask, roll out (the pool), tell, merge obs statistics, diagnostics.

        ``raw_obs`` ``[S, M, D]`` (the host reset), ``measure`` a bool scalar. Returns
        ``(state, handle, metrics {key: [S]})``.
        """
        cfg = self.cfg
        gen_keys = jax.vmap(jax.random.fold_in)(state.key, state.es.generation)
        ask_keys, sample_keys, diag_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(gen_keys), 1, 0)
        population, noise = jax.vmap(es_ask)(state.es, ask_keys)
        members = jnp.concatenate([population, state.es.mean[:, None]], axis=1) if cfg.eval_mean_policy else population
        m = members.shape[1]
        sample_members = jax.vmap(
            lambda k: jax.random.randint(k, (cfg.episode_steps, self.samples_per_step), 0, m, jnp.int32)
        )(sample_keys)
        handle, ro = rollout(self.policy_fn, pool_step, members, state.obs_rms, raw_obs, handle, sample_members,
                             cfg.obs_clip, cfg.normalize_obs, self.action_low, self.action_high)
        pop_returns = ro.returns[:, : cfg.popsize]
        es, es_metrics = jax.vmap(es_tell)(state.es, noise, pop_returns.astype(jnp.float32))
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
        diag_metrics, diagnostics = self.diagnostics(es, state.diagnostics, ro.sample, diag_keys, measure)
        metrics.update(diag_metrics)
        return ESRunState(es, obs_rms, diagnostics, state.key), handle, metrics

    def diagnostics(self, es: ESState, dstate: diag.DiagnosticsState, sample: jax.Array, keys: jax.Array, measure):
        """PPO's policy diagnostics of the mean policies (``[S]``) under ``lax.cond``; NaN when not measured."""
        if self.cfg.diagnostics_every == 0:
            return {}, dstate
        batch = min(self.cfg.diagnostics_batch, sample.shape[1])

        def one(flat, ds, obs, key):
            obs = obs[jax.random.permutation(key, obs.shape[0])[:batch]]
            tree = {"policy": self.unravel(flat)}
            metrics, _, ds = diag.measure(tree, self.forward_acts, lambda p: jnp.zeros((), jnp.float32), obs,
                                          self.cfg.activation, ds, tuple(self.cfg.dormant_taus),
                                          self.cfg.overlap_tau, self.cfg.zero_grad_eps)
            return {k: v for k, v in metrics.items() if not (k.endswith("/loss") or k.endswith("/grad_norm"))}, ds

        run = lambda: jax.vmap(one)(es.mean, dstate, sample, keys)
        shapes = jax.eval_shape(run)
        skip = lambda: (jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes[0]), dstate)
        return jax.lax.cond(measure, run, skip)


def default_run_dir(cfg: ESConfig) -> Path:
    """``runs/<env-id>__es__<activation>__<time>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id}__es__{cfg.activation}__{stamp}"


def make_pool(cfg: ESConfig):
    """The envpool bridge holding ``envs_per_seed`` envs per training seed (flat: one env per "seed" entry)."""
    from plastix.envs.envpool_bridge import EnvpoolBridge

    env_seeds = [e for s in cfg.seed_list
                 for e in member_env_seeds(s, cfg.popsize, cfg.eval_mean_policy, cfg.same_start_pairs)]
    bridge = EnvpoolBridge(cfg.env_id, env_seeds, 1, cfg.num_threads)
    if cfg.episode_steps > bridge.max_episode_steps:
        bridge.close()
        raise ValueError(f"--episode-steps: {cfg.episode_steps} exceeds {cfg.env_id}'s episode limit of "
                         f"{bridge.max_episode_steps} steps")
    return bridge


def train_es(cfg: ESConfig, run_dir: str | Path | None = None) -> Path:
    """Train OpenAI-ES for every seed of ``cfg`` and write a plastix run folder; returns it.

    The folder holds ``config.json`` (``store.write_config``), ``metrics.parquet`` parts of
    ``log_every`` generations (``update`` = generation) and a final orbax checkpoint
    ``{"params": {"policy": ...}, "obs_rms": ...}`` stacked over seeds (the layout of PPO's
    ``params["policy"]``, for the task-switch probes).
    """
    cfg.validate()
    run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
    if run_dir.exists():
        raise ValueError(f"--run-dir: {run_dir} already exists; choose another folder")
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    seeds = cfg.seed_list
    s, m = len(seeds), cfg.envs_per_seed
    bridge = make_pool(cfg)
    trainer = ESTrainer(cfg, bridge.obs_dim, bridge.action_dim, bridge.action_low, bridge.action_high)

    def pool_step(handle, action):
        handle, out = bridge.step(handle, action.reshape(s * m, 1, -1))
        return handle, tuple(x.reshape((s, m) + x.shape[2:]) for x in out[:4])  # obs, reward, terminated, truncated

    reset = lambda: jnp.asarray(bridge.reset().reshape(s, m, -1))
    first_obs = reset()
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    # lax.map: vmapped orthogonal inits batch LAPACK QRs, which can deadlock jaxlib 0.10 on 2 cores.
    state = jax.jit(lambda k, o: jax.lax.map(lambda x: trainer.init(*x), (k, o)))(keys, first_obs)
    handle = bridge.handle()
    generation = jax.jit(lambda st, obs, h, do: trainer.generation(st, obs, h, pool_step, do))
    generation = generation.lower(state, first_obs, handle, jnp.asarray(True)).compile()  # time/sps excludes compiling
    run_dir.mkdir(parents=True)
    store.write_config(run_dir, dataclasses.asdict(cfg))
    buffer: list[dict] = []
    first = 1
    chunk_start = time.perf_counter()
    for g in range(cfg.num_generations):
        t0 = time.perf_counter()
        raw_obs = reset() if g > 0 else first_obs
        measure = cfg.diagnostics_every > 0 and g % cfg.diagnostics_every == 0
        state, handle, metrics = generation(state, raw_obs, handle, jnp.asarray(measure))
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - t0
        metrics["time/sps"] = np.full((s,), s * m * cfg.episode_steps / elapsed)
        buffer.append(metrics)
        if len(buffer) == cfg.log_every or g == cfg.num_generations - 1:
            stacked = {k: np.stack([b[k] for b in buffer]) for k in buffer[0]}
            table = store.metrics_table(stacked, seeds, first, cfg.steps_per_generation)
            store.write_metrics_part(run_dir, table, first)
            if not cfg.quiet:
                rate = len(buffer) / (time.perf_counter() - chunk_start)
                print(f"[es] generation {g + 1}/{cfg.num_generations}  {rate:.2f} gen/s  "
                      f"return/mean {float(np.mean(stacked['return/mean'][-1])):.1f}  "
                      f"return/episodic {float(np.mean(stacked['return/episodic'][-1])):.1f}", flush=True)
            first, buffer, chunk_start = g + 2, [], time.perf_counter()
    final = {"params": {"policy": jax.vmap(trainer.unravel)(state.es.mean)}, "obs_rms": state.obs_rms}
    store.save_checkpoint(run_dir, cfg.num_generations, final)
    bridge.close()
    return run_dir
