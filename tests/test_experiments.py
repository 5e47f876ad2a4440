"""Experiment files: every shipped experiment validates; a wrong key or value fails naming it."""

import subprocess
import sys
from pathlib import Path

import pytest

from plastix import experiments as ex
from plastix.runner import config_flags

GOOD = """
description = "mine"
analyses = ["return", "dormancy"]
[base]
preset = "ocp"
total_timesteps = 4096
num_steps = 256
num_minibatches = 4
[grid]
activation = ["relu", "none"]
learning_rate = [0.001, 0.0003]
[[claims]]
text = "No-Act below ReLU"
keys = "*/layer_*/dormant_ratio@0.025"
compare = "less"
a = { activation = "none" }
b = { activation = "relu" }
[quick]
seeds = [0, 1]
[paper]
seeds = [0, 1, 2]
base = { total_timesteps = 8192 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ex.names())
@pytest.mark.parametrize("scale", ex.SCALES)
def test_every_shipped_experiment_validates(name, scale):
    exp = ex.load(name, scale)
    assert exp.name == name and exp.description and exp.seeds
    assert exp.variants
    for v in exp.variants:
        cfg = ex.config_for(v.overrides, exp.seeds)
        assert cfg.seed_list == exp.seeds


def test_the_required_experiments_ship():
    assert {"ocp-fig1", "ocp-dormancy-vs-gradient", "ocp-weights", "ocp-ranks", "ocp-task-switch"} <= set(ex.names())
    fig1 = ex.load("ocp-fig1", "paper")
    assert fig1.base["preset"] == "ocp" and fig1.base["env_id"] == "HalfCheetah-v4"
    assert [v.values for v in fig1.variants] == [{"activation": "relu"}, {"activation": "none"}]
    assert ex.config_for(fig1.variants[0].overrides, fig1.seeds).total_timesteps == 20_000_000
    switch = ex.load("ocp-task-switch", "quick")
    assert switch.source == "ocp-fig1" and switch.task_switch["learning_rates"] == [0.01, 0.005]
    assert switch.task_switch["n_train"] == 1000 and switch.task_switch["noise_std"] == 0.1


def test_grid_is_the_cartesian_product_and_scales_override(tmp_path):
    path = write(tmp_path, GOOD)
    quick = ex.load(path, "quick")
    assert [v.name for v in quick.variants] == [
        "activation=relu__learning_rate=0.001", "activation=relu__learning_rate=0.0003",
        "activation=none__learning_rate=0.001", "activation=none__learning_rate=0.0003",
    ]
    assert quick.base["total_timesteps"] == 4096 and quick.seeds == [0, 1]
    assert ex.load(path, "paper").base["total_timesteps"] == 8192


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("num_steps = 256", "num_stepz = 256", ["base.num_stepz", "unknown TrainConfig option", "num_steps"]),
        ("num_steps = 256", 'num_steps = "many"', ["base.num_steps", "'many'", "expected int"]),
        ('preset = "ocp"', 'preset = "fast"', ["base.preset", "'cleanrl' | 'ocp'"]),
        ('activation = ["relu", "none"]', 'activation = "relu"', ["grid.activation", "non-empty list"]),
        ('learning_rate = [0.001, 0.0003]', 'learning_rate = [0.001, -1.0]', ["learning-rate", "must be positive"]),
        ('activation = ["relu", "none"]', 'activation = ["relu", "swish"]', ["activation", "swish", "allowed"]),
        ("seeds = [0, 1]", 'seeds = "0,1"', ["quick.seeds", "list of distinct integers"]),
        ('analyses = ["return", "dormancy"]', 'analyses = ["return", "dormant"]', ["analyses", "'dormant'", "dormancy"]),
        ('description = "mine"', 'description = "mine"\ncolour = "red"', ["colour", "unknown key"]),
        ('compare = "less"', 'compare = "smaller"', ["claims[0].compare", "'smaller'", "less"]),
        ('a = { activation = "none" }', 'a = { act = "none" }', ["claims[0].a.act", "not a grid key"]),
        ("[quick]", "[quick]\nseedz = [1]", ["quick.seedz", "unknown key"]),
        ("num_steps = 256", "seeds = \"0,1\"", ["base.seeds", "not allowed"]),
        ("num_minibatches = 4", "num_minibatches = 7", ["num-minibatches", "does not divide"]),
    ],
)
def test_a_wrong_key_or_value_fails_with_its_name(tmp_path, old, new, expected):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ex.ExperimentError) as err:
        ex.load(path, "quick")
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)


def test_missing_scale_and_unknown_names_fail_clearly(tmp_path):
    path = write(tmp_path, GOOD.split("[paper]")[0])
    assert ex.load(path, "quick").seeds == [0, 1]  # [paper] is not needed to run at quick scale
    with pytest.raises(ex.ExperimentError, match=r"\[paper\]: no such table .* scales it defines: quick$"):
        ex.load(path, "paper")
    with pytest.raises(ex.ExperimentError, match="unknown experiment 'ocp-fig9'; shipped: .*ocp-fig1"):
        ex.load("ocp-fig9")
    with pytest.raises(ex.ExperimentError, match="--scale: unknown scale 'huge'"):
        ex.load("ocp-fig1", "huge")
    bad = write(tmp_path, "description = [")
    with pytest.raises(ex.ExperimentError, match="not valid TOML"):
        ex.load(bad)


def test_task_switch_keys_are_checked(tmp_path):
    text = ('description = "s"\nkind = "task-switch"\nsource = "ocp-fig1"\n[task_switch]\nlearning_rates = [0.01, 0]\n'
            "[quick]\nseeds = [0]\n[paper]\nseeds = [0]\n")
    with pytest.raises(ex.ExperimentError, match=r"task_switch.learning_rates: bad value \[0.01, 0\]"):
        ex.load(write(tmp_path, text))
    with pytest.raises(ex.ExperimentError, match="source: only allowed with kind = 'task-switch'"):
        ex.load(write(tmp_path, GOOD.replace('description = "mine"', 'description = "m"\nsource = "x"')))


def test_config_flags_round_trip_through_the_train_cli(tmp_path):
    from plastix.cli import parse_train_args

    exp = ex.load(write(tmp_path, GOOD), "quick")
    for v in exp.variants:
        cfg = ex.config_for(v.overrides, exp.seeds, run_dir="x", quiet=True, lr_schedule="off", hidden_sizes=(32, 16))
        assert parse_train_args(config_flags(cfg)) == cfg


def test_experiments_list_cli():
    out = subprocess.run([sys.executable, "-m", "plastix.cli", "experiments", "list"], capture_output=True, text=True,
                         check=True).stdout
    for name, description in ex.describe():
        assert name in out and description in out


def test_nested_option_groups_are_dotted_paths(tmp_path):
    fields = ex.train_fields()
    from plastix.mitigations import MITIGATIONS

    # a mitigation's option group (its options are refused unless the mitigation is on: turned on here)
    group = next((k for k, t in fields.items() if "." in k and t is float and k.split(".")[0] in MITIGATIONS), None)
    if group is None:
        pytest.skip("TrainConfig has no nested option group with a float option")
    table, option = group.split(".", 1)
    text = GOOD.replace("[grid]", f"[base.{table}]\n{option} = 0.5\n[grid]").replace(
        "num_minibatches = 4\n", f'num_minibatches = 4\nmitigations = "{table}"\n').replace(
        "learning_rate = [0.001, 0.0003]", f'"{group}" = [0.25, 0.75]')
    exp = ex.load(write(tmp_path, text), "quick")
    assert exp.base[group] == 0.5 and [v.values[group] for v in exp.variants[:2]] == [0.25, 0.75]
    cfg = ex.config_for(exp.variants[1].overrides, exp.seeds)
    assert getattr(getattr(cfg, table), option) == 0.75
    from plastix.cli import parse_train_args

    assert parse_train_args(config_flags(cfg)) == cfg
    with pytest.raises(ex.ExperimentError, match=rf"base.{table}.nope: unknown TrainConfig option"):
        ex.load(write(tmp_path, GOOD.replace("[grid]", f"[base.{table}]\nnope = 1\n[grid]")), "quick")


# ------------------------------------------------------------------------------------- evidence scale
def test_every_shipped_experiment_has_an_evidence_scale_between_quick_and_paper():
    """``--scale evidence``: >= 5 seeds (issue 12), at least quick's steps and at most the paper's."""
    for name in ex.names():
        quick, evidence, paper = (ex.load(name, s) for s in ("quick", "evidence", "paper"))
        assert evidence.scale == "evidence" and len(evidence.seeds) >= 5, name
        src = [ex.load(e.source, e.scale) if e.kind == "task-switch" else e for e in (quick, evidence, paper)]
        steps = [ex.config_for(e.variants[0].overrides, e.seeds).num_updates for e in src]
        assert steps[0] <= steps[1] <= steps[2], (name, steps)


def test_evidence_runs_are_shared_by_the_experiments_that_share_arms():
    """ocp-fig1, ocp-weights, ocp-ranks and ocp-dormancy-vs-gradient train the same two runs at evidence
    scale, and the task-switch experiments probe ocp-fig1's (one sweep trains them once)."""
    from plastix.runner import plan

    names = ["ocp-fig1", "ocp-weights", "ocp-ranks", "ocp-dormancy-vs-gradient", "ocp-task-switch",
             "ocp-task-relevance"]
    runs = plan([ex.load(n, "evidence") for n in names])
    assert [r.name for r in runs] == ["activation=relu", "activation=none"]


