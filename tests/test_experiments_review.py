"""review-fig1-control, review-theorem1 and lyle-curvature: their files, the appended arms, shared runs, their
analyses on hand-made metrics, and (slow) every one of them trained at a tiny size and reported."""

import dataclasses
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plastix import experiments as ex
from plastix import store
from plastix.config import validate
from plastix.report import build_report
from plastix.report.analyses import curvature_probe, dormancy_speed, theorem1
from plastix.runner import plan, write_manifest

NAMES = ["review-fig1-control", "review-theorem1", "lyle-curvature"]

APPEND = """
description = "append"
arms_mode = "append"
[base]
preset = "ocp"
total_timesteps = 4096
num_steps = 256
num_minibatches = 4
[grid]
activation = ["relu", "tanh"]
[arms]
redo = { mitigations = "redo", redo = { tau = 0.025 } }
gelu_l2 = { activation = "gelu", mitigations = "l2" }
[[claims]]
text = "redo below relu"
keys = "*/layer_*/dormant_ratio@0.025"
compare = "less"
a = { arm = "redo" }
b = { activation = "relu" }
[quick]
seeds = [0, 1]
[paper]
seeds = [0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------- appended arms
def test_appended_arms_are_variants_beside_the_grid_with_plain_grid_names(tmp_path):
    exp = ex.load(write(tmp_path, APPEND), "quick")
    assert [v.name for v in exp.variants] == ["activation=relu", "activation=tanh", "arm=redo", "arm=gelu_l2"]
    redo, gelu = (ex.config_for(v.overrides, exp.seeds) for v in exp.variants[2:])
    assert redo.activation == "relu" and redo.mitigations == "redo" and redo.redo.tau == 0.025  # the preset's ReLU
    assert gelu.activation == "gelu" and gelu.mitigations == "l2"  # an appended arm may set a grid key
    assert exp.variants[0].overrides == {**exp.base, "activation": "relu"}  # the same config as without arms
    crossed = ex.load(write(tmp_path, APPEND.replace('arms_mode = "append"\n', "").replace(
        'gelu_l2 = { activation = "gelu", mitigations = "l2" }\n', "")), "quick")
    assert [v.name for v in crossed.variants] == ["activation=relu__arm=redo", "activation=tanh__arm=redo"]


@pytest.mark.parametrize("old, new, expected", [
    ('arms_mode = "append"', 'arms_mode = "zip"', ["arms_mode: bad value 'zip'", "cross, append"]),
    ('arms_mode = "append"', "", ["arms.gelu_l2.activation: also a grid key", 'arms_mode = "append"']),
    ("[arms]\nredo = { mitigations = \"redo\", redo = { tau = 0.025 } }\n"
     "gelu_l2 = { activation = \"gelu\", mitigations = \"l2\" }\n", "", ["arms_mode: only meaningful with [arms]"]),
])
def test_a_bad_arms_mode_fails_naming_it(tmp_path, old, new, expected):
    assert old in APPEND
    text = APPEND.replace(old, new, 1)
    if "[arms]" not in text:  # the claim names an arm: point it at a grid variant
        text = text.replace('a = { arm = "redo" }', 'a = { activation = "tanh" }')
    with pytest.raises(ex.ExperimentError) as err:
        ex.load(write(tmp_path, text), "quick")
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


# ------------------------------------------------------------------------------------------ shipped files
@pytest.mark.parametrize("scale", ex.SCALES)
def test_the_review_experiments_share_the_runs_they_have_in_common(scale):
    """review-fig1-control's relu and none runs are ocp-fig1's; review-theorem1 adds only silu to them."""
    fig1, control, theorem = (ex.load(n, scale) for n in ("ocp-fig1", "review-fig1-control", "review-theorem1"))
    runs = plan([fig1, control, theorem])
    assert [r.name for r in runs] == ["activation=relu", "activation=none", "activation=tanh", "activation=gelu",
                                      "activation=softplus", "arm=relu+redo", "arm=relu+ocp_perturb", "activation=silu"]
    configs = {r.name: ex.config_for(r.overrides, r.seeds) for r in runs}
    relu = configs["activation=relu"]
    for name, cfg in configs.items():  # one architecture, env, budget and seed set: only dormancy varies
        assert (cfg.preset, cfg.env_id, cfg.hidden_sizes, cfg.total_timesteps, cfg.seed_list) == \
               (relu.preset, relu.env_id, relu.hidden_sizes, relu.total_timesteps, relu.seed_list), name
        validate(cfg, check_env=True)
    assert configs["arm=relu+redo"].activation == configs["arm=relu+ocp_perturb"].activation == "relu"
    assert configs["arm=relu+redo"].redo.tau == relu.overlap_tau  # ReDo recycles what the analysis counts
    perturb = ex.load("ocp-perturb", scale)
    assert configs["arm=relu+ocp_perturb"].ocp_perturb == ex.config_for(perturb.variants[1].overrides,
                                                                        perturb.seeds).ocp_perturb
    assert {c.activation for c in configs.values()} == {"relu", "none", "tanh", "gelu", "softplus", "silu"}


@pytest.mark.parametrize("scale", ex.SCALES)
def test_lyle_curvature_measures_curvature_and_the_probe_across_switches(scale):
    exp = ex.load("lyle-curvature", scale)
    assert {v.name for v in exp.variants} == {f"layer_norm={ln}__arm={a}" for ln in (False, True)
                                              for a in ("halfcheetah_task", "gridworld_permute")}
    for v in exp.variants:
        cfg = ex.config_for(v.overrides, exp.seeds)
        validate(cfg, check_env=True)
        assert cfg.layer_norm == v.values["layer_norm"] and cfg.curvature_every > 0 and cfg.probe_every > 0
        assert (cfg.env_id, cfg.shift, cfg.rounds) in {("HalfCheetah-v4", "task", 2), ("GridWorld-v0", "permute", 4)}
        assert not cfg.rebuild_optimizer_at_switch  # LayerNorm is the only difference between paired runs
        per_round = cfg.updates_per_round
        assert per_round // cfg.curvature_every >= 4 and per_round // cfg.probe_every >= 4  # >= 4 points a round
    if scale == "evidence":
        assert len(exp.seeds) >= 5


# ------------------------------------------------------------------------------------------- analyses
def frame_of(rows: dict, updates: int, run: str, seeds=(0, 1), steps_per_update: int = 2048) -> pd.DataFrame:
    """Long rows ``run, seed, update, env_step, key, value`` of ``{key: [updates, seeds]}`` (NaN not written)."""
    out = []
    for key, values in rows.items():
        for u in range(updates):
            for i, s in enumerate(seeds):
                if np.isfinite(values[u, i]):
                    out.append((run, s, u + 1, (u + 1) * steps_per_update, key, float(values[u, i])))
    return pd.DataFrame(out, columns=["run", "seed", "update", "env_step", "key", "value"])


def test_convergence_speed_is_the_time_averaged_return_and_dormancy_the_layer_and_time_mean():
    updates = 5
    ret = np.stack([np.arange(updates, dtype=float), np.full(updates, 2.0)], axis=1)  # seed 0: 0..4, seed 1: 2
    dorm = {"policy/layer_1/dormant_ratio@0.025": np.full((updates, 2), 0.1),
            "value/layer_2/dormant_ratio@0.025": np.tile([[0.3, 0.5]], (updates, 1)),
            "value/layer_2/dormant_ratio@0.1": np.ones((updates, 2))}  # another tau: not read
    frame = frame_of({"return/episodic": ret, **dorm}, updates, "r")
    speed = dormancy_speed.convergence_speed(frame)
    assert speed[("r", 0)] == pytest.approx(2.0) and speed[("r", 1)] == pytest.approx(2.0)  # linear 0..4: mean 2
    dormancy = dormancy_speed.dormancy_summary(frame)
    assert dormancy[("r", 0)] == pytest.approx(0.2) and dormancy[("r", 1)] == pytest.approx(0.3)


def test_dormancy_speed_verdict_leaves_no_act_out():
    rng = np.random.default_rng(0)
    dorm = np.linspace(0.0, 0.3, 12)
    data = pd.DataFrame({"run": [f"r{i // 2}" for i in range(12)], "seed": np.arange(12) % 2, "dormancy": dorm,
                         "speed": 100 * dorm + rng.normal(0, 0.5, 12), "equal_capacity": True})
    assert dormancy_speed.spearman_verdict(data).startswith("yes, Spearman rho = +")
    assert dormancy_speed.spearman_verdict(data.assign(speed=-data.speed)).startswith("no, Spearman rho = -")
    # A No-Act point far off the trend does not enter the equal-capacity correlation.
    with_no_act = pd.concat([data.assign(speed=-data.speed), pd.DataFrame({
        "run": ["none"] * 6, "seed": range(6), "dormancy": [1.0] * 6, "speed": [1e3] * 6, "equal_capacity": False})])
    assert dormancy_speed.spearman_verdict(with_no_act).startswith("no, Spearman rho = -1.00")
    flat = data.assign(speed=rng.permutation(np.tile([1.0, 2.0], 6)))
    assert dormancy_speed.spearman_verdict(flat).split(",")[0] in ("inconclusive", "yes", "no")
    assert dormancy_speed.spearman_verdict(data.head(2)).startswith("not measured")


def test_theorem1_leaves_out_measurements_where_both_sets_are_empty():
    """Layer A: 3 measurements with both sets empty (overlap 1 by definition) and one with overlap 0.5;
    layer B: always vacuous. The informative mean of A is 0.5, B has none."""
    updates = 4
    zero = np.zeros((updates, 1))
    a_dorm = np.array([[0.0], [0.0], [0.0], [0.2]])
    rows = {"policy/layer_1/overlap/dormant_zero_grad_rel@0.025": np.array([[1.0], [1.0], [1.0], [0.5]]),
            "policy/layer_1/dormant_ratio@0.025": a_dorm, "policy/layer_1/zero_grad_ratio_rel@0.025/layer": a_dorm,
            "policy/layer_2/overlap/dormant_zero_grad_rel@0.025": np.ones((updates, 1)),
            "policy/layer_2/dormant_ratio@0.025": zero, "policy/layer_2/zero_grad_ratio_rel@0.025/layer": zero}
    seeds = theorem1.per_seed(theorem1.overlap_rows(frame_of(rows, updates, "r", seeds=(0,)), 0.025))
    a = seeds[seeds.layer == "policy layer_1"].iloc[0]
    b = seeds[seeds.layer == "policy layer_2"].iloc[0]
    assert a.overlap == 0.5 and a.vacuous_share == 0.75 and a.criterion == "relative"
    assert np.isnan(b.overlap) and b.vacuous_share == 1.0
    assert theorem1.verdict(seeds).startswith("no, 0/1 seeds")
    assert theorem1.verdict(seeds[seeds.layer == "policy layer_2"]).startswith("not measured")


def test_curvature_probe_rounds_follow_round_index_and_the_probe_mean_of_heads():
    updates = 8
    nan = np.full((updates, 1), np.nan)
    index = nan.copy()
    index[3], index[7] = 0, 1  # rounds end at updates 4 and 8
    top = np.arange(1.0, updates + 1)[:, None]
    rows = {"round/index": index, curvature_probe.TOP_EIG: top,
            "probe/policy/final_loss": top * 0.1, "probe/value/final_loss": top * 0.3}
    rounds = curvature_probe.per_round(frame_of(rows, updates, "r", seeds=(0,)))
    get = lambda key, r: rounds[(rounds.key == key) & (rounds["round"] == r)].value.item()
    assert get(curvature_probe.TOP_EIG, 0) == 2.5 and get(curvature_probe.TOP_EIG, 1) == 6.5
    assert get(curvature_probe.PROBE, 1) == pytest.approx(6.5 * 0.2)
    points = curvature_probe.correlation_points(rounds)
    assert len(points) == 2 and points.probe.tolist() == pytest.approx([0.5, 1.3])


def metrics_of(spec, updates: int = 16, rng=np.random.default_rng(0)):
    """Made-up metrics of the review and Lyle runs: dormancy falls with the arm's index, return rises with it."""
    values = spec.values
    act = values.get("activation", "relu")
    level = {"relu": 0.3, "none": 0.0, "tanh": 0.05, "gelu": 0.1, "softplus": 0.08, "silu": 0.1}.get(act, 0.15)
    m = {"return/episodic": np.linspace(0, 1000 * level, updates)[:, None] + rng.normal(0, 1, (updates, 2))}
    for net in ("policy", "value"):
        for layer in ("layer_1", "layer_2"):
            p = f"{net}/{layer}"
            dorm = np.full((updates, 2), level) + rng.uniform(0, 0.01, (updates, 2))
            m[f"{p}/dormant_ratio@0.025"] = dorm
            m[f"{p}/zero_grad_ratio/layer"] = dorm if act == "relu" else np.zeros((updates, 2))
            m[f"{p}/zero_grad_ratio_rel@0.025/layer"] = dorm
            m[f"{p}/overlap/dormant_zero_grad"] = np.full((updates, 2), 0.95 if act == "relu" else 0.0)
            m[f"{p}/overlap/dormant_zero_grad_rel@0.025"] = np.full((updates, 2), 0.95 if act == "relu" else 0.4)
    if "layer_norm" in values:
        index = np.full((updates, 2), np.nan)
        for r, end in enumerate(range(updates // 4, updates + 1, updates // 4)):
            index[end - 1] = r
        m["round/index"] = index
        m["round/return_train"] = np.where(np.isnan(index), np.nan, 1.0)
        top = rng.uniform(1, 10, (updates, 2)) * (0.5 if values["layer_norm"] else 1.0)
        m[curvature_probe.TOP_EIG] = top
        m[curvature_probe.TRACE] = top * 5
        m["probe/policy/final_loss"] = top / 10
        m["probe/value/final_loss"] = top / 20
    return m, updates


def test_the_three_analyses_render_with_their_verdicts(tmp_path):
    sweep = tmp_path / "sweep"
    # Only the new analyses (the others are tested in test_report.py; each figure costs seconds here).
    new = {"review-fig1-control": "dormancy_speed", "review-theorem1": "theorem1", "lyle-curvature": "curvature_probe"}
    exps = [dataclasses.replace(ex.load(name, "quick"), analyses=[new[name]]) for name in NAMES]
    runs = plan(exps)
    (sweep / "runs").mkdir(parents=True)
    write_manifest(sweep, exps, runs)
    for spec in runs:
        run_dir = sweep / "runs" / spec.name
        run_dir.mkdir()
        store.write_config(run_dir, {"values": spec.values})
        metrics, updates = metrics_of(spec)
        store.write_metrics_part(run_dir, store.metrics_table(metrics, [0, 1], 1, 2048), 1)
    page = build_report(sweep)
    text = page.read_text()
    for fig in ("review-fig1-control__dormancy_speed.png", "review-theorem1__theorem1.png",
                "lyle-curvature__curvature_probe.png", "lyle-curvature__curvature_probe_scatter.png"):
        assert fig in text and (page.parent / fig).exists(), fig
    assert "could not be drawn" not in text, re.findall(r"could not be drawn[^<]*", text)
    verdict = lambda claim: re.search(re.escape(html.escape(claim)) + r'[^<]*: <span class="(\w+)">([^<]*)</span>', text)
    # Made up: more dormancy, higher return among the equal-capacity runs.
    assert verdict(dormancy_speed.CLAIM).group(1) == "yes"
    assert verdict("Theorem 1 for activation=relu (not C^1): the dormant and relative").group(1) == "yes"
    assert verdict("Theorem 1 for activation=gelu (C^1): the dormant and relative").group(1) == "no"
    # Made up: the probe loss is proportional to the top eigenvalue in every run.
    assert verdict("halfcheetah_task: curvature is linked to plasticity").group(1) == "yes"
    assert verdict("LayerNorm lowers the top Hessian eigenvalue").group(1) == "yes"


# ------------------------------------------------------------------------------------- tiny real runs
TINY = dict(total_timesteps=1024, num_steps=128, num_minibatches=2, update_epochs=1, log_every=1, checkpoint_every=4,
            diagnostics_every=1, curvature_every=1, probe_every=1, probe_steps=5, curvature_iters=3,
            curvature_samples=2)
TINY_GRIDWORLD = dict(total_timesteps=1024, num_steps=8, num_minibatches=2, grid_size=4, grid_max_steps=8)


def tiny(exp: ex.Experiment) -> ex.Experiment:
    """``exp`` at a few updates per run: HalfCheetah 8 updates of 128 steps, the gridworld 4 of 256 (32 envs);
    scheduled surgeries every 2 gradient steps so that they fire."""
    def shrink(overrides: dict) -> dict:
        out = {**overrides, **(TINY_GRIDWORLD if overrides.get("env_id") == "GridWorld-v0" else {})}
        return {k: (2 if k.endswith(".every") else v) for k, v in out.items()}

    return dataclasses.replace(exp, base=shrink({**exp.base, **TINY}),
                               arms={a: shrink(o) for a, o in exp.arms.items()})


@pytest.mark.slow
def test_every_review_experiment_trains_at_a_tiny_size_and_reports(tmp_path):
    from plastix.runner import run_sweep

    exps = [tiny(ex.load(name, "quick")) for name in NAMES]
    sweep = run_sweep(exps, tmp_path / "sweep", jobs=2, retries=0, log=lambda *a: None)
    page = build_report(sweep)
    text = page.read_text()
    assert "could not be drawn" not in text, re.findall(r"could not be drawn[^<]*", text)
    for fig in ("review-fig1-control__dormancy_speed.png", "review-theorem1__theorem1.png",
                "lyle-curvature__curvature_probe.png"):
        assert (page.parent / fig).exists(), fig
    df = store.read_metrics(sweep / "runs" / "layer_norm=True__arm=gridworld_permute")
    assert {"probe/policy/final_loss", "probe/value/final_loss", curvature_probe.TOP_EIG, "round/index"} <= set(df.key)
    redo = store.read_metrics(sweep / "runs" / "arm=relu+redo")
    assert redo.key.str.startswith("mitigation/redo").any()


def test_the_vectorised_iqm_bootstrap_equals_the_per_replicate_one():
    """``stratified_bootstrap_ci`` computes IQM replicates all at once: the same CI as one call per replicate."""
    from plastix.report.stats import iqm, stratified_bootstrap_ci

    rng = np.random.default_rng(3)
    for shape in [(5,), (7, 3), (2,), (10, 1)]:
        x = rng.normal(size=shape)
        assert stratified_bootstrap_ci(x) == pytest.approx(stratified_bootstrap_ci(x, statistic=lambda s: iqm(s)),
                                                           rel=0, abs=1e-12)
