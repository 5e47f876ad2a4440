"""Registry of mitigations: name -> kind and default options; ``check_compatible`` for a chosen set."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TRANSFORM = "transform"  # an optax GradientTransformation in the optimizer chain, every update
SURGERY = "surgery"  # a Surgery applied to params + optimizer state on a schedule
NETWORK = "network"  # an option of the network architecture (plastix.nets)


@dataclasses.dataclass(frozen=True)
class L2Options:
    """L2 weight decay toward 0 (``transforms.l2`` / ``decoupled_weight_decay``)."""

    weight_decay: float = 1e-4  # the OCP paper's PPO; Juliani & Ash 2024 use 1e-3
    mode: str = "coupled"  # "coupled" (L2 in the gradient, PyTorch Adam) or "decoupled" (AdamW)


L2_INIT_FORMS = ("squared", "norm")


@dataclasses.dataclass(frozen=True)
class L2InitOptions:
    """Regenerative regularisation toward theta_0 (``transforms.l2_init``)."""

    lam: float = 0.01  # Juliani & Ash 2024
    form: str = "squared"  # lam ||theta - theta_0||^2 (Kumar et al.), or "norm": lam ||theta - theta_0||_2 (J&A)
    before_clip: bool = False  # add the penalty's gradient before the global-norm clip (J&A: a loss term)


@dataclasses.dataclass(frozen=True)
class WeightClipOptions:
    """Weight clipping to kappa times the layer's init bound (``transforms.weight_clipping``)."""

    kappa: float = 3.0  # Elsayed et al.'s RL script (rl_experiments/ppo_continuous_action_clipped.py): 3.0
    bound_method: str = "fan_in"  # fan_in (Elsayed et al.), uniform_equivalent or max_abs: transforms.init_bounds


@dataclasses.dataclass(frozen=True)
class SoftShrinkPerturbOptions:
    """Soft shrink & perturb every update (``transforms.soft_shrink_perturb``)."""

    lam: float = 0.999999  # shrink factor in [0, 1]: theta <- lam * theta + sigma * noise
    sigma: float = 1e-6  # scale (>= 0) of the noise, a fresh initialisation


@dataclasses.dataclass(frozen=True)
class ShrinkPerturbOptions:
    """Hard shrink & perturb at task switches (``reset.shrink_perturb``)."""

    lam: float = 0.5  # shrink factor in [0, 1]: theta <- lam * theta + sigma * theta_fresh
    sigma: float = 0.5  # weight (>= 0) of a fresh initialisation
    every: int | None = None  # period in gradient steps (>= 1), or None: at task switches only
    at_switch: bool = True  # fire at every task switch (needs --rounds > 1)


@dataclasses.dataclass(frozen=True)
class ReDoOptions:
    """ReDo recycling of tau-dormant neurons (``redo.redo``)."""

    tau: float = 0.1  # ReDo's main experiments; 0.025 in its demonstration
    every: int | None = 1000  # period in gradient steps (Sokar et al.: 1000)
    at_switch: bool = False  # also fire at every task switch
    fraction: float | None = None
    """recycle this fraction of each layer's units by score at every firing (dopamine's
    NeuronRecyclerScheduled recycle_rate, 0.3 there) instead of the tau-dormant ones"""
    score: str = "redo"
    """with fraction: redo (least dormancy scores), random, redo_inverted (most active): dopamine's score_type"""
    start: int = 0
    """with fraction: first gradient step that may recycle (dopamine's reset_start_step)"""
    end: int | None = None
    """with fraction: the fraction decays as cos(pi/2 step/end) and recycling stops at end (reset_end_step)"""


@dataclasses.dataclass(frozen=True)
class ResetOptions:
    """Reset of chosen layers (``reset.reset_layers``)."""

    layers: str | tuple[str, ...] = "final"  # "final", "all" or layer names, e.g. policy/output log_std
    every: int | None = None  # period in gradient steps (>= 1), or None: at task switches only
    at_switch: bool = True  # fire at every task switch (needs --rounds > 1)


