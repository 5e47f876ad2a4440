"""Dormancy vs zero gradient: per variant, both ratios of every layer in one figure."""

from __future__ import annotations

from plastix.report.common import layer_keys, panel_name
from plastix.report.figures import curves_figure
from plastix.report.page import slug
from plastix.report.registry import analysis


@analysis("dormancy_vs_gradient", "per-layer dormancy vs zero-gradient ratios over env steps")
def analysis_dormancy_vs_gradient(sec, frame, keys, run_labels, exp):
    dorm = layer_keys(keys, r"dormant_ratio@0\.025") or layer_keys(keys, r"dormant_ratio@[0-9.e-]+")
    zg = layer_keys(keys, r"zero_grad_ratio(/.+)?")
    if not dorm or not zg:
        sec.note_missing("dormancy vs zero-gradient: needs `*/layer_*/dormant_ratio@tau` and `*/layer_*/zero_grad_ratio/*`")
        return
    layers = sorted({panel_name(k) for ks in (*dorm.values(), *zg.values()) for k in ks})
    series = {**{s: ks for s, ks in dorm.items()}, **zg}
    for run, label in run_labels.items():
        sub = frame[frame.run == run]
        panels = []
        for layer in layers:
            lines = {}
            for stat, ks in series.items():
                for k in ks:
                    if panel_name(k) == layer:
                        lines[stat] = sub[sub.key == k]
            panels.append((layer, lines))
        sec.figure(f"dvg__{slug(label)}", f"{label}: dormancy vs zero-gradient ratios per layer",
                   lambda p, panels=panels, label=label: curves_figure(p, panels, "ratio", title=label,
                                                                             round_ends=sec.round_ends))
