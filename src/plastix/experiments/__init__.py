"""Named experiments: TOML files that say which runs to train and which figures and verdicts to make.

One file per experiment ships in this folder (``plastix experiments list``); a user copies one and edits
it (``plastix run my-experiment.toml``). Schema (every key is validated, see ``load``)::

    name = "ocp-fig1"                      # optional; defaults to the file's stem
    description = "one line shown by `plastix experiments list`"
    kind = "train"                         # "train" (PPO runs) or "task-switch" (probe runs of a source)
    analyses = ["return", "dormancy"]      # figures of the report: names in plastix.report.registry
    source = "ocp-fig1"                    # kind = "task-switch" only: whose trained value nets to probe

    [base]                                 # TrainConfig overrides shared by all scales and variants
    preset = "ocp"                         # applied first (its defaults), then every other key
    env_id = "HalfCheetah-v4"

    [grid]                                 # the variants: the cartesian product of these lists
    activation = ["relu", "none"]

    [arms]                                 # optional named variants (interventions), crossed with [grid]:
    warm_start = {}                        # each a table of TrainConfig overrides; a variant's `arm`
    reset_all = { mitigations = "reset", reset = { layers = "all" } }   # value is its name
    arms_mode = "cross"                    # (a top-level key) "cross": every arm with every grid point;
                                           # "append": each arm is one more variant beside the grid's

    [task_switch]                          # kind = "task-switch" only (defaults in TASK_SWITCH_DEFAULTS)
    learning_rates = [0.01, 0.005]

    [[claims]]                             # verdicts written into the report (see plastix.report)
    text = "No-Act dormancy below ReLU dormancy in every layer"
    keys = "*/layer_*/dormant_ratio@0.025" # glob over metric keys; every match must satisfy the claim
    compare = "less"                       # less | greater | similar | at_least | at_most
    a = { activation = "none" }            # the variant (or task-switch source) on the left ...
    b = { activation = "relu" }            # ... and on the right (less, greater, similar)

    [quick]                                # one table per scale, each optional: a file runs at the
                                           # scales it has (every shipped file has all three)
    seeds = [0, 1]
    base = { total_timesteps = 65536 }     # overrides [base] at this scale
    grid = { ... }                         # optional: replaces [grid] at this scale
    task_switch = { steps = 300 }          # optional: overrides [task_switch] at this scale
    arms = ["warm_start"]                  # optional: the arms run at this scale (a subset, in order)

Claims may also set ``compare = "not_less"`` (``a >= b - tolerance * |b|``: "at least about as high") and
``combine = "mean"`` (compare the mean over the matching keys instead of requiring every key to hold).
``arms_mode = "append"`` adds each arm as one variant (``[base]`` then the arm's overrides, which may then set
grid keys) after the grid's variants, which keep their plain names (``activation=relu``): an experiment can add
interventions to a grid whose runs it shares with another experiment (``review-fig1-control`` with
``ocp-fig1``). A claim then selects a grid variant by its grid keys and an arm by ``arm``.
A task-switch experiment with ``task_switch = { alphas = [...] }`` runs the task-relevance probe instead of
the plain Eq. 15 switch (``plastix.experiments.task_switch``, ``plastix.probes.interpolated_targets``).

Scales: ``quick`` (minutes, a smoke run: never evidence), ``evidence`` (at least 5 seeds, sized to run in
about an hour on 2 CPU cores; each shipped file says what it costs) and ``paper`` (the paper's protocol).

``load(name_or_path, scale)`` returns an ``Experiment`` whose ``variants`` are ready-to-train
``TrainConfig`` override dicts, or raises ``ExperimentError`` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from plastix.suggest import did_you_mean

SCALES = ("quick", "evidence", "paper")
REQUIRED_SCALES: tuple[str, ...] = ()  # a file runs at the scales whose tables it has (a user's: [quick] only)
KINDS = ("train", "task-switch")
COMPARES = ("less", "greater", "similar", "at_least", "at_most", "not_less")
CLAIM_COMBINES = ("every", "mean")
ARMS_MODES = ("cross", "append")
TOP_KEYS = {"name", "description", "kind", "analyses", "source", "base", "grid", "arms", "arms_mode", "task_switch",
            "claims", *SCALES}
SCALE_KEYS = {"seeds", "base", "grid", "arms", "task_switch"}
CLAIM_KEYS = {"text", "keys", "compare", "a", "b", "tolerance", "threshold", "stat", "combine"}
CLAIM_STATS = ("final", "mean")
ARM_KEY = "arm"  # the variant field naming an arm
ARM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
# Never taken from an experiment file: the runner owns these.
RUNNER_FIELDS = {"seeds", "run_dir", "resume", "quiet"}
TASK_SWITCH_DEFAULTS: dict[str, Any] = dict(
    n_train=1000,  # OCP Fig 3/5: 1,000 training samples
    n_test=1000,  # and 1,000 test samples
    noise_std=0.1,  # Eq. 15's sigma
    learning_rates=[0.01, 0.005],  # Fig 3 (0.01) and Fig 5 (0.01, 0.005)
    steps=2000,  # full-batch Adam steps
    x_dist="normal",  # how X is drawn (the paper does not say; SCIENCE.md)
    data_seed=0,  # PRNG seed of the Eq. 15 data set (shared by every source network)
)
# Optional [task_switch] keys without a default (absent = the plain Eq. 15 switch).
TASK_SWITCH_OPTIONAL = {"alphas": "task distances alpha in [0, 1] of the task-relevance probe"}


class ExperimentError(ValueError):
    """A bad experiment file; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Variant:
    """One point of the grid: ``name`` (its run folder), the grid values, the full TrainConfig overrides."""

    name: str
    values: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A validated experiment at one scale."""

    name: str
    description: str
    kind: str
    scale: str
    path: str
    seeds: list[int]
    base: dict[str, Any]
    grid: dict[str, list]
    analyses: list[str]
    claims: list[dict]
    source: str | None = None
    task_switch: dict[str, Any] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    arms_mode: str = "cross"

    @property
    def variants(self) -> list[Variant]:
        """The cartesian product of the grid and the arms (one variant named ``base`` when both are empty).

        An arm adds ``arm = <its name>`` to the variant's values and its overrides to the variant's config
        (after ``[base]``; an arm never sets a grid key, ``load`` checks it). With ``arms_mode = "append"``
        the grid's variants come first, without an arm, then one variant per arm (``[base]`` and its overrides)."""
        keys = list(self.grid)
        if self.arms_mode == "append":
            grid = [] if not keys and self.arms else [dict(zip(keys, c)) for c in itertools.product(*self.grid.values())]
            out = [Variant(variant_name(v), v, {**self.base, **v}) for v in grid]
            return out + [Variant(variant_name({ARM_KEY: arm}), {ARM_KEY: arm}, {**self.base, **overrides})
                          for arm, overrides in self.arms.items()]
        arms = list(self.arms.items()) or [(None, {})]
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            for arm, arm_overrides in arms:
                values = dict(zip(keys, combo))
                if arm is not None:
                    values[ARM_KEY] = arm
                grid_values = {k: v for k, v in values.items() if k != ARM_KEY}
                out.append(Variant(variant_name(values), values, {**self.base, **arm_overrides, **grid_values}))
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["variants"] = [dataclasses.asdict(v) for v in self.variants]
        return data


