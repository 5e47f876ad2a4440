"""Dormancy: per-layer dormant ratios, dead units, and the final dormancy per layer."""

from __future__ import annotations

import pandas as pd

from plastix.report.common import final_table, layer_keys, layer_stat_figures, panel_name
from plastix.report.registry import analysis


@analysis("dormancy", "per-layer dormancy ratio over env steps, and dead units")
def analysis_dormancy(sec, frame, keys, run_labels, exp):
    layer_stat_figures(sec, frame, keys, run_labels, r"dormant_ratio@[0-9.e-]+", "Dormancy", "dormancy")
    # dead_units: Juliani & Ash's fraction of dead elements (batch x units); dead_units_every_input: the
    # fraction of units dead on every input; active_units: Plasticine's 1 - dead_units.
    layer_stat_figures(sec, frame, keys, run_labels, r"dead_units|dead_units_every_input|active_units",
                        "Dead units (J&A: dead elements of batch x units; every_input: units dead on all inputs)",
                        "dead")
    groups = layer_keys(keys, r"dormant_ratio@0\.025") or layer_keys(keys, r"dormant_ratio@[0-9.e-]+")
    for stat, stat_keys in list(groups.items())[:1]:
        rows = []
        for key in stat_keys:
            for _, r in final_table(frame, key, run_labels).iterrows():
                rows.append(dict(layer=panel_name(key), variant=r.label, iqm=r.iqm, low=r.low, high=r.high))
        if rows:
            sec.table(pd.DataFrame(rows), f"Final {stat} per layer: IQM [95% CI] over seeds")
