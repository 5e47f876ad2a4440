"""Throughput of plastix PPO on the DMC, gymnax, Craftax and Gymnasium envs beside each env's raw stepping.

For each env: (1) the raw rate of its own library with random actions and the same number of envs (the
reference): envpool's ``step`` in a Python loop (DMC), ``jax.jit`` of a ``lax.scan`` over ``vmap(env.step)``
(gymnax / Craftax: their own auto-resetting step), ``gymnasium.vector.SyncVectorEnv.step`` in a Python loop
(``gymnasium:ID``); (2) plastix PPO (the default preset of the env's family with ``--num-envs``,
``--num-steps``, 4 minibatches, default diagnostics: every 10 updates), steady-state steps/s (all steps over all time of the updates after the first,
compilation excluded). Each measurement runs in its own subprocess. ``gymnasium:CartPole-v1`` (host bridge)
beside ``CartPole-v1`` (gymnax, compiled) is the cost of the host path on one task.

    python bench/env_throughput.py --updates 6 --num-envs 8 --num-steps 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ENVS = ["CartPole-v1", "gymnasium:CartPole-v1", "Breakout-MinAtar", "SpaceInvaders-MinAtar",
        "Craftax-Classic-Symbolic-v1", "CheetahRun-v1", "gymnasium:Pendulum-v1"]


def _median_rate(run, steps: int, envs: int, repeats: int = 5) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(steps * envs / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def raw_rate(env_id: str, envs: int, steps: int) -> float:
    """Env steps per second of the env's own library, random actions (see module docstring)."""
    import numpy as np

    from plastix.envs.shifts import env_family

    family = env_family(env_id)
    rng = np.random.default_rng(0)
    if family == "dmc":
        import envpool

        env = envpool.make(env_id, env_type="gymnasium", num_envs=envs, seed=0)
        env.reset()
        actions = rng.uniform(-1, 1, (64, envs) + env.action_space.shape)
        return _median_rate(lambda: [env.step(actions[i % 64]) for i in range(steps)], steps, envs)
    if family == "gymnasium":
        import gymnasium

        gym_id = env_id.split(":", 1)[1]
        env = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(gym_id) for _ in range(envs)])
        env.reset(seed=0)
        actions = [env.action_space.sample() for _ in range(64)]
        return _median_rate(lambda: [env.step(actions[i % 64]) for i in range(steps)], steps, envs)
    import jax

    if family == "gymnax":
        import gymnax

        env, params = gymnax.make(env_id)
    else:
        from craftax.craftax_env import make_craftax_env_from_name

        env = make_craftax_env_from_name(env_id, auto_reset=True)
        params = env.default_params
    num_actions = env.action_space(params).n

    @jax.jit
    def rollout(key):
        with jax.enable_x64(False):  # the libraries' own 32-bit setting (importing plastix turns x64 on)
            keys = jax.random.split(key, envs)
            _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)

            def body(carry, _):
                state, key = carry
                key, act_key, step_key = jax.random.split(key, 3)
                action = jax.random.randint(act_key, (envs,), 0, num_actions)
                out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(jax.random.split(step_key, envs), state, action, params)
                return (out[1], key), out[2]

            _, rewards = jax.lax.scan(body, (state, key), None, length=steps)
        return rewards.sum()

    rollout(jax.random.PRNGKey(0)).block_until_ready()
    return _median_rate(lambda: rollout(jax.random.PRNGKey(1)).block_until_ready(), steps, envs)


def plastix_rate(env_id: str, envs: int, steps: int, updates: int) -> dict:
    import numpy as np

    from plastix.cli import parse_train_args
    from plastix.store import read_metrics
    from plastix.training import train

    run_dir = tempfile.mkdtemp() + "/run"
    args = ["--env-id", env_id, "--num-envs", str(envs), "--num-steps", str(steps), "--num-minibatches", "4",
            "--total-timesteps", str(updates * envs * steps), "--log-every", "1",
            "--checkpoint-every", str(updates), "--run-dir", run_dir, "--quiet"]
    start = time.perf_counter()
    train(parse_train_args(args))
    wall = time.perf_counter() - start
    df = read_metrics(run_dir)
    sps = df[(df.key == "time/sps") & (df.seed == 0)].sort_values("update").value.to_numpy()
    steady = sps[1:] if len(sps) > 2 else sps
    return {"sps": float(len(steady) / np.sum(1.0 / steady)), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--out", default="bench/results/env_throughput.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, env_id = args.child
        out = ({"sps": raw_rate(env_id, args.num_envs, args.num_steps)} if kind == "raw"
               else plastix_rate(env_id, args.num_envs, args.num_steps, args.updates))
        print(json.dumps(out))
        return
    rows = []
    for env_id in args.envs:
        row = {"env": env_id}
        for kind in ("raw", "ppo"):
            cmd = [sys.executable, __file__, "--updates", str(args.updates), "--num-envs", str(args.num_envs),
                   "--num-steps", str(args.num_steps), "--child", kind, env_id]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row.update({f"{kind}_{k}": v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()})
        rows.append(row)
        print(f"{env_id:>30} raw {row['raw_sps']:>10.0f} sps  plastix {row['ppo_sps']:>8.0f} sps  "
              f"ratio {row['ppo_sps'] / row['raw_sps']:.3f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
