"""Plasticity diagnostics as pure JAX functions (SCIENCE.md section 2).

- ``neurons``: dormancy index, MAGI zero-gradient index (``layer`` and ``loss`` targets), overlap, dead units
  (Juliani & Ash's element-wise fraction, the per-unit every-input fraction, Plasticine's active units).
- ``rank``: srank, effective rank, numerical rank of feature or weight matrices.
- ``weights``: per-layer kernel statistics as a flat ``{"<net>/<layer>/weight/<stat>": scalar}`` dict.
- ``curvature``: largest and smallest Hessian eigenvalues (Lanczos), Hessian trace, gradient interference.

Plasticity probes (Eq. 15 regression, random-target fitting) live in ``plastix.probes``.
"""

from plastix.diagnostics.curvature import (
    cosine_matrix,
    gradient_cosine_matrix,
    hessian_eigenvalue_range,
    hessian_min_eigenvalue,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
)
from plastix.diagnostics.features import (
    feature_norm,
    feature_variance,
    gradient_cosines,
    inactive_units,
    unit_activity,
    weight_rank_stats,
)
from plastix.diagnostics.neurons import (
    active_units,
    dead_elements,
    dead_units,
    dead_units_every_input,
    dead_units_every_input_mask,
    dormancy_scores,
    dormant_mask,
    dormant_ratio,
    dormant_ratio_from_scores,
    magi_from_grads,
    magi_scores,
    magi_scores_preactivation,
    overlap,
    relative_zero_grad_mask,
    relative_zero_grad_ratio,
    zero_grad_mask,
    zero_grad_ratio,
)
from plastix.diagnostics.rank import (
    effective_rank,
    numerical_rank,
    rank_stats,
    singular_values,
    srank,
)
from plastix.diagnostics.weights import kernel_stats, kernels, params_rms, params_rms_distance, weight_stats

__all__ = [
    "weight_rank_stats",
    "unit_activity",
    "inactive_units",
    "gradient_cosines",
    "feature_variance",
    "feature_norm",
    "cosine_matrix",
    "active_units",
    "dead_elements",
    "dead_units",
    "dead_units_every_input",
    "dead_units_every_input_mask",
    "dormancy_scores",
    "dormant_mask",
    "dormant_ratio",
    "dormant_ratio_from_scores",
    "effective_rank",
    "gradient_cosine_matrix",
    "hessian_eigenvalue_range",
    "hessian_min_eigenvalue",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "kernel_stats",
    "kernels",
    "magi_from_grads",
    "magi_scores",
    "magi_scores_preactivation",
    "numerical_rank",
    "overlap",
    "params_rms",
    "params_rms_distance",
    "rank_stats",
    "relative_zero_grad_mask",
    "relative_zero_grad_ratio",
    "singular_values",
    "srank",
    "weight_stats",
    "zero_grad_mask",
    "zero_grad_ratio",
]
