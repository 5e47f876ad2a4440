"""A goal-reaching gridworld in pure JAX (gymnax-style), in the spirit of Juliani & Ash's NeuroNav tasks.

The world is an ``N x N`` grid (``GridWorld.size``) with walls, one agent and one goal. The grid's border
acts as a wall (moves off the grid leave the agent in place). Everything is a pure function of arrays, so
``jit``/``vmap``/``lax.scan`` apply and thousands of envs run in one compiled program.

API (gymnax convention; ``env`` is a frozen, hashable ``GridWorld`` holding the static settings)::

    params = env.make_params(level_ids)                 # GridParams: a bank of levels (arrays)
    obs, state = env.reset(key, params)                 # one env
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
    obs, state = batch_reset(env, keys, params)         # B envs: keys [B, 2]
    obs, state, reward, terminated, truncated, info = batch_step_autoreset(env, keys, state, actions, params)

Levels. A *level* is a wall layout, a goal and a start cell drawn by ``generate_level(env, level_id)``
from ``fold_in(PRNGKey(env.level_seed), level_id)``: the level index is the seed, as in Procgen, so level
ranges (``plastix.envs.shifts`` window/expand) mean the same thing here. Walls are i.i.d. with probability
``wall_density``; cells not connected to the goal are then turned into walls, so every free cell reaches
the goal (a layout whose connected part would cover under half the grid is replaced by an empty grid).
``GridParams`` holds a fixed-capacity bank ``[L, ...]`` of levels and ``num_active``: ``reset`` draws a
level uniformly among the first ``num_active`` rows, so a growing level set (expand) keeps its shapes and
never recompiles.

Dynamics. Actions ``0 up (row - 1), 1 right (col + 1), 2 down (row + 1), 3 left (col - 1)``; a move into a
wall or off the grid leaves the agent in place. With probability ``params.slip_prob`` (0 by default) the
action is replaced by a uniformly random one (the ``dynamics`` shift resamples it).

Reward and episode end. Each step gives ``-step_cost`` (0.01 by default), plus ``+1`` on the step that
reaches the goal, which terminates the episode (``terminated``). After ``max_steps`` steps without reaching
the goal the episode is truncated (``truncated``; ``terminated`` is False). So the shortest-path return is
``1 - step_cost * d`` (``d`` = shortest distance) and an episode that never reaches the goal returns
``-step_cost * max_steps``.

Observations (``env.obs_type``):
- ``"vector"``: float32 ``[3 * N * N]`` = one-hot agent cell, one-hot goal cell, wall mask, each flattened
  row-major. The wall mask is part of it since walls change from level to level.
- ``"image"``: uint8 ``[N * cell_px, N * cell_px, 3]``, channel 0 = walls, 1 = agent, 2 = goal (255 where
  present), each grid cell drawn as a ``cell_px x cell_px`` block. With the defaults (``N = 8``,
  ``cell_px = 2``) the image is 16 x 16, so the ``permute`` shift's 16 x 16 grid of patches is a
  permutation of cells' pixels.

Determinism: ``reset`` and ``step`` are functions of their key and inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

GRIDWORLD_ID = "GridWorld-v0"

# (d_row, d_col) of actions 0 up, 1 right, 2 down, 3 left.
MOVES = jnp.array([[-1, 0], [0, 1], [1, 0], [0, -1]], jnp.int32)
NUM_ACTIONS = 4
UNREACHABLE = 10_000  # distance of a wall / disconnected cell in ``distance_to_goal``


@struct.dataclass
class GridParams:
    """A bank of ``L`` levels plus the env's dynamic settings; all arrays, so shifts can rewrite them.

    ``reset`` draws a row uniformly among the first ``num_active`` rows.
    """

    walls: jax.Array  # [L, N, N] bool
    goals: jax.Array  # [L, 2] int32 (row, col)
    starts: jax.Array  # [L, 2] int32 (row, col)
    level_ids: jax.Array  # [L] int32: the global level index of each row (reported in info["level"])
    num_active: jax.Array  # [] int32, 1 <= num_active <= L
    slip_prob: jax.Array  # [] float32: probability that an action is replaced by a random one


@struct.dataclass
class GridState:
    """One env's state."""

    pos: jax.Array  # [2] int32 agent (row, col)
    goal: jax.Array  # [2] int32
    walls: jax.Array  # [N, N] bool
    level: jax.Array  # [] int32 global level index
    t: jax.Array  # [] int32 steps taken in this episode


