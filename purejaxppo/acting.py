"""Acting with a policy outside the training loop: deterministic evaluation episodes, and restoring
a trained policy from a run dir as a plain jitted function for the user's own code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from purejaxppo import checkpoint
from purejaxppo.config import PPOConfig
from purejaxppo.envs import Env
from purejaxppo.networks import Policy
from purejaxppo.normalization import RunningStats

MAX_EVAL_STEPS = 100_000  # a bound for envs without a time limit; every shipped env ends far sooner


def deterministic_action(policy: Policy, params: Any, obs: jax.Array) -> jax.Array:
    """The env action of the distribution's mode: argmax, the mean (clipped), or the squashed mean."""
    dist, _ = policy(params, obs)
    return policy.env_action(dist.mode())


def evaluate(
    policy: Policy,
    env: Env,
    params: Any,
    normalize: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    num_episodes: int,
    max_steps: int = MAX_EVAL_STEPS,
) -> tuple[jax.Array, jax.Array]:
    """Run `num_episodes` deterministic episodes on fresh envs, one per env, until every one has ended.

    Returns each episode's undiscounted return and length. Pure and jittable: it runs inside the
    compiled training program as well as on its own.
    """
    k_reset, k_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))
    zeros = jnp.zeros(num_episodes, jnp.float32)

    def running(carry: tuple) -> jax.Array:
        t, *_, done, _, _ = carry
        return (t < max_steps) & ~done.all()

    def step(carry: tuple) -> tuple:
        t, key, env_state, obs, done, returns, lengths = carry
        key, k_env = jax.random.split(key)
        action = deterministic_action(policy, params, normalize(obs))
        out = jax.vmap(env.step)(jax.random.split(k_env, num_episodes), env_state, action)
        live = ~done
        returns = returns + jnp.where(live, out.reward, 0.0)
        lengths = lengths + live.astype(jnp.int32)
        done = done | out.terminated | out.truncated
        return t + 1, key, out.state, out.obs, done, returns, lengths

    init = (jnp.int32(0), k_steps, env_state, obs, jnp.zeros(num_episodes, bool), zeros, zeros.astype(jnp.int32))
    *_, returns, lengths = jax.lax.while_loop(running, step, init)
    return returns, lengths


def restore_policy(
    run_dir: str | Path, step: int | None = None, run: int = 0
) -> tuple[PPOConfig, Any, RunningStats, int]:
    """(config, params, observation statistics, step) of one run of a run dir's checkpoint.

    For a sweep's checkpoint `run` picks the run (its index in the sweep's runs.csv).
    """
    from purejaxppo.train import HParams, make_trainer

    step, meta = checkpoint.read_meta(run_dir, step)
    config = checkpoint.config_of(meta)
    trainer = make_trainer(config)
    if meta.get("kind") == "sweep":
        stacked = int(meta["stacked_runs"])
        if not 0 <= run < int(meta["num_runs"]):
            raise checkpoint.CheckpointError(f"run {run}: the sweep in {run_dir} has runs 0..{int(meta['num_runs']) - 1}")
        hp = jax.tree.map(lambda x: jnp.broadcast_to(x, (stacked,)), HParams.from_config(config))
        keys = jax.random.split(jax.random.key(0), stacked)
        abstract = jax.eval_shape(jax.vmap(trainer.init), keys, hp)
        _, state, _ = checkpoint.restore(run_dir, abstract, step)
        state = jax.tree.map(lambda x: x[run], state)
    else:
        if run != 0:
            raise checkpoint.CheckpointError(f"run {run}: {run_dir} holds a single run; use run 0")
        _, state, _ = checkpoint.restore(run_dir, jax.eval_shape(trainer.init, jax.random.key(0)), step)
    return config, state.params, state.obs_stats, step


def load_policy(run_dir: str | Path, step: int | None = None, run: int = 0) -> Callable[..., jax.Array]:
    """A jitted `act(obs, key=None) -> env action` of a trained policy, latest checkpoint by default.

    It applies the run's saved observation normalisation exactly as training did. Without a key the
    action is deterministic (the distribution's mode); with a key it is sampled. `obs` may be one
    observation or a batch of them.
    """
    from purejaxppo.train import make_trainer

    config, params, obs_stats, _ = restore_policy(run_dir, step, run)
    trainer = make_trainer(config)
    policy = trainer.policy

    @jax.jit
    def act(obs: jax.Array, key: jax.Array | None = None) -> jax.Array:
        obs = trainer.normalize_obs(obs_stats, jnp.asarray(obs, jnp.float32))
        if key is None:
            return deterministic_action(policy, params, obs)
        dist, _ = policy(params, obs)
        return policy.env_action(dist.sample(key))

    return act


def render_html(run_dir: str | Path, step: int | None = None, max_steps: int = 1000, seed: int = 0) -> str:
    """Brax's HTML viewer page of one deterministic episode of a run's policy (at most `max_steps`)."""
    from purejaxppo.envs import BraxEnv
    from purejaxppo.train import make_trainer

    config, params, obs_stats, _ = restore_policy(run_dir, step)
    trainer = make_trainer(config)
    env = trainer.env
    if not isinstance(env, BraxEnv):
        raise checkpoint.CheckpointError(f"render: {config.env} is not a Brax env; render draws Brax scenes only")

    @jax.jit
    def episode(key: jax.Array) -> tuple[Any, jax.Array]:
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def step_fn(carry: tuple, k: jax.Array) -> tuple[tuple, tuple]:
            obs, state = carry
            action = deterministic_action(trainer.policy, params, trainer.normalize_obs(obs_stats, obs))
            out = env.step(k, state, action)
            return (out.obs, out.state), (state.pipeline_state, out.terminated | out.truncated)

        _, (frames, done) = jax.lax.scan(step_fn, (obs, state), jax.random.split(k_steps, max_steps))
        return frames, done

    frames, done = jax.device_get(episode(jax.random.key(seed)))
    length = int(done.argmax()) + 1 if done.any() else max_steps  # frames up to the step that ended it
    return env.render_html([jax.tree.map(lambda x: x[i], frames) for i in range(length)])
