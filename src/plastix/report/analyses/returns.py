"""Episodic return: curves over env steps and the IQM of the final return per variant."""

from __future__ import annotations

from plastix.report.common import final_table, variant_lines
from plastix.report.figures import curves_figure, iqm_figure
from plastix.report.registry import analysis


@analysis("return", "episodic return over env steps (bootstrap 95% bands) and IQM of final return")
def analysis_return(sec, frame, keys, run_labels, exp):
    if "return/episodic" not in keys:
        sec.note_missing("return: no `return/episodic` rows (no episode finished?)")
        return
    sec.figure("return", "Episodic return (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, [("return/episodic", variant_lines(frame, "return/episodic", run_labels))],
                                       "return", ncols=1, colors=sec.colors, round_ends=sec.round_ends))
    table = final_table(frame, "return/episodic", run_labels)
    if not table.empty:
        sec.figure("return_iqm", "IQM of final return (last 10% of episodes) with 95% stratified-bootstrap CI",
                   lambda p: iqm_figure(p, table, "final return (IQM)", colors=sec.colors))
        sec.table(table, "Final return per variant: IQM [95% CI] over seeds")
