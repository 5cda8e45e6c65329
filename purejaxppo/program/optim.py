"""The optimizer and the schedules over a run: learning rate per minibatch step, entropy coefficient
per update. Their shapes come from the config; their values (the peak LR, the end points) are traced."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from purejaxppo.config import PPOConfig


def lr_schedule(config: PPOConfig, hp: Any) -> optax.Schedule:
    """The learning rate as a function of the minibatch-step count (optax counts per `tx.update`)."""
    total = config.num_updates * config.update_epochs * config.num_minibatches
    if config.lr_schedule == "constant":
        return optax.constant_schedule(hp.lr)
    if config.lr_schedule == "linear":
        return optax.linear_schedule(hp.lr, hp.lr_end, total)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(hp.lr, total, alpha=hp.lr_end / hp.lr)
    # warmup_cosine, composed here because optax's own version branches on the (traced) peak value
    warmup = max(1, int(round(config.lr_warmup_fraction * total)))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, hp.lr, warmup),
            optax.cosine_decay_schedule(hp.lr, max(1, total - warmup), alpha=hp.lr_end / hp.lr),
        ],
        [warmup],
    )


def entropy_coef(kind: str, start: jax.Array, end: jax.Array, fraction: jax.Array) -> jax.Array:
    """The entropy coefficient after `fraction` (0..1) of the updates: constant, linear or cosine decay."""
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * fraction
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


def make_optimizer(config: PPOConfig, hp: Any) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adam(lr_schedule(config, hp), eps=config.adam_eps),
    )


def optimizer_steps(opt_state: Any) -> jax.Array:
    """The schedule's step count: minibatch steps taken so far (skipped ones by KL early stopping don't count)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    (schedule,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(s)]
    return schedule.count
