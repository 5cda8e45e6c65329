"""GAE, the PPO loss terms and the distributions, checked with plain arrays against independent
references (a Python loop, hand-computed values and closed forms)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import losses
from purejaxppo.distributions import Categorical, DiagGaussian


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A plain loop over time for each env, written from the GAE definition."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if terminated[t, n]:
                bootstrap = 0.0
            else:
                bootstrap = next_values[t, n]
            delta = rewards[t, n] + gamma * bootstrap - values[t, n]
            if terminated[t, n] or truncated[t, n]:
                running = delta
            else:
                running = delta + gamma * lam * running
            adv[t, n] = running
    return adv, adv + values


def test_gae_matches_loop_with_terminations_truncations_and_both():
    rng = np.random.default_rng(0)
    T, N = 64, 5
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    terminated = rng.random((T, N)) < 0.1
    truncated = rng.random((T, N)) < 0.1
    terminated[10, 0] = truncated[10, 0] = True  # both on one step: termination wins
    truncated[20, 1], terminated[20, 1] = True, False
    terminated[30, 2], truncated[30, 2] = True, False
    assert (terminated & truncated).any() and (truncated & ~terminated).any() and (terminated & ~truncated).any()

    adv, targets = losses.gae(
        *(jnp.asarray(x, jnp.float32) for x in (rewards, values, next_values)),
        jnp.asarray(terminated), jnp.asarray(truncated), 0.99, 0.95,
    )
    ref_adv, ref_targets = gae_reference(rewards, values, next_values, terminated, truncated, 0.99, 0.95)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, ref_targets, rtol=1e-5, atol=1e-5)


def test_gae_bootstraps_on_truncation_but_not_on_termination():
    rewards = jnp.array([[1.0, 1.0, 1.0]])
    values = jnp.array([[0.5, 0.5, 0.5]])
    next_values = jnp.array([[10.0, 10.0, 10.0]])
    terminated = jnp.array([[True, False, True]])
    truncated = jnp.array([[False, True, True]])
    adv, _ = losses.gae(rewards, values, next_values, terminated, truncated, 0.9, 1.0)
    # single-step rollout: adv = r + gamma * (bootstrap) - v
    np.testing.assert_allclose(adv[0], [1.0 - 0.5, 1.0 + 0.9 * 10.0 - 0.5, 1.0 - 0.5], rtol=1e-6)


def test_clipped_surrogate_hand_computed():
    ratio = np.array([0.5, 1.0, 1.5, 0.7, 1.3])
    adv = np.array([1.0, -2.0, 2.0, -1.0, -1.0])
    # min(r A, clip(r, 0.8, 1.2) A) per sample:
    #   0.5*1=0.5 vs 0.8*1=0.8 -> 0.5;  -2 vs -2 -> -2;  3 vs 2.4 -> 2.4;  -0.7 vs -0.8 -> -0.8;  -1.3 vs -1.2 -> -1.3
    expected = -np.mean([0.5, -2.0, 2.4, -0.8, -1.3])
    got = losses.clipped_surrogate(jnp.log(jnp.asarray(ratio, jnp.float32)), jnp.asarray(adv, jnp.float32), 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_value_loss_and_diagnostics_hand_computed():
    v = jnp.array([1.0, 2.0, 3.0])
    r = jnp.array([1.5, 2.0, 1.0])
    np.testing.assert_allclose(losses.value_loss(v, r), 0.5 * (0.25 + 0.0 + 4.0) / 3, rtol=1e-6)
    log_ratio = jnp.log(jnp.array([1.0, 1.1, 1.3, 0.7]))
    np.testing.assert_allclose(losses.clip_fraction(log_ratio, 0.2), 0.5)
    kl = np.mean([(x - 1) - math.log(x) for x in [1.0, 1.1, 1.3, 0.7]])
    np.testing.assert_allclose(losses.approx_kl(log_ratio), kl, rtol=1e-5)
    ev = 1 - np.var(np.array([0.5, 0.0, -2.0])) / np.var(np.array([1.5, 2.0, 1.0]))
    np.testing.assert_allclose(losses.explained_variance(v, r), ev, rtol=1e-5)
    assert np.isnan(losses.explained_variance(v, jnp.ones(3)))


def test_normalize_zero_mean_unit_std():
    x = jnp.array([1.0, 2.0, 3.0, 10.0])
    out = losses.normalize(x)
    np.testing.assert_allclose([out.mean(), out.std()], [0.0, 1.0], atol=1e-5)


def test_categorical_log_prob_entropy_mode_closed_form():
    logits = np.array([[0.2, -1.0, 2.0], [0.0, 0.0, 0.0]])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    dist = Categorical(jnp.asarray(logits, jnp.float32))
    actions = np.array([2, 1])
    np.testing.assert_allclose(dist.log_prob(jnp.asarray(actions)), np.log(probs[[0, 1], actions]), rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), -(probs * np.log(probs)).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(dist.mode(), [2, 0])
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(np.bincount(np.asarray(samples[:, 0]), minlength=3) / 20000, probs[0], atol=0.015)


def test_diag_gaussian_log_prob_entropy_closed_form():
    mean = np.array([[0.3, -1.0], [2.0, 0.5]])
    log_std = np.array([[-0.5, 0.2], [0.0, 1.0]])
    action = np.array([[0.0, 1.0], [2.5, -3.0]])
    std = np.exp(log_std)
    ref_logp = np.sum(-((action - mean) ** 2) / (2 * std**2) - np.log(std * np.sqrt(2 * np.pi)), axis=-1)
    ref_ent = np.sum(0.5 * np.log(2 * np.pi * np.e * std**2), axis=-1)
    dist = DiagGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32))
    np.testing.assert_allclose(dist.log_prob(jnp.asarray(action, jnp.float32)), ref_logp, rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), ref_ent, rtol=1e-5)
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.key(1), 20000))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.06)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.03)


@pytest.mark.parametrize("dist", [Categorical(jnp.zeros((2, 3))), DiagGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 3)))])
def test_distributions_are_pytrees(dist):
    leaves = jax.tree.leaves(dist)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
