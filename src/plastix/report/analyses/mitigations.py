"""What the mitigations touched (`mitigation/*` counts)."""

from __future__ import annotations

from plastix.report.common import variant_lines
from plastix.report.figures import curves_figure
from plastix.report.registry import analysis


@analysis("mitigations", "what the mitigations touched over env steps (`mitigation/*` keys)")
def analysis_mitigations(sec, frame, keys, run_labels, exp):
    mit_keys = [k for k in sorted(keys) if k.startswith("mitigation/")]
    if not mit_keys:
        sec.note_missing("mitigations: no `mitigation/*` rows (no surgery fired, or none is active)")
        return
    panels = [(k.removeprefix("mitigation/"), variant_lines(frame, k, run_labels)) for k in mit_keys]
    sec.figure("mitigations", "What the mitigations touched (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, panels, "count", colors=sec.colors,
                                             round_ends=sec.round_ends))
