"""Update-level parity with CleanRL's ``ppo_continuous_action.py`` (issue 18, part 1).

``cleanrl_update`` below is a line-by-line PyTorch transcription of CleanRL's GAE and update loop (the
reference file's ``for iteration ...`` body after the rollout): clipped surrogate, clipped value loss,
entropy, per-minibatch advantage normalisation (unbiased std), ``clip_grad_norm_(0.5)``,
``Adam(eps=1e-5)`` at the annealed rate, ``update_epochs`` x ``num_minibatches`` steps in the order
``np.random.shuffle`` draws. plastix's ``Agent.learn`` is given the same parameters, rollout and
minibatch order, and must produce the same new parameters within float32 tolerance.

torch is a test-only dependency (the ``test`` extra); the library never imports it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.algos.ppo import Agent, Transition
from plastix.config import preset_config
from plastix.envs import EnvSpec

torch = pytest.importorskip("torch")

OBS_DIM, ACT_DIM, NUM_ENVS, NUM_STEPS = 17, 6, 2, 32  # HalfCheetah's sizes; a tiny rollout
DONE_AT = {(9, 0), (20, 1), (31, 0)}  # (step, env) where an episode ends (the last one at the final step)


def _cfg(**overrides):
    """The ``cleanrl`` preset on a tiny batch: 64 samples, 4 minibatches of 16, 3 epochs, 10 updates."""
    base = dict(
        num_envs=NUM_ENVS,
        num_steps=NUM_STEPS,
        num_minibatches=4,
        update_epochs=3,
        total_timesteps=10 * NUM_ENVS * NUM_STEPS,
        diagnostics_every=0,
        curvature_every=0,
    )
    return dataclasses.replace(preset_config("cleanrl"), **{**base, **overrides})


def _spec():
    return EnvSpec(
        family="mujoco",
        obs_shape=(OBS_DIM,),
        obs_dtype=jnp.float64,
        discrete=False,
        action_dim=ACT_DIM,
        action_low=-np.ones(ACT_DIM),
        action_high=np.ones(ACT_DIM),
        max_episode_steps=1000,
        autoreset="next_step",
        resume="replay",
    )


def _rollout(rng):
    """A rollout as CleanRL stores it (time-major ``[T, n]``); ``done[t]``: the episode ended at step t."""
    done = np.zeros((NUM_STEPS, NUM_ENVS), bool)
    for t, e in DONE_AT:
        done[t, e] = True
    return dict(
        obs=rng.normal(size=(NUM_STEPS, NUM_ENVS, OBS_DIM)).astype(np.float32),
        action=rng.normal(size=(NUM_STEPS, NUM_ENVS, ACT_DIM)).astype(np.float32),
        logprob=rng.normal(-8.0, 0.5, size=(NUM_STEPS, NUM_ENVS)).astype(np.float32),
        value=rng.normal(size=(NUM_STEPS, NUM_ENVS)).astype(np.float32),
        reward=rng.normal(size=(NUM_STEPS, NUM_ENVS)).astype(np.float32),
        done=done,
        next_obs=rng.normal(size=(NUM_ENVS, OBS_DIM)).astype(np.float32),
    )


def _minibatch_order(cfg, seed):
    """CleanRL's order: ``b_inds = arange``; each epoch ``np.random.shuffle(b_inds)``, then consecutive
    slices."""
    np.random.seed(seed)
    b_inds = np.arange(cfg.batch_size)
    order = []
    for _ in range(cfg.update_epochs):
        np.random.shuffle(b_inds)
        order.append(b_inds.reshape(cfg.num_minibatches, cfg.minibatch_size).copy())
    return np.stack(order)


# ------------------------------------------------------------------------ CleanRL, transcribed to torch
class TorchAgent(torch.nn.Module):
    """CleanRL's continuous ``Agent`` (critic / actor_mean: Linear-Tanh ``Sequential``; ``actor_logstd``)."""

    def __init__(self):
        super().__init__()
        mlp = lambda out: torch.nn.Sequential(
            torch.nn.Linear(OBS_DIM, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, out),
        )
        self.critic, self.actor_mean = mlp(1), mlp(ACT_DIM)
        self.actor_logstd = torch.nn.Parameter(torch.zeros(1, ACT_DIM))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action):
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        probs = torch.distributions.Normal(action_mean, torch.exp(action_logstd))
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


