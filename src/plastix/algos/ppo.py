"""PPO faithful to CleanRL's ``ppo_continuous_action.py`` (and, for discrete actions, ``ppo.py`` /
``ppo_atari_envpool.py`` / ``ppo_procgen.py``), compiled end to end.

One *update* = a rollout of ``num_steps`` steps in ``num_envs`` envs per seed (env steps inside
``lax.scan``), GAE, then ``update_epochs`` epochs of ``num_minibatches`` minibatches of the clipped PPO
loss. ``make_chunk_fn`` compiles ``K`` updates for every seed at once: per-seed work is ``vmap``-ed over a
leading seed axis, and the env pool (one env group per seed) is stepped once per step for all seeds.

Differences from CleanRL, all deliberate:
- envpool resets an env on the step *after* its episode ends; that "reset step" (action ignored, reward 0)
  does not exist in CleanRL's same-step autoreset, so it is masked out (``Transition.valid``) of the loss,
  of advantage normalisation, of reward statistics and of episode statistics. GAE never crosses it since
  the step before it is ``done``. A minibatch therefore holds up to ``minibatch_size`` valid samples.
- Logged losses are means over every minibatch of the update (CleanRL logs the last minibatch).
- The global grad-norm clip is optax's (``max_norm / norm``) instead of PyTorch's
  ``max_norm / (norm + 1e-6)``.
- Envs whose bridge resets within the step (the JAX gridworld) have no reset steps: nothing is masked.
"""

from __future__ import annotations

import dataclasses
import functools

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from plastix import probes
from plastix.config import ConfigError, TrainConfig
from plastix.envs import EnvSpec
from plastix.diagnostics import curvature
from plastix.diagnostics import training as diag
from plastix.envs import normalize as nz
from plastix.mitigations import INJECTION_KEY, BatchInfo, add_injection_heads, injection_active, make_injected_apply
from plastix.mitigations import build as mitigation_build
from plastix.mitigations.ocp import hidden_layer_magi
from plastix.mitigations.sam import sam_gradient
from plastix.nets import (
    JA_MIN_IMAGE_SIDE,
    ActorCritic,
    CNNActorCritic,
    DiscreteActorCritic,
    JulianiAshActorCritic,
    hidden_activations,
)

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------- state
@struct.dataclass
class EnvState:
    """Per-seed env-side state: normalisation statistics, current observation, episode bookkeeping.

    Shapes are per seed (``n`` = envs per seed). ``replay`` is the env bridge's own record for an exact
    resume (``EnvSpec.replay``: started and advanced by the bridge's functions, read by its ``restore``).
    """

    obs_rms: nz.RunningMeanStd  # [n, D] float64
    reward_norm: nz.RewardNormState  # per env [n]; shared: returns [n], one statistic (``Agent.shared_reward_norm``)
    obs: jax.Array  # [n, D] float32: the normalised observation the policy acts on next
    done: jax.Array  # [n] bool: the last step ended an episode (so the next step is an envpool reset step)
    episode_return: jax.Array  # [n] float64, raw reward (CleanRL's RecordEpisodeStatistics)
    episode_length: jax.Array  # [n] int32
    replay: Any  # the bridge's replay record (None unless the envs resume by replay, ``EnvSpec.resume``)


@struct.dataclass
class TrainState:
    """Everything one seed's training carries from update to update (checkpointed as a whole)."""

    params: Any
    opt_state: Any
    key: jax.Array
    update: jax.Array  # int32: updates done so far
    env: EnvState
    diagnostics: diag.DiagnosticsState
    surgery_state: Any  # state of the chained surgeries (None without surgeries)
    task_switch: jax.Array  # bool: the task changed; at-switch surgeries fire on the next gradient step


@struct.dataclass
class Transition:
    """One env step of one env (CleanRL's ``obs, actions, logprobs, rewards, dones, values`` + mask)."""

    obs: jax.Array
    action: jax.Array
    logprob: jax.Array
    value: jax.Array
    reward: jax.Array  # normalised and clipped
    done: jax.Array  # the episode ended at this step (terminated or truncated)
    valid: jax.Array  # False for envpool's reset steps
    finished_return: jax.Array  # raw episodic return where an episode ended here, else NaN
    finished_length: jax.Array


# ------------------------------------------------------------------------------------------ math pieces
def gaussian_log_prob(action: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """``sum_d log N(a_d; mu_d, exp(log_std_d)^2)`` over the last axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - LOG_SQRT_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """``sum_d (0.5 + 0.5 log(2 pi) + log_std_d)``, the entropy of the diagonal Gaussian policy."""
    return jnp.sum(0.5 + LOG_SQRT_2PI + log_std, axis=-1)


class Gaussian:
    """Diagonal Gaussian policy with state-independent log-std: ``dist = (mean [..., A], log_std [A])``."""

    @staticmethod
    def sample(key, dist):
        mean, log_std = dist
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, jnp.float32)

    @staticmethod
    def log_prob(dist, action):
        return gaussian_log_prob(action, *dist)

    @staticmethod
    def entropy(dist):
        mean, log_std = dist
        return jnp.broadcast_to(gaussian_entropy(log_std), mean.shape[:-1])


class Categorical:
    """Categorical policy over discrete actions: ``dist = logits [..., num_actions]``."""

    @staticmethod
    def sample(key, logits):
        return jax.random.categorical(key, logits).astype(jnp.int32)

    @staticmethod
    def log_prob(logits, action):
        logp = jax.nn.log_softmax(logits)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    @staticmethod
    def entropy(logits):
        logp = jax.nn.log_softmax(logits)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def gae(
    rewards: jax.Array, values: jax.Array, dones: jax.Array, next_value: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation, time-major ``[T, ...]`` (CleanRL's loop).

    ``dones[t]`` = the episode ended at step t (so ``values[t+1]`` belongs to a new episode).
    ``delta_t = r_t + gamma * V_{t+1} * (1 - d_t) - V_t``, ``A_t = delta_t + gamma * lam * (1 - d_t) * A_{t+1}``,
    with ``V_T = next_value``. Returns ``(advantages, returns = advantages + values)``.
    """
    next_values = jnp.concatenate([values[1:], next_value[None]], axis=0)
    not_done = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * next_values * not_done - values

    def backward(carry, x):
        delta, nd = x
        carry = delta + gamma * lam * nd * carry
        return carry, carry

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(next_value), (deltas, not_done), reverse=True)
    return advantages, advantages + values


