"""PPO parity with CleanRL on HalfCheetah-v4 (issue 18, part 1): learning curves and the environment.

``learning`` (the default): plastix's ``--preset cleanrl`` over >= 10 seeds and CleanRL's own
``ppo_continuous_action.py`` over >= 5 seeds, both at 1M steps; per seed the mean episodic return of the
episodes that end in the last 10% of env steps; Welch's t test and the Mann-Whitney U test between the
two samples; a table beside CleanRL's published 1,442.64 +- 46.03 (3 seeds). Each side is either run here
or read from finished runs:

    python bench/cleanrl_parity.py learning --plastix-run RUN_DIR --cleanrl-runs RUNS_DIR
    python bench/cleanrl_parity.py learning --plastix-seeds 0,1,2,3,4,5,6,7,8,9 \
        --cleanrl-script ppo_continuous_action.py --cleanrl-python /path/to/cleanrl-venv/bin/python

(the user fetches CleanRL's script and makes its venv: torch, gymnasium==0.29.1, mujoco==2.3.3, tyro,
tensorboard, imageio). ``--out`` writes per-seed numbers and the tests as JSON.

``env``: envpool's HalfCheetah-v4 against gymnasium's from the same state and actions. gymnasium's env is
set to envpool's reset state (qpos = [x_position, obs[:8]], qvel = obs[8:]) and both take the same random
actions for one 1000-step episode; printed are the largest differences of observations and rewards
(open loop, and re-synchronised to envpool's state before every step). ``--gymnasium-python`` replays the
envpool trace under another interpreter (e.g. CleanRL's pinned gymnasium 0.29.1 / mujoco 2.3.3).

    python bench/cleanrl_parity.py env --steps 1000 --gymnasium-python /path/to/cleanrl-venv/bin/python
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PUBLISHED = (1442.64, 46.03, 3)  # CleanRL's benchmark docs, ppo_continuous_action.py, HalfCheetah-v4
TAIL = 0.1  # the statistic: mean return of the episodes ending in the last 10% of env steps


# ------------------------------------------------------------------------------------------- statistic
def tail_mean(
    steps: np.ndarray, returns: np.ndarray, total_steps: int, weights: np.ndarray | None = None
) -> float:
    """Mean episodic return of the episodes that end after ``(1 - TAIL) * total_steps`` env steps
    (``weights``: episodes per row, when a row is a mean over episodes)."""
    steps, returns = np.asarray(steps, float), np.asarray(returns, float)
    weights = np.ones_like(returns) if weights is None else np.asarray(weights, float)
    keep = (steps > (1.0 - TAIL) * total_steps) & np.isfinite(returns) & (weights > 0)
    if not keep.any():
        raise ValueError(f"no episode ends after {(1 - TAIL) * total_steps:.0f} env steps")
    return float(np.sum(returns[keep] * weights[keep]) / np.sum(weights[keep]))


def plastix_returns(run_dir: str) -> dict[int, float]:
    """Per seed of a plastix run folder: ``tail_mean`` of ``return/episodic`` (per-update means weighted
    by ``return/episodes``, so it is the mean over episodes, as for CleanRL)."""
    import pandas as pd

    frame = pd.read_parquet(Path(run_dir) / "metrics.parquet")
    config = json.loads((Path(run_dir) / "config.json").read_text())
    total = int(config.get("config", config).get("total_timesteps"))
    out = {}
    for seed, rows in frame[frame.key.isin(["return/episodic", "return/episodes"])].groupby("seed"):
        table = rows.pivot_table(index="env_step", columns="key", values="value")
        if table.index.max() < total - 2048 * int(config.get("config", config).get("num_envs", 1)):
            continue  # unfinished seed
        out[int(seed)] = tail_mean(
            table.index.to_numpy(),
            table["return/episodic"].to_numpy(),
            total,
            table["return/episodes"].to_numpy(),
        )
    return out


def cleanrl_returns(runs_dir: str, total: int) -> dict[int, float]:
    """Per seed of CleanRL's ``runs/`` folder: ``tail_mean`` of ``charts/episodic_return`` (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for run in sorted(glob.glob(os.path.join(runs_dir, "*__*__*__*"))):
        seed = int(Path(run).name.split("__")[2])
        acc = EventAccumulator(run, size_guidance={"scalars": 0})
        acc.Reload()
        if "charts/episodic_return" not in acc.Tags()["scalars"]:
            continue
        events = acc.Scalars("charts/episodic_return")
        steps = np.array([e.step for e in events])
        if steps.max() < 0.99 * total:
            continue  # unfinished (or killed) run
        out[seed] = tail_mean(steps, np.array([e.value for e in events]), total)
    return out


