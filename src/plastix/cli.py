"""``plastix`` command line: ``plastix train [--preset ocp] [--flags ...]``.

Presets set defaults; flags given on the command line override them (``--preset ocp --learning-rate 3e-4``
uses the OCP preset with another learning rate). Every flag is documented in ``plastix train --help``.
"""

from __future__ import annotations

import sys

USAGE = """usage: plastix COMMAND [options]

commands:
  train    train PPO (CleanRL semantics) for one or many seeds; `plastix train --help` lists every flag
"""


def _preset_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return "cleanrl"


def parse_train_args(argv: list[str]):
    """Parse ``plastix train`` flags into a ``TrainConfig`` (defaults from ``--preset``)."""
    import tyro

    from plastix.config import preset_config

    default = preset_config(_preset_from_argv(argv))
    return tyro.cli(type(default), default=default, args=argv, prog="plastix train")


def train_main(argv: list[str]) -> int:
    from plastix.config import ConfigError
    from plastix.training import train

    try:
        cfg = parse_train_args(argv)
        run_dir = train(cfg)
    except ConfigError as err:
        print(f"plastix train: error: {err}", file=sys.stderr)
        return 2
    if not cfg.quiet:
        print(f"results: {run_dir}  (metrics: {run_dir}/metrics.parquet, config: {run_dir}/config.json)")
    else:
        print(run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    print(f"plastix: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
