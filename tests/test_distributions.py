"""The bounded action distributions (TanhGaussian, Beta), checked against float64 references written
from the change-of-variables formula, math.lgamma closed forms, quadrature and Monte Carlo; and sampling
from given noise against the Gumbel-max and reparameterisation formulas and binomial frequencies."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.program.distributions import Beta, Categorical, DiagGaussian, MultiCategorical, TanhGaussian

LOG_2PI = math.log(2 * math.pi)


def f32(x):
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------------------------------
# TanhGaussian


def tanh_gaussian_log_prob_reference(u, mean, log_std, low, high, log_one_minus_tanh_sq):
    """log N(u; mean, std) - sum log(1 - tanh(u)^2) - sum log((high - low) / 2), in float64."""
    u, mean, log_std = (np.asarray(x, np.float64) for x in (u, mean, log_std))
    std = np.exp(log_std)
    log_normal = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * LOG_2PI
    half_range = np.broadcast_to((np.asarray(high, np.float64) - np.asarray(low, np.float64)) / 2, u.shape)
    return np.sum(log_normal - log_one_minus_tanh_sq(u) - np.log(half_range), axis=-1)


def direct_log_one_minus_tanh_sq(u):
    return np.log(1.0 - np.tanh(u) ** 2)


def sech_log_one_minus_tanh_sq(u):
    # The same quantity as 1/cosh(u)^2: float64 tanh rounds to exactly 1 near |u| = 19, cosh does not.
    return -2.0 * np.log(np.cosh(u))


MEAN = np.array([0.3, -1.0, 2.0])
LOG_STD = np.array([-0.5, 0.4, 0.0])
LOW = np.array([-1.0, -2.0, 0.0])
HIGH = np.array([1.0, 3.0, 0.5])


def tanh_dist(mean=MEAN, log_std=LOG_STD, low=LOW, high=HIGH):
    return TanhGaussian(f32(mean), f32(log_std), f32(low), f32(high))


def test_tanh_gaussian_log_prob_matches_change_of_variables_near_the_bounds():
    u = np.array([
        [0.0, 0.5, -0.5],
        [2.0, -2.0, 1.0],
        [5.0, -5.0, 5.0],   # squashed actions within ~1e-4 of the bounds
        [9.0, -9.0, -9.0],  # within ~1e-7, where float32 tanh saturates
    ])
    got = tanh_dist().log_prob(f32(u))
    ref = tanh_gaussian_log_prob_reference(u, MEAN, LOG_STD, LOW, HIGH, direct_log_one_minus_tanh_sq)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-4)
    # the naive float32 form would be -inf here
    assert np.isinf(jnp.log(1.0 - jnp.tanh(f32(9.0)) ** 2))


@pytest.mark.parametrize("u_value", [15.0, -15.0, 20.0, -20.0])
def test_tanh_gaussian_log_prob_finite_far_past_float32_saturation(u_value):
    u = np.full((1, 3), u_value)
    got = tanh_dist().log_prob(f32(u))
    assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
    ref = tanh_gaussian_log_prob_reference(u, MEAN, LOG_STD, LOW, HIGH, sech_log_one_minus_tanh_sq)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    if abs(u_value) == 15.0:  # float64 tanh is still just below 1 here, so the direct form is usable
        direct = tanh_gaussian_log_prob_reference(u, MEAN, LOG_STD, LOW, HIGH, direct_log_one_minus_tanh_sq)
        np.testing.assert_allclose(got, direct, rtol=1e-4)
    grad = jax.grad(lambda x: tanh_dist().log_prob(x).sum())(f32(u))
    assert np.all(np.isfinite(grad))


def test_tanh_gaussian_scalar_bounds_count_the_rescaling_once_per_dimension():
    u = np.array([[0.2, -1.0, 3.0]])
    dist = TanhGaussian(f32(MEAN), f32(LOG_STD), f32(-2.0), f32(2.0))
    ref = tanh_gaussian_log_prob_reference(u, MEAN, LOG_STD, -2.0, 2.0, direct_log_one_minus_tanh_sq)
    np.testing.assert_allclose(dist.log_prob(f32(u)), ref, rtol=1e-5)
    # per-sample log_std shared across a batch of means
    batched = TanhGaussian(f32(np.stack([MEAN, MEAN])), f32(LOG_STD), f32(LOW), f32(HIGH))
    ref = tanh_gaussian_log_prob_reference(np.stack([u[0], u[0]]), MEAN, LOG_STD, LOW, HIGH,
                                           direct_log_one_minus_tanh_sq)
    np.testing.assert_allclose(batched.log_prob(f32(np.stack([u[0], u[0]]))), ref, rtol=1e-5)


def test_tanh_gaussian_samples_are_raw_and_squash_into_bounds():
    # a wide std so that many samples saturate tanh in float32
    dist = tanh_dist(log_std=np.array([1.5, 1.5, 2.0]))
    u = jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), 20000))
    assert u.shape == (20000, 3)
    np.testing.assert_allclose(u.mean(0), MEAN, atol=0.15)  # raw Gaussian samples, not squashed
    assert np.any(np.abs(u) > 5.0)
    actions = np.asarray(dist.squash(u))
    assert np.all(actions >= LOW) and np.all(actions <= HIGH)
    ref = LOW + (np.tanh(np.asarray(u, np.float64)) + 1) * (HIGH - LOW) / 2
    np.testing.assert_allclose(actions, ref, rtol=1e-5, atol=1e-6)


def test_tanh_gaussian_mode_squashes_to_tanh_of_mean():
    dist = tanh_dist(low=-np.ones(3), high=np.ones(3))
    np.testing.assert_array_equal(dist.mode(), f32(MEAN))
    np.testing.assert_allclose(dist.squash(dist.mode()), np.tanh(MEAN), rtol=1e-6)


def tanh_gaussian_entropy_reference(mean, log_std, low, high):
    """Gaussian entropy + E[log|da/du|], the expectation by 100-point Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    weights = weights / weights.sum()
    u = mean[:, None] + np.exp(log_std)[:, None] * nodes[None, :]
    expected_log_det = (sech_log_one_minus_tanh_sq(u) * weights).sum(-1) + np.log((high - low) / 2)
    return np.sum(log_std + 0.5 * (1 + LOG_2PI) + expected_log_det)


