"""From ``plastix train`` options to an optimizer chain and a surgery: the trainer's single entry point.

``--mitigations redo,l2_init,layernorm`` names the active mitigations; each one's options are the
``TrainConfig`` field of the same name (``--redo.tau 0.1 --redo.every 1000``). ``build_optimizer`` and
``build_surgery`` turn them into the objects of ``plastix.mitigations`` (see its module docstring for
where each acts). Surgeries are called once per gradient step (minibatch), so ``every`` counts gradient
steps, the unit of ReDo (Sokar et al.: every 1000 gradient steps) and continual backprop (every step).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from plastix.mitigations import (
    MITIGATIONS,
    SURGERY,
    adam_reset,
    chain_surgeries,
    check_compatible,
    continual_backprop,
    injection_freeze,
    ocp_perturb,
    plasticity_injection,
    redo,
    reset_layers,
    scheduled,
    shrink_perturb,
)
from plastix.mitigations.juliani_ash import mix_reset, w2_init
from plastix.mitigations.plasticine import normalize_and_project, parseval, trac
from plastix.mitigations.optimizer_state import reset_adam_states
from plastix.suggest import did_you_mean
from plastix.mitigations.surgery import Surgery, stateless_init
from plastix.mitigations.transforms import (
    BOUND_METHODS,
    SoftShrinkPerturbState,
    init_bounds,
    l2_init,
    make_optimizer,
    soft_shrink_perturb,
    weight_clipping,
)

NETWORK_OPTIONS = ("layernorm", "crelu", "groupnorm", "dff")
ONCE_PER_UPDATE = ("nap",)  # surgeries whose every=None means once per PPO update (not never)


def parse_mitigations(text: str) -> tuple[str, ...]:
    """``"redo, l2_init"`` -> ``("redo", "l2_init")``; unknown names raise ``ValueError`` naming the flag."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    unknown = [n for n in names if n not in MITIGATIONS]
    if unknown:
        raise ValueError(f"--mitigations: unknown mitigation {unknown[0]!r}; {did_you_mean(unknown[0], MITIGATIONS)}"
                         f"allowed: {', '.join(MITIGATIONS)}")
    return names


def options_of(cfg: Any) -> dict[str, Any]:
    """``{name: options dataclass}`` for every mitigation that has options (fields of ``cfg``)."""
    return {name: getattr(cfg, name) for name in MITIGATIONS if hasattr(cfg, name)}


def cleanrl_cnn(cfg: Any) -> bool:
    """Whether ``plastix train`` gives ``cfg`` CleanRL's CNN actor-critic (``--network cleanrl`` on Procgen,
    Atari or the image gridworld)."""
    from plastix.envs import shifts

    if getattr(cfg, "network", "cleanrl") != "cleanrl":
        return False
    try:
        family = shifts.env_family(cfg.env_id)
    except ValueError:  # an unknown env id is reported by the env check, with its own message
        return False
    image_grid = family == "gridworld" and getattr(cfg, "grid_obs", "") == "image"
    return family in ("procgen", "atari") or image_grid


def check(cfg: Any, image: bool | None = None) -> tuple[str, ...]:
    """Parse and check ``cfg.mitigations`` against each other and the network; raise ``ValueError``.

    ``image``: the network is CleanRL's CNN actor-critic (None: decided from ``cfg``, ``cleanrl_cnn``).
    """
    names = parse_mitigations(cfg.mitigations)
    image = cleanrl_cnn(cfg) if image is None else image
    try:
        check_compatible(names, options_of(cfg), activation=cfg.activation,
                         base_weight_decay=cfg.weight_decay)
    except ValueError as err:
        raise ValueError(f"--mitigations: {err}") from None
    if "weight_clip" in names and cfg.weight_clip.bound_method not in BOUND_METHODS:
        raise ValueError(f"--weight-clip.bound-method: unknown method {cfg.weight_clip.bound_method!r}; "
                         f"allowed: {', '.join(BOUND_METHODS)}")
    if image:
        _check_cnn(cfg, names)
    if "groupnorm" in names:
        _check_groups(cfg, image)
    for name in names:
        _check_fires(cfg, name)
    return names


def _check_fires(cfg: Any, name: str) -> None:
    """A scheduled surgery that would never fire is refused (``ValueError``): without ``every`` it fires only
    at task switches, so it needs ``at_switch`` and a run with switches (``--rounds`` > 1)."""
    flag = "--" + name.replace("_", "-")
    opts = getattr(cfg, name, None)
    if MITIGATIONS[name].kind != SURGERY or opts is None or not hasattr(opts, "every"):
        return
    if opts.every is not None and opts.every < 1:
        raise ValueError(f"{flag}.every: must be >= 1 gradient steps, got {opts.every}")
    if opts.every is not None or name in ONCE_PER_UPDATE:
        return
    if not getattr(opts, "at_switch", False):
        raise ValueError(f"{flag}.every: {name} would never fire; give {flag}.every N or {flag}.at-switch")
    if getattr(cfg, "rounds", 1) < 2:
        raise ValueError(f"--mitigations {name}: would never fire: it acts at task switches ({flag}.at-switch) "
                         f"and a run of --rounds 1 has none; give --rounds N (with a --shift) or {flag}.every N")


