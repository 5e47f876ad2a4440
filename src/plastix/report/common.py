"""Helpers shared by the analyses: picking metric keys per layer, one line per variant, per-layer figures
and the final-value table of a key."""

from __future__ import annotations

import re

import pandas as pd

from plastix.report.figures import curves_figure
from plastix.report.page import Section, slug
from plastix.report.stats import final_values, stratified_bootstrap_ci

LAYER_KEY = re.compile(r"^(?P<net>[^/]+)/(?P<layer>layer_\d+)/(?P<stat>.+)$")


def variant_lines(frame: pd.DataFrame, key: str, run_labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    sub = frame[frame.key == key]
    return {run_labels[r]: g for r, g in sub.groupby("run") if r in run_labels}


def layer_keys(keys: list[str], stat_pattern: str) -> dict[str, list[str]]:
    """``{stat: [keys of every net/layer with that stat]}`` for layer keys whose stat matches the regex."""
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        m = LAYER_KEY.match(key)
        if m and re.fullmatch(stat_pattern, m["stat"]):
            out.setdefault(m["stat"], []).append(key)
    return out


def panel_name(key: str) -> str:
    m = LAYER_KEY.match(key)
    return f"{m['net']} {m['layer']}" if m else key


def layer_stat_figures(sec: Section, frame, keys, run_labels, stat_pattern: str, what: str, name: str) -> None:
    groups = layer_keys(keys, stat_pattern)
    if not groups:
        sec.note_missing(f"{what}: no metric matches `*/layer_*/{stat_pattern}`")
        return
    for stat, stat_keys in groups.items():
        panels = [(panel_name(k), variant_lines(frame, k, run_labels)) for k in stat_keys]
        sec.figure(f"{name}__{slug(stat)}", f"{what}: {stat} per layer (mean over seeds, 95% bootstrap band)",
                   lambda p, panels=panels, stat=stat: curves_figure(p, panels, stat, colors=sec.colors,
                                                                                 round_ends=sec.round_ends))


def final_table(frame: pd.DataFrame, key: str, run_labels: dict[str, str]) -> pd.DataFrame:
    finals = final_values(frame[frame.key == key])
    rows = []
    for run, g in finals.groupby("run"):
        if run not in run_labels:
            continue
        point, lo, hi = stratified_bootstrap_ci(g.value.to_numpy())
        per_seed = ", ".join(f"{s}: {v:.4g}" for s, v in zip(g.seed, g.value))
        rows.append(dict(label=run_labels[run], iqm=point, low=lo, high=hi, seeds=len(g), per_seed=per_seed))
    return pd.DataFrame(rows, columns=["label", "iqm", "low", "high", "seeds", "per_seed"])

