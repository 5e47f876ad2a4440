"""Curvature and the plasticity probe per round (Lyle et al. 2023; ``lyle-curvature``).

Measurements of the PPO loss's top Hessian eigenvalue and trace (``curvature/*``, ``--curvature-every``) and of
the plasticity probe (``probe/<head>/final_loss``, ``--probe-every``) are assigned to the round they fall in
(the trainer writes ``round/index`` at each round's last update) and averaged per run, seed and round. The
figure draws them per round; the verdict is Spearman's rho of the top eigenvalue with the probe loss (mean of
the heads) over the (run, seed, round) points of each scenario (the ``arm``; curvatures of different envs and
networks are not comparable, so scenarios are never pooled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.analyses.rounds import ROUND_INDEX, rounds_figure
from plastix.report.figures import pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import SIGNIFICANCE, stratified_bootstrap_ci

TOP_EIG = "curvature/hessian_top_eig"
TRACE = "curvature/hessian_trace"
PROBE = "probe/mean_final_loss"  # the mean of probe/<head>/final_loss over the heads (made here)
PANEL_KEYS = (TOP_EIG, TRACE, "probe/policy/final_loss", "probe/value/final_loss")


def assign_rounds(frame: pd.DataFrame) -> pd.Series:
    """The round (0-based) of every row: the first round whose last update (a ``round/index`` row of the same run
    and seed) is at or after the row's update; 0 for a run without round rows."""
    ends = frame[frame.key == ROUND_INDEX]
    out = pd.Series(0, index=frame.index, dtype=np.int64)
    for (run, seed), e in ends.groupby(["run", "seed"]):
        e = e.sort_values("update")
        rows = frame[(frame.run == run) & (frame.seed == seed)]
        pos = np.searchsorted(e["update"].to_numpy(), rows["update"].to_numpy(), side="left")
        rounds = e.value.to_numpy().astype(np.int64)
        out.loc[rows.index] = rounds[np.minimum(pos, len(rounds) - 1)]
    return out


