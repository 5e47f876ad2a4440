"""Every numeric option is range-checked before compute, and options that would be ignored are refused."""

import dataclasses
import typing

import pytest

from plastix import experiments
from plastix.cli import given_options, main, parse_train_args
from plastix.config import OPTION_RANGES, ConfigError, Range, TrainConfig, option_flag, validate


def _numeric_fields() -> set[str]:
    out = set()
    for path, tp in experiments.train_fields().items():
        args = {a for a in (typing.get_args(tp) or (tp,)) if a is not type(None) and a is not Ellipsis}
        if args and all(a in (int, float) for a in args):
            out.add(path)
    return out


def test_every_numeric_option_has_a_range():
    missing, stale = _numeric_fields() - set(OPTION_RANGES), set(OPTION_RANGES) - _numeric_fields()
    assert not missing, f"give these options their range in plastix.config.OPTION_RANGES: {sorted(missing)}"
    assert not stale, f"OPTION_RANGES names options that do not exist: {sorted(stale)}"


def _bad_values(path: str, allowed: Range) -> list:
    """Values just outside ``allowed`` (of the option's type), computed from the range's definition."""
    integer = isinstance(experiments._coerce(1, experiments.train_fields()[path])[1], int) and not path in (
        "target_kl", "dormant_taus")
    step = 1 if integer else 0.5
    bad = []
    if allowed.low is not None:
        bad.append(allowed.low if allowed.low_open else allowed.low - step)
    if allowed.high is not None:
        bad.append(allowed.high if allowed.high_open else allowed.high + step)
    return bad


CASES = [(path, value) for path, allowed in OPTION_RANGES.items() for value in _bad_values(path, allowed)]


@pytest.mark.parametrize("path, value", CASES, ids=[f"{p}={v}" for p, v in CASES])
def test_a_value_outside_its_range_is_refused_naming_option_and_range(path, value):
    fields = experiments.train_fields()
    if typing.get_origin(fields[path]) is tuple:
        value = (value,)
    cfg = experiments.config_for({path: value}, [0])
    with pytest.raises(ConfigError) as err:
        validate(cfg, check_env=False)
    assert str(err.value).startswith(f"{option_flag(path)}: must be {OPTION_RANGES[path].describe()}, got ")


