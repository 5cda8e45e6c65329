"""The math of PPO as pure functions of arrays: GAE, the clipped surrogate, the value loss, and
the diagnostics computed from them."""

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


def clipped_surrogate(
    log_ratio: jax.Array, advantages: jax.Array, clip_eps: jax.Array | float
) -> jax.Array:
    """The PPO-clip policy loss (to minimise): -E[min(r A, clip(r, 1-eps, 1+eps) A)]."""
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -jnp.mean(jnp.minimum(unclipped, clipped))


def value_loss(values: jax.Array, targets: jax.Array) -> jax.Array:
    """Half the mean squared error of the value predictions."""
    return 0.5 * jnp.mean((values - targets) ** 2)


def approx_kl(log_ratio: jax.Array) -> jax.Array:
    """The low-variance estimator of KL(old || new): E[(r - 1) - log r] (Schulman's k3)."""
    return jnp.mean(jnp.expm1(log_ratio) - log_ratio)


def clip_fraction(log_ratio: jax.Array, clip_eps: jax.Array | float) -> jax.Array:
    return jnp.mean((jnp.abs(jnp.exp(log_ratio) - 1.0) > clip_eps).astype(jnp.float32))


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var[targets - predictions] / Var[targets]; NaN when the targets do not vary."""
    var_targets = jnp.var(targets)
    return jnp.where(var_targets > 0, 1.0 - jnp.var(targets - predictions) / var_targets, jnp.nan)
