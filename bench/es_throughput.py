"""Throughput of plastix OpenAI-ES (``plastix.algos.es.train_es``) on HalfCheetah-v4.

For each population size in --popsizes: ``train_es`` with one seed, ``--episode-steps`` steps per episode
(the mean policy's episode included, so ``popsize + 1`` envs), diagnostics every generation or off.
Reports the steady-state generations/s and env steps/s (median over the generations after the first;
compilation excluded; the host reset of the pool included) and the wall time with compilation. With
--learn G it also prints ``return/mean`` and ``return/mean_policy`` over G generations. Writes JSON to --out.

    python bench/es_throughput.py --popsizes 32 --generations 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def run(popsize: int, episode_steps: int, generations: int, diagnostics_every: int, seeds: str) -> dict:
    import numpy as np

    from plastix.algos.es import ESConfig, train_es
    from plastix.store import read_metrics

    cfg = ESConfig(seeds=seeds, popsize=popsize, episode_steps=episode_steps,
                   total_timesteps=popsize * episode_steps * generations, diagnostics_every=diagnostics_every,
                   log_every=generations, quiet=True)
    start = time.perf_counter()
    run_dir = train_es(cfg, tempfile.mkdtemp() + "/run")
    wall = time.perf_counter() - start
    df = read_metrics(run_dir)
    first_seed = df[df.seed == df.seed.min()]
    sps = first_seed[first_seed.key == "time/sps"].sort_values("update").value.to_numpy()
    steady = float(np.median(sps[1:] if len(sps) > 1 else sps))
    steps_per_gen = len(cfg.seed_list) * cfg.envs_per_seed * episode_steps
    curve = {key: first_seed[first_seed.key == key].sort_values("update").value.round(1).tolist()
             for key in ("return/mean", "return/mean_policy")}
    return {"popsize": popsize, "seeds": seeds, "episode_steps": episode_steps, "diagnostics_every": diagnostics_every,
            "env_steps_per_s": steady, "generations_per_s": steady / steps_per_gen, "wall_s_with_compile": wall,
            "generations": generations, **curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--popsizes", type=int, nargs="+", default=[32])
    parser.add_argument("--episode-steps", type=int, default=1000)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--learn", type=int, default=0, help="also train this many generations and print returns")
    parser.add_argument("--out", default="bench/results/es_throughput.json")
    args = parser.parse_args()
    results = []
    for popsize in args.popsizes:
        for diagnostics_every in (1, 0):
            r = run(popsize, args.episode_steps, args.generations, diagnostics_every, args.seeds)
            results.append(r)
            print(f"popsize {popsize:4d}  diagnostics {'on ' if diagnostics_every else 'off'}  "
                  f"{r['generations_per_s']:.3f} gen/s  {r['env_steps_per_s']:9.0f} env steps/s  "
                  f"(wall with compile {r['wall_s_with_compile']:.1f}s)", flush=True)
    if args.learn:
        r = run(args.popsizes[0], args.episode_steps, args.learn, 1, args.seeds)
        r["kind"] = "learning"
        results.append(r)
        print("return/mean       ", r["return/mean"])
        print("return/mean_policy", r["return/mean_policy"])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