def variant_name(values: dict[str, Any]) -> str:
    """``{"activation": "relu", "learning_rate": 0.001}`` -> ``activation=relu__learning_rate=0.001``."""
    if not values:
        return "base"
    parts = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}={text}".replace("/", "_").replace(" ", ""))
    return "__".join(parts)


# ----------------------------------------------------------------------------------------- discovery
def _package_dir():
    return resources.files(__name__)


def names() -> list[str]:
    """Names of the experiments shipped with plastix."""
    return sorted(p.name[: -len(".toml")] for p in _package_dir().iterdir() if p.name.endswith(".toml"))


def describe() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped experiment."""
    out = []
    for name in names():
        raw = _read(_resolve(name))
        out.append((name, str(raw.get("description", ""))))
    return out


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    shipped = _package_dir() / f"{name_or_path}.toml"
    if shipped.is_file():
        return Path(str(shipped))
    if path.suffix == ".toml":
        raise ExperimentError(f"{name_or_path}: no such experiment file")
    raise ExperimentError(
        f"unknown experiment {str(name_or_path)!r}; shipped: {', '.join(names())} (or give a path to a .toml file)"
    )


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML: {err}") from None


# ------------------------------------------------------------------------------------------ validation
def train_fields() -> dict[str, Any]:
    """``{option path: type}`` of ``TrainConfig``, nested option groups as dotted paths (``redo.tau``).

    Read from the dataclass, so options added to ``TrainConfig`` are accepted as soon as they exist.
    """
    from plastix.config import TrainConfig

    def walk(cls, prefix: str) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                out.update(walk(tp, f"{prefix}{f.name}."))
            else:
                out[f"{prefix}{f.name}"] = tp
        return out

    return walk(TrainConfig, "")


def _flatten(table: dict, fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables (``[base.redo]``, ``redo = { tau = 0.1 }``, ``redo.tau = 0.1``) -> dotted keys."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in fields:
            out.update(_flatten(value, fields, f"{path}."))
        else:
            out[path] = value
    return out


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "list of " + _type_name(typing.get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp) -> tuple[bool, Any]:
    """``(ok, value converted to tp)`` for a TOML value and a TrainConfig field type."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return (value in typing.get_args(tp)), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is tuple:
        if not isinstance(value, list):
            return False, value
        inner = typing.get_args(tp)[0]
        items = [_coerce(v, inner) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if tp is type(None):
        return False, value  # TOML has no null: leave the key out for None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def analysis_descriptions() -> dict[str, str]:
    """``{name: description}`` of the analyses an experiment file may name: the report's registry
    (``plastix.report.registry``; an analysis is one file under ``plastix/report/analyses/``)."""
    from plastix.report.registry import descriptions

    return descriptions()


def __getattr__(name: str):
    if name == "ANALYSES":  # the old constant, now read from the report's registry
        return analysis_descriptions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_overrides(path: Path, where: str, table: Any, fields: dict[str, Any], grid: bool = False) -> dict:
    if not isinstance(table, dict):
        raise ExperimentError(f"{path}: [{where}] must be a table of TrainConfig options")
    out = {}
    for key, value in _flatten(table, fields).items():
        if key in RUNNER_FIELDS:
            hint = " (use `seeds = [...]` in [quick] / [paper])" if key == "seeds" else " (set by the runner)"
            raise ExperimentError(f"{path}: {where}.{key}: not allowed in an experiment file{hint}")
        if key not in fields:
            raise ExperimentError(f"{path}: {where}.{key}: unknown TrainConfig option; "
                                  f"{did_you_mean(key, set(fields) - RUNNER_FIELDS)}{_options_hint(key, fields)}")
        values = value if grid else [value]
        if grid and (not isinstance(value, list) or not value):
            raise ExperimentError(f"{path}: {where}.{key}: a grid entry must be a non-empty list of values, got {value!r}")
        converted = []
        for v in values:
            ok, conv = _coerce(v, fields[key])
            if not ok:
                raise ExperimentError(
                    f"{path}: {where}.{key}: bad value {v!r}; expected {_type_name(fields[key])}"
                )
            converted.append(conv)
        out[key] = converted if grid else converted[0]
    return out


def _options_hint(key: str, fields: dict[str, Any]) -> str:
    """Where to find the options: the group's own (``redo.*``) when ``key`` names an option group, else
    ``plastix train --help`` (not the ~100 option names)."""
    group = key.split(".", 1)[0]
    members = [f for f in fields if f.startswith(group + ".")]
    if "." in key and members:
        return f"{group}'s options: {', '.join(m.split('.', 1)[1] for m in members)}"
    return "`plastix train --help` lists every option (a flag --x-y is the key x_y)"


def _check_claims(path: Path, claims: Any) -> list[dict]:
    if not isinstance(claims, list):
        raise ExperimentError(f"{path}: claims: must be an array of tables ([[claims]])")
    out = []
    for i, claim in enumerate(claims):
        where = f"claims[{i}]"
        if not isinstance(claim, dict):
            raise ExperimentError(f"{path}: {where}: must be a table")
        unknown = set(claim) - CLAIM_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ExperimentError(f"{path}: {where}.{key}: unknown key; {did_you_mean(key, CLAIM_KEYS)}"
                                  f"allowed: {', '.join(sorted(CLAIM_KEYS))}")
        for key in ("text", "keys", "compare"):
            if not isinstance(claim.get(key), str):
                raise ExperimentError(f"{path}: {where}.{key}: required string")
        if claim["compare"] not in COMPARES:
            raise ExperimentError(f"{path}: {where}.compare: bad value {claim['compare']!r}; allowed: {', '.join(COMPARES)}")
        if claim.get("stat", "final") not in CLAIM_STATS:
            raise ExperimentError(f"{path}: {where}.stat: bad value {claim['stat']!r}; allowed: {', '.join(CLAIM_STATS)}")
        if claim.get("combine", "every") not in CLAIM_COMBINES:
            raise ExperimentError(
                f"{path}: {where}.combine: bad value {claim['combine']!r}; allowed: {', '.join(CLAIM_COMBINES)}")
        for key in ("a", "b"):
            if key in claim and not isinstance(claim[key], dict):
                raise ExperimentError(f"{path}: {where}.{key}: must be an inline table such as {{ activation = \"relu\" }}")
        if "a" not in claim:
            raise ExperimentError(f"{path}: {where}.a: required (the variant the claim is about)")
        if claim["compare"] in ("less", "greater", "similar", "not_less") and "b" not in claim:
            raise ExperimentError(f"{path}: {where}.b: required for compare = {claim['compare']!r}")
        if claim["compare"] in ("at_least", "at_most") and not isinstance(claim.get("threshold"), (int, float)):
            raise ExperimentError(f"{path}: {where}.threshold: required number for compare = {claim['compare']!r}")
        if "tolerance" in claim and not (isinstance(claim["tolerance"], (int, float)) and claim["tolerance"] >= 0):
            raise ExperimentError(f"{path}: {where}.tolerance: must be a number >= 0")
        out.append(dict(claim))
    return out


def _check_task_switch(path: Path, where: str, table: Any) -> dict:
    if not isinstance(table, dict):
        raise ExperimentError(f"{path}: [{where}] must be a table")
    for key, value in table.items():
        if key not in TASK_SWITCH_DEFAULTS and key not in TASK_SWITCH_OPTIONAL:
            allowed = ", ".join([*TASK_SWITCH_DEFAULTS, *TASK_SWITCH_OPTIONAL])
            raise ExperimentError(f"{path}: {where}.{key}: unknown key; "
                                  f"{did_you_mean(key, [*TASK_SWITCH_DEFAULTS, *TASK_SWITCH_OPTIONAL])}allowed: {allowed}")
        default = TASK_SWITCH_DEFAULTS.get(key)
        if key == "alphas":
            ok = (isinstance(value, list) and len(value) >= 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
                  and len(set(value)) == len(value))
            expect = "a list of at least 2 distinct numbers in [0, 1] (0 = the network's own task, 1 = Eq. 15)"
        elif key == "learning_rates":
            ok = isinstance(value, list) and value and all(isinstance(v, (int, float)) and v > 0 for v in value)
            expect = "a non-empty list of positive numbers"
        elif key == "x_dist":
            ok, expect = value in ("normal", "uniform"), "'normal' | 'uniform'"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if key == "data_seed" else 1)
            expect = "a non-negative integer" if key == "data_seed" else "a positive integer"
        else:
            ok, expect = isinstance(value, (int, float)) and value >= 0, "a number >= 0"
        if not ok:
            raise ExperimentError(f"{path}: {where}.{key}: bad value {value!r}; expected {expect}")
    out = dict(table)
    if "alphas" in out:
        out["alphas"] = [float(a) for a in out["alphas"]]
    return out


