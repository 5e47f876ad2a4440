"""JAX-native environments of other libraries behind the bridge interface: the whole training is one program.

Two libraries, each optional (``pip install plastix[jaxenvs]``), each with its own ids as it spells them:

- gymnax (``gymnax.make``): MinAtar ``Breakout-MinAtar``, ``Asterix-MinAtar``, ``Freeway-MinAtar``,
  ``SpaceInvaders-MinAtar`` and classic control ``CartPole-v1``, ``Acrobot-v1`` (``GYMNAX_IDS``). MinAtar's
  ``10 x 10 x C`` binary frames are flattened to vectors of ``100 C`` (row-major, channels last), as
  PureJaxRL's MinAtar PPO does (``FlattenObservationWrapper``), so the MLP actor-critics apply. gymnax's
  defaults are kept: MinAtar's sticky actions (probability 0.1) and episode limits (Breakout 1000 steps,
  Freeway 2500).
- Craftax (``craftax.craftax_env.make_craftax_env_from_name``): ``Craftax-Classic-Symbolic-v1``, Plasticine's
  open-ended setting: a 1345-dimensional symbolic observation, 17 actions, episodes of at most 10,000 steps.

Semantics are the gridworld's (``gridworld_bridge``): same-step autoreset (an episode end's step returns the
next episode's first observation, so nothing is masked), the envs' state is the handle (``EnvSpec.resume ==
"state"``: checkpoints hold it, resume is exact), env ``j`` of seed ``s`` draws from
``fold_in(PRNGKey(s + j), 0)``, the same stream alone or in a group. ``terminated`` is the game's own end
(MinAtar's game over, a fallen pole, Craftax's death); ``truncated`` is the library's time limit, so a
time-limit end is not treated as a terminal state.

Scenarios: ``permute`` (a fixed random permutation of the observation vector per round, as on every vector
env) on every id. A game sequence (``--env-id Breakout-MinAtar,Asterix-MinAtar --shift task``) is not offered:
the games' observation and action shapes differ, so one network cannot play them without a padding
convention no reference fixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from plastix.envs import EnvSpec
from plastix.envs import shifts
from plastix.envs.envpool_bridge import env_seeds

GYMNAX_IDS = ("Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar", "CartPole-v1",
              "Acrobot-v1")
CRAFTAX_IDS = ("Craftax-Classic-Symbolic-v1",)
JAX_ENV_IDS = {**{i: "gymnax" for i in GYMNAX_IDS}, **{i: "craftax" for i in CRAFTAX_IDS}}
_NO_LIMIT = 2**31 - 1  # a time limit no episode reaches: what is left of ``is_terminal`` is the game's own end


def _missing(library: str, env_id: str, err: Exception) -> ImportError:
    return ImportError(f"--env-id {env_id}: needs the {library} package ({err}); "
                       f"install it with `pip install 'plastix[jaxenvs]'`")


@dataclass(frozen=True)
class GymnaxEnv:
    """A gymnax env without its autoreset: ``reset(key) -> (obs, state)``,
    ``step(key, state, action) -> (obs, state, reward, terminated, truncated)`` (obs flattened, float32)."""

    env_id: str

    def __post_init__(self):
        try:
            import gymnax
        except ImportError as err:
            raise _missing("gymnax", self.env_id, err) from None
        env, params = gymnax.make(self.env_id)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "params", params)

    @property
    def num_actions(self) -> int:
        return int(self.env.action_space(self.params).n)

    @property
    def obs_size(self) -> int:
        return int(np.prod(self.env.observation_space(self.params).shape))

    @property
    def max_steps(self) -> int:
        return int(self.params.max_steps_in_episode)

    def reset(self, key):
        obs, state = self.env.reset_env(key, self.params)
        return obs.reshape(-1).astype(jnp.float32), state

    def step(self, key, state, action):
        obs, state, reward, terminated, _ = self.env.step_env(key, state, action, self.params)
        truncated = self.env.is_truncated(state, self.params)  # gymnax >= 1.0: the time limit only
        return obs.reshape(-1).astype(jnp.float32), state, reward, terminated, truncated


@dataclass(frozen=True)
class CraftaxEnv:
    """Craftax-Classic (symbolic) without autoreset, with the game's end and the time limit told apart."""

    env_id: str

    def __post_init__(self):
        try:
            from craftax.craftax_env import make_craftax_env_from_name
        except ImportError as err:
            raise _missing("craftax", self.env_id, err) from None
        env = make_craftax_env_from_name(self.env_id, auto_reset=False)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "params", env.default_params)

    @property
    def num_actions(self) -> int:
        return int(self.env.num_actions)

    @property
    def obs_size(self) -> int:
        return int(np.prod(self.env.observation_space(self.params).shape))

    @property
    def max_steps(self) -> int:
        return int(self.params.max_timesteps)

    # Craftax is written for JAX's default 32-bit types (``lax.select`` of a Python int and an int32 action);
    # importing plastix turns on 64-bit types for envpool, so its functions are traced with them off.
    # Craftax also stores Python scalars in its state (``player_health=9``): cast to the 32-bit types they have
    # under Craftax's own settings, or they come out 64-bit and the next step's ``lax.select`` refuses them.
    def reset(self, key):
        with jax.enable_x64(False):
            obs, state = self.env.reset_env(key, self.params)
        return obs.reshape(-1).astype(jnp.float32), _x32(state)

    def step(self, key, state, action):
        with jax.enable_x64(False):
            obs, state, reward, _, _ = self.env.step_env(key, state, action.astype(jnp.int32), self.params)
            truncated = state.timestep >= self.params.max_timesteps
            # Craftax's is_terminal = time limit | lava | death; without the limit it is the game's own end.
            terminated = self.env.is_terminal(state, self.params.replace(max_timesteps=_NO_LIMIT))
        return obs.reshape(-1).astype(jnp.float32), _x32(state), reward.astype(jnp.float32), terminated, truncated


