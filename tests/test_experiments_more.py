"""ocp-perturb, ocp-task-relevance and juliani-ash: their files validate; arms, alphas and the new claim
options are checked with clear errors; the task-relevance probe on hand-checkable targets."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix import experiments as ex
from plastix.config import validate
from plastix.experiments import task_switch
from plastix.nets import MLP
from plastix.probes import eq15_dataset, interpolated_targets, regression_probe

ARMS = """
description = "arms"
[base]
preset = "ocp"
total_timesteps = 4096
num_steps = 256
num_minibatches = 4
rounds = 2
[grid]
activation = ["relu", "tanh"]
[arms]
plain = {}
reset_all = { mitigations = "reset", reset = { layers = "all" } }
"l2+init" = { mitigations = "l2_init", l2_init = { lam = 0.01 } }
[[claims]]
text = "reset helps"
keys = "return/episodic"
compare = "not_less"
tolerance = 0.1
a = { arm = "reset_all" }
b = { arm = "plain" }
[quick]
seeds = [0, 1]
arms = ["plain", "l2+init"]
[paper]
seeds = [0]
"""

RELEVANCE = """
description = "relevance"
kind = "task-switch"
source = "ocp-fig1"
analyses = ["task_relevance"]
[task_switch]
alphas = [0.0, 0.5, 1.0]
[quick]
seeds = [0]
[paper]
seeds = [0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def fails(tmp_path, text, *expected, scale="quick"):
    path = write(tmp_path, text)
    with pytest.raises(ex.ExperimentError) as err:
        ex.load(path, scale)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)


# ------------------------------------------------------------------------------------ shipped files
def test_the_three_experiments_ship():
    assert {"ocp-perturb", "ocp-task-relevance", "juliani-ash"} <= set(ex.names())
    for name in ("ocp-perturb", "ocp-task-relevance", "juliani-ash"):
        assert ex.load(name, "quick").claims


@pytest.mark.parametrize("scale", ex.SCALES)
def test_ocp_perturb_compares_with_and_without_on_the_same_seeds(scale):
    exp = ex.load("ocp-perturb", scale)
    assert [v.values for v in exp.variants] == [{"arm": "no_perturb"}, {"arm": "ocp_perturb"}]
    off, on = (ex.config_for(v.overrides, exp.seeds) for v in exp.variants)
    assert off.mitigations == "" and on.mitigations == "ocp_perturb"
    assert off.seed_list == on.seed_list and off.env_id == on.env_id == "HalfCheetah-v4"
    assert off.preset == on.preset == "ocp" and off.activation == on.activation == "relu"
    assert on.ocp_perturb.every == on.num_minibatches * on.update_epochs  # once per PPO update
    # Apart from the perturbation, the two runs are the same config.
    import dataclasses

    assert dataclasses.replace(on, mitigations="", ocp_perturb=off.ocp_perturb) == off
    # The zero-gradient claim reads the diagnostics' relative ratio at the perturbation's own threshold.
    assert on.ocp_perturb.relative and on.ocp_perturb.threshold == on.overlap_tau
    claim = exp.claims[-1]
    assert f"zero_grad_ratio_rel@{on.overlap_tau:g}" in claim["keys"]
    for v in exp.variants:
        validate(ex.config_for(v.overrides, exp.seeds), check_env=True)
    if scale == "paper":
        assert on.total_timesteps == 20_000_000


def test_ocp_task_relevance_interpolates_from_the_fig1_value_nets():
    exp = ex.load("ocp-task-relevance", "quick")
    assert exp.kind == "task-switch" and exp.source == "ocp-fig1" and exp.analyses == ["task_relevance"]
    alphas = exp.task_switch["alphas"]
    assert alphas[0] == 0.0 and alphas[-1] == 1.0 and alphas == sorted(alphas) and len(alphas) >= 3
    assert exp.task_switch["n_train"] == 1000 and exp.task_switch["learning_rates"] == [0.01, 0.005]
    assert ex.load("ocp-task-relevance", "paper").task_switch["steps"] > exp.task_switch["steps"]


