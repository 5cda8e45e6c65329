"""The diagnostics of an update, computed inside the compiled program: per minibatch step from the
log ratios, and per update from the rollout and the steps taken, assembled into what an update
reports. Pure functions of arrays."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from purejaxppo.config import PPOConfig
from purejaxppo.program import losses, optim

Metrics = dict[str, jax.Array]


def minibatch(log_ratio: jax.Array, advantage: jax.Array, clip_eps: jax.Array,
              dual_clip: jax.Array | None) -> Metrics:
    """The ratio diagnostics of one minibatch step (the advantages as the loss used them)."""
    ratio_mean, ratio_max = losses.ratio_stats(log_ratio)
    out = {
        "clip_fraction": losses.clip_fraction(log_ratio, clip_eps),
        "ratio_mean": ratio_mean,
        "ratio_max": ratio_max,
    }
    if dual_clip is not None:
        out["dual_clip_fraction"] = losses.dual_clip_fraction(log_ratio, advantage, clip_eps, dual_clip)
    return out


def combine(parts: Metrics) -> Metrics:
    """One minibatch step's diagnostics from those of its equal-sized micro-batches (stacked on a leading
    axis): the mean of each, ratio_max their maximum."""
    return {name: value.max(0) if name == "ratio_max" else value.mean(0) for name, value in parts.items()}


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def update_metrics(config: PPOConfig, state: Any, traj: Any, advantages: jax.Array, targets: jax.Array,
                   steps: Metrics, opt_state: Any, ent_coef: jax.Array, kl_metrics: Metrics) -> Metrics:
    """What one update reports: its minibatch `steps` (stacked [epochs, minibatches]) averaged over the
    steps taken (ratio_max: their maximum); the episodes that completed in its rollout `traj` (NaN when
    none did); the value fit and advantages before normalisation (time-major); its env steps and the
    learning rate of its last step; and what the switched-on variants add (the scheduled entropy
    coefficient, the steps target_kl let through, the reference KL in the reward, the adaptive KL's
    `kl_metrics`)."""
    steps = dict(steps)
    taken = steps.pop("taken")
    ratio_max = steps.pop("ratio_max")
    out = {name: weighted_mean(value, taken) for name, value in steps.items()}
    count = (traj.finished_length > 0).sum()
    out.update(
        episode_return=jnp.where(count > 0, traj.finished_return.sum() / count, jnp.nan),
        episode_length=jnp.where(count > 0, traj.finished_length.sum() / count, jnp.nan),
        episode_count=count,
        explained_variance=losses.explained_variance(traj.value, targets),
        value_error=jnp.mean(jnp.abs(traj.value - targets)),
        advantage_mean=jnp.mean(advantages),
        advantage_std=jnp.std(advantages),
        ratio_max=jnp.max(jnp.where(taken > 0, ratio_max, 0.0)),
        env_steps=(state.update_step + 1) * config.batch_size,
        lr=optim.lr_schedule(config, state.hparams)(optim.optimizer_steps(opt_state) - 1),
    )
    if config.ent_schedule != "constant":
        out["ent_coef"] = ent_coef
    if config.target_kl:
        out["minibatch_steps"] = taken.sum()
    if traj.ref_kl is not None:
        out["ref_kl"] = jnp.mean(traj.ref_kl)
    return {**out, **kl_metrics}
