"""The JAX gridworld: solvable, deterministic, jit/vmap-able, same-step auto-reset."""

import jax
import jax.numpy as jnp
import numpy as np

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


# PPO learning the gridworld is tested through `plastix train` in tests/test_scenarios_training.py.