def masked_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
    """``sum(w x) / max(sum(w), 1)``."""
    return jnp.sum(weight * x) / jnp.maximum(jnp.sum(weight), 1.0)


def normalize_advantages(adv: jax.Array, weight: jax.Array) -> jax.Array:
    """``(A - mean) / (std + 1e-8)`` over the valid entries, with PyTorch's unbiased std (ddof=1)."""
    n = jnp.sum(weight)
    mean = masked_mean(adv, weight)
    std = jnp.sqrt(jnp.sum(weight * (adv - mean) ** 2) / jnp.maximum(n - 1.0, 1.0))
    return (adv - mean) / (std + 1e-8)


@struct.dataclass
class Minibatch:
    obs: jax.Array
    action: jax.Array
    logprob: jax.Array
    value: jax.Array
    advantage: jax.Array
    ret: jax.Array
    valid: jax.Array


def ppo_loss(params, apply_fn: Callable, mb: Minibatch, cfg: TrainConfig, policy=Gaussian) -> tuple[jax.Array, dict]:
    """CleanRL's PPO loss on one minibatch: ``pg_loss - ent_coef * entropy + vf_coef * v_loss``.

    ``pg_loss = mean(max(-A r, -A clip(r, 1-c, 1+c)))`` with ``r = exp(logp_new - logp_old)``;
    ``v_loss = 0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))`` (or unclipped);
    means are over valid samples. ``apply_fn(params, obs) -> (dist, value)``; ``policy`` is ``Gaussian``
    or ``Categorical``. Returns ``(loss, aux metrics)``.
    """
    dist, value = apply_fn(params, mb.obs)
    w = mb.valid.astype(jnp.float32)
    logratio = policy.log_prob(dist, mb.action) - mb.logprob
    ratio = jnp.exp(logratio)
    adv = normalize_advantages(mb.advantage, w) if cfg.norm_adv else mb.advantage
    pg_loss = masked_mean(jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)), w)
    v_unclipped = (value - mb.ret) ** 2
    if cfg.clip_vloss:
        v_clipped = mb.value + jnp.clip(value - mb.value, -cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * masked_mean(jnp.maximum(v_unclipped, (v_clipped - mb.ret) ** 2), w)
    else:
        v_loss = 0.5 * masked_mean(v_unclipped, w)
    entropy = masked_mean(policy.entropy(dist), w)
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    aux = {
        "loss/policy": pg_loss,
        "loss/value": v_loss,
        "loss/entropy": entropy,
        "loss/approx_kl": masked_mean((ratio - 1.0) - logratio, w),
        "loss/old_approx_kl": masked_mean(-logratio, w),
        "loss/clipfrac": masked_mean((jnp.abs(ratio - 1.0) > cfg.clip_coef).astype(jnp.float32), w),
    }
    return loss, aux


class MinibatchCarry(NamedTuple):
    """What one PPO gradient step hands to the next (one seed): the network, the optimizer state, the
    surgeries' state, the task-switch flag (at-switch surgeries fire on the first step after a switch), the
    surgeries' side-stream key, and ``stopped`` (CleanRL's ``target_kl`` stop: later steps change nothing)."""

    params: Any
    opt_state: Any
    surgery_state: Any
    switch: jax.Array
    key: jax.Array
    stopped: jax.Array


class UpdateHooks(NamedTuple):
    """What ``ppo_minibatch_update`` calls: ``loss_fn(params, opt_state, mb) -> (loss, (aux, activations))``,
    the optimizer ``tx`` (this update's learning rate), and optionally a surgery (``plastix.mitigations``,
    ``apply(params, opt_state, surgery_state, info, key)``) with ``batch_info(params, acts, obs, switch)``
    building what it reads; ``target_kl`` keeps a stopped update's parameters (None: never stops);
    ``gradient`` replaces the loss's gradient by another one (SAM's, ``plastix.mitigations.sam``)."""

    loss_fn: Callable
    tx: optax.GradientTransformation
    surgery: Any = None
    batch_info: Callable | None = None
    target_kl: float | None = None
    gradient: Callable | None = None  # (params, opt_state, mb, grads) -> the gradient to step on (SAM)


def ppo_minibatch_update(carry: MinibatchCarry, mb: Minibatch,
                         hooks: UpdateHooks) -> tuple[MinibatchCarry, dict]:
    """One PPO gradient step on minibatch ``mb`` (CleanRL's inner loop body), pure:

    ``g = grad ppo_loss(params; mb)``, ``params' = params + tx.update(g)`` (clip -> [L2] -> Adam -> lr ->
    [transforms]); then, if a surgery is hooked in, it acts on ``params'`` reading the minibatch's
    activations under ``params`` (ReDo, CBP, OCP perturbation); under ``target_kl``, a stopped update keeps
    ``params`` and the optimizer state. Returns ``(carry', aux)``: aux holds the loss terms,
    ``optim/grad_norm`` and the surgery's counts (``mitigation/...``).
    """
    params, opt_state, surgery_state, switch, key, stopped = carry
    (_, (aux, acts)), grads = jax.value_and_grad(hooks.loss_fn, has_aux=True)(params, opt_state, mb)
    if hooks.gradient is not None:
        grads = hooks.gradient(params, opt_state, mb, grads)
    updates, new_opt_state = hooks.tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    aux = dict(aux, **{"optim/grad_norm": optax.tree.norm(grads)})
    key, surgery_key = jax.random.split(key)
    if hooks.surgery is not None:  # surgeries act here, after each gradient step (and in start_round)
        info = hooks.batch_info(params, acts, mb.obs, switch).replace(phase="step")
        new_params, new_opt_state, surgery_state, surgery_metrics = hooks.surgery.apply(
            new_params, new_opt_state, surgery_state, info, surgery_key
        )
        aux.update(surgery_metrics)
    if hooks.target_kl is not None:  # CleanRL stops the remaining epochs; keep shapes static instead
        new_params, new_opt_state = jax.tree.map(
            lambda new, old: jnp.where(stopped, old, new), (new_params, new_opt_state), (params, opt_state)
        )
    return MinibatchCarry(new_params, new_opt_state, surgery_state, jnp.zeros((), bool), key, stopped), aux


def stop_after_epoch(carry: MinibatchCarry, last_aux: dict, target_kl: float | None) -> MinibatchCarry:
    """CleanRL's early stop: after an epoch whose last minibatch's ``approx_kl`` exceeds ``target_kl``, the
    remaining epochs change nothing (``carry.stopped``)."""
    if target_kl is None:
        return carry
    return carry._replace(stopped=carry.stopped | (last_aux["loss/approx_kl"] > target_kl))


# ------------------------------------------------------------------------------------------- optimizer
# The chain is plastix.mitigations.build.build_optimizer: clip global norm -> coupled L2 (PyTorch's
# Adam(weight_decay), the OCP paper's 1e-4) -> [l2_init] -> Adam(eps) -> learning rate -> [soft S&P,
# weight clipping, injection freeze]. It is rebuilt with each update's annealed rate (its state does not
# depend on the rate), which keeps CleanRL's per-iteration anneal exact even when target_kl skips steps.
def learning_rate(cfg: TrainConfig, update: jax.Array, fresh_copy: jax.Array | bool = False) -> jax.Array:
    """The learning rate of the update that starts with ``update`` updates done (counted from 0).

    ``cfg.lr_schedule``: ``whole`` is CleanRL's anneal ``lr * (1 - update / num_updates)``; ``per-round``
    restarts it in every round, ``lr * (1 - (update mod U) / U)`` with ``U = updates_per_round``; ``off`` is
    ``lr``. A ``--baseline fresh`` copy (``fresh_copy``) is a new run at every round start from round 1 on, so
    there it anneals per round under ``whole`` too (the rate a fresh run of one round would use); in round 0
    the copy is the seed itself, schedule included (its normalised return is 1 there).
    """
    if cfg.lr_schedule == "off":
        return jnp.asarray(cfg.learning_rate, jnp.float32)
    update = update.astype(jnp.float32)
    per_round = cfg.updates_per_round
    round_frac = 1.0 - jnp.mod(update, per_round) / per_round
    frac = round_frac if cfg.lr_schedule == "per-round" else 1.0 - update / cfg.num_updates
    frac = jnp.where(fresh_copy & (update >= per_round), round_frac, frac)
    return (frac * cfg.learning_rate).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ agent
class LearnBegin(NamedTuple):
    """``Agent.learn_begin``: the update's flattened batch, learning rate, minibatch indices
    ``[update_epochs, num_minibatches, minibatch_size]``, first ``MinibatchCarry`` and the state's next
    key."""

    batch: Minibatch
    lr: jax.Array
    perms: jax.Array
    carry: MinibatchCarry
    key: jax.Array


class Agent:
    """The network, optimizer and config of one PPO learner; all methods are per seed and pure.

    The network follows the env (``EnvSpec``): CleanRL's continuous ``ActorCritic`` (Gaussian policy),
    a discrete MLP actor-critic for vector observations, or a CNN actor-critic for images (categorical);
    with ``--network juliani-ash`` Juliani & Ash's ``JulianiAshActorCritic`` (categorical).
    """

    def __init__(self, cfg: TrainConfig, spec: EnvSpec):
        self.cfg, self.spec = cfg, spec
        self.policy = Categorical if spec.discrete else Gaussian
        # auto: CleanRL's ppo_continuous_action normalises every continuous-action env (MuJoCo, DMC, gymnasium
        # Box actions) with vector observations; ppo_procgen normalises Procgen's rewards.
        continuous = not spec.discrete and not spec.is_image
        self.normalize_obs = _auto(cfg.normalize_obs, continuous)
        self.normalize_reward = _auto(cfg.normalize_reward, continuous or spec.family == "procgen")
        # CleanRL's ppo_procgen normalises rewards over the vector env (gym 0.23.1): one statistic per seed.
        self.shared_reward_norm = (cfg.reward_norm_stats == "shared"
                                   or (cfg.reward_norm_stats == "auto" and spec.family == "procgen"))
        self.mitigations = mitigation_build.check(cfg, image=spec.is_image and cfg.network == "cleanrl")
        self.net = self._network()
        self.injection = "injection" in self.mitigations
        self.surgery = mitigation_build.build_surgery(cfg, self.mitigations, self.init_params)
        try:  # layer names against the network's (its init traced, not run: nothing compiles)
            shapes = jax.eval_shape(self.init_params, jax.random.PRNGKey(0))
            mitigation_build.check_layer_names(cfg, self.mitigations, shapes)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self._injected_apply = make_injected_apply(self.net, cfg.injection.head_layers) if self.injection else None
        base_acts = diag.make_forward_acts(self.net.apply)
        self.forward_acts = lambda p, obs: base_acts({k: v for k, v in p.items() if k != INJECTION_KEY}, obs)

    @property
    def norm_groups(self) -> int:
        """GroupNorm's number of groups with ``groupnorm`` (``--groupnorm.groups``), else 0 (no GroupNorm)."""
        return self.cfg.groupnorm.groups if "groupnorm" in self.mitigations else 0

    @property
    def activation(self) -> str:
        """The hidden activation: ``--activation``, or CReLU with ``crelu``, or Plasticine's Fourier features
        with ``dff``, on every network (the CNN presets set CleanRL's ReLU; any other activation acts at every
        activation point of the CNN torsos)."""
        if "crelu" in self.mitigations:
            return "crelu"
        if "dff" in self.mitigations:
            return "dff"
        return self.cfg.activation

    @property
    def plain_mlp(self) -> bool:
        """Hidden layers are ``Dense -> activation`` (diagnostics can take per-layer shortcuts)."""
        layer_norm = self.cfg.layer_norm or "layernorm" in self.mitigations or "groupnorm" in self.mitigations
        return not self.spec.is_image and self.cfg.network == "cleanrl" and not layer_norm

    def _network(self):
        cfg, spec = self.cfg, self.spec
        activation = self.activation
        layer_norm = cfg.layer_norm or "layernorm" in self.mitigations
        groups = self.norm_groups
        if cfg.network == "juliani-ash":
            return self._juliani_ash_network(activation, layer_norm)
        if not spec.discrete:
            return ActorCritic(spec.action_dim, tuple(cfg.hidden_sizes), activation, layer_norm, groups)
        if not spec.is_image:
            return DiscreteActorCritic(spec.action_dim, tuple(cfg.hidden_sizes), activation, layer_norm, groups)
        torso = cfg.cnn_torso if cfg.cnn_torso != "auto" else ("impala" if spec.family == "procgen" else "nature")
        if torso == "nature" and min(spec.obs_shape[:2]) < 36:  # else its dense layer gets 0 inputs
            side = f"{spec.obs_shape[0]}x{spec.obs_shape[1]}"
            raise ConfigError(f"--cnn-torso {cfg.cnn_torso}: images of {side} are too small for the Nature CNN's "
                              "convolutions (at least 36x36); use --cnn-torso impala, or a larger --grid-size (18)")
        return CNNActorCritic(spec.action_dim, torso, activation, layer_norm, groups)

    def _juliani_ash_network(self, activation: str, layer_norm: bool) -> JulianiAshActorCritic:
        """Juliani & Ash's actor-critic: their conv64 encoder on images (at least 16x16), else their MLP."""
        spec = self.spec
        if spec.is_image and min(spec.obs_shape[:2]) < JA_MIN_IMAGE_SIDE:
            side = f"{spec.obs_shape[0]}x{spec.obs_shape[1]}"
            raise ConfigError(f"--network juliani-ash: images of {side} are too small for their four stride-2 "
                              f"convolutions (at least {JA_MIN_IMAGE_SIDE}x{JA_MIN_IMAGE_SIDE}; e.g. a larger "
                              "--grid-size)")
        encoder = "conv" if spec.is_image else "mlp"
        widths = tuple(self.cfg.hidden_sizes)
        return JulianiAshActorCritic(spec.action_dim, encoder, widths, activation, layer_norm, self.norm_groups)

    def dummy_obs(self):
        return jnp.zeros((1,) + tuple(self.spec.obs_shape), jnp.float32 if self.normalize_obs else self.spec.obs_dtype)

    def init_params(self, key: jax.Array):
        """Fresh network parameters (with the injection heads when plasticity injection is on)."""
        params = self.net.init(key, self.dummy_obs())["params"]
        return add_injection_heads(params, self.cfg.injection.head_layers) if self.injection else params

    def optimizer(self, lr) -> optax.GradientTransformation:
        """The optimizer chain with learning rate ``lr`` (see the comment above ``learning_rate``)."""
        return mitigation_build.build_optimizer(self.cfg, self.mitigations, self.init_params, lr)

    def forward(self, params, opt_state, obs):
        """``(dist, value)``: ``dist`` is ``(mean, log_std)`` or logits; with plasticity injection, the
        injected heads once active."""
        if self.injection:  # every network: continuous, discrete MLP and CNN actor-critics
            out = self._injected_apply(params, obs, injection_active(opt_state))
        else:
            out = self.net.apply({"params": params}, obs)
        return (out[:2], out[2]) if not self.spec.discrete else out

    @functools.cached_property
    def init_states(self) -> Callable:
        """Compiled ``(keys [M, 2], raw_obs [M, n, ...]) -> fresh train states [M]`` (``init_state`` per member).

        ``lax.map``, not ``vmap``: a vmapped init batches the orthogonal inits' QR decompositions, which can
        deadlock jaxlib 0.10's LAPACK kernels on 2 cores (see ``plastix.training.build``)."""
        return jax.jit(lambda keys, obs: jax.lax.map(lambda x: self.init_state(*x), (keys, obs)))

    def init_state(self, key: jax.Array, raw_obs: jax.Array) -> TrainState:
        """Fresh train state of one seed; ``raw_obs`` ``[n, *obs_shape]`` is the envs' first observation."""
        key, init_key = jax.random.split(key)
        params = self.init_params(init_key)
        opt_state = self.optimizer(self.cfg.learning_rate).init(params)
        opt_state = mitigation_build.seed_optimizer_state(opt_state, jax.random.fold_in(init_key, 1))
        surgery_state = self.surgery.init(params, jax.random.fold_in(init_key, 2)) if self.surgery else None
        n = raw_obs.shape[0]
        obs_rms = None
        if self.normalize_obs:
            obs_rms = jax.vmap(lambda o: nz.rms_update(nz.rms_init(o.shape), o[None]))(raw_obs)
        replay = self.spec.replay
        env = EnvState(
            obs_rms=obs_rms,
            reward_norm=(nz.shared_reward_norm_init(n) if self.shared_reward_norm
                         else jax.vmap(lambda _: nz.reward_norm_init())(jnp.arange(n))),
            obs=self._normalize(obs_rms, raw_obs),
            done=jnp.zeros((n,), bool),
            episode_return=jnp.zeros((n,), jnp.float64),
            episode_length=jnp.zeros((n,), jnp.int32),
            replay=replay.init(n) if replay is not None else None,
        )
        diagnostics = diag.diagnostics_init(params, self.layer_shapes(params))
        return TrainState(params, opt_state, key, jnp.zeros((), jnp.int32), env, diagnostics, surgery_state,
                          jnp.zeros((), bool))

    def _normalize(self, obs_rms, raw_obs):
        if not self.normalize_obs:
            return raw_obs.astype(self.spec.obs_dtype if self.spec.is_image else jnp.float32)
        return jax.vmap(nz.normalize_obs, in_axes=(0, 0, None))(obs_rms, raw_obs, self.cfg.obs_clip)

    def observation_permutation(self, round_idx: int | None) -> jax.Array:
        """The ``permute`` shift's permutation of round ``round_idx`` (``None``: the held-out one) over this
        env's observation dimensions, or its image's ``patch_grid x patch_grid`` patches (as the bridges do)."""
        from plastix.envs import shifts

        key = jax.random.PRNGKey(self.cfg.shift_seed)
        size = self.cfg.patch_grid**2 if self.spec.is_image else self.spec.obs_shape[0]
        if round_idx is None:
            return shifts.heldout_permutation(key, size)
        return shifts.observation_permutation(key, round_idx, size)

    def follow_permutation(self, env: EnvState, old_perm: jax.Array, new_perm: jax.Array) -> EnvState:
        """The env-side state of envs whose observations were permuted by ``old_perm`` and now are by
        ``new_perm`` (a ``permute`` shift): the running observation statistics and the current normalised
        observation move with the dimensions (image patches) they describe. Normalising then commutes with
        the permutation: a permuted env's normalised observations are the unshifted ones, permuted (without
        this, a shift would also rescale every dimension by another dimension's statistics)."""
        if not self.normalize_obs:
            return env
        from plastix.envs import shifts

        rel = shifts.relative_permutation(old_perm, new_perm)
        move = lambda x: shifts.permute_observation(x, rel, self.spec.is_image, self.cfg.patch_grid)
        rms = env.obs_rms.replace(mean=move(env.obs_rms.mean), var=move(env.obs_rms.var))
        return env.replace(obs_rms=rms, obs=move(env.obs))

    def layer_shapes(self, params) -> dict[str, tuple[int, int]]:
        """``{"policy/layer_1": (output units, kernel columns)}`` of every hidden layer."""
        acts = jax.eval_shape(self.forward_acts, params, self.dummy_obs())
        shapes = {}
        for name, (_, post) in acts.items():
            layer = diag.layer_params(params, name)
            shapes[name] = (post.shape[-1], layer["kernel"].shape[-1] if layer is not None else post.shape[-1])
        return shapes

    def act(self, state: TrainState) -> tuple[TrainState, tuple]:
        """Sample actions for the current observations: ``(action, env action, logprob, value)``."""
        key, sample_key = jax.random.split(state.key)
        dist, value = self.forward(state.params, state.opt_state, state.env.obs)
        action = self.policy.sample(sample_key, dist)
        env_action = action if self.spec.discrete else jnp.clip(action, self.spec.action_low, self.spec.action_high)
        return state.replace(key=key), (action, env_action, self.policy.log_prob(dist, action), value)

    def observe(self, env: EnvState, env_action, raw_obs, reward, terminated, truncated, extras):
        """Advance the env-side state by one step of the envs; returns ``(env, reward_norm, valid, finished)``.

        ``valid`` is false on envpool's reset steps (``EnvSpec.autoreset == "next_step"``). Episode
        statistics count the raw reward (Atari: the unclipped score, ``extras["raw_reward"]``) until the
        episode ends (Atari with episodic life: until the game is over, ``extras["game_over"]``).
        """
        cfg = self.cfg
        valid = ~env.done if self.spec.autoreset == "next_step" else jnp.ones_like(env.done)
        obs_rms = env.obs_rms
        if self.normalize_obs:
            obs_rms = jax.vmap(nz.rms_update_masked, in_axes=(0, 0, None))(env.obs_rms, raw_obs, True)
        obs = self._normalize(obs_rms, raw_obs)
        done = (terminated | truncated) & valid
        if self.normalize_reward and self.shared_reward_norm:
            reward_norm, learn_reward = nz.normalize_reward_shared(
                env.reward_norm, reward, done, cfg.gamma, cfg.reward_clip, valid)
        elif self.normalize_reward:
            reward_norm, learn_reward = jax.vmap(nz.normalize_reward, in_axes=(0, 0, 0, None, None, 0))(
                env.reward_norm, reward, terminated, cfg.gamma, cfg.reward_clip, valid
            )
        else:
            reward_norm, learn_reward = env.reward_norm, jnp.where(valid, reward, 0.0).astype(jnp.float32)
        episode_over = extras.get("game_over", terminated | truncated) & valid
        score = extras.get("raw_reward", reward)
        ep_return = env.episode_return + jnp.where(valid, score.astype(jnp.float64), 0.0)
        ep_length = env.episode_length + valid.astype(jnp.int32)
        finished = (jnp.where(episode_over, ep_return, jnp.nan), jnp.where(episode_over, ep_length, 0))
        replay = env.replay
        if replay is not None:  # the bridge's record of this step, for an exact resume
            replay = self.spec.replay.record(replay, env_action, valid)
        env = EnvState(
            obs_rms=obs_rms,
            reward_norm=reward_norm,
            obs=obs,
            done=done,
            episode_return=jnp.where(episode_over | ~valid, 0.0, ep_return),
            episode_length=jnp.where(episode_over | ~valid, 0, ep_length),
            replay=replay,
        )
        return env, learn_reward, valid, finished

    def learn(self, state: TrainState, traj: Transition, perms: jax.Array | None = None, fresh_copy=False
              ) -> tuple[TrainState, dict, Minibatch]:
        """GAE then ``update_epochs`` x ``num_minibatches`` PPO steps on one seed's rollout ``[T, n]``.

        ``perms`` (int ``[update_epochs, num_minibatches, minibatch_size]``, indices into the flattened
        ``[T * n]`` batch) fixes the minibatch order, e.g. to replay CleanRL's ``np.random.shuffle`` order in
        the parity test; by default each epoch draws ``jax.random.permutation`` from the state's key.
        ``fresh_copy``: the state is a ``--baseline fresh`` copy (its learning-rate schedule restarts each round)."""
        cfg = self.cfg
        begin = self.learn_begin(state, traj, fresh_copy)
        if perms is None:
            perms = begin.perms

        def minibatch_step(carry, idx):
            return self.minibatch_step(carry, begin.batch, idx, begin.lr)

        def epoch(carry, perm):
            carry, aux = jax.lax.scan(minibatch_step, carry, perm)
            return stop_after_epoch(carry, jax.tree.map(lambda v: v[-1], aux), cfg.target_kl), aux

        carry, aux = jax.lax.scan(epoch, begin.carry, perms)
        state, metrics = self.learn_end(state, begin, carry, aux)
        return state, metrics, begin.batch

    def learn_begin(self, state: TrainState, traj: Transition, fresh_copy=False) -> LearnBegin:
        """What ``learn``'s gradient steps start from: GAE over the rollout, the flattened batch, the learning
        rate, each epoch's minibatch order (``jax.random.permutation`` of the batch from the state's key) and
        the first ``MinibatchCarry`` (surgeries draw from a side stream of the key, so that turning them on
        leaves the training stream unchanged)."""
        cfg = self.cfg
        _, next_value = self.forward(state.params, state.opt_state, state.env.obs)
        advantages, returns = gae(traj.reward, traj.value, traj.done, next_value, cfg.gamma, cfg.gae_lambda)
        flat = lambda x: x.reshape((cfg.batch_size,) + x.shape[2:])
        batch = Minibatch(
            flat(traj.obs), flat(traj.action), flat(traj.logprob), flat(traj.value), flat(advantages), flat(returns), flat(traj.valid)
        )
        key, *epoch_keys = jax.random.split(state.key, cfg.update_epochs + 1)
        perms = jax.vmap(lambda k: jax.random.permutation(k, cfg.batch_size))(jnp.stack(epoch_keys))
        carry = MinibatchCarry(state.params, state.opt_state, state.surgery_state, state.task_switch,
                               jax.random.fold_in(state.key, 0x5A5A), jnp.zeros((), bool))
        perms = perms.reshape(cfg.update_epochs, cfg.num_minibatches, cfg.minibatch_size)
        return LearnBegin(batch, learning_rate(cfg, state.update, fresh_copy), perms, carry, key)

    def minibatch_step(self, carry: MinibatchCarry, batch: Minibatch, idx: jax.Array, lr: jax.Array):
        """``ppo_minibatch_update`` on the samples ``idx`` of ``batch`` with this agent's loss, optimizer (at
        rate ``lr``), surgeries and ``target_kl``."""
        mb = jax.tree.map(lambda x: x[idx], batch)
        hooks = UpdateHooks(self.loss_and_activations, self.optimizer(lr), self.surgery, self.batch_info,
                            self.cfg.target_kl, self._sam_gradient if "sam" in self.mitigations else None)
        return ppo_minibatch_update(carry, mb, hooks)

    def _sam_gradient(self, params, opt_state, mb: Minibatch, grads):
        """The gradient at ``theta + rho g / ||g||`` (``plastix.mitigations.sam``)."""
        loss = lambda p: ppo_loss(p, lambda q, o: self.forward(q, opt_state, o), mb, self.cfg, self.policy)[0]
        return sam_gradient(loss, params, grads, self.cfg.sam.rho)

    def learn_end(self, state: TrainState, begin: LearnBegin, carry: MinibatchCarry, aux: dict
                  ) -> tuple[TrainState, dict]:
        """The update's state and metrics after its gradient steps (``aux``: each step's, stacked on leading
        axes). Counts of touched neurons add up over the update; everything else (eligible counts included)
        is a mean over the update's gradient steps."""
        batch = begin.batch
        metrics = {k: v.sum() if summed_metric(k) else v.mean() for k, v in aux.items()}
        w = batch.valid.astype(jnp.float32)
        var_returns = masked_mean((batch.ret - masked_mean(batch.ret, w)) ** 2, w)
        resid = batch.ret - batch.value
        var_resid = masked_mean((resid - masked_mean(resid, w)) ** 2, w)
        metrics["loss/explained_variance"] = jnp.where(var_returns == 0, jnp.nan, 1.0 - var_resid / var_returns)
        metrics["optim/lr"] = begin.lr
        state = state.replace(params=carry.params, opt_state=carry.opt_state, key=begin.key,
                              update=state.update + 1, surgery_state=carry.surgery_state,
                              task_switch=jnp.zeros((), bool))
        return state, metrics

    def loss_and_activations(self, params, opt_state, mb: Minibatch):
        """The PPO loss of a minibatch, with the hidden activations of its forward pass as aux when a surgery
        reads them (ReDo, CBP, OCP perturbation: the batch before the step, as in Sokar's and Dohare's code),
        so surgeries cost no extra forward pass. Returns ``(loss, (aux metrics, activations or None))``."""
        if self.injection or not set(self.mitigations) & {"redo", "cbp", "ocp_perturb"}:
            loss, aux = ppo_loss(params, lambda p, o: self.forward(p, opt_state, o), mb, self.cfg, self.policy)
            return loss, (aux, None)
        sown = {}

        def apply_fn(p, obs):
            out, state = self.net.apply({"params": p}, obs, mutable=["intermediates"])
            sown["acts"] = hidden_activations(state["intermediates"])
            return (out[:2], out[2]) if not self.spec.discrete else out

        loss, aux = ppo_loss(params, apply_fn, mb, self.cfg, self.policy)
        return loss, (aux, sown["acts"])

    def start_round(self, state: TrainState) -> tuple[TrainState, dict]:
        """The surgeries' ``round_start`` call, before an update's rollout: at a task switch the at-switch
        surgeries that read no batch (resets, shrink & perturb, Adam reset, injection) act here, so the
        rollout of the new round is collected by the network they produce (a reset network is not updated
        on its predecessor's rollout and log-probabilities). Returns ``(state, metrics)``."""
        info = self.batch_info(state.params, None, state.env.obs, state.task_switch).replace(phase="round_start")
        key = jax.random.fold_in(state.key, 0x5A5B)  # a side stream: the training stream is unchanged
        params, opt_state, surgery_state, metrics = self.surgery.apply(
            state.params, state.opt_state, state.surgery_state, info, key)
        return state.replace(params=params, opt_state=opt_state, surgery_state=surgery_state), metrics

    def batch_info(self, params, acts, obs, task_switch) -> BatchInfo:
        """What the surgeries read: hidden activations (ReDo, CBP; from the loss's forward pass when given)
        and layer-target MAGI (OCP perturbation), for ``params`` before the gradient step."""
        needs = set(self.mitigations)
        if acts is None and needs & {"redo", "cbp", "ocp_perturb"}:
            acts = self.forward_acts(params, obs)
        magi_fn = None
        if "ocp_perturb" in needs:
            def magi_fn():  # lazy: computed only where the scheduled OCP perturbation fires
                if self.plain_mlp:
                    with_kernels = diag.layers_with_kernels(params, sorted(acts))
                    return diag.local_layer_magi(params, acts, obs, self.activation, with_kernels)
                return hidden_layer_magi(self.forward_acts, params, obs)  # also the IMPALA torso's layers
        return BatchInfo(activations=acts, task_switch=task_switch, magi_fn=magi_fn)

    def measure(self, state: TrainState, batch: Minibatch, prev_params: Any = None,
                due: tuple[bool, bool, bool] | None = None) -> tuple[TrainState, dict, dict]:
        """Diagnostics (and curvature) of the updated network on the update's batch, when scheduled.

        Runs under ``lax.cond`` (a real branch: the seeds are ``lax.map``-ped), so unscheduled updates cost
        nothing; their metrics are NaN and are not written. Randomness comes from ``fold_in`` of the
        training key, so measuring never changes training. Diagnostics see the first
        ``diagnostics_batch`` samples of the batch; the ``loss`` MAGI target is the gradient of the PPO
        loss on those samples (advantages normalised over them). ``prev_params``, the parameters the update
        started from, gives the per-update change (``model/weight_diff``, ``model/update_rms``, ...).
        ``due``: (diagnostics, curvature, probe due) as Python bools, known on the host (the host-driven
        learner): the branches are then chosen when tracing, with no ``lax.cond`` around the measurements.
        """
        cfg = self.cfg
        metrics, scores = {}, {}
        if cfg.diagnostics_every > 0:
            sample = jax.tree.map(lambda x: x[: min(cfg.diagnostics_batch, cfg.batch_size)], batch)
            loss_fn = lambda p: ppo_loss(p, lambda q, o: self.forward(q, state.opt_state, o), sample, cfg, self.policy)[0]

            activity_obs = batch.obs[-min(cfg.activity_steps, cfg.batch_size):] if cfg.activity_steps > 0 else None
            interference = self.interference(state, sample) if cfg.interference_samples > 0 else None

            def run(diag_state):
                return diag.measure(state.params, self.forward_acts, loss_fn, sample.obs, self.activation, diag_state,
                                    tuple(cfg.dormant_taus), cfg.overlap_tau, cfg.zero_grad_eps, self.plain_mlp,
                                    prev_params, activity_obs, interference)

            def skip(diag_state):
                skipped_metrics, skipped_scores, _ = jax.eval_shape(run, diag_state)
                return _nan_like(skipped_metrics), _nan_like(skipped_scores), diag_state

            if due is None:
                scheduled = (state.update % cfg.diagnostics_every == 0) | (state.update == 1)
                metrics, scores, diag_state = jax.lax.cond(scheduled, run, skip, state.diagnostics)
            else:
                metrics, scores, diag_state = (run if due[0] else skip)(state.diagnostics)
            state = state.replace(diagnostics=diag_state)
        if cfg.curvature_every > 0:
            measure_curvature = lambda: self.curvature(state, batch)
            skip_curvature = lambda: _nan_like(jax.eval_shape(measure_curvature))
            if due is None:
                scheduled = state.update % cfg.curvature_every == 0
                metrics.update(jax.lax.cond(scheduled, measure_curvature, skip_curvature))
            else:
                metrics.update((measure_curvature if due[1] else skip_curvature)())
        if cfg.probe_every > 0:
            run_probe = lambda: self.plasticity_probe(state, batch)
            skip_probe = lambda: _nan_like(jax.eval_shape(run_probe))
            if due is None:
                metrics.update(jax.lax.cond(state.update % cfg.probe_every == 0, run_probe, skip_probe))
            else:
                metrics.update((run_probe if due[2] else skip_probe)())
        return state, metrics, scores if cfg.save_neuron_scores else {}

    def interference(self, state: TrainState, sample: Minibatch) -> tuple[Callable, Minibatch]:
        """``(per_example_loss, examples)`` for the gradient-interference diagnostics: the first
        ``interference_samples`` samples of the diagnostics sample, advantages normalised over them (a
        one-sample minibatch would normalise its own advantage to 0), each example's PPO loss with
        ``norm_adv`` off."""
        cfg = self.cfg
        size = min(cfg.interference_samples, sample.obs.shape[0])
        examples = jax.tree.map(lambda x: x[:size], sample)
        if cfg.norm_adv:
            examples = examples.replace(advantage=normalize_advantages(
                examples.advantage, examples.valid.astype(jnp.float32)))
        one_cfg = dataclasses.replace(cfg, norm_adv=False)

        def per_example_loss(params, example):
            one = jax.tree.map(lambda x: x[None], example)
            return ppo_loss(params, lambda q, o: self.forward(q, state.opt_state, o), one, one_cfg, self.policy)[0]

        return per_example_loss, examples

    def plasticity_probe(self, state: TrainState, batch: Minibatch) -> dict:
        """Lyle et al. (2023)-style plasticity probe of the updated agent, per output head: from
        ``state.params``, a copy of the whole agent is trained with full-batch Adam (``probe_lr``,
        ``probe_steps``) on the MSE between the head's output and fresh i.i.d. ``N(0, 1)`` targets on a random
        subset of ``probe_batch`` observations of the update's batch (``plastix.probes.random_target_probe``).
        Heads: ``policy`` (the Gaussian mean, or the logits) and ``value``. Keys ``probe/<head>/initial_loss``
        (before the first step) and ``probe/<head>/final_loss`` (after the budget; lower = more plastic).
        Randomness is ``fold_in`` of the training key: probing never changes training."""
        cfg = self.cfg
        perm_key, policy_key, value_key = jax.random.split(jax.random.fold_in(state.key, 0x9B0E), 3)
        size = min(cfg.probe_batch, cfg.batch_size)
        obs = batch.obs[jax.random.permutation(perm_key, cfg.batch_size)[:size]]
        policy_out = (lambda d: d) if self.spec.discrete else (lambda d: d[0])  # logits, or the Gaussian mean
        heads = {"policy": (lambda p, x: policy_out(self.forward(p, state.opt_state, x)[0]), policy_key),
                 "value": (lambda p, x: self.forward(p, state.opt_state, x)[1], value_key)}
        out = {}
        for name, (apply_fn, key) in heads.items():
            result = probes.random_target_probe(apply_fn, state.params, obs, key, cfg.probe_steps, cfg.probe_lr)
            out[f"probe/{name}/initial_loss"] = result.loss_curve[0]
            out[f"probe/{name}/final_loss"] = result.final_loss
        return out

    def curvature(self, state: TrainState, batch: Minibatch):
        """Largest and smallest Hessian eigenvalues (Lanczos: the PPO loss's Hessian is indefinite) and the
        trace (Hutchinson) of the PPO loss on a random subset of ``curvature_batch`` samples of the update's
        batch (Lyle et al. 2023)."""
        cfg = self.cfg
        key = jax.random.fold_in(state.key, 0x5EED)
        perm_key, eig_key, trace_key = jax.random.split(key, 3)
        size = min(cfg.curvature_batch, cfg.batch_size)
        subset = jax.random.permutation(perm_key, cfg.batch_size)[:size]
        sub = jax.tree.map(lambda x: x[subset], batch)
        loss_fn = lambda p: ppo_loss(p, lambda q, o: self.forward(q, state.opt_state, o), sub, cfg, self.policy)[0]
        top, bottom = curvature.hessian_eigenvalue_range(loss_fn, state.params, eig_key, cfg.curvature_iters)
        return {
            "curvature/hessian_top_eig": top,
            "curvature/hessian_min_eig": bottom,
            "curvature/hessian_trace": curvature.hessian_trace(loss_fn, state.params, trace_key, cfg.curvature_samples),
        }


def _auto(choice: str, default: bool) -> bool:
    """``"on"``/``"off"``, or ``"auto"`` -> ``default``."""
    return default if choice == "auto" else choice == "on"


def _nan_like(shapes):
    """A pytree of NaN arrays with the shapes and dtypes of ``shapes`` (``jax.ShapeDtypeStruct`` leaves)."""
    return jax.tree.map(lambda x: jnp.full(x.shape, jnp.nan, x.dtype), shapes)


def episode_metrics(traj: Transition) -> dict:
    """Mean raw return and length of the episodes that ended in this rollout (NaN when none did)."""
    ended = ~jnp.isnan(traj.finished_return)
    count = jnp.sum(ended)
    mean_return = jnp.where(count > 0, jnp.nansum(traj.finished_return) / jnp.maximum(count, 1), jnp.nan)
    mean_length = jnp.where(count > 0, jnp.sum(traj.finished_length) / jnp.maximum(count, 1), jnp.nan)
    return {"return/episodic": mean_return, "return/episode_length": mean_length, "return/episodes": count}


def summed_metric(key: str) -> bool:
    """Whether an update's metric adds up over its gradient steps (counts of neurons a mitigation touched)
    rather than being their mean (everything else, eligible counts included)."""
    return key.startswith("mitigation/") and not key.endswith("/eligible")


def make_rollout_fn(agent: Agent, env_step: Callable) -> Callable:
    """An update's start for every member: ``(states [M], handle) -> (states, handle, traj [M, T, n],
    start_metrics [M])``: the surgeries' ``round_start`` call, then ``num_steps`` env steps (``lax.scan``;
    the policy is ``vmap``-ped over members, the env pool stepped once per step for all of them).

    ``env_step(handle, env_action [M, n, ...]) -> handle, (raw_obs, reward, terminated, truncated, extras)``.
    """

    def rollout_step(carry, _):
        states, handle = carry
        states, (action, clipped, logprob, value) = jax.vmap(agent.act)(states)
        handle, (raw_obs, reward, terminated, truncated, extras) = env_step(handle, clipped)
        obs = states.env.obs
        env, norm_reward, valid, (ret, length) = jax.vmap(agent.observe)(
            states.env, clipped, raw_obs, reward, terminated, truncated, extras
        )
        transition = Transition(obs, action, logprob, value, norm_reward, env.done, valid, ret, length)
        return (states.replace(env=env), handle), transition

    def rollout(states: TrainState, handle):
        start_metrics = {}
        if agent.surgery is not None:  # lax.map: surgeries may draw fresh inits (QR must not be vmapped)
            states, start_metrics = jax.lax.map(agent.start_round, states)
        (states, handle), traj = jax.lax.scan(rollout_step, (states, handle), None, length=agent.cfg.num_steps)
        traj = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), traj)  # [T, S, ...] -> [S, T, ...]
        return states, handle, traj, start_metrics

    return rollout


