"""Peak memory of an experiment's runs: each chosen variant's exact config, shortened, trained in its own process.

Each run logs ``time/peak_rss_mb`` (the process's ``ru_maxrss`` so far) with every chunk, so a run's rows show
whether memory grows with its length: this script prints the peak after the first chunk and at the end, and
their ratio. A run is shortened to ``--fraction`` of its steps (at least one rollout; a run in rounds keeps at
most ``--rounds`` rounds, so the at-switch path, fresh copies and a new env pool are included), its other
options untouched (``plastix.runner.config_flags``: the flags a sweep gives ``plastix train``)::

    python bench/peak_memory.py juliani-ash lyle-curvature ocp-gradient-free --fraction 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shortened(cfg, fraction: float, max_rounds: int):
    """``cfg`` with ``fraction`` of its steps per round (a whole number of rollouts, at least one) and at most
    ``max_rounds`` rounds; nothing else changed."""
    batch = cfg.num_envs * cfg.num_steps
    if cfg.rounds > 1 or cfg.steps_per_round is not None:
        per_round = cfg.steps_per_round if cfg.steps_per_round is not None else cfg.total_timesteps // cfg.rounds
        steps = max(batch, int(per_round * fraction) // batch * batch)
        return dataclasses.replace(cfg, rounds=min(cfg.rounds, max_rounds), steps_per_round=steps)
    return dataclasses.replace(cfg, total_timesteps=max(batch, int(cfg.total_timesteps * fraction) // batch * batch))


def measure(cfg, run_dir: Path) -> dict:
    """Train ``cfg`` in a subprocess; its peak memory after the first chunk and at the end, and its wall time."""
    from plastix.cli import SWEEP_CHECKED
    from plastix.runner import config_flags
    from plastix.store import read_metrics

    cmd = [sys.executable, "-m", "plastix.cli", "train", SWEEP_CHECKED, *config_flags(cfg), "--run-dir", str(run_dir),
           "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak = read_metrics(run_dir).query("key == 'time/peak_rss_mb' and seed == @cfg.seed_list[0]").sort_values("update")
    first, last = float(peak.value.iloc[0]), float(peak.value.max())
    return {"updates": int(peak["update"].max()), "peak_first_chunk_mb": first, "peak_mb": last,
            "growth": last / first, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--scale", default="evidence", choices=["quick", "evidence", "paper"])
    parser.add_argument("--fraction", type=float, default=0.25, help="of each run's steps (per round)")
    parser.add_argument("--rounds", type=int, default=2, help="at most this many rounds")
    parser.add_argument("--variants", type=int, default=1, help="the first N variants of each experiment")
    parser.add_argument("--out", default="bench/results/peak_memory.json")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction: must be in (0, 1], got {args.fraction}")
    for name in ("rounds", "variants"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    import plastix.experiments as ex

    rows = []
    for name in args.experiments:
        exp = ex.load(name, args.scale)
        if exp.kind != "train":
            print(f"{name}: kind {exp.kind!r} trains nothing of its own (its source's runs are measured)")
            continue
        for variant in exp.variants[: args.variants]:
            cfg = shortened(ex.config_for(variant.overrides, exp.seeds), args.fraction, args.rounds)
            with tempfile.TemporaryDirectory() as tmp:
                result = measure(cfg, Path(tmp) / "run")
            rows.append({"experiment": name, "variant": variant.name, "seeds": len(exp.seeds), **result})
            r = rows[-1]
            print(f"{name:>22} {variant.name:>28} seeds {r['seeds']} updates {r['updates']:>4} peak "
                  f"{r['peak_mb']:>7.0f} MiB (after the first chunk {r['peak_first_chunk_mb']:.0f}, x{r['growth']:.2f}) "
                  f"{r['wall_s']:.0f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
