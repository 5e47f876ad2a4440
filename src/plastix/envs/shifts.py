"""Non-stationary scenarios (SCIENCE.md section 4): what changes between training rounds.

Training runs in rounds ``r = 0, 1, ..., R - 1``; a shift happens between rounds. Every function here is a
pure function of the round index, a key (where randomness is involved) and sizes, so a trainer computes
round ``r``'s transformation by calling it with ``r`` (inside or outside ``jit``), and the same
``(key, r)`` always gives the same transformation (resume-safe, identical across seeds that share a key).
Round 0 is always the unshifted task.

Shifts (``SHIFTS``) and how a trainer applies them at the start of round ``r``:

- ``none``: nothing changes.
- ``permute`` (Juliani & Ash): a fixed random permutation per round of the observation.
  Vector observations: ``perm = observation_permutation(key, r, obs_dim)`` then ``permute_vector(obs, perm)``
  on every observation the agent sees during round ``r`` (train and evaluation). Images ``[..., H, W, C]``:
  ``perm = patch_permutation(key, r, grid)`` then ``permute_patches(images, perm, grid)``.
  Our reading of "a 16x16 grid of patches": the image is cut into ``grid x grid = 16 x 16 = 256`` equal
  patches of ``(H / 16) x (W / 16)`` pixels (4 x 4 pixels for Procgen's 64 x 64), and the patches are
  shuffled, each patch keeping its pixels and all its channels (a frame stack's frames move together).
  ``grid`` must divide ``H`` and ``W``: 84 x 84 Atari frames do not admit 16 (use ``grid=12``, 14 or 21, or
  build the pool with ``img_height = img_width = 80`` or 96). The other reading (16 x 16-pixel patches: a
  4 x 4 grid on 64 x 64) is ``grid=4``. Round 0 uses the identity. ``heldout_permutation`` gives a
  permutation no training round uses, for the "unseen permutation" evaluation.
- ``window``: round ``r`` trains on levels ``[r*k, r*k + n)`` (``window_levels``).
- ``expand``: round ``r`` trains on levels ``[0, n + r*k)`` (``expand_levels``).
  Held-out test levels for both (and for ``none``/``permute`` on level-based envs) are ``heldout_levels``:
  ``[n + (R-1)*k, n + (R-1)*k + num)``, which no round ever trains on. On Procgen a level range is
  ``start_level, num_levels`` of the pool (rebuild the pool each round, ``image_envs.ImageEnvBridge``); on the
  gridworld it is the level bank of ``gridworld_round_params``.
- ``task``: the reward changes. MuJoCo locomotion (envpool ``*-v4`` with ``info["x_velocity"]``):
  ``direction = task_direction(r)`` (+1 even rounds, -1 odd rounds: forward vs backward running) and
  ``direction_reward(reward, x_velocity, direction)``; or a target velocity
  ``v = target_velocity(key, r, low, high)`` and ``target_velocity_reward(reward, x_velocity, v)``.
  Gridworld: every level's goal moves to another free cell (``move_goals``). Procgen: the game changes
  (Plasticine's continual Procgen, RLE-Foundation/Plasticine ``PlasticineProcgen`` in ``task`` mode: one
  game per round, a fixed number of steps each): round ``r`` plays ``procgen_task_games(env_id,
  shift_seed)[r mod G]``, the ``--env-id`` game first, then every other envpool Procgen game of its
  distribution mode in an order drawn from the shift seed.
- ``dynamics``: the transition function changes (Dohare et al.'s SlipperyAnt resamples friction every N
  steps; a "round" is then those N steps). envpool's MuJoCo tasks cannot change physics through their
  public API, so this is refused for them (``check_shift_supported``). Gridworld: the slip probability
  is resampled (``slip_probability``).

``check_shift_supported(env_id, shift)`` validates a combination before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from plastix.envs.gridworld import GRIDWORLD_ID, GridParams, GridWorld

SHIFTS = ("none", "permute", "window", "expand", "task", "dynamics")

# Env family -> shifts it supports (see check_shift_supported).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "gridworld": ("none", "permute", "window", "expand", "task", "dynamics"),
    "mujoco": ("none", "permute", "task"),
    "procgen": ("none", "permute", "window", "expand", "task"),
    "atari": ("none", "permute"),
    "dmc": ("none", "permute", "task"),
    "gymnax": ("none", "permute"),
    "craftax": ("none", "permute"),
    "gymnasium": ("none", "permute", "task"),
}
FAMILY_EXAMPLES = {
    "gridworld": GRIDWORLD_ID,
    "mujoco": "HalfCheetah-v4, Ant-v4, Hopper-v4, Walker2d-v4",
    "procgen": "CoinrunEasy-v0, CoinrunHard-v0",
    "atari": "MontezumaRevenge-v5 (any envpool Atari *-v5)",
    "dmc": "CheetahRun-v1, WalkerWalk-v1 (any envpool DeepMind Control *-v1; task: a sequence such as "
           "WalkerStand-v1,WalkerWalk-v1,WalkerRun-v1)",
    "gymnax": "Breakout-MinAtar, Asterix-MinAtar, Freeway-MinAtar, SpaceInvaders-MinAtar, CartPole-v1, Acrobot-v1",
    "craftax": "Craftax-Classic-Symbolic-v1",
    "gymnasium": "gymnasium:CartPole-v1, gymnasium:Pendulum-v1, gymnasium:<your registered id> (task: a "
                 "sequence gymnasium:A,gymnasium:B)",
}
# MuJoCo tasks whose info reports x_velocity (needed by the task shift's reward).
MUJOCO_TASK_ENVS = ("HalfCheetah", "Ant", "Hopper", "Walker2d")

_HELDOUT_ROUND = 2**31 - 1  # fold_in index no training round reaches


# ---------------------------------------------------------------------------------------------- validation
def env_family(env_id: str) -> str:
    """``"gridworld"``, ``"mujoco"``, ``"procgen"``, ``"atari"``, ``"dmc"`` (envpool's DeepMind Control),
    ``"gymnax"``, ``"craftax"`` (``plastix.envs.jax_envs``) or ``"gymnasium"`` (``gymnasium:ID``); a
    comma-separated sequence of ids (``--shift task``) is its first id's family. ``ValueError`` otherwise."""
    from plastix.envs.jax_envs import JAX_ENV_IDS

    if env_id == GRIDWORLD_ID:
        return "gridworld"
    if env_id.startswith("gymnasium:"):
        return "gymnasium"
    env_id = env_id.split(",")[0].strip()
    if env_id in JAX_ENV_IDS:  # before envpool: its CartPole-v1 / Acrobot-v1 are these ids' gymnax versions here
        return JAX_ENV_IDS[env_id]
    from envpool.registration import registry

    entry = registry.specs.get(env_id)
    if entry is None:
        raise ValueError(f"--env-id: unknown environment {env_id!r}; known families: {_families_text()}")
    module = entry[0]
    if module.startswith("envpool.mujoco.dmc"):
        return "dmc"
    for family in ("mujoco", "procgen", "atari"):
        if module.startswith(f"envpool.{family}"):
            return family
    raise ValueError(f"--env-id: {env_id!r} ({module}) has no shift support in plastix; known families: {_families_text()}")


def _families_text() -> str:
    return "; ".join(f"{fam} ({FAMILY_EXAMPLES[fam]}): {', '.join(s)}" for fam, s in SUPPORTED.items())


def check_shift_supported(env_id: str, shift: str) -> None:
    """Raise ``ValueError`` unless ``shift`` can run on ``env_id``, naming both and the combinations that work."""
    if shift not in SHIFTS:
        raise ValueError(f"--shift: unknown shift {shift!r}; allowed: {', '.join(SHIFTS)}")
    family = env_family(env_id)
    allowed = SUPPORTED[family]
    if family in ("dmc", "gymnasium"):  # their task shift is a sequence of envs, one per round
        sequence = len([p for p in env_id.split(",") if p.strip()]) > 1
        if sequence != (shift == "task"):
            raise ValueError(f"--shift {shift} on --env-id {env_id}: on {family} envs, --shift task and a "
                             f"comma-separated sequence of env ids go together (one env per round, e.g. "
                             f"{FAMILY_EXAMPLES[family].split('task: ')[-1].rstrip(')')})")
    if family == "mujoco" and shift == "task" and not env_id.startswith(MUJOCO_TASK_ENVS):
        allowed = tuple(s for s in allowed if s != "task")
    if shift in allowed:
        return
    why = {
        ("mujoco", "dynamics"): "envpool's MuJoCo tasks cannot change friction or mass through their public API",
        ("mujoco", "window"): "MuJoCo tasks have no levels",
        ("mujoco", "expand"): "MuJoCo tasks have no levels",
        ("mujoco", "task"): f"the task shift needs info['x_velocity'] ({', '.join(MUJOCO_TASK_ENVS)} only)",
        ("procgen", "dynamics"): "Procgen's physics cannot be changed from outside",
        ("atari", "window"): "Atari games have no level sets",
        ("atari", "expand"): "Atari games have no level sets",
        ("atari", "task"): "Atari rewards cannot be changed from outside",
        ("atari", "dynamics"): "Atari dynamics cannot be changed from outside",
        ("gymnax", "task"): "the MinAtar games' observation and action shapes differ (no game sequence)",
        ("craftax", "task"): "Craftax-Classic is one task",
    }.get((family, shift), "not supported")
    raise ValueError(
        f"--shift {shift} is not supported on --env-id {env_id} ({family}: {why}). "
        f"{env_id} supports: {', '.join(allowed)}. Supported combinations: {_families_text()}"
    )


# ---------------------------------------------------------------------------------------------- permute
def observation_permutation(key: jax.Array, round_idx, n: int) -> jax.Array:
    """Round ``round_idx``'s permutation of ``n`` items (int32 ``[n]``): identity for round 0, else
    ``jax.random.permutation(fold_in(key, round_idx), n)``. Jit-able in ``round_idx``."""
    perm = jax.random.permutation(jax.random.fold_in(key, round_idx), n).astype(jnp.int32)
    return jnp.where(jnp.asarray(round_idx) == 0, jnp.arange(n, dtype=jnp.int32), perm)


def heldout_permutation(key: jax.Array, n: int) -> jax.Array:
    """A permutation of ``n`` items that is not any training round's (for "unseen permutation" evaluation)."""
    return jax.random.permutation(jax.random.fold_in(key, _HELDOUT_ROUND), n).astype(jnp.int32)


def patch_permutation(key: jax.Array, round_idx, grid: int = 16) -> jax.Array:
    """Round ``round_idx``'s permutation of the ``grid * grid`` patches of an image (row-major patch order)."""
    return observation_permutation(key, round_idx, grid * grid)


def permute_vector(obs: jax.Array, perm: jax.Array) -> jax.Array:
    """``obs[..., perm]``: output dimension ``i`` is input dimension ``perm[i]``."""
    return jnp.take(obs, perm, axis=-1)


def relative_permutation(old: jax.Array, new: jax.Array) -> jax.Array:
    """``rel`` such that ``permute(x_old, rel) = x_new`` for any ``x_old = permute(x, old)``,
    ``x_new = permute(x, new)``: ``rel = argsort(old)[new]`` (position ``j`` of the new view holds item
    ``new[j]``, which the old view holds at ``argsort(old)[new[j]]``)."""
    return jnp.argsort(old)[new].astype(jnp.int32)


def permute_observation(x: jax.Array, perm: jax.Array, image: bool, grid: int = 16) -> jax.Array:
    """``permute_patches(x, perm, grid)`` for images ``[..., H, W, C]``, else ``permute_vector(x, perm)``."""
    return permute_patches(x, perm, grid) if image else permute_vector(x, perm)


def check_patch_grid(height: int, width: int, grid: int) -> None:
    """``ValueError`` unless a ``grid x grid`` patch grid tiles a ``height x width`` image exactly."""
    if height % grid or width % grid:
        divisors = [g for g in range(2, min(height, width) + 1) if height % g == 0 and width % g == 0]
        raise ValueError(
            f"--patch-grid {grid}: a {grid}x{grid} grid of patches does not tile {height}x{width} images; "
            f"grids that do: {', '.join(map(str, divisors))} (or resize the frames to a multiple of {grid})"
        )


def permute_patches(images: jax.Array, perm: jax.Array, grid: int = 16) -> jax.Array:
    """Shuffle the ``grid x grid`` patches of ``images [..., H, W, C]``: output patch ``i`` (row-major) is
    input patch ``perm[i]``; pixels inside a patch and channels keep their order."""
    *lead, h, w, c = images.shape
    check_patch_grid(h, w, grid)
    ph, pw = h // grid, w // grid
    x = images.reshape(*lead, grid, ph, grid, pw, c)
    x = jnp.moveaxis(x, -4, -3).reshape(*lead, grid * grid, ph, pw, c)  # [..., patch, ph, pw, c]
    x = jnp.take(x, perm, axis=-4)
    x = x.reshape(*lead, grid, grid, ph, pw, c)
    return jnp.moveaxis(x, -3, -4).reshape(*lead, h, w, c)


# ---------------------------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class LevelRange:
    """Levels ``[start, start + num_levels)`` (Procgen's ``start_level``, ``num_levels``)."""

    start: int
    num_levels: int

    @property
    def stop(self) -> int:
        return self.start + self.num_levels

    def ids(self) -> list[int]:
        return list(range(self.start, self.stop))


def window_levels(round_idx: int, n: int, k: int) -> LevelRange:
    """``window``: round ``r`` trains on ``[r*k, r*k + n)``."""
    _check_nk(n, k)
    return LevelRange(round_idx * k, n)


def expand_levels(round_idx: int, n: int, k: int) -> LevelRange:
    """``expand``: round ``r`` trains on ``[0, n + r*k)``."""
    _check_nk(n, k)
    return LevelRange(0, n + round_idx * k)


def train_levels(shift: str, round_idx: int, n: int, k: int) -> LevelRange:
    """Training levels of round ``round_idx``: ``window``/``expand`` as above, ``[0, n)`` for other shifts."""
    if shift == "window":
        return window_levels(round_idx, n, k)
    if shift == "expand":
        return expand_levels(round_idx, n, k)
    return LevelRange(0, n)


def heldout_levels(num_rounds: int, n: int, k: int, num_levels: int) -> LevelRange:
    """``num_levels`` test levels no round trains on: they start at ``n + (R-1)*k`` (the first level past
    the last round's window or expanded set)."""
    _check_nk(n, k)
    return LevelRange(n + (num_rounds - 1) * k, num_levels)


def _check_nk(n: int, k: int) -> None:
    if n < 1 or k < 0:
        raise ValueError(f"--levels-per-round n must be >= 1 and --level-shift k >= 0 (got n={n}, k={k})")


# ---------------------------------------------------------------------------------------------- task
def procgen_task_games(env_id: str, shift_seed: int) -> list[str]:
    """The ``task`` shift's game sequence on Procgen: ``env_id`` (e.g. ``CoinrunEasy-v0``), then every other
    envpool Procgen game with the same distribution mode (``...Easy-v0``), shuffled with
    ``numpy.random.default_rng(shift_seed)`` (Plasticine shuffles its game list with the run's seed; plastix
    draws it from the shift seed, so that every training seed sees the same sequence). Round ``r`` plays
    entry ``r mod len``. All Procgen games share 64x64x3 frames and 15 actions, so one network plays them all.
    """
    from envpool.registration import registry

    mode = next((m for m in ("Easy-v0", "Hard-v0", "Exploration-v0", "Memory-v0", "Extreme-v0")
                 if env_id.endswith(m)), None)
    games = sorted(e for e, entry in registry.specs.items()
                   if entry[0].startswith("envpool.procgen") and mode is not None and e.endswith(mode)
                   and e[: -len(mode)].isalpha())
    if env_id not in games:
        raise ValueError(f"--env-id: {env_id!r} is not an envpool Procgen game id (e.g. CoinrunEasy-v0)")
    others = [g for g in games if g != env_id]
    order = np.random.default_rng(shift_seed).permutation(len(others))
    return [env_id] + [others[i] for i in order]


def task_direction(round_idx) -> jax.Array:
    """Running direction of round ``r``: +1 (forward) on even rounds, -1 (backward) on odd rounds."""
    return jnp.where(jnp.asarray(round_idx) % 2 == 0, 1.0, -1.0).astype(jnp.float32)


def direction_reward(reward, x_velocity, direction, forward_weight: float = 1.0):
    """Swap the forward term ``w * v`` of a MuJoCo locomotion reward for ``direction * w * v``.

    envpool's v4 rewards are ``w * x_velocity + (other terms)`` (HalfCheetah: ``reward_run + reward_ctrl``,
    ``forward_reward_weight`` ``w = 1``), so ``reward - w*v + direction*w*v`` keeps the other terms."""
    return reward + (direction - 1.0) * forward_weight * x_velocity


def target_velocity(key: jax.Array, round_idx, low: float = 0.0, high: float = 3.0) -> jax.Array:
    """Round ``r``'s target velocity, uniform in ``[low, high)`` from ``fold_in(key, r)`` (float32)."""
    return jax.random.uniform(jax.random.fold_in(key, round_idx), (), jnp.float32, low, high)


def target_velocity_reward(reward, x_velocity, v_target, forward_weight: float = 1.0):
    """Replace the forward term ``w * v`` by ``-|v - v_target|`` (other reward terms kept)."""
    return reward - forward_weight * x_velocity - jnp.abs(x_velocity - v_target)


# ---------------------------------------------------------------------------------------------- gridworld
@partial(jax.jit, static_argnums=0)
def move_goals(env: GridWorld, params: GridParams, key: jax.Array, round_idx) -> GridParams:
    """``task`` on the gridworld: round ``r > 0`` moves every level's goal to a uniformly random free cell
    other than the old goal and the start (from ``fold_in(key, r)``); walls and starts are unchanged.
    Every free cell is connected to every other (``generate_level``), so the level stays solvable."""
    n = env.size
    keys = jax.random.split(jax.random.fold_in(key, round_idx), params.goals.shape[0])

    def one(k, walls, goal, start):
        taken = jnp.zeros((n, n), bool).at[goal[0], goal[1]].set(True).at[start[0], start[1]].set(True)
        free = (~walls & ~taken).reshape(-1)
        cell = jax.random.categorical(k, jnp.where(free, 0.0, -jnp.inf))
        new = jnp.stack([cell // n, cell % n]).astype(jnp.int32)
        return jnp.where(free.any(), new, goal)

    moved = jax.vmap(one)(keys, params.walls, params.goals, params.starts)
    return params.replace(goals=jnp.where(jnp.asarray(round_idx) == 0, params.goals, moved))


def slip_probability(key: jax.Array, round_idx, high: float = 0.5) -> jax.Array:
    """``dynamics`` on the gridworld: round ``r``'s slip probability, 0 for round 0, else uniform in
    ``[0, high)`` from ``fold_in(key, r)``."""
    p = jax.random.uniform(jax.random.fold_in(key, round_idx), (), jnp.float32, 0.0, high)
    return jnp.where(jnp.asarray(round_idx) == 0, jnp.float32(0.0), p)


def gridworld_round_params(
    env: GridWorld, shift: str, round_idx: int, key: jax.Array, n: int, k: int = 0, num_rounds: int = 1
) -> GridParams:
    """The gridworld's ``GridParams`` for round ``round_idx`` of ``shift`` (``permute`` is applied to
    observations, not here, so it gives round 0's params).

    Shapes do not depend on the round, so one compiled program serves every round: ``window`` banks ``n``
    levels ``[r*k, r*k + n)``; ``expand`` banks ``n + (R-1)*k`` levels ``[0, n + (R-1)*k)`` with the first
    ``n + r*k`` active; other shifts bank levels ``[0, n)``. ``round_idx`` must be a Python int.
    """
    check_shift_supported(GRIDWORLD_ID, shift)
    if shift == "expand":
        capacity = expand_levels(num_rounds - 1, n, k).num_levels
        return env.make_params(jnp.arange(capacity), num_active=expand_levels(round_idx, n, k).num_levels)
    levels = train_levels(shift, round_idx, n, k)
    params = env.make_params(jnp.arange(levels.start, levels.stop))
    if shift == "task":
        params = move_goals(env, params, key, round_idx)
    if shift == "dynamics":
        params = params.replace(slip_prob=slip_probability(key, round_idx))
    return params


def gridworld_heldout_params(env: GridWorld, num_rounds: int, n: int, k: int, num_levels: int) -> GridParams:
    """Held-out test levels of the gridworld (``heldout_levels``)."""
    levels = heldout_levels(num_rounds, n, k, num_levels)
    return env.make_params(jnp.arange(levels.start, levels.stop))


__all__ = [
    "SHIFTS",
    "SUPPORTED",
    "LevelRange",
    "check_shift_supported",
    "check_patch_grid",
    "direction_reward",
    "env_family",
    "expand_levels",
    "gridworld_heldout_params",
    "gridworld_round_params",
    "heldout_levels",
    "heldout_permutation",
    "move_goals",
    "observation_permutation",
    "patch_permutation",
    "permute_observation",
    "permute_patches",
    "relative_permutation",
    "permute_vector",
    "slip_probability",
    "target_velocity",
    "target_velocity_reward",
    "task_direction",
    "train_levels",
    "window_levels",
]
