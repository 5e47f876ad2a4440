"""``plastix report SWEEP_DIR``: an HTML page and PNG figures of every experiment of a sweep.

For each experiment of ``sweep.json`` the page shows its verdicts (one line per claim of its file), the
figures of its ``analyses``, tables of final values, its config and the runs' full configs. Curves are the
mean over seeds with a 95% percentile-bootstrap confidence band across seeds (``bootstrap_ci``); final
performance is the interquartile mean (IQM) with a 95% stratified-bootstrap CI (``iqm``,
``stratified_bootstrap_ci``; Agarwal et al. 2021, the rliable estimators, implemented here with numpy
because rliable 1.2 does not import with pandas 3). Metrics that a run did not record are reported as
missing on the page; nothing fails because a key is absent.

Statistics:
    final value of a key in one seed: mean of its last ``max(1, 10%)`` measurements (claims with
    ``stat = "mean"`` use the mean of all measurements);
    IQM: mean of the middle 50% of the sorted scores (``scipy.stats.trim_mean(x, 0.25)``);
    stratified bootstrap: resample the runs of each task (here: seeds within an env) with replacement.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.experiments import ANALYSES, matches

BOOTSTRAP_REPS = 2000
CURVE_BINS = 60
FINAL_FRACTION = 0.1
LAYER_KEY = re.compile(r"^(?P<net>[^/]+)/(?P<layer>layer_\d+)/(?P<stat>.+)$")


# ------------------------------------------------------------------------------------------ statistics
def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of ``scores`` (flattened), as ``trim_mean(x, 0.25)``."""
    x = np.sort(np.asarray(scores, np.float64).reshape(-1))
    n = x.size
    if n == 0:
        return float("nan")
    cut = int(0.25 * n)
    return float(x[cut : n - cut].mean())


def stratified_bootstrap_ci(
    scores: np.ndarray, statistic=iqm, reps: int = BOOTSTRAP_REPS, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``statistic`` of ``scores [runs, tasks]`` and its percentile-bootstrap CI.

    Each replicate resamples the runs of every task (column) independently with replacement (rliable's
    stratified bootstrap), so every task keeps its weight.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    point = statistic(scores)
    n = scores.shape[0]
    if n < 2:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n, scores.shape[1]))
    samples = np.take_along_axis(scores[None], idx, axis=1)
    stats = np.array([statistic(s) for s in samples])
    return point, float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def bootstrap_ci(values: np.ndarray, reps: int = BOOTSTRAP_REPS, alpha: float = 0.05, seed: int = 0):
    """Mean over seeds and its 95% percentile-bootstrap band, per point.

    Args:
        values: ``[seeds, points]``, NaN where a seed has no value at a point.
    Returns:
        ``(mean, low, high)``, each ``[points]``.
    """
    values = np.asarray(values, np.float64)
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(values, axis=0)
        n = values.shape[0]
        if n < 2:
            return mean, mean, mean
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(reps, n))
        boot = np.nanmean(values[idx], axis=1)  # [reps, points]
        return mean, np.nanquantile(boot, alpha / 2, axis=0), np.nanquantile(boot, 1 - alpha / 2, axis=0)


class _quiet:
    def __enter__(self):
        import warnings

        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self.w.__exit__(*exc)


