"""Juliani & Ash 2024's regression of the final-round return on weight magnitude and dead units."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.analyses.rounds import ROUND_FINAL_KEYS, ROUND_INDEX, final_round, round_rows
from plastix.report.figures import pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import SIGNIFICANCE, final_values


# ---------------------------------------------------------------------------- Juliani & Ash regression
WEIGHT_MAGNITUDE_KEY = "model/weight_m"  # Juliani & Ash's weight_m: RMS over all parameters of the agent
DEAD_UNITS_STAT = "dead_units"  # their element-wise dead fraction, per layer: <net>/layer_i/dead_units
REGRESSORS = ("weight_m", "dead_units")


def ols(y: np.ndarray, X: np.ndarray, names: list[str]) -> tuple[pd.DataFrame, float, int]:
    """Ordinary least squares ``y = b0 + X b + e`` with classical standard errors.

    ``b = (A'A)^-1 A'y`` with ``A = [1, X]``; ``se_j = sqrt(s^2 [(A'A)^-1]_jj)``, ``s^2 = |e|^2 / (n - p)``;
    ``t_j = b_j / se_j``; two-sided ``p_j = 2 P(T_{n-p} > |t_j|)`` (Student t, ``n - p`` degrees of freedom).

    Returns:
        ``(table with columns term, coef, se, t, p; R^2; degrees of freedom)``.
    """
    from scipy import stats

    y = np.asarray(y, np.float64)
    A = np.column_stack([np.ones(len(y)), np.asarray(X, np.float64)])
    dof = len(y) - A.shape[1]
    if dof < 1:
        raise ValueError(f"OLS needs more observations ({len(y)}) than coefficients ({A.shape[1]})")
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    s2 = float(resid @ resid) / dof
    se = np.sqrt(s2 * np.diag(np.linalg.inv(A.T @ A)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    p = 2 * stats.t.sf(np.abs(t), dof)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(resid @ resid) / tss if tss > 0 else float("nan")
    table = pd.DataFrame(dict(term=["intercept", *names], coef=coef, se=se, t=t, p=p))
    return table, r2, dof


def encoder_output_keys(keys: list[str], stat: str = DEAD_UNITS_STAT) -> list[str]:
    """Per network, the ``<net>/layer_i/<stat>`` key of its last hidden layer (the highest ``i``).

    Juliani & Ash measure dead units on the encoder's output only (``calc_dead_units`` on what
    ``ConvEncoder``/``LinearEncoder.forward`` return, ``shared/modules.py``): with ``--network juliani-ash``
    that is ``torso/layer_2`` (MLP) or ``torso/layer_5`` (conv); CleanRL's separate policy and value MLPs
    give one key each (``policy/layer_2``, ``value/layer_2``), averaged by ``regression_data``.
    """
    last: dict[str, tuple[int, str]] = {}
    for key in keys:
        m = re.fullmatch(rf"(.+)/layer_(\d+)/{re.escape(stat)}", key)
        if m and int(m.group(2)) > last.get(m.group(1), (0, ""))[0]:
            last[m.group(1)] = (int(m.group(2)), key)
    return sorted(key for _, key in last.values())


def regression_data(frame: pd.DataFrame, keys: list[str], run_labels: dict[str, str]) -> tuple[pd.DataFrame, str]:
    """Per run and seed: the final-round return ``y`` (``round/normalized_return`` when the runs have a
    fresh baseline, else ``round/return_train``) and Juliani & Ash's two predictors at the end of the run:
    ``weight_m`` (``model/weight_m``, their RMS over all parameters) and ``dead_units`` (their element-wise
    dead fraction of the encoder output, ``encoder_output_keys``; the mean over networks when there are
    several). Returns ``(rows run, variant, seed, y, weight_m, dead_units; the y key)``."""
    columns = ["run", "variant", "seed", "y", *REGRESSORS]
    key = next((k for k in ROUND_FINAL_KEYS if k in keys), None)
    if key is None:
        return pd.DataFrame(columns=columns), ""
    y = final_round(round_rows(frame[frame.key.str.startswith("round/")]), key).rename(columns={"value": "y"})
    data = y
    for name, chosen in (("weight_m", [WEIGHT_MAGNITUDE_KEY]), ("dead_units", encoder_output_keys(keys))):
        sub = frame[frame.key.isin(chosen)]
        f = final_values(sub).groupby(["run", "seed"]).value.mean().rename(name).reset_index()
        data = data.merge(f, on=["run", "seed"], how="inner")
    data = data[data.run.isin(run_labels)].assign(variant=lambda d: d.run.map(run_labels))
    data = data[np.isfinite(data[["y", *REGRESSORS]].to_numpy(np.float64)).all(axis=1)]
    return data[columns].reset_index(drop=True), key


def round_end_values(frame: pd.DataFrame, chosen: list[str]) -> pd.DataFrame:
    """Rows ``run, seed, round, value``: per round, the last measurement of each key in ``chosen`` within the
    round (updates after the previous round end, up to this round's end, the update of its ``round/index``
    row), averaged over the keys."""
    ends = frame[frame.key == ROUND_INDEX][["run", "seed", "update", "value"]].rename(columns={"value": "round"})
    rows = []
    for (run, seed), sub in frame[frame.key.isin(chosen)].groupby(["run", "seed"], sort=True):
        e = ends[(ends.run == run) & (ends.seed == seed)].sort_values("update")
        if e.empty:
            continue
        rnd = np.searchsorted(e["update"].to_numpy(), sub["update"].to_numpy(), side="left")
        sub = sub.assign(round=rnd)[rnd < len(e)]
        last = sub.sort_values("update").groupby(["round", "key"]).value.last().groupby("round").mean()
        rows += [(run, seed, int(e["round"].iloc[r]), v) for r, v in last.items()]
    return pd.DataFrame(rows, columns=["run", "seed", "round", "value"])


def change_since_first_round(frame: pd.DataFrame, keys: list[str], run_labels: dict[str, str]) -> pd.DataFrame:
    """Juliani & Ash's regression data as their notebook builds it (``analyze_helpers.py`` ``process_corrs``,
    ``shared/plotting.py`` ``calculate_correlation``): one point per run (their condition x experiment) with,
    for the training return (``round/return_train``) and each predictor (``weight_m``, ``dead_units`` as in
    ``regression_data``, read at each round's end), the change since the end of the first round ``x_r - x_1``
    averaged over rounds ``r = 1..R`` (the first term is 0), then over seeds. Rows ``run, variant, y,
    weight_m, dead_units``."""
    columns = ["run", "variant", "y", *REGRESSORS]
    if "round/return_train" not in keys:
        return pd.DataFrame(columns=columns)
    rounds = round_rows(frame[frame.key.str.startswith("round/")])
    parts = {"y": rounds[rounds.key == "round/return_train"].drop(columns="key"),
             "weight_m": round_end_values(frame, [WEIGHT_MAGNITUDE_KEY]),
             "dead_units": round_end_values(frame, encoder_output_keys(keys))}
    data = None
    for name, rows in parts.items():
        wide = rows.pivot_table(index=["run", "seed"], columns="round", values="value", aggfunc="mean")
        if wide.empty or 0 not in wide.columns:
            return pd.DataFrame(columns=columns)
        change = wide.sub(wide[0], axis=0).mean(axis=1).groupby("run").mean().rename(name)
        data = change.to_frame() if data is None else data.join(change, how="inner")
    data = data.reset_index()
    data = data[data.run.isin(run_labels)].assign(variant=lambda d: d.run.map(run_labels))
    data = data[np.isfinite(data[["y", *REGRESSORS]].to_numpy(np.float64)).all(axis=1)]
    return data[columns].reset_index(drop=True)


def regression_verdict(table: pd.DataFrame, r2: float, n: int) -> str:
    """``yes`` when both regressors have p < 0.05 (the paper's finding), ``partly`` for one, ``no`` for none."""
    rows = table.set_index("term")
    terms = [t for t in REGRESSORS if t in rows.index]
    significant = [t for t in terms if rows.loc[t, "p"] < SIGNIFICANCE]
    word = "yes" if len(significant) == 2 else ("partly" if significant else "no")
    detail = "; ".join(f"{t}: coef {rows.loc[t, 'coef']:+.3g}, p = {rows.loc[t, 'p']:.2g}" for t in terms)
    return f"{word}, {len(significant)}/2 regressors with p < {SIGNIFICANCE:g} ({detail}; n = {n}, R^2 = {r2:.2f})"


def regression_figure(path: Path, data: pd.DataFrame, ylabel: str, colors: dict[str, str] | None = None) -> None:
    """Final-round return against each regressor, one colour per variant (``colors``: the report's map)."""
    plt = pyplot()
    colors = pick_colors(list(data.variant.unique()), colors)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    xlabels = ("weight_m (RMS of all parameters)", "dead-unit fraction (encoder output)")
    for ax, col, xlabel in zip(axes, REGRESSORS, xlabels):
        for variant, g in data.groupby("variant", sort=False):
            ax.scatter(g[col], g.y, color=colors[variant], label=variant, s=18)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[1].legend(frameon=False, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    save_figure(fig, path)


REGRESSION_CLAIM = ("Weight magnitude and dead units both predict the final-round return (OLS, p < 0.05; "
                    "Juliani & Ash 2024)")
THEIR_REGRESSION_CLAIM = ("As Juliani & Ash's notebook fits it (one point per variant, changes since the end of "
                          "round 1): weight magnitude and dead units both predict the change of training return "
                          "(OLS, p < 0.05)")


@analysis("juliani_ash_regression", "OLS of final-round return on mean |weight| and dead units (Juliani & Ash 2024)",
          single_run=False)
def analysis_juliani_ash_regression(sec, frame, keys, run_labels, exp):
    data, key = regression_data(frame, keys, run_labels)
    if data.empty:
        sec.note_missing("regression: needs `round/return_train` (or `round/normalized_return`), "
                         f"`{WEIGHT_MAGNITUDE_KEY}` and `*/layer_*/{DEAD_UNITS_STAT}` rows in the same runs")
        sec.verdict(REGRESSION_CLAIM, "not measured: no run has the final-round return and both regressors")
        their_regression(sec, change_since_first_round(frame, keys, run_labels))
        return
    # A regressor constant across runs (e.g. no dead unit anywhere) cannot be estimated: fit the other alone.
    terms = [c for c in REGRESSORS if data[c].std() > 0]
    fits = bool(terms) and len(data) > len(terms) + 1
    if fits:
        table, r2, dof = ols(data.y.to_numpy(), data[terms].to_numpy(), terms)
        sec.table(table, f"OLS of final-round {key} on {' and '.join(terms)}: n = {len(data)}, dof = {dof}, "
                         f"R^2 = {r2:.3f}")
    if fits and len(terms) == 2:
        sec.verdict(REGRESSION_CLAIM, regression_verdict(table, r2, len(data)))
    else:
        constant = [c for c in REGRESSORS if c not in terms]
        why = ", ".join(f"{c} constant across runs ({data[c].iloc[0]:.3g})" for c in constant) or \
            f"only {len(data)} runs x seeds"
        sec.verdict(REGRESSION_CLAIM, f"not measured: {why}; the regression needs variation in both")
    sec.figure("regression", f"Final-round {key} vs weight magnitude and dead units (one point per run and seed)",
               lambda p: regression_figure(p, data, key.removeprefix("round/"), colors=sec.colors))
    sec.table(data.drop(columns="run"), "Regression data: one row per run and seed")
    their_regression(sec, change_since_first_round(frame, keys, run_labels))


def their_regression(sec, data: pd.DataFrame) -> None:
    """The OLS of ``change_since_first_round`` (their form: one point per variant) and its verdict."""
    terms = [c for c in REGRESSORS if len(data) and data[c].std() > 0]
    if len(terms) < 2 or len(data) <= len(terms) + 1:
        sec.verdict(THEIR_REGRESSION_CLAIM, f"not measured: {len(data)} variants with per-round rows"
                    f"{'' if len(terms) == 2 else ' and variation in both predictors'}; it needs more than 3")
        return
    table, r2, dof = ols(data.y.to_numpy(), data[terms].to_numpy(), terms)
    sec.table(table, f"Their form: OLS of the mean change of round/return_train since round 1 on the same "
                     f"change of {' and '.join(terms)}, one point per variant: n = {len(data)}, dof = {dof}, "
                     f"R^2 = {r2:.3f}")
    sec.verdict(THEIR_REGRESSION_CLAIM, regression_verdict(table, r2, len(data)))
