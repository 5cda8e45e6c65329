"""Acting with a trained policy outside the training step: deterministic evaluation episodes (also run
inside the compiled program), a trained policy as a plain jitted function, and Brax's viewer page.

Every action here comes from `Policy.act`, which applies the run's saved observation statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo import checkpoint, exploit, limits
from purejaxppo import metrics as metrics_lib
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.errors import notify
from purejaxppo.envs import Env, HiddenObs, action_masks
from purejaxppo.envs.custom import OBJECT_PREFIX
from purejaxppo.normalization import RunningStats
from purejaxppo.policy import Carry, Policy
from purejaxppo.train import Start, Trainer, abstract_states, make_trainer

MAX_EVAL_STEPS = 100_000  # a bound for envs without a time limit; every shipped env ends far sooner
# the keys that make a network and what it sees: a fine-tuning run's must be its source's
NETWORK_KEYS = ("hidden_sizes", "activation", "torso", "cnn_channels", "cnn_kernels", "cnn_strides", "shared_torso",
                "layer_norm", "memory", "memory_size", "state_dependent_std", "normalize_obs", "obs_clip", "obs_mask")
MAX_TRIES = 5  # reads of a live run's newest checkpoint, which it may delete in the moment before the pin


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
    k_reset, k_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))
    zeros = jnp.zeros(num_episodes, jnp.float32)

    def running(carry: tuple) -> jax.Array:
        t, *_, done, _, _ = carry
        return (t < max_steps) & ~done.all()

    def step(carry: tuple) -> tuple:
        t, key, env_state, obs, policy_carry, done, returns, lengths = carry
        key, k_env = jax.random.split(key)
        mask = action_masks(env, env_state)
        action, policy_carry = policy.act(params, obs_stats, obs, carry=policy_carry, mask=mask)
        out = jax.vmap(env.step)(jax.random.split(k_env, num_episodes), env_state, action)
        live = ~done
        returns = returns + jnp.where(live, out.reward, 0.0)
        lengths = lengths + live.astype(jnp.int32)
        done = done | out.terminated | out.truncated
        return t + 1, key, out.state, out.obs, policy_carry, done, returns, lengths

    init = (jnp.int32(0), k_steps, env_state, obs, policy.initial_carry((num_episodes,)),
            jnp.zeros(num_episodes, bool), zeros, zeros.astype(jnp.int32))
    *_, returns, lengths = jax.lax.while_loop(running, step, init)
    return returns, lengths


def restore_policy(
    run_dir: str | Path, step: int | None = None, run: int | None = None, env: Any = None
) -> tuple[Trainer, Any, RunningStats, int]:
    """(trainer, params, observation statistics, step) of run `run` of a run dir's checkpoint (its
    index in a sweep's runs.csv, or a PBT run's member). By default the only run, or a PBT run's best
    member at that checkpoint. `env`: the env object a run trained, when it was given one from Python."""
    for _ in range(MAX_TRIES):
        with checkpoint.reading(run_dir, step) as chosen:  # a live run keeps it while it is read
            try:
                _, meta = checkpoint.read_meta(run_dir, chosen)
                picked = best_member(run_dir, chosen, meta) if run is None else run
                num_runs = int(meta["num_runs"])
                if not 0 <= picked < num_runs:
                    raise checkpoint.CheckpointError(f"run {picked}: {run_dir} holds runs 0..{num_runs - 1}")
                if run is None and num_runs > 1 and meta.get("kind") != "pbt":
                    notify(f"{run_dir} holds {num_runs} runs; this is run 0 (choose another with --run, or run= "
                           f"from Python; runs.csv lists them)", once=True)
                trainer = make_trainer(checkpoint.config_of(meta), env)
                abstract = abstract_states(trainer, int(meta["stacked_runs"]))
                _, state, _ = checkpoint.restore(run_dir, abstract, chosen)
                break
            except checkpoint.CheckpointError:
                # a run deleting it as it was pinned (a moment's race): take the newest again
                if step is not None or chosen in checkpoint.available_steps(run_dir):
                    raise
    else:
        raise checkpoint.CheckpointError(f"{run_dir}: its newest checkpoint was deleted {MAX_TRIES} times while "
                                         f"being read; read a given --step")
    pick = lambda x: x[picked]  # noqa: E731
    return trainer, jax.tree.map(pick, state.params), jax.tree.map(pick, state.obs_stats), chosen


def starting(trainer: Trainer) -> Trainer:
    """`trainer` with the trained policy its config's `init_from` names (its params and observation
    statistics, see `restore_policy`), once checked to fit its network and env; unchanged without one.
    Raises ConfigError, in one line, before anything compiles."""
    config = trainer.config
    if not config.init_from:
        return trainer
    where = Path(config.init_from).expanduser()
    own_object = trainer.config.env.startswith(OBJECT_PREFIX)
    try:
        meta = checkpoint.read_meta(where, config.init_step or None)[1]
        if config.init_run < 0 and int(meta["num_runs"]) > 1 and meta.get("kind") != "pbt":
            raise ConfigError(f"{where} holds {meta['num_runs']} runs (see its runs.csv); choose one with init_run")
        same_object = own_object and meta["config"]["env"] == config.env
        source, params, obs_stats, step = restore_policy(
            where, config.init_step or None, None if config.init_run < 0 else config.init_run,
            trainer.env if same_object else None)
    except ConfigError as err:
        raise ConfigError(f"init_from: {err}") from None
    origin = f"init_from: {where} (checkpoint {step})"
    for key in NETWORK_KEYS:
        if getattr(source.config, key) != getattr(config, key):
            raise ConfigError(f"{origin} has {key} {getattr(source.config, key)!r}, this config "
                              f"{getattr(config, key)!r}; a fine-tuned network must be its source's")
    if source.policy.kind != trainer.policy.kind:
        raise ConfigError(f"{origin} acts with a {source.policy.kind} distribution, this config with a "
                          f"{trainer.policy.kind} one")
    mine, theirs = trainer.env, source.env
    if mine.observation_shape != theirs.observation_shape:
        raise ConfigError(f"{origin} saw observations of shape {theirs.observation_shape}, {config.env} gives "
                          f"{mine.observation_shape}")
    if mine.action_space.describe() != theirs.action_space.describe():
        raise ConfigError(f"{origin} acted in {theirs.action_space.describe()}, {config.env} takes "
                          f"{mine.action_space.describe()}")
    if not mine.action_space.discrete and not (np.array_equal(mine.action_space.low, theirs.action_space.low)
                                               and np.array_equal(mine.action_space.high, theirs.action_space.high)):
        raise ConfigError(f"{origin} acted within the bounds {theirs.action_space.low.tolist()} to "
                          f"{theirs.action_space.high.tolist()}, {config.env} has {mine.action_space.low.tolist()} "
                          f"to {mine.action_space.high.tolist()}: the same params would act otherwise")
    return dataclasses.replace(trainer, start=Start(*jax.device_get((params, obs_stats))))


def best_member(run_dir: str | Path, step: int, meta: dict[str, Any]) -> int:
    """A PBT run's best member at checkpoint `step` (of its first population), by the mean return over the
    interval before it (see exploit.best_members); 0 for any other run."""
    if meta.get("kind") != "pbt":
        return 0
    spec = meta["pbt"]
    data = metrics_lib.read(Path(run_dir) / metrics_lib.FILE, before=step)  # the updates before the checkpoint
    if "episode_return" not in data:
        return 0
    return exploit.best_members(data, spec["population"], spec["seeds"], spec["interval"])[0]


class LoadedPolicy:
    """A trained policy as jitted functions that apply its run's saved observation statistics exactly
    as training did. Without a key an action is deterministic (the distribution's mode); with a key it
    is sampled. `obs` may be one observation or a batch of them, as the env gives it: with `obs_mask`,
    the hidden components are dropped here, as the training env dropped them. A policy whose env masks
    its actions needs `mask=env.action_mask(state)` (batched like `obs`), so the action is a legal one.

    A feedforward policy is called directly: `action = policy(obs)`. Any policy, recurrent or not,
    steps with its carry:

        carry = policy.initial_carry(num_envs)
        action, carry = policy.step(obs, carry)      # then step the envs with the action
        carry = policy.reset(carry, done)            # where an episode ended, the next starts afresh
    """

    def __init__(self, policy: Policy, params: Any, obs_stats: RunningStats, env: Env | None = None) -> None:
        self.policy = policy
        hide = env.hide if isinstance(env, HiddenObs) else (lambda obs: obs)
        as_obs = lambda obs: hide(jnp.asarray(obs, jnp.float32))  # noqa: E731
        as_mask = lambda mask: None if mask is None else jnp.asarray(mask, bool)  # noqa: E731
        self._step = jax.jit(lambda obs, carry, key, mask: policy.act(params, obs_stats, as_obs(obs), key, carry,
                                                                       as_mask(mask)))
        self._reset = jax.jit(policy.reset)

    @property
    def recurrent(self) -> bool:
        return self.policy.recurrent

    def __call__(self, obs: jax.Array, key: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        if self.recurrent:
            raise TypeError("a recurrent policy acts with its carry: action, carry = policy.step(obs, carry, key)")
        return self.step(obs, (), key, mask)[0]

    def step(self, obs: jax.Array, carry: Carry, key: jax.Array | None = None,
             mask: jax.Array | None = None) -> tuple[jax.Array, Carry]:
        """The action for `obs` seen after `carry`, and the carry to pass with the next observation."""
        space = self.policy.action_space
        if space.masked and mask is None:
            raise TypeError(f"this policy's env masks its actions ({space.describe()}): pass "
                            f"mask=env.action_mask(state), bool[{space.n}] batched like obs, or it may act illegally")
        return self._step(obs, carry, key, mask)

    def initial_carry(self, num_envs: int | None = None) -> Carry:
        """The carry at the start of an episode: for `num_envs` envs, or for one unbatched observation."""
        return self.policy.initial_carry(() if num_envs is None else (num_envs,))

    def reset(self, carry: Carry, done: jax.Array) -> Carry:
        """`carry` with the envs whose episode ended back at the initial carry."""
        return self._reset(carry, jnp.asarray(done, bool))


def load_policy(run_dir: str | Path, step: int | None = None, run: int | None = None, env: Any = None) -> LoadedPolicy:
    """A trained policy of a run dir, latest checkpoint by default, ready to act (see LoadedPolicy).
    `run` picks a run of a sweep's checkpoint (see its runs.csv) or a PBT run's member (by default its
    best, see `best_member`); `env` is the env object the run was
    given from Python, if it was (an env named in the config, or by import path, is rebuilt)."""
    trainer, params, obs_stats, _ = restore_policy(run_dir, step, run, env)
    return LoadedPolicy(trainer.policy, params, obs_stats, trainer.env)


def render_html(run_dir: str | Path, step: int | None = None, max_steps: int = 1000, seed: int = 0) -> str:
    """Brax's HTML viewer page of one deterministic episode of a run's policy (at most `max_steps`)."""
    trainer, params, obs_stats, _ = restore_policy(run_dir, step)
    env, policy = trainer.env, trainer.policy
    if not hasattr(env, "render_html"):
        raise checkpoint.CheckpointError(
            f"render: {trainer.config.env} is not a Brax env; render draws Brax scenes only")

    @jax.jit
    def episode(key: jax.Array) -> tuple[Any, jax.Array]:
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def step_fn(carry: tuple, k: jax.Array) -> tuple[tuple, tuple]:
            obs, state, policy_carry = carry
            action, policy_carry = policy.act(params, obs_stats, obs, carry=policy_carry)
            out = env.step(k, state, action)
            return (out.obs, out.state, policy_carry), (state.pipeline_state, out.terminated | out.truncated)

        init = (obs, state, policy.initial_carry())
        _, (frames, done) = jax.lax.scan(step_fn, init, jax.random.split(k_steps, max_steps))
        return frames, done

    frames, done = jax.device_get(episode(jax.random.key(seed)))
    length = int(done.argmax()) + 1 if done.any() else max_steps  # frames up to the step that ended it
    return env.render_html([jax.tree.map(lambda x: x[i], frames) for i in range(length)])


def evaluate_run(run_dir: str | Path, episodes: int, step: int | None = None, run: int | None = None,
                 seed: int = 0, env: Any = None) -> tuple[PPOConfig, int, jax.Array, jax.Array]:
    """(config, step, returns, lengths) of `episodes` deterministic episodes of a run dir's policy
    (`env` as in `load_policy`)."""
    trainer, params, obs_stats, step = restore_policy(run_dir, step, run, env)
    check_episodes_fit(trainer.env, episodes)
    returns, lengths = jax.jit(lambda key: evaluate(trainer.policy, trainer.env, params, obs_stats, key, episodes))(
        jax.random.key(seed))
    return trainer.config, step, returns, lengths


def check_episodes_fit(env: Env, episodes: int) -> None:
    """Refuse, before compiling, more evaluation episodes (one env each, all at once) than memory holds: each
    env's state and observation, held twice by the loop that steps them."""
    need, have = 2 * episodes * limits.nbytes(jax.eval_shape(env.reset, jax.random.key(0))), limits.device_headroom()
    if have is not None and need > have.bytes:
        raise ConfigError(f"episodes: {episodes:,} episodes, one env each, need at least {limits.gib(need)}, more "
                          f"than the {limits.gib(have.bytes)} available (bound by {have.source}); evaluate fewer")
