"""Overlap coefficients of the dormant and zero-gradient sets, per layer."""

from __future__ import annotations

from plastix.report.common import layer_stat_figures
from plastix.report.registry import analysis


@analysis("overlap", "per-layer overlap coefficients (dormant, zero-grad, dormant vs zero-grad sets)")
def analysis_overlap(sec, frame, keys, run_labels, exp):
    layer_stat_figures(sec, frame, keys, run_labels, r"overlap/.+", "Overlap coefficient", "overlap")