@dataclasses.dataclass(frozen=True)
class CBPOptions:
    """Continual backprop, every update (``cbp.continual_backprop``)."""

    replacement_rate: float = 1e-4  # fraction in [0, 1] of the eligible units replaced per gradient step
    maturity_threshold: int = 10_000  # age (>= 0 gradient steps) before a unit can be replaced
    decay: float = 0.99  # running-average decay of the utility, in [0, 1)
    adam_gnt: bool = True
    """Dohare et al.'s AdamGnT: Adam keeps a step count per weight, reset to 0 for a replaced unit's weights"""
    utility: str = "contribution"
    """GnT's util_type: contribution, weight, adaptation, zero_contribution, adaptable_contribution,
    feature_by_input, random"""


@dataclasses.dataclass(frozen=True)
class AdamResetOptions:
    """Adam moments and count cleared (``reset.adam_reset``)."""

    reset_count: bool = True  # also zero Adam's step count
    every: int | None = None  # period in gradient steps (>= 1), or None: at task switches only
    at_switch: bool = True  # fire at every task switch (needs --rounds > 1)


@dataclasses.dataclass(frozen=True)
class InjectionOptions:
    """Plasticity injection (``injection``)."""

    head_layers: int = 2  # layers of the injected head (>= 1; 2 = the output layer and the one before)
    every: int | None = None  # period in gradient steps (>= 1), or None: at task switches only
    at_switch: bool = True  # fire at every task switch (needs --rounds > 1)
    freeze_head: bool = True  # Nikishin et al. freeze f; Juliani & Ash's Injector keeps training it (False)


@dataclasses.dataclass(frozen=True)
class OCPPerturbOptions:
    """Perturbation of zero-gradient neurons (``ocp.ocp_perturb``)."""

    threshold: float = 0.0  # trapped when MAGI <= threshold (>= 0; 0: strictly zero gradient)
    relative: bool = False  # compare MAGI / the layer's mean MAGI with the threshold instead
    noise_scale: float = 1.0  # noise (> 0) in units of the layer's init scale
    every: int | None = None  # period in gradient steps (>= 1), or None: at task switches only
    at_switch: bool = True  # fire at every task switch (needs --rounds > 1)


@dataclasses.dataclass(frozen=True)
class W2InitOptions:
    """W2-init: Wasserstein regulariser toward the initial weight distributions (``juliani_ash.w2_init``)."""

    lam: float = 0.01  # Juliani & Ash's hyperparams.yaml (w2-init: model.w2_init 0.01)
    before_clip: bool = True  # their loss term: its gradient joins the loss gradient before the clip


@dataclasses.dataclass(frozen=True)
class MixResetOptions:
    """Juliani & Ash's "mix" reset (``juliani_ash.mix_reset``)."""

    fraction: float = 0.5  # mix_factor: probability that an entry takes its fresh value (no default there)
    every: int | None = None
    at_switch: bool = True  # their model.adapt() at every shift


@dataclasses.dataclass(frozen=True)
class SAMOptions:
    """Sharpness-aware minimisation (``plastix.mitigations.sam``)."""

    rho: float = 0.05  # Foret et al. 2021's neighbourhood radius (their default)


@dataclasses.dataclass(frozen=True)
class ParsevalOptions:
    """Parseval regularisation of every hidden Dense kernel (``plasticine.parseval``)."""

    lam: float = 1e-3  # Plasticine's PRLinear lambda_reg
    s: float = 1.0  # target scale of W W^T


@dataclasses.dataclass(frozen=True)
class TRACOptions:
    """TRAC around the agent's Adam (``plasticine.trac``); Plasticine's ``start_trac`` defaults."""

    s_prev: float = 1e-8
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class NaPOptions:
    """Normalize-and-Project's projection of every weight to its initial norm (``plasticine.normalize_and_project``)."""

    every: int | None = None  # None: once per PPO update (Plasticine: after each rollout); else gradient steps
    at_switch: bool = False