def layer_names(params: Any) -> list[str]:
    """The layers of a parameter tree as ``reset.layers`` names them: every module path above a parameter
    (``"policy"``, ``"policy/layer_1"``, ``"log_std"``, ...), in tree order."""
    names: dict[str, None] = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        for depth in range(1, max(len(parts) - 1, 1) + 1):
            names["/".join(parts[:depth])] = None
    return list(names)


def check_layer_names(cfg: Any, names: tuple[str, ...], params: Any) -> None:
    """Every layer an option names exists in ``params`` (e.g. ``jax.eval_shape`` of the network's init);
    else ``ValueError`` naming the option, the closest layer name and the layers there are. Options that name
    layers: ``--reset.layers`` (``final``, ``all`` or path prefixes, ``reset.reset_prefixes``)."""
    if "reset" not in names or cfg.reset.layers in ("final", "all"):
        return
    wanted = (cfg.reset.layers,) if isinstance(cfg.reset.layers, str) else tuple(cfg.reset.layers)
    known = layer_names(params)
    leaves = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
              for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    for name in wanted:
        if name in known or name in leaves:
            continue
        hint = did_you_mean(name, ["final", "all", *known])
        raise ValueError(f"--reset.layers: no layer {name!r} in this network; {hint}allowed: final, all, or "
                         f"layers {', '.join(known)}")


def _check_cnn(cfg: Any, names: tuple[str, ...]) -> None:
    """What the CNN actor-critic cannot do: injection's two-layer head (``--injection.head-layers 2``) re-runs
    the torso's final Dense with a plain ReLU and no LayerNorm, so it would not be the torso's layer under
    ``crelu``, ``layernorm``, ``--layer-norm`` or an ``--activation`` other than relu."""
    if "injection" not in names or cfg.injection.head_layers != 2:
        return
    changed = [n for n in NETWORK_OPTIONS if n in names]
    if cfg.layer_norm and "layernorm" not in names:
        changed.append("--layer-norm")
    if cfg.activation not in ("relu", "crelu" if "crelu" in names else "dff" if "dff" in names else "relu"):
        changed.append(f"--activation {cfg.activation}")
    if changed:
        raise ValueError(
            f"--mitigations: 'injection' with --injection.head-layers 2 conflicts with {', '.join(changed)} "
            "on the CNN actor-critic: the injected head re-runs the torso's final dense layer with a plain ReLU "
            "and no LayerNorm; use --injection.head-layers 1 (the output layers only)"
        )


def _check_groups(cfg: Any, image: bool) -> None:
    """``--groupnorm.groups`` divides every hidden width (and, on the CNNs, 16: every channel count plastix's
    torsos use is a multiple of 16), and ``groupnorm`` is not also ``--layer-norm``."""
    groups = cfg.groupnorm.groups
    if cfg.layer_norm:
        raise ValueError("--mitigations: 'groupnorm' conflicts with --layer-norm: both normalise before the activation")
    widths = (16,) if image else ()
    widths += tuple(cfg.hidden_sizes) if (not image or cfg.network == "juliani-ash") else ()
    bad = [w for w in widths if w % groups]
    if bad:
        raise ValueError(f"--groupnorm.groups: {groups} does not divide the layer widths {bad} (hidden sizes "
                         f"{tuple(cfg.hidden_sizes)}{'; CNN channels are multiples of 16' if image else ''})")


