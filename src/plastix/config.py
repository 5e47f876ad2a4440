"""Training configuration: one frozen dataclass whose fields are the ``plastix train`` flags.

Field names follow CleanRL's ``ppo_continuous_action.py`` ``Args`` where it has one, so ``--env-id``,
``--total-timesteps``, ``--learning-rate``, ``--num-envs``, ``--num-steps``... mean what they mean there.
Derived sizes are properties, never written back. ``PRESETS`` holds the named defaults:

- ``cleanrl``: CleanRL's ``ppo_continuous_action.py`` (tanh, lr 3e-4 annealed, 1M steps, no weight decay).
- ``ocp``: the OCP paper's Appendix B (SCIENCE.md section 1): lr 1e-4 annealed to 0, coupled weight
  decay 1e-4, 20M steps, ReLU hidden units (the paper's "PPO-ReLU"; ``--activation none`` is "No-Act").
- ``juliani-ash``: Juliani & Ash 2024's PPO (awjuliani/deep-rl-plasticity ``hyperparams.yaml``,
  ``algos/ppo``): their networks (``--network juliani-ash``), lr 5e-4 constant, AdamW eps 1e-8, 3 epochs of
  minibatches of 64 over 1024-step batches, entropy 0.02, no value clipping, no reward or observation
  normalisation, the optimizer rebuilt at every shift (the comments in ``PRESETS`` say where each value is).
- ``cleanrl-atari``: CleanRL's ``ppo_atari_envpool.py`` ``Args`` (8 envs x 128 steps, lr 2.5e-4 annealed,
  clip 0.1, entropy 0.01, 4 epochs of 4 minibatches, 10M steps).
- ``cleanrl-procgen``: CleanRL's ``ppo_procgen.py`` ``Args`` (64 envs x 256 steps, lr 5e-4 constant,
  gamma 0.999, entropy 0.01, 3 epochs of 8 minibatches, 25M steps).
- ``cleanrl-discrete``: CleanRL's ``ppo.py`` ``Args`` (4 envs x 128 steps, lr 2.5e-4 annealed, entropy 0.01,
  4 epochs of 4 minibatches, 500k steps), the discrete-action MLP PPO, for the gridworld.

Each preset declares the env families it fits (``PRESET_FAMILIES``); ``validate`` refuses a preset on an env
it does not fit, naming the presets that do. ``default_preset(env_id)`` is the CleanRL preset of the env's
family: what ``plastix train`` and experiment files use when no preset is given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Literal

from plastix.mitigations import registry as mit
from plastix.nets import ACTIVATIONS
from plastix.suggest import did_you_mean


LR_SCHEDULES = ("whole", "per-round", "off")


class ConfigError(ValueError):
    """Bad user input, detected before any compute; the message names the option and what is allowed."""


@dataclass(frozen=True)
class ESOptions:
    """OpenAI-ES (``--optimizer es``; ``plastix.algos.es``). Defaults: Salimans et al. 2017."""

    strategy: Literal["openai", "cma_es", "snes", "pgpe"] = "openai"
    """openai (plastix's OpenAI-ES), or evosax's cma_es, snes, pgpe through the same population interface
    (`pip install 'plastix[evosax]'`)"""
    popsize: int = 64
    """population size (even: mirrored pairs)"""
    sigma: float = 0.02
    """noise standard deviation"""
    learning_rate: float = 0.01
    """Adam learning rate on the ES gradient estimate"""
    weight_decay: float = 0.005
    """L2 coefficient on the mean parameters (the OpenAI-ES l2coeff)"""
    episode_steps: int = 1000
    """steps of each member's episode"""
    same_start_pairs: bool = True
    """the two members of a mirrored pair start from the same env state"""


@dataclass(frozen=True)
class TrainConfig:
    """PPO for continuous control (CleanRL semantics), trained for one or many seeds at once."""

    preset: Literal["cleanrl", "ocp", "juliani-ash", "cleanrl-atari", "cleanrl-procgen", "cleanrl-discrete"] = "cleanrl"
    """named defaults, other flags override them: cleanrl (CleanRL's ppo_continuous_action.py), ocp (the OCP
    paper's Appendix B) for MuJoCo; cleanrl-atari (ppo_atari_envpool.py) for Atari; cleanrl-procgen
    (ppo_procgen.py) for Procgen; cleanrl-discrete (ppo.py) for GridWorld-v0; juliani-ash (Juliani & Ash
    2024's code: their networks and PPO) for GridWorld-v0, Procgen and Atari. Without --preset: the CleanRL
    preset of --env-id's family"""
    optimizer: Literal["ppo", "es"] = "ppo"
    """ppo (gradient-based), or es: OpenAI evolution strategies for the same actor (the OCP paper's claim)"""
    es: ESOptions = ESOptions()
    """evolution strategies, with --optimizer es"""
    env_backend: Literal["envpool", "mjx"] = "envpool"
    """MuJoCo backend: envpool (C++, CPU) or mjx (MuJoCo XLA: HalfCheetah-v4 in JAX, for accelerators)"""
    env_id: str = "HalfCheetah-v4"
    """the environment: envpool MuJoCo (HalfCheetah-v4, Ant-v4, ...), DeepMind Control (CheetahRun-v1, ...),
    Procgen (CoinrunEasy-v0, ...), Atari (MontezumaRevenge-v5, ...), the JAX gridworld GridWorld-v0, gymnax
    (Breakout-MinAtar, CartPole-v1, ...), Craftax-Classic-Symbolic-v1, or any Gymnasium id as gymnasium:ID;
    with --shift task on DMC / gymnasium, a comma-separated sequence of ids (one per round)"""
    seeds: str = "0"
    """comma-separated integer seeds trained together in one process (vmapped), e.g. `0,1,2,3`"""
    total_timesteps: int = 1_000_000
    """total env steps per seed"""
    learning_rate: float = 3e-4
    """Adam learning rate (start value when annealed)"""
    lr_schedule: Literal["whole", "per-round", "off"] = "whole"
    """learning rate: whole (CleanRL's linear anneal to 0 over the whole run), per-round (from
    --learning-rate to 0 within each round: every round starts like a fresh run), off (constant). The
    --baseline fresh copies anneal per round from round 1 unless off (a fresh run's schedule). CleanRL's
    --anneal-lr / --no-anneal-lr are accepted as whole / off"""
    weight_decay: float = 0.0
    """coupled L2 weight decay added to the gradient before Adam (PyTorch `Adam(weight_decay=...)`)"""
    adam_eps: float = 1e-5
    """Adam epsilon (CleanRL: 1e-5)"""
    adam_b1: float = 0.9
    """Adam beta1, the first-moment decay of every Adam plastix builds for the agent (Dohare et al.'s
    non-stationary Adam: 0.99)"""
    adam_b2: float = 0.999
    """Adam beta2, the second-moment decay (Dohare et al.'s non-stationary Adam: 0.99)"""
    num_envs: int = 1
    """parallel envs per seed"""
    num_steps: int = 2048
    """env steps per env per rollout"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    num_minibatches: int = 32
    """minibatches per epoch"""
    update_epochs: int = 10
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate (and value) clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss as in CleanRL"""
    ent_coef: float = 0.0
    """entropy coefficient"""
    vf_coef: float = 0.5
    """value-loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    target_kl: float | None = None
    """stop the epochs of an update early when the last minibatch's approx KL exceeds this"""
    activation: str = "tanh"
    """hidden activation: tanh, relu, none (identity, the OCP paper's No-Act), gelu, silu, softplus, sigmoid, crelu, dff"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of both the policy and the value network"""
    layer_norm: bool = False
    """LayerNorm after each hidden linear layer, before the activation"""
    network: Literal["cleanrl", "juliani-ash"] = "cleanrl"
    """actor-critic: cleanrl (CleanRL's: separate policy and value MLPs, or a Nature/IMPALA CNN on images) or
    juliani-ash (Juliani & Ash's shared encoder with linear policy and value heads, PyTorch's default init:
    their MLP of --hidden-sizes on vectors, their conv64 encoder (4 convs 4x4/2, 32-64-128-128 channels, then
    one dense of the --hidden-sizes width) on images; CReLU halves each layer's units; discrete actions)"""
    mitigations: str = ""
    """comma-separated mitigations to combine: l2, l2_init, weight_clip, soft_sp, w2_init, sam, parseval, trac,
    shrink_perturb, mix_reset, nap, redo, reset, cbp, adam_reset, injection, ocp_perturb, layernorm, crelu,
    groupnorm, dff (options: --<name>.<option>; surgery periods `every` count gradient steps)"""
    l2: mit.L2Options = mit.L2Options()
    """L2 toward 0, added to --weight-decay (coupled) or as AdamW (decoupled)"""
    l2_init: mit.L2InitOptions = mit.L2InitOptions()
    """L2 toward the initial parameters (Kumar et al. 2023)"""
    weight_clip: mit.WeightClipOptions = mit.WeightClipOptions()
    """clip weights to kappa x the layer's init bound (Elsayed et al. 2024)"""
    soft_sp: mit.SoftShrinkPerturbOptions = mit.SoftShrinkPerturbOptions()
    """soft shrink & perturb every update"""
    shrink_perturb: mit.ShrinkPerturbOptions = mit.ShrinkPerturbOptions()
    """hard shrink & perturb (Ash & Adams 2020)"""
    w2_init: mit.W2InitOptions = mit.W2InitOptions()
    """Wasserstein-2 regulariser toward each tensor's initial weight distribution (Juliani & Ash 2024)"""
    mix_reset: mit.MixResetOptions = mit.MixResetOptions()
    """replace each parameter entry by a fresh init's with probability fraction (Juliani & Ash's mix)"""
    sam: mit.SAMOptions = mit.SAMOptions()
    """sharpness-aware minimisation: the gradient at theta + rho g/||g|| (Foret et al. 2021)"""
    parseval: mit.ParsevalOptions = mit.ParsevalOptions()
    """Parseval regularisation lam ||W W^T - s I||^2 of hidden dense kernels (Chung et al. 2024; Plasticine)"""
    trac: mit.TRACOptions = mit.TRACOptions()
    """TRAC, a parameter-free scale on the optimizer's steps from theta_0 (Muppidi et al. 2024; Plasticine)"""
    nap: mit.NaPOptions = mit.NaPOptions()
    """Normalize-and-Project: weights rescaled to their initial norms (Lyle et al. 2024; Plasticine)"""
    groupnorm: mit.GroupNormOptions = mit.GroupNormOptions()
    """GroupNorm(groups) before every hidden activation (Juliani & Ash's groupnorm)"""

    redo: mit.ReDoOptions = mit.ReDoOptions()
    """recycle tau-dormant neurons (Sokar et al. 2023)"""
    reset: mit.ResetOptions = mit.ResetOptions()
    """re-initialise layers (final / all / named)"""
    cbp: mit.CBPOptions = mit.CBPOptions()
    """continual backprop (Dohare et al. 2024)"""
    adam_reset: mit.AdamResetOptions = mit.AdamResetOptions()
    """clear Adam's moments (Asadi et al. 2023)"""
    injection: mit.InjectionOptions = mit.InjectionOptions()
    """plasticity injection (Nikishin et al. 2023)"""
    ocp_perturb: mit.OCPPerturbOptions = mit.OCPPerturbOptions()
    """perturb zero-gradient (trapped) neurons (the OCP paper's claim)"""
    rebuild_optimizer_at_switch: bool = False
    """clear Adam's moments and step count at every task switch, in every arm, as Juliani & Ash's code
    rebuilds its AdamW at each shift (`model.adapt()`); the L2-init anchor, injection and S&P state stay"""
    diagnostics_every: int = 10
    """measure dormancy, zero gradients, overlaps, ranks, weights, dead units every K updates (0 = off)"""
    diagnostics_batch: int = 2048
    """diagnostics use the first this-many samples of the update's batch (all of the OCP preset's 2048)"""
    dormant_taus: tuple[float, ...] = (0.0, 0.025, 0.1)
    """dormancy thresholds tau reported as `dormant_ratio@tau`"""
    overlap_tau: float = 0.025
    """tau defining the dormant set used by overlaps and the relative zero-gradient ratio"""
    zero_grad_eps: float = 0.0
    """a neuron is zero-gradient when its MAGI <= this (0 = strictly zero)"""
    activity_steps: int = 1000
    """Dohare et al.'s unit activity (fraction of inputs with h > 0) over the last this-many steps of the
    update's rollout, with the diagnostics (0 = off; at most the rollout)"""
    interference_samples: int = 0
    """gradient interference with the diagnostics: cosines of the per-example PPO-loss gradients of the first
    this-many diagnostics samples (0 = off; costs a per-example backward pass)"""
    curvature_every: int = 100
    """measure the PPO loss's top Hessian eigenvalue and trace every M updates (0 = off)"""
    curvature_batch: int = 256
    """samples of the rollout batch used for curvature (at most the whole batch)"""
    curvature_iters: int = 20
    """Lanczos steps for the largest and smallest Hessian eigenvalues"""
    curvature_samples: int = 10
    """Hutchinson probes for the Hessian trace"""
    probe_every: int = 0
    """run the plasticity probe every P updates (0 = off; Lyle et al. 2023, `plastix.probes.random_target_probe`):
    from the current parameters, a copy of the agent fits fresh N(0, 1) targets on --probe-batch observations
    of the update's batch, for each output head in turn, with --probe-steps full-batch Adam steps; logs
    probe/<policy|value>/initial_loss and final_loss (lower final loss = more plastic). Never changes training"""
    probe_steps: int = 100
    """Adam steps of the plasticity probe (its fixed budget)"""
    probe_lr: float = 1e-3
    """Adam learning rate of the plasticity probe"""
    probe_batch: int = 256
    """observations of the update's batch the probe fits (a random subset; at most the whole batch)"""
    save_neuron_scores: bool = False
    """also write per-neuron dormancy and MAGI scores at each measurement to neurons.parquet/"""
    shift: Literal["none", "permute", "window", "expand", "task", "dynamics"] = "none"
    """non-stationary scenario: what changes between rounds (SCIENCE.md section 4)"""
    rounds: int = 1
    """training rounds; the shift happens between rounds; at-switch mitigations fire at each"""
    steps_per_round: int | None = None
    """env steps per seed per round (default: --total-timesteps / --rounds); sets the total when given"""
    shift_seed: int = 0
    """seed of the shifts' randomness (permutations, goals), shared by all training seeds"""
    num_levels: int = 200
    """levels per round for level-based envs (Procgen, gridworld): n of window [r*k, r*k+n) / expand [0, n+r*k)"""
    level_step: int = 50
    """k: levels the window slides / the set grows per round"""
    heldout_levels: int = 100
    """held-out test levels (never trained on) for the generalisation gap"""
    baseline: Literal["none", "fresh"] = "none"
    """fresh: also train, beside each seed, a copy re-initialised at every round start (same config; the
    learning-rate schedule of a fresh one-round run, see --lr-schedule), and write `round/return_fresh` and
    `round/normalized_return` = warm / fresh"""
    heldout_episodes: int = 16
    """episodes per seed of the held-out evaluation at each round end (test levels / an unseen permutation)"""
    patch_grid: int = 16
    """permute on images: the image is cut into a patch_grid x patch_grid grid of patches that are shuffled"""
    grid_size: int = 8
    """GridWorld-v0: side of the grid"""
    grid_obs: Literal["vector", "image"] = "vector"
    """GridWorld-v0: vector (one-hot agent, goal, walls) or image observations"""
    grid_max_steps: int = 64
    """GridWorld-v0: episode time limit"""
    cnn_torso: Literal["auto", "nature", "impala"] = "auto"
    """CNN for image observations (auto: impala for Procgen, nature for Atari and the gridworld)"""
    learner: Literal["auto", "compiled", "host"] = "auto"
    """PPO's learner: compiled (every update one XLA program) or host (one jitted call per rollout and per
    gradient step, driven from Python: convolution gradients run outside XLA loops, which are slow for them
    on the CPU, jax-ml/jax#12868); auto: host on image observations, compiled otherwise"""
    normalize_obs: Literal["auto", "on", "off"] = "auto"
    """running observation normalisation (auto: on for MuJoCo vector observations, as CleanRL)"""
    normalize_reward: Literal["auto", "on", "off"] = "auto"
    """running return-based reward normalisation (auto: on for MuJoCo and Procgen, as CleanRL)"""
    reward_norm_stats: Literal["auto", "per-env", "shared"] = "auto"
    """reward normalisation statistics: per-env (gymnasium 0.29's NormalizeReward on each env, as CleanRL's
    ppo_continuous_action), shared (gym 0.23.1's NormalizeReward on the vector env: one running statistic of
    all of a seed's envs, as CleanRL's ppo_procgen); auto: shared on Procgen, per-env elsewhere"""
    obs_clip: float = 10.0
    """clip normalised observations to [-obs_clip, obs_clip]"""
    reward_clip: float = 10.0
    """clip normalised rewards to [-reward_clip, reward_clip]"""
    run_dir: str | None = None
    """results folder (default: runs/<env-id>__<preset>__<activation>__<time>)"""
    resume: str | None = None
    """continue the killed or finished run in this folder from its last checkpoint"""
    log_every: int = 10
    """updates per compiled chunk: metrics are written and the progress bar advances once per chunk"""
    checkpoint_every: int = 50
    """updates (ES: generations) between checkpoints (rounded up to a multiple of --log-every); the last is
    always saved"""
    num_threads: int = 0
    """envpool worker threads (0: envpool's default)"""
    quiet: bool = False
    """no progress bar or messages (for scripts)"""
    tensorboard: bool = False
    """also write every metric as TensorBoard scalars under <run-dir>/tensorboard/seed_<s>/"""
    wandb: Literal["off", "offline", "online"] = "off"
    """also log to Weights & Biases (offline: a local run folder under <run-dir>/wandb, no network)"""
    wandb_project: str = "plastix"
    """the Weights & Biases project with --wandb offline|online"""

    @property
    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def updates_per_round(self) -> int:
        steps = self.steps_per_round if self.steps_per_round is not None else self.total_timesteps // max(self.rounds, 1)
        return steps // self.batch_size

    @property
    def num_updates(self) -> int:
        return self.rounds * self.updates_per_round

    @property
    def chunk_updates(self) -> int:
        return min(self.log_every, self.num_updates)

    @property
    def checkpoint_chunks(self) -> int:
        return max(1, math.ceil(self.checkpoint_every / self.chunk_updates))


# Each preset's values are its reference's (the CleanRL presets: that file's ``Args``, field by field).
PRESETS: dict[str, dict] = {
    "cleanrl": {},  # the TrainConfig defaults are ppo_continuous_action.py's
    "ocp": dict(
        total_timesteps=20_000_000,
        learning_rate=1e-4,
        lr_schedule="whole",
        weight_decay=1e-4,
        gamma=0.99,
        gae_lambda=0.95,
        num_minibatches=32,
        update_epochs=10,
        clip_coef=0.2,
        vf_coef=0.5,
        max_grad_norm=0.5,
        activation="relu",
    ),
    # awjuliani/deep-rl-plasticity: hyperparams.yaml (model, ppo_trainer), algos/ppo/{model,trainer}.py.
    "juliani-ash": dict(
        network="juliani-ash",
        activation="relu",  # model.activation
        hidden_sizes=(256, 256),  # model.h_size = 256; LinearEncoder has two layers of it
        learning_rate=5e-4,  # model.lr, constant (no scheduler)
        lr_schedule="off",
        weight_decay=0.0,  # AdamW(weight_decay=model.l2_norm = 0.0); their `l2` arm is --l2.mode decoupled
        adam_eps=1e-8,  # torch AdamW's default eps
        num_envs=32,  # buffer_size = 1024 steps per update (32 envs x 32 steps)
        num_steps=32,
        num_minibatches=16,  # batch_size = 64
        update_epochs=3,  # num_passes
        ent_coef=0.02,
        gamma=0.99,
        gae_lambda=0.95,  # lambda
        clip_coef=0.2,  # clip_param
        clip_vloss=False,  # F.mse_loss(values, targets): no value clipping
        vf_coef=1.0,  # their loss = pg + 0.5 * mse(V, R); plastix's value loss is CleanRL's 0.5 * mse, so 1.0
        max_grad_norm=0.5,  # clip_grad_norm_(parameters, 0.5)
        norm_adv=True,  # per minibatch, (adv - mean) / (std + 1e-8)
        normalize_obs="off",
        normalize_reward="off",
        rebuild_optimizer_at_switch=True,  # shift_dist() -> model.adapt() -> a new AdamW
    ),
    "cleanrl-atari": dict(  # ppo_atari_envpool.py
        env_id="Breakout-v5",
        total_timesteps=10_000_000,
        learning_rate=2.5e-4,
        num_envs=8,
        num_steps=128,
        lr_schedule="whole",
        gamma=0.99,
        gae_lambda=0.95,
        num_minibatches=4,
        update_epochs=4,
        norm_adv=True,
        clip_coef=0.1,
        clip_vloss=True,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        target_kl=None,
        activation="relu",
    ),
    "cleanrl-procgen": dict(  # ppo_procgen.py (its env_id "starpilot" with distribution_mode "easy")
        env_id="StarpilotEasy-v0",
        total_timesteps=25_000_000,
        learning_rate=5e-4,
        num_envs=64,
        num_steps=256,
        lr_schedule="off",
        gamma=0.999,
        gae_lambda=0.95,
        num_minibatches=8,
        update_epochs=3,
        norm_adv=True,
        clip_coef=0.2,
        clip_vloss=True,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        target_kl=None,
        activation="relu",
        reward_norm_stats="shared",
    ),
    "cleanrl-discrete": dict(  # ppo.py (CartPole-v1 there; plastix's discrete vector env is the gridworld)
        env_id="GridWorld-v0",
        total_timesteps=500_000,
        learning_rate=2.5e-4,
        num_envs=4,
        num_steps=128,
        lr_schedule="whole",
        gamma=0.99,
        gae_lambda=0.95,
        num_minibatches=4,
        update_epochs=4,
        norm_adv=True,
        clip_coef=0.2,
        clip_vloss=True,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        target_kl=None,
        activation="tanh",
    ),
}

# The env families (``plastix.envs.shifts.env_family``) each preset fits: its action space and the scale of
# its hyperparameters. A preset added to PRESETS must be declared here (a test checks).
PRESET_FAMILIES: dict[str, tuple[str, ...]] = {
    "cleanrl": ("mujoco", "dmc", "gymnasium-box"),
    "ocp": ("mujoco", "dmc", "gymnasium-box"),
    "cleanrl-atari": ("atari",),
    "cleanrl-procgen": ("procgen",),
    "cleanrl-discrete": ("gridworld", "gymnax", "craftax", "gymnasium-discrete"),
    # their gridworld and CoinRun (Montezuma in the paper); any discrete vector env takes their MLP PPO
    "juliani-ash": ("gridworld", "procgen", "atari", "gymnax", "craftax", "gymnasium-discrete"),
}

# What a run uses when no preset is given: the CleanRL preset of the env's family.
FAMILY_DEFAULT_PRESET = {"mujoco": "cleanrl", "atari": "cleanrl-atari", "procgen": "cleanrl-procgen",
                         "gridworld": "cleanrl-discrete", "dmc": "cleanrl", "gymnasium-box": "cleanrl",
                         "gymnax": "cleanrl-discrete", "craftax": "cleanrl-discrete",
                         "gymnasium-discrete": "cleanrl-discrete"}


def preset_config(name: str) -> TrainConfig:
    """The ``TrainConfig`` of preset ``name`` (a key of ``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; {did_you_mean(name, PRESETS)}allowed: {', '.join(PRESETS)}")
    return dataclasses.replace(TrainConfig(), preset=name, **PRESETS[name])


def presets_fitting(family: str) -> list[str]:
    """The presets whose declaration (``PRESET_FAMILIES``) includes env family ``family``."""
    return [name for name, families in PRESET_FAMILIES.items() if family in families]


def default_preset(env_id: str) -> str:
    """The CleanRL preset of ``env_id``'s family (``cleanrl`` when the env is unknown: validation names it)."""
    from plastix.envs.families import preset_family

    try:
        return FAMILY_DEFAULT_PRESET[preset_family(env_id)]
    except ValueError:
        return "cleanrl"


def check_preset_fits(cfg: TrainConfig, family: str) -> None:
    """``ConfigError`` unless ``cfg.preset`` declares ``family`` (a continuous-control preset on CoinRun would
    train it with entropy 0, 1 env and 2048-step rollouts), naming the presets that fit."""
    if cfg.preset not in PRESET_FAMILIES:
        raise ConfigError(f"--preset: {cfg.preset!r} declares no env families; allowed presets: {', '.join(PRESETS)}")
    if family in PRESET_FAMILIES[cfg.preset]:
        return
    fitting = presets_fitting(family)
    raise ConfigError(
        f"--preset {cfg.preset} does not fit --env-id {cfg.env_id} ({family}): it is made for "
        f"{', '.join(PRESET_FAMILIES[cfg.preset])}. Presets that fit {cfg.env_id}: {', '.join(fitting) or 'none'}"
    )


def apply_aliases(data: dict, where: str) -> dict:
    """``data`` (a config dict) with CleanRL's ``anneal_lr`` (older plastix versions kept it) mapped to
    ``lr_schedule``: true -> ``whole``, false -> ``off``. Given beside a contradicting ``lr_schedule`` it is a
    ``ConfigError`` (``anneal_lr = true`` agrees with ``whole`` and ``per-round``)."""
    data = dict(data)
    if "anneal_lr" in data:
        anneal = bool(data.pop("anneal_lr"))
        schedule = data.setdefault("lr_schedule", "whole" if anneal else "off")
        if anneal != (schedule != "off"):
            raise ConfigError(f"{where}: anneal_lr = {str(anneal).lower()} contradicts lr_schedule = {schedule!r}; "
                              "give lr_schedule only (whole, per-round or off)")
    return data


NETWORK_MITIGATIONS = ("layernorm", "crelu")  # mitigations that are network options (listed last, in this order)


def canonical(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with one spelling for what two options say, so that ``config.json`` says what ran:

    - ``--layer-norm`` and ``--mitigations layernorm``: ``layer_norm = true`` and ``layernorm`` listed;
    - ``--activation crelu`` and ``--mitigations crelu`` (on ReLU): ``activation = "crelu"`` and ``crelu``
      listed (``crelu`` beside another activation is left for ``validate`` to refuse);
    - the network mitigations listed after the others, in ``NETWORK_MITIGATIONS`` order.

    Idempotent; the network and the training are the same under either spelling."""
    names = list(dict.fromkeys(n.strip() for n in str(cfg.mitigations).split(",") if n.strip()))
    layer_norm = cfg.layer_norm or "layernorm" in names
    activation = "crelu" if "crelu" in names and cfg.activation == "relu" else cfg.activation
    network = {"layernorm": layer_norm, "crelu": activation == "crelu" or "crelu" in names}
    names = [n for n in names if n not in NETWORK_MITIGATIONS] + [n for n in NETWORK_MITIGATIONS if network[n]]
    return dataclasses.replace(cfg, layer_norm=layer_norm, activation=activation, mitigations=",".join(names))


def config_from_dict(data: dict) -> TrainConfig:
    """Inverse of ``dataclasses.asdict`` for ``TrainConfig``: nested option groups rebuilt, JSON lists
    back to tuples; ``anneal_lr`` of older versions becomes ``lr_schedule``; ``canonical``. Unknown keys raise
    ``ConfigError`` naming them."""
    return canonical(_dataclass_from_dict(TrainConfig(), apply_aliases(data, "config.json"), "config.json"))


def _dataclass_from_dict(default, data: dict, where: str):
    fields = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}; {did_you_mean(unknown[0], fields)}"
                          f"allowed: {', '.join(sorted(fields))}")
    values = {}
    for name, value in data.items():
        current = getattr(default, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _dataclass_from_dict(current, value, f"{where}: {name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return dataclasses.replace(default, **values)


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: ``low <= x <= high``, ``None`` an open end, a bound excluded
    when its ``*_open`` flag is set. ``Range(0, low_open=True)`` is "> 0"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def describe(self) -> str:
        """``"positive (> 0)"``, ``">= 1"``, ``"in [0, 1)"``, ..."""
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive (> 0)"
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
UNIT = Range(0, 1)  # a probability, a fraction, a discount
UNIT_HALF_OPEN = Range(0, 1, high_open=True)  # a decay rate: 1 would never forget

# The range of every numeric option, from its definition (a test checks that every int and float field of
# TrainConfig and of its option groups is here). ``None`` (an optional option left out) is always allowed;
# a tuple option's range applies to each element. Cross-option rules (a minibatch count dividing the batch,
# at least one rollout per round, ...) are checked in ``validate`` after these.
OPTION_RANGES: dict[str, Range] = {
    # PPO (CleanRL's Args)
    "total_timesteps": POSITIVE,
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_eps": POSITIVE,
    "adam_b1": UNIT_HALF_OPEN,  # b = 1 never forgets and divides Adam's bias correction by 0
    "adam_b2": UNIT_HALF_OPEN,
    "num_envs": POSITIVE,
    "num_steps": POSITIVE,
    "gamma": UNIT,
    "gae_lambda": UNIT,
    "num_minibatches": POSITIVE,
    "update_epochs": POSITIVE,
    "clip_coef": NON_NEGATIVE,
    "ent_coef": NON_NEGATIVE,
    "vf_coef": NON_NEGATIVE,
    "max_grad_norm": POSITIVE,
    "target_kl": POSITIVE,
    "hidden_sizes": AT_LEAST_ONE,
    "obs_clip": POSITIVE,
    "reward_clip": POSITIVE,
    # OpenAI-ES
    "es.popsize": Range(2),  # mirrored pairs (evenness: ESConfig.validate)
    "es.sigma": POSITIVE,
    "es.learning_rate": POSITIVE,
    "es.weight_decay": NON_NEGATIVE,
    "es.episode_steps": AT_LEAST_ONE,
    # mitigations (plastix.mitigations.registry; `every` counts gradient steps)
    "l2.weight_decay": NON_NEGATIVE,
    "l2_init.lam": NON_NEGATIVE,
    "weight_clip.kappa": POSITIVE,  # a bound of kappa x the init bound; 0 would zero every weight
    "soft_sp.lam": UNIT,  # theta <- lam theta + sigma noise: a shrink
    "soft_sp.sigma": NON_NEGATIVE,
    "shrink_perturb.lam": UNIT,
    "shrink_perturb.sigma": NON_NEGATIVE,
    "shrink_perturb.every": AT_LEAST_ONE,
    "redo.tau": NON_NEGATIVE,  # a dormancy threshold on scores >= 0
    "redo.every": AT_LEAST_ONE,
    "redo.fraction": Range(0, 1, low_open=True),  # of each layer's units (at least one is recycled)
    "redo.start": NON_NEGATIVE,  # gradient steps
    "redo.end": AT_LEAST_ONE,
    "reset.every": AT_LEAST_ONE,
    "cbp.replacement_rate": UNIT,  # a fraction of the eligible units per step
    "cbp.maturity_threshold": NON_NEGATIVE,
    "cbp.decay": UNIT_HALF_OPEN,  # the bias correction 1 - decay^age is 0 at decay 1
    "adam_reset.every": AT_LEAST_ONE,
    "injection.head_layers": AT_LEAST_ONE,  # the upper bound depends on the network: check_env_and_shift
    "injection.every": AT_LEAST_ONE,
    "ocp_perturb.threshold": NON_NEGATIVE,  # MAGI scores (and their ratio to the mean) are >= 0
    "ocp_perturb.noise_scale": POSITIVE,  # 0 would perturb nothing
    "ocp_perturb.every": AT_LEAST_ONE,
    "w2_init.lam": NON_NEGATIVE,
    "mix_reset.fraction": UNIT,  # the probability that an entry takes its fresh value
    "mix_reset.every": AT_LEAST_ONE,
    "sam.rho": POSITIVE,  # 0 would be plain SGD's gradient at twice the cost
    "parseval.lam": NON_NEGATIVE,
    "parseval.s": POSITIVE,  # the target scale of W W^T
    "trac.s_prev": POSITIVE,
    "trac.eps": POSITIVE,
    "nap.every": AT_LEAST_ONE,
    "groupnorm.groups": AT_LEAST_ONE,  # dividing the widths: plastix.mitigations.build
    # diagnostics
    "diagnostics_every": NON_NEGATIVE,  # 0 = off
    "diagnostics_batch": AT_LEAST_ONE,
    "dormant_taus": NON_NEGATIVE,
    "overlap_tau": NON_NEGATIVE,
    "zero_grad_eps": NON_NEGATIVE,
    "curvature_every": NON_NEGATIVE,  # 0 = off
    "curvature_batch": AT_LEAST_ONE,
    "curvature_iters": AT_LEAST_ONE,
    "curvature_samples": AT_LEAST_ONE,
    "activity_steps": NON_NEGATIVE,  # 0 = off
    "interference_samples": NON_NEGATIVE,  # 0 = off; 1 is refused in validate (no pair)
    "probe_every": NON_NEGATIVE,  # 0 = off
    "probe_steps": AT_LEAST_ONE,
    "probe_lr": POSITIVE,
    "probe_batch": AT_LEAST_ONE,
    # rounds and shifts
    "rounds": AT_LEAST_ONE,
    "steps_per_round": AT_LEAST_ONE,  # and at least one rollout: validate
    "shift_seed": NON_NEGATIVE,
    "num_levels": AT_LEAST_ONE,
    "level_step": NON_NEGATIVE,
    "heldout_levels": AT_LEAST_ONE,
    "heldout_episodes": AT_LEAST_ONE,
    "patch_grid": AT_LEAST_ONE,
    "grid_size": Range(2),  # the agent and the goal need two cells
    "grid_max_steps": AT_LEAST_ONE,
    # run
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "num_threads": NON_NEGATIVE,  # 0 = envpool's default
}


def option_flag(path: str) -> str:
    """The ``plastix train`` flag of a dotted option path: ``shrink_perturb.lam`` -> ``--shrink-perturb.lam``."""
    return "--" + path.replace("_", "-")


def option_value(cfg: TrainConfig, path: str):
    """The value of dotted option ``path`` (``redo.tau``) in ``cfg``."""
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def check_ranges(cfg: TrainConfig) -> None:
    """``ConfigError`` naming the option and its allowed range for the first value outside ``OPTION_RANGES``."""
    for path, allowed in OPTION_RANGES.items():
        value = option_value(cfg, path)
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v not in allowed:
                raise ConfigError(f"{option_flag(path)}: must be {allowed.describe()}, got "
                                  f"{value if isinstance(value, tuple) else v}")


def check_groups_used(given: Iterable[str], configs: Iterable[TrainConfig], spell=None) -> None:
    """``ConfigError`` for an option of a mitigation (``redo.tau``) given while no config of ``configs``
    enables that mitigation (``--mitigations``), or an ``es.*`` option while none trains with
    ``--optimizer es``: the option would be ignored. ``given``: the dotted option paths the user wrote
    (command-line flags, an experiment file's keys); ``spell(path)`` names one in the message (default: its
    flag, ``option_flag``)."""
    configs = list(configs)
    enabled = {name.strip() for cfg in configs for name in str(cfg.mitigations).split(",")}  # unknown: validate
    if any(cfg.layer_norm for cfg in configs):
        enabled.add("layernorm")
    if any(cfg.optimizer == "es" for cfg in configs):
        enabled.add("es")
    for path in given:
        group = path.split(".", 1)[0] if "." in path else None
        if group is None or group in enabled or not (group in mit.MITIGATIONS or group == "es"):
            continue
        if group == "es":
            hint = "only used with --optimizer es"
        else:
            hint = f"{group} is not in --mitigations; add it (--mitigations {group}) or drop the option"
        raise ConfigError(f"{(spell or option_flag)(path)}: given, but it would be ignored: {hint}")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; raises ``ConfigError`` naming ``--seeds`` otherwise."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers such as `0,1,2`, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one integer seed, e.g. `0` or `0,1,2`")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: seeds must be distinct, got {text!r}")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: seeds must be non-negative, got {text!r}")
    return seeds


def validate(cfg: TrainConfig, check_env: bool = True) -> None:
    """Raise ``ConfigError`` for any bad option, before any compute."""
    parse_seeds(cfg.seeds)
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"--activation: unknown activation {cfg.activation!r}; "
                          f"{did_you_mean(cfg.activation, ACTIVATIONS)}allowed: {', '.join(ACTIVATIONS)}")
    check_ranges(cfg)
    if not cfg.hidden_sizes:
        raise ConfigError("--hidden-sizes: need one or more widths, e.g. `64 64`")
    if cfg.batch_size % cfg.num_minibatches:
        raise ConfigError(
            f"--num-minibatches: {cfg.num_minibatches} does not divide the batch of "
            f"num_envs * num_steps = {cfg.batch_size}"
        )
    if cfg.steps_per_round is not None and cfg.steps_per_round < cfg.batch_size:
        raise ConfigError(f"--steps-per-round: {cfg.steps_per_round} is less than one rollout "
                          f"(num_envs * num_steps = {cfg.batch_size})")
    if cfg.num_updates < 1:
        raise ConfigError(
            f"--total-timesteps: {cfg.total_timesteps} is less than one rollout per round "
            f"(rounds x num_envs x num_steps = {cfg.rounds * cfg.batch_size})"
        )
    for name, allowed in (("lr_schedule", LR_SCHEDULES), ("reward_norm_stats", ("auto", "per-env", "shared")),
                          ("preset", tuple(PRESETS))):
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name.replace('_', '-')}: unknown value {getattr(cfg, name)!r}; "
                              f"allowed: {', '.join(allowed)}")
    if cfg.interference_samples == 1 or cfg.interference_samples < 0:
        raise ConfigError(f"--interference-samples: 0 (off) or >= 2 (pairs of samples), got {cfg.interference_samples}")
    from plastix.mitigations.build import check as check_mitigations

    try:
        check_mitigations(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if check_env:
        check_env_and_shift(cfg)


def check_env_and_shift(cfg: TrainConfig) -> None:
    """The env id exists, the shift works on it, and the mitigations fit its network; else ``ConfigError``."""
    from plastix.envs import shifts
    from plastix.envs.envpool_bridge import check_env_id
    from plastix.envs.families import check_env

    try:
        family = shifts.env_family(cfg.env_id)
        if family == "mujoco":
            check_env_id(cfg.env_id)
        shifts.check_shift_supported(cfg.env_id, cfg.shift)
        fit_family, continuous = check_env(cfg.env_id, cfg.shift)
        if cfg.env_backend == "mjx":
            from plastix.envs.mjx_halfcheetah import check_mjx_env

            check_mjx_env(cfg.env_id, cfg.shift)
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("--") else f"--env-id/--shift: {message}") from None
    if cfg.network == "juliani-ash":
        _check_juliani_ash_network(cfg, fit_family)
    check_preset_fits(cfg, fit_family)
    reward_norm_on = cfg.normalize_reward == "on" or (cfg.normalize_reward == "auto"
                                                      and (continuous or family == "procgen"))
    if cfg.reward_norm_stats != "auto" and not reward_norm_on:
        raise ConfigError(f"--reward-norm-stats {cfg.reward_norm_stats}: rewards of {cfg.env_id} are not "
                          f"normalised (--normalize-reward {cfg.normalize_reward}); give --normalize-reward on, "
                          "or drop the option")
    if "injection" in cfg.mitigations:
        _check_injection_head(cfg, family)


def _check_juliani_ash_network(cfg: TrainConfig, family: str) -> None:
    """``--network juliani-ash`` fits ``cfg``: a discrete-action env, no CNN torso asked for, CReLU on even
    widths, one conv-encoder width on images; else ``ConfigError``."""
    image = family in ("procgen", "atari") or (family == "gridworld" and cfg.grid_obs == "image")
    if family in ("mujoco", "dmc", "gymnasium-box"):
        raise ConfigError(f"--network juliani-ash: their PPO has a categorical policy; {cfg.env_id} has "
                          "continuous actions (use GridWorld-v0, Procgen or Atari, or --network cleanrl)")
    if cfg.cnn_torso != "auto":
        raise ConfigError(f"--cnn-torso {cfg.cnn_torso}: only for --network cleanrl; --network juliani-ash "
                          "uses their conv64 encoder on images")
    crelu = cfg.activation == "crelu" or "crelu" in cfg.mitigations
    if crelu and any(w % 2 for w in cfg.hidden_sizes):
        raise ConfigError(f"--hidden-sizes {cfg.hidden_sizes}: --network juliani-ash with CReLU gives each "
                          "layer half the units (their h_size // 2): use even widths")
    if image and len(set(cfg.hidden_sizes)) != 1:
        raise ConfigError(f"--hidden-sizes {cfg.hidden_sizes}: their conv encoder has one dense layer of "
                          "h_size after the convolutions; on images give equal widths (e.g. 256 256 or 256)")


def _check_injection_head(cfg: TrainConfig, family: str) -> None:
    """``--injection.head_layers`` fits the network of ``family``: 1 or 2 on the CNN actor-critic (its output
    Denses, plus the torso's final Dense), at most the hidden layers + 1 on the MLPs; else ``ConfigError``."""
    head_layers = cfg.injection.head_layers
    if cfg.network == "juliani-ash" and head_layers != 1:
        raise ConfigError(f"--injection.head_layers: {head_layers} on --network juliani-ash; allowed: 1 "
                          "(their Injector wraps the linear policy and value heads)")
    if family in ("procgen", "atari") or (family == "gridworld" and cfg.grid_obs == "image"):
        if head_layers not in (1, 2):
            raise ConfigError(f"--injection.head_layers: {head_layers} on {cfg.env_id}'s CNN actor-critic; "
                              "allowed: 1 (the output layers) or 2 (also the torso's final dense layer)")
    elif not 1 <= head_layers <= len(cfg.hidden_sizes) + 1:
        raise ConfigError(f"--injection.head_layers: must be in [1, {len(cfg.hidden_sizes) + 1}] "
                          f"(--hidden-sizes {cfg.hidden_sizes} plus the output layer), got {head_layers}")
    if head_layers > 1 and _injection_firings(cfg) > 1:
        raise ConfigError(f"--injection.head_layers: {head_layers} layers can be injected only once (a head "
                          "with a hidden layer cannot fold a - b into f), but the schedule fires more than once "
                          f"(--rounds {cfg.rounds}, --injection.every {cfg.injection.every}); use "
                          "--injection.head_layers 1 (linear heads: injected at every firing, as Juliani & "
                          "Ash)")


def _injection_firings(cfg: TrainConfig) -> int:
    """How many times the injection schedule of ``cfg`` fires over the run (at switches and every N steps)."""
    inj = cfg.injection
    firings = cfg.rounds - 1 if inj.at_switch else 0
    if inj.every is not None:
        firings += cfg.num_updates * cfg.update_epochs * cfg.num_minibatches // inj.every
    return firings