@pytest.mark.parametrize(
    "table, expected",
    [
        ("[evidence]\nseedz = [0, 1, 2, 3, 4]\n", "evidence.seedz: unknown key"),
        ("[evidence]\nseeds = [0, 0]\n", r"evidence.seeds: bad value \[0, 0\]"),
        ("evidence = 3\n", r"\[evidence\]: must be a table"),
        ("[evidence]\nseeds = [0]\nbase = { total_timestepz = 1 }\n", "evidence.base.total_timestepz: unknown"),
    ],
)
def test_a_malformed_evidence_table_fails_naming_the_key(tmp_path, table, expected):
    # A top-level key must come before the first table (TOML), a table after the others.
    path = write(tmp_path, table + GOOD if table.startswith("evidence =") else GOOD + table)
    for scale in ex.SCALES:  # checked whichever scale is asked for (a typo never waits for its scale)
        with pytest.raises(ex.ExperimentError, match=expected):
            ex.load(path, scale)


def test_evidence_is_optional_in_a_users_file_and_its_absence_is_named(tmp_path):
    path = write(tmp_path, GOOD)
    assert ex.load(path, "quick").seeds == [0, 1]
    with pytest.raises(ex.ExperimentError, match=r"\[evidence\]: no such table .* scales it defines: quick, paper"):
        ex.load(path, "evidence")
    exp = ex.load(write(tmp_path, GOOD + "[evidence]\nseeds = [0, 1, 2, 3, 4]\nbase = { total_timesteps = 6144 }\n"),
                  "evidence")
    assert exp.seeds == [0, 1, 2, 3, 4] and exp.base["total_timesteps"] == 6144


