"""CNN PPO on image envs beside its compute bound and the env's raw stepping rate, in one run.

For each scenario and seed count (each measurement in its own subprocess):

- ``ppo``: ``plastix train`` steady-state env steps/s (all members' steps over the time of the updates after
  the first; compilation excluded), with the learner ``--learner`` picks (default ``auto``: host-driven on
  images, ``plastix.algos.ppo_host``);
- ``bound``: the compute bound, the time of the same work as separately jitted calls outside any loop, each
  call timed alone (median of ``--repeats``), measured in the PPO run's process just before and just after it
  (the mean of the two: the machine's other jobs then weigh on PPO and bound alike): per member,
  ``num_steps`` policy forward passes on its ``num_envs`` frames plus ``update_epochs x num_minibatches``
  PPO gradient steps (``Agent.minibatch_step``: loss, gradient, optimizer) on a minibatch;
  steps/s = members x batch / that time;
- ``raw``: envpool stepping the same number of envs with random actions from a Python loop.

Scenarios: CoinRun with the IMPALA CNN (``cleanrl-procgen`` preset) and with Juliani & Ash's conv encoder
(``juliani-ash`` preset), Montezuma's Revenge with the Nature CNN (``cleanrl-atari``). Each keeps its preset's
minibatch count and epochs; ``--num-envs``/``--num-steps`` shrink the batch so that 2 CPU cores finish.
Prints a table (PPO / bound is the target, >= 0.5) and writes JSON to ``--out``::

    python bench/image_ppo.py --seeds-counts 1 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCENARIOS = {
    "coinrun-impala": ["--env-id", "CoinrunEasy-v0", "--preset", "cleanrl-procgen"],
    "coinrun-juliani-ash": ["--env-id", "CoinrunEasy-v0", "--preset", "juliani-ash"],
    "montezuma-nature": ["--env-id", "MontezumaRevenge-v5", "--preset", "cleanrl-atari"],
}


def _config(flags: list[str], seeds: int, updates: int, run_dir: str | None = None):
    from plastix.cli import parse_train_args

    cfg = parse_train_args([*flags, "--seeds", ",".join(map(str, range(seeds))), "--quiet"])
    args = [*flags, "--seeds", ",".join(map(str, range(seeds))),
            "--total-timesteps", str(updates * cfg.batch_size), "--log-every", "1",
            "--checkpoint-every", str(updates), "--diagnostics-every", "0", "--curvature-every", "0",
            "--quiet"]
    return parse_train_args(args + (["--run-dir", run_dir] if run_dir else []))


def ppo(flags: list[str], seeds: int, updates: int) -> dict:
    import numpy as np

    from plastix.store import read_metrics
    from plastix.training import train

    cfg = _config(flags, seeds, updates, tempfile.mkdtemp() + "/run")
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    df = read_metrics(cfg.run_dir)
    sps = df[(df.key == "time/sps") & (df.seed == 0)].sort_values("update").value.to_numpy()[1:]
    return {"sps": len(sps) / np.sum(1.0 / sps), "update_s": float(np.mean(seeds * cfg.batch_size / sps)),
            "wall_s": wall, "learner": cfg.learner}


def _median_seconds(fn, *args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bound(flags: list[str], seeds: int, repeats: int) -> dict:
    """The compute bound of one update of ``seeds`` members (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from plastix.algos.ppo import Agent, MinibatchCarry, Minibatch
    from plastix.envs import make_bridge

    cfg = _config(flags, 1, 2)
    bridge = make_bridge(cfg, [0])
    agent = Agent(cfg, bridge.spec)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(1))
    state = jax.tree.map(lambda x: x[0], agent.init_states(keys, jnp.asarray(bridge.reset())))
    bridge.close()
    obs = state.env.obs
    forward = jax.jit(lambda p, o: agent.forward(p, state.opt_state, o))
    t_forward = _median_seconds(forward, state.params, obs, repeats=repeats)
    n = cfg.minibatch_size
    rng = np.random.default_rng(0)
    normal = lambda shift=0.0: jnp.asarray(rng.normal(size=n) + shift, jnp.float32)
    batch = Minibatch(jnp.asarray(np.repeat(np.asarray(obs), -(-n // obs.shape[0]), 0)[:n]),
                      jnp.asarray(rng.integers(0, bridge.spec.action_dim, n), jnp.int32),
                      normal(-2.0), normal(), normal(), normal(), jnp.ones(n, bool))
    carry = MinibatchCarry(state.params, state.opt_state, state.surgery_state, jnp.zeros((), bool),
                           jax.random.PRNGKey(1), jnp.zeros((), bool))
    step = jax.jit(agent.minibatch_step)
    lr = jnp.float32(cfg.learning_rate)
    t_step = _median_seconds(step, carry, batch, jnp.arange(n), lr, repeats=repeats)
    per_member = cfg.num_steps * t_forward + cfg.update_epochs * cfg.num_minibatches * t_step
    return {"sps": cfg.batch_size / per_member, "update_s": seeds * per_member, "forward_s": t_forward,
            "gradient_step_s": t_step, "minibatch": n}


def raw(flags: list[str], seeds: int) -> dict:
    import envpool
    import numpy as np

    from plastix.envs.image_envs import ATARI_OPTIONS, PROCGEN_OPTIONS, image_env_family

    cfg = _config(flags, seeds, 2)
    envs = seeds * cfg.num_envs
    options = PROCGEN_OPTIONS if image_env_family(cfg.env_id) == "procgen" else ATARI_OPTIONS
    env = envpool.make(cfg.env_id, env_type="gymnasium", num_envs=envs, seed=0, **options)
    env.reset()
    actions = np.random.default_rng(0).integers(0, env.action_space.n, size=(64, envs))
    for i in range(50):
        env.step(actions[i % 64])
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(100):
            env.step(actions[i % 64])
        rates.append(100 * envs / (time.perf_counter() - start))
    return {"sps": sorted(rates)[2]}


def ppo_and_bound(flags: list[str], seeds: int, updates: int, repeats: int) -> dict:
    """PPO between two measurements of its compute bound, in one process: on a machine shared with other
    jobs the load then weighs on both alike (the bound is the mean of the two)."""
    before = bound(flags, seeds, repeats)
    result = ppo(flags, seeds, updates)
    after = bound(flags, seeds, repeats)
    mean = {k: (before[k] + after[k]) / 2 for k in ("update_s", "forward_s", "gradient_step_s")}
    steps = before["sps"] * before["update_s"]  # env steps of one update of every member
    mean["sps"] = steps / mean["update_s"]
    return {"ppo": result, "bound": {**mean, "before_sps": before["sps"], "after_sps": after["sps"],
                                     "minibatch": before["minibatch"]}}


def child(spec: dict) -> dict:
    if spec["what"] == "ppo_and_bound":
        return ppo_and_bound(spec["flags"], spec["seeds"], spec["updates"], spec["repeats"])
    return raw(spec["flags"], spec["seeds"])


def measure(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--seeds-counts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-envs", type=int, default=8, help="envs per seed (the presets': 64, 32, 8)")
    parser.add_argument("--num-steps", type=int, default=32,
                        help="rollout steps (the presets': 256, 32, 128)")
    parser.add_argument("--updates", type=int, default=3,
                        help="PPO updates per measurement (the first is excluded)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings per call of the compute bound (median)")
    parser.add_argument("--learner", default="auto", choices=["auto", "compiled", "host"])
    parser.add_argument("--out", default="bench/results/image_ppo.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    print(f"{'scenario':>20} {'seeds':>5} {'raw sps':>9} {'bound sps':>9} {'PPO sps':>8} "
          f"{'PPO/bound':>9} {'PPO/raw':>8} {'update s':>8}", flush=True)
    for name in args.scenarios:
        flags = [*SCENARIOS[name], "--num-envs", str(args.num_envs),
                 "--num-steps", str(args.num_steps), "--learner", args.learner]
        for seeds in args.seeds_counts:
            spec = {"what": "ppo_and_bound", "flags": flags, "seeds": seeds, "updates": args.updates,
                    "repeats": args.repeats}
            row = {"scenario": name, "seeds": seeds, "flags": flags,
                   "raw": measure({"what": "raw", "flags": flags, "seeds": seeds}), **measure(spec)}
            rows.append(row)
            r, b, p = row["raw"]["sps"], row["bound"]["sps"], row["ppo"]["sps"]
            print(f"{name:>20} {seeds:>5} {r:>9.0f} {b:>9.1f} {p:>8.1f} {p / b:>9.2f} "
                  f"{p / r:>8.4f} {row['ppo']['update_s']:>8.1f}", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
