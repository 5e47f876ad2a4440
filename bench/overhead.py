"""Throughput overhead of diagnostics and of each mitigation, beside the same run without them.

Every variant is plastix PPO with the OCP preset on HalfCheetah-v4 with 8 vmapped seeds, in its own
subprocess, measured in one invocation (these machines are noisy: compare ratios, not absolute numbers).
Steady-state steps/s is all env steps over all time of the updates after the first (compilation
excluded), so periodic measurements count at their real frequency. The reference is the same
configuration with diagnostics and curvature off and no mitigation.

    python bench/overhead.py --suite diagnostics      # off / every 10 / every update / + curvature every 100
    python bench/overhead.py --suite mitigations      # each mitigation at its default schedule
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OFF = ["--diagnostics-every", "0", "--curvature-every", "0"]
SUITES = {
    "diagnostics": {
        "reference (diagnostics off)": OFF,
        "diagnostics every 10": ["--diagnostics-every", "10", "--curvature-every", "0"],
        "diagnostics every update": ["--diagnostics-every", "1", "--curvature-every", "0"],
        # One curvature measurement per 10 updates; its cost at every 100 updates is a tenth of this overhead.
        "diagnostics every 10 + curvature every 10": ["--diagnostics-every", "10", "--curvature-every", "10"],
    },
    "mitigations": {
        "reference (no mitigation)": OFF,
        **{name: OFF + ["--mitigations", name] for name in
           ["l2", "l2_init", "weight_clip", "soft_sp", "redo", "cbp", "layernorm", "crelu"]},
        # Surgeries that fire at task switches by default: give them a period so they run at all.
        **{f"{name} (every 320 steps)": OFF + ["--mitigations", name, f"--{name}.every", "320"] for name in
           ["shrink_perturb", "reset", "adam_reset", "ocp_perturb"]},
        "redo,l2_init,layernorm,soft_sp (together)": OFF + ["--mitigations", "redo,l2_init,layernorm,soft_sp"],
    },
}


def measure(flags: list[str], seeds: int, updates: int) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "throughput.py"), "--updates", str(updates), "--child", "ppo", str(seeds),
           "--extra", *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--updates", type=int, default=21, help="PPO updates per variant (2048 steps per seed each)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole list this many times, interleaved, and keep each variant's median")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in SUITES[args.suite]}
    for _ in range(args.repeats):  # interleaved, so slow drifts of the machine hit every variant alike
        for name, flags in SUITES[args.suite].items():
            result = measure(flags, args.seeds, args.updates)
            runs[name].append(result)
            print(f"  measured {name}: {result['sps']:.0f} steps/s", file=sys.stderr, flush=True)
    rows = []
    for name, results in runs.items():
        median = sorted(results, key=lambda r: r["sps"])[len(results) // 2]
        rows.append({"variant": name, **median, "all_sps": [r["sps"] for r in results]})
    reference = rows[0]["sps"]
    print(f"{'variant':<46} {'steps/s':>9} {'vs reference':>13} {'overhead':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['variant']:<46} {r['sps']:>9.0f} {r['sps'] / reference:>13.3f} {1 - r['sps'] / reference:>8.1%} "
              f"{r['peak_rss_mib']:>9.0f}")
    out = args.out or f"bench/results/overhead_{args.suite}.json"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