@dataclass(frozen=True)
class GridWorld:
    """Static settings (hashable, so a ``GridWorld`` can be closed over or passed as a static argument)."""

    size: int = 8
    max_steps: int = 64
    obs_type: str = "vector"  # "vector" | "image"
    cell_px: int = 2
    step_cost: float = 0.01
    wall_density: float = 0.25
    level_seed: int = 0
    random_start: bool = False  # True: each episode starts on a uniformly random free non-goal cell

    def __post_init__(self):
        if self.obs_type not in ("vector", "image"):
            raise ValueError(f"obs_type: unknown {self.obs_type!r}; allowed: 'vector', 'image'")
        if self.size < 2 or self.max_steps < 1 or self.cell_px < 1:
            raise ValueError("GridWorld: size >= 2, max_steps >= 1 and cell_px >= 1 are required")
        if not 0.0 <= self.wall_density < 1.0:
            raise ValueError(f"wall_density: must lie in [0, 1), got {self.wall_density}")

    # ------------------------------------------------------------------ specs
    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    @property
    def observation_shape(self) -> tuple[int, ...]:
        if self.obs_type == "vector":
            return (3 * self.size * self.size,)
        side = self.size * self.cell_px
        return (side, side, 3)

    @property
    def observation_dtype(self):
        return jnp.float32 if self.obs_type == "vector" else jnp.uint8

    # ------------------------------------------------------------------ levels
    def make_params(self, level_ids, num_active=None, slip_prob: float = 0.0) -> GridParams:
        """A level bank holding ``level_ids`` (``[L]`` ints), of which the first ``num_active`` (default all)
        are drawn at reset. Jit-able (``level_ids`` may be traced)."""
        level_ids = jnp.asarray(level_ids, jnp.int32)
        walls, goals, starts = _generate_levels(self, level_ids)
        n = level_ids.shape[0] if num_active is None else num_active
        return GridParams(
            walls=walls,
            goals=goals,
            starts=starts,
            level_ids=level_ids,
            num_active=jnp.asarray(n, jnp.int32),
            slip_prob=jnp.asarray(slip_prob, jnp.float32),
        )

    # ------------------------------------------------------------------ env API
    def reset(self, key: jax.Array, params: GridParams) -> tuple[jax.Array, GridState]:
        """Start an episode on a level drawn uniformly from the active rows of ``params``."""
        k_level, k_start = jax.random.split(key)
        row = jax.random.randint(k_level, (), 0, params.num_active, jnp.int32)
        walls, goal = params.walls[row], params.goals[row]
        start = params.starts[row]
        if self.random_start:
            free = ~walls & ~_one_hot_cell(goal, self.size)
            cell = jax.random.categorical(k_start, jnp.where(free.reshape(-1), 0.0, -jnp.inf))
            start = jnp.stack([cell // self.size, cell % self.size]).astype(jnp.int32)
        state = GridState(pos=start, goal=goal, walls=walls, level=params.level_ids[row], t=jnp.int32(0))
        return self.observation(state), state

    def step(self, key: jax.Array, state: GridState, action: jax.Array, params: GridParams):
        """One step. Returns ``(obs, state, reward float32, terminated bool, truncated bool, info)``."""
        k_slip, k_act = jax.random.split(key)
        slip = jax.random.uniform(k_slip, (), jnp.float32) < params.slip_prob
        action = jnp.where(slip, jax.random.randint(k_act, (), 0, NUM_ACTIONS, jnp.int32), action)
        target = jnp.clip(state.pos + MOVES[action], 0, self.size - 1)
        pos = jnp.where(state.walls[target[0], target[1]], state.pos, target)
        terminated = jnp.all(pos == state.goal)
        t = state.t + 1
        truncated = (t >= self.max_steps) & ~terminated
        reward = terminated.astype(jnp.float32) - jnp.float32(self.step_cost)
        state = state.replace(pos=pos, t=t)
        return self.observation(state), state, reward, terminated, truncated, {"level": state.level}

    def observation(self, state: GridState) -> jax.Array:
        agent = _one_hot_cell(state.pos, self.size)
        goal = _one_hot_cell(state.goal, self.size)
        if self.obs_type == "vector":
            return jnp.concatenate([agent.reshape(-1), goal.reshape(-1), state.walls.reshape(-1)]).astype(jnp.float32)
        grid = jnp.stack([state.walls, agent, goal], axis=-1).astype(jnp.uint8) * jnp.uint8(255)
        return jnp.repeat(jnp.repeat(grid, self.cell_px, axis=0), self.cell_px, axis=1)


# ---------------------------------------------------------------------------------------------- levels
def _one_hot_cell(cell: jax.Array, size: int) -> jax.Array:
    return jnp.zeros((size, size), bool).at[cell[0], cell[1]].set(True)


def _neighbours_any(mask: jax.Array) -> jax.Array:
    """Cells with at least one 4-neighbour in ``mask`` (or in ``mask`` themselves)."""
    pad = jnp.pad(mask, 1)
    return mask | pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]


def distance_to_goal(walls: jax.Array, goal: jax.Array) -> jax.Array:
    """Shortest-path distances ``[N, N]`` int32 from every cell to ``goal`` (BFS as ``N*N`` relaxation
    sweeps); walls and cells cut off from the goal get ``UNREACHABLE``."""
    size = walls.shape[0]
    dist = jnp.where(_one_hot_cell(goal, size), 0, UNREACHABLE).astype(jnp.int32)

    def sweep(_, d):
        pad = jnp.pad(d, 1, constant_values=UNREACHABLE)
        best = jnp.minimum(jnp.minimum(pad[:-2, 1:-1], pad[2:, 1:-1]), jnp.minimum(pad[1:-1, :-2], pad[1:-1, 2:]))
        return jnp.where(walls, UNREACHABLE, jnp.minimum(d, best + 1))

    return jax.lax.fori_loop(0, size * size, sweep, dist)


def generate_level(env: GridWorld, level_id: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(walls [N, N] bool, goal [2] int32, start [2] int32)`` of level ``level_id`` (see module docstring)."""
    n = env.size
    key = jax.random.fold_in(jax.random.PRNGKey(env.level_seed), level_id)
    k_walls, k_goal, k_start = jax.random.split(key, 3)
    walls = jax.random.uniform(k_walls, (n, n), jnp.float32) < env.wall_density
    g = jax.random.randint(k_goal, (), 0, n * n, jnp.int32)
    goal = jnp.stack([g // n, g % n]).astype(jnp.int32)
    walls = walls & ~_one_hot_cell(goal, n)
    reachable = jax.lax.fori_loop(0, n * n, lambda _, m: _neighbours_any(m) & ~walls, _one_hot_cell(goal, n))
    walls = jnp.where(reachable.sum() * 2 >= n * n, ~reachable, jnp.zeros((n, n), bool))
    free = ~walls & ~_one_hot_cell(goal, n)
    s = jax.random.categorical(k_start, jnp.where(free.reshape(-1), 0.0, -jnp.inf))
    start = jnp.stack([s // n, s % n]).astype(jnp.int32)
    return walls, goal, start


@jax.jit(static_argnums=0)
def _generate_levels(env: GridWorld, level_ids: jax.Array):
    return jax.vmap(lambda i: generate_level(env, i))(level_ids)


def shortest_path_action(state: GridState) -> jax.Array:
    """An optimal action (int32): the first move, in action order, onto a cell one step closer to the goal.

    An oracle for tests and for normalising returns; not part of the env dynamics."""
    dist = distance_to_goal(state.walls, state.goal)
    size = state.walls.shape[0]
    targets = jnp.clip(state.pos[None] + MOVES, 0, size - 1)
    blocked = state.walls[targets[:, 0], targets[:, 1]]
    d = jnp.where(blocked, UNREACHABLE, dist[targets[:, 0], targets[:, 1]])
    return jnp.argmin(d).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------- batches
def step_autoreset(env: GridWorld, key: jax.Array, state: GridState, action: jax.Array, params: GridParams):
    """``env.step`` with a same-step auto-reset (CleanRL / gymnasium-vector semantics).

    When the step ends the episode (``terminated | truncated``), the returned ``obs`` and ``state`` are the
    new episode's first ones, while ``reward``, ``terminated`` and ``truncated`` are the finished episode's
    last step's; ``info["final_obs"]`` is the observation the finished step produced (for bootstrapping on
    truncation) and ``info["level"]`` the finished step's level.
    """
    k_step, k_reset = jax.random.split(key)
    obs, next_state, reward, terminated, truncated, info = env.step(k_step, state, action, params)
    done = terminated | truncated
    reset_obs, reset_state = env.reset(k_reset, params)
    state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), reset_state, next_state)
    info = {**info, "final_obs": obs}
    return jnp.where(done, reset_obs, obs), state, reward, terminated, truncated, info


def batch_reset(env: GridWorld, keys: jax.Array, params: GridParams) -> tuple[jax.Array, GridState]:
    """Reset ``B`` envs (``keys [B, 2]``) sharing ``params``. Returns ``obs [B, ...]`` and a batched state."""
    return jax.vmap(env.reset, in_axes=(0, None))(keys, params)


def batch_step_autoreset(env: GridWorld, keys: jax.Array, state: GridState, actions: jax.Array, params: GridParams):
    """``step_autoreset`` on ``B`` envs sharing ``params``: ``keys [B, 2]``, ``actions [B]`` int32."""
    return jax.vmap(lambda k, s, a: step_autoreset(env, k, s, a, params))(keys, state, actions)


def rollout_returns(env: GridWorld, key: jax.Array, params: GridParams, policy: Any, num_envs: int) -> jax.Array:
    """Undiscounted return of one episode in each of ``num_envs`` envs under ``policy(key, obs, state) ->
    action`` (jit-able; runs exactly ``max_steps`` steps and keeps each env's first episode)."""
    k_reset, k_run = jax.random.split(key)
    obs, state = batch_reset(env, jax.random.split(k_reset, num_envs), params)

    def body(carry, k):
        obs, state, ret, alive = carry
        k_pol, k_env = jax.random.split(k)
        action = jax.vmap(policy)(jax.random.split(k_pol, num_envs), obs, state)
        obs, state, reward, term, trunc, _ = batch_step_autoreset(env, jax.random.split(k_env, num_envs), state, action, params)
        ret = ret + jnp.where(alive, reward, 0.0)
        return (obs, state, ret, alive & ~(term | trunc)), None

    init = (obs, state, jnp.zeros(num_envs, jnp.float32), jnp.ones(num_envs, bool))
    (_, _, ret, _), _ = jax.lax.scan(body, init, jax.random.split(k_run, env.max_steps))
    return ret
