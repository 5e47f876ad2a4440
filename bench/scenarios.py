"""Steps/s of plastix PPO on the scenario environments beside the raw stepping rate of the same envs, in one run.

Two environments (issue: non-stationary scenarios), each measured in its own subprocesses:

- Procgen CoinRun (``CoinrunEasy-v0``, IMPALA CNN) with ``--seeds`` seeds x ``--coinrun-envs`` envs: raw =
  envpool stepping the same number of envs with random actions from a Python loop;
- the JAX gridworld (``GridWorld-v0``, vector observations, MLP) with ``--grid-seeds`` seeds x
  ``--grid-envs`` envs: raw = the compiled ``batch_step_autoreset`` of the same envs in ``lax.scan``
  with random actions.

PPO steps/s is steady state (all env steps of all seeds over the time of the updates after the first;
compilation excluded). CoinRun's PPO settings are cut down from Procgen PPO's (64 steps, 2 minibatches, 1
epoch) to fit 2 CPU cores; CoinRun learns host-driven (``plastix.algos.ppo_host``: XLA's CPU backend runs
convolution gradients inside loops on a slow path, jax-ml/jax#12868), and ``bench/image_ppo.py`` sets CNN
PPO beside its compute bound. Prints a table with the ratio PPO / raw and writes JSON to ``--out``::

    python bench/scenarios.py                       # CoinRun 8 seeds x 2 envs, gridworld 64 seeds x 16 envs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _median_rate(step, steps: int, envs: int, repeats: int = 5) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(steps)
        rates.append(steps * envs / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def raw_coinrun(envs: int) -> dict:
    import envpool
    import numpy as np

    env = envpool.make("CoinrunEasy-v0", env_type="gymnasium", num_envs=envs, seed=0)
    env.reset()
    actions = np.random.default_rng(0).integers(0, 15, size=(64, envs))

    def run(steps):
        for i in range(steps):
            env.step(actions[i % 64])

    run(50)
    return {"sps": _median_rate(run, 200, envs)}


def raw_gridworld(envs: int, size: int) -> dict:
    import jax
    import jax.numpy as jnp

    from plastix.envs.gridworld import GridWorld, batch_reset, batch_step_autoreset

    env = GridWorld(size=size)
    params = env.make_params(jnp.arange(200))
    _, state = batch_reset(env, jax.random.split(jax.random.PRNGKey(0), envs), params)
    steps = 256

    @jax.jit
    def roll(state, key):
        def body(state, k):
            ka, ks = jax.random.split(k)
            action = jax.random.randint(ka, (envs,), 0, env.num_actions)
            obs, state, reward, *_ = batch_step_autoreset(env, jax.random.split(ks, envs), state, action, params)
            return state, reward.sum()
        return jax.lax.scan(body, state, jax.random.split(key, steps))

    jax.block_until_ready(roll(state, jax.random.PRNGKey(1)))
    return {"sps": _median_rate(lambda n: jax.block_until_ready(roll(state, jax.random.PRNGKey(n))), steps, envs)}


def ppo(flags: list[str], seeds: int, updates: int) -> dict:
    import numpy as np

    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    cfg = parse_train_args([*flags, "--seeds", ",".join(map(str, range(seeds))), "--quiet"])
    run_dir = tempfile.mkdtemp() + "/run"
    args = [*flags, "--seeds", ",".join(map(str, range(seeds))), "--total-timesteps", str(updates * cfg.batch_size),
            "--log-every", "1", "--checkpoint-every", str(updates), "--diagnostics-every", "0",
            "--curvature-every", "0", "--run-dir", run_dir, "--quiet"]
    train(parse_train_args(args))
    df = read_metrics(run_dir)
    sps = df[(df.key == "time/sps") & (df.seed == 0)].sort_values("update").value.to_numpy()[1:]
    return {"sps": len(sps) / np.sum(1.0 / sps)}


COINRUN = ["--env-id", "CoinrunEasy-v0", "--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "1",
           "--learning-rate", "5e-4", "--gamma", "0.999", "--ent-coef", "0.01"]
GRID = ["--env-id", "GridWorld-v0", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "4",
        "--learning-rate", "2.5e-3", "--gamma", "0.95"]


def child(spec: dict) -> dict:
    if spec["what"] == "raw_coinrun":
        return raw_coinrun(spec["envs"])
    if spec["what"] == "raw_gridworld":
        return raw_gridworld(spec["envs"], spec["size"])
    return ppo(spec["flags"], spec["seeds"], spec["updates"])


def measure(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="CoinRun seeds")
    parser.add_argument("--coinrun-envs", type=int, default=2, help="CoinRun envs per seed")
    parser.add_argument("--grid-seeds", type=int, default=64)
    parser.add_argument("--grid-envs", type=int, default=16, help="gridworld envs per seed")
    parser.add_argument("--grid-size", type=int, default=8)
    parser.add_argument("--updates", type=int, default=3, help="PPO updates per measurement (the first is excluded)")
    parser.add_argument("--out", default="bench/results/scenarios.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    coinrun_envs = args.seeds * args.coinrun_envs
    grid_envs = args.grid_seeds * args.grid_envs
    rows = [
        {"env": "CoinrunEasy-v0", "seeds": args.seeds, "envs": coinrun_envs,
         "raw": measure({"what": "raw_coinrun", "envs": coinrun_envs}),
         "ppo": measure({"what": "ppo", "seeds": args.seeds, "updates": args.updates,
                         "flags": [*COINRUN, "--num-envs", str(args.coinrun_envs)]})},
        {"env": "GridWorld-v0", "seeds": args.grid_seeds, "envs": grid_envs,
         "raw": measure({"what": "raw_gridworld", "envs": grid_envs, "size": args.grid_size}),
         "ppo": measure({"what": "ppo", "seeds": args.grid_seeds, "updates": args.updates,
                         "flags": [*GRID, "--num-envs", str(args.grid_envs), "--grid-size", str(args.grid_size)]})},
    ]
    print(f"{'env':>15} {'seeds':>5} {'envs':>5} {'raw sps':>10} {'PPO sps':>10} {'PPO/raw':>8}")
    for r in rows:
        ratio = r["ppo"]["sps"] / r["raw"]["sps"]
        print(f"{r['env']:>15} {r['seeds']:>5} {r['envs']:>5} {r['raw']['sps']:>10.0f} {r['ppo']['sps']:>10.0f} {ratio:>8.3f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