def test_juliani_ash_quick_is_a_subset_of_the_paper_grid():
    quick, paper = ex.load("juliani-ash", "quick"), ex.load("juliani-ash", "paper")
    assert paper.grid == {"env_id": ["GridWorld-v0", "CoinrunEasy-v0"], "shift": ["permute", "window", "expand"]}
    expected = {"warm_start", "reset_all", "reset_final", "l2", "l2_init", "shrink_perturb", "soft_sp", "crelu",
                "injection", "layernorm", "redo", "soft_sp+layernorm", "l2_init+layernorm"}
    assert set(paper.arms) == expected and len(paper.variants) == 2 * 3 * len(expected)
    assert paper.seeds == [0, 1, 2, 3, 4] and paper.base["rounds"] == 10
    assert set(quick.arms) < set(paper.arms) and quick.grid == {"env_id": ["GridWorld-v0"], "shift": ["permute"]}
    assert "soft_sp+layernorm" in quick.arms and "warm_start" in quick.arms
    assert {"rounds", "juliani_ash_regression"} <= set(quick.analyses)
    for exp in (quick, paper):
        for v in exp.variants:
            cfg = ex.config_for(v.overrides, exp.seeds)
            # ReLU, or CReLU in the crelu arm (the config says what runs: plastix.config.canonical)
            assert cfg.baseline == "fresh" and cfg.rounds > 1 and cfg.activation in ("relu", "crelu")
            assert (cfg.activation == "crelu") == ("crelu" in cfg.mitigations)
            assert cfg.diagnostics_every > 0  # weight magnitude and dead units for the regression
            validate(cfg, check_env=True)  # the env, the shift and the mitigations fit together
    by_arm = {v.values["arm"]: ex.config_for(v.overrides, paper.seeds) for v in paper.variants[:len(expected)]}
    assert by_arm["reset_all"].reset.layers == "all"
    assert by_arm["reset_final"].reset.layers == ("policy_output", "value_output")  # their policy and value heads
    assert by_arm["reset_all"].mitigations == "reset" and by_arm["reset_final"].mitigations == "reset"
    assert all(c.rebuild_optimizer_at_switch and c.network == "juliani-ash" for c in by_arm.values())
    assert (by_arm["l2"].l2.weight_decay, by_arm["l2"].l2.mode) == (1e-3, "decoupled")  # AdamW
    assert by_arm["l2_init"].l2_init == type(by_arm["l2_init"].l2_init)(lam=0.01, form="norm", before_clip=True)
    assert (by_arm["injection"].injection.head_layers, by_arm["injection"].injection.freeze_head) == (1, False)
    assert (by_arm["shrink_perturb"].shrink_perturb.lam, by_arm["shrink_perturb"].shrink_perturb.sigma) == (0.5, 0.5)
    assert by_arm["soft_sp+layernorm"].mitigations == "soft_sp,layernorm"
    assert by_arm["warm_start"].mitigations == ""


def test_injection_validates_on_the_juliani_ash_environments():
    from plastix.config import ConfigError

    exp = ex.load("juliani-ash", "paper")
    for env in exp.grid["env_id"]:
        overrides = {**exp.variants[0].overrides, "env_id": env, "mitigations": "injection"}
        validate(ex.config_for({**overrides, "injection.head_layers": 1}, exp.seeds), check_env=True)
        with pytest.raises(ConfigError, match="--injection.head_layers: 2 on --network juliani-ash"):
            validate(ex.config_for(overrides, exp.seeds), check_env=True)  # their Injector wraps the linear heads


