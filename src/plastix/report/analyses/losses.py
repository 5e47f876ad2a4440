"""PPO losses and optimiser statistics (`loss/*`, `optim/*`)."""

from __future__ import annotations

from plastix.report.common import variant_lines
from plastix.report.figures import curves_figure
from plastix.report.registry import analysis


@analysis("losses", "PPO losses and optimiser statistics")
def analysis_losses(sec, frame, keys, run_labels, exp):
    loss_keys = [k for k in sorted(keys) if k.startswith(("loss/", "optim/"))]
    if not loss_keys:
        sec.note_missing("losses: no `loss/*` or `optim/*` rows")
        return
    panels = [(k, variant_lines(frame, k, run_labels)) for k in loss_keys]
    sec.figure("losses", "PPO losses and optimiser statistics (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, panels, colors=sec.colors, round_ends=sec.round_ends))
