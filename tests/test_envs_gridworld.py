"""The JAX gridworld: solvable, deterministic, jit/vmap-able, same-step auto-reset, and a PPO learning check."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import plastix  # noqa: F401  (x64 on, as in real use)
from plastix.envs.gridworld import (
    UNREACHABLE,
    GridWorld,
    batch_reset,
    batch_step_autoreset,
    distance_to_goal,
    rollout_returns,
    shortest_path_action,
)
from plastix.nets import DiscreteActorCritic

ENV = GridWorld()
LEVELS = jnp.arange(32)


def test_specs_vector_and_image():
    params = ENV.make_params(LEVELS)
    obs, state = ENV.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == ENV.observation_shape == (3 * 64,) and obs.dtype == jnp.float32
    assert obs[:64].sum() == 1 and obs[64:128].sum() == 1  # one-hot agent, goal
    img_env = GridWorld(obs_type="image")
    img, _ = img_env.reset(jax.random.PRNGKey(0), params)
    assert img.shape == img_env.observation_shape == (16, 16, 3) and img.dtype == jnp.uint8
    assert set(np.unique(np.asarray(img))) <= {0, 255}
    assert (img[..., 1] == 255).sum() == 4 and (img[..., 2] == 255).sum() == 4  # 2x2 px agent, goal


def test_every_free_cell_reaches_the_goal_and_shortest_path_policy_does():
    params = ENV.make_params(LEVELS)
    dist = jax.vmap(distance_to_goal)(params.walls, params.goals)
    free = ~np.asarray(params.walls)
    assert (np.asarray(dist)[free] < UNREACHABLE).all()
    assert (np.asarray(dist)[~free] == UNREACHABLE).all()
    assert free.sum(axis=(1, 2)).min() >= 32  # at least half the grid is open

    # From every free cell of every level, following shortest_path_action reaches the goal in dist steps.
    def from_cell(level, cell):
        _, state = ENV.reset(jax.random.PRNGKey(0), params.replace(num_active=jnp.int32(1), starts=params.starts.at[0].set(cell), walls=params.walls.at[0].set(params.walls[level]), goals=params.goals.at[0].set(params.goals[level])))

        def body(carry, _):
            state, reached, steps = carry
            _, state, _, term, _, _ = ENV.step(jax.random.PRNGKey(1), state, shortest_path_action(state), params)
            return (state, reached | term, steps + (~reached).astype(jnp.int32)), None

        (_, reached, steps), _ = jax.lax.scan(body, (state, jnp.all(cell == state.goal), jnp.int32(0)), None, ENV.max_steps)
        return reached, steps

    cells = jnp.stack(jnp.meshgrid(jnp.arange(8), jnp.arange(8), indexing="ij"), -1).reshape(-1, 2).astype(jnp.int32)
    levels = jnp.arange(8)
    reached, steps = jax.jit(jax.vmap(jax.vmap(from_cell, (None, 0)), (0, None)))(levels, cells)
    for lv in range(8):
        for c in range(64):
            r, col = divmod(c, 8)
            if free[lv, r, col]:
                assert reached[lv, c]
                assert steps[lv, c] == dist[lv, r, col]


def test_random_policy_much_worse_than_shortest_path():
    params = ENV.make_params(LEVELS)
    best = jax.jit(lambda k: rollout_returns(ENV, k, params, lambda k, o, s: shortest_path_action(s), 256))
    rand = jax.jit(lambda k: rollout_returns(ENV, k, params, lambda k, o, s: jax.random.randint(k, (), 0, 4, jnp.int32), 256))
    r_best, r_rand = float(best(jax.random.PRNGKey(0)).mean()), float(rand(jax.random.PRNGKey(0)).mean())
    assert r_best > 0.85
    assert r_best - r_rand > 0.8


def test_deterministic_given_key_and_levels_fixed_by_index():
    a, b = ENV.make_params(jnp.arange(5, 9)), ENV.make_params(jnp.arange(5, 9))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    assert not jnp.array_equal(a.walls, ENV.make_params(jnp.arange(9, 13)).walls)
    keys = jax.random.split(jax.random.PRNGKey(3), 16)
    run = jax.jit(lambda ks: batch_reset(ENV, ks, a))
    o1, s1 = run(keys)
    o2, s2 = run(keys)
    assert jnp.array_equal(o1, o2) and jnp.array_equal(s1.pos, s2.pos)


def test_same_step_autoreset_under_jit():
    env = GridWorld(max_steps=3, step_cost=0.0)
    params = env.make_params(LEVELS)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    obs, state = batch_reset(env, keys, params)
    step = jax.jit(lambda k, s, a: batch_step_autoreset(env, k, s, a, params))
    ended = jnp.zeros(64, bool)
    for t in range(3):
        actions = jax.vmap(shortest_path_action)(state)
        prev_state = state
        obs, state, reward, term, trunc, info = step(jax.random.split(jax.random.PRNGKey(t + 1), 64), state, actions)
        done = term | trunc
        # Done envs start a new episode (t = 0) and show its first observation; others carry on.
        assert jnp.all(jnp.where(done, state.t == 0, state.t == prev_state.t + 1))
        reset_obs = jax.vmap(env.observation)(state)
        assert jnp.array_equal(obs, reset_obs)
        assert jnp.all(jnp.where(term, reward == 1.0, reward == 0.0))
        # The finished step's own observation: on termination the agent stands on the goal.
        final = info["final_obs"]
        assert jnp.all(jnp.where(term, jnp.all(final[:, :64] == final[:, 64:128], -1), True))
        ended = ended | done
    assert jnp.all(ended)  # max_steps = 3: every first episode has ended by step 3


def _ppo_returns(num_updates: int, key):
    """A minimal discrete PPO (CleanRL ppo.py semantics, one program) on the gridworld; returns the mean
    undiscounted greedy-ish (sampled) return before and after training."""
    env = GridWorld(size=5, max_steps=20, wall_density=0.2)
    params = env.make_params(jnp.arange(8))
    net = DiscreteActorCritic(env.num_actions, (64, 64), "tanh")
    n_envs, n_steps, gamma, lam, clip, epochs, n_mb = 32, 32, 0.95, 0.95, 0.2, 4, 4
    k_init, k_reset, k_train, k_eval0, k_eval1 = jax.random.split(key, 5)
    theta = net.init(k_init, jnp.zeros((1,) + env.observation_shape, jnp.float32))
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(2.5e-3, eps=1e-5))
    opt_state = opt.init(theta)
    obs, state = batch_reset(env, jax.random.split(k_reset, n_envs), params)

    def policy_sample(theta):
        def pol(k, o, s):
            logits, _ = net.apply(theta, o[None])
            return jax.random.categorical(k, logits[0]).astype(jnp.int32)
        return pol

    def loss_fn(theta, b):
        logits, value = net.apply(theta, b["obs"])
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, b["act"][:, None], -1)[:, 0]
        ratio = jnp.exp(logp - b["logp"])
        adv = (b["adv"] - b["adv"].mean()) / (b["adv"].std() + 1e-8)
        pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - clip, 1 + clip)).mean()
        v = 0.5 * ((value - b["ret"]) ** 2).mean()
        ent = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        return pg + 0.5 * v - 0.01 * ent

    def update(carry, k):
        theta, opt_state, obs, state = carry

        def env_step(c, k):
            obs, state = c
            k_a, k_e = jax.random.split(k)
            logits, value = net.apply(theta, obs)
            act = jax.random.categorical(k_a, logits).astype(jnp.int32)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), act[:, None], -1)[:, 0]
            nobs, nstate, rew, term, trunc, _ = batch_step_autoreset(env, jax.random.split(k_e, n_envs), state, act, params)
            return (nobs, nstate), dict(obs=obs, act=act, logp=logp, val=value, rew=rew, done=(term | trunc).astype(jnp.float32))

        k_roll, k_upd = jax.random.split(k)
        (obs, state), tr = jax.lax.scan(env_step, (obs, state), jax.random.split(k_roll, n_steps))
        _, last_v = net.apply(theta, obs)

        def gae(c, x):
            adv_next, v_next = c
            delta = x["rew"] + gamma * v_next * (1 - x["done"]) - x["val"]
            adv = delta + gamma * lam * (1 - x["done"]) * adv_next
            return (adv, x["val"]), adv

        _, adv = jax.lax.scan(gae, (jnp.zeros(n_envs), last_v), tr, reverse=True)
        batch = dict(obs=tr["obs"], act=tr["act"], logp=tr["logp"], adv=adv, ret=adv + tr["val"])
        batch = jax.tree_util.tree_map(lambda x: x.reshape((n_envs * n_steps,) + x.shape[2:]), batch)

        def epoch(c, k):
            theta, opt_state = c
            idx = jax.random.permutation(k, n_envs * n_steps).reshape(n_mb, -1)

            def mb(c, i):
                theta, opt_state = c
                g = jax.grad(loss_fn)(theta, jax.tree_util.tree_map(lambda x: x[i], batch))
                upd, opt_state = opt.update(g, opt_state, theta)
                return (optax.apply_updates(theta, upd), opt_state), None

            return jax.lax.scan(mb, (theta, opt_state), idx)[0], None

        (theta, opt_state), _ = jax.lax.scan(epoch, (theta, opt_state), jax.random.split(k_upd, epochs))
        return (theta, opt_state, obs, state), None

    @jax.jit
    def run(theta, opt_state, obs, state):
        before = rollout_returns(env, k_eval0, params, policy_sample(theta), 256).mean()
        (theta, *_), _ = jax.lax.scan(update, (theta, opt_state, obs, state), jax.random.split(k_train, num_updates))
        after = rollout_returns(env, k_eval1, params, policy_sample(theta), 256).mean()
        best = rollout_returns(env, k_eval1, params, lambda k, o, s: shortest_path_action(s), 256).mean()
        return before, after, best

    return run(theta, opt_state, obs, state)


def test_ppo_learns_the_gridworld():
    before, after, best = map(float, _ppo_returns(30, jax.random.PRNGKey(0)))
    assert after > before + 0.3, (before, after, best)
    assert after > best - 0.25, (before, after, best)