def finish_metrics(metrics: dict, start_metrics: dict, traj: Transition) -> dict:
    """An update's metrics ``[M]``: the learner's, plus the ``round_start`` call's counts (added to the
    update's) and the rollout's episode statistics."""
    for k, v in start_metrics.items():  # counts of the round_start call add to the update's
        if summed_metric(k):
            metrics[k] = metrics[k] + v
    metrics.update(jax.vmap(episode_metrics)(traj))
    return metrics


def make_update_fn(agent: Agent, env_step: Callable) -> Callable:
    """One PPO update for every seed: ``(states [S], handle) -> (states, handle, metrics [S])``.

    ``env_step(handle, env_action [S, n, ...]) -> handle, (raw_obs, reward, terminated, truncated, extras)``.
    """
    rollout = make_rollout_fn(agent, env_step)

    def update(states: TrainState, handle):
        states, handle, traj, start_metrics = rollout(states, handle)
        # lax.map, not vmap: a seed's learning arithmetic is then the same program whatever the group size,
        # so a seed trained in a group is bit-identical to the seed trained alone (vmap changes the XLA
        # kernels with the batch size). The rollout (env-bound) stays vmapped.
        def learn_and_measure(x):
            state, metrics, batch = agent.learn(x[0], x[1], fresh_copy=x[2])
            state, diag_metrics, scores = agent.measure(state, batch, prev_params=x[0].params)
            return state, {**metrics, **diag_metrics}, scores

        states, metrics, scores = jax.lax.map(learn_and_measure, (states, traj, fresh_members(agent.cfg, traj.done)))
        return states, handle, (finish_metrics(metrics, start_metrics, traj), scores)

    return update


def fresh_members(cfg: TrainConfig, like: jax.Array) -> jax.Array:
    """``[M]`` bool: which stacked members are ``--baseline fresh`` copies (the second half, see
    ``plastix.training.member_seeds``); ``like`` has the members on its leading axis."""
    members = like.shape[0]
    return jnp.arange(members) >= (members // 2 if cfg.baseline == "fresh" else members)


def make_chunk_fn(agent: Agent, env_step: Callable, num_updates: int) -> Callable:
    """Compile ``num_updates`` consecutive updates: ``(states, handle) -> (states, handle, metrics [K, S])``."""
    update = make_update_fn(agent, env_step)

    def chunk(states, handle):
        def body(carry, _):
            states, handle = carry
            states, handle, metrics = update(states, handle)
            return (states, handle), metrics

        (states, handle), metrics = jax.lax.scan(body, (states, handle), None, length=num_updates)
        return states, handle, metrics

    return jax.jit(chunk, donate_argnums=(0,))