def _check_arms(path: Path, raw: dict, scale_table: dict, scale: str, grid: dict, fields: dict[str, Any]) -> dict:
    """``{arm name: TrainConfig overrides}`` of ``[arms]``, restricted to ``<scale>.arms`` when given. Crossed
    arms (``arms_mode = "cross"``) may not set a grid key; appended ones may."""
    mode = raw.get("arms_mode", "cross")
    if mode not in ARMS_MODES:
        raise ExperimentError(f"{path}: arms_mode: bad value {mode!r}; allowed: {', '.join(ARMS_MODES)}")
    table = raw.get("arms", {})
    if "arms_mode" in raw and not table:
        raise ExperimentError(f"{path}: arms_mode: only meaningful with [arms]; add arms or drop it")
    if not isinstance(table, dict):
        raise ExperimentError(f"{path}: [arms] must be a table of named tables of TrainConfig options")
    arms = {}
    for name, overrides in table.items():
        if not ARM_NAME.match(name):
            raise ExperimentError(f"{path}: arms.{name}: bad arm name; use letters, digits and _ . + -")
        if not isinstance(overrides, dict):
            raise ExperimentError(f"{path}: arms.{name}: must be a table of TrainConfig options, e.g. {{}} or "
                                  "{ mitigations = \"reset\" }")
        arms[name] = _check_overrides(path, f"arms.{name}", overrides, fields)
        clash = sorted(set(arms[name]) & set(grid)) if mode == "cross" else []
        if clash:
            raise ExperimentError(f"{path}: arms.{name}.{clash[0]}: also a grid key; set it in [grid] or in the arms "
                                  "(or give arms_mode = \"append\": each arm one variant beside the grid's)")
    chosen = scale_table.get("arms")
    if chosen is None:
        return arms
    if not (isinstance(chosen, list) and chosen and all(isinstance(a, str) for a in chosen)
            and len(set(chosen)) == len(chosen)):
        raise ExperimentError(f"{path}: {scale}.arms: bad value {chosen!r}; expected a list of distinct arm names")
    for a in chosen:
        if a not in arms:
            raise ExperimentError(f"{path}: {scale}.arms: unknown arm {a!r}; {did_you_mean(a, arms)}"
                                  f"defined: {', '.join(arms) or '(none)'}")
    return {a: arms[a] for a in chosen}


