"""Report: statistics on hand-checked cases, verdicts, and the page in headless Chromium."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plastix import experiments as ex
from plastix import store
from plastix.experiments.task_switch import result_path
from plastix.report import (
    bootstrap_ci,
    build_report,
    evaluate_claim,
    final_values,
    iqm,
    stratified_bootstrap_ci,
)
from plastix.runner import plan, write_manifest

EXPERIMENTS = ["ocp-fig1", "ocp-dormancy-vs-gradient", "ocp-weights", "ocp-ranks", "ocp-task-switch"]


# ------------------------------------------------------------------------------------------ statistics
def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1, 9)) == 4.5  # drops 1, 2 and 7, 8
    assert iqm([5.0, -100.0, 1.0, 3.0, 1000.0, 2.0, 4.0, 6.0]) == 3.5
    x = np.random.default_rng(0).normal(size=37)
    from scipy.stats import trim_mean

    assert np.isclose(iqm(x), trim_mean(x, 0.25))


def test_stratified_bootstrap_ci():
    point, lo, hi = stratified_bootstrap_ci(np.full((5, 3), 2.0))
    assert point == lo == hi == 2.0
    scores = np.random.default_rng(1).normal(10.0, 1.0, size=(20, 2))
    point, lo, hi = stratified_bootstrap_ci(scores)
    assert lo < point < hi and hi - lo < 2.0
    # Stratified: every replicate keeps each task's values, so a task offset of 100 never leaks across tasks.
    tasks = np.stack([np.zeros(10), np.full(10, 100.0)], axis=1)
    assert stratified_bootstrap_ci(tasks, statistic=np.mean) == (50.0, 50.0, 50.0)
    assert stratified_bootstrap_ci(np.array([3.0])) == (3.0, 3.0, 3.0)


def test_bootstrap_band_over_seeds():
    values = np.array([[0.0, 1.0, np.nan], [2.0, 3.0, 5.0]])
    mean, lo, hi = bootstrap_ci(values)
    np.testing.assert_allclose(mean, [1.0, 2.0, 5.0])
    assert lo[0] == 0.0 and hi[0] == 2.0 and lo[2] == hi[2] == 5.0


def test_final_values_average_the_last_tenth():
    rows = pd.DataFrame({"run": "r", "seed": 0, "key": "k", "update": np.arange(1, 21), "value": np.arange(1.0, 21.0)})
    assert final_values(rows).value.item() == 19.5  # last 2 of 20
    assert final_values(rows, "mean").value.item() == 10.5
    # 10% of 30 is 3 (not the 4 that ceil(0.1 * 30) gives in floating point); per run, seed and key; any order.
    rows = pd.DataFrame({"run": "r", "seed": 0, "key": "k", "update": np.arange(1, 31), "value": np.arange(1.0, 31.0)})
    two = pd.concat([rows, rows.assign(seed=1, value=rows.value * 2), rows.iloc[:5].assign(key="j")])
    got = final_values(two.sample(frac=1, random_state=0))
    assert got[["run", "seed", "key"]].values.tolist() == [["r", 0, "j"], ["r", 0, "k"], ["r", 1, "k"]]
    np.testing.assert_allclose(got.value, [5.0, 29.0, 58.0])  # j: the last of 5; k: mean of 28, 29, 30


def test_verdicts():
    finals = pd.DataFrame([
        (run, seed, f"{net}/layer_{i}/dormant_ratio@0.025", value)
        for run, base in (("relu", 0.3), ("none", 0.0)) for seed in range(5) for net in ("policy", "value")
        for i in (1, 2) for value in [base + (0.5 if (run, seed, net, i) == ("none", 4, "value", 2) else 0.0)]
    ], columns=["run", "seed", "key", "value"])
    labels = {"relu": {"activation": "relu"}, "none": {"activation": "none"}}
    claim = dict(keys="*/layer_*/dormant_ratio@0.025", compare="less", a={"activation": "none"}, b={"activation": "relu"})
    # Seed 4 fails on one key (No-Act 0.5 vs ReLU 0.3): No-Act's IQM CI over seeds there, [0, 0.333], holds 0.3.
    assert evaluate_claim(claim, finals, labels).startswith("not resolved at 5 seeds, 4/5 seeds (4 keys")
    assert evaluate_claim(dict(claim, keys="policy/**"), finals, labels).startswith("yes, 5/5 seeds")
    assert evaluate_claim(dict(claim, compare="greater", keys="policy/**"), finals, labels).startswith("no, 0/5 seeds")
    assert evaluate_claim(dict(claim, keys="*/srank"), finals, labels) == (
        "not measured: no metric matches `*/srank` (`*` stays within one `/` segment; `**` crosses them)")
    assert evaluate_claim(dict(claim, keys="policy/*"), finals, labels).startswith("not measured")  # one segment
    assert evaluate_claim(dict(claim, a={"activation": "tanh"}), finals, labels).startswith("not measured: no run with")
    at_least = dict(keys="policy/**", compare="at_least", threshold=0.2, a={"activation": "relu"})
    assert evaluate_claim(at_least, finals, labels).startswith("yes, 5/5")
    similar = dict(claim, compare="similar", tolerance=0.1, a={"activation": "relu"}, b={"activation": "relu"})
    assert evaluate_claim(similar, finals, labels).startswith("yes, 5/5")


# ----------------------------------------------------------------------------------- synthetic sweep
def fake_sweep(root: Path, skip_keys: str = "") -> Path:
    """A sweep folder with the shipped OCP experiments and made-up metrics (no training, so it is fast).

    ReLU's dormancy rises over training, No-Act's stays 0; keys matching ``skip_keys`` are left out."""
    sweep = root / "sweep"
    exps = [ex.load(name, "quick") for name in EXPERIMENTS]
    runs = plan(exps)
    (sweep / "runs").mkdir(parents=True)
    write_manifest(sweep, exps, runs)
    rng = np.random.default_rng(0)
    for spec in runs:
        run_dir = sweep / "runs" / spec.name
        run_dir.mkdir()
        cfg = spec.config(run_dir)
        store.write_config(run_dir, {"activation": cfg.activation, "seeds": cfg.seeds})
        relu = spec.values["activation"] == "relu"
        updates = 20
        metrics = {"return/episodic": -300 + np.linspace(0, 200 if relu else 150, updates)[:, None] + rng.normal(0, 10, (updates, 2)),
                   "loss/value": rng.random((updates, 2)), "time/sps": np.full((updates, 2), 1000.0)}
        for net in ("policy", "value"):
            for layer in ("layer_1", "layer_2"):
                p = f"{net}/{layer}"
                dorm = np.linspace(0, 0.3, updates)[:, None] * relu + rng.random((updates, 2)) * 0.01 * relu
                metrics[f"{p}/dormant_ratio@0.025"] = dorm
                metrics[f"{p}/zero_grad_ratio/layer"] = dorm * 0.9
                metrics[f"{p}/zero_grad_ratio/loss"] = dorm * 0.8
                for o in ("dormant", "zero_grad", "dormant_zero_grad"):
                    metrics[f"{p}/overlap/{o}"] = np.full((updates, 2), 0.95 if relu else 1.0)
                for w in ("l2", "rms", "dist_init"):
                    metrics[f"{p}/weight/{w}"] = np.linspace(1, 2, updates)[:, None] + rng.random((updates, 2))
                metrics[f"{p}/srank"] = np.linspace(60, 40 if relu else 55, updates)[:, None] + rng.random((updates, 2))
        metrics = {k: v for k, v in metrics.items() if not (skip_keys and re.search(skip_keys, k))}
        for first in range(1, updates + 1, 10):
            part = {k: v[first - 1 : first + 9] for k, v in metrics.items()}
            store.write_metrics_part(run_dir, store.metrics_table(part, [0, 1], first, 2048), first)
    steps = 30
    rows = []
    for source in ("activation=relu", "activation=none", "random-init/activation=relu", "random-init/activation=none"):
        for seed in (0, 1):
            for lr in (0.01, 0.005):
                for split in ("train", "test"):
                    loss = 10 * np.exp(-np.arange(steps + 1) * lr * 10) + 1 + rng.random() * 0.01
                    rows.append(pd.DataFrame(dict(source=source, seed=seed, lr=lr, step=np.arange(steps + 1),
                                                  split=split, loss=loss)))
    out = result_path(sweep, "ocp-task-switch")
    out.parent.mkdir(parents=True)
    pd.concat(rows).to_parquet(out)
    return sweep


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert path, "Chromium is missing: scripts/setup.sh installs the Debian package `chromium`"
    return path


def render(page: Path, tmp_path: Path) -> tuple[str, str]:
    """Load ``page`` in headless Chromium: ``(DOM after the load event, browser log)``; also a screenshot."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", page.absolute().as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,3000", page.absolute().as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, "the screenshot is missing or blank"
    return dom.stdout, dom.stderr


