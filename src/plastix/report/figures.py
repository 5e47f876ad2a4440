"""Figures of the report: matplotlib set-up, the colours of variants, curves with bootstrap bands, IQM bars.

Every figure function takes the path of the PNG to write as its first argument, so that an analysis hands
``lambda path: some_figure(path, ...)`` to ``Section.figure``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.report.stats import binned_curves, bootstrap_ci


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    return plt


def colors_of(names: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def plot_curve(ax, frame: pd.DataFrame, color: str, label: str, linestyle: str = "-") -> None:
    """Mean over seeds with its 95% bootstrap band, against env steps."""
    if frame.empty:
        return
    x, values = binned_curves(frame)
    mean, lo, hi = bootstrap_ci(values)
    ax.plot(x, mean, color=color, label=label, linestyle=linestyle, lw=1.5)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def curves_figure(path: Path, panels: list[tuple[str, dict[str, pd.DataFrame]]], ylabel: str = "", ncols: int = 4,
                  title: str = "") -> None:
    """One panel per ``(title, {label: rows})``; every label a line with its bootstrap band."""
    plt = pyplot()
    labels = sorted({lab for _, lines in panels for lab in lines})
    colors = colors_of(labels)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels):
        for lab, frame in lines.items():
            plot_curve(ax, frame, colors[lab], lab)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), frameon=False, bbox_to_anchor=(0.5, 1.0))
    if title:
        fig.suptitle(title, y=1.06 if handles else 1.0, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if handles else 1))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def iqm_figure(path: Path, table: pd.DataFrame, xlabel: str) -> None:
    """Horizontal IQM bars with their 95% stratified-bootstrap CIs (rliable's interval-estimate plot)."""
    plt = pyplot()
    colors = colors_of(list(table.label))
    fig, ax = plt.subplots(figsize=(5.0, 0.5 + 0.45 * len(table)))
    y = np.arange(len(table))
    ax.barh(y, table.iqm, xerr=[table.iqm - table.low, table.high - table.iqm], color=[colors[l] for l in table.label],
            alpha=0.8, capsize=4)
    ax.set_yticks(y, table.label)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


