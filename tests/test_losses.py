"""GAE, the PPO loss terms and the distributions, checked with plain arrays against independent
references (a Python loop, hand-computed values and closed forms)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.program import losses
from purejaxppo.program.distributions import Categorical, DiagGaussian


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


def test_clipped_surrogate_dual_clip_hand_computed():
    ratio = np.array([0.5, 1.5, 5.0, 2.0, 0.5, 1.3, 0.7])
    adv = np.array([1.0, 2.0, -1.0, -2.0, -1.0, 1.0, -3.0])
    eps, c = 0.2, 3.0
    # min(r A, clip(r) A), then for A < 0 the floor c A:
    #   A > 0:  0.5 vs 0.8 -> 0.5;  3 vs 2.4 -> 2.4;  1.3 vs 1.2 -> 1.2   (no floor)
    #   r = 5,   A = -1:  min(-5, -1.2) = -5  < c A = -3  -> floor binds:  -3
    #   r = 2,   A = -2:  min(-4, -2.4) = -4  > c A = -6  -> not binding:  -4
    #   r = 0.5, A = -1:  min(-0.5, -0.8) = -0.8 > -3                   -> -0.8
    #   r = 0.7, A = -3:  min(-2.1, -2.4) = -2.4 > -9                   -> -2.4
    expected_plain = -np.mean([0.5, 2.4, -5.0, -4.0, -0.8, 1.2, -2.4])
    expected_dual = -np.mean([0.5, 2.4, -3.0, -4.0, -0.8, 1.2, -2.4])
    log_ratio, a = jnp.log(jnp.asarray(ratio, jnp.float32)), jnp.asarray(adv, jnp.float32)
    np.testing.assert_allclose(losses.clipped_surrogate(log_ratio, a, eps), expected_plain, rtol=1e-6)
    np.testing.assert_allclose(losses.clipped_surrogate(log_ratio, a, eps, None), expected_plain, rtol=1e-6)
    np.testing.assert_allclose(losses.clipped_surrogate(log_ratio, a, eps, c), expected_dual, rtol=1e-6)
    np.testing.assert_allclose(losses.dual_clip_fraction(log_ratio, a, eps, c), 1 / 7, rtol=1e-6)
    # c = 1.5 also floors r = 2, A = -2 (-4 < -3); positive advantages are never floored
    np.testing.assert_allclose(losses.dual_clip_fraction(log_ratio, a, eps, 1.5), 2 / 7, rtol=1e-6)
    expected_tight = -np.mean([0.5, 2.4, -1.5, -3.0, -0.8, 1.2, -2.4])
    np.testing.assert_allclose(losses.clipped_surrogate(log_ratio, a, eps, 1.5), expected_tight, rtol=1e-6)

    # clip_eps and dual_clip as traced scalars
    jitted = jax.jit(losses.clipped_surrogate)
    np.testing.assert_allclose(jitted(log_ratio, a, jnp.float32(eps), jnp.float32(c)), expected_dual, rtol=1e-6)
    frac = jax.jit(losses.dual_clip_fraction)(log_ratio, a, jnp.float32(eps), jnp.float32(c))
    np.testing.assert_allclose(frac, 1 / 7, rtol=1e-6)


def test_dual_clip_gradient_is_zero_where_the_floor_binds():
    log_ratio = jnp.log(jnp.array([5.0, 2.0]))
    adv = jnp.array([-1.0, -2.0])
    grad = jax.grad(lambda lr: losses.clipped_surrogate(lr, adv, 0.2, 3.0))(log_ratio)
    # sample 0 is floored at c A (constant); sample 1 keeps d(-r A / 2)/d log r = -r A / 2 = 2
    np.testing.assert_allclose(grad, [0.0, 2.0], rtol=1e-6)


def test_clipped_value_loss_hand_computed():
    v = np.array([1.0, 3.0, 0.0, 2.0])
    v_old = np.array([0.8, 1.0, 1.0, 2.05])
    r = np.array([1.0, 4.0, -2.0, 0.0])
    eps = 0.5
    # V_clip = V_old + clip(V - V_old, -0.5, 0.5); per sample max((V - R)^2, (V_clip - R)^2):
    #   V - V_old =  0.2 (inside)  -> V_clip = 1.0:   max(0,    0)    = 0
    #   V - V_old =  2.0 -> +0.5   -> V_clip = 1.5:   max(1,    6.25) = 6.25   (clipped term wins)
    #   V - V_old = -1.0 -> -0.5   -> V_clip = 0.5:   max(4,    6.25) = 6.25   (clipped term wins)
    #   V - V_old = -0.05 (inside) -> V_clip = 2.0:   max(4,    4)    = 4
    expected = 0.5 * np.mean([0.0, 6.25, 6.25, 4.0])
    args = [jnp.asarray(x, jnp.float32) for x in (v, v_old, r)]
    np.testing.assert_allclose(losses.clipped_value_loss(*args, eps), expected, rtol=1e-6)
    # where clipping moves V towards R the unclipped error is the larger one and is kept
    v2, v_old2, r2 = jnp.array([3.0]), jnp.array([1.0]), jnp.array([2.0])
    # V_clip = 1.5: max((3 - 2)^2, (1.5 - 2)^2) = 1
    np.testing.assert_allclose(losses.clipped_value_loss(v2, v_old2, r2, 0.5), 0.5, rtol=1e-6)
    # a huge eps never clips: plain value loss
    np.testing.assert_allclose(losses.clipped_value_loss(*args, 1e6), losses.value_loss(args[0], args[2]), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(losses.clipped_value_loss)(*args, jnp.float32(eps)), expected, rtol=1e-6)


def test_approx_kl_k1_and_k3():
    ratios = [0.5, 1.0, 1.25, 2.0]
    log_ratio = jnp.log(jnp.array(ratios))
    k1 = np.mean([-math.log(x) for x in ratios])
    k3 = np.mean([(x - 1) - math.log(x) for x in ratios])
    np.testing.assert_allclose(losses.approx_kl(log_ratio, "k1"), k1, rtol=1e-5)
    np.testing.assert_allclose(losses.approx_kl(log_ratio, "k3"), k3, rtol=1e-5)
    np.testing.assert_allclose(losses.approx_kl(log_ratio), k3, rtol=1e-5)
    # k1 can go negative on a batch, k3 cannot
    assert losses.approx_kl(jnp.log(jnp.array([2.0, 1.5])), "k1") < 0
    assert losses.approx_kl(jnp.log(jnp.array([2.0, 1.5])), "k3") > 0
    with pytest.raises(ValueError, match="k2"):
        losses.approx_kl(log_ratio, "k2")
    jitted = jax.jit(losses.approx_kl, static_argnames="estimator")
    np.testing.assert_allclose(jitted(log_ratio, estimator="k1"), k1, rtol=1e-5)


def test_kl_to_reference_is_zero_for_the_reference_itself():
    log_p = jnp.log(jnp.array([0.1, 0.5, 0.9]))
    for estimator in ("k1", "k3"):
        np.testing.assert_array_equal(losses.kl_to_reference(log_p, log_p, estimator), 0.0)
    # hand-computed: p = 0.5, p_ref = 0.25 -> k1 = log 2, k3 = (0.5 - 1) - log 0.5
    np.testing.assert_allclose(losses.kl_to_reference(jnp.log(0.5), jnp.log(0.25), "k1"), math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(losses.kl_to_reference(jnp.log(0.5), jnp.log(0.25), "k3"), -0.5 + math.log(2.0),
                               rtol=1e-6)


def _kl_estimates_over_samples(dist, ref, n):
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), n))
    log_p, log_ref = dist.log_prob(samples), ref.log_prob(samples)
    return {e: np.asarray(losses.kl_to_reference(log_p, log_ref, e), np.float64) for e in ("k1", "k3")}


def test_kl_to_reference_averages_to_the_closed_form_for_two_gaussians():
    mean, log_std = jnp.array([0.3, -1.0]), jnp.log(jnp.array([0.8, 1.5]))
    ref_mean, ref_log_std = jnp.array([0.0, -0.4]), jnp.log(jnp.array([1.0, 1.2]))
    s, r = np.exp(np.asarray(log_std)), np.exp(np.asarray(ref_log_std))
    closed = np.sum(np.log(r / s) + (s**2 + (np.asarray(mean) - np.asarray(ref_mean)) ** 2) / (2 * r**2) - 0.5)
    estimates = _kl_estimates_over_samples(DiagGaussian(mean, log_std), DiagGaussian(ref_mean, ref_log_std), 400_000)
    assert closed > 0 and (estimates["k3"] >= 0).all() and (estimates["k1"] < 0).any()  # k1's samples go negative
    for estimator, values in estimates.items():
        assert abs(values.mean() - closed) < 5 * values.std() / math.sqrt(values.size), (estimator, values.mean())


def test_kl_to_reference_averages_to_the_closed_form_for_two_categoricals():
    p, ref = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
    closed = float(np.sum(p * np.log(p / ref)))
    batch = lambda probs: Categorical(jnp.broadcast_to(jnp.log(probs), (400_000, 3)))  # noqa: E731
    samples = batch(p).sample(jax.random.key(0))
    log_p, log_ref = batch(p).log_prob(samples), batch(ref).log_prob(samples)
    estimates = {e: np.asarray(losses.kl_to_reference(log_p, log_ref, e), np.float64) for e in ("k1", "k3")}
    for estimator, values in estimates.items():
        assert abs(values.mean() - closed) < 5 * values.std() / math.sqrt(values.size), (estimator, values.mean())


@pytest.mark.parametrize("kl,expected_beta", [
    (0.02, 2.0),    # > 1.5 * 0.01: double
    (0.005, 0.5),   # < 0.01 / 1.5: halve
    (0.01, 1.0),    # inside the band: keep
    (0.014, 1.0),
    (0.007, 1.0),
])
def test_adapt_kl_coef(kl, expected_beta):
    np.testing.assert_allclose(losses.adapt_kl_coef(1.0, kl, 0.01), expected_beta, rtol=1e-6)
    traced = jax.jit(losses.adapt_kl_coef)(jnp.float32(1.0), jnp.float32(kl), jnp.float32(0.01))
    np.testing.assert_allclose(traced, expected_beta, rtol=1e-6)


def test_adapt_kl_coef_vectorised_over_runs():
    beta = jnp.array([0.5, 1.0, 3.0])
    kl = jnp.array([0.1, 0.001, 0.01])
    np.testing.assert_allclose(jax.vmap(losses.adapt_kl_coef, (0, 0, None))(beta, kl, 0.01), [1.0, 0.5, 3.0])


def test_ratio_stats():
    mean, max_ = losses.ratio_stats(jnp.log(jnp.array([0.5, 1.0, 1.5, 3.0])))
    np.testing.assert_allclose([mean, max_], [1.5, 3.0], rtol=1e-6)


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