def _torch_from_flax(params):
    """CleanRL's agent holding plastix's parameters (Linear weights are ``[out, in]``: kernels transposed)."""
    agent = TorchAgent()
    layers = ("layer_1", "layer_2", "output")
    with torch.no_grad():
        for net, seq in (("value", agent.critic), ("policy", agent.actor_mean)):
            for name, linear in zip(layers, (seq[0], seq[2], seq[4])):
                linear.weight.copy_(torch.tensor(np.asarray(params[net][name]["kernel"]).T))
                linear.bias.copy_(torch.tensor(np.asarray(params[net][name]["bias"])))
        agent.actor_logstd.copy_(torch.tensor(np.asarray(params["log_std"]))[None])
    return agent


def cleanrl_update(agent, args, iteration, ro, order, adam_eps=1e-5, unbiased_std=True):
    """CleanRL's lr anneal, GAE and ``update_epochs`` x minibatch loop, line by line.

    CleanRL's ``dones[t]`` is the done flag *before* step t (``next_done`` of step t-1), so its
    ``dones[t + 1]`` is our ``done[t]``. Returns the per-minibatch losses (before each step).
    ``adam_eps``/``unbiased_std`` change the rule only for the negative controls.
    """
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=adam_eps)
    frac = 1.0 - (iteration - 1.0) / args.num_updates
    optimizer.param_groups[0]["lr"] = frac * args.learning_rate
    obs, actions = torch.tensor(ro["obs"]), torch.tensor(ro["action"])
    logprobs, values, rewards = (
        torch.tensor(ro["logprob"]),
        torch.tensor(ro["value"]),
        torch.tensor(ro["reward"]),
    )
    dones = torch.zeros((args.num_steps, args.num_envs))
    dones[1:] = torch.tensor(ro["done"][:-1], dtype=torch.float32)
    next_done = torch.tensor(ro["done"][-1], dtype=torch.float32)
    with torch.no_grad():
        next_value = agent.get_value(torch.tensor(ro["next_obs"])).reshape(1, -1)
        advantages = torch.zeros_like(rewards)
        lastgaelam = 0
        for t in reversed(range(args.num_steps)):
            if t == args.num_steps - 1:
                nextnonterminal = 1.0 - next_done
                nextvalues = next_value
            else:
                nextnonterminal = 1.0 - dones[t + 1]
                nextvalues = values[t + 1]
            delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + values
    b_obs, b_logprobs = obs.reshape((-1, OBS_DIM)), logprobs.reshape(-1)
    b_actions, b_advantages = actions.reshape((-1, ACT_DIM)), advantages.reshape(-1)
    b_returns, b_values = returns.reshape(-1), values.reshape(-1)
    losses = []
    for epoch in range(args.update_epochs):
        for mb_inds in order[epoch]:
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
            logratio = newlogprob - b_logprobs[mb_inds]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()
            mb_advantages = b_advantages[mb_inds]
            if args.norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                    mb_advantages.std(unbiased=unbiased_std) + 1e-8
                )
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()
            newvalue = newvalue.view(-1)
            v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
            v_clipped = b_values[mb_inds] + torch.clamp(
                newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
            )
            v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
            v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            losses.append(
                [pg_loss.item(), v_loss.item(), entropy_loss.item(), approx_kl.item(), clipfrac.item()]
            )
    return np.array(losses)


# ------------------------------------------------------------------------------------------------ plastix
_LEARN = {}


def _learn(cfg):
    """The agent for ``cfg`` and ``jit(agent.learn)``, built once per config (compiling is the main cost)."""
    name = repr(cfg)
    if name not in _LEARN:
        agent = Agent(cfg, _spec())
        _LEARN[name] = agent, jax.jit(agent.learn)
    return _LEARN[name]


def _plastix_inputs(cfg, ro, update_index, key):
    """plastix's agent, a fresh train state at update ``update_index`` whose next observation is the
    rollout's, and the rollout as a ``Transition`` (every step valid, as in CleanRL)."""
    agent, _ = _learn(cfg)
    state = agent.init_state(jax.random.PRNGKey(key), jnp.zeros((NUM_ENVS, OBS_DIM), jnp.float64))
    state = state.replace(
        update=jnp.asarray(update_index, jnp.int32), env=state.env.replace(obs=jnp.asarray(ro["next_obs"]))
    )
    nan = jnp.full((NUM_STEPS, NUM_ENVS), jnp.nan)
    traj = Transition(
        obs=jnp.asarray(ro["obs"]),
        action=jnp.asarray(ro["action"]),
        logprob=jnp.asarray(ro["logprob"]),
        value=jnp.asarray(ro["value"]),
        reward=jnp.asarray(ro["reward"]),
        done=jnp.asarray(ro["done"]),
        valid=jnp.ones((NUM_STEPS, NUM_ENVS), bool),
        finished_return=nan,
        finished_length=jnp.zeros((NUM_STEPS, NUM_ENVS), jnp.int32),
    )
    return agent, state, traj


