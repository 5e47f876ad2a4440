"""``plastix`` command line: ``plastix train [--preset ocp] [--flags ...]``.

Presets set defaults; flags given on the command line override them (``--preset ocp --learning-rate 3e-4``
uses the OCP preset with another learning rate). Every flag is documented in ``plastix train --help``.
"""

from __future__ import annotations

import sys

USAGE = """usage: plastix COMMAND [options]

commands:
  train        train PPO (CleanRL semantics) for one or many seeds; `plastix train --help` lists every flag
  experiments  `plastix experiments list`: the named experiments (TOML files) shipped with plastix
  run          `plastix run EXPERIMENT|FILE.toml [...] [--scale quick|evidence|paper] [--out SWEEP_DIR]
               [--backend local|ray] [--address ADDR] [--jobs N] [--retries N]`: train a sweep
  query        `plastix query SWEEP_DIR|RUN_DIR ["SQL"]`: DuckDB SQL over a sweep or one run folder
               (`plastix query --help` lists the views)
  report       `plastix report SWEEP_DIR|RUN_DIR [--out DIR]`: HTML page + PNG figures of a sweep or a run
"""


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag VALUE`` or ``--flag=VALUE``), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _preset_from_argv(argv: list[str]) -> str:
    """``--preset``, or the CleanRL preset of ``--env-id``'s family (``plastix.config.default_preset``)."""
    from plastix.config import TrainConfig, default_preset

    preset = _flag_value(argv, "--preset")
    return preset if preset is not None else default_preset(_flag_value(argv, "--env-id") or TrainConfig.env_id)


def _map_anneal_lr(argv: list[str]) -> list[str]:
    """CleanRL's ``--anneal-lr`` / ``--no-anneal-lr`` as ``--lr-schedule whole`` / ``off``; beside a
    contradicting ``--lr-schedule`` it is a ``ConfigError``."""
    from plastix.config import ConfigError, apply_aliases

    given = [a for a in argv if a in ("--anneal-lr", "--no-anneal-lr")]
    if not given:
        return argv
    if len(given) > 1:
        raise ConfigError(f"--anneal-lr: given {len(given)} times ({' '.join(given)}); give --lr-schedule only")
    schedule = _flag_value(argv, "--lr-schedule")
    data = {"anneal_lr": given[0] == "--anneal-lr", **({"lr_schedule": schedule} if schedule else {})}
    mapped = apply_aliases(data, "--anneal-lr")["lr_schedule"]
    rest = [a for a in argv if a not in given]
    return rest if schedule else rest + ["--lr-schedule", mapped]


def parse_train_args(argv: list[str]):
    """Parse ``plastix train`` flags into a ``TrainConfig`` (defaults from ``--preset``, or the CleanRL preset
    of ``--env-id``'s family when no preset is given), in its ``canonical`` spelling."""
    import tyro

    from plastix.config import canonical, preset_config

    argv = _map_anneal_lr(list(argv))
    default = _resume_default(argv) or preset_config(_preset_from_argv(argv))
    return canonical(tyro.cli(type(default), default=default, args=argv, prog="plastix train"))