def assert_renders_cleanly(page: Path, tmp_path: Path) -> str:
    dom, log = render(page, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert "data-errors" not in body, body
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', body)
    assert loaded, body
    n_png = len(list(page.parent.glob("*.png")))
    assert int(loaded.group(1)) == int(loaded.group(2)) == n_png > 0, (loaded.groups(), n_png)
    return dom


def test_report_renders_in_chromium_with_every_figure(tmp_path):
    sweep = fake_sweep(tmp_path)
    result = subprocess.run([sys.executable, "-m", "plastix.cli", "report", str(sweep)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = sweep / "report" / "index.html"
    assert f"report: {page}" in result.stdout
    dom = assert_renders_cleanly(page, tmp_path)
    for name in EXPERIMENTS:
        assert f"id=\"{name}\"" in dom or f"id='{name}'" in dom
    assert "No-Act dormancy below ReLU dormancy in every layer (tau = 0.025): <span class=\"yes\">yes, 2/2 seeds" in dom
    assert "PPO-ReLU's value net reaches a final test loss similar to a random-init net" in dom
    assert "random-init/activation=relu" in dom  # task-switch table
    html = page.read_text()
    for fig in ("ocp-fig1__return.png", "ocp-fig1__return_iqm.png", "ocp-fig1__dormancy__dormant_ratio-0.025.png",
                "ocp-dormancy-vs-gradient__dvg__activation-relu.png", "ocp-weights__weights__weight-l2.png",
                "ocp-ranks__ranks__srank.png", "ocp-task-switch__task_switch__lr0.01.png"):
        assert fig in html and (page.parent / fig).exists(), fig
    assert "Missing from this sweep" in html  # e.g. no dead_units rows in the synthetic runs


def test_report_says_what_is_missing_instead_of_failing(tmp_path):
    sweep = fake_sweep(tmp_path, skip_keys=r"overlap|srank|weight/|return/")
    (result_path(sweep, "ocp-task-switch")).unlink()
    shutil.rmtree(sweep / "runs" / "activation=none" / "metrics.parquet")
    page = build_report(sweep)
    html = page.read_text()
    assert "Overlap coefficient: no metric matches `*/layer_*/overlap/.+`" in html
    assert "Rank: no metric matches" in html and "Weights: no metric matches" in html
    assert "return: no `return/episodic` rows" in html
    assert "task switch: no results yet" in html
    assert "not measured: no run with activation=none has" in html
    assert_renders_cleanly(page, tmp_path)


# ------------------------------------------------------------------ ocp-perturb, task relevance, juliani-ash
NEW_EXPERIMENTS = ["ocp-perturb", "ocp-task-relevance", "juliani-ash"]


def test_a_partial_verdict_with_overlapping_cis_is_not_resolved():
    """Some seeds hold and some do not: ``partly`` when the two sides' 95% IQM CIs are apart on every failing
    key, else ``not resolved at N seeds``. Hand case: a = [0, 0, 0, 0, x], b = 0.3 in 5 seeds; a's bootstrap
    IQM exceeds its 97.5% quantile only when x is drawn 4+ times (p = 0.0067), so its CI's top is the IQM
    with x drawn 3 times, (0 + x + x) / 3: 0.207 for x = 0.31 (apart from 0.3), 0.333 for x = 0.5 (overlap)."""
    labels = {"a": {"arm": "a"}, "b": {"arm": "b"}}

    def finals(x):
        return pd.DataFrame([("a", s, "k", x if s == 4 else 0.0) for s in range(5)]
                            + [("b", s, "k", 0.3) for s in range(5)], columns=["run", "seed", "key", "value"])

    less = dict(keys="k", compare="less", a={"arm": "a"}, b={"arm": "b"})
    assert evaluate_claim(less, finals(0.31), labels) == "partly, 4/5 seeds (1 key; mean 0.062 vs 0.3)"
    verdict = evaluate_claim(less, finals(0.5), labels)
    assert verdict.startswith("not resolved at 5 seeds, 4/5 seeds (1 key; mean 0.1 vs 0.3; the 95% CIs overlap"), verdict
    assert "k: IQM 0 [0, 0.333] vs 0.3 [0.3, 0.3]" in verdict
    assert evaluate_claim(dict(less, compare="at_most", threshold=0.25), finals(0.5), labels).startswith(
        "not resolved at 5 seeds, 4/5 seeds")  # the CI [0, 0.333] contains the threshold 0.25
    assert evaluate_claim(dict(less, compare="at_most", threshold=0.4), finals(0.5), labels).startswith(
        "partly, 4/5 seeds")  # the CI is below 0.4
    assert evaluate_claim(less, finals(0.0), labels).startswith("yes, 5/5 seeds")
    from plastix.report.page import verdict_class

    assert verdict_class(verdict) == "unresolved" and verdict_class("partly, 4/5") == "partly"


def test_not_less_and_mean_combined_claims():
    on, off = {"x/1": 1.1, "x/2": 0.0, "y": 0.9}, {"x/1": 1.0, "x/2": 0.3, "y": 1.0}
    finals = pd.DataFrame([(run, s, k, v) for run, vals in (("on", on), ("off", off)) for s in range(4)
                           for k, v in vals.items()], columns=["run", "seed", "key", "value"])
    labels = {"on": {"arm": "on"}, "off": {"arm": "off"}}
    claim = dict(keys="y", compare="not_less", a={"arm": "on"}, b={"arm": "off"})
    assert evaluate_claim(claim, finals, labels).startswith("no, 0/4 seeds")  # 0.9 < 1.0
    assert evaluate_claim(dict(claim, tolerance=0.1), finals, labels).startswith("yes, 4/4 seeds")  # >= 0.9
    # every key: x/1 is not less (1.1 vs 1.0); the mean over keys (0.55 vs 0.65) is.
    less = dict(keys="x/*", compare="less", a={"arm": "on"}, b={"arm": "off"})
    assert evaluate_claim(less, finals, labels).startswith("no, 0/4 seeds (2 keys")
    assert evaluate_claim(dict(less, combine="mean"), finals, labels).startswith("yes, 4/4 seeds (mean of 2 keys")


def test_ols_matches_scipy_and_the_normal_equations():
    from scipy import stats

    from plastix.report import ols

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 1.0 + 2.0 * x + rng.normal(size=30)
    table, r2, dof = ols(y, x[:, None], ["x"])
    ref = stats.linregress(x, y)
    row = table.set_index("term").loc["x"]
    assert dof == 28 and np.isclose(row.coef, ref.slope) and np.isclose(row.se, ref.stderr)
    assert np.isclose(row.p, ref.pvalue) and np.isclose(r2, ref.rvalue**2)
    X = rng.normal(size=(40, 2))
    y = 0.5 - 1.0 * X[:, 0] + 0.0 * X[:, 1] + 0.1 * rng.normal(size=40)
    table, r2, dof = ols(y, X, ["a", "b"])
    A = np.column_stack([np.ones(40), X])
    beta = np.linalg.solve(A.T @ A, A.T @ y)
    np.testing.assert_allclose(table.coef, beta)
    resid = y - A @ beta
    se = np.sqrt(resid @ resid / 37 * np.diag(np.linalg.inv(A.T @ A)))
    np.testing.assert_allclose(table.se, se)
    np.testing.assert_allclose(table.p, 2 * stats.t.sf(np.abs(beta / se), 37))
    assert table.p[1] < 1e-10 and table.p[2] > 0.01 and dof == 37
    with pytest.raises(ValueError, match="more observations"):
        ols(y[:3], X[:3], ["a", "b"])


def test_round_rows_read_the_round_from_round_index():
    from plastix.report import round_rows

    rows = []
    for seed in (0, 1):
        for r, update in enumerate((8, 16, 24)):
            rows += [("a", seed, update, "round/index", float(r)), ("a", seed, update, "round/return_train", r + seed / 10)]
    frame = pd.DataFrame(rows, columns=["run", "seed", "update", "key", "value"])
    out = round_rows(frame)
    assert set(out.key) == {"round/return_train"} and sorted(out["round"].unique()) == [0, 1, 2]
    assert out[(out.seed == 1) & (out["round"] == 2)].value.item() == 2.1
    # Without round/index rows the round is the rank of the update.
    assert round_rows(frame[frame.key != "round/index"]).equals(out)


def fake_relevance(rng, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), steps: int = 20) -> pd.DataFrame:
    """Task-relevance rows where the trained net's advantage shrinks with alpha (ratio = 0.2 + alpha)."""
    rows = []
    for src in ("activation=relu", "activation=none"):
        for seed in (0, 1):
            for alpha in alphas:
                for lr in (0.01, 0.005):
                    final = {src: (0.2 + alpha) * 2.0, f"random-init/{src}": 2.0}
                    for source, end in final.items():
                        start = 10.0 * alpha**2 if source == src else 30.0
                        loss = np.linspace(start, end + rng.random() * 1e-3, steps + 1)
                        for split in ("train", "test"):
                            rows.append(pd.DataFrame(dict(source=source, seed=seed, alpha=alpha, lr=lr,
                                                          step=np.arange(steps + 1), split=split, loss=loss)))
    return pd.concat(rows, ignore_index=True)


def test_relevance_table_and_verdict():
    from plastix.report import relevance_table, relevance_verdict

    table = relevance_table(fake_relevance(np.random.default_rng(0)))
    assert set(table.source) == {"activation=relu", "activation=none"}
    sub = table[(table.source == "activation=relu") & (table.lr == 0.01)]
    np.testing.assert_allclose(sub.sort_values(["alpha", "seed"]).ratio, np.repeat(0.2 + np.array([0, .25, .5, .75, 1]), 2),
                               rtol=3e-3)
    np.testing.assert_allclose(sub[sub.alpha == 0.5].distance, 2.5)  # the trained net's loss before training
    verdict = relevance_verdict(sub)
    assert verdict.startswith("no, Spearman rho = +") and "8 points with alpha > 0" in verdict  # rises: rho > 0
    falling = sub.assign(ratio=1.0 / sub.ratio)
    assert relevance_verdict(falling).startswith("yes, Spearman rho = -")
    flat = sub.assign(ratio=np.random.default_rng(1).permutation(np.tile([1.0, 1.1], 5)))
    assert relevance_verdict(flat).split(",")[0] in ("inconclusive", "yes", "no")


def write_runs(sweep: Path, specs, metrics_of) -> None:
    for spec in specs:
        run_dir = sweep / "runs" / spec.name
        run_dir.mkdir()
        store.write_config(run_dir, {"values": spec.values})
        metrics, updates = metrics_of(spec)
        for first in range(1, updates + 1, 8):
            part = {k: v[first - 1 : first + 7] for k, v in metrics.items()}
            store.write_metrics_part(run_dir, store.metrics_table(part, [0, 1], first, 1024), first)


def new_metrics(rng):
    """Made-up metrics of the new experiments' runs: ``spec -> ({key: [updates, 2]}, updates)``."""
    helps = {"warm_start": 0.0, "reset_all": 0.5, "l2_init": 0.3, "layernorm": 0.4, "soft_sp+layernorm": 0.6}

    def of(spec):
        arm = spec.values.get("arm", "")
        updates = 24
        nan = np.full((updates, 2), np.nan)
        m = {"return/episodic": rng.normal(0, 1, (updates, 2)) + np.linspace(0, 5, updates)[:, None]}
        if arm in ("no_perturb", "ocp_perturb"):
            zg = 0.05 if arm == "no_perturb" else 0.01
            for net in ("policy", "value"):
                for layer in ("layer_1", "layer_2"):
                    m[f"{net}/{layer}/zero_grad_ratio_rel@0.025/layer"] = np.full((updates, 2), zg)
                    m[f"{net}/{layer}/dormant_ratio@0.025"] = np.full((updates, 2), zg)
            if arm == "ocp_perturb":
                m["mitigation/ocp_perturb/perturbed"] = rng.integers(0, 5, (updates, 2)).astype(float)
        if arm in helps:
            # Weight magnitude and dead units grow without help; the final return falls with both.
            w = 0.3 + (1 - helps[arm]) * 0.2 + rng.normal(0, 0.02, 2)
            dead = 0.2 * (1 - helps[arm]) + rng.normal(0, 0.02, 2).clip(-0.01, 0.01)
            m["model/weight_m"] = np.tile(w, (updates, 1))
            m["torso/layer_2/dead_units"] = np.tile(dead, (updates, 1))  # the encoder output (J&A's measure)
            m["torso/layer_1/dead_units"] = np.tile(rng.uniform(0, 1, 2), (updates, 1))  # not a regressor
            for key in ("round/index", "round/return_train", "round/return_fresh", "round/normalized_return",
                        "round/return_heldout", "round/generalization_gap"):
                m[key] = nan.copy()
            for r, update in enumerate((8, 16, 24)):
                fresh = 1.0 + rng.normal(0, 0.01, 2)
                train = fresh * (1 - (1 - helps[arm]) * 0.2 * r) - 2 * (w - 0.3) - dead
                row = {"round/index": np.full(2, float(r)), "round/return_train": train, "round/return_fresh": fresh,
                       "round/normalized_return": train / fresh, "round/return_heldout": train - 0.1,
                       "round/generalization_gap": np.full(2, 0.1)}
                for key, value in row.items():
                    m[key][update - 1] = value
        return m, updates

    return of


def fake_new_sweep(root: Path) -> Path:
    """A sweep with ocp-perturb, ocp-task-relevance (and its ocp-fig1 runs) and juliani-ash, made-up data."""
    from plastix.experiments.task_switch import relevance_path

    sweep = root / "sweep"
    exps = [ex.load(name, "quick") for name in NEW_EXPERIMENTS]
    runs = plan(exps)
    (sweep / "runs").mkdir(parents=True)
    write_manifest(sweep, exps, runs)
    rng = np.random.default_rng(0)
    write_runs(sweep, runs, new_metrics(rng))
    out = relevance_path(sweep, "ocp-task-relevance")
    out.parent.mkdir(parents=True)
    fake_relevance(rng).to_parquet(out)
    return sweep


def test_new_analyses_render_with_their_verdicts(tmp_path):
    sweep = fake_new_sweep(tmp_path)
    page = build_report(sweep)
    html = page.read_text()
    for fig in ("ocp-perturb__return.png", "ocp-perturb__mitigations.png", "ocp-task-relevance__task_relevance.png",
                "juliani-ash__rounds.png", "juliani-ash__rounds_final.png", "juliani-ash__regression.png"):
        assert fig in html and (page.parent / fig).exists(), fig
    assert "could not be drawn" not in html, re.findall(r"could not be drawn[^<]*", html)
    verdict = lambda text: re.search(re.escape(html_escape(text)) + r'[^<]*: <span class="(\w+)">([^<]*)</span>', html)
    assert verdict("The OCP perturbation lowers the zero-gradient ratio").group(1) == "yes"
    regression = verdict("Weight magnitude and dead units both predict the final-round return")
    assert regression.group(1) == "yes" and "2/2 regressors with p &lt; 0.05" in regression.group(2), regression.group(2)
    assert verdict("Soft shrink & perturb + LayerNorm mitigates plasticity loss").group(1) == "yes"
    assert verdict("Warm start loses plasticity").group(1) == "yes"
    assert "not measured: no run with arm=crelu" in html  # CReLU is not in the quick subset
    assert verdict("activation=relu, lr 0.01: plasticity loss shrinks with task distance").group(1) == "no"
    assert verdict("Close to its own task (alpha = 0.25) PPO-ReLU").group(1) == "no"  # ratio 0.45 < 1
    assert "OLS of final-round round/normalized_return on weight_m and dead_units" in html
    assert_renders_cleanly(page, tmp_path)


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_regression_without_variation_is_not_measured():
    from plastix.report import Section, analysis_juliani_ash_regression

    rows = []
    for run, w in (("a", 0.3), ("b", 0.5), ("c", 0.4)):
        for seed in (0, 1):
            rows += [(run, seed, 8, "round/index", 0.0), (run, seed, 8, "round/return_train", 1 - w + seed / 100),
                     (run, seed, 8, "model/weight_m", w + seed / 50),
                     (run, seed, 8, "policy/layer_1/dead_units", 0.0)]
    frame = pd.DataFrame(rows, columns=["run", "seed", "update", "key", "value"]).assign(env_step=0)
    sec = Section(Path("."), "x")
    sec.figure = lambda *a, **k: None
    analysis_juliani_ash_regression(sec, frame, sorted(frame.key.unique()), {r: r for r in "abc"}, {})
    from plastix.report import REGRESSION_CLAIM, THEIR_REGRESSION_CLAIM

    verdicts = dict(sec.verdicts)
    assert verdicts[REGRESSION_CLAIM] == ("not measured: dead_units constant across runs (0); the regression "
                                          "needs variation in both")
    assert verdicts[THEIR_REGRESSION_CLAIM].startswith("not measured")  # one round: no change since round 1
    assert "OLS of final-round round/return_train on weight_m: n = 6, dof = 4" in "".join(sec.parts)


def test_regression_uses_weight_m_and_the_encoder_output_dead_units():
    """Juliani & Ash regress on weight_m (RMS of all parameters) and the dead-unit fraction of the encoder
    output (calc_dead_units on the encoder's return value): per run and seed the regressors must be those
    keys' final values, not a mean of per-kernel mean |w| or of every layer's dead units."""
    from plastix.report import encoder_output_keys, regression_data

    rows, expected = [], []
    for run, w in (("a", 0.3), ("b", 0.5), ("c", 0.4)):
        for seed in (0, 1):
            dead = 0.1 * seed + w / 10
            rows += [(run, seed, 8, "round/index", 0.0), (run, seed, 8, "round/return_train", 1 - w),
                     (run, seed, 8, "model/weight_m", w), (run, seed, 8, "torso/layer_1/weight/mean_abs", 9.0),
                     (run, seed, 8, "torso/layer_1/dead_units", 0.9), (run, seed, 8, "torso/layer_2/dead_units", dead),
                     (run, seed, 8, "torso/layer_2/dead_units_every_input", 0.7)]
            expected.append((run, seed, 1 - w, w, dead))
    frame = pd.DataFrame(rows, columns=["run", "seed", "update", "key", "value"]).assign(env_step=0)
    keys = sorted(frame.key.unique())
    assert encoder_output_keys(keys) == ["torso/layer_2/dead_units"]
    assert encoder_output_keys(["policy/layer_1/dead_units", "policy/layer_2/dead_units",
                                "value/layer_2/dead_units"]) == ["policy/layer_2/dead_units", "value/layer_2/dead_units"]
    data, key = regression_data(frame, keys, {r: r for r in "abc"})
    assert key == "round/return_train"
    got = data[["run", "seed", "y", "weight_m", "dead_units"]].sort_values(["run", "seed"])
    np.testing.assert_allclose(got[["y", "weight_m", "dead_units"]].to_numpy(),
                               np.array([e[2:] for e in sorted(expected)]), atol=1e-12)


def test_short_labels_keep_only_what_varies():
    from plastix.report import short_labels

    values = {"e=g__s=p__arm=a": {"e": "g", "s": "p", "arm": "a"}, "e=g__s=p__arm=b": {"e": "g", "s": "p", "arm": "b"}}
    assert short_labels(list(values), values) == {"e=g__s=p__arm=a": "arm=a", "e=g__s=p__arm=b": "arm=b"}
    assert short_labels(["base"], {"base": {}}) == {"base": "base"}
    two = {"x": {"a": 1, "b": 1}, "y": {"a": 2, "b": 1}}
    assert short_labels(["x", "y"], two) == {"x": "a=1", "y": "a=2"}


def test_dead_unit_and_whole_network_weight_figures():
    """The dormancy analysis draws J&A's dead units, the every-input fraction and Plasticine's active units
    per layer; the weights analysis draws J&A's weight_m and weight_diff of the whole network."""
    from plastix import report

    class Recorder:
        def __init__(self):
            self.figures, self.missing = {}, []

        def figure(self, name, caption, draw):
            self.figures[name] = caption

        def note_missing(self, text):
            self.missing.append(text)

        def table(self, *args, **kwargs):
            pass

    keys = ["policy/layer_1/dead_units", "policy/layer_1/dead_units_every_input", "policy/layer_1/active_units",
            "policy/layer_1/weight/l2", "model/weight_m", "model/weight_diff", "model/dist_init_rms"]
    frame = pd.DataFrame([("r", 0, u, k, 0.1 * u) for k in keys for u in (1, 2)],
                         columns=["run", "seed", "update", "key", "value"])
    sec = Recorder()
    report.analysis_dormancy(sec, frame, keys, {"r": "r"}, None)
    report.analysis_weights(sec, frame, keys, {"r": "r"}, None)
    dead = [name for name in sec.figures if name.startswith("dead__")]
    assert len(dead) == 3, sec.figures
    assert "weights__model" in sec.figures and "weight_m" in sec.figures["weights__model"]
    sec = Recorder()
    report.analysis_weights(sec, frame[frame.key == "policy/layer_1/weight/l2"], keys[3:4], {"r": "r"}, None)
    assert sec.missing == ["whole-network weights: no `model/weight_m`, `model/weight_diff`, `model/dist_init_rms` rows"]


def test_their_regression_uses_changes_since_the_first_round_one_point_per_variant():
    """Their notebook (analyze_helpers.py process_corrs, shared/plotting.py calculate_correlation): per
    condition x experiment, mean over seeds of mean over round ends of (x_r - x_1), for the return and each
    predictor; the predictors are read at each round's end. Hand case: 3 rounds ending at updates 8, 16, 24."""
    from plastix.report import change_since_first_round

    rows = []
    for run, k in (("a", 1.0), ("b", 2.0)):
        for seed in (0, 1):
            for r, end in enumerate((8, 16, 24)):
                rows += [(run, seed, end, "round/index", float(r)),
                         (run, seed, end, "round/return_train", 10 - k * r + seed)]
                for u in (end - 4, end):  # two measurements per round: the one at the round's end counts
                    rows += [(run, seed, u, "model/weight_m", 0.1 * k * r + u / 1000 + seed),
                             (run, seed, u, "torso/layer_2/dead_units", 0.2 * k * r * (u == end)),
                             (run, seed, u, "torso/layer_1/dead_units", 5.0)]  # not the encoder output
    frame = pd.DataFrame(rows, columns=["run", "seed", "update", "key", "value"]).assign(env_step=0)
    data = change_since_first_round(frame, sorted(frame.key.unique()), {"a": "A", "b": "B"}).set_index("run")
    # changes over rounds 0, 1, 2: y (0, -k, -2k) -> mean -k; weight_m (0, 0.1k + 0.008, 0.2k + 0.016) ->
    # mean 0.1k + 0.008; dead units (0, 0.2k, 0.4k) -> mean 0.2k; the seeds' offsets cancel.
    for run, k in (("a", 1.0), ("b", 2.0)):
        np.testing.assert_allclose(data.loc[run, ["y", "weight_m", "dead_units"]].to_numpy(np.float64),
                                   [-k, 0.1 * k + 0.008, 0.2 * k], atol=1e-12)
    assert list(data.variant) == ["A", "B"]


def test_an_analysis_is_one_decorated_function(tmp_path):
    """Adding an analysis is registering one function: an experiment file may then name it, and the report
    runs it on the experiment's metrics (here a toy analysis registered from the test)."""
    from plastix.report.registry import ANALYSES, analysis

    seen = {}

    @analysis("toy_mean", "the mean of loss/value per run (a test's toy)")
    def toy(sec, frame, keys, run_labels, exp):
        means = frame[frame.key == "loss/value"].groupby("run").value.mean()
        seen.update(means)
        sec.verdict("toy: the mean loss is below 1", f"yes, {len(means)} runs")

    try:
        text = (Path(ex.__file__).parent / "ocp-fig1.toml").read_text()
        path = tmp_path / "toy.toml"
        path.write_text(text.replace('analyses = [', 'analyses = ["toy_mean", ', 1))
        exp = ex.load(path, "quick")
        assert exp.analyses[0] == "toy_mean"
        runs = plan([exp])
        sweep = tmp_path / "sweep"
        (sweep / "runs").mkdir(parents=True)
        write_manifest(sweep, [exp], runs)
        write_runs(sweep, runs, lambda spec: ({"loss/value": np.full((8, 2), 0.5)}, 8))
        html = build_report(sweep).read_text()
        assert seen == {r.name: 0.5 for r in runs}
        assert 'toy: the mean loss is below 1: <span class="yes">yes, 2 runs</span>' in html
    finally:
        ANALYSES.pop("toy_mean")
    with pytest.raises(ex.ExperimentError, match="unknown analysis 'toy_mean'"):
        ex.load(path, "quick")


def test_the_vectorised_statistics_equal_their_loops():
    """The report's fast paths give numpy's and the loop's numbers bit for bit: the bootstrap band's
    column-wise nanquantile, the stratified bootstrap's IQM per replicate, and binned curves (to 1e-12)."""
    from plastix.report.stats import binned_curves, iqm_rows, nanquantile_columns

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 7))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 3] = np.nan  # a column without values
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        for q in (0.025, 0.5, 0.975):
            assert np.array_equal(nanquantile_columns(a, q), np.nanquantile(a, q, axis=0), equal_nan=True)
    for n, tasks in ((5, 1), (37, 3), (300, 1)):
        samples = rng.normal(size=(50, n, tasks))
        assert np.array_equal(iqm_rows(samples), [iqm(s) for s in samples])
    rows = pd.DataFrame({"seed": rng.integers(0, 5, 3000), "env_step": rng.integers(0, 10**6, 3000),
                         "value": rng.normal(size=3000)})
    x, values = binned_curves(rows)
    edges = np.linspace(rows.env_step.min(), rows.env_step.max(), 61)
    b = np.clip(np.searchsorted(edges, rows.env_step, side="right") - 1, 0, 59)
    wide = rows.assign(bin=b).pivot_table(index="seed", columns="bin", values="value", aggfunc="mean")
    np.testing.assert_allclose(values, wide.reindex(columns=range(60)).to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(x, (edges[:-1] + edges[1:]) / 2)


def test_a_shipped_experiment_file_is_named_by_its_package_path_not_the_checkout_that_ran_it():
    from plastix.report.page import shown_path

    assert shown_path("/work/evid/src/plastix/experiments/ocp-fig1.toml") == "plastix/experiments/ocp-fig1.toml"
    assert shown_path("/home/me/my-exp.toml") == "/home/me/my-exp.toml"  # a user's file: as given
    assert shown_path("/home/me/experiments/x.toml") == "/home/me/experiments/x.toml"