# ------------------------------------------------------------------------------------ arms schema
def test_arms_cross_the_grid_and_scales_pick_a_subset(tmp_path):
    path = write(tmp_path, ARMS)
    quick = ex.load(path, "quick")
    assert [v.name for v in quick.variants] == [
        "activation=relu__arm=plain", "activation=relu__arm=l2+init",
        "activation=tanh__arm=plain", "activation=tanh__arm=l2+init",
    ]
    assert quick.variants[1].values == {"activation": "relu", "arm": "l2+init"}
    assert quick.variants[1].overrides["mitigations"] == "l2_init"
    assert quick.variants[1].overrides["l2_init.lam"] == 0.01 and "mitigations" not in quick.variants[0].overrides
    paper = ex.load(path, "paper")
    assert [v.values["arm"] for v in paper.variants[:3]] == ["plain", "reset_all", "l2+init"]
    cfg = ex.config_for(paper.variants[1].overrides, paper.seeds)
    assert cfg.mitigations == "reset" and cfg.reset.layers == "all"
    from plastix.cli import parse_train_args
    from plastix.runner import config_flags

    assert parse_train_args(config_flags(ex.config_for(paper.variants[2].overrides, [0], run_dir="x"))) == \
        ex.config_for(paper.variants[2].overrides, [0], run_dir="x")


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('arms = ["plain", "l2+init"]', 'arms = ["plain", "nope"]', ["quick.arms", "unknown arm 'nope'", "reset_all"]),
        ('arms = ["plain", "l2+init"]', 'arms = "plain"', ["quick.arms", "list of distinct arm names"]),
        ("plain = {}", 'plain = { activation = "relu" }', ["arms.plain.activation", "also a grid key"]),
        ("plain = {}", "plain = { learning_rat = 0.1 }", ["arms.plain.learning_rat", "unknown TrainConfig option"]),
        ("plain = {}", 'plain = { num_steps = "x" }', ["arms.plain.num_steps", "expected int"]),
        ("plain = {}", "plain = 3", ["arms.plain", "must be a table"]),
        ("plain = {}", '"pl ain" = {}', ["arms.pl ain", "bad arm name"]),
        ('a = { arm = "reset_all" }', 'a = { arm = "reset" }', ["claims[0].a.arm", "unknown arm 'reset'"]),
        ('compare = "not_less"', 'compare = "no_worse"', ["claims[0].compare", "not_less"]),
        ('tolerance = 0.1', 'tolerance = 0.1\ncombine = "max"', ["claims[0].combine", "'max'", "every, mean"]),
        ('b = { arm = "plain" }', "", ["claims[0].b", "required for compare = 'not_less'"]),
        ('reset = { layers = "all" }', 'reset = { layers = "all" }, redo = { every = 0 }',
         ["variant", "redo.every", "must be >= 1"]),
    ],
)
def test_bad_arms_and_claims_fail_with_their_name(tmp_path, old, new, expected):
    assert old in ARMS
    text = ARMS.replace(old, new, 1)
    if "redo" in new:
        text = text.replace('mitigations = "reset"', 'mitigations = "reset,redo"')
        text = text.replace('arms = ["plain", "l2+init"]', 'arms = ["reset_all"]')
    fails(tmp_path, text, *expected)


def test_arms_only_with_train_experiments(tmp_path):
    fails(tmp_path, RELEVANCE.replace("[quick]", "[arms]\nx = {}\n[quick]"), "arms: only allowed with kind = 'train'")


# ------------------------------------------------------------------------------------ alphas schema
def test_alphas_are_validated(tmp_path):
    exp = ex.load(write(tmp_path, RELEVANCE), "quick")
    assert exp.task_switch["alphas"] == [0.0, 0.5, 1.0] and "task_relevance" in exp.analyses
    for bad in ("[0.5]", "[0.0, 1.5]", "[0.5, 0.5]", '"0,1"', "[-0.1, 0.2]", "[true, false]", "[[0], [1]]"):
        fails(tmp_path, RELEVANCE.replace("alphas = [0.0, 0.5, 1.0]", f"alphas = {bad}"),
              "task_switch.alphas: bad value", "at least 2 distinct numbers in [0, 1]")
    fails(tmp_path, RELEVANCE.replace("[quick]\nseeds = [0]", "[quick]\nseeds = [0]\ntask_switch = { alphaz = [0, 1] }"),
          "quick.task_switch.alphaz: unknown key", "alphas")
    # The plain task switch has no alphas key (its settings, and so its cached results, are unchanged).
    assert "alphas" not in ex.load("ocp-task-switch", "quick").task_switch


# ------------------------------------------------------------------------------- task-relevance probe
HIDDEN = (16, 16)


def fake_source(tmp_path: Path, monkeypatch, exp_name: str) -> tuple[Path, dict]:
    """A sweep folder whose one source run ``r`` has random 'trained' value nets (no training)."""
    sweep = tmp_path / "sweep"
    (sweep / "runs" / "r").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"experiments": {exp_name: {"runs": ["r"]}}, "runs": {}}))
    cfg = ex.config_for({"preset": "ocp", "hidden_sizes": HIDDEN}, [0, 1])
    net = MLP(HIDDEN, "relu", 1, 1.0, False)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray([3, 4]))
    trained = jax.lax.map(lambda k: net.init(k, jnp.zeros((1, 17)))["params"], keys)
    # Make the 'trained' nets differ from any fresh init: scale the head.
    trained = jax.tree.map(lambda x: 3.0 * x, trained)
    monkeypatch.setattr(task_switch, "final_value_params", lambda run_dir: (cfg, trained))
    return sweep, dict(net=net, trained=trained)


def small_settings(**extra):
    return {**ex.TASK_SWITCH_DEFAULTS, "n_train": 64, "n_test": 32, "steps": 5, "learning_rates": [0.01, 0.005],
            **extra}


