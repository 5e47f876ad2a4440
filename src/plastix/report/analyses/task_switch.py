"""The OCP task-switch probe (Eq. 15 regression from trained vs random-init value nets)."""

from __future__ import annotations

import pandas as pd

from plastix.experiments.task_switch import read_task_switch
from plastix.report.figures import iqm_figure, pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import bootstrap_ci, stratified_bootstrap_ci


def _task_switch_finals(ts: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    last = ts[(ts.split == "test") & (ts.step == ts.step.max())]
    finals = pd.DataFrame({
        "run": last.source, "seed": last.seed, "key": [f"task_switch/final_test_loss/lr={lr:g}" for lr in last.lr],
        "value": last.loss,
    })
    return finals, {s: {"source": s} for s in last.source.unique()}


@analysis("task_switch", "Eq. 15 regression from trained vs random-init value nets: loss curves and final test loss",
          read=read_task_switch, finals=_task_switch_finals)
def analysis_task_switch(sec, ts: pd.DataFrame | None, exp):
    if ts is None or ts.empty:
        sec.note_missing("task switch: no results yet (run `plastix run` for this experiment)")
        return
    plt = pyplot()
    sources = sorted(ts.source.unique(), key=lambda s: (s.removeprefix("random-init/"), s))
    # A source keeps its run's colour in the report; its random-init network shares it, dashed.
    base_colors = pick_colors({s.removeprefix("random-init/") for s in sources}, sec.colors)
    colors = {s: base_colors[s.removeprefix("random-init/")] for s in sources}
    for lr in sorted(ts.lr.unique(), reverse=True):
        sub = ts[ts.lr == lr]

        def draw(path, sub=sub, lr=lr):
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            for ax, split in zip(axes, ("train", "test")):
                for src in sources:
                    g = sub[(sub.split == split) & (sub.source == src)]
                    if g.empty:
                        continue
                    wide = g.pivot_table(index="seed", columns="step", values="loss")
                    mean, lo, hi = bootstrap_ci(wide.to_numpy())
                    x = wide.columns.to_numpy()
                    linestyle = "--" if src.startswith("random-init") else "-"
                    ax.plot(x, mean, color=colors[src], label=src, linestyle=linestyle)
                    ax.fill_between(x, lo, hi, color=colors[src], alpha=0.2, lw=0)
                ax.set_yscale("log")
                ax.set_title(f"{split} loss, lr {lr:g}")
                ax.set_xlabel("Adam steps")
                ax.set_ylabel("MSE")
            axes[0].legend(frameon=False, fontsize=8)
            save_figure(fig, path)

        sec.figure(f"task_switch__lr{lr:g}", f"Eq. 15 regression from each source network, lr {lr:g} (mean, 95% band)",
                   draw)
        last = sub[(sub.split == "test") & (sub.step == sub.step.max())]
        rows = []
        for src, g in last.groupby("source"):
            point, lo, hi = stratified_bootstrap_ci(g.loss.to_numpy())
            rows.append(dict(label=src, iqm=point, low=lo, high=hi, seeds=len(g)))
        table = pd.DataFrame(rows)
        sec.figure(f"task_switch_final__lr{lr:g}", f"Final test loss, lr {lr:g}: IQM with 95% stratified-bootstrap CI",
                   lambda p, table=table: iqm_figure(p, table, "final test MSE (IQM)", colors=colors))
        sec.table(table, f"Final test loss per source network, lr {lr:g}")
