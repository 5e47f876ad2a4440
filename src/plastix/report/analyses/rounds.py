"""Rounds: per-round curves of the `round/*` keys and the final-round IQM per variant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.figures import integer_ticks, iqm_figure, pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import bootstrap_ci, stratified_bootstrap_ci


# ----------------------------------------------------------------------------------------- rounds
ROUND_INDEX = "round/index"
ROUND_FINAL_KEYS = ("round/normalized_return", "round/return_train")  # the first present is "final return"


def round_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ``run, seed, round, key, value`` of the ``round/*`` keys (except ``round/index``).

    The trainer writes every ``round/*`` row of a round at the round's last update, with ``round/index`` the
    round number (0-based); rows are matched to it by ``(run, seed, update)``. Without ``round/index`` rows,
    a row's round is the rank of its update among the run's round rows.
    """
    rounds = frame[frame.key.str.startswith("round/")]
    other = rounds[rounds.key != ROUND_INDEX]
    index = rounds[rounds.key == ROUND_INDEX]
    if index.empty:
        rank = other.groupby(["run", "seed"])["update"].rank(method="dense") - 1
        out = other.assign(round=rank)
    else:
        index = index[["run", "seed", "update", "value"]].rename(columns={"value": "round"})
        out = other.merge(index, on=["run", "seed", "update"], how="inner")
    out = out.assign(round=out["round"].astype(int))
    return out[["run", "seed", "round", "key", "value"]].reset_index(drop=True)


def round_curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(rounds, mean, low, high)`` over seeds (95% percentile bootstrap) of rows ``seed, round, value``."""
    wide = rows.pivot_table(index="seed", columns="round", values="value", aggfunc="mean")
    mean, lo, hi = bootstrap_ci(wide.to_numpy(np.float64))
    return wide.columns.to_numpy(np.float64), mean, lo, hi


def rounds_figure(path: Path, rows: pd.DataFrame, run_labels: dict[str, str], keys: list[str],
                  colors: dict[str, str] | None = None) -> None:
    """One panel per ``round/*`` key: every variant's mean over seeds per round with its bootstrap band,
    coloured by ``colors`` (the report's ``color_map``); the round axis has integer ticks."""
    plt = pyplot()
    colors = pick_colors([run_labels[r] for r in run_labels if r in set(rows.run)], colors)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run, g in rows[rows.key == key].groupby("run", sort=False):
            if run not in run_labels:
                continue
            x, mean, lo, hi = round_curve(g)
            lab = run_labels[run]
            ax.plot(x, mean, color=colors[lab], label=lab, marker="o", ms=3, lw=1.3)
            ax.fill_between(x, lo, hi, color=colors[lab], alpha=0.15, lw=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("round")
        integer_ticks(ax)
        if key == "round/normalized_return":
            ax.axhline(1.0, color="#777", lw=0.8, ls=":")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), frameon=False, fontsize=8,
                   bbox_to_anchor=(0.5, 1.0 + 0.03 * math.ceil(len(names) / 4)))
    save_figure(fig, path)


def final_round(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows ``run, seed, value`` of ``key`` at each run's last round."""
    sub = rows[rows.key == key]
    last = sub.groupby("run")["round"].transform("max")
    return sub[sub["round"] == last][["run", "seed", "value"]]


@analysis("rounds", "per-round curves of the `round/*` keys (train, held-out, fresh, normalised return) across variants")
def analysis_rounds(sec, frame, keys, run_labels, exp):
    round_keys = [k for k in keys if k.startswith("round/") and k != ROUND_INDEX]
    if not round_keys:
        sec.note_missing("rounds: no `round/*` rows (a run with --rounds > 1 writes them at each round end)")
        return
    rows = round_rows(frame[frame.key.str.startswith("round/")])
    order = ["round/return_train", "round/return_heldout", "round/generalization_gap", "round/return_fresh",
             "round/normalized_return"]
    panel_keys = [k for k in order if k in round_keys] + sorted(set(round_keys) - set(order))
    sec.figure("rounds", "Per-round metrics (mean over seeds, 95% bootstrap band); normalised return = warm / fresh",
               lambda p: rounds_figure(p, rows, run_labels, panel_keys, colors=sec.colors))
    key = next((k for k in ROUND_FINAL_KEYS if k in round_keys), None)
    if key is None:
        return
    table = []
    for run, g in final_round(rows, key).groupby("run", sort=False):
        if run in run_labels:
            point, lo, hi = stratified_bootstrap_ci(g.value.to_numpy())
            table.append(dict(label=run_labels[run], iqm=point, low=lo, high=hi, seeds=len(g)))
    if table:
        table = pd.DataFrame(table)
        sec.figure("rounds_final", f"Final-round {key}: IQM with 95% stratified-bootstrap CI",
                   lambda p: iqm_figure(p, table, f"final-round {key.removeprefix('round/')} (IQM)",
                                            colors=sec.colors))
        sec.table(table, f"Final-round {key} per variant: IQM [95% CI] over seeds")