def make_exp(name: str, settings: dict) -> ex.Experiment:
    return ex.Experiment(name=name, description="", kind="task-switch", scale="quick", path="x", seeds=[0, 1],
                         base={}, grid={}, analyses=["task_relevance"], claims=[], source="ocp-fig1",
                         task_switch=settings)


def test_task_relevance_targets_sit_at_distance_alpha(tmp_path, monkeypatch):
    sweep, nets = fake_source(tmp_path, monkeypatch, "rel")
    settings = small_settings(alphas=[0.0, 0.5, 1.0])
    out = task_switch.run_task_switch(make_exp("rel", settings), sweep)
    assert out == task_switch.relevance_path(sweep, "rel")
    df = pd.read_parquet(out)
    assert list(df.columns) == ["source", "seed", "alpha", "lr", "step", "split", "loss"]
    assert set(df.source) == {"r", "random-init/r"} and set(df.alpha) == {0.0, 0.5, 1.0}
    assert len(df) == 2 * 2 * 3 * 2 * 6 * 2  # sources x seeds x alphas x lrs x (steps + 1) x splits
    start = df[(df.source == "r") & (df.step == 0) & (df.split == "test")].groupby(["seed", "alpha"]).loss.mean()
    for seed in (0, 1):
        # Before training the trained net's loss is mean((y_alpha - v0)^2) = alpha^2 * mean((eq15 - v0)^2).
        assert start[(seed, 0.0)] == pytest.approx(0.0, abs=1e-10)
        assert start[(seed, 0.5)] == pytest.approx(0.25 * start[(seed, 1.0)], rel=1e-4)
    # Hand-check one curve against the probe itself.
    x_tr, y_tr, x_te, y_te = eq15_dataset(jax.random.PRNGKey(0), 64, 32)
    net = nets["net"]
    p0 = jax.tree.map(lambda x: x[1], nets["trained"])
    apply_fn = lambda p, x: net.apply({"params": p}, x)
    own_tr, own_te = apply_fn(p0, x_tr)[:, 0], apply_fn(p0, x_te)[:, 0]
    curves = regression_probe(apply_fn, p0, x_tr, interpolated_targets(own_tr, y_tr, 0.5), x_te,
                              interpolated_targets(own_te, y_te, 0.5), lr=0.005, steps=5)
    got = df[(df.source == "r") & (df.seed == 1) & (df.alpha == 0.5) & (df.lr == 0.005) & (df.split == "test")]
    np.testing.assert_allclose(got.sort_values("step").loss, curves.test_loss, rtol=1e-4)
    # Unchanged settings: the cached result is reused; the plain switch is not touched.
    mtime = out.stat().st_mtime_ns
    assert task_switch.run_task_switch(make_exp("rel", settings), sweep) == out and out.stat().st_mtime_ns == mtime
    assert not task_switch.result_path(sweep, "rel").exists()
    # ... and it is queryable with SQL beside the metrics.
    from plastix.query import metrics as query

    counts = query(sweep, "SELECT experiment, count(*) AS n FROM task_relevance GROUP BY experiment")
    assert counts.to_dict("records") == [{"experiment": "rel", "n": len(df)}]


def test_plain_task_switch_rows_are_unchanged(tmp_path, monkeypatch):
    sweep, nets = fake_source(tmp_path, monkeypatch, "ts")
    out = task_switch.run_task_switch(make_exp("ts", small_settings()), sweep)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["source", "seed", "lr", "step", "split", "loss"]
    x_tr, y_tr, x_te, y_te = eq15_dataset(jax.random.PRNGKey(0), 64, 32)
    net = nets["net"]
    p0 = jax.tree.map(lambda x: x[0], nets["trained"])
    curves = regression_probe(lambda p, x: net.apply({"params": p}, x), p0, x_tr, y_tr, x_te, y_te, lr=0.01, steps=5)
    got = df[(df.source == "r") & (df.seed == 0) & (df.lr == 0.01) & (df.split == "train")].sort_values("step")
    np.testing.assert_allclose(got.loss, curves.train_loss, rtol=1e-4)


def test_interpolated_targets():
    own, new = jnp.array([1.0, 2.0]), jnp.array([3.0, -2.0])
    np.testing.assert_allclose(interpolated_targets(own, new, 0.0), own)
    np.testing.assert_allclose(interpolated_targets(own, new, 1.0), new)
    np.testing.assert_allclose(interpolated_targets(own, new, 0.25), [1.5, 1.0])
