"""The README's code works as written: its Python blocks run, its `plastix train` lines parse and validate,
the experiments, scripts and benchmarks it names exist; docs/experiments.md's example file runs at quick
scale without [paper] and the page covers every key of the format."""

import re
import shlex
from pathlib import Path

import pytest

from plastix import experiments

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXPERIMENTS_DOC = (ROOT / "docs" / "experiments.md").read_text()
# A block may be preceded by `<!-- readme-test: slow (why) -->`: it runs only in the slow suite.
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def blocks(text: str, lang: str) -> list[tuple[str, str]]:
    """``(mark, code)`` of every fenced block of ``lang`` in ``text`` (mark ``""`` when unmarked)."""
    return [(m["mark"] or "", m["code"]) for m in BLOCK.finditer(text) if m["lang"] == lang]


PYTHON = blocks(README, "python")
FAST = [code for mark, code in PYTHON if not mark]
SLOW = [code for mark, code in PYTHON if mark]


def _run(code: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes (runs/...) writes here
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_every_python_block_runs_or_is_marked_slow_with_a_reason():
    assert FAST and SLOW
    for mark, _ in PYTHON:
        assert not mark or re.fullmatch(r"slow \(.+\)", mark), mark


@pytest.mark.parametrize("code", FAST, ids=[f"block{i}" for i in range(len(FAST))])
def test_readme_python_block_runs_as_written(code, tmp_path, monkeypatch):
    _run(code, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("code", SLOW, ids=[f"slow{i}" for i in range(len(SLOW))])
def test_readme_slow_python_block_runs_as_written(code, tmp_path, monkeypatch):
    _run(code, tmp_path, monkeypatch)


def test_plastix_actor_critics_name_their_layers_as_the_readme_says():
    import jax
    import jax.numpy as jnp

    from plastix.nets import ActorCritic, hidden_activations

    net = ActorCritic(action_dim=2, hidden_sizes=(4, 4))  # shapes only (eval_shape): nothing is computed
    variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    _, state = jax.eval_shape(lambda v: net.apply(v, jnp.zeros((5, 3)), mutable=["intermediates"]), variables)
    assert {"policy/layer_1", "policy/layer_2", "value/layer_1", "value/layer_2"} == set(
        hidden_activations(state["intermediates"]))


def _commands() -> list[list[str]]:
    lines = [line for _, code in blocks(README, "bash") for line in code.splitlines()]
    return [shlex.split(line.split("  #")[0]) for line in lines if line.strip() and not line.startswith("#")]


def test_readme_train_lines_parse_and_validate():
    from plastix.cli import given_options, parse_train_args
    from plastix.config import check_groups_used, validate

    trains = [c[2:] for c in _commands() if c[:2] == [".venv/bin/plastix", "train"]]
    assert len(trains) >= 8
    for argv in trains:
        if "--help" in argv or "--resume" in argv:  # no run folder to resume here
            continue
        cfg = parse_train_args(argv)
        check_groups_used(given_options(argv), [cfg])
        validate(cfg, check_env=True)


def test_readme_names_experiments_scripts_and_benchmarks_that_exist():
    commands = _commands()
    runs = [c for c in commands if c[:2] == [".venv/bin/plastix", "run"]]
    assert runs
    for c in runs:
        scale = c[c.index("--scale") + 1] if "--scale" in c else "quick"
        names = [a for a in c[2:c.index("--scale") if "--scale" in c else len(c)] if not a.startswith("-")]
        for name in names:
            experiments.load(name, scale)
    for c in commands:
        if c[0] == "bash" or c[0] == ".venv/bin/python":
            assert (ROOT / c[1]).exists(), c


# ------------------------------------------------------------------------------- docs/experiments.md
def test_the_documented_experiment_file_runs_at_quick_scale_without_paper(tmp_path):
    from plastix.config import validate
    from plastix.runner import plan

    [(_, text)] = blocks(EXPERIMENTS_DOC, "toml")
    assert "[paper]" not in text and "[evidence]" not in text
    path = tmp_path / "mine.toml"
    path.write_text(text)
    exp = experiments.load(path, "quick")
    assert [v.name for v in exp.variants] == ["arm=warm_start", "arm=shrink_perturb"]
    for variant in exp.variants:  # what `plastix run` would train, validated with its env; nothing trained
        validate(experiments.config_for(variant.overrides, exp.seeds), check_env=True)
    assert [r.name for r in plan([exp])] == ["arm=warm_start", "arm=shrink_perturb"]
    with pytest.raises(experiments.ExperimentError, match=r"\[paper\]: no such table .* defines: quick"):
        experiments.load(path, "paper")


def test_the_experiments_page_documents_every_key():
    words = set(re.findall(r"`\[*([a-z_0-9]+)", EXPERIMENTS_DOC))
    for key in (*experiments.TOP_KEYS, *experiments.SCALE_KEYS, *experiments.CLAIM_KEYS, *experiments.COMPARES,
                *experiments.CLAIM_STATS, *experiments.CLAIM_COMBINES, *experiments.ANALYSES,
                *experiments.TASK_SWITCH_DEFAULTS, *experiments.TASK_SWITCH_OPTIONAL):
        assert key in words, key
    assert "docs/experiments.md" in README
