"""Theorem 1 of the OCP paper (dormant <=> zero gradient) per activation: per-layer overlap of the dormant and
zero-gradient sets over training (``review-theorem1``).

Per layer and measurement the diagnostics log the overlap coefficient (Eq. 19) of the dormant set
(dormancy score <= ``overlap_tau``) with the strict zero-gradient set (MAGI <= ``zero_grad_eps``,
``overlap/dormant_zero_grad``) and with the relative one (MAGI / layer mean <= ``overlap_tau``,
``overlap/dormant_zero_grad_rel@<tau>``). When both sets are empty the coefficient is 1 by definition: such a
measurement is *vacuous* (no neuron is either) and is left out here; which sets are empty is read from the
ratios logged at the same measurement (``dormant_ratio@<tau>``, ``zero_grad_ratio/layer``,
``zero_grad_ratio_rel@<tau>/layer``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.common import LAYER_KEY, panel_name
from plastix.report.figures import pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import stratified_bootstrap_ci

THRESHOLD = 0.9  # the sets "coincide" when the mean overlap is at least this (as ocp-dormancy-vs-gradient's claim)
C1_ACTIVATIONS = {"tanh", "gelu", "silu", "softplus", "sigmoid", "none"}  # continuously differentiable
DEFAULT_TAU = 0.025  # TrainConfig.overlap_tau


def criteria(tau: float) -> dict[str, tuple[str, str]]:
    """``{criterion: (overlap stat, zero-gradient ratio stat)}`` of the two zero-gradient sets."""
    return {"strict": ("overlap/dormant_zero_grad", "zero_grad_ratio/layer"),
            "relative": (f"overlap/dormant_zero_grad_rel@{tau:g}", f"zero_grad_ratio_rel@{tau:g}/layer")}


def overlap_rows(frame: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Rows ``run, seed, layer, criterion, overlap, vacuous`` per measurement: the overlap coefficient, and
    whether both sets were empty (dormant ratio and zero-gradient ratio both 0)."""
    wide = frame[frame.key.map(lambda k: LAYER_KEY.match(k) is not None)]
    wide = wide.assign(layer=wide.key.map(panel_name), stat=wide.key.map(lambda k: LAYER_KEY.match(k)["stat"]))
    wide = wide.pivot_table(index=["run", "seed", "update", "layer"], columns="stat", values="value")
    dormant = f"dormant_ratio@{tau:g}"
    parts = []
    for name, (overlap, zero_grad) in criteria(tau).items():
        if not {overlap, dormant, zero_grad} <= set(wide.columns):
            continue
        sub = wide[[overlap, dormant, zero_grad]].dropna()
        parts.append(pd.DataFrame({"criterion": name, "overlap": sub[overlap],
                                   "vacuous": (sub[dormant] == 0) & (sub[zero_grad] == 0)}, index=sub.index))
    if not parts:
        return pd.DataFrame(columns=["run", "seed", "layer", "criterion", "overlap", "vacuous"])
    return pd.concat(parts).reset_index().drop(columns="update")


