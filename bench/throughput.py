"""Throughput of plastix PPO on HalfCheetah-v4 (OCP preset) beside raw envpool stepping, in one run.

For each seed count S in --seeds-counts: (1) the raw envpool rate with S envs and random actions from a
Python loop (the reference the issue names), (2) plastix PPO with S vmapped seeds (steady-state steps/s:
all steps over all time of the updates after the first, compilation excluded), and its peak resident memory. Each measurement runs
in its own subprocess so peak memory is its own. Prints a table with ratios; writes JSON to --out.

    python bench/throughput.py --updates 6 --seeds-counts 1 8

Before/after a change, in the same run: ``--compare-src OLD/src`` (e.g. a ``git worktree add --detach OLD REV``)
also times PPO with that source tree, alternating old and new ``--repeats`` times (old, new, old, new, ...) so
that the machine's load drifts over both alike, and prints the median of the per-repeat ratios new / old.

    python bench/throughput.py --updates 6 --seeds-counts 1 8 --compare-src /tmp/old/src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def raw_envpool(num_envs: int, steps: int) -> dict:
    import envpool
    import numpy as np

    env = envpool.make("HalfCheetah-v4", env_type="gymnasium", num_envs=num_envs, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(64, num_envs, 6))
    for i in range(200):
        env.step(actions[i % 64])
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(steps):
            env.step(actions[i % 64])
        rates.append(steps * num_envs / (time.perf_counter() - start))
    return {"sps": sorted(rates)[len(rates) // 2]}


def plastix_ppo(num_seeds: int, updates: int, extra: list[str]) -> dict:
    import numpy as np

    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    run_dir = tempfile.mkdtemp() + "/run"
    seeds = ",".join(str(s) for s in range(num_seeds))
    args = ["--preset", "ocp", "--seeds", seeds, "--total-timesteps", str(updates * 2048), "--log-every", "1",
            "--checkpoint-every", str(updates), "--run-dir", run_dir, "--quiet", *extra]
    start = time.perf_counter()
    train(parse_train_args(args))
    wall = time.perf_counter() - start
    df = read_metrics(run_dir)
    sps = df[(df.key == "time/sps") & (df.seed == 0)].sort_values("update").value.to_numpy()
    steady = sps[1:] if len(sps) > 2 else sps  # the first call warms caches up
    # Steps over time across the steady updates (not a median: periodic measurements must count).
    return {"sps": len(steady) / np.sum(1.0 / steady), "median_update_sps": float(np.median(steady)), "wall_s": wall}


def child(kind: str, n: int, updates: int, extra: list[str]) -> dict:
    out = raw_envpool(n, 2048 // n if n > 1 else 2048) if kind == "raw" else plastix_ppo(n, updates, extra)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(kind: str, n: int, args, src: str | None = None) -> dict:
    """One measurement in its own subprocess (its own peak memory); ``src``: a plastix source tree to import."""
    cmd = [sys.executable, __file__, "--updates", str(args.updates), "--child", kind, str(n), "--extra", *args.extra]
    env = dict(os.environ, PYTHONPATH=src) if src else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(n: int, args) -> dict:
    """PPO with the old (``--compare-src``) and the current source, alternated ``--repeats`` times."""
    old, new = [], []
    for _ in range(args.repeats):
        old.append(run_child("ppo", n, args, args.compare_src)["sps"])
        new.append(run_child("ppo", n, args)["sps"])
    ratios = [b / a for a, b in zip(old, new)]
    return {"old_sps": old, "new_sps": new, "new_over_old": ratios, "median_new_over_old": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=6, help="PPO updates (2048 steps per seed each)")
    parser.add_argument("--seeds-counts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compare-src", help="a plastix source tree (e.g. an older commit's src/) to time beside this one")
    parser.add_argument("--repeats", type=int, default=3, help="old/new pairs with --compare-src")
    parser.add_argument("--out", default="bench/results/throughput.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="extra `plastix train` flags")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.updates, args.extra)))
        return
    if args.repeats < 1:
        parser.error(f"--repeats: must be >= 1, got {args.repeats}")
    if args.compare_src and not os.path.isdir(os.path.join(args.compare_src, "plastix")):
        parser.error(f"--compare-src {args.compare_src}: no plastix package there (give the tree's src/ folder)")
    rows = []
    for n in args.seeds_counts:
        result = {kind: run_child(kind, n, args) for kind in ("raw", "ppo")}
        row = {"seeds": n, **{f"{k}_{m}": v for k, r in result.items() for m, v in r.items()}}
        if args.compare_src:
            row.update(compare(n, args))
        rows.append(row)
    print(f"{'seeds':>5} {'raw envpool sps':>16} {'plastix sps':>12} {'ratio':>6} {'peak MiB':>9}"
          + (f" {'new/old (median)':>17}" if args.compare_src else ""))
    for r in rows:
        line = f"{r['seeds']:>5} {r['raw_sps']:>16.0f} {r['ppo_sps']:>12.0f} {r['ppo_sps'] / r['raw_sps']:>6.2f} {r['ppo_peak_rss_mib']:>9.0f}"
        if args.compare_src:
            line += f" {r['median_new_over_old']:>17.2f}  ({', '.join(f'{x:.2f}' for x in r['new_over_old'])})"
        print(line)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