# ------------------------------------------------------------------------------------------- tests
def two_sample_tests(a: list[float], b: list[float]) -> dict:
    """Welch's t test and the two-sided Mann-Whitney U test of samples ``a`` and ``b`` (scipy when
    installed; else Welch's t with a normal approximation of its p value, and U with its normal
    approximation, no tie correction)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    try:
        from scipy import stats

        t = stats.ttest_ind(a, b, equal_var=False)
        u = stats.mannwhitneyu(a, b, alternative="two-sided")
        return {
            "welch_t": float(t.statistic),
            "welch_p": float(t.pvalue),
            "mwu_U": float(u.statistic),
            "mwu_p": float(u.pvalue),
            "method": "scipy",
        }
    except ImportError:
        from math import erfc, sqrt

        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        t = (a.mean() - b.mean()) / sqrt(va + vb)
        ranks = np.argsort(np.argsort(np.concatenate([a, b]))) + 1.0
        u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
        mu, sd = len(a) * len(b) / 2, sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)
        return {
            "welch_t": float(t),
            "welch_p": erfc(abs(t) / sqrt(2)),
            "mwu_U": float(u),
            "mwu_p": erfc(abs(u - mu) / sd / sqrt(2)),
            "method": "numpy (normal approximations)",
        }


def table(plastix: dict[int, float], cleanrl: dict[int, float], tests: dict) -> str:
    """The side-by-side table (mean +- std over seeds, ddof=1, like CleanRL's docs) and the tests."""

    def row(name, values):
        v = np.asarray(list(values), float)
        spread = v.std(ddof=1) if len(v) > 1 else float("nan")
        stats = f"{v.mean():,.2f} +- {spread:,.2f} | {np.median(v):,.2f} | {v.min():,.0f} .. {v.max():,.0f}"
        return f"| {name} | {len(v)} | {stats} |"

    lines = [
        "| | seeds | mean +- std | median | range |",
        "|---|---|---|---|---|",
        row("plastix --preset cleanrl", plastix.values()),
        row("CleanRL ppo_continuous_action.py (here)", cleanrl.values()),
        f"| CleanRL published | {PUBLISHED[2]} | {PUBLISHED[0]:,.2f} +- {PUBLISHED[1]:,.2f} | | |",
        "",
        f"Welch t = {tests['welch_t']:.3f} (p = {tests['welch_p']:.3f}); "
        f"Mann-Whitney U = {tests['mwu_U']:.1f} (p = {tests['mwu_p']:.3f}); {tests['method']}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- running
def run_plastix(seeds: str, total: int, run_dir: str) -> str:
    """``plastix train --preset cleanrl`` for all ``seeds`` in one (vmapped) process."""
    cmd = [
        sys.executable,
        "-m",
        "plastix.cli",
        "train",
        "--preset",
        "cleanrl",
        "--seeds",
        seeds,
        "--total-timesteps",
        str(total),
        "--run-dir",
        run_dir,
        "--quiet",
    ]
    subprocess.run(cmd, check=True)
    return run_dir


def run_cleanrl(script: str, python: str, seeds: list[int], total: int, workdir: str, parallel: int) -> str:
    """CleanRL's script for each seed (``parallel`` at a time, one torch thread each) in ``workdir``;
    returns its ``runs/`` folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running = list(seeds), []
    while pending or running:
        while pending and len(running) < parallel:
            seed = pending.pop(0)
            log = open(os.path.join(workdir, f"cleanrl_seed{seed}.log"), "w")
            cmd = [
                python,
                os.path.abspath(script),
                "--seed",
                str(seed),
                "--total-timesteps",
                str(total),
                "--no-track",
                "--no-cuda",
            ]
            running.append(
                (subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT), seed)
            )
        time.sleep(5)
        for proc, seed in list(running):
            if proc.poll() is not None:
                running.remove((proc, seed))
                if proc.returncode:
                    raise RuntimeError(f"CleanRL seed {seed} failed (see {workdir}/cleanrl_seed{seed}.log)")
    return os.path.join(workdir, "runs")


def learning(args) -> dict:
    """Gather (run or read) both sides, test and print."""
    if args.plastix_run is None:
        args.plastix_run = run_plastix(
            args.plastix_seeds, args.total_timesteps, tempfile.mkdtemp() + "/plastix"
        )
    if args.cleanrl_runs is None:
        if not (args.cleanrl_script and args.cleanrl_python):
            sys.exit("learning: give --cleanrl-runs DIR, or --cleanrl-script PATH and --cleanrl-python PATH")
        seeds = [int(s) for s in args.cleanrl_seeds.split(",")]
        args.cleanrl_runs = run_cleanrl(
            args.cleanrl_script,
            args.cleanrl_python,
            seeds,
            args.total_timesteps,
            tempfile.mkdtemp(),
            args.parallel,
        )
    plastix, cleanrl = (
        plastix_returns(args.plastix_run),
        cleanrl_returns(args.cleanrl_runs, args.total_timesteps),
    )
    if len(plastix) < 2 or len(cleanrl) < 2:
        sys.exit(
            f"need >= 2 finished seeds per side; have plastix {sorted(plastix)}, CleanRL {sorted(cleanrl)}"
        )
    tests = two_sample_tests(list(plastix.values()), list(cleanrl.values()))
    print(table(plastix, cleanrl, tests))
    return {
        "statistic": "mean episodic return of the episodes ending in the last 10% of env steps",
        "total_timesteps": args.total_timesteps,
        "plastix": plastix,
        "cleanrl": cleanrl,
        "tests": tests,
        "published": {"mean": PUBLISHED[0], "std": PUBLISHED[1], "seeds": PUBLISHED[2]},
    }


# ----------------------------------------------------------------------------------------- environment
def envpool_trace(steps: int, seed: int) -> dict:
    """One envpool HalfCheetah-v4 episode under uniform random actions in [-1, 1]: observations
    ``[steps + 1, 17]``, x positions ``[steps + 1]``, rewards and actions."""
    import envpool

    env = envpool.make_gymnasium("HalfCheetah-v4", num_envs=1, seed=seed)
    obs, info = env.reset()
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(steps, 6))
    observations, xs, rewards = [obs[0]], [info["x_position"][0]], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action[None])
        observations.append(obs[0])
        xs.append(info["x_position"][0])
        rewards.append(reward[0])
    return {"obs": np.array(observations), "x": np.array(xs), "reward": np.array(rewards), "action": actions}


def gymnasium_replay(trace: dict) -> dict:
    """gymnasium's HalfCheetah-v4 on envpool's trace: open loop from envpool's reset state, and one step
    at a time from envpool's state before each step. Returns the largest absolute differences."""
    import gymnasium as gym

    env = gym.make("HalfCheetah-v4").unwrapped
    env.reset(seed=0)

    def set_state(t):
        env.set_state(np.concatenate([[trace["x"][t]], trace["obs"][t][:8]]), trace["obs"][t][8:])

    out = {}
    for mode in ("open_loop", "resync"):
        set_state(0)
        obs_diff, rewards, first_over = [], [], None
        for t, action in enumerate(trace["action"]):
            if mode == "resync":
                set_state(t)
            obs, reward, *_ = env.step(action)
            obs_diff.append(np.abs(obs - trace["obs"][t + 1]).max())
            rewards.append(reward)
            if first_over is None and obs_diff[-1] > 1e-6:
                first_over = t
        obs_diff, rewards = np.array(obs_diff), np.array(rewards)
        out[mode] = {
            "max_obs_diff": float(obs_diff.max()),
            "max_reward_diff": float(np.abs(rewards - trace["reward"]).max()),
            "max_obs_diff_first_100": float(obs_diff[:100].max()),
            "first_step_obs_diff_over_1e-6": first_over,
            "episode_return": [float(rewards.sum()), float(trace["reward"].sum())],
        }
    out["chaos_control"] = chaos_control(env, trace, set_state)
    out["versions"] = {"gymnasium": gym.__version__, "mujoco": __import__("mujoco").__version__}
    return out


def chaos_control(env, trace: dict, set_state, kick: float = 1e-12) -> dict:
    """gymnasium against itself, open loop, with qvel of the start state moved by ``kick``: how fast a
    last-bits difference grows under the trace's actions (the drift expected of any two MuJoCo builds)."""
    runs = []
    for delta in (0.0, kick):
        set_state(0)
        env.set_state(env.data.qpos.copy(), env.data.qvel + delta)
        runs.append(np.array([env.step(action)[0] for action in trace["action"]]))
    diff = np.abs(runs[0] - runs[1]).max(axis=1)
    over = np.flatnonzero(diff > 1e-6)
    return {
        "kick": kick,
        "max_obs_diff": float(diff.max()),
        "first_step_obs_diff_over_1e-6": int(over[0]) if len(over) else None,
    }


def environment(args) -> dict:
    """Measure (and print) envpool vs gymnasium, in this interpreter or in ``--gymnasium-python``."""
    trace = envpool_trace(args.steps, args.seed)
    if args.gymnasium_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(os.path.join(tmp, "trace.npz"), **trace)
            cmd = [
                args.gymnasium_python,
                os.path.abspath(__file__),
                "env-replay",
                os.path.join(tmp, "trace.npz"),
            ]
            result = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
    else:
        result = gymnasium_replay(trace)
    result["envpool"] = __import__("envpool").__version__
    print(json.dumps(result, indent=2))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    learn = sub.add_parser("learning", help="learning curves of both at 1M steps, tested")
    learn.add_argument("--plastix-run", help="a finished plastix run folder (else plastix is run here)")
    learn.add_argument("--plastix-seeds", default="0,1,2,3,4,5,6,7,8,9")
    learn.add_argument(
        "--cleanrl-runs", help="CleanRL's runs/ folder of finished runs (else CleanRL is run here)"
    )
    learn.add_argument("--cleanrl-script", help="path of CleanRL's ppo_continuous_action.py")
    learn.add_argument("--cleanrl-python", help="python of a venv with CleanRL's dependencies")
    learn.add_argument("--cleanrl-seeds", default="1,2,3,4,5")
    learn.add_argument("--parallel", type=int, default=2, help="CleanRL processes at a time")
    learn.add_argument("--total-timesteps", type=int, default=1_000_000)
    learn.add_argument("--out", help="write the per-seed numbers and the tests as JSON here")
    env = sub.add_parser("env", help="envpool vs gymnasium HalfCheetah-v4 from the same state and actions")
    env.add_argument("--steps", type=int, default=1000)
    env.add_argument("--seed", type=int, default=0)
    env.add_argument("--gymnasium-python", help="replay under this interpreter's gymnasium and mujoco")
    env.add_argument("--out", help="write the measurement as JSON here")
    replay = sub.add_parser("env-replay", help=argparse.SUPPRESS)
    replay.add_argument("trace")
    args = parser.parse_args(argv)
    if args.command == "env-replay":  # runs under --gymnasium-python: numpy and gymnasium only
        print(json.dumps(gymnasium_replay(dict(np.load(args.trace)))))
        return
    result = environment(args) if args.command == "env" else learning(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(
        sys.argv[1:]
        if len(sys.argv) > 1 and sys.argv[1] in ("learning", "env", "env-replay", "-h", "--help")
        else ["learning", *sys.argv[1:]]
    )
