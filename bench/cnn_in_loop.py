"""XLA CPU's slow path for convolution gradients inside loops (jax-ml/jax#12868), beside the same gradient
outside a loop, in one run.

The IMPALA CNN actor-critic of ``plastix.nets`` on ``--batch`` 64x64x3 frames: one gradient jitted alone
(the reference), two gradient steps inside ``lax.scan``, the same scan unrolled, and one gradient inside
``lax.map`` over a stacked seed axis of 1 (how PPO maps seeds). Prints seconds per gradient and the ratio
to the reference. This is why CNN PPO (CoinRun, Atari) is slow on the CPU; MLPs are not affected.

    python bench/cnn_in_loop.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from plastix.nets import CNNActorCritic


def seconds(fn, *args, repeats: int = 3) -> float:
    """Median wall time of ``fn(*args)`` after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    net = CNNActorCritic(15, "impala")
    obs = jax.random.randint(jax.random.PRNGKey(0), (args.batch, 64, 64, 3), 0, 255).astype(jnp.uint8)
    params = net.init(jax.random.PRNGKey(0), obs[:1])["params"]
    loss = lambda p, o: jnp.sum(net.apply({"params": p}, o)[0] ** 2)
    sgd = lambda c, o: jax.tree.map(lambda a, b: a - 1e-3 * b, c, jax.grad(loss)(c, o))

    def scan(unroll):
        return jax.jit(lambda p, o: jax.lax.scan(lambda c, _: (sgd(c, o), None), p, None, length=2, unroll=unroll)[0])

    stacked = jax.tree.map(lambda a: a[None], params)
    rows = {
        "one gradient, no loop (reference)": seconds(jax.jit(jax.grad(loss)), params, obs),
        "lax.scan of 2 gradient steps (per step)": seconds(scan(False), params, obs) / 2,
        "lax.scan of 2, unrolled (per step)": seconds(scan(True), params, obs) / 2,
        "lax.map over 1 seed": seconds(jax.jit(lambda s, o: jax.lax.map(lambda p: jax.grad(loss)(p, o), s)),
                                       stacked, obs),
    }
    reference = rows["one gradient, no loop (reference)"]
    print(f"{'IMPALA CNN gradient on ' + str(args.batch) + ' frames':<45} {'seconds':>8} {'x reference':>12}")
    for name, value in rows.items():
        print(f"{name:<45} {value:>8.3f} {value / reference:>12.1f}")


if __name__ == "__main__":
    main()