def test_tanh_gaussian_entropy_estimate_matches_monte_carlo():
    dist = tanh_dist()
    ref = tanh_gaussian_entropy_reference(MEAN, LOG_STD, LOW, HIGH)
    n = 20000
    keys = jax.random.split(jax.random.key(1), n)

    # the one-sample estimate is unbiased: its average over keys converges to the true entropy
    estimates = np.asarray(jax.vmap(dist.entropy)(keys), np.float64)
    assert estimates.shape == (n,) and np.all(np.isfinite(estimates))
    assert abs(estimates.mean() - ref) < 4 * estimates.std() / math.sqrt(n)

    # ... and so is -log_prob averaged over samples, computed independently of `entropy`
    u = jax.vmap(dist.sample)(jax.random.split(jax.random.key(2), n))
    neg_logp = -np.asarray(dist.log_prob(u), np.float64)
    assert abs(neg_logp.mean() - ref) < 4 * neg_logp.std() / math.sqrt(n)
    assert abs(neg_logp.mean() - estimates.mean()) < 4 * math.hypot(neg_logp.std(), estimates.std()) / math.sqrt(n)

    # without a key: the same expression evaluated at u = mean
    at_mean = np.sum(LOG_STD + 0.5 * (1 + LOG_2PI) + direct_log_one_minus_tanh_sq(MEAN) + np.log((HIGH - LOW) / 2))
    np.testing.assert_allclose(dist.entropy(), at_mean, rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(None), at_mean, rtol=1e-5)