def load(name_or_path: str | Path, scale: str = "quick") -> Experiment:
    """Load and validate an experiment (a shipped name or a ``.toml`` path) at ``scale``.

    Every key is checked: top-level keys against the schema, ``[base]`` / ``[grid]`` keys against
    ``TrainConfig``'s fields and their types, and each variant's full config with ``plastix.config.validate``
    (so e.g. a negative learning rate fails here, before any compute).
    """
    from plastix.config import ConfigError, validate

    path = _resolve(name_or_path)
    raw = _read(path)
    if scale not in SCALES:
        raise ExperimentError(f"--scale: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ExperimentError(f"{path}: {key}: unknown key; {did_you_mean(key, TOP_KEYS)}"
                              f"allowed: {', '.join(sorted(TOP_KEYS))}")
    for s in SCALES:
        if s not in raw and s not in REQUIRED_SCALES:
            continue
        if not isinstance(raw.get(s), dict):
            need = "required table" if s in REQUIRED_SCALES else "must be a table"
            raise ExperimentError(f"{path}: [{s}]: {need} (with at least `seeds = [...]`)")
        bad = set(raw[s]) - SCALE_KEYS
        if bad:
            key = sorted(bad)[0]
            raise ExperimentError(f"{path}: {s}.{key}: unknown key; {did_you_mean(key, SCALE_KEYS)}"
                                  f"allowed: {', '.join(sorted(SCALE_KEYS))}")
        seeds = raw[s].get("seeds")
        if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) and x >= 0 for x in seeds)
                and len(set(seeds)) == len(seeds)):
            raise ExperimentError(f"{path}: {s}.seeds: bad value {seeds!r}; expected a list of distinct integers >= 0")
    if scale not in raw:
        defined = ", ".join(s for s in SCALES if s in raw) or "none (add one, e.g. [quick] with `seeds = [0]`)"
        raise ExperimentError(f"{path}: [{scale}]: no such table in this file, so --scale {scale} cannot run it; "
                              f"scales it defines: {defined}")
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        raise ExperimentError(f"{path}: kind: bad value {kind!r}; allowed: {', '.join(KINDS)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise ExperimentError(f"{path}: name: must be a non-empty string without '/'")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(f"{path}: description: must be a string")
    analyses = raw.get("analyses", ["return"])
    ANALYSES = analysis_descriptions()  # noqa: N806  (the report's registry: plastix.report.analyses/*)
    if not isinstance(analyses, list):
        raise ExperimentError(f"{path}: analyses: must be a list; allowed entries: {', '.join(ANALYSES)}")
    for a in analyses:
        if a not in ANALYSES:
            raise ExperimentError(f"{path}: analyses: unknown analysis {a!r}; {did_you_mean(a, ANALYSES)}"
                                  f"allowed: {', '.join(ANALYSES)}")

    fields = train_fields()
    for other in SCALES:  # the other scales' option names and types too: a typo never waits for its scale
        if other != scale and other in raw:
            _check_overrides(path, f"{other}.base", raw[other].get("base", {}), fields)
            _check_overrides(path, f"{other}.grid", raw[other].get("grid", {}), fields, grid=True)
    sc = raw[scale]
    base = _check_overrides(path, "base", raw.get("base", {}), fields)
    base.update(_check_overrides(path, f"{scale}.base", sc.get("base", {}), fields))
    grid = _check_overrides(path, "grid", raw.get("grid", {}), fields, grid=True)
    if "grid" in sc:
        grid = _check_overrides(path, f"{scale}.grid", sc["grid"], fields, grid=True)
    arms = _check_arms(path, raw, sc, scale, grid, fields)
    selectable = [*grid, *([ARM_KEY] if arms else [])]
    claims = _check_claims(path, raw.get("claims", []))
    for i, claim in enumerate(claims):
        for side in ("a", "b"):
            for key, value in claim.get(side, {}).items():
                if kind == "train" and key not in selectable:
                    raise ExperimentError(
                        f"{path}: claims[{i}].{side}.{key}: not a grid key; allowed: {', '.join(selectable) or '(empty grid)'}"
                    )
                if kind == "train" and key == ARM_KEY and value not in raw.get("arms", {}):
                    raise ExperimentError(f"{path}: claims[{i}].{side}.arm: unknown arm {value!r}; "
                                          f"{did_you_mean(value, raw.get('arms', {}))}defined: "
                                          f"{', '.join(raw.get('arms', {}))}")
                if kind == "task-switch" and key != "source":
                    raise ExperimentError(f"{path}: claims[{i}].{side}.{key}: task-switch claims select by `source`")

    source, task_switch = None, {}
    if kind == "task-switch":
        source = raw.get("source")
        if not isinstance(source, str):
            raise ExperimentError(f"{path}: source: required for kind = 'task-switch' (the experiment whose runs to probe)")
        task_switch = {**TASK_SWITCH_DEFAULTS, **_check_task_switch(path, "task_switch", raw.get("task_switch", {}))}
        task_switch.update(_check_task_switch(path, f"{scale}.task_switch", sc.get("task_switch", {})))
    else:
        for key in ("source", "task_switch"):
            if key in raw or key in sc:
                raise ExperimentError(f"{path}: {key}: only allowed with kind = 'task-switch'")
    if kind == "task-switch" and arms:
        raise ExperimentError(f"{path}: arms: only allowed with kind = 'train' (a task switch probes its source's runs)")

    exp = Experiment(
        name=name, description=description, kind=kind, scale=scale, path=str(path), seeds=list(sc["seeds"]),
        base=base, grid=grid, analyses=list(analyses), claims=claims, source=source, task_switch=task_switch,
        arms=arms, arms_mode=raw.get("arms_mode", "cross"),
    )
    configs = []
    for variant in exp.variants:
        try:
            configs.append(config_for(variant.overrides, exp.seeds))
            validate(configs[-1], check_env=False)
        except ConfigError as err:
            raise ExperimentError(f"{path}: variant {variant.name} ({scale}): {err}") from None
    _check_groups_used(path, raw, exp, configs, fields)
    if kind == "task-switch":
        src = load(source, scale)
        if src.kind != "train":
            raise ExperimentError(f"{path}: source: {source!r} is not a training experiment")
    return exp


def _check_groups_used(path: Path, raw: dict, exp: Experiment, configs: list, fields: dict[str, Any]) -> None:
    """A mitigation's (or ES's) option set anywhere in the file while no variant enables it is refused
    (``plastix.config.check_groups_used``). Arms left out at this scale still count as enabling."""
    from plastix.config import ConfigError, check_groups_used

    given = [*exp.base, *exp.grid, *(key for arm in exp.arms.values() for key in arm)]
    all_arms = _check_arms(path, raw, {}, exp.scale, exp.grid, fields)
    configs = configs + [config_for({**exp.base, **overrides}, exp.seeds) for overrides in all_arms.values()]
    try:
        check_groups_used(given, configs, spell=str)
    except ConfigError as err:
        raise ExperimentError(f"{path}: {err}") from None


def config_for(overrides: dict[str, Any], seeds: list[int], **extra):
    """The ``TrainConfig`` of a variant: its preset's defaults (without ``preset``: the CleanRL preset of its
    ``env_id``'s family), then ``overrides`` (dotted paths for nested option groups, e.g. ``redo.tau``), seeds
    and ``extra``; ``plastix.config.canonical``."""
    from plastix.config import TrainConfig, canonical, default_preset, preset_config

    cfg = preset_config(overrides.get("preset") or default_preset(overrides.get("env_id", TrainConfig.env_id)))
    for path, value in {**overrides, "seeds": ",".join(map(str, seeds)), **extra}.items():
        # TOML arrays are lists; TrainConfig's sequence options are tuples (and `plastix train` flags
        # spell a tuple as one argument per item, a list would reach the trainer as its repr).
        value = tuple(value) if isinstance(value, list) else value
        cfg = _replace_path(cfg, path.split("."), value)
    return canonical(cfg)


def config_from_json(data: dict[str, Any]):
    """The ``TrainConfig`` of a run folder's ``config.json`` ``config`` part (nested option groups as
    nested objects, JSON lists back to tuples)."""
    from plastix.config import TrainConfig, apply_aliases, canonical

    fields = train_fields()
    cfg = TrainConfig()
    for path, value in _flatten(apply_aliases(data, "config.json"), fields).items():
        if path not in fields:
            raise ExperimentError(f"config.json: unknown option {path!r}; {did_you_mean(path, fields)}".rstrip("; "))
        if value is not None:
            ok, value = _coerce(value, fields[path])
            if not ok:
                raise ExperimentError(f"config.json: bad value for {path!r}; expected {_type_name(fields[path])}")
        cfg = _replace_path(cfg, path.split("."), value)
    return canonical(cfg)


def _replace_path(obj, parts: list[str], value):
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    return dataclasses.replace(obj, **{parts[0]: _replace_path(getattr(obj, parts[0]), parts[1:], value)})


def matches(key: str, pattern: str) -> bool:
    """Glob match of a metric key: ``*`` (any characters) and ``?`` (one) stay within a ``/``-separated
    segment, ``**`` crosses segments. Within one segment, so that ``*/layer_*/srank`` (a layer's feature srank)
    does not also match ``policy/layer_1/weight/srank`` (its weight matrix's), a metric added later."""
    return _glob_regex(pattern).fullmatch(key) is not None


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
        i += 1
    return re.compile("".join(out))