@dataclasses.dataclass(frozen=True)
class GroupNormOptions:
    """GroupNorm before each hidden activation (``plastix.nets.hidden_norm``), Juliani & Ash's ``GroupNorm(groups, C)``."""

    groups: int = 1  # their GnReLU / map_activation default


@dataclasses.dataclass(frozen=True)
class DFFOptions:
    """Deep Fourier features: hidden activation ``[sin(x), cos(x)]`` (``plastix.nets``, Plasticine's DFF)."""


@dataclasses.dataclass(frozen=True)
class LayerNormOptions:
    """LayerNorm after each hidden Dense (``plastix.nets.ActorCritic(layer_norm=True)``)."""


@dataclasses.dataclass(frozen=True)
class CReLUOptions:
    """CReLU hidden activation (``plastix.nets.ActorCritic(activation="crelu")``)."""


@dataclasses.dataclass(frozen=True)
class MitigationSpec:
    """A registry entry: the mitigation's kind, default options and where it lives."""

    kind: str
    options: Any
    where: str


MITIGATIONS: dict[str, MitigationSpec] = {
    "l2": MitigationSpec(TRANSFORM, L2Options(), "transforms.l2 / transforms.decoupled_weight_decay"),
    "l2_init": MitigationSpec(TRANSFORM, L2InitOptions(), "transforms.l2_init"),
    "weight_clip": MitigationSpec(TRANSFORM, WeightClipOptions(), "transforms.weight_clipping"),
    "soft_sp": MitigationSpec(TRANSFORM, SoftShrinkPerturbOptions(), "transforms.soft_shrink_perturb"),
    "w2_init": MitigationSpec(TRANSFORM, W2InitOptions(), "juliani_ash.w2_init"),
    "sam": MitigationSpec(TRANSFORM, SAMOptions(), "sam.sam_gradient (in the trainer's gradient step)"),
    "parseval": MitigationSpec(TRANSFORM, ParsevalOptions(), "plasticine.parseval"),
    "trac": MitigationSpec(TRANSFORM, TRACOptions(), "plasticine.trac (wraps the optimizer after the clip)"),
    "shrink_perturb": MitigationSpec(SURGERY, ShrinkPerturbOptions(), "reset.shrink_perturb"),
    "nap": MitigationSpec(SURGERY, NaPOptions(), "plasticine.normalize_and_project"),
    "mix_reset": MitigationSpec(SURGERY, MixResetOptions(), "juliani_ash.mix_reset"),
    "redo": MitigationSpec(SURGERY, ReDoOptions(), "redo.redo"),
    "reset": MitigationSpec(SURGERY, ResetOptions(), "reset.reset_layers"),
    "cbp": MitigationSpec(SURGERY, CBPOptions(), "cbp.continual_backprop"),
    "adam_reset": MitigationSpec(SURGERY, AdamResetOptions(), "reset.adam_reset"),
    "injection": MitigationSpec(SURGERY, InjectionOptions(), "injection.plasticity_injection"),
    "ocp_perturb": MitigationSpec(SURGERY, OCPPerturbOptions(), "ocp.ocp_perturb"),
    "layernorm": MitigationSpec(NETWORK, LayerNormOptions(), "plastix.nets (layer_norm=True)"),
    "crelu": MitigationSpec(NETWORK, CReLUOptions(), "plastix.nets (activation='crelu')"),
    "groupnorm": MitigationSpec(NETWORK, GroupNormOptions(), "plastix.nets (norm_groups=G)"),
    "dff": MitigationSpec(NETWORK, DFFOptions(), "plastix.nets (activation='dff')"),
}
"""Every mitigation by name: ``MITIGATIONS[name].kind`` and ``.options`` (a frozen dataclass of defaults;
override with ``dataclasses.replace``)."""


def _options(name: str, options: Mapping[str, Any] | None) -> Any:
    return (options or {}).get(name, MITIGATIONS[name].options)