def build_optimizer(cfg: Any, names: tuple[str, ...], init_fn: Callable, learning_rate) -> optax.GradientTransformation:
    """Adam chain of ``cfg`` with the per-update mitigations among ``names`` ([l2_init before the clip] ->
    clip -> L2 -> l2_init -> Adam(``--adam-b1``, ``--adam-b2``, ``--adam-eps``) -> lr -> soft S&P -> weight
    clipping -> injection freeze). Every optimizer of the agent comes from here (the trainer rebuilds it
    each update, and at a switch with ``--rebuild-optimizer-at-switch``). With ``cbp`` and ``--cbp.adam-gnt``
    Adam keeps a step count per parameter element (``scale_by_adam_gnt``)."""
    weight_decay, mode = cfg.weight_decay, "coupled"
    if "l2" in names:  # added to the trainer's own coupled decay (same mode enforced by check_compatible)
        weight_decay, mode = cfg.weight_decay + cfg.l2.weight_decay, cfg.l2.mode
    loss_transforms, gradient_transforms = [], []
    if "l2_init" in names:
        penalty = l2_init(cfg.l2_init.lam, cfg.l2_init.form)
        (loss_transforms if cfg.l2_init.before_clip else gradient_transforms).append(penalty)
    if "w2_init" in names:
        (loss_transforms if cfg.w2_init.before_clip else gradient_transforms).append(w2_init(cfg.w2_init.lam))
    if "parseval" in names:  # Plasticine adds it to the loss: before the clip
        loss_transforms.append(parseval(cfg.parseval.lam, cfg.parseval.s))
    parameter_transforms = []
    if "soft_sp" in names:
        parameter_transforms.append(soft_shrink_perturb(init_fn, 0, cfg.soft_sp.lam, cfg.soft_sp.sigma))
    if "weight_clip" in names:
        bounds = init_bounds(init_fn(jax.random.PRNGKey(0)), cfg.weight_clip.bound_method)
        parameter_transforms.append(weight_clipping(cfg.weight_clip.kappa, bounds))
    final_transforms = []
    if "injection" in names:
        final_transforms.append(injection_freeze(cfg.injection.head_layers, cfg.injection.freeze_head))
    return make_optimizer(
        learning_rate,
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=weight_decay,
        weight_decay_mode=mode,
        loss_transforms=loss_transforms,
        gradient_transforms=gradient_transforms,
        parameter_transforms=parameter_transforms,
        final_transforms=final_transforms,
        per_element_count="cbp" in names and cfg.cbp.adam_gnt,
        wrap_base=(lambda base: trac(base, s_prev=cfg.trac.s_prev, eps=cfg.trac.eps)) if "trac" in names else None,
    )


def seed_optimizer_state(opt_state: Any, key: jax.Array) -> Any:
    """Give the soft shrink & perturb state of one seed its own key (the chain is built once for all seeds)."""
    return jax.tree.map(
        lambda node: SoftShrinkPerturbState(key=key) if isinstance(node, SoftShrinkPerturbState) else node,
        opt_state,
        is_leaf=lambda node: isinstance(node, SoftShrinkPerturbState),
    )


def optimizer_rebuild() -> Surgery:
    """A new optimizer, as Juliani & Ash's ``model.adapt()`` builds at every shift: every Adam node's ``mu``,
    ``nu`` and step count zeroed (``reset_adam_states``). The rest of the optimizer state (the L2-init
    anchor ``theta_0``, the injection flag, soft S&P's key) is kept, as their ``init_model`` is. Metrics: none
    of its own (``scheduled`` logs ``mitigation/optimizer_rebuild/applied``)."""

    def apply(params, opt_state, state, batch_info, key):
        return params, reset_adam_states(opt_state, reset_count=True), state, {}

    return Surgery(stateless_init, apply)


def build_surgery(cfg: Any, names: tuple[str, ...], init_fn: Callable):
    """One chained ``Surgery`` of the scheduled surgeries among ``names`` (and, with
    ``cfg.rebuild_optimizer_at_switch``, a full Adam reset at every switch, last), or None when there are none."""
    parts = []

    def add(name, surgery):
        opts = getattr(cfg, name)
        parts.append(scheduled(surgery, every=opts.every, at_switch=opts.at_switch, name=name))

    if "redo" in names:
        opts = cfg.redo
        add("redo", redo(init_fn, opts.tau, opts.fraction, opts.score, opts.start, opts.end))
    if "reset" in names:
        add("reset", reset_layers(init_fn, cfg.reset.layers))
    if "nap" in names:  # Plasticine: after each rollout, i.e. once per update unless --nap.every
        every = cfg.nap.every or cfg.update_epochs * cfg.num_minibatches
        parts.append(scheduled(normalize_and_project(), every=every, at_switch=cfg.nap.at_switch, name="nap"))
    if "mix_reset" in names:
        add("mix_reset", mix_reset(init_fn, cfg.mix_reset.fraction))
    if "shrink_perturb" in names:
        add("shrink_perturb", shrink_perturb(init_fn, cfg.shrink_perturb.lam, cfg.shrink_perturb.sigma))
    if "adam_reset" in names:
        add("adam_reset", adam_reset(cfg.adam_reset.reset_count))
    if "ocp_perturb" in names:
        opts = cfg.ocp_perturb
        add("ocp_perturb", ocp_perturb(init_fn, opts.threshold, opts.relative, opts.noise_scale))
    if "injection" in names:
        inj = cfg.injection
        parts.append(scheduled(plasticity_injection(init_fn, inj.head_layers), at_switch=inj.at_switch,
                               every=inj.every, name="injection"))
    if "cbp" in names:  # every gradient step, by definition
        opts = cfg.cbp
        parts.append(continual_backprop(init_fn, opts.replacement_rate, opts.maturity_threshold, opts.decay,
                                        reset_adam_counts=opts.adam_gnt, utility_type=opts.utility))
    if getattr(cfg, "rebuild_optimizer_at_switch", False):  # last: a new optimizer after the other surgeries
        parts.append(scheduled(optimizer_rebuild(), at_switch=True, name="optimizer_rebuild"))
    return chain_surgeries(*parts) if parts else None