def test_tanh_gaussian_entropy_is_differentiable_through_the_sample():
    key = jax.random.key(3)

    def ent(mean):
        return TanhGaussian(mean, f32(LOG_STD), f32(LOW), f32(HIGH)).entropy(key)

    # reparameterised: u = mean + std * eps moves with the mean, and d/du log(1 - tanh(u)^2) = -2 tanh(u)
    u = np.asarray(tanh_dist().sample(key), np.float64)
    np.testing.assert_allclose(jax.grad(ent)(f32(MEAN)), -2 * np.tanh(u), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Beta


def beta_log_prob_reference(action, alpha, beta, low, high):
    """log[x^(a-1) (1-x)^(b-1) / B(a, b)] - log(high - low) at x = (action - low) / (high - low)."""
    total = 0.0
    for a_i, al, be, lo, hi in zip(action, alpha, beta, low, high):
        x = (a_i - lo) / (hi - lo)
        log_b = math.lgamma(al) + math.lgamma(be) - math.lgamma(al + be)
        total += (al - 1) * math.log(x) + (be - 1) * math.log(1 - x) - log_b - math.log(hi - lo)
    return total


ALPHA = np.array([1.5, 3.0, 0.7])
BETA = np.array([2.5, 1.0, 4.0])
B_LOW = np.array([-2.0, 0.0, -1.0])
B_HIGH = np.array([2.0, 1.0, 3.0])


def beta_dist(alpha=ALPHA, beta=BETA, low=B_LOW, high=B_HIGH):
    return Beta(f32(alpha), f32(beta), f32(low), f32(high))


def test_beta_log_prob_matches_lgamma_closed_form():
    actions = np.array([
        [0.0, 0.5, 1.0],
        [-1.9, 0.05, -0.9],
        [1.7, 0.97, 2.5],
    ])
    got = beta_dist().log_prob(f32(actions))
    ref = [beta_log_prob_reference(a, ALPHA, BETA, B_LOW, B_HIGH) for a in actions]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("low,high", [(-2.0, 2.0), (0.0, 1.0)])
def test_beta_scalar_bounds(low, high):
    alpha, beta = np.array([2.0, 1.3]), np.array([3.0, 5.0])
    action = np.array([low + 0.3 * (high - low), low + 0.8 * (high - low)])
    dist = Beta(f32(alpha), f32(beta), f32(low), f32(high))
    ref = beta_log_prob_reference(action, alpha, beta, [low] * 2, [high] * 2)
    np.testing.assert_allclose(dist.log_prob(f32(action)), ref, rtol=1e-5)


def test_beta_log_prob_finite_on_the_bounds():
    dist = Beta.from_unconstrained(f32([0.5, -1.0]), f32([2.0, 0.0]), f32(-2.0), f32(2.0))
    for a in ([-2.0, 2.0], [2.0, -2.0]):
        assert np.isfinite(dist.log_prob(f32(a)))


def beta_entropy_quadrature(alpha, beta, low, high):
    """-integral p log p over [0, 1] by 400-point Gauss-Legendre, plus log(high - low), in float64."""
    nodes, weights = np.polynomial.legendre.leggauss(400)
    x, weights = (nodes + 1) / 2, weights / 2
    total = 0.0
    for al, be, lo, hi in zip(alpha, beta, low, high):
        log_b = math.lgamma(al) + math.lgamma(be) - math.lgamma(al + be)
        log_p = (al - 1) * np.log(x) + (be - 1) * np.log1p(-x) - log_b
        total += -np.sum(weights * np.exp(log_p) * log_p) + math.log(hi - lo)
    return total


def test_beta_entropy_matches_quadrature_and_monte_carlo():
    # alpha, beta >= 1, as from_unconstrained gives, keep the integrand bounded for the quadrature
    alpha, beta = np.array([1.5, 3.0, 1.0]), np.array([2.5, 1.2, 6.0])
    dist = beta_dist(alpha, beta)
    ref = beta_entropy_quadrature(alpha, beta, B_LOW, B_HIGH)
    np.testing.assert_allclose(dist.entropy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dist.entropy(jax.random.key(0)), dist.entropy())

    n = 20000
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.key(4), n))
    neg_logp = -np.asarray(dist.log_prob(samples), np.float64)
    assert abs(neg_logp.mean() - ref) < 4 * neg_logp.std() / math.sqrt(n)