def check_compatible(
    names: Sequence[str] | Iterable[str],
    options: Mapping[str, Any] | None = None,
    *,
    activation: str | None = None,
    base_weight_decay: float = 0.0,
    base_weight_decay_mode: str = "coupled",
) -> None:
    """Raise ``ValueError`` naming the two conflicting mitigations and why, if ``names`` contradict.

    Rules (anything else composes; each acts at its own place in the update step):

    * unknown or repeated names;
    * ``l2`` with a mode other than the trainer's own weight decay (``base_weight_decay > 0`` in
      ``base_weight_decay_mode``): coupled and decoupled decay at once;
    * ``reset`` (of ``"all"``, ``"final"``, or named layers that include an ``output``) with ``injection``,
      both at task switches: injection must freeze the *trained* head so that the output is unchanged,
      while the reset replaces that head at the same switch;
    * ``crelu`` with an ``activation`` other than ``"relu"``/``"crelu"``: CReLU *is* the activation
      (``[relu(x), relu(-x)]``), it cannot also be tanh or the OCP paper's identity ("none");
    * ``layernorm`` with ``activation="none"``: the network would no longer be the No-Act (linear) network
      it is meant to study (LayerNorm is nonlinear);
    * ``groupnorm`` with ``layernorm`` (both the normalisation before the activation), ``dff`` with ``crelu``
      or with an ``activation`` other than ``"relu"``/``"dff"`` (DFF *is* the activation);
    * options out of range (ReDo's fraction, score and window, CBP's utility, ...), naming the flag.

    Args:
      names: mitigation names (keys of ``MITIGATIONS``).
      options: optional ``{name: options dataclass}`` overriding the defaults.
      activation: the network's hidden activation, if known.
      base_weight_decay: the trainer's own weight decay outside the ``l2`` mitigation.
      base_weight_decay_mode: its mode.
    """
    names = list(names)
    unknown = [n for n in names if n not in MITIGATIONS]
    if unknown:
        raise ValueError(f"unknown mitigation(s) {unknown}; allowed: {', '.join(MITIGATIONS)}")
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"mitigation {n!r} is listed twice")
        seen.add(n)
    for n, opt in (options or {}).items():
        if n in MITIGATIONS and not isinstance(opt, type(MITIGATIONS[n].options)):
            raise ValueError(f"options for {n!r} must be {type(MITIGATIONS[n].options).__name__}")

    if "l2" in seen:
        mode = _options("l2", options).mode
        if mode not in ("coupled", "decoupled"):
            raise ValueError(f"'l2': mode must be 'coupled' or 'decoupled', got {mode!r}")
        if base_weight_decay > 0 and base_weight_decay_mode != mode:
            raise ValueError(
                f"'l2' ({mode}) conflicts with the trainer's {base_weight_decay_mode} weight decay "
                f"{base_weight_decay}: coupled L2 and decoupled AdamW decay at once"
            )
    if "l2_init" in seen and _options("l2_init", options).form not in L2_INIT_FORMS:
        raise ValueError(f"'l2_init': form must be one of {', '.join(L2_INIT_FORMS)}, "
                         f"got {_options('l2_init', options).form!r}")
    if "redo" in seen:
        _check_redo(_options("redo", options))
    if "w2_init" in seen and _options("w2_init", options).lam < 0:
        raise ValueError(f"--w2-init.lam must be >= 0, got {_options('w2_init', options).lam}")
    if "mix_reset" in seen and not 0 <= _options("mix_reset", options).fraction <= 1:
        raise ValueError(f"--mix-reset.fraction must be in [0, 1], got {_options('mix_reset', options).fraction}")
    if "parseval" in seen and (_options("parseval", options).lam < 0 or _options("parseval", options).s <= 0):
        raise ValueError("--parseval.lam must be >= 0 and --parseval.s > 0, got "
                         f"{_options('parseval', options).lam}, {_options('parseval', options).s}")
    if "trac" in seen and not (_options("trac", options).s_prev > 0 and _options("trac", options).eps > 0):
        raise ValueError("--trac.s-prev and --trac.eps must be > 0")
    if "groupnorm" in seen and _options("groupnorm", options).groups < 1:
        raise ValueError(f"--groupnorm.groups must be >= 1, got {_options('groupnorm', options).groups}")
    for a, b in (("groupnorm", "layernorm"), ("dff", "crelu")):
        if a in seen and b in seen:
            raise ValueError(f"'{a}' conflicts with '{b}': both set the same part of the network")
    if "dff" in seen and activation not in (None, "relu", "dff"):
        raise ValueError(f"'dff' conflicts with activation={activation!r}: DFF replaces the hidden activation")
    if "sam" in seen and not _options("sam", options).rho > 0:
        raise ValueError(f"--sam.rho must be > 0, got {_options('sam', options).rho}")
    if "cbp" in seen:
        _check_cbp(_options("cbp", options))
    if "reset" in seen and "injection" in seen:
        reset, inj = _options("reset", options), _options("injection", options)
        layers = reset.layers
        touches_head = layers in ("all", "final") or any(
            str(p).endswith("output") or "/output/" in str(p) for p in layers
        )
        if touches_head and reset.at_switch and inj.at_switch:
            raise ValueError(
                f"'reset' (layers={layers!r}) conflicts with 'injection': both act at the task switch and "
                "injection needs the old trained head to freeze (output unchanged), which the reset replaces"
            )
    if "crelu" in seen and activation not in (None, "relu", "crelu"):
        raise ValueError(
            f"'crelu' conflicts with activation={activation!r}: CReLU replaces the hidden activation"
        )
    if "layernorm" in seen and activation == "none":
        raise ValueError(
            "'layernorm' conflicts with activation='none': the No-Act network would become nonlinear"
        )


