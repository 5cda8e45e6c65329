"""Deterministic evaluation episodes: one env per episode, stepped until every one has ended. Pure and
jittable; it runs inside the compiled training program (`eval_every`) as well as on its own (`eval`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from purejaxppo.envs import Env, action_masks
from purejaxppo.program.normalization import RunningStats
from purejaxppo.program.policy import Policy
from purejaxppo.program.ppo import PPO, TrainState

MAX_EVAL_STEPS = 100_000  # a bound for envs without a time limit; every shipped env ends far sooner


def evaluate(
    policy: Policy,
    env: Env,
    params: Any,
    obs_stats: RunningStats,
    key: jax.Array,
    num_episodes: int,
    max_steps: int = MAX_EVAL_STEPS,
) -> tuple[jax.Array, jax.Array]:
    """Run `num_episodes` deterministic episodes on fresh envs, one per env, until every one has ended.

    Returns each episode's undiscounted return and length. Pure and jittable: it runs inside the
    compiled training program as well as on its own.
    """
    init, step = _episodes(policy, env, params, obs_stats, key, num_episodes)

    def running(carry: tuple) -> jax.Array:
        t, *_, done, _, _ = carry
        return (t < max_steps) & ~done.all()

    *_, returns, lengths = jax.lax.while_loop(running, lambda c: step(c)[0], init)
    return returns, lengths


def record_episodes(
    policy: Policy,
    env: Env,
    params: Any,
    obs_stats: RunningStats,
    key: jax.Array,
    num_episodes: int,
    max_steps: int,
    stochastic: bool = False,
) -> tuple[Any, jax.Array, jax.Array]:
    """`evaluate`'s episodes, with the env state each action was taken in: (states, stacked `[max_steps,
    num_episodes]`, returns, lengths), for `max_steps` steps. With the same key, the returns and lengths
    are `evaluate`'s for every episode that ends within `max_steps`. `stochastic` samples the actions
    (with keys of their own, so the env's keys stay `evaluate`'s)."""
    init, step = _episodes(policy, env, params, obs_stats, key, num_episodes, stochastic)
    (*_, returns, lengths), states = jax.lax.scan(lambda c, _: step(c), init, None, length=max_steps)
    return states, returns, lengths


def _episodes(policy: Policy, env: Env, params: Any, obs_stats: RunningStats, key: jax.Array, num_episodes: int,
              stochastic: bool = False) -> tuple[tuple, Any]:
    """The start and the step `carry -> (carry, env state acted in)` of `num_episodes` episodes, one env
    each, stepped together; an ended episode's env keeps stepping, but adds nothing to its return."""
    k_reset, k_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))
    zeros = jnp.zeros(num_episodes, jnp.float32)

    def step(carry: tuple) -> tuple[tuple, Any]:
        t, key, env_state, obs, policy_carry, done, returns, lengths = carry
        key, k_env = jax.random.split(key)
        mask = action_masks(env, env_state)
        k_act = jax.random.fold_in(k_env, 0xAC7) if stochastic else None
        action, policy_carry = policy.act(params, obs_stats, obs, key=k_act, carry=policy_carry, mask=mask)
        out = jax.vmap(env.step)(jax.random.split(k_env, num_episodes), env_state, action)
        live = ~done
        returns = returns + jnp.where(live, out.reward, 0.0)
        lengths = lengths + live.astype(jnp.int32)
        done = done | out.terminated | out.truncated
        return (t + 1, key, out.state, out.obs, policy_carry, done, returns, lengths), env_state

    init = (jnp.int32(0), k_steps, env_state, obs, policy.initial_carry((num_episodes,)),
            jnp.zeros(num_episodes, bool), zeros, zeros.astype(jnp.int32))
    return init, step


def evaluation_return(ppo: PPO, state: TrainState) -> jax.Array:
    """Mean return of `eval_episodes` deterministic episodes on separate envs, inside the training program.
    Its key is derived without advancing the training key, so evaluating does not change training."""
    returns, _ = evaluate(ppo.policy, ppo.env, state.params, state.obs_stats, jax.random.fold_in(state.key, 0x5EED),
                          ppo.config.eval_episodes)
    return returns.mean()
