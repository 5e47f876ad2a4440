"""Dormancy rate vs convergence speed at equal capacity (the review of the OCP paper's Figure 1).

The OCP paper reads its Fig 1 (PPO-ReLU vs PPO-No-Act) as "a higher dormancy ratio corresponds to a faster
convergence rate"; the review (seed 000) objects that No-Act also removes every nonlinearity. With the
architecture held fixed and dormancy varied by the activation and by interventions (``review-fig1-control``),
this analysis asks whether the dormancy rate predicts the convergence speed across runs and seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.common import LAYER_KEY
from plastix.report.figures import pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import SIGNIFICANCE, final_values, stratified_bootstrap_ci

DORMANCY_STAT = "dormant_ratio@0.025"
RETURN_KEY = "return/episodic"
CLAIM = ("At equal capacity, a higher dormancy rate goes with faster convergence (the OCP paper's reading of Fig 1): "
         "Spearman rho of mean dormant ratio (tau = 0.025) and time-averaged return > 0, p < 0.05, over the "
         "equal-capacity runs x seeds (No-Act left out)")


def dormancy_summary(frame: pd.DataFrame, stat: str = DORMANCY_STAT) -> pd.Series:
    """Per ``(run, seed)``: the dormancy rate of the run, ``mean_t mean_l d_l(t)``, the mean over measurements
    ``t`` of the mean over every hidden layer ``l`` of both networks of ``<net>/layer_i/<stat>``."""
    keys = [k for k in frame.key.unique() if (m := LAYER_KEY.match(k)) and m["stat"] == stat]
    per_update = frame[frame.key.isin(keys)].groupby(["run", "seed", "update"]).value.mean()
    return per_update.groupby(["run", "seed"]).mean().rename("dormancy")


def convergence_speed(frame: pd.DataFrame, key: str = RETURN_KEY) -> pd.Series:
    """Per ``(run, seed)``: the normalised area under the return curve,
    ``(1 / (t_N - t_1)) * integral R(t) dt`` over env steps ``t`` (trapezoid rule on the logged episodic
    returns), i.e. the time-averaged return. At equal final return a faster learner has a larger area;
    unlike "steps to reach a fraction of the final return" it needs no threshold and works for the negative
    early returns of HalfCheetah. A seed with fewer than 2 return rows has none."""
    out = {}
    for (run, seed), g in frame[frame.key == key].groupby(["run", "seed"]):
        g = g.sort_values("env_step")
        x, y = g.env_step.to_numpy(np.float64), g.value.to_numpy(np.float64)
        if len(x) >= 2 and x[-1] > x[0]:
            out[(run, seed)] = float(np.trapezoid(y, x) / (x[-1] - x[0]))
    index = pd.MultiIndex.from_tuples(list(out), names=["run", "seed"]) if out else None
    return pd.Series(list(out.values()), index=index, dtype=np.float64, name="speed")


def no_act_runs(exp: dict) -> set[str]:
    """The runs of the experiment without a hidden activation (``activation = "none"``: a linear function
    class, so not of equal capacity)."""
    return {v["name"] for v in exp.get("variants", []) if v.get("overrides", {}).get("activation") == "none"}


def speed_data(frame: pd.DataFrame, run_labels: dict[str, str], exp: dict) -> pd.DataFrame:
    """Rows ``run, label, seed, dormancy, speed, final_return, equal_capacity`` (finite values only)."""
    finals = final_values(frame[frame.key == RETURN_KEY]).set_index(["run", "seed"]).value.rename("final_return")
    data = pd.concat([dormancy_summary(frame), convergence_speed(frame), finals], axis=1, join="inner").reset_index()
    data = data[data.run.isin(run_labels) & np.isfinite(data[["dormancy", "speed"]]).all(axis=1)]
    no_act = no_act_runs(exp)
    return data.assign(label=data.run.map(run_labels), equal_capacity=~data.run.isin(no_act)).reset_index(drop=True)


def spearman_verdict(data: pd.DataFrame) -> str:
    """``yes`` when rho > 0 with p < 0.05 (more dormancy, faster), ``no`` when rho < 0 with p < 0.05, else
    ``inconclusive``; over the equal-capacity points."""
    from scipy import stats

    sub = data[data.equal_capacity]
    if len(sub) < 3 or sub.dormancy.nunique() < 2 or sub.speed.nunique() < 2:
        return f"not measured: {len(sub)} equal-capacity points with varying dormancy and speed; it needs 3 or more"
    rho, p = stats.spearmanr(sub.dormancy, sub.speed)
    word = "yes" if (rho > 0 and p < SIGNIFICANCE) else ("no" if (rho < 0 and p < SIGNIFICANCE) else "inconclusive")
    return f"{word}, Spearman rho = {rho:+.2f} (p = {p:.2g}, n = {len(sub)} runs x seeds, {sub.run.nunique()} runs)"


def per_run_table(data: pd.DataFrame) -> pd.DataFrame:
    """Per run: IQM [95% stratified-bootstrap CI] over seeds of dormancy, speed and final return."""
    rows = []
    for label, g in data.groupby("label", sort=False):
        row = {"label": label, "seeds": len(g), "equal capacity": bool(g.equal_capacity.iloc[0])}
        for col in ("dormancy", "speed", "final_return"):
            point, lo, hi = stratified_bootstrap_ci(g[col].to_numpy())
            row[col] = f"{point:.4g} [{lo:.4g}, {hi:.4g}]"
        rows.append(row)
    return pd.DataFrame(rows)


def scatter_figure(path: Path, data: pd.DataFrame, colors: dict[str, str] | None = None) -> None:
    """Time-averaged return against mean dormant ratio, one point per run and seed (No-Act hollow), coloured
    by ``colors`` (the report's colour of each variant)."""
    plt = pyplot()
    colors = pick_colors(list(dict.fromkeys(data.label)), colors)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for label, g in data.groupby("label", sort=False):
        hollow = not g.equal_capacity.iloc[0]
        ax.scatter(g.dormancy, g.speed, s=24, label=label + (" (not equal capacity)" if hollow else ""),
                   facecolors="none" if hollow else colors[label], edgecolors=colors[label])
    ax.set_xlabel("mean dormant ratio (tau = 0.025, all hidden layers, over training)")
    ax.set_ylabel("time-averaged episodic return")
    ax.legend(frameon=False, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    save_figure(fig, path)


@analysis("dormancy_speed", "dormancy rate vs convergence speed (area under the return curve) per run and "
          "seed: Spearman rho at equal capacity, scatter (the review of OCP Fig 1)",
          single_run=False)  # compares activations / arms / scenarios: not on one run's page
def analysis_dormancy_speed(sec, frame, keys, run_labels, exp):
    if RETURN_KEY not in keys or not any((m := LAYER_KEY.match(k)) and m["stat"] == DORMANCY_STAT for k in keys):
        sec.note_missing(f"dormancy vs speed: needs `{RETURN_KEY}` and `*/layer_*/{DORMANCY_STAT}` rows")
        sec.verdict(CLAIM, "not measured: no run has both returns and dormancy ratios")
        return
    data = speed_data(frame, run_labels, exp)
    sec.verdict(CLAIM, spearman_verdict(data))
    if data.empty:
        return
    sec.figure("dormancy_speed", "Convergence speed (time-averaged return: area under the return curve over env "
               "steps, divided by the steps) against the mean dormant ratio; one point per run and seed",
               lambda p: scatter_figure(p, data, sec.colors))
    from scipy import stats

    if len(data) >= 3 and data.dormancy.nunique() > 1:
        rho, p = stats.spearmanr(data.dormancy, data.speed)
        sec.html(f"<p>With No-Act included (the paper's comparison, not of equal capacity): Spearman rho = "
                 f"{rho:+.2f}, p = {p:.2g}, n = {len(data)}.</p>")
    sec.table(per_run_table(data), "Per run: mean dormant ratio, time-averaged return and final return (last 10% "
                                   "of episodes): IQM [95% CI] over seeds")