def test_beta_samples_in_bounds_with_the_right_mean_and_mode():
    dist = beta_dist()
    samples = np.asarray(jax.vmap(dist.sample)(jax.random.split(jax.random.key(5), 20000)))
    assert samples.shape == (20000, 3)
    assert np.all(samples >= B_LOW) and np.all(samples <= B_HIGH)
    mean = B_LOW + ALPHA / (ALPHA + BETA) * (B_HIGH - B_LOW)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(dist.mode(), mean, rtol=1e-6)


def test_beta_from_unconstrained_gives_parameters_above_one():
    x_a, x_b = np.array([-30.0, 0.0, 4.0]), np.array([2.0, -5.0, 0.0])
    dist = Beta.from_unconstrained(f32(x_a), f32(x_b), f32(B_LOW), f32(B_HIGH))
    np.testing.assert_allclose(dist.alpha, np.log1p(np.exp(x_a)) + 1, rtol=1e-6)
    np.testing.assert_allclose(dist.beta, np.log1p(np.exp(x_b)) + 1, rtol=1e-6)
    assert np.all(np.asarray(dist.alpha) >= 1) and np.all(np.asarray(dist.beta) > 1)


# ----------------------------------------------------------------------------------------------------
# All distributions


def test_closed_form_entropies_ignore_the_key():
    key = jax.random.key(6)
    cat = Categorical(f32([[0.2, -1.0, 2.0]]))
    gauss = DiagGaussian(f32(MEAN), f32(LOG_STD))
    for dist in (cat, gauss):
        np.testing.assert_array_equal(dist.entropy(key), dist.entropy())
        np.testing.assert_array_equal(dist.entropy(None), dist.entropy())


@pytest.mark.parametrize("dist,action", [
    (tanh_dist(), f32([[0.1, 0.2, 0.3]])),
    (beta_dist(), f32([[0.5, 0.5, 0.5]])),
])
def test_bounded_distributions_are_pytrees_that_jit(dist, action):
    leaves = jax.tree.leaves(dist)
    assert len(leaves) == 4 and all(isinstance(x, jax.Array) for x in leaves)
    np.testing.assert_allclose(jax.jit(lambda d, a: d.log_prob(a))(dist, action), dist.log_prob(action), rtol=1e-5)
    key = jax.random.key(7)
    np.testing.assert_allclose(jax.jit(lambda d, k: d.entropy(k))(dist, key), dist.entropy(key), rtol=1e-5, atol=1e-6)


