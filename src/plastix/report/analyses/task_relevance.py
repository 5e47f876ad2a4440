"""The OCP task-relevance probe: plasticity loss against task distance alpha (Sec. 3.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plastix.experiments.task_switch import read_task_relevance
from plastix.report.figures import pick_colors, pyplot, save_figure
from plastix.report.registry import analysis
from plastix.report.stats import SIGNIFICANCE, bootstrap_ci


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


def relevance_figure(path: Path, table: pd.DataFrame, colors: dict[str, str] | None = None) -> None:
    """Loss ratio (trained / random init) against task distance alpha; one panel per learning rate; one
    colour per source run (``colors``: the report's map)."""
    plt = pyplot()
    lrs = sorted(table.lr.unique(), reverse=True)
    colors = pick_colors(list(table.source.unique()), colors)
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
    save_figure(fig, path)


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


@analysis("task_relevance", "plasticity loss vs task distance: trained / random-init final test loss per alpha (OCP Sec. 3.2)",
          read=read_task_relevance, finals=_task_relevance_finals)
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
               lambda p: relevance_figure(p, table, colors=sec.colors))
    for (src, lr), sub in table.groupby(["source", "lr"]):
        sec.verdict(f"{src}, lr {lr:g}: plasticity loss shrinks with task distance (OCP Sec. 3.2: the loss ratio "
                    "trained / random init falls as alpha grows, alpha > 0)", relevance_verdict(sub))
    summary = table.groupby(["source", "lr", "alpha"]).agg(
        distance=("distance", "mean"), loss_trained=("loss_trained", "mean"), loss_random=("loss_random", "mean"),
        ratio=("ratio", "mean"), seeds=("seed", "nunique")).reset_index()
    sec.table(summary, "Per alpha (means over seeds): distance = MSE of y_alpha from the trained net's own outputs; "
                       "ratio = final test loss trained / random init")
