"""Report time at scale (issue 12, "anything that breaks at scale"): ``plastix report`` on a large sweep.

Writes a synthetic sweep with the shape of the Juliani & Ash grid at paper scale (``juliani-ash --scale
paper``: 78 runs x 5 seeds, 10 rounds) and the metric keys a real J&A run logs (``--network juliani-ash``
on the gridworld: 27 keys every update, 62 diagnostics every ``--diagnostics-every 4`` updates, 6
``round/*`` keys per round), with made-up values (no training: it takes seconds), then times
``build_report`` on it (the median of ``--repeats``; ``--profile`` prints the top functions by cumulative
time). The sweep is kept in ``--out`` and reused when it exists.

    python bench/report_scale.py --updates 1000 --out /tmp/report-scale [--runs 78] [--profile]
    python bench/report_scale.py --compare OLD_SRC      # this checkout's src/ and OLD_SRC, one after the other

``--compare`` builds the report with each ``src`` folder in a child process (e.g. an older plastix made with
``git archive COMMIT src | tar -x -C /tmp/old``) and prints each one's wall time, CPU time (all threads) and
peak memory, and their ratios. Measured here on 2 shared CPU cores (load ~30, so compare CPU and memory,
not wall): 78 runs x 5 seeds x 1,000 updates (12.4M rows): the split report at 04fbee4 185.5 s CPU and
5.14 GB peak, after the fixes (one read per run, categorical run names, vectorised final values, bootstrap
quantiles, IQM replicates and binned curves) 101.5 s CPU and 1.83 GB; every table of the page the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

EVERY_UPDATE = ["baseline/optim/lr", "baseline/return/episodic", "loss/approx_kl", "loss/clipfrac", "loss/entropy",
                "loss/explained_variance", "loss/old_approx_kl", "loss/policy", "loss/value",
                "mitigation/optimizer_rebuild/applied", "optim/grad_norm", "optim/lr", "return/episode_length",
                "return/episodes", "return/episodic", "time/sps"]
LAYER_STATS = ["active_units", "dead_units", "dead_units_every_input", "dormant_ratio@0", "dormant_ratio@0.025",
               "dormant_ratio@0.1", "effective_rank", "grad_norm", "overlap/dormant", "overlap/dormant_zero_grad",
               "overlap/zero_grad", "srank", "weight/dist_init", "weight/l2", "weight/max_abs", "weight/mean_abs",
               "weight/rms", "weight/std", "weight/update_l2", "weight/update_rms", "zero_grad_ratio/layer",
               "zero_grad_ratio/loss", "zero_grad_ratio_rel@0.025/layer", "zero_grad_ratio_rel@0.025/loss"]
HEAD_STATS = ["dist_init", "l2", "max_abs", "mean_abs", "rms", "std", "update_l2", "update_rms"]
DIAGNOSTICS = ([f"torso/layer_{i}/{s}" for i in (1, 2) for s in LAYER_STATS]
               + [f"{h}_output/weight/{s}" for h in ("policy", "value") for s in HEAD_STATS]
               + ["model/dist_init_rms", "model/update_rms", "model/weight_diff", "model/weight_m",
                  "torso/dormant_ratio@0", "torso/dormant_ratio@0.025", "torso/dormant_ratio@0.1"])
ROUND_KEYS = ["round/generalization_gap", "round/normalized_return", "round/return_fresh", "round/return_heldout",
              "round/return_train"]


def run_metrics(rng, updates: int, seeds: int, rounds: int, diagnostics_every: int = 4) -> dict[str, np.ndarray]:
    """``{key: [updates, seeds]}`` with NaN where a key is not logged (as the trainer writes them)."""
    out = {k: rng.normal(size=(updates, seeds)) for k in EVERY_UPDATE}
    diag = np.full((updates, seeds), np.nan)
    logged = (np.arange(1, updates + 1) % diagnostics_every == 0) | (np.arange(updates) == 0)
    for k in DIAGNOSTICS:
        v = diag.copy()
        v[logged] = rng.uniform(size=(logged.sum(), seeds))
        out[k] = v
    ends = np.linspace(updates / rounds, updates, rounds).round().astype(int) - 1
    for k in ["round/index", *ROUND_KEYS]:
        v = diag.copy()
        v[ends] = np.arange(rounds)[:, None] if k == "round/index" else rng.normal(size=(rounds, seeds))
        out[k] = v
    return out


def make_sweep(out: Path, updates: int, runs: int, rounds: int = 10, part: int = 64) -> Path:
    """The synthetic sweep in ``out`` (kept when it exists)."""
    from plastix import experiments as ex
    from plastix import store
    from plastix.runner import plan, write_manifest

    if (out / "sweep.json").exists():
        return out
    exp = ex.load("juliani-ash", "paper")
    specs = plan([exp])[:runs]
    (out / "runs").mkdir(parents=True)
    write_manifest(out, [exp], specs)
    rng = np.random.default_rng(0)
    for spec in specs:
        run_dir = out / "runs" / spec.name
        run_dir.mkdir()
        store.write_config(run_dir, {"values": spec.values, "seeds": spec.seeds})
        metrics = run_metrics(rng, updates, len(spec.seeds), rounds)
        for first in range(1, updates + 1, part):
            chunk = {k: v[first - 1 : first - 1 + part] for k, v in metrics.items()}
            store.write_metrics_part(run_dir, store.metrics_table(chunk, spec.seeds, first, 1024), first)
    return out


CHILD = """
import resource, sys, time
from plastix.report import build_report
t0, c0 = time.perf_counter(), time.process_time()
build_report(sys.argv[1], sys.argv[2])
print(time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
"""


def compare(sweep: Path, sources: dict[str, str]) -> None:
    """Build the report with each ``{name: src folder}`` in a child process; print time, CPU and memory."""
    import os
    import subprocess
    import sys

    results = {}
    for name, src in sources.items():
        env = {**os.environ, "PYTHONPATH": str(Path(src).absolute())}
        out = subprocess.run([sys.executable, "-c", CHILD, str(sweep), str(sweep / f"report-{name}")], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        results[name] = [float(x) for x in out[-3:]]
        print(f"{name}: wall {results[name][0]:.1f} s, CPU {results[name][1]:.1f} s, peak {results[name][2]:.2f} GB")
    (a, b) = results.values()
    print(f"ratio {' / '.join(results)}: wall {a[0] / b[0]:.2f}, CPU {a[1] / b[1]:.2f}, peak memory {a[2] / b[2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/report-scale")
    parser.add_argument("--updates", type=int, default=1000, help="updates per run")
    parser.add_argument("--runs", type=int, default=78, help="runs of the sweep (at most juliani-ash's 78)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", metavar="OLD_SRC", help="also build with the plastix in OLD_SRC; print ratios")
    args = parser.parse_args()
    t0 = time.perf_counter()
    sweep = make_sweep(Path(args.out), args.updates, args.runs)
    print(f"sweep: {sweep} ({time.perf_counter() - t0:.1f}s to make or find)")
    if args.compare:
        compare(sweep, {"this": Path(__file__).parent.parent / "src", "old": args.compare})
        return
    from plastix.report import build_report

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(build_report, sweep, sweep / "report")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        else:
            build_report(sweep, sweep / "report")
        times.append(time.perf_counter() - t0)
    print(f"build_report: median {statistics.median(times):.1f}s over {len(times)} ({', '.join(f'{t:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
