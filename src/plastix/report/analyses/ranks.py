"""Feature ranks per layer (srank, effective, numerical rank)."""

from __future__ import annotations

from plastix.report.common import layer_stat_figures
from plastix.report.registry import analysis


@analysis("ranks", "per-layer feature ranks (srank, effective rank)")
def analysis_ranks(sec, frame, keys, run_labels, exp):
    layer_stat_figures(sec, frame, keys, run_labels, r".*(srank|effective_rank|numerical_rank|rank).*", "Rank", "ranks")