def test_each_distribution_owns_its_env_action_and_deterministic_action():
    low, high = jnp.array([-2.0, 0.0]), jnp.array([2.0, 1.0])
    gaussian = DiagGaussian(jnp.array([3.0, 0.5]), jnp.log(jnp.array([1.0, 2.0])), low, high)
    np.testing.assert_allclose(gaussian.env_action(jnp.array([-5.0, 0.25])), [-2.0, 0.25])
    np.testing.assert_allclose(gaussian.deterministic_action(), [2.0, 0.5])
    np.testing.assert_allclose(gaussian.std(), [1.0, 2.0], rtol=1e-6)
    unbounded = DiagGaussian(jnp.array([3.0]), jnp.zeros(1))
    np.testing.assert_allclose(unbounded.env_action(jnp.array([9.0])), [9.0])

    tanh = TanhGaussian(jnp.array([0.3, -1.0]), jnp.zeros(2), low, high)
    u = jnp.array([0.7, -0.2])
    np.testing.assert_allclose(tanh.env_action(u), low + (np.tanh(u) + 1.0) * (high - low) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(tanh.deterministic_action(), tanh.env_action(tanh.mean), rtol=1e-6)

    beta = Beta(jnp.array([2.0, 3.0]), jnp.array([2.0, 1.5]), low, high)
    np.testing.assert_allclose(beta.deterministic_action(), low + np.array([0.5, 3.0 / 4.5]) * (high - low), rtol=1e-6)
    var01 = np.array([2.0 * 2.0 / (16.0 * 5.0), 3.0 * 1.5 / (4.5**2 * 5.5)])
    np.testing.assert_allclose(beta.std(), np.sqrt(var01) * np.array([4.0, 1.0]), rtol=1e-6)

    categorical = Categorical(jnp.log(jnp.array([0.2, 0.5, 0.3])))
    assert int(categorical.deterministic_action()) == 1 and int(categorical.env_action(jnp.int32(2))) == 2


# ----------------------------------------------------------------------------------------------------
# Sampling from given noise (what an exported stochastic policy does)

N_DRAWS = 200_000


def uniform_noise(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, minval=np.finfo(np.float32).tiny, maxval=1.0)


def test_categorical_from_uniform_noise_has_the_softmax_frequencies_and_never_a_masked_action():
    probs = np.array([0.1, 0.0, 0.6, 0.3])  # action 1 masked
    mask = probs > 0
    logits = np.log(np.where(mask, probs, 1.0)) + np.array([0.0, 5.0, 0.0, 0.0])  # the masked logit is the largest
    dist = Categorical(jnp.broadcast_to(f32(logits), (N_DRAWS, 4)), jnp.broadcast_to(jnp.asarray(mask), (N_DRAWS, 4)))
    actions = np.asarray(dist.sample_from(uniform_noise(jax.random.key(11), (N_DRAWS, 4))))
    freq = np.bincount(actions, minlength=4) / N_DRAWS
    assert freq[1] == 0.0
    # five standard errors of a binomial frequency
    np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / N_DRAWS) + 1e-12)


def test_multicategorical_from_uniform_noise_samples_each_component_from_its_own_part():
    nvec = (2, 3)
    logits = f32([[0.0, 1.0, 2.0, -1.0, 0.5]])
    noise = uniform_noise(jax.random.key(12), (1, 5))
    action = MultiCategorical(logits, nvec).sample_from(noise)
    first = Categorical(logits[:, :2]).sample_from(noise[:, :2])
    second = Categorical(logits[:, 2:]).sample_from(noise[:, 2:])
    np.testing.assert_array_equal(action, jnp.stack([first, second], axis=-1))
    # and the Gumbel-max argmax, written out
    gumbel = np.asarray(logits) - np.log(-np.log(np.asarray(noise, np.float64)))
    np.testing.assert_array_equal(action[0], [np.argmax(gumbel[0, :2]), np.argmax(gumbel[0, 2:])])


def test_gaussians_from_normal_noise_are_the_mean_plus_std_times_noise():
    key = jax.random.key(13)
    gauss = DiagGaussian(f32(MEAN), f32(LOG_STD))
    # sample(key) is sample_from the normal noise that key draws
    np.testing.assert_array_equal(gauss.sample(key), gauss.sample_from(jax.random.normal(key, (3,), jnp.float32)))
    noise = np.array([0.5, -1.5, 2.0])
    np.testing.assert_allclose(gauss.sample_from(f32(noise)), MEAN + np.exp(LOG_STD) * noise, rtol=1e-6)
    # a TanhGaussian's sample is the raw pre-tanh one; its env action squashes it into the bounds
    tanh = tanh_dist()
    raw = tanh.sample_from(f32(noise))
    np.testing.assert_allclose(raw, MEAN + np.exp(LOG_STD) * noise, rtol=1e-6)
    np.testing.assert_allclose(tanh.env_action(raw), LOW + (np.tanh(raw) + 1) * (HIGH - LOW) / 2, rtol=1e-6)
