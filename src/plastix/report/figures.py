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
    """matplotlib's pyplot on the Agg backend (no display), with the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    return plt


# tab10, then the lighter tab20 shades: 20 distinct colours before a colour repeats.
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22", "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#c49c94", "#f7b6d2", "#9edae5",
           "#c7c7c7", "#dbdb8d"]


def save_figure(fig, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` (tight bounding box) and close it: no report keeps figures open."""
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    pyplot().close(fig)


def colors_of(names: list[str]) -> dict[str, str]:
    """``{name: colour}`` in the order given (the palette repeats after 20 names)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def color_map(variants) -> dict[str, str]:
    """The colour of every variant of a report: the palette in the order of the *sorted* variant names, so a
    variant has one colour in every figure of the report, whatever order a figure draws its lines in."""
    return colors_of(sorted(set(variants)))


def pick_colors(names, colors: dict[str, str] | None) -> dict[str, str]:
    """``{name: colour}`` for ``names``: from ``colors`` (the report's map) where it has the name; names it
    lacks get the palette's colours in sorted order, skipping those the given names already use."""
    colors = colors or {}
    out = {n: colors[n] for n in names if n in colors}
    free = [c for c in PALETTE if c not in set(out.values())] or PALETTE
    for i, n in enumerate(sorted(n for n in set(names) if n not in out)):
        out[n] = free[i % len(free)]
    return out


def mark_round_ends(ax, round_ends) -> None:
    """Dotted vertical lines at the env steps where a round ends and the next begins."""
    for x in round_ends:
        ax.axvline(x, color="#999999", lw=0.7, ls=":", zorder=0)


def integer_ticks(ax, axis: str = "x") -> None:
    """Only whole numbers on an axis of rounds."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def plot_curve(ax, frame: pd.DataFrame, color: str, label: str, linestyle: str = "-") -> None:
    """Mean over seeds with its 95% bootstrap band, against env steps."""
    if frame.empty:
        return
    x, values = binned_curves(frame)
    mean, lo, hi = bootstrap_ci(values)
    ax.plot(x, mean, color=color, label=label, linestyle=linestyle, lw=1.5)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def curves_figure(path: Path, panels: list[tuple[str, dict[str, pd.DataFrame]]], ylabel: str = "", ncols: int = 4,
                  title: str = "", colors: dict[str, str] | None = None, round_ends=()) -> None:
    """One panel per ``(title, {label: rows})``; every label a line with its bootstrap band, coloured by
    ``colors`` (the report's ``color_map``); dotted vertical lines at ``round_ends`` (env steps)."""
    plt = pyplot()
    colors = pick_colors({lab for _, lines in panels for lab in lines}, colors)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels):
        for lab, frame in lines.items():
            plot_curve(ax, frame, colors[lab], lab)
        mark_round_ends(ax, round_ends)
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


def iqm_figure(path: Path, table: pd.DataFrame, xlabel: str, colors: dict[str, str] | None = None) -> None:
    """Horizontal IQM bars with their 95% stratified-bootstrap CIs (rliable's interval-estimate plot), one
    bar per ``table.label``, coloured by ``colors`` (the report's ``color_map``)."""
    plt = pyplot()
    colors = pick_colors(list(table.label), colors)
    fig, ax = plt.subplots(figsize=(5.0, 0.5 + 0.45 * len(table)))
    y = np.arange(len(table))
    ax.barh(y, table.iqm, xerr=[table.iqm - table.low, table.high - table.iqm], color=[colors[l] for l in table.label],
            alpha=0.8, capsize=4)
    ax.set_yticks(y, table.label)
    ax.set_xlabel(xlabel)
    save_figure(fig, path)


