"""The math of PPO as pure functions of arrays: GAE, the (dual-)clipped surrogate, the (clipped) value
loss, the KL-penalty coefficient rule, the KL to a reference policy, and the diagnostics computed from
them. Hyperparameters may be traced scalars; only `dual_clip=None` and the KL estimator names are static."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: jax.Array | float,
    gae_lambda: jax.Array | float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a time-major rollout `[T, ...]`.

    `next_values[t]` is V of the observation that step t reached (before any auto-reset). It is the
    bootstrap on a time-limit truncation and 0 on a termination; termination wins when both flags are
    set. The trace of advantages is cut at every episode end. Returns (advantages, value targets).
    """
    not_terminated = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(values.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values

    def backward(carry: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, keep = xs
        advantage = delta + gamma * gae_lambda * keep * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    return (x - x.mean()) / (x.std() + eps)


def _surrogate_objectives(
    log_ratio: jax.Array, advantages: jax.Array, clip_eps: jax.Array | float
) -> jax.Array:
    """Per-sample min(r A, clip(r, 1-eps, 1+eps) A)."""
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return jnp.minimum(unclipped, clipped)


def clipped_surrogate(
    log_ratio: jax.Array,
    advantages: jax.Array,
    clip_eps: jax.Array | float,
    dual_clip: jax.Array | float | None = None,
) -> jax.Array:
    """The PPO-clip policy loss (to minimise): -E[min(r A, clip(r, 1-eps, 1+eps) A)].

    With `dual_clip` = c > 1 the objective of a negative-advantage sample is also bounded below by c A,
    so a huge ratio on a bad action cannot dominate the batch (Ye et al. 2020, "Mastering Complex
    Control in MOBA Games with Deep Reinforcement Learning"). None turns it off; c may be traced.
    """
    objective = _surrogate_objectives(log_ratio, advantages, clip_eps)
    if dual_clip is not None:
        objective = jnp.where(advantages < 0, jnp.maximum(objective, dual_clip * advantages), objective)
    return -jnp.mean(objective)


def dual_clip_fraction(
    log_ratio: jax.Array, advantages: jax.Array, clip_eps: jax.Array | float, dual_clip: jax.Array | float
) -> jax.Array:
    """Fraction of samples whose objective the dual-clip bound c A replaces (A < 0 and c A above it)."""
    objective = _surrogate_objectives(log_ratio, advantages, clip_eps)
    binds = (advantages < 0) & (dual_clip * advantages > objective)
    return jnp.mean(binds.astype(jnp.float32))


def value_loss(values: jax.Array, targets: jax.Array) -> jax.Array:
    """Half the mean squared error of the value predictions."""
    return 0.5 * jnp.mean((values - targets) ** 2)


def clipped_value_loss(
    values: jax.Array, old_values: jax.Array, targets: jax.Array, value_clip_eps: jax.Array | float
) -> jax.Array:
    """0.5 E[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]: the pessimistic of the new
    prediction and one kept within eps of the rollout's, as in the PPO reference implementation."""
    clipped = old_values + jnp.clip(values - old_values, -value_clip_eps, value_clip_eps)
    return 0.5 * jnp.mean(jnp.maximum((values - targets) ** 2, (clipped - targets) ** 2))


def approx_kl(log_ratio: jax.Array, estimator: str = "k3") -> jax.Array:
    """An estimate of KL(old || new) from samples of the old policy; `log_ratio` = log new - log old.

    "k3" (default): E[(r - 1) - log r], unbiased, low variance and never negative per sample.
    "k1": E[-log r], unbiased but high variance and can go negative. `estimator` is static.
    """
    if estimator == "k3":
        return jnp.mean(jnp.expm1(log_ratio) - log_ratio)
    if estimator == "k1":
        return jnp.mean(-log_ratio)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def kl_to_reference(log_prob: jax.Array, ref_log_prob: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-sample estimates of KL(policy || reference) from actions the policy sampled: their mean is
    unbiased. "k1": log p - log p_ref. "k3": (q - 1) - log q with q = p_ref / p, never negative and of
    lower variance. `estimator` is static."""
    log_q = ref_log_prob - log_prob
    if estimator == "k3":
        return jnp.expm1(log_q) - log_q
    if estimator == "k1":
        return -log_q
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def adapt_kl_coef(
    beta: jax.Array | float, kl: jax.Array | float, kl_target: jax.Array | float
) -> jax.Array:
    """The PPO-penalty update of the KL coefficient (Schulman et al. 2017, sec. 4): double it when
    kl > 1.5 target, halve it when kl < target / 1.5, else keep it. Works on traced values."""
    return jnp.where(kl > 1.5 * kl_target, beta * 2.0, jnp.where(kl < kl_target / 1.5, beta / 2.0, beta))


def ratio_stats(log_ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, max) of the probability ratio r."""
    ratio = jnp.exp(log_ratio)
    return jnp.mean(ratio), jnp.max(ratio)


def clip_fraction(log_ratio: jax.Array, clip_eps: jax.Array | float) -> jax.Array:
    return jnp.mean((jnp.abs(jnp.exp(log_ratio) - 1.0) > clip_eps).astype(jnp.float32))


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var[targets - predictions] / Var[targets]; NaN when the targets do not vary."""
    var_targets = jnp.var(targets)
    return jnp.where(var_targets > 0, 1.0 - jnp.var(targets - predictions) / var_targets, jnp.nan)


KL_STOP_FACTOR = 1.5  # as in OpenAI Spinning Up and Stable-Baselines3


def kl_within_target(kl: jax.Array, target_kl: jax.Array | float) -> jax.Array:
    """The KL early-stopping test: a minibatch step goes ahead while kl <= 1.5 x target_kl."""
    return kl <= KL_STOP_FACTOR * target_kl
