"""GAE, the Gaussian policy's log-prob/entropy and the PPO loss against values computed by hand."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

from plastix.algos.ppo import (
    Minibatch,
    gae,
    gaussian_entropy,
    gaussian_log_prob,
    learning_rate,
    normalize_advantages,
    ppo_loss,
)
from plastix.config import TrainConfig


def test_gae_matches_hand_computation():
    # T = 3, one env; the episode ends at t = 1, so t = 1 does not bootstrap from t = 2.
    gamma, lam = 0.9, 0.5
    rewards = jnp.array([[1.0], [2.0], [3.0]])
    values = jnp.array([[0.5], [1.0], [1.5]])
    dones = jnp.array([[0.0], [1.0], [0.0]])
    next_value = jnp.array([2.0])
    adv, ret = gae(rewards, values, dones, next_value, gamma, lam)
    d2 = 3.0 + 0.9 * 2.0 - 1.5  # 3.3
    d1 = 2.0 - 1.0  # done: no bootstrap
    d0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
    a2 = d2
    a1 = d1
    a0 = d0 + 0.9 * 0.5 * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [a0 + 0.5, a1 + 1.0, a2 + 1.5], rtol=1e-6)


def test_gaussian_log_prob_and_entropy():
    a, mu, log_std = jnp.array([0.3, -1.0]), jnp.array([0.0, 0.5]), jnp.array([0.0, math.log(2.0)])
    expected = sum(
        -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        for x, m, s in [(0.3, 0.0, 1.0), (-1.0, 0.5, 2.0)]
    )
    assert float(gaussian_log_prob(a, mu, log_std)) == pytest.approx(expected, rel=1e-6)
    expected_h = (0.5 + 0.5 * math.log(2 * math.pi)) * 2 + math.log(2.0)
    assert float(gaussian_entropy(log_std)) == pytest.approx(expected_h, rel=1e-6)


def test_advantage_normalisation_uses_unbiased_std_over_valid_entries():
    adv = jnp.array([1.0, 2.0, 3.0, 100.0])
    w = jnp.array([1.0, 1.0, 1.0, 0.0])
    out = normalize_advantages(adv, w)
    std = np.std([1.0, 2.0, 3.0], ddof=1)
    np.testing.assert_allclose(out[:3], (np.array([1.0, 2.0, 3.0]) - 2.0) / (std + 1e-8), rtol=1e-6)


def test_ppo_loss_matches_hand_computation():
    cfg = dataclasses.replace(TrainConfig(), norm_adv=False, clip_coef=0.2, vf_coef=0.5, ent_coef=0.01)
    # A fake network: mean 0, log_std 0, value given per sample through the params.
    params = {"value": jnp.array([1.0, 3.0])}
    apply_fn = lambda p, obs: ((jnp.zeros((2, 1)), jnp.zeros((1,))), p["value"])
    action = jnp.array([[0.0], [1.0]])
    logp_new = np.array([-0.5 * math.log(2 * math.pi), -0.5 - 0.5 * math.log(2 * math.pi)])
    old_logp = logp_new - np.array([0.5, -0.1])  # ratios e^0.5 (clipped at 1.2) and e^-0.1
    mb = Minibatch(
        obs=jnp.zeros((2, 1)),
        action=action,
        logprob=jnp.asarray(old_logp, jnp.float32),
        value=jnp.array([0.0, 3.5]),
        advantage=jnp.array([2.0, -1.0]),
        ret=jnp.array([2.0, 2.0]),
        valid=jnp.array([True, True]),
    )
    loss, aux = ppo_loss(params, apply_fn, mb, cfg)
    r = np.exp([0.5, -0.1])
    pg = np.mean([max(-2.0 * r[0], -2.0 * 1.2), max(1.0 * r[1], 1.0 * 0.8)])
    # value 1 vs old 0: clipped to 0.2; value 3 vs old 3.5: clipped to 3.3
    v = 0.5 * np.mean([max((1 - 2) ** 2, (0.2 - 2) ** 2), max((3 - 2) ** 2, (3.3 - 2) ** 2)])
    ent = 0.5 + 0.5 * math.log(2 * math.pi)
    assert float(aux["loss/policy"]) == pytest.approx(pg, rel=1e-5)
    assert float(aux["loss/value"]) == pytest.approx(v, rel=1e-5)
    assert float(loss) == pytest.approx(pg - 0.01 * ent + 0.5 * v, rel=1e-5)
    assert float(aux["loss/clipfrac"]) == pytest.approx(0.5)


def test_invalid_samples_do_not_count():
    cfg = dataclasses.replace(TrainConfig(), norm_adv=False)
    apply_fn = lambda p, obs: ((jnp.zeros((2, 1)), jnp.zeros((1,))), p)
    base = dict(obs=jnp.zeros((2, 1)), action=jnp.zeros((2, 1)), logprob=jnp.full((2,), -0.9189385))
    mb = Minibatch(**base, value=jnp.zeros(2), advantage=jnp.array([1.0, 50.0]), ret=jnp.array([1.0, 99.0]),
                   valid=jnp.array([True, False]))
    _, aux = ppo_loss(jnp.zeros(2), apply_fn, mb, cfg)
    assert float(aux["loss/policy"]) == pytest.approx(-1.0, rel=1e-5)
    assert float(aux["loss/value"]) == pytest.approx(0.5 * max(1.0, (0.2 - 1.0) ** 2), rel=1e-5)


def test_learning_rate_anneals_like_cleanrl():
    cfg = dataclasses.replace(TrainConfig(), total_timesteps=4 * 2048, learning_rate=1e-4)
    lrs = [float(learning_rate(cfg, jnp.asarray(u))) for u in range(4)]
    np.testing.assert_allclose(lrs, [1e-4, 0.75e-4, 0.5e-4, 0.25e-4], rtol=1e-6)
