"""Mitigations of plasticity loss (SCIENCE.md section 3), as pure, jit- and vmap-compatible functions.

Three kinds (``MITIGATIONS[name].kind``):

**Transforms** (every update): optax ``GradientTransformation`` s, composed by ``make_optimizer``::

    tx = make_optimizer(
        lr_schedule, max_grad_norm=0.5,
        weight_decay=1e-4, weight_decay_mode="coupled",        # "l2" ("decoupled" = AdamW)
        gradient_transforms=[l2_init(0.01)],                   # "l2_init": + 2 lam (theta - theta_0)
        parameter_transforms=[soft_shrink_perturb(init_fn, key),               # "soft_sp"
                              weight_clipping(2.0, init_bounds(params))],      # "weight_clip", last
        final_transforms=[injection_freeze()],                 # only with "injection"
    )

``init_fn`` is ``key -> params``, the network's parameter collection (``model.init(key, obs)["params"]``);
every mitigation that needs "a fresh random initialisation" calls it with a new key, so fresh weights come
from exactly the network's own init (CleanRL's orthogonal init with each layer's gain).

**Surgeries** (on a schedule): rewrite params *and* optimizer state, through one small interface
(``Surgery(init, apply)``)::

    surgery = chain_surgeries(
        scheduled(redo(init_fn, tau=0.1), every=1000, name="redo"),                      # "redo"
        scheduled(reset_layers(init_fn, "final"), at_switch=True, name="reset"),         # "reset"
        scheduled(shrink_perturb(init_fn, 0.5, 0.5), at_switch=True, name="shrink_perturb"),
        continual_backprop(init_fn, replacement_rate=1e-4, maturity_threshold=10_000),    # "cbp", every update
        scheduled(adam_reset(), at_switch=True, name="adam_reset"),                      # "adam_reset"
        scheduled(plasticity_injection(init_fn), at_switch=True, name="injection"),       # "injection"
        scheduled(ocp_perturb(init_fn, threshold=0.0), at_switch=True, name="ocp_perturb"),
    )
    surgery_state = surgery.init(params, key)                  # carry it in the train state

More transforms: ``w2_init`` (Juliani & Ash's Wasserstein regulariser) and ``parseval`` (Plasticine's
Parseval penalty) are loss terms before the clip; ``trac`` wraps the base optimizer after the clip
(``make_optimizer(wrap_base=...)``); ``sam`` changes the gradient itself (``sam.sam_gradient``, in the
trainer). More surgeries: ``mix_reset`` (J&A's mix reset), ``nap`` (Normalize-and-Project's projection).

**Network options**: ``"layernorm"`` -> ``ActorCritic(layer_norm=True)``, ``"crelu"`` ->
``ActorCritic(activation="crelu")``, ``"groupnorm"`` -> ``norm_groups=G``, ``"dff"`` -> ``activation="dff"``
(plastix.nets); on the CNN actor-critic both act at every activation
point of the torso (``plastix.nets.activation_point``).

**Image networks.** The unit surgeries (ReDo, continual backprop, the OCP perturbation) treat a conv channel
as a neuron: its incoming weights are its filter, its outgoing weights the next conv's input-channel slice
or the rows of the flattened dense layer it feeds; ``reset --reset.layers final`` resets the CNN's two
heads. Which layers are hidden layers, and what they feed, is found from parameter names
(``plastix.mitigations._layers``: MLPs, chain torsos such as the Nature CNN, the IMPALA residual torso,
whose residual-stream ReLUs are not units).

Where the trainer applies them (one place each, in this order, inside the update step)::

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)   # all transforms
    params = optax.apply_updates(params, updates)
    _, inter = model.apply({"params": params}, obs, mutable=["intermediates"])  # the minibatch's obs
    info = BatchInfo(activations=nets.hidden_activations(inter["intermediates"]),
                     magi=magi_scores,                          # only for ocp_perturb
                     task_switch=is_first_update_after_switch)  # scalar bool
    params, opt_state, surgery_state, metrics = surgery.apply(params, opt_state, surgery_state, info, key)

Each ``scheduled`` surgery counts its own ``apply`` calls, so ``every=N`` means "every N calls": call the
surgery once per gradient update (ReDo's and CBP's unit) or once per PPO iteration, consistently. The
activations may be those of the loss's forward pass (before the step, as in Sokar's and Dohare's code).

What surgeries do to the optimizer state (every ``optax.ScaleByAdamState`` in it, wherever in the chain;
``optimizer_state.scale_adam_moments`` / ``reset_adam_states``):

* ``redo``, ``continual_backprop``: zero ``mu`` and ``nu`` of the rewritten incoming (kernel column, bias,
  LayerNorm) and outgoing (next kernel rows) entries; keep ``count``, except that ``continual_backprop``
  resets the per-element counts of ``scale_by_adam_gnt`` (Dohare et al.'s AdamGnT, which ``plastix train``
  uses under ``cbp`` unless ``--cbp.no-adam-gnt``) of those entries.
* ``reset_layers``: zero ``mu`` and ``nu`` of the re-initialised parameters; keep ``count``.
* ``adam_reset``: zero ``mu``, ``nu`` and ``count`` of everything.
* ``plasticity_injection``: zero ``mu``/``nu`` of the heads (``f``, ``a``, ``b``), set the ``active`` flag of
  ``injection_freeze``.
* ``shrink_perturb``, ``ocp_perturb``: leave it untouched.

Plasticity injection needs three more things from the trainer (``plastix.mitigations.injection``):
``params = add_injection_heads(params)`` before ``tx.init``, ``injection_freeze()`` last in the chain, and
the forward ``make_injected_apply(model)(params, obs, injection_active(opt_state))`` instead of
``model.apply``.

``params`` everywhere is the parameter collection (``variables["params"]``), laid out as in ``plastix.nets``
(MLPs found by their ``layer_i``/``output`` keys, so ``ActorCritic`` and a bare ``MLP`` both work).
ReDo's "outputs unchanged" is exact only when the recycled units' activations are exactly 0 on the batch
(``tau = 0`` or dead ReLUs) and without LayerNorm; with ``tau > 0`` the near-dormant units' small
contribution is removed.

``check_compatible(names, options, activation=...)`` rejects contradictory sets (``registry``).
"""