def binned_curves(frame: pd.DataFrame, bins: int = CURVE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(x [points], values [seeds, points])`` from rows ``seed, env_step, value`` of one key and variant.

    When a key has more measurements than ``bins``, steps are grouped into ``bins`` equal-width bins of
    env steps and averaged per seed (episodic returns arrive at different updates in different seeds).
    """
    steps = np.sort(frame.env_step.unique())
    if len(steps) <= bins:
        wide = frame.pivot_table(index="seed", columns="env_step", values="value", aggfunc="mean")
        return wide.columns.to_numpy(np.float64), wide.to_numpy(np.float64)
    edges = np.linspace(steps.min(), steps.max(), bins + 1)
    b = np.clip(np.searchsorted(edges, frame.env_step.to_numpy(), side="right") - 1, 0, bins - 1)
    wide = frame.assign(bin=b).pivot_table(index="seed", columns="bin", values="value", aggfunc="mean")
    wide = wide.reindex(columns=range(bins))
    centers = (edges[:-1] + edges[1:]) / 2
    keep = ~np.all(np.isnan(wide.to_numpy()), axis=0)
    return centers[keep], wide.to_numpy(np.float64)[:, keep]


def final_values(frame: pd.DataFrame, stat: str = "final") -> pd.DataFrame:
    """Per ``(run, seed, key)``: the mean of the last ``max(1, 10%)`` measurements (or of all for ``mean``)."""
    if frame.empty:
        return pd.DataFrame(columns=["run", "seed", "key", "value"])

    def reduce(g: pd.DataFrame) -> float:
        v = g.sort_values("update").value.to_numpy()
        return float(v.mean() if stat == "mean" else v[-max(1, math.ceil(FINAL_FRACTION * len(v))) :].mean())

    rows = [(run, seed, key, reduce(g)) for (run, seed, key), g in frame.groupby(["run", "seed", "key"], sort=True)]
    return pd.DataFrame(rows, columns=["run", "seed", "key", "value"])


# -------------------------------------------------------------------------------------------- verdicts
def evaluate_claim(claim: dict, finals: pd.DataFrame, labels: dict[str, dict]) -> str:
    """A one-line verdict: ``"yes, 5/5 seeds"`` / ``"partly, 3/5 seeds"`` / ``"no, 0/5 seeds"`` / why not measured.

    ``finals``: rows ``run, seed, key, value`` (final values); ``labels``: ``{run: {field: value}}`` used to
    find the runs selected by ``claim["a"]`` and ``claim["b"]``. A seed supports the claim when every key
    matching ``claim["keys"]`` satisfies the comparison in that seed (``combine = "mean"``: when the mean over
    the matching keys does). ``not_less``: ``a >= b - tolerance * |b|``.
    """
    finals = finals[finals.key.map(lambda k: matches(k, claim["keys"]))]
    if finals.empty:
        return f"not measured: no metric matches `{claim['keys']}`"
    nkeys_matched = finals.key.nunique()

    def pick(selector: dict) -> pd.DataFrame | None:
        runs = [r for r, v in labels.items() if all(str(v.get(k)) == str(x) for k, x in selector.items())]
        sel = finals[finals.run.isin(runs)]
        if sel.empty:
            return None
        if claim.get("combine", "every") == "mean":
            sel = sel.assign(key=f"mean of {nkeys_matched} keys")
        return sel.groupby(["seed", "key"]).value.mean()

    a = pick(claim["a"])
    if a is None:
        return f"not measured: no run with {_fmt_sel(claim['a'])} has `{claim['keys']}`"
    op, tol = claim["compare"], float(claim.get("tolerance", 0.0))
    if op in ("at_least", "at_most"):
        thr = float(claim["threshold"])
        ok = (a >= thr) if op == "at_least" else (a <= thr)
        detail = f"mean {a.mean():.3g} vs threshold {thr:g}"
    else:
        b = pick(claim["b"])
        if b is None:
            return f"not measured: no run with {_fmt_sel(claim['b'])} has `{claim['keys']}`"
        a, b = a.align(b, join="inner")
        if a.empty:
            return "not measured: the two sides share no seed and key"
        if op == "less":
            ok = a < b
        elif op == "greater":
            ok = a > b
        elif op == "not_less":
            ok = a >= b - tol * b.abs()
        else:
            ok = (a - b).abs() <= tol * b.abs()
        detail = f"mean {a.mean():.3g} vs {b.mean():.3g}"
    per_seed = ok.groupby(level="seed").all()
    k, n = int(per_seed.sum()), len(per_seed)
    word = "yes" if k == n else ("no" if k == 0 else "partly")
    nkeys = ok.index.get_level_values("key").nunique()
    what = f"mean of {nkeys_matched} keys" if claim.get("combine", "every") == "mean" else f"{nkeys} key{'s' if nkeys != 1 else ''}"
    return f"{word}, {k}/{n} seeds ({what}; {detail})"


def _fmt_sel(selector: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in selector.items())


# --------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    return plt


def _colors(names: list[str]) -> dict[str, str]:
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
    plt = _plt()
    labels = sorted({lab for _, lines in panels for lab in lines})
    colors = _colors(labels)
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
    plt = _plt()
    colors = _colors(list(table.label))
    fig, ax = plt.subplots(figsize=(5.0, 0.5 + 0.45 * len(table)))
    y = np.arange(len(table))
    ax.barh(y, table.iqm, xerr=[table.iqm - table.low, table.high - table.iqm], color=[colors[l] for l in table.label],
            alpha=0.8, capsize=4)
    ax.set_yticks(y, table.label)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- page
class Section:
    """The HTML of one experiment, built piece by piece."""

    def __init__(self, out_dir: Path, slug: str):
        self.out_dir, self.slug = out_dir, slug
        self.parts: list[str] = []
        self.missing: list[str] = []
        self.figures: list[str] = []
        self.verdicts: list[tuple[str, str]] = []  # computed by analyses (regressions, correlations)

    def html(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, caption: str, draw) -> None:
        file = f"{self.slug}__{name}.png"
        draw(self.out_dir / file)
        self.figures.append(file)
        self.parts.append(
            f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
        )

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        body = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="tbl", escape=True)
        # pandas writes `<table border="0" class="dataframe tbl">` (pandas 2) or without `border` (pandas 3).
        self.parts.append(re.sub(r'<table[^>]*class="dataframe tbl">', lambda _: f'<table class="tbl">{cap}', body, count=1))

    def note_missing(self, what: str) -> None:
        self.missing.append(what)

    def verdict(self, text: str, verdict: str) -> None:
        """A verdict computed by an analysis (shown with the claims' verdicts)."""
        self.verdicts.append((text, verdict))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _variant_lines(frame: pd.DataFrame, key: str, run_labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    sub = frame[frame.key == key]
    return {run_labels[r]: g for r, g in sub.groupby("run") if r in run_labels}


def _layer_keys(keys: list[str], stat_pattern: str) -> dict[str, list[str]]:
    """``{stat: [keys of every net/layer with that stat]}`` for layer keys whose stat matches the regex."""
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        m = LAYER_KEY.match(key)
        if m and re.fullmatch(stat_pattern, m["stat"]):
            out.setdefault(m["stat"], []).append(key)
    return out


def _panel_name(key: str) -> str:
    m = LAYER_KEY.match(key)
    return f"{m['net']} {m['layer']}" if m else key


def _layer_stat_figures(sec: Section, frame, keys, run_labels, stat_pattern: str, what: str, name: str) -> None:
    groups = _layer_keys(keys, stat_pattern)
    if not groups:
        sec.note_missing(f"{what}: no metric matches `*/layer_*/{stat_pattern}`")
        return
    for stat, stat_keys in groups.items():
        panels = [(_panel_name(k), _variant_lines(frame, k, run_labels)) for k in stat_keys]
        sec.figure(f"{name}__{_slug(stat)}", f"{what}: {stat} per layer (mean over seeds, 95% bootstrap band)",
                   lambda p, panels=panels, stat=stat: curves_figure(p, panels, stat))


def _final_table(frame: pd.DataFrame, key: str, run_labels: dict[str, str]) -> pd.DataFrame:
    finals = final_values(frame[frame.key == key])
    rows = []
    for run, g in finals.groupby("run"):
        if run not in run_labels:
            continue
        point, lo, hi = stratified_bootstrap_ci(g.value.to_numpy())
        per_seed = ", ".join(f"{s}: {v:.4g}" for s, v in zip(g.seed, g.value))
        rows.append(dict(label=run_labels[run], iqm=point, low=lo, high=hi, seeds=len(g), per_seed=per_seed))
    return pd.DataFrame(rows, columns=["label", "iqm", "low", "high", "seeds", "per_seed"])


def analysis_return(sec, frame, keys, run_labels, exp):
    if "return/episodic" not in keys:
        sec.note_missing("return: no `return/episodic` rows (no episode finished?)")
        return
    sec.figure("return", "Episodic return (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, [("return/episodic", _variant_lines(frame, "return/episodic", run_labels))],
                                       "return", ncols=1))
    table = _final_table(frame, "return/episodic", run_labels)
    if not table.empty:
        sec.figure("return_iqm", "IQM of final return (last 10% of episodes) with 95% stratified-bootstrap CI",
                   lambda p: iqm_figure(p, table, "final return (IQM)"))
        sec.table(table, "Final return per variant: IQM [95% CI] over seeds")


def analysis_dormancy(sec, frame, keys, run_labels, exp):
    _layer_stat_figures(sec, frame, keys, run_labels, r"dormant_ratio@[0-9.e-]+", "Dormancy", "dormancy")
    # dead_units: Juliani & Ash's fraction of dead elements (batch x units); dead_units_every_input: the
    # fraction of units dead on every input; active_units: Plasticine's 1 - dead_units.
    _layer_stat_figures(sec, frame, keys, run_labels, r"dead_units|dead_units_every_input|active_units",
                        "Dead units (J&A: dead elements of batch x units; every_input: units dead on all inputs)",
                        "dead")
    groups = _layer_keys(keys, r"dormant_ratio@0\.025") or _layer_keys(keys, r"dormant_ratio@[0-9.e-]+")
    for stat, stat_keys in list(groups.items())[:1]:
        rows = []
        for key in stat_keys:
            for _, r in _final_table(frame, key, run_labels).iterrows():
                rows.append(dict(layer=_panel_name(key), variant=r.label, iqm=r.iqm, low=r.low, high=r.high))
        if rows:
            sec.table(pd.DataFrame(rows), f"Final {stat} per layer: IQM [95% CI] over seeds")


def analysis_dormancy_vs_gradient(sec, frame, keys, run_labels, exp):
    dorm = _layer_keys(keys, r"dormant_ratio@0\.025") or _layer_keys(keys, r"dormant_ratio@[0-9.e-]+")
    zg = _layer_keys(keys, r"zero_grad_ratio(/.+)?")
    if not dorm or not zg:
        sec.note_missing("dormancy vs zero-gradient: needs `*/layer_*/dormant_ratio@tau` and `*/layer_*/zero_grad_ratio/*`")
        return
    layers = sorted({_panel_name(k) for ks in (*dorm.values(), *zg.values()) for k in ks})
    series = {**{s: ks for s, ks in dorm.items()}, **zg}
    for run, label in run_labels.items():
        sub = frame[frame.run == run]
        panels = []
        for layer in layers:
            lines = {}
            for stat, ks in series.items():
                for k in ks:
                    if _panel_name(k) == layer:
                        lines[stat] = sub[sub.key == k]
            panels.append((layer, lines))
        sec.figure(f"dvg__{_slug(label)}", f"{label}: dormancy vs zero-gradient ratios per layer",
                   lambda p, panels=panels, label=label: curves_figure(p, panels, "ratio", title=label))


def analysis_overlap(sec, frame, keys, run_labels, exp):
    _layer_stat_figures(sec, frame, keys, run_labels, r"overlap/.+", "Overlap coefficient", "overlap")


MODEL_WEIGHT_KEYS = ("model/weight_m", "model/weight_diff", "model/dist_init_rms")


def analysis_weights(sec, frame, keys, run_labels, exp):
    _layer_stat_figures(sec, frame, keys, run_labels, r"weight/.+", "Weights", "weights")
    present = [k for k in MODEL_WEIGHT_KEYS if k in keys]
    if not present:
        sec.note_missing(f"whole-network weights: no `{'`, `'.join(MODEL_WEIGHT_KEYS)}` rows")
        return
    panels = [(k, _variant_lines(frame, k, run_labels)) for k in present]
    sec.figure("weights__model", "Whole network (J&A's weight_m: RMS of all parameters; weight_diff: RMS change "
               "over one update; dist_init_rms: RMS distance from init), mean over seeds, 95% bootstrap band",
               lambda p: curves_figure(p, panels, "RMS", ncols=3))


def analysis_ranks(sec, frame, keys, run_labels, exp):
    _layer_stat_figures(sec, frame, keys, run_labels, r".*(srank|effective_rank|numerical_rank|rank).*", "Rank", "ranks")


def analysis_losses(sec, frame, keys, run_labels, exp):
    loss_keys = [k for k in sorted(keys) if k.startswith(("loss/", "optim/"))]
    if not loss_keys:
        sec.note_missing("losses: no `loss/*` or `optim/*` rows")
        return
    panels = [(k, _variant_lines(frame, k, run_labels)) for k in loss_keys]
    sec.figure("losses", "PPO losses and optimiser statistics (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, panels))


def analysis_task_switch(sec, ts: pd.DataFrame | None, exp):
    if ts is None or ts.empty:
        sec.note_missing("task switch: no results yet (run `plastix run` for this experiment)")
        return
    plt = _plt()
    sources = sorted(ts.source.unique(), key=lambda s: (s.removeprefix("random-init/"), s))
    # A random-init network shares its source's colour, dashed.
    base_colors = _colors(sorted({s.removeprefix("random-init/") for s in sources}))
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
            fig.tight_layout()
            fig.savefig(path, bbox_inches="tight")
            plt.close(fig)

        sec.figure(f"task_switch__lr{lr:g}", f"Eq. 15 regression from each source network, lr {lr:g} (mean, 95% band)",
                   draw)
        last = sub[(sub.split == "test") & (sub.step == sub.step.max())]
        rows = []
        for src, g in last.groupby("source"):
            point, lo, hi = stratified_bootstrap_ci(g.loss.to_numpy())
            rows.append(dict(label=src, iqm=point, low=lo, high=hi, seeds=len(g)))
        table = pd.DataFrame(rows)
        sec.figure(f"task_switch_final__lr{lr:g}", f"Final test loss, lr {lr:g}: IQM with 95% stratified-bootstrap CI",
                   lambda p, table=table: iqm_figure(p, table, "final test MSE (IQM)"))
        sec.table(table, f"Final test loss per source network, lr {lr:g}")


def analysis_mitigations(sec, frame, keys, run_labels, exp):
    mit_keys = [k for k in sorted(keys) if k.startswith("mitigation/")]
    if not mit_keys:
        sec.note_missing("mitigations: no `mitigation/*` rows (no surgery fired, or none is active)")
        return
    panels = [(k.removeprefix("mitigation/"), _variant_lines(frame, k, run_labels)) for k in mit_keys]
    sec.figure("mitigations", "What the mitigations touched (mean over seeds, 95% bootstrap band)",
               lambda p: curves_figure(p, panels, "count"))


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


def rounds_figure(path: Path, rows: pd.DataFrame, run_labels: dict[str, str], keys: list[str]) -> None:
    """One panel per ``round/*`` key: every variant's mean over seeds per round with its bootstrap band."""
    plt = _plt()
    labels = [run_labels[r] for r in run_labels if r in set(rows.run)]
    colors = _colors(labels)
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
        if key == "round/normalized_return":
            ax.axhline(1.0, color="#777", lw=0.8, ls=":")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), frameon=False, fontsize=8,
                   bbox_to_anchor=(0.5, 1.0 + 0.03 * math.ceil(len(names) / 4)))
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _final_round(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows ``run, seed, value`` of ``key`` at each run's last round."""
    sub = rows[rows.key == key]
    last = sub.groupby("run")["round"].transform("max")
    return sub[sub["round"] == last][["run", "seed", "value"]]


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
               lambda p: rounds_figure(p, rows, run_labels, panel_keys))
    key = next((k for k in ROUND_FINAL_KEYS if k in round_keys), None)
    if key is None:
        return
    table = []
    for run, g in _final_round(rows, key).groupby("run", sort=False):
        if run in run_labels:
            point, lo, hi = stratified_bootstrap_ci(g.value.to_numpy())
            table.append(dict(label=run_labels[run], iqm=point, low=lo, high=hi, seeds=len(g)))
    if table:
        table = pd.DataFrame(table)
        sec.figure("rounds_final", f"Final-round {key}: IQM with 95% stratified-bootstrap CI",
                   lambda p: iqm_figure(p, table, f"final-round {key.removeprefix('round/')} (IQM)"))
        sec.table(table, f"Final-round {key} per variant: IQM [95% CI] over seeds")


# ---------------------------------------------------------------------------- Juliani & Ash regression
WEIGHT_MAGNITUDE_KEY = "model/weight_m"  # Juliani & Ash's weight_m: RMS over all parameters of the agent
DEAD_UNITS_STAT = "dead_units"  # their element-wise dead fraction, per layer: <net>/layer_i/dead_units
REGRESSORS = ("weight_m", "dead_units")
SIGNIFICANCE = 0.05


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
    y = _final_round(round_rows(frame[frame.key.str.startswith("round/")]), key).rename(columns={"value": "y"})
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


def regression_figure(path: Path, data: pd.DataFrame, ylabel: str) -> None:
    """Final-round return against each regressor, one colour per variant."""
    plt = _plt()
    colors = _colors(list(dict.fromkeys(data.variant)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    xlabels = ("weight_m (RMS of all parameters)", "dead-unit fraction (encoder output)")
    for ax, col, xlabel in zip(axes, REGRESSORS, xlabels):
        for variant, g in data.groupby("variant", sort=False):
            ax.scatter(g[col], g.y, color=colors[variant], label=variant, s=18)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[1].legend(frameon=False, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


REGRESSION_CLAIM = ("Weight magnitude and dead units both predict the final-round return (OLS, p < 0.05; "
                    "Juliani & Ash 2024)")
THEIR_REGRESSION_CLAIM = ("As Juliani & Ash's notebook fits it (one point per variant, changes since the end of "
                          "round 1): weight magnitude and dead units both predict the change of training return "
                          "(OLS, p < 0.05)")


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
               lambda p: regression_figure(p, data, key.removeprefix("round/")))
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


# ------------------------------------------------------------------------------------ task relevance
def relevance_table(tr: pd.DataFrame) -> pd.DataFrame:
    """Per trained source, lr, alpha and seed: final test losses of the trained and the random-init network
    on ``y_alpha``, their ratio (plasticity loss at distance alpha; > 1: the trained net learns worse) and
    the target's distance from the trained net's own outputs, ``mean((y_alpha - v_theta0)^2)`` (its test
    loss before training)."""
    test = tr[tr.split == "test"]
    last = test[test.step == test.step.max()]
    first = test[test.step == 0]
    idx = ["source", "alpha", "lr", "seed"]
    final = last.set_index(idx).loss
    start = first.set_index(idx).loss
    rows = []
    for src in sorted(s for s in final.index.get_level_values("source").unique() if not s.startswith("random-init/")):
        rand = f"random-init/{src}"
        trained, fresh = final.xs(src, level="source"), final.xs(rand, level="source") if rand in final.index else None
        if fresh is None:
            continue
        trained, fresh = trained.align(fresh, join="inner")
        frame = pd.DataFrame(dict(loss_trained=trained, loss_random=fresh, ratio=trained / fresh,
                                  distance=start.xs(src, level="source").reindex(trained.index)))
        rows.append(frame.reset_index().assign(source=src))
    cols = ["source", "lr", "alpha", "seed", "loss_trained", "loss_random", "ratio", "distance"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def relevance_verdict(sub: pd.DataFrame) -> str:
    """Spearman's rho of alpha and the loss ratio over the (alpha, seed) points with alpha > 0, and its sign.

    The OCP paper (Sec. 3.2) holds that plasticity loss is task-specific: largest on tasks close to the
    network's own, gone on a distant one, i.e. the ratio falls as alpha grows (rho < 0): ``yes`` when
    rho < 0 with p < 0.05, ``no`` when rho > 0 with p < 0.05, else ``inconclusive``. alpha = 0 is the
    network's own task (nothing to learn: its ratio is ~0, a head start rather than plasticity), so it is
    shown in the table and figure but left out of the correlation.
    """
    from scipy import stats

    ok = np.isfinite(sub.ratio.to_numpy()) & (sub.alpha.to_numpy() > 0)
    if ok.sum() < 3 or sub.alpha[ok].nunique() < 2:
        return "not measured: fewer than 3 finite (alpha > 0, ratio) points at 2 or more alphas"
    rho, p = stats.spearmanr(sub.alpha[ok], sub.ratio[ok])
    word = "yes" if (rho < 0 and p < SIGNIFICANCE) else ("no" if (rho > 0 and p < SIGNIFICANCE) else "inconclusive")
    means = sub.groupby("alpha").ratio.mean()
    curve = ", ".join(f"{a:g}: {v:.3g}" for a, v in means.items())
    return (f"{word}, Spearman rho = {rho:+.2f} (p = {p:.2g}, {int(ok.sum())} points with alpha > 0); "
            f"mean ratio per alpha {curve}")


def relevance_figure(path: Path, table: pd.DataFrame) -> None:
    """Loss ratio (trained / random init) against task distance alpha; one panel per learning rate."""
    plt = _plt()
    lrs = sorted(table.lr.unique(), reverse=True)
    colors = _colors(sorted(table.source.unique()))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.2), squeeze=False)
    for ax, lr in zip(axes.flat, lrs):
        for src, g in table[table.lr == lr].groupby("source"):
            wide = g.pivot_table(index="seed", columns="alpha", values="ratio")
            mean, lo, hi = bootstrap_ci(wide.to_numpy(np.float64))
            x = wide.columns.to_numpy(np.float64)
            ax.plot(x, mean, color=colors[src], label=src, marker="o", ms=3)
            ax.fill_between(x, lo, hi, color=colors[src], alpha=0.2, lw=0)
        ax.axhline(1.0, color="#777", lw=0.8, ls=":")
        ax.set_ylim(bottom=0)
        ax.set_title(f"lr {lr:g}", fontsize=9)
        ax.set_xlabel("task distance alpha (0 = own task, 1 = Eq. 15)")
        ax.set_ylabel("final test loss: trained / random init")
    axes.flat[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def analysis_task_relevance(sec, tr: pd.DataFrame | None, exp):
    if tr is None or tr.empty:
        sec.note_missing("task relevance: no results yet (run `plastix run` for this experiment)")
        return
    table = relevance_table(tr)
    if table.empty:
        sec.note_missing("task relevance: no source has both trained and random-init results")
        return
    sec.figure("task_relevance", "Plasticity loss vs task distance: final test loss of the trained value net / a "
               "random-init net on y_alpha = (1 - alpha) v_theta0(X) + alpha eq15(X) (mean over seeds, 95% band)",
               lambda p: relevance_figure(p, table))
    for (src, lr), sub in table.groupby(["source", "lr"]):
        sec.verdict(f"{src}, lr {lr:g}: plasticity loss shrinks with task distance (OCP Sec. 3.2: the loss ratio "
                    "trained / random init falls as alpha grows, alpha > 0)", relevance_verdict(sub))
    summary = table.groupby(["source", "lr", "alpha"]).agg(
        distance=("distance", "mean"), loss_trained=("loss_trained", "mean"), loss_random=("loss_random", "mean"),
        ratio=("ratio", "mean"), seeds=("seed", "nunique")).reset_index()
    sec.table(summary, "Per alpha (means over seeds): distance = MSE of y_alpha from the trained net's own outputs; "
                       "ratio = final test loss trained / random init")


def _task_relevance_finals(tr: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Claim rows: ``task_relevance/final_test_loss/alpha=A/lr=L`` per source (trained and random-init) and
    ``task_relevance/loss_ratio/alpha=A/lr=L`` per trained source."""
    test = tr[tr.split == "test"]
    last = test[test.step == test.step.max()]
    losses = pd.DataFrame({
        "run": last.source, "seed": last.seed,
        "key": [f"task_relevance/final_test_loss/alpha={a:g}/lr={lr:g}" for a, lr in zip(last.alpha, last.lr)],
        "value": last.loss,
    })
    table = relevance_table(tr)
    ratios = pd.DataFrame({
        "run": table.source, "seed": table.seed,
        "key": [f"task_relevance/loss_ratio/alpha={a:g}/lr={lr:g}" for a, lr in zip(table.alpha, table.lr)],
        "value": table.ratio,
    })
    finals = pd.concat([losses, ratios], ignore_index=True)
    return finals, {s: {"source": s} for s in last.source.unique()}


ANALYSIS_FNS = {
    "return": analysis_return,
    "dormancy": analysis_dormancy,
    "dormancy_vs_gradient": analysis_dormancy_vs_gradient,
    "overlap": analysis_overlap,
    "weights": analysis_weights,
    "ranks": analysis_ranks,
    "losses": analysis_losses,
    "mitigations": analysis_mitigations,
    "rounds": analysis_rounds,
    "juliani_ash_regression": analysis_juliani_ash_regression,
}
PROBE_ANALYSES = {"task_switch": analysis_task_switch, "task_relevance": analysis_task_relevance}  # (sec, data, exp)
assert set(ANALYSIS_FNS) | set(PROBE_ANALYSES) == set(ANALYSES)


def short_labels(runs: list[str], values: dict[str, dict]) -> dict[str, str]:
    """Legend labels: each run's variant values without the fields that are the same in every run
    (``env_id=GridWorld-v0__shift=permute__arm=l2_init`` -> ``arm=l2_init`` when only the arm varies)."""
    from plastix.experiments import variant_name

    fields = {k for r in runs for k in values.get(r, {})}
    varying = [k for k in sorted(fields) if len({str(values.get(r, {}).get(k)) for r in runs}) > 1]
    labels = {}
    for r in runs:
        kept = {k: v for k, v in values.get(r, {}).items() if k in varying}
        labels[r] = variant_name(kept) if kept else r
    return labels if len(set(labels.values())) == len(runs) else {r: r for r in runs}


def _task_switch_finals(ts: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict]]:
    last = ts[(ts.split == "test") & (ts.step == ts.step.max())]
    finals = pd.DataFrame({
        "run": last.source, "seed": last.seed, "key": [f"task_switch/final_test_loss/lr={lr:g}" for lr in last.lr],
        "value": last.loss,
    })
    return finals, {s: {"source": s} for s in last.source.unique()}


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and its PNGs to ``out_dir`` (default ``SWEEP_DIR/report``); return the page's path."""
    from plastix import store
    from plastix.experiments.task_switch import read_task_relevance, read_task_switch
    from plastix.query import connect

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.json").exists():
        raise FileNotFoundError(f"{sweep_dir}: not a sweep folder (no sweep.json)")
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    con = connect(sweep_dir)
    sections = []
    for name, exp in manifest["experiments"].items():
        sec = Section(out_dir, _slug(name))
        runs = exp["runs"]
        run_values = {r: manifest["runs"][r]["values"] for r in runs if r in manifest["runs"]}
        run_labels = short_labels(runs, run_values)
        frame = con.execute("SELECT run, seed, \"update\", env_step, \"key\", value FROM metrics WHERE run IN "
                            "(SELECT unnest(?::VARCHAR[]))", [runs]).df()
        keys = sorted(frame.key.unique()) if not frame.empty else []
        # Verdicts first: the page answers the experiment's questions before it shows the evidence.
        probes = {"task_switch": None, "task_relevance": None}
        if exp["kind"] == "task-switch":
            relevance = "alphas" in (exp.get("task_switch") or {})
            reader, finals_of = ((read_task_relevance, _task_relevance_finals) if relevance
                                 else (read_task_switch, _task_switch_finals))
            data = reader(sweep_dir, name)
            probes["task_relevance" if relevance else "task_switch"] = data
            finals, labels = finals_of(data) if data is not None else (pd.DataFrame(columns=["run", "seed", "key", "value"]), {})
        else:
            finals, labels = None, run_values
        verdicts = []
        for claim in exp["claims"]:
            if exp["kind"] != "task-switch":
                f = final_values(frame[frame.key.map(lambda k, c=claim: matches(k, c["keys"]))], claim.get("stat", "final"))
            else:
                f = finals
            verdicts.append((claim["text"], evaluate_claim(claim, f, labels)))
        if frame.empty and exp["kind"] != "task-switch":
            sec.note_missing("no metrics yet: none of this experiment's runs has written a metrics part")
        for analysis in exp["analyses"]:
            try:
                if analysis in PROBE_ANALYSES:
                    PROBE_ANALYSES[analysis](sec, probes[analysis], exp)
                elif not frame.empty:
                    ANALYSIS_FNS[analysis](sec, frame, keys, run_labels, exp)
            except Exception as err:  # one broken figure must not take the page down
                sec.note_missing(f"{analysis}: could not be drawn ({type(err).__name__}: {err})")
        status = []
        for r in runs:
            run_dir = sweep_dir / "runs" / r
            latest = store.latest_checkpoint(run_dir) if run_dir.exists() else None
            cfg = manifest["runs"].get(r, {})
            status.append(dict(run=r, seeds=",".join(map(str, cfg.get("seeds", []))),
                               checkpoint_update=latest[0] if latest else 0,
                               rows=int((frame.run == r).sum()) if not frame.empty else 0))
        sections.append((name, exp, sec, verdicts + sec.verdicts, pd.DataFrame(status)))
    con.close()
    page = out_dir / "index.html"
    page.write_text(_page(sweep_dir, manifest, sections))
    return page


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table.tbl{border-collapse:collapse;font-size:.85em;margin:1em 0} .tbl td,.tbl th{border:1px solid #ddd;padding:3px 8px}
.tbl caption{text-align:left;font-weight:600;padding-bottom:4px}
.verdict{margin:.3em 0} .yes{color:#1a7f37;font-weight:600} .no{color:#cf222e;font-weight:600}
.partly{color:#9a6700;font-weight:600} .na{color:#777;font-weight:600}
.missing{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.8em}
"""

# Marks the page for the browser test: how many images decoded, and any script error.
CHECK_JS = """
window.addEventListener('error', function (e) { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
"""


def _verdict_html(text: str, verdict: str) -> str:
    word = verdict.split(",", 1)[0].split(":", 1)[0]
    cls = {"yes": "yes", "no": "no", "partly": "partly"}.get(word, "na")
    return f'<li class="verdict">{html.escape(text)}: <span class="{cls}">{html.escape(verdict)}</span></li>'


def _page(sweep_dir: Path, manifest: dict, sections) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>plastix report: {esc(sweep_dir.name)}</title><style>{CSS}</style>",
        f"<script>{CHECK_JS}</script></head><body>",
        f"<h1>plastix report: {esc(str(sweep_dir))}</h1>",
        "<p>Curves: mean over seeds with a 95% percentile-bootstrap band across seeds. Final values: interquartile "
        "mean (IQM) with a 95% stratified-bootstrap CI over seeds; the final value of a seed is the mean of its last "
        "10% of measurements. Verdicts count the seeds in which the claim holds for every matching metric key.</p>",
        "<h2>Contents</h2><ul>",
    ]
    for name, exp, *_ in sections:
        parts.append(f"<li><a href='#{_slug(name)}'>{esc(name)}</a> ({esc(exp['scale'])}): {esc(exp['description'])}</li>")
    parts.append("</ul>")
    for name, exp, sec, verdicts, status in sections:
        parts.append(f"<section id='{_slug(name)}'><h2>{esc(name)} <small>({esc(exp['scale'])} scale)</small></h2>")
        parts.append(f"<p>{esc(exp['description'])}<br><small>file: {esc(exp['path'])}; seeds: "
                     f"{esc(', '.join(map(str, exp['seeds'])))}</small></p>")
        if verdicts:
            parts.append("<h3>Verdicts</h3><ul>" + "".join(_verdict_html(t, v) for t, v in verdicts) + "</ul>")
        if sec.missing:
            parts.append("<div class='missing'><b>Missing from this sweep</b> (figures skipped):<ul>"
                         + "".join(f"<li>{esc(m)}</li>" for m in sec.missing) + "</ul></div>")
        parts.extend(sec.parts)
        parts.append("<h3>Runs</h3>" + status.to_html(index=False, border=0, classes="tbl"))
        config = {k: exp[k] for k in ("kind", "base", "grid", "arms", "analyses", "source", "task_switch") if exp.get(k)}
        parts.append("<details><summary>Experiment config</summary><pre>" + esc(json.dumps(config, indent=2, default=str))
                     + "</pre></details>")
        for r in exp["runs"]:
            cfg_path = sweep_dir / "runs" / r / "config.json"
            if cfg_path.exists():
                parts.append(f"<details><summary>config.json of run {esc(r)}</summary><pre>{esc(cfg_path.read_text())}"
                             "</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