def plastix_update(cfg, ro, order, update_index, key=0):
    """plastix's ``Agent.learn`` on the rollout in minibatch ``order``; returns (params before, after,
    metrics)."""
    agent, state, traj = _plastix_inputs(cfg, ro, update_index, key)
    new_state, metrics, _ = _learn(cfg)[1](state, traj, jnp.asarray(order, jnp.int32))
    return state.params, new_state.params, metrics


def _flat(params):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


def _torch_params(agent):
    """The torch agent's parameters named and shaped as plastix's."""
    out = {"['log_std']": agent.actor_logstd.detach().numpy()[0]}
    for net, seq in (("value", agent.critic), ("policy", agent.actor_mean)):
        for name, linear in zip(("layer_1", "layer_2", "output"), (seq[0], seq[2], seq[4])):
            out[f"['{net}']['{name}']['kernel']"] = linear.weight.detach().numpy().T
            out[f"['{net}']['{name}']['bias']"] = linear.bias.detach().numpy()
    return out


def _run_both(cfg, seed=0, update_index=3):
    ro, order = _rollout(np.random.default_rng(seed)), _minibatch_order(cfg, seed)
    before, after, metrics = plastix_update(cfg, ro, order, update_index, key=seed)
    torch.manual_seed(0)
    reference = _torch_from_flax(before)
    args = dataclasses.replace(cfg)  # CleanRL's names are plastix's names
    losses = cleanrl_update(reference, args, update_index + 1, ro, order)
    return _flat(before), _flat(after), _torch_params(reference), metrics, losses


@pytest.mark.parametrize("seed", [0, 1])
def test_one_update_matches_cleanrl(seed):
    before, after, reference, metrics, losses = _run_both(_cfg(), seed)
    assert set(after) == set(reference)
    for name in after:
        np.testing.assert_allclose(after[name], reference[name], rtol=0, atol=2e-6, err_msg=name)
    # Every parameter group moved by far more than the tolerance, so the comparison is not vacuous.
    assert all(np.abs(after[n] - before[n]).max() > 1e-4 for n in after)
    # plastix logs the mean over the update's minibatches of the pre-step losses (CleanRL logs the last).
    keys = ("loss/policy", "loss/value", "loss/entropy", "loss/approx_kl", "loss/clipfrac")
    np.testing.assert_allclose([float(metrics[k]) for k in keys], losses.mean(axis=0), rtol=1e-4, atol=1e-6)
    assert losses[:, 4].max() > 0  # the surrogate clip was active in some minibatch


def test_parity_tolerance_detects_a_changed_update_rule():
    """Negative controls: CleanRL's rule with Adam's eps 1e-8 (optax's default) instead of 1e-5, or with the
    population std in the advantage normalisation, lands outside the tolerance of the parity test."""
    cfg = _cfg()
    ro, order = _rollout(np.random.default_rng(0)), _minibatch_order(cfg, 0)
    before, after, _ = plastix_update(cfg, ro, order, 3)
    for changed in (dict(adam_eps=1e-8), dict(unbiased_std=False)):
        reference = _torch_from_flax(before)
        cleanrl_update(reference, cfg, 4, ro, order, **changed)
        ours, theirs = _flat(after), _torch_params(reference)
        assert max(np.abs(ours[n] - theirs[n]).max() for n in ours) > 1e-5, changed


def test_learn_default_order_is_unchanged_by_the_seam():
    """``perms=None`` draws each epoch's permutation from the state's key (as before the seam existed):
    passing those same permutations explicitly gives bit-identical parameters."""
    cfg = _cfg()
    agent, state, traj = _plastix_inputs(cfg, _rollout(np.random.default_rng(0)), 3, 0)
    epoch_keys = jax.random.split(state.key, cfg.update_epochs + 1)[1:]
    order = jnp.stack(
        [jax.random.permutation(k, cfg.batch_size).reshape(cfg.num_minibatches, -1) for k in epoch_keys]
    )
    learn = _learn(cfg)[1]
    drawn, given = learn(state, traj)[0], learn(state, traj, order)[0]
    for a, b in zip(jax.tree.leaves(drawn.params), jax.tree.leaves(given.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