def test_range_descriptions():
    assert Range(0, low_open=True).describe() == "positive (> 0)"
    assert Range(1).describe() == ">= 1"
    assert Range(0, 1).describe() == "in [0, 1]"
    assert Range(0, 1, high_open=True).describe() == "in [0, 1)"
    assert 1.0 not in Range(0, 1, high_open=True) and 0.0 in Range(0, 1, high_open=True)
    assert 0 not in Range(0, low_open=True) and 1e-9 in Range(0, low_open=True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mitigations", "redo", "--redo.tau", "-0.5"], "--redo.tau: must be >= 0, got -0.5"),
        (["--mitigations", "shrink_perturb", "--rounds", "2", "--shrink-perturb.lam", "1.5"],
         "--shrink-perturb.lam: must be in [0, 1], got 1.5"),
        (["--redo.tau", "0.5"], "--redo.tau: given, but it would be ignored: redo is not in --mitigations"),
        (["--shrink-perturb.no-at-switch"], "--shrink-perturb.no-at-switch: given, but it would be ignored"),
        (["--es.popsize", "8"], "--es.popsize: given, but it would be ignored: only used with --optimizer es"),
        (["--optimizer", "es", "--es.sigma", "-0.1"], "--es.sigma: must be positive (> 0), got -0.1"),
        (["--mitigations", "shrink_perturb"], "--mitigations shrink_perturb: would never fire"),
        (["--mitigations", "reset,adam_reset", "--reset.every", "100"], "--mitigations adam_reset: would never fire"),
        (["--mitigations", "shrink_perturb", "--shrink-perturb.no-at-switch"], "shrink_perturb would never fire"),
    ],
)
def test_mistakes_are_refused_before_compute(tmp_path, capsys, argv, message):
    run_dir = tmp_path / "run"
    assert main(["train", *argv, "--run-dir", str(run_dir)]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_an_at_switch_mitigation_with_switches_or_a_period_is_accepted():
    validate(parse_train_args(["--mitigations", "shrink_perturb", "--rounds", "2"]), check_env=False)
    validate(parse_train_args(["--mitigations", "shrink_perturb", "--shrink-perturb.every", "100"]),
             check_env=False)


def test_given_options_are_the_flags_dotted_paths():
    argv = ["--redo.tau=0.1", "--shrink-perturb.no-at-switch", "--learning-rate", "1e-3", "relu"]
    assert given_options(argv) == ["redo.tau", "shrink_perturb.no_at_switch", "learning_rate"]


def _write(tmp_path, text: str):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_an_experiment_option_of_a_mitigation_no_variant_uses_is_refused(tmp_path):
    text = """
[base]
env_id = "GridWorld-v0"
redo = { tau = 0.05 }
[arms]
warm_start = {}
sp = { mitigations = "shrink_perturb", rounds = 2 }
[quick]
seeds = [0]
"""
    with pytest.raises(experiments.ExperimentError, match=r"redo.tau: given, but it would be ignored: redo is not"):
        experiments.load(_write(tmp_path, text), "quick")
    fixed = text.replace('sp = { mitigations = "shrink_perturb", rounds = 2 }',
                         'sp = { mitigations = "shrink_perturb,redo", rounds = 2 }')
    exp = experiments.load(_write(tmp_path, fixed), "quick")
    assert [v.values["arm"] for v in exp.variants] == ["warm_start", "sp"]


@pytest.mark.parametrize("one, other, mitigations", [
    (["--mitigations", "layernorm"], ["--layer-norm"], "layernorm"),
    (["--mitigations", "layernorm,redo"], ["--layer-norm", "--mitigations", "redo"], "redo,layernorm"),
    (["--preset", "ocp", "--mitigations", "crelu"], ["--preset", "ocp", "--activation", "crelu"], "crelu"),
])
def test_two_spellings_of_one_option_save_the_same_config(tmp_path, monkeypatch, one, other, mitigations):
    import types

    from plastix import store, training

    bridge = types.SimpleNamespace(handle=lambda: None, close=lambda: None)
    monkeypatch.setattr(training, "build", lambda cfg: (bridge, None, None))  # no env, network or training
    monkeypatch.setattr(training, "run_loop", lambda *args: None)
    saved = []
    for i, argv in enumerate((one, other)):
        cfg = parse_train_args([*argv, "--run-dir", str(tmp_path / "run")])
        assert cfg.mitigations == mitigations
        saved.append(store.read_config(training.train(cfg)))
        (tmp_path / "run" / "config.json").unlink()
        (tmp_path / "run").rmdir()
    assert saved[0] == saved[1]
    assert saved[0]["mitigations"] == mitigations
    assert saved[0]["layer_norm"] == ("layernorm" in mitigations)
    assert (saved[0]["activation"] == "crelu") == ("crelu" in mitigations)
    # and a config written in the other spelling (an older run) reads back in this one
    from plastix.config import config_from_dict

    old = dict(saved[0], layer_norm=False, mitigations="layernorm") if "layernorm" in mitigations else None
    if old is not None:
        assert config_from_dict(old).layer_norm and config_from_dict(old).mitigations == "layernorm"


@pytest.mark.parametrize("text, message", [
    ('[base]\nlearning_rat = 0.1\n', "base.learning_rat: unknown TrainConfig option; did you mean 'learning_rate'?"),
    ('[base]\nredo = { taux = 0.1 }\n', "base.redo.taux: unknown TrainConfig option; did you mean 'redo.tau'? "
                                        "redo's options: tau, every"),
    ('analysis = ["return"]\n', "analysis: unknown key; did you mean 'analyses'?"),
    ('[grid]\nactivaton = ["relu"]\n', "grid.activaton: unknown TrainConfig option; did you mean 'activation'?"),
])
def test_an_unknown_toml_key_suggests_the_closest_name_not_every_name(tmp_path, text, message):
    with pytest.raises(experiments.ExperimentError) as err:
        experiments.load(_write(tmp_path, text + '[quick]\nseeds = [0]\n'), "quick")
    assert message in str(err.value)
    assert "total_timesteps" not in str(err.value)  # not the list of every option


def test_an_unknown_toml_key_with_nothing_close_points_at_the_help(tmp_path):
    with pytest.raises(experiments.ExperimentError, match=r"base.zzz: unknown TrainConfig option; `plastix train "
                                                          r"--help` lists every option"):
        experiments.load(_write(tmp_path, '[base]\nzzz = 1\n[quick]\nseeds = [0]\n'), "quick")


@pytest.mark.parametrize("argv, message", [
    (["--lerning-rate", "0.1"], "--learning-rate"),
    (["--mitigations", "redox"], "--mitigations: unknown mitigation 'redox'; did you mean 'redo'?"),
    (["--activation", "rel"], "--activation: unknown activation 'rel'; did you mean 'relu'?"),
])
def test_an_unknown_flag_or_name_suggests_the_closest(tmp_path, capsys, argv, message):
    try:
        code = main(["train", *argv, "--run-dir", str(tmp_path / "run")])
    except SystemExit as exit_:  # tyro's own "Perhaps you meant" for an unknown flag
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.err + captured.out