def given_options(argv: list[str]) -> list[str]:
    """The dotted option paths of the flags in ``argv``, as typed: ``--shrink-perturb.no-at-switch`` ->
    ``shrink_perturb.no_at_switch``, ``--redo.tau=0.1`` -> ``redo.tau`` (the group is what is checked)."""
    return [arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")]


SWEEP_CHECKED = "--sweep-checked"
"""First argument of the trainers a sweep starts (``plastix.runner.train_command``): their flags spell out
every option of the run's config, so "given but ignored" is judged once, on the experiment file's own keys
(``plastix.experiments``), not on each trainer's flags."""


def _resume_default(argv: list[str]):
    """With ``--resume RUN``, the run's saved config (so the flags given are exactly the options that
    differ from it: ``training.check_resume`` refuses those that do not extend the run); else None."""
    import dataclasses

    from plastix.config import ConfigError, preset_config
    from plastix.training import saved_config

    run_dir = _flag_value(argv, "--resume")
    if run_dir is None:
        return None
    saved = saved_config(run_dir)
    preset = _flag_value(argv, "--preset")
    if preset is not None and preset != saved.preset:
        preset_config(preset)  # an unknown preset is named as such
        raise ConfigError(f"--preset: the run in {run_dir} was trained with {saved.preset!r}, not {preset!r}; "
                          "a resumed run keeps its config")
    return dataclasses.replace(saved, resume=run_dir)


def train_main(argv: list[str]) -> int:
    from plastix.config import ConfigError, check_groups_used
    from plastix.training import train

    from_sweep = argv[:1] == [SWEEP_CHECKED]
    argv = argv[1:] if from_sweep else argv
    try:
        cfg = parse_train_args(argv)
        if not from_sweep:
            check_groups_used(given_options(argv), [cfg])
        run_dir = train(cfg)
    except ConfigError as err:
        print(f"plastix train: error: {err}", file=sys.stderr)
        return 2
    if not cfg.quiet:
        print(f"results: {run_dir}  (metrics: {run_dir}/metrics.parquet, config: {run_dir}/config.json)")
    else:
        print(run_dir)
    return 0


def experiments_main(argv: list[str]) -> int:
    from plastix import experiments

    if argv[:1] not in (["list"], []):
        print("usage: plastix experiments list", file=sys.stderr)
        return 2
    width = max(len(n) for n in experiments.names())
    for name, description in experiments.describe():
        print(f"{name:<{width}}  {description}")
    return 0


def run_main(argv: list[str]) -> int:
    import argparse
    import time

    from plastix import experiments
    from plastix.config import ConfigError
    from plastix.runner import SweepError, run_sweep

    parser = argparse.ArgumentParser(prog="plastix run", description="Train the runs of named experiments (a sweep).")
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="a shipped name or a path to a .toml file")
    parser.add_argument("--scale", default="quick", choices=experiments.SCALES,
                        help="quick (minutes, a smoke run), evidence (>= 5 seeds, about an hour per experiment on "
                        "2 CPU cores) or paper (the paper's protocol)")
    parser.add_argument("--out", default=None, help="sweep folder (default: sweeps/<experiment>__<scale>)")
    parser.add_argument("--backend", default="local", choices=("local", "ray"), help="where runs execute")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: CPU count)")
    parser.add_argument("--retries", type=int, default=2, help="retries of a crashed run (each resumes it)")
    args = parser.parse_args(argv)
    try:
        exps = [experiments.load(e, args.scale) for e in args.experiments]
        out = args.out or f"sweeps/{'+'.join(e.name for e in exps)}__{args.scale}"
        t0 = time.perf_counter()
        run_sweep(exps, out, backend=args.backend, address=args.address, jobs=args.jobs, retries=args.retries)
    except (experiments.ExperimentError, ConfigError, SweepError) as err:
        print(f"plastix run: error: {err}", file=sys.stderr)
        return 2
    print(f"sweep: {out}  ({time.perf_counter() - t0:.0f}s; `plastix report {out}` makes its figures)")
    return 0


QUERY_USAGE = """usage: plastix query SWEEP_DIR|RUN_DIR ["SQL"]

DuckDB SQL over a sweep folder (sweep.json) or one run folder (config.json; a run inside a sweep keeps its
variant fields). Without SQL: every metric row. Views (each exists in every folder, empty when nothing is
behind it):
  metrics         run, <variant fields>, seed, update, env_step, key, value
  runs            run, <variant fields>, seeds
  final_values    run, <variant fields>, seed, key, value, last_n, n: the report's final value of a key, the
                  mean of its last 10% of measurements (last_n of n)
  final_return    run, <variant fields>, seed, final_return, last_n, n: final_values of return/episodic
  rounds          run, <variant fields>, seed, round, update, env_step, key, value: the round/* rows
  task_switch     experiment, source, seed, lr, step, split, loss (the task-switch probe)
  task_relevance  experiment, source, seed, alpha, lr, step, split, loss (the task-relevance probe)

example: plastix query sweeps/demo "SELECT activation, avg(final_return) FROM final_return GROUP BY ALL"
"""


def query_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print(QUERY_USAGE, file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import pandas as pd

    from plastix.query import metrics

    try:
        frame = metrics(argv[0], argv[1] if len(argv) > 1 else None)
    except Exception as err:  # SQL errors, missing folders: one line, no traceback
        print(f"plastix query: error: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_rows", 200, "display.max_columns", None, "display.width", 200):
        print(frame.to_string(index=False) if len(frame) <= 200 else frame)
    return 0


def report_main(argv: list[str]) -> int:
    import argparse

    from plastix.report import build_report

    parser = argparse.ArgumentParser(prog="plastix report", description="HTML report of a sweep folder (one "
                                     "section per experiment) or of one run folder (its curves, per-layer "
                                     "diagnostics, rounds and mitigation counts).")
    parser.add_argument("folder", metavar="SWEEP_DIR|RUN_DIR", help="a sweep folder (sweep.json) or a run folder "
                        "(config.json), also one inside a sweep (SWEEP_DIR/runs/RUN)")
    parser.add_argument("--out", default=None, help="report folder (default: FOLDER/report)")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.folder, args.out)
    except FileNotFoundError as err:
        print(f"plastix report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "experiments":
        return experiments_main(rest)
    if command == "run":
        return run_main(rest)
    if command == "query":
        return query_main(rest)
    if command == "report":
        return report_main(rest)
    print(f"plastix: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