def per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ``run, seed, layer, criterion``: the mean overlap over the non-vacuous measurements (NaN when all are
    vacuous) and the share of vacuous measurements."""
    keys = ["run", "seed", "layer", "criterion"]
    informative = rows[~rows.vacuous].groupby(keys).overlap.mean()
    vacuous = rows.groupby(keys).vacuous.mean()
    return pd.concat([informative.rename("overlap"), vacuous.rename("vacuous_share")], axis=1).reset_index()


def summary_table(seeds: pd.DataFrame, run_labels: dict[str, str]) -> pd.DataFrame:
    """Per run, criterion and layer: IQM and 95% stratified-bootstrap CI over seeds of the mean overlap (seeds
    with an informative measurement), and the mean vacuous share."""
    rows = []
    for (run, criterion, layer), g in seeds.groupby(["run", "criterion", "layer"], sort=False):
        values = g.overlap.dropna().to_numpy()
        point, lo, hi = stratified_bootstrap_ci(values) if len(values) else (np.nan, np.nan, np.nan)
        rows.append(dict(activation=run_labels.get(run, run), criterion=criterion, layer=layer, iqm=point, low=lo,
                         high=hi, seeds=len(values), vacuous_share=g.vacuous_share.mean()))
    return pd.DataFrame(rows)


def verdict(seeds: pd.DataFrame) -> str:
    """``yes, k/n seeds`` when in every seed each layer with an informative measurement has a mean overlap
    >= ``THRESHOLD`` (``partly``, ``no`` otherwise); ``not measured`` when every measurement is vacuous."""
    informative = seeds.dropna(subset=["overlap"])
    if informative.empty:
        return ("not measured: no dormant and no zero-gradient neuron in any measurement (both sets empty every "
                "time: the equivalence holds only vacuously)")
    ok = informative.groupby("seed").overlap.apply(lambda v: bool((v >= THRESHOLD).all()))
    k, n = int(ok.sum()), len(ok)
    word = "yes" if k == n else ("no" if k == 0 else "partly")
    return (f"{word}, {k}/{n} seeds (every layer's mean overlap >= {THRESHOLD:g}; mean {informative.overlap.mean():.3g} "
            f"over {informative.layer.nunique()} layers with an informative measurement)")


def overlap_figure(path: Path, table: pd.DataFrame, colors: dict[str, str] | None = None) -> None:
    """Grouped bars per layer: each activation's IQM overlap with its 95% CI; one panel per criterion."""
    plt = pyplot()
    crits = list(dict.fromkeys(table.criterion))
    acts = list(dict.fromkeys(table.activation))
    layers = list(dict.fromkeys(table.layer))
    colors = pick_colors(acts, colors)
    fig, axes = plt.subplots(1, len(crits), figsize=(5.2 * len(crits), 3.2), squeeze=False)
    width = 0.8 / max(len(acts), 1)
    for ax, crit in zip(axes.flat, crits):
        for i, act in enumerate(acts):
            sub = table[(table.criterion == crit) & (table.activation == act)].set_index("layer").reindex(layers)
            x = np.arange(len(layers)) + (i - (len(acts) - 1) / 2) * width
            err = np.nan_to_num(np.stack([sub.iqm - sub.low, sub.high - sub.iqm]))
            ax.bar(x, sub.iqm, width, yerr=err, color=colors[act], label=act, capsize=2)
        ax.axhline(THRESHOLD, color="#777", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(layers)), layers, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{crit} zero-gradient set", fontsize=9)
        ax.set_ylabel("overlap(dormant, zero-grad)")
    axes.flat[-1].legend(frameon=False, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    save_figure(fig, path)


def run_taus_and_activations(exp: dict) -> dict[str, tuple[float, str]]:
    """``{run: (overlap_tau, activation)}`` from the experiment's variants (their preset's defaults)."""
    from plastix.experiments import config_for

    out = {}
    for v in exp.get("variants", []):
        cfg = config_for(v["overrides"], exp.get("seeds") or [0])
        out[v["name"]] = (cfg.overlap_tau, cfg.activation)
    return out


@analysis("theorem1", "per activation and layer: overlap of the dormant and zero-gradient (strict and relative "
          "MAGI) sets over training, vacuous measurements left out; IQM/CI over seeds; a verdict per activation",
          single_run=False)  # compares activations / arms / scenarios: not on one run's page
def analysis_theorem1(sec, frame, keys, run_labels, exp):
    info = run_taus_and_activations(exp)
    parts = []
    for run in run_labels:
        tau, _ = info.get(run, (DEFAULT_TAU, ""))
        parts.append(per_seed(overlap_rows(frame[frame.run == run], tau)))
    seeds = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if seeds.empty:
        sec.note_missing("theorem 1: needs `*/layer_*/overlap/dormant_zero_grad*` beside `dormant_ratio@tau` and "
                         "`zero_grad_ratio*/layer` rows")
        return
    for run, label in run_labels.items():
        activation = info.get(run, (None, label))[1]
        smooth = "C^1" if activation in C1_ACTIVATIONS else "not C^1"
        for criterion in ("relative", "strict"):
            sub = seeds[(seeds.run == run) & (seeds.criterion == criterion)]
            if sub.empty:
                continue
            sec.verdict(f"Theorem 1 for {label} ({smooth}): the dormant and {criterion} zero-gradient sets coincide",
                        verdict(sub))
    table = summary_table(seeds, run_labels)
    if table.iqm.notna().any():
        sec.figure("theorem1", f"Overlap of the dormant and zero-gradient sets per layer (mean over the informative "
                   f"measurements of a seed; IQM and 95% CI over seeds); dotted: {THRESHOLD:g}",
                   lambda p: overlap_figure(p, table.dropna(subset=["iqm"]), sec.colors))
    sec.table(table, "Overlap per activation, criterion and layer: IQM [95% CI] over seeds; vacuous_share = share "
                     "of measurements with both sets empty (left out)")