def _x32(tree):
    """Every leaf of ``tree`` in 32-bit types (int64 -> int32, float64 -> float32; others unchanged)."""
    narrow = {jnp.dtype(jnp.int64): jnp.int32, jnp.dtype(jnp.float64): jnp.float32}
    return jax.tree.map(lambda x: jnp.asarray(x).astype(narrow.get(jnp.asarray(x).dtype, jnp.asarray(x).dtype)), tree)


def make_jax_env(env_id: str):
    """The adapter of ``env_id`` (a key of ``JAX_ENV_IDS``)."""
    if env_id not in JAX_ENV_IDS:
        raise ValueError(f"--env-id: {env_id!r} is not a JAX-native env; allowed: {', '.join(JAX_ENV_IDS)}")
    return GymnaxEnv(env_id) if JAX_ENV_IDS[env_id] == "gymnax" else CraftaxEnv(env_id)


def step_autoreset(env, key, state, action):
    """One env's step with same-step autoreset: on an episode end the returned observation and state are
    a new episode's (reset with the second half of ``key``); reward and flags are the ending step's."""
    step_key, reset_key = jax.random.split(key)
    obs, state, reward, terminated, truncated = env.step(step_key, state, action)
    done = terminated | truncated
    obs_re, state_re = env.reset(reset_key)
    state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_re, state)
    return jnp.where(done, obs_re, obs), state, reward.astype(jnp.float32), terminated, truncated


@struct.dataclass
class JaxEnvHandle:
    state: Any  # env states, leading axis S * n
    keys: jax.Array  # [S * n, 2]
    perm: jax.Array  # [obs dim]: the round's observation permutation