REDO_SCORES = ("redo", "random", "redo_inverted")
CBP_UTILITIES = ("contribution", "weight", "adaptation", "zero_contribution", "adaptable_contribution",
                 "feature_by_input", "random")


def _check_redo(opts: ReDoOptions) -> None:
    """ReDo's options are in range: tau >= 0; fraction in (0, 1]; a known score; 0 <= start < end."""
    if opts.tau < 0:
        raise ValueError(f"--redo.tau must be >= 0, got {opts.tau}")
    if opts.fraction is None:
        changed = [f"{n}={getattr(opts, n)!r}" for n, d in (("score", "redo"), ("start", 0), ("end", None))
                   if getattr(opts, n) != d]
        if changed:
            raise ValueError(f"--redo: {', '.join(changed)} apply only with a fraction (--redo.fraction F)")
        return
    if not 0 < opts.fraction <= 1:
        raise ValueError(f"--redo.fraction must be in (0, 1], got {opts.fraction}")
    if opts.score not in REDO_SCORES:
        raise ValueError(f"--redo.score must be one of {', '.join(REDO_SCORES)}, got {opts.score!r}")
    if opts.start < 0:
        raise ValueError(f"--redo.start must be >= 0, got {opts.start}")
    if opts.end is not None and opts.end <= opts.start:
        raise ValueError(f"--redo.end must be > start ({opts.start}), got {opts.end}")


def _check_cbp(opts: CBPOptions) -> None:
    """Continual backprop's options are in range."""
    if not 0 <= opts.replacement_rate <= 1:
        raise ValueError(f"--cbp.replacement-rate must be in [0, 1], got {opts.replacement_rate}")
    if opts.maturity_threshold < 0:
        raise ValueError(f"--cbp.maturity-threshold must be >= 0, got {opts.maturity_threshold}")
    if not 0 <= opts.decay < 1:
        raise ValueError(f"--cbp.decay must be in [0, 1), got {opts.decay}")
    if opts.utility not in CBP_UTILITIES:
        raise ValueError(f"--cbp.utility must be one of {', '.join(CBP_UTILITIES)}, got {opts.utility!r}")
