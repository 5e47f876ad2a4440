"""W2-init and the mix reset (Juliani & Ash, awjuliani/deep-rl-plasticity), and SAM (Foret et al. 2021):
each against its reference's definition, and all of them composed with ReDo and CBP in one training run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix.mitigations import adam_states
from plastix.mitigations.juliani_ash import mix_reset, w2_init
from plastix.mitigations.registry import CBPOptions, MixResetOptions, ReDoOptions
from plastix.mitigations.sam import sam_gradient
from plastix.mitigations.surgery import BatchInfo


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"a": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))},
            "b": jax.random.normal(k3, (5,))}


def _j_and_a_w2(params, params_0, lam):
    """algos/ppo/trainer.py: lam * norm(cat(sort(p.view(-1))) - cat(sort(p0.view(-1))), 2)."""
    sort = lambda tree: jnp.concatenate([jnp.sort(p.reshape(-1)) for p in jax.tree.leaves(tree)])
    return lam * jnp.linalg.norm(sort(params) - sort(params_0))


def test_w2_init_gradient_is_the_gradient_of_their_loss_term():
    theta_0, theta = _params(jax.random.PRNGKey(0)), _params(jax.random.PRNGKey(1))
    tx = w2_init(0.01)
    state = tx.init(theta_0)
    zeros = jax.tree.map(jnp.zeros_like, theta)
    added, _ = tx.update(zeros, state, theta)
    expected = jax.grad(_j_and_a_w2)(theta, theta_0, 0.01)
    for got, want in zip(jax.tree.leaves(added), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_w2_init_ignores_permutations_of_the_initial_weights_unlike_l2_init():
    theta_0 = _params(jax.random.PRNGKey(0))
    # Each tensor's entries shuffled: the same weight distribution, far from theta_0 entry by entry.
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    leaves, treedef = jax.tree.flatten(theta_0)
    shuffled = jax.tree.unflatten(treedef, [jax.random.permutation(k, p.reshape(-1)).reshape(p.shape)
                                            for k, p in zip(keys, leaves)])
    zeros = jax.tree.map(jnp.zeros_like, theta_0)
    tx = w2_init(0.01)
    added, _ = tx.update(zeros, tx.init(theta_0), shuffled)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(added))
    assert float(_j_and_a_w2(shuffled, theta_0, 0.01)) == 0.0
    assert float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, shuffled, theta_0))) > 0  # L2-init would pull


def test_mix_reset_replaces_each_entry_with_probability_fraction():
    params = {"w": jnp.full((100, 100), 1.0), "b": jnp.full((100,), 1.0)}
    init_fn = lambda k: {"w": jnp.full((100, 100), 2.0) + jax.random.uniform(k, ()), "b": jnp.full((100,), 2.0)}
    tx = optax.adam(1e-3)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    for fraction in (0.0, 0.3, 1.0):
        new, new_opt, _, metrics = jax.jit(mix_reset(init_fn, fraction).apply)(
            params, opt_state, (), BatchInfo(), jax.random.PRNGKey(2))
        replaced = np.asarray(new["w"]) != 1.0
        fresh_value = float(init_fn(jax.random.split(jax.random.PRNGKey(2))[0])["w"][0, 0])
        np.testing.assert_allclose(np.asarray(new["w"])[replaced], fresh_value)  # the fresh init's entries
        share = (replaced.sum() + (np.asarray(new["b"]) != 1.0).sum()) / 10_100
        assert abs(share - fraction) < 0.02  # binomial sd at 0.3: 0.005
        assert float(metrics["mitigation/mix_reset/params_reset"]) == round(share * 10_100)
        mu = adam_states(new_opt)[0].mu["w"]
        np.testing.assert_array_equal(np.asarray(mu)[replaced], 0.0)
        assert np.all(np.asarray(mu)[~replaced] != 0.0)


def test_sam_gradient_on_a_quadratic():
    # L = 0.5 theta^T A theta: g = A theta, SAM: A (theta + rho g / ||g||) (Foret et al., Algorithm 1).
    a = np.array([[3.0, 1.0], [1.0, 2.0]])
    theta = np.array([0.5, -1.0])
    loss = lambda p: 0.5 * p["x"] @ jnp.asarray(a) @ p["x"]
    g = a @ theta
    expected = a @ (theta + 0.1 * g / np.linalg.norm(g))
    got = sam_gradient(loss, {"x": jnp.asarray(theta)}, {"x": jnp.asarray(g)}, rho=0.1)
    np.testing.assert_allclose(got["x"], expected, rtol=1e-6)


def _tiny_run(tmp_path, **changes):
    from plastix.config import TrainConfig
    from plastix.store import read_metrics
    from plastix.training import train

    base = dict(preset="cleanrl-discrete", env_id="GridWorld-v0", total_timesteps=1024, num_envs=4, num_steps=128,
                rounds=2, shift="permute", log_every=2, quiet=True, diagnostics_every=0, curvature_every=0,
                activation="relu", run_dir=str(tmp_path / "run"))
    cfg = dataclasses.replace(TrainConfig(), **{**base, **changes})
    df = read_metrics(train(cfg))
    assert np.isfinite(df[~df.key.str.startswith("round/")].value).all()
    return lambda key: df[df.key == key].value.sum()


@pytest.mark.slow  # one compile of ten mitigations: 1184 s on the 2 shared cores at load 35 (passes)
def test_every_new_method_composes_with_the_others_in_one_training_run(tmp_path):
    """Issue 16's methods together in one `plastix train` run (two rounds, a permute shift), beside ReDo's
    scheduled fraction, a CBP utility type and the new diagnostics."""
    total = _tiny_run(tmp_path, mitigations="w2_init,sam,parseval,trac,mix_reset,nap,groupnorm,dff,redo,cbp",
                      redo=ReDoOptions(every=4, fraction=0.25, score="random"),
                      cbp=CBPOptions(utility="adaptable_contribution", maturity_threshold=2, replacement_rate=0.05),
                      mix_reset=MixResetOptions(fraction=0.2))
    assert total("mitigation/mix_reset/applied") == 1  # once, at the one switch
    assert total("mitigation/mix_reset/params_reset") > 0
    assert total("mitigation/nap/applied") == 2  # once per update (2 updates)
    assert total("mitigation/redo/recycled") > 0 and total("mitigation/cbp/replaced") > 0