class JaxEnvBridge:
    """``len(seeds) * envs_per_seed`` envs of a JAX library, stepped inside the compiled loop."""

    def __init__(self, env_id: str, seeds: list[int], envs_per_seed: int, cfg: Any):
        self.env_id, self.seeds, self.envs_per_seed, self.cfg = env_id, list(seeds), envs_per_seed, cfg
        self.family = JAX_ENV_IDS[env_id]
        self.env = make_jax_env(env_id)
        self.num_envs = len(self.seeds) * envs_per_seed
        self.shift_key = jax.random.PRNGKey(getattr(cfg, "shift_seed", 0))
        self._handle = None

    @property
    def spec(self) -> EnvSpec:
        env = self.env
        return EnvSpec(self.family, (env.obs_size,), np.float32, True, env.num_actions, None, None,
                       env.max_steps, "same_step", "state")

    def round_perm(self, round_idx: int | None) -> jax.Array:
        """Round ``round_idx``'s observation permutation (``None``: the held-out one); identity without permute."""
        if getattr(self.cfg, "shift", "none") != "permute":
            return jnp.arange(self.env.obs_size, dtype=jnp.int32)
        if round_idx is None:
            return shifts.heldout_permutation(self.shift_key, self.env.obs_size)
        return shifts.observation_permutation(self.shift_key, round_idx, self.env.obs_size)

    def set_round(self, round_idx: int, handle: JaxEnvHandle) -> JaxEnvHandle:
        return handle.replace(perm=self.round_perm(round_idx))

    def reset(self) -> np.ndarray:
        seeds = jnp.asarray(env_seeds(self.seeds, self.envs_per_seed))
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 0))(seeds)
        split = jax.vmap(jax.random.split)(keys)
        obs, state = jax.jit(jax.vmap(self.env.reset))(split[:, 1])
        perm = self.round_perm(0)
        self._handle = JaxEnvHandle(state, split[:, 0], perm)
        return np.asarray(self._by_seed(shifts.permute_vector(obs, perm)))

    def handle(self) -> JaxEnvHandle:
        return self._handle

    def step(self, handle: JaxEnvHandle, action):
        """Compiled step; ``action`` ``[S, n]`` ints. Returns ``handle, (obs, reward, terminated, truncated, {})``."""
        split = jax.vmap(jax.random.split)(handle.keys)
        flat = action.reshape(self.num_envs).astype(jnp.int32)
        obs, state, reward, terminated, truncated = jax.vmap(
            lambda k, s, a: step_autoreset(self.env, k, s, a))(split[:, 1], handle.state, flat)
        handle = handle.replace(state=state, keys=split[:, 0])
        obs = shifts.permute_vector(obs, handle.perm)
        by_seed = self._by_seed
        return handle, (by_seed(obs), by_seed(reward), by_seed(terminated), by_seed(truncated), {})

    def evaluate(self, act_fn, key: jax.Array, num_envs: int = 16) -> jax.Array:
        """Mean return of ``num_envs`` episodes under the held-out permutation (``shifts.heldout_permutation``),
        each run to its end (at most the env's time limit) with no reset. ``act_fn(key, obs [B, D]) -> [B]``."""
        env, perm = self.env, self.round_perm(None)
        reset_key, run_key = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))

        def body(carry):
            t, obs, state, total, alive, key = carry
            key, act_key, env_key = jax.random.split(key, 3)
            action = act_fn(act_key, shifts.permute_vector(obs, perm))
            obs, state, reward, terminated, truncated = jax.vmap(env.step)(
                jax.random.split(env_key, num_envs), state, action.astype(jnp.int32))
            total = total + jnp.where(alive, reward, 0.0)
            return t + 1, obs, state, total, alive & ~(terminated | truncated), key

        init = (0, obs, state, jnp.zeros((num_envs,), jnp.float32), jnp.ones((num_envs,), bool), run_key)
        total = jax.lax.while_loop(lambda c: (c[0] < env.max_steps) & jnp.any(c[4]), body, init)[3]
        return total.mean()

    def restore(self, handle: JaxEnvHandle) -> None:
        self._handle = handle

    def close(self) -> None:
        pass

    def _by_seed(self, x):
        return x.reshape((len(self.seeds), self.envs_per_seed) + tuple(x.shape[1:]))
