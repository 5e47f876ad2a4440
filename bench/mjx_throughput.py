"""HalfCheetah-v4 steps/s: MuJoCo MJX (JAX) beside envpool (MuJoCo C), measured in the same run.

- envpool, raw: random actions from a Python loop (``env.step``), ``n`` envs, all cores (``num_threads=0``);
- envpool, XLA: ``EnvpoolBridge.step`` inside a jitted ``lax.scan`` (what the PPO trainer runs);
- MJX: ``MJXBridge.step`` (vmap of the auto-resetting step) inside a jitted ``lax.scan``, random actions drawn
  inside the scan. Compilation is timed apart and excluded from steps/s.

Steps/s counts env steps (one step = 5 physics steps) summed over envs; each rate is the median of
``--repeats`` timed runs. JAX picks the device (CPU here; a GPU when one is present, unchanged), and the
device is printed and recorded. ``--validate`` also prints the max abs error of MJX and of MuJoCo C (the
``mujoco`` Python package) against envpool from the same initial state and actions at 10/100/1000 steps.

    python bench/mjx_throughput.py --validate                       # CPU: 1, 8, 64 envs
    python bench/mjx_throughput.py --mjx-envs 1024 4096 16384        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def _median_rate(fn, steps_per_call: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(steps_per_call / (time.perf_counter() - start))
    return float(sorted(rates)[len(rates) // 2])


def envpool_raw(num_envs: int, steps: int, repeats: int) -> dict:
    import envpool

    env = envpool.make("HalfCheetah-v4", env_type="gymnasium", num_envs=num_envs, seed=0)
    env.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(64, num_envs, 6))
    for i in range(100):
        env.step(actions[i % 64])

    def run():
        for i in range(steps):
            env.step(actions[i % 64])

    return {"sps": _median_rate(run, steps * num_envs, repeats)}


def scan_rate(bridge, steps: int, repeats: int) -> dict:
    """Steps/s of ``bridge.step`` inside a jitted ``lax.scan`` of ``steps`` steps with random actions."""
    import jax
    import jax.numpy as jnp

    bridge.reset()
    shape = (len(bridge.seeds), bridge.envs_per_seed, bridge.action_dim)

    def body(carry, t):
        handle, acc = carry
        action = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(0), t), shape, jnp.float32, -1, 1)
        handle, out = bridge.step(handle, action)  # (obs, reward, terminated, truncated[, extras])
        return (handle, acc + out[1].sum()), None

    @jax.jit
    def run(handle):
        (handle, acc), _ = jax.lax.scan(body, (handle, jnp.zeros((), jnp.float32)), jnp.arange(steps))
        return handle, acc

    start = time.perf_counter()
    compiled = run.lower(bridge.handle()).compile()
    compile_s = time.perf_counter() - start
    state = {"h": bridge.handle()}

    def call():
        h, acc = compiled(state["h"])
        jax.block_until_ready(acc)
        state["h"] = h

    call()  # warm-up
    return {"sps": _median_rate(call, steps * bridge.num_envs, repeats), "compile_s": compile_s}


def validate(horizon: int = 1000, seeds=tuple(range(8))) -> dict:
    """Max abs obs / reward error vs envpool at 10, 100, 1000 steps (MJX and MuJoCo C), over ``seeds``."""
    import envpool
    import jax
    import jax.numpy as jnp
    import mujoco

    from plastix.envs.mjx_halfcheetah import MJXHalfCheetah

    env = MJXHalfCheetah()

    @jax.jit
    def rollout(state, actions):
        def body(s, a):
            obs, s, reward, _, _ = env.step(s, a)
            return s, (obs, reward)

        return jax.lax.scan(body, state, actions)[1]

    marks = [k for k in (1, 10, 25, 50, 100, 200, 1000) if k <= horizon]
    out = {"mjx": {k: [0.0, 0.0] for k in marks}, "mujoco_c": {k: [0.0, 0.0] for k in marks}}
    for seed in seeds:
        ep = envpool.make("HalfCheetah-v4", env_type="gymnasium", num_envs=1, seed=seed)
        obs0, _ = ep.reset()
        actions = np.random.default_rng(seed).uniform(-1, 1, (horizon, 6))
        ref_obs, ref_rew, info1 = [], [], None
        for t in range(horizon):
            o, r, _, _, info = ep.step(actions[t][None])
            ref_obs.append(o[0])
            ref_rew.append(r[0])
            info1 = info1 or {k: info[k][0] for k in ("x_position", "x_velocity")}
        # envpool reports x_position 0 at reset: recover qpos[0] from the first step (x1 - v1 * dt).
        x0 = info1["x_position"] - info1["x_velocity"] * env.dt
        qpos, qvel = np.concatenate([[x0], obs0[0, :8]]), obs0[0, 8:]
        mobs, mrew = map(np.asarray, rollout(env.state_from(qpos, qvel, jax.random.PRNGKey(0)), jnp.asarray(actions)))
        # MuJoCo C through the mujoco package, same model file, same steps.
        m = env.mj_model
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:] = qpos, qvel
        mujoco.mj_forward(m, d)
        cobs, crew = [], []
        for a in actions:
            xb = d.qpos[0]
            d.ctrl[:] = a
            mujoco.mj_step(m, d, nstep=5)
            cobs.append(np.concatenate([d.qpos[1:], d.qvel]))
            crew.append(np.float32((d.qpos[0] - xb) / env.dt - 0.1 * np.sum(a * a)))
        ref_obs, ref_rew = np.array(ref_obs), np.array(ref_rew)
        for name, (o, r) in {"mjx": (mobs, mrew), "mujoco_c": (np.array(cobs), np.array(crew))}.items():
            eo, er = np.abs(o - ref_obs).max(-1), np.abs(r - ref_rew)
            for k in marks:
                out[name][k][0] = max(out[name][k][0], float(eo[:k].max()))
                out[name][k][1] = max(out[name][k][1], float(er[:k].max()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mjx-envs", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--envpool-envs", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--steps", type=int, default=200, help="env steps per timed scan / loop")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--validate", action="store_true", help="also print errors vs envpool at 10/100/1000 steps")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "mjx_throughput.json"))
    args = p.parse_args()

    import jax

    import plastix  # noqa: F401  (x64)
    from plastix.envs.envpool_bridge import EnvpoolBridge
    from plastix.envs.mjx_halfcheetah import MJXBridge

    dev = jax.devices()[0]
    result = {
        "device": f"{dev.platform}: {dev.device_kind}",
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "steps_per_call": args.steps,
        "rows": [],
    }
    print(f"device {result['device']}  (jax {jax.__version__}, {os.cpu_count()} CPUs)")
    print(f"{'backend':<16}{'envs':>7}{'steps/s':>12}{'compile s':>11}")
    for n in args.envpool_envs:
        r = envpool_raw(n, args.steps, args.repeats)
        result["rows"].append({"backend": "envpool-python", "envs": n, **r})
        print(f"{'envpool-python':<16}{n:>7}{r['sps']:>12.0f}{'':>11}")
        b = EnvpoolBridge("HalfCheetah-v4", [0], n)
        r = scan_rate(b, args.steps, args.repeats)
        b.close()
        result["rows"].append({"backend": "envpool-xla", "envs": n, **r})
        print(f"{'envpool-xla':<16}{n:>7}{r['sps']:>12.0f}{r['compile_s']:>11.1f}")
    for n in args.mjx_envs:
        r = scan_rate(MJXBridge("HalfCheetah-v4", [0], n), args.steps, args.repeats)
        result["rows"].append({"backend": "mjx", "envs": n, **r})
        print(f"{'mjx':<16}{n:>7}{r['sps']:>12.0f}{r['compile_s']:>11.1f}")
    if args.validate:
        v = validate()
        result["validation"] = {name: {str(k): {"obs": e[0], "reward": e[1]} for k, e in d.items()} for name, d in v.items()}
        print("max abs error vs envpool (same initial state, uniform random actions, 8 episodes)")
        print(f"{'steps':>6}{'MJX obs':>12}{'MJX rew':>12}{'MuJoCo-C obs':>14}{'MuJoCo-C rew':>14}")
        for k in v["mjx"]:
            print(f"{k:>6}{v['mjx'][k][0]:>12.2e}{v['mjx'][k][1]:>12.2e}{v['mujoco_c'][k][0]:>14.2e}{v['mujoco_c'][k][1]:>14.2e}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
