"""Statistics of the report: IQM, bootstrap CIs, binned curves, final values and the claims' verdicts.

Curves are the mean over seeds with a 95% percentile-bootstrap band across seeds (``bootstrap_ci``); final
performance is the interquartile mean (IQM) with a 95% stratified-bootstrap CI (``iqm``,
``stratified_bootstrap_ci``; Agarwal et al. 2021, the rliable estimators, implemented here with numpy
because rliable 1.2 does not import with pandas 3).

    final value of a key in one seed: mean of its last ``max(1, 10%)`` measurements (claims with
    ``stat = "mean"`` use the mean of all measurements);
    IQM: mean of the middle 50% of the sorted scores (``scipy.stats.trim_mean(x, 0.25)``);
    stratified bootstrap: resample the runs of each task (here: seeds within an env) with replacement.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plastix.experiments import matches

BOOTSTRAP_REPS = 2000
CURVE_BINS = 60
FINAL_FRACTION = 0.1
SIGNIFICANCE = 0.05  # the p-value below which a test (OLS coefficient, Spearman rho) counts


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
    stats = iqm_rows(samples) if statistic is iqm else np.array([statistic(s) for s in samples])
    return point, float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def iqm_rows(samples: np.ndarray) -> np.ndarray:
    """``iqm`` of every replicate ``samples[i]`` at once (sort each flattened replicate, average the middle
    50%), instead of a Python loop over the 2,000 replicates of every table cell."""
    x = np.sort(samples.reshape(len(samples), -1), axis=1)
    n = x.shape[1]
    cut = int(0.25 * n)
    return x[:, cut : n - cut].mean(axis=1)  # the same pairwise sums as iqm's per row: bit-identical


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
        return mean, nanquantile_columns(boot, alpha / 2), nanquantile_columns(boot, 1 - alpha / 2)


def nanquantile_columns(a: np.ndarray, q: float) -> np.ndarray:
    """``np.nanquantile(a, q, axis=0)`` (its default linear method, bit for bit) in one vectorised pass:
    numpy's version loops over columns in Python (``apply_along_axis``), which dominated the report's time.

    Per column with ``m`` finite values sorted ``v``: ``pos = q (m - 1)``, ``t = pos - floor(pos)``, and
    ``v[floor] + (v[ceil] - v[floor]) t`` (``v[ceil] - (v[ceil] - v[floor]) (1 - t)`` when ``t >= 0.5``,
    as numpy's ``_lerp``); NaN for a column without values.
    """
    a = np.sort(np.asarray(a, np.float64), axis=0)  # NaNs sort last
    m = (~np.isnan(a)).sum(axis=0)
    pos = q * (np.maximum(m, 1) - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
    below = np.take_along_axis(a, lo[None], axis=0)[0]
    above = np.take_along_axis(a, hi[None], axis=0)[0]
    t = pos - lo
    diff = above - below
    out = np.where(t >= 0.5, above - diff * (1 - t), below + diff * t)
    return np.where(m > 0, out, np.nan)


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
    env_step = frame.env_step.to_numpy()
    steps = np.unique(env_step)
    if len(steps) <= bins:
        return steps.astype(np.float64), _mean_table(frame.seed.to_numpy(), np.searchsorted(steps, env_step),
                                                     frame.value.to_numpy(), len(steps))
    edges = np.linspace(steps.min(), steps.max(), bins + 1)
    b = np.clip(np.searchsorted(edges, env_step, side="right") - 1, 0, bins - 1)
    wide = _mean_table(frame.seed.to_numpy(), b, frame.value.to_numpy(), bins)
    centers = (edges[:-1] + edges[1:]) / 2
    keep = ~np.all(np.isnan(wide), axis=0)
    return centers[keep], wide[:, keep]


def _mean_table(seeds: np.ndarray, columns: np.ndarray, values: np.ndarray, ncols: int) -> np.ndarray:
    """``[distinct seeds (sorted), ncols]``: the mean of ``values`` per (seed, column), NaN where none
    (``pivot_table(index="seed", columns=..., aggfunc="mean")`` without pandas' per-call overhead)."""
    rows_of, rows = np.unique(seeds, return_inverse=True)
    sums = np.zeros((len(rows_of), ncols))
    counts = np.zeros((len(rows_of), ncols))
    np.add.at(sums, (rows, columns), np.asarray(values, np.float64))
    np.add.at(counts, (rows, columns), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def final_count(n):
    """How many of ``n`` measurements are "the last 10%": ``max(1, ceil(n / 10))``, computed so that float
    noise cannot add one (``0.1 * 30`` is ``3.0000000000000004`` in binary floating point)."""
    return np.maximum(1, np.ceil(np.round(FINAL_FRACTION * np.asarray(n, np.float64), 9))).astype(np.int64)


def final_values(frame: pd.DataFrame, stat: str = "final") -> pd.DataFrame:
    """Per ``(run, seed, key)``: the mean of the last ``final_count(n)`` of its ``n`` measurements by update
    (the last 10%, at least one), or of all of them for ``stat = "mean"``; rows sorted by run, seed, key.

    One vectorised pass (sort, then count each row's position from its group's end), so that a sweep of
    millions of rows takes seconds rather than a Python loop over every (run, seed, key).
    """
    cols = ["run", "seed", "key"]
    if frame.empty:
        return pd.DataFrame(columns=[*cols, "value"])
    f = frame[[*cols, "update", "value"]].sort_values([*cols, "update"], kind="stable")
    groups = f.groupby(cols, sort=False, observed=True)
    if stat != "mean":
        from_end = groups.cumcount(ascending=False).to_numpy()
        f = f[from_end < final_count(groups.value.transform("size").to_numpy())]
    out = f.groupby(cols, sort=True, observed=True).value.mean().reset_index()
    return out.astype({"value": np.float64})


# -------------------------------------------------------------------------------------------- verdicts
def evaluate_claim(claim: dict, finals: pd.DataFrame, labels: dict[str, dict]) -> str:
    """A one-line verdict: ``"yes, 5/5 seeds"`` / ``"partly, 3/5 seeds"`` / ``"not resolved at 5 seeds, 3/5
    seeds"`` / ``"no, 0/5 seeds"`` / why not measured.

    ``finals``: rows ``run, seed, key, value`` (final values); ``labels``: ``{run: {field: value}}`` used to
    find the runs selected by ``claim["a"]`` and ``claim["b"]``. A seed supports the claim when every key
    matching ``claim["keys"]`` satisfies the comparison in that seed (``combine = "mean"``: when the mean over
    the matching keys does). ``not_less``: ``a >= b - tolerance * |b|``. When some seeds support it and some
    do not, the verdict is ``partly`` only if, on every key that fails in a seed, the 95% CIs of the two
    sides' IQMs over seeds are apart (``ci_overlap``); else the seeds cannot tell: ``not resolved``.
    """
    finals = finals[finals.key.map(lambda k: matches(k, claim["keys"]))]
    if finals.empty:
        single = "*" in claim["keys"] and "**" not in claim["keys"]
        hint = " (`*` stays within one `/` segment; `**` crosses them)" if single else ""
        return f"not measured: no metric matches `{claim['keys']}`{hint}"
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
    op, tol, b = claim["compare"], float(claim.get("tolerance", 0.0)), None
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
    if word == "partly":
        failing = sorted(set(ok[~ok].index.get_level_values("key")))
        overlaps = [o for key in failing if (o := ci_overlap(key, a, b, claim.get("threshold")))]
        if overlaps:
            return (f"not resolved at {n} seeds, {k}/{n} seeds ({what}; {detail}; the 95% CIs overlap on "
                    f"{len(overlaps)} of the {len(failing)} keys that fail in a seed, e.g. {overlaps[0]})")
    return f"{word}, {k}/{n} seeds ({what}; {detail})"


def ci_overlap(key: str, a: pd.Series, b: pd.Series | None, threshold=None) -> str:
    """When the 95% stratified-bootstrap CIs of ``a``'s and ``b``'s IQMs over seeds on ``key`` overlap (or,
    without ``b``, ``a``'s CI contains ``threshold``): a description of both; else ``""``."""
    pa, la, ha = stratified_bootstrap_ci(a.xs(key, level="key").to_numpy())
    if b is None:
        thr = float(threshold)
        return f"{key}: IQM {pa:.3g} [{la:.3g}, {ha:.3g}] contains {thr:g}" if la <= thr <= ha else ""
    pb, lb, hb = stratified_bootstrap_ci(b.xs(key, level="key").to_numpy())
    if la <= hb and lb <= ha:
        return f"{key}: IQM {pa:.3g} [{la:.3g}, {ha:.3g}] vs {pb:.3g} [{lb:.3g}, {hb:.3g}]"
    return ""


def _fmt_sel(selector: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in selector.items())


