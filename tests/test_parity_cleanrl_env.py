"""envpool's HalfCheetah-v4 (plastix's simulator) against gymnasium's (CleanRL's): same states and actions.

Both load the same ``half_cheetah.xml`` (frame skip 5, forward weight 1, control cost 0.1). gymnasium's env
is put in envpool's state before every step (qpos = [x_position, obs[:8]], qvel = obs[8:]), both take the
same action, and the next observation and the reward must agree. Open loop the two drift apart after ~50
steps under random actions (the dynamics are chaotic and the MuJoCo builds differ in the last bits);
``bench/cleanrl_parity.py env`` measures that too (numbers in the README).
"""

import numpy as np
import pytest

envpool = pytest.importorskip("envpool")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("imageio")  # gymnasium's MuJoCo envs import it (the gymnasium[mujoco] extra)


def test_envpool_step_matches_gymnasium_from_the_same_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo >= 3 writes MUJOCO_LOG.TXT (a deprecation warning) into the cwd
    steps = 1000  # one whole episode (envpool truncates at 1000)
    pool = envpool.make_gymnasium("HalfCheetah-v4", num_envs=1, seed=3)
    obs, info = pool.reset()
    ref = gym.make("HalfCheetah-v4").unwrapped
    ref.reset(seed=0)
    actions = np.random.default_rng(3).uniform(-1.0, 1.0, size=(steps, 6))
    obs_diff, reward_diff, truncated = [], [], None
    for action in actions:
        ref.set_state(np.concatenate([[info["x_position"][0]], obs[0][:8]]), obs[0][8:])
        want_obs, want_reward, *_ = ref.step(action)
        obs, reward, _, truncated, info = pool.step(action[None])
        obs_diff.append(np.abs(obs[0] - want_obs).max())
        reward_diff.append(abs(float(reward[0]) - want_reward) / max(1.0, abs(want_reward)))
    # envpool returns float32 rewards (relative error <= 6e-8); observations agree to MuJoCo's last bits.
    assert max(obs_diff) < 1e-6 and max(reward_diff) < 1e-6
    assert truncated[0]  # the episode ended at step 1000 in envpool, as gymnasium's TimeLimit does