def per_round(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ``run, seed, round, key, value``: the mean per round of the curvature and probe keys, with
    ``probe/mean_final_loss`` the mean over the heads' final probe losses."""
    wanted = frame[frame.key.isin([*PANEL_KEYS, ROUND_INDEX])]
    rows = wanted.assign(round=assign_rounds(wanted))
    rows = rows[rows.key != ROUND_INDEX]
    heads = rows[rows.key.str.match(r"^probe/[^/]+/final_loss$")]
    mean_probe = heads.groupby(["run", "seed", "update", "round"]).value.mean().reset_index().assign(key=PROBE)
    rows = pd.concat([rows[["run", "seed", "update", "round", "key", "value"]], mean_probe], ignore_index=True)
    return rows.groupby(["run", "seed", "round", "key"]).value.mean().reset_index()


def correlation_points(rounds: pd.DataFrame, curvature: str = TOP_EIG) -> pd.DataFrame:
    """Rows ``run, seed, round, curvature, probe`` with both measured."""
    wide = rounds.pivot_table(index=["run", "seed", "round"], columns="key", values="value")
    if curvature not in wide or PROBE not in wide:
        return pd.DataFrame(columns=["run", "seed", "round", "curvature", "probe"])
    wide = wide[[curvature, PROBE]].dropna().rename(columns={curvature: "curvature", PROBE: "probe"})
    return wide.reset_index()


def spearman_verdict(points: pd.DataFrame) -> str:
    """``yes`` when |rho| has p < 0.05 (a monotone link, either sign), else ``inconclusive``."""
    from scipy import stats

    if len(points) < 3 or points.curvature.nunique() < 2 or points.probe.nunique() < 2:
        return f"not measured: {len(points)} (run, seed, round) points with curvature and probe loss; it needs 3"
    rho, p = stats.spearmanr(points.curvature, points.probe)
    word = "yes" if p < SIGNIFICANCE else "inconclusive"
    return f"{word}, Spearman rho = {rho:+.2f} (p = {p:.2g}, n = {len(points)} run x seed x round points)"


def scenario_of(exp: dict) -> dict[str, str]:
    """``{run: scenario}``: the variant's ``arm`` (one scenario when the experiment has no arms)."""
    return {v["name"]: str(v.get("values", {}).get("arm", "all")) for v in exp.get("variants", [])}


def round_table(rounds: pd.DataFrame, run_labels: dict[str, str]) -> pd.DataFrame:
    """Per run and round: IQM [95% CI] over seeds of each key."""
    rows = []
    for (run, rnd), g in rounds.groupby(["run", "round"], sort=True):
        if run not in run_labels:
            continue
        row = {"run": run_labels[run], "round": rnd}
        for key in (TOP_EIG, TRACE, PROBE):
            values = g[g.key == key].value.dropna().to_numpy()
            if len(values):
                point, lo, hi = stratified_bootstrap_ci(values)
                row[key] = f"{point:.4g} [{lo:.4g}, {hi:.4g}]"
        rows.append(row)
    return pd.DataFrame(rows)


def scatter_figure(path: Path, points: pd.DataFrame, run_labels: dict[str, str], scenarios: dict[str, str],
                   colors: dict[str, str] | None = None) -> None:
    """Probe loss against top eigenvalue, one panel per scenario, one colour per run (points: seeds x rounds)."""
    plt = pyplot()
    names = list(dict.fromkeys(scenarios.get(r, "all") for r in points.run))
    colors = pick_colors([run_labels[r] for r in run_labels], colors)
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for run, g in points[points.run.map(lambda r: scenarios.get(r, "all")) == name].groupby("run"):
            ax.scatter(g.curvature, g.probe, s=18, color=colors[run_labels[run]], label=run_labels[run])
        ax.set_xscale("symlog")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("top Hessian eigenvalue (round mean)")
        ax.set_ylabel("probe final loss (round mean)")
        ax.legend(frameon=False, fontsize=7)
    save_figure(fig, path)


@analysis("curvature_probe", "Hessian top eigenvalue / trace and the plasticity probe's loss per round, and "
          "Spearman rho of curvature with probe loss per scenario (Lyle et al. 2023)",
          single_run=False)  # compares activations / arms / scenarios: not on one run's page
def analysis_curvature_probe(sec, frame, keys, run_labels, exp):
    present = [k for k in PANEL_KEYS if k in keys]
    if TOP_EIG not in present or not any(k.startswith("probe/") for k in present):
        sec.note_missing(f"curvature vs probe: needs `{TOP_EIG}` (--curvature-every) and `probe/<head>/final_loss` "
                         "(--probe-every) rows")
        return
    rounds = per_round(frame[frame.run.isin(run_labels)])
    panel_keys = [*present, PROBE]
    sec.figure("curvature_probe", "Curvature and plasticity probe per round (round means; mean over seeds, 95% "
               "bootstrap band); probe: MSE left after the probe's budget on fresh random targets (lower = more "
               "plastic)", lambda p: rounds_figure(p, rounds, run_labels, panel_keys, colors=sec.colors))
    scenarios = scenario_of(exp)
    points = correlation_points(rounds)
    for name in dict.fromkeys(scenarios.get(r, "all") for r in run_labels):
        sub = points[points.run.map(lambda r: scenarios.get(r, "all")) == name]
        sec.verdict(f"{name}: curvature is linked to plasticity (Lyle et al. 2023): the top Hessian eigenvalue and "
                    "the probe loss are monotonically related across runs, seeds and rounds", spearman_verdict(sub))
    if not points.empty:
        sec.figure("curvature_probe_scatter", "Probe loss (mean of the heads) against the top Hessian eigenvalue: "
                   "one point per run, seed and round", lambda p: scatter_figure(p, points, run_labels, scenarios, sec.colors))
    sec.table(round_table(rounds, run_labels), "Per run and round: IQM [95% CI] over seeds of the round means")