from plastix.mitigations._layers import INJECTION_KEY, dormancy_scores
from plastix.mitigations.cbp import CBPLayerState, continual_backprop
from plastix.mitigations.injection import (
    InjectionFreezeState,
    add_injection_heads,
    injection_active,
    injection_freeze,
    make_injected_apply,
    plasticity_injection,
    trainable_mask,
    with_injection_heads,
)
from plastix.mitigations.juliani_ash import mix_reset, w2_init
from plastix.mitigations.ocp import hidden_layer_magi, ocp_perturb
from plastix.mitigations.plasticine import normalize_and_project, parseval, trac
from plastix.mitigations.sam import sam_gradient
from plastix.mitigations.optimizer_state import (
    ScaleByAdamGnTState,
    adam_states,
    map_adam_states,
    reset_adam_states,
    scale_adam_moments,
    scale_by_adam_gnt,
)
from plastix.mitigations.redo import redo
from plastix.mitigations.registry import (
    MITIGATIONS,
    NETWORK,
    SURGERY,
    TRANSFORM,
    MitigationSpec,
    check_compatible,
)
from plastix.mitigations.reset import adam_reset, reset_layers, shrink_perturb
from plastix.mitigations.surgery import (
    BatchInfo,
    EmptyState,
    ScheduledState,
    Surgery,
    chain_surgeries,
    scheduled,
)
from plastix.mitigations.transforms import (
    L2InitState,
    SoftShrinkPerturbState,
    WeightClippingState,
    decoupled_weight_decay,
    init_bounds,
    l2,
    l2_init,
    make_optimizer,
    soft_shrink_perturb,
    weight_clipping,
)

__all__ = [
    "sam_gradient",
    "trac",
    "parseval",
    "normalize_and_project",
    "w2_init",
    "mix_reset",
    "INJECTION_KEY",
    "MITIGATIONS",
    "NETWORK",
    "SURGERY",
    "TRANSFORM",
    "BatchInfo",
    "CBPLayerState",
    "EmptyState",
    "InjectionFreezeState",
    "L2InitState",
    "MitigationSpec",
    "ScaleByAdamGnTState",
    "ScheduledState",
    "SoftShrinkPerturbState",
    "Surgery",
    "WeightClippingState",
    "adam_reset",
    "adam_states",
    "add_injection_heads",
    "chain_surgeries",
    "check_compatible",
    "continual_backprop",
    "decoupled_weight_decay",
    "dormancy_scores",
    "hidden_layer_magi",
    "init_bounds",
    "injection_active",
    "injection_freeze",
    "l2",
    "l2_init",
    "make_injected_apply",
    "make_optimizer",
    "map_adam_states",
    "ocp_perturb",
    "plasticity_injection",
    "redo",
    "reset_adam_states",
    "reset_layers",
    "scale_adam_moments",
    "scale_by_adam_gnt",
    "scheduled",
    "shrink_perturb",
    "soft_shrink_perturb",
    "trainable_mask",
    "weight_clipping",
    "with_injection_heads",
]
