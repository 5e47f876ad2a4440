"""ES in rounds (plastix.algos.es): the task shift's direction per round, the fresh-start baseline, round rows.

Most runs use ``LineBridge``, a JAX stand-in for the envpool bridge whose reward is a hand-checkable
function of the running direction, so the round logic of ``train_es`` is tested without MuJoCo.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix import experiments, store
from plastix.algos import es
from plastix.cli import parse_train_args
from plastix.config import ConfigError
from plastix.envs.envpool_bridge import round_state
from plastix.envs.shifts import direction_reward
from plastix.training import train

OBS = np.array([1.0, -0.5])


class LineBridge:
    """``EnvpoolBridge``'s interface over a constant observation. ``x_velocity`` is the action ``a`` (in
    [-1, 1]) and the reward ``v - v^2`` (a run term and a control cost, as HalfCheetah's), best at ``v = 0.5``;
    with ``constant``, ``v = 1`` and the reward is ``v``. The round's direction is applied as the real bridge
    does (``direction_reward``): ``d_r v - v^2``, best at ``v = d_r / 2`` (return ``T / 4``); ``d_r`` with
    ``constant``."""

    obs_dim, action_dim, max_episode_steps = 2, 1, 1000
    action_low, action_high = np.array([-1.0], np.float32), np.array([1.0], np.float32)

    def __init__(self, cfg: es.ESConfig, constant: bool = False):
        jax.config.update("jax_enable_x64", True)  # as EnvpoolBridge: the rollout accumulates in float64
        self.cfg, self.constant = cfg, constant
        self.num_envs = len(cfg.seed_list) * cfg.lanes_per_seed * cfg.envs_per_seed
        self.closed = False

    def reset(self) -> np.ndarray:
        return np.broadcast_to(OBS, (self.num_envs, 1, 2)).copy()

    def handle(self):
        return (jnp.zeros((), jnp.int32), round_state(self.cfg, 0, self.obs_dim))

    def set_round(self, round_idx: int, handle):
        return (handle[0], round_state(self.cfg, round_idx, self.obs_dim))

    def step(self, handle, action):
        count, rnd = handle
        velocity = jnp.ones(action.shape[:2]) if self.constant else action[..., 0].astype(jnp.float64)
        base = velocity if self.constant else velocity - velocity**2
        reward = direction_reward(base, velocity, rnd.direction)
        obs = jnp.broadcast_to(jnp.asarray(OBS), (self.num_envs, 1, 2))
        done = jnp.zeros(action.shape[:2], bool)
        return (count + 1, rnd), (obs, reward, done, done, {})

    def restore(self, record):
        self.replayed = np.asarray(record.num_resets)  # a constant observation: resets change nothing else

    def close(self):
        self.closed = True


def line_config(**change) -> es.ESConfig:
    base = dict(seeds="0,1", popsize=4, episode_steps=5, rounds=2, shift="task", baseline="fresh",
                total_timesteps=2 * 3 * 4 * 5, diagnostics_every=0, log_every=4, quiet=True, normalize_obs=False)
    return es.ESConfig(**{**base, **change})


def run_line(tmp_path, name, cfg, constant=False):
    return store.read_metrics(es.train_es(cfg, tmp_path / name, bridge=LineBridge(cfg, constant)))


def by_update(df, key, seed=0):
    return df[(df.key == key) & (df.seed == seed)].sort_values("update").value.to_numpy()


# ------------------------------------------------------------------------------------------- direction
def test_fitness_switches_direction_at_the_round_boundary(tmp_path):
    # x_velocity = 1 on every step: each step's reward is d_r, so every episode of round r returns 5 d_r.
    cfg = line_config()
    assert (cfg.generations_per_round, cfg.num_generations, cfg.steps_per_generation) == (3, 6, 20)
    df = run_line(tmp_path, "run", cfg, constant=True)
    expected = [5.0, 5.0, 5.0, -5.0, -5.0, -5.0]
    for seed in (0, 1):
        for key in ("return/mean", "return/max", "return/min", "return/mean_policy", "baseline/return/episodic"):
            np.testing.assert_array_equal(by_update(df, key, seed), expected, err_msg=key)
    rows = df[df.key.str.startswith("round/")]
    assert set(rows.key) == {"round/index", "round/return_train", "round/return_fresh", "round/normalized_return"}
    assert set(rows["update"]) == {3, 6} and set(rows.env_step) == {60, 120}
    for seed in (0, 1):
        np.testing.assert_array_equal(by_update(rows, "round/index", seed), [0, 1])
        np.testing.assert_array_equal(by_update(rows, "round/return_train", seed), [5, -5])
        np.testing.assert_array_equal(by_update(rows, "round/return_fresh", seed), [5, -5])
        np.testing.assert_array_equal(by_update(rows, "round/normalized_return", seed), [1, 1])
    parts = sorted(p.name for p in (tmp_path / "run" / store.METRICS_DIR).glob("*.parquet"))
    assert parts == ["part-000000001.parquet", "part-000000003-round.parquet", "part-000000005.parquet",
                     "part-000000006-round.parquet"]
    assert store.latest_checkpoint(tmp_path / "run")[0] == 6


def test_round_rows_by_hand():
    # 4 generations, lanes (seed 0, seed 1, copy 0, copy 1): the last quarter is the last generation.
    episodic = np.array([[9.0, 9.0, 9.0, 9.0]] * 3 + [[6.0, -2.0, 3.0, 0.0]])
    rows = es.round_rows(episodic, 2, round_idx=1)
    np.testing.assert_array_equal(rows["round/index"], [[1, 1]])
    np.testing.assert_array_equal(rows["round/return_train"], [[6, -2]])
    np.testing.assert_array_equal(rows["round/return_fresh"], [[3, 0]])
    np.testing.assert_array_equal(rows["round/normalized_return"], [[2, np.nan]])  # 0 fresh: undefined
    eight = np.arange(16, dtype=float).reshape(8, 2)  # no copies; the last 8 // 4 = 2 generations
    assert set(es.round_rows(eight, 2, 0)) == {"round/index", "round/return_train"}
    np.testing.assert_array_equal(es.round_rows(eight, 2, 0)["round/return_train"], [[13, 14]])


# ------------------------------------------------------------------------------------------ fresh copies
def test_fresh_copies_are_reinitialised_at_each_round_start():
    cfg = line_config()
    trainer = es.ESTrainer(cfg, 2, 1, [-1.0], [1.0])
    # lax.map, as train_es: vmapped orthogonal inits can deadlock jaxlib 0.10's LAPACK on 2 cores.
    init_fn = jax.jit(lambda k, o: jax.lax.map(lambda x: trainer.init(*x), (k, o)))
    seeds = [0, 1]
    obs = jnp.broadcast_to(jnp.asarray(OBS, jnp.float32), (4, cfg.envs_per_seed, 2))
    state = init_fn(jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds * 2)), obs)
    np.testing.assert_array_equal(state.es.mean[:2], state.es.mean[2:])  # round 0: each copy is its seed
    trained = state.replace(  # as if some generations had run on every lane
        es=state.es.replace(mean=state.es.mean + 1.0, generation=jnp.full((4,), 7, jnp.int32),
                            opt_state=jax.tree.map(lambda x: x + 1, state.es.opt_state)),
        obs_rms=state.obs_rms.replace(mean=state.obs_rms.mean + 3.0),
    )
    out = {r: es.reinit_fresh_lanes(init_fn, trained, seeds, r, obs) for r in (1, 2)}
    for r, new in out.items():
        np.testing.assert_array_equal(new.es.mean[:2], trained.es.mean[:2])  # the seeds are untouched
        np.testing.assert_array_equal(new.key[:2], trained.key[:2])
        lone = init_fn(jnp.stack([es.fresh_key(s, r) for s in seeds]), obs[2:])
        np.testing.assert_array_equal(new.es.mean[2:], lone.es.mean)
        np.testing.assert_array_equal(new.es.generation, [7, 7, 0, 0])
        np.testing.assert_array_equal(new.es.opt_state.mu[2:], 0.0)  # Adam starts again
        np.testing.assert_array_equal(new.obs_rms.mean, trained.obs_rms.mean)  # statistics carry on (as PPO's)
        assert not np.allclose(new.es.mean[2:], state.es.mean[:2])  # never the seed's own init
    assert not np.allclose(out[1].es.mean[2:], out[2].es.mean[2:])  # a new network every round


def test_es_follows_the_direction_and_the_copy_starts_again(tmp_path):
    # The mean policy learns v = 0.5 in round 0 (return 1.25), then v = -0.5 in round 1.
    cfg = line_config(popsize=8, sigma=0.1, learning_rate=0.02, total_timesteps=2 * 12 * 8 * 5, seeds="0")
    df = run_line(tmp_path, "run", cfg)
    warm, fresh = by_update(df, "return/mean_policy"), by_update(df, "baseline/return/episodic")
    np.testing.assert_array_equal(warm[:12], fresh[:12])  # round 0: the copy is the seed
    assert abs(warm[0]) < 0.2 and warm[11] > 1.0, warm  # forward
    assert warm[12] < -3.0, warm  # the switch: v = 0.5 now returns 5 (-0.5 - 0.25) = -3.75 ...
    assert warm[23] > warm[12] + 2.0, warm  # ... and ES turns round
    assert abs(fresh[12]) < 0.2 and fresh[23] > 0.5, fresh  # a new network (v = 0), learning backward
    rows = df[df.key.str.startswith("round/")]
    ratio = by_update(rows, "round/normalized_return")
    np.testing.assert_allclose(ratio, by_update(rows, "round/return_train") / by_update(rows, "round/return_fresh"))
    assert ratio[0] == 1.0


# --------------------------------------------------------------------------------------------- determinism
def test_rounds_are_deterministic_per_seed_and_the_copies_do_not_touch_the_seeds(tmp_path):
    cfg = line_config(popsize=8, sigma=0.1, learning_rate=0.05)
    keys = ["return/mean", "return/mean_policy", "es/grad_norm", "es/param_norm"]
    a = run_line(tmp_path, "a", cfg)
    b = run_line(tmp_path, "b", cfg)
    for key in [*keys, "baseline/return/episodic", "round/normalized_return"]:
        for seed in (0, 1):
            np.testing.assert_array_equal(by_update(a, key, seed), by_update(b, key, seed), err_msg=key)
    assert not np.array_equal(by_update(a, "es/param_norm", 0), by_update(a, "es/param_norm", 1))
    alone = run_line(tmp_path, "alone", dataclasses.replace(cfg, seeds="1", baseline="none"))
    assert "round/return_fresh" not in set(alone.key)
    for key in [*keys, "round/return_train"]:
        np.testing.assert_allclose(by_update(alone, key, 1), by_update(a, key, 1), rtol=1e-5, err_msg=key)


# ------------------------------------------------------------------------------- through `plastix train`
def test_plastix_train_es_with_the_task_shift_and_a_fresh_baseline(tmp_path):
    argv = ["--optimizer", "es", "--shift", "task", "--rounds", "2", "--baseline", "fresh", "--es.popsize", "4",
            "--es.episode-steps", "20", "--total-timesteps", "320", "--diagnostics-every", "2", "--quiet"]
    run_dir = train(parse_train_args([*argv, "--run-dir", str(tmp_path / "run")]))
    config = store.read_config(run_dir)
    assert (config["shift"], config["rounds"], config["baseline"]) == ("task", 2, "fresh")
    df = store.read_metrics(run_dir)
    rows = df[df.key.str.startswith("round/")]
    assert set(rows["update"]) == {2, 4} and len(rows) == 8 and np.isfinite(rows.value).all()
    np.testing.assert_array_equal(by_update(rows, "round/index"), [0, 1])
    assert by_update(rows, "round/normalized_return")[0] == 1.0
    assert "policy/layer_1/dormant_ratio@0.025" in set(df.key)


@pytest.mark.parametrize("shift", ["permute", "dynamics"])
def test_other_shifts_are_refused_naming_what_works(tmp_path, shift):
    argv = ["--optimizer", "es", "--shift", shift, "--rounds", "2", "--run-dir", str(tmp_path / "x"), "--quiet"]
    with pytest.raises(ConfigError, match=f"--shift {shift}.*--shift none or task"):
        train(parse_train_args(argv))


# ----------------------------------------------------------------------------------------------- experiment
@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_the_gradient_free_experiment_validates(scale):
    exp = experiments.load("ocp-gradient-free", scale)
    assert [v.values for v in exp.variants] == [{"optimizer": "ppo"}, {"optimizer": "es"}]
    for variant in exp.variants:
        cfg = experiments.config_for(variant.overrides, exp.seeds)
        assert (cfg.shift, cfg.rounds, cfg.baseline, cfg.env_id) == ("task", 2, "fresh", "HalfCheetah-v4")
    es_cfg = es.es_config_from_train_config(experiments.config_for(exp.variants[1].overrides, exp.seeds),
                                            **dataclasses.asdict(cfg.es))
    es_cfg.validate(check_env=False)
    assert es_cfg.generations_per_round >= 4
    assert any(c["keys"] == "round/normalized_return" for c in exp.claims)


# ------------------------------------------------------------------------------------- no batched LAPACK
def lapack_operand_shapes(hlo: str) -> list[tuple[int, ...]]:
    """The first operand's shape of every LAPACK custom call in a lowered (StableHLO) program."""
    import re

    shapes = []
    for line in hlo.splitlines():
        call = re.search(r"custom_call @(lapack_\w+)\(.*?:\s*\(tensor<([0-9x]+)x[a-z]", line)
        if call:
            shapes.append(tuple(int(d) for d in call.group(2).split("x")))
    return shapes


def test_a_generation_makes_no_batched_lapack_call():
    # jaxlib 0.10's batched LAPACK kernels block one of XLA's CPU threads until their batch, queued to the
    # same pool, is done: two at once deadlock a 2-core machine (the ES evidence run hung so, with both
    # pool threads in ParallelBatchMap under sgeqrf and sgesdd). The diagnostics' QR/SVD must be unbatched.
    cfg = line_config(popsize=4, diagnostics_every=1, diagnostics_batch=8, activation="relu")
    bridge = LineBridge(cfg)
    trainer = es.ESTrainer(cfg, 2, 1, [-1.0], [1.0])
    lanes, m = 2 * cfg.lanes_per_seed, cfg.envs_per_seed

    def pool_step(handle, action):
        handle, out = bridge.step(handle, action.reshape(lanes * m, 1, -1))
        return handle, tuple(x.reshape((lanes, m) + x.shape[2:]) for x in out[:4])

    obs = jnp.broadcast_to(jnp.asarray(OBS), (lanes, m, 2))
    state = jax.lax.map(lambda x: trainer.init(*x), (jax.vmap(jax.random.PRNGKey)(jnp.arange(lanes)), obs))
    lowered = jax.jit(lambda st, o, h: trainer.generation(st, o, h, pool_step, jnp.asarray(True))).lower(
        state, obs, bridge.handle())
    shapes = lapack_operand_shapes(lowered.as_text())
    assert shapes, "the rank diagnostics should call LAPACK (QR, SVD)"
    assert all(len(s) == 2 for s in shapes), shapes  # one matrix per call: no batch axis


# ------------------------------------------------------------------------------------------------- resume
def test_an_interrupted_es_run_resumes_with_the_uninterrupted_metrics(tmp_path, monkeypatch):
    # 2 rounds of 3 generations, parts of 2, checkpoints at 2, 4, 6: stopped after generation 3 (its round
    # rows written, its part not), the resumed run restarts from generation 2 and rewrites the rest.
    cfg = line_config(sigma=0.1, learning_rate=0.05, log_every=2, checkpoint_every=2)
    full = run_line(tmp_path, "full", cfg)
    run = es.ESRun.run

    def stop_after_generation_3(self, state, k):
        if state.done == 3:
            raise KeyboardInterrupt
        return run(self, state, k)

    monkeypatch.setattr(es.ESRun, "run", stop_after_generation_3)
    with pytest.raises(KeyboardInterrupt):
        es.train_es(cfg, tmp_path / "killed", bridge=LineBridge(cfg))
    assert cfg.num_generations == 6 and store.latest_checkpoint(tmp_path / "killed")[0] == 2
    assert (tmp_path / "killed" / store.METRICS_DIR / "part-000000003-round.parquet").exists()
    monkeypatch.setattr(es.ESRun, "run", run)
    bridge = LineBridge(cfg)
    resumed = store.read_metrics(es.train_es(cfg, tmp_path / "killed", bridge=bridge, resume=True))
    # Every env was reset once by the new pool, and generations 0 and 1 reset them twice in all.
    np.testing.assert_array_equal(bridge.replayed, 1)
    keep = lambda df: df[~df.key.str.startswith("time/")].reset_index(drop=True)  # wall-clock rows
    pd.testing.assert_frame_equal(keep(resumed), keep(full))