def test_a_toml_array_option_reaches_the_trainer_as_its_items():
    """A TOML array (juliani-ash's `reset = { layers = ["policy_output", "value_output"] }`) is a tuple in the
    TrainConfig and one flag argument per item: its repr once reached the trainer as a single layer name."""
    from plastix.cli import parse_train_args

    cfg = ex.config_for({"preset": "juliani-ash", "env_id": "GridWorld-v0", "mitigations": "reset",
                         "reset.layers": ["policy_output", "value_output"]}, [0])
    assert cfg.reset.layers == ("policy_output", "value_output")
    flags = config_flags(cfg)
    at = flags.index("--reset.layers")
    assert flags[at + 1:at + 3] == ["policy_output", "value_output"]
    assert parse_train_args(flags) == cfg


def test_a_claims_key_glob_stays_within_a_segment_unless_doubled():
    """``*/layer_*/srank`` is the features' srank of every layer, not also the weight matrices' srank
    (``policy/layer_1/weight/srank``, logged since), which silently joined ocp-ranks' claim when ``*`` crossed ``/``."""
    assert ex.matches("policy/layer_1/srank", "*/layer_*/srank")
    assert not ex.matches("policy/layer_1/weight/srank", "*/layer_*/srank")
    assert ex.matches("policy/layer_1/weight/srank", "**/srank")
    assert ex.matches("task_relevance/final_test_loss/alpha=1/lr=0.01", "task_relevance/final_test_loss/alpha=1/*")
    assert not ex.matches("policy/layer_12/srank", "*/layer_?/srank")
    assert ex.matches("value/layer_1/dormant_ratio@0.025", "*/layer_*/dormant_ratio@0.025")  # '.' and '@' literal
    assert not ex.matches("value/layer_1/dormant_ratio@0x025", "*/layer_*/dormant_ratio@0.025")
