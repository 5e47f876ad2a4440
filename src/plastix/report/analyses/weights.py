"""Weights: per-layer weight statistics and the whole network's (J&A's weight_m, weight_diff)."""

from __future__ import annotations

from plastix.report.common import layer_stat_figures, variant_lines
from plastix.report.figures import curves_figure
from plastix.report.registry import analysis


MODEL_WEIGHT_KEYS = ("model/weight_m", "model/weight_diff", "model/dist_init_rms")


@analysis("weights", "per-layer weight statistics (L2, RMS, mean |w|, std, max |w|, distance from init)")
def analysis_weights(sec, frame, keys, run_labels, exp):
    layer_stat_figures(sec, frame, keys, run_labels, r"weight/.+", "Weights", "weights")
    present = [k for k in MODEL_WEIGHT_KEYS if k in keys]
    if not present:
        sec.note_missing(f"whole-network weights: no `{'`, `'.join(MODEL_WEIGHT_KEYS)}` rows")
        return
    panels = [(k, variant_lines(frame, k, run_labels)) for k in present]
    sec.figure("weights__model", "Whole network (J&A's weight_m: RMS of all parameters; weight_diff: RMS change "
               "over one update; dist_init_rms: RMS distance from init), mean over seeds, 95% bootstrap band",
               lambda p: curves_figure(p, panels, "RMS", ncols=3, colors=sec.colors,
                                             round_ends=sec.round_ends))
