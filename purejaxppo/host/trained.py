"""Trained policies, read from a run dir: to act with (`load_policy`), to evaluate (`eval`), and to start a
fine-tuning run from (`init_from`).

A policy is rebuilt from its checkpoint's run record, its config's network keys and its signature
(what it sees and emits), and only its params and observation statistics are read: the env it trained
on is not built, so a policy trained on an env object loads without it. Every action comes from
`Policy.act`, which applies the run's saved observation statistics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo import envs
from purejaxppo.config import FINE_TUNE_KEYS
from purejaxppo.envs import Env
from purejaxppo.envs.base import abstract_key, in_view, unmasked
from purejaxppo.envs.custom import OBJECT_PREFIX
from purejaxppo.errors import CheckpointError, ConfigError, notify
from purejaxppo.host import checkpoint, limits
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host.record import RunRecord, Signature
from purejaxppo.program import exploit
from purejaxppo.program.evaluation import evaluate
from purejaxppo.program.normalization import RunningStats
from purejaxppo.program.policy import Carry, Policy, make_policy
from purejaxppo.program.ppo import PPO, Pretrained

MAX_TRIES = 5  # reads of a live run's newest checkpoint, which it may delete in the moment before the pin


@dataclasses.dataclass(frozen=True)
class Trained:
    """One run's trained policy at a checkpoint, and the record it came with."""

    record: RunRecord
    step: int
    signature: Signature
    policy: Policy
    params: Any  # host arrays
    obs_stats: RunningStats


def read_trained(run_dir: str | Path, step: int | None = None, run: int | None = None, env: Any = None,
                 note: bool = True) -> Trained:
    """Run `run` of a run dir's checkpoint (its index in a sweep's runs.csv, or a PBT run's member), the
    latest checkpoint by default; by default the only run, a PBT run's best member at that checkpoint, or
    a sweep's run 0 (said in a note, with `note`). `env`, an env object, is needed only for a checkpoint
    written before run records held a signature, whose env is built to find it."""
    for _ in range(MAX_TRIES):
        with checkpoint.reading(run_dir, step) as chosen:  # a live run keeps it while it is read
            try:
                _, record = checkpoint.read_record(run_dir, chosen)
                picked = _picked(run_dir, chosen, record, run, note)
                signature = record.signature or Signature.of(trained_env(record, env))
                parts = checkpoint.restore_parts(run_dir, chosen, ("params", "obs_stats"))
                break
            except CheckpointError:
                # a run deleting it as it was pinned (a moment's race): take the newest again
                if step is not None or chosen in checkpoint.available_steps(run_dir):
                    raise
    else:
        raise CheckpointError(f"{run_dir}: its newest checkpoint was deleted {MAX_TRIES} times while being read; "
                              f"read a given --step")
    config = record.config
    policy = make_policy(config, signature.action_space, signature.image_shape)
    params, obs_stats = jax.tree.map(lambda x: x[picked], (parts["params"], parts["obs_stats"]))
    return Trained(record, chosen, signature, policy, params, RunningStats(**obs_stats))


def _picked(run_dir: str | Path, step: int, record: RunRecord, run: int | None, note: bool) -> int:
    if run is not None:
        if not 0 <= run < record.num_runs:
            raise CheckpointError(f"run {run}: {run_dir} holds runs 0..{record.num_runs - 1}")
        return run
    if record.kind == "pbt":
        return best_member(run_dir, step, record)
    if record.kind == "tune":
        return best_trial_run(run_dir, step, record)
    if record.num_runs > 1 and note:
        notify(f"{run_dir} holds {record.num_runs} runs; this is run 0 (choose another with --run, or run= from "
               f"Python; runs.csv lists them)", once=True)
    return 0


def best_member(run_dir: str | Path, step: int, record: RunRecord) -> int:
    """A PBT run's best member at checkpoint `step` (of its first population), by the mean return over the
    interval before it (see exploit.best_members)."""
    spec = record.pbt
    data = metrics_lib.read(Path(run_dir) / metrics_lib.FILE, before=step)  # the updates before the checkpoint
    if "episode_return" not in data:
        return 0
    return exploit.best_members(data, spec.population, spec.seeds, spec.interval)[0]


def best_trial_run(run_dir: str | Path, step: int, record: RunRecord) -> int:
    """A search's keeper run, which holds its best finished trial at checkpoint `step`; refused in one line
    before any trial has finished."""
    if record.search is None or record.search.get("kept") is None:
        raise CheckpointError(f"{run_dir}: no trial of the search had finished by checkpoint {step}; choose a "
                              f"slot's current trial with --run (0 to {record.tune.slots - 1}; trials.csv lists them)")
    return record.tune.slots


class LoadedPolicy:
    """A trained policy as jitted functions that apply its run's saved observation statistics exactly
    as training did. Without a key an action is deterministic (the distribution's mode); with a key it
    is sampled. `obs` may be one observation or a batch of them, as the env gives it: with `obs_mask`,
    the hidden components are dropped here, as the training env dropped them. A policy whose env masks
    its actions needs `mask=env.action_mask(state)` (batched like `obs`), so the action is a legal one.

    A feedforward policy is called directly: `action = policy(obs)`. Any policy, recurrent or not,
    steps with its carry (a feedforward one's is None):

        carry = policy.initial_carry(num_envs)
        action, carry = policy.step(obs, carry)      # then step the envs with the action
        carry = policy.reset(carry, done)            # where an episode ended, the next starts afresh
    """

    def __init__(self, policy: Policy, params: Any, obs_stats: RunningStats, hidden: tuple[int, ...] = (),
                 env_observation_shape: tuple[int, ...] = ()) -> None:
        self.policy = policy
        seen = in_view(int(np.prod(env_observation_shape)), hidden)
        as_mask = lambda mask: None if mask is None else jnp.asarray(mask, bool)  # noqa: E731
        self._step = jax.jit(lambda obs, carry, key, mask: policy.act(
            params, obs_stats, seen(jnp.asarray(obs, jnp.float32)), key, carry, as_mask(mask)))
        self._reset = jax.jit(policy.reset)

    @classmethod
    def of(cls, trained: Trained) -> LoadedPolicy:
        return cls(trained.policy, trained.params, trained.obs_stats, trained.record.config.obs_mask,
                   trained.signature.env_observation_shape)

    @property
    def recurrent(self) -> bool:
        return self.policy.recurrent

    def __call__(self, obs: jax.Array, key: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        if self.recurrent:
            raise TypeError("a recurrent policy acts with its carry: action, carry = policy.step(obs, carry, key)")
        return self.step(obs, None, key, mask)[0]

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
    """A trained policy of a run dir, latest checkpoint by default, ready to act (see LoadedPolicy). `run`
    picks a run of a sweep's checkpoint (see its runs.csv) or a PBT run's member (by default its best, see
    `best_member`). The env it trained on is not needed; `env`, only for a checkpoint of a version before
    run records, is the env object the run was given from Python."""
    return LoadedPolicy.of(read_trained(run_dir, step, run, env))


def trained_env(record: RunRecord, env: Any = None) -> Env:
    """The env a run trained on, built again from its record's config (or `env`, the object it was given)."""
    config = record.config
    return envs.make_env(config.env if env is None else env, config.env_kwargs, config.obs_mask)


def evaluate_run(run_dir: str | Path, episodes: int, step: int | None = None, run: int | None = None,
                 seed: int = 0, env: Any = None) -> tuple[Trained, jax.Array, jax.Array]:
    """(the trained policy, returns, lengths) of `episodes` deterministic episodes of a run dir's policy,
    on its env built again (`env`: the env object a run was given from Python)."""
    trained = read_trained(run_dir, step, run, env)
    made = trained_env(trained.record, env)
    check_episodes_fit(made, episodes)
    returns, lengths = jax.jit(lambda key: evaluate(trained.policy, made, trained.params, trained.obs_stats, key,
                                                    episodes))(jax.random.key(seed))
    return trained, returns, lengths


def check_episodes_fit(env: Env, episodes: int) -> None:
    """Refuse, before compiling, more evaluation episodes (one env each, all at once) than memory holds: each
    env's state and observation, held twice by the loop that steps them."""
    need, have = 2 * episodes * limits.nbytes(jax.eval_shape(env.reset, abstract_key())), limits.device_headroom()
    if have is not None and need > have.bytes:
        raise ConfigError(f"episodes: {episodes:,} episodes, one env each, need at least {limits.gib(need)}, more "
                          f"than the {limits.gib(have.bytes)} available (bound by {have.source}); evaluate fewer")


def with_pretrained(ppo: PPO) -> PPO:
    """`ppo` with the trained policy its config's `init_from` names (its params and observation statistics),
    once checked to fit its network and env; unchanged without one. The source's env is not built: its
    record says what the source saw and emitted. Raises ConfigError, in one line, before anything
    compiles."""
    config = ppo.config
    if not config.init_from:
        return ppo
    where = Path(config.init_from).expanduser()
    same_object = config.env.startswith(OBJECT_PREFIX)  # an earlier version's record rebuilds it from this run's
    try:
        source = read_trained(where, config.init_step or None, None if config.init_run < 0 else config.init_run,
                              unmasked(ppo.env) if same_object else None, note=False)
    except ConfigError as err:
        raise ConfigError(f"init_from: {err}") from None
    record = source.record
    if config.init_run < 0 and record.num_runs > 1 and record.kind not in ("pbt", "tune"):
        raise ConfigError(f"init_from: {where} holds {record.num_runs} runs (see its runs.csv); choose one with "
                          f"init_run")
    origin = f"init_from: {where} (checkpoint {source.step})"
    for key in FINE_TUNE_KEYS:
        if getattr(record.config, key) != getattr(config, key):
            raise ConfigError(f"{origin} has {key} {getattr(record.config, key)!r}, this config "
                              f"{getattr(config, key)!r}; a fine-tuned network must be its source's")
    if source.policy.kind != ppo.policy.kind:
        raise ConfigError(f"{origin} acts with a {source.policy.kind} distribution, this config with a "
                          f"{ppo.policy.kind} one")
    theirs, mine = source.signature, Signature.of(ppo.env)
    if mine.observation_shape != theirs.observation_shape:
        raise ConfigError(f"{origin} saw observations of shape {theirs.observation_shape}, {config.env} gives "
                          f"{mine.observation_shape}")
    if mine.action_space.describe() != theirs.action_space.describe():
        raise ConfigError(f"{origin} acted in {theirs.action_space.describe()}, {config.env} takes "
                          f"{mine.action_space.describe()}")
    low, high = theirs.action_space.low, theirs.action_space.high
    if not mine.action_space.discrete and not (np.array_equal(mine.action_space.low, low)
                                               and np.array_equal(mine.action_space.high, high)):
        raise ConfigError(f"{origin} acted within the bounds {np.asarray(low).tolist()} to "
                          f"{np.asarray(high).tolist()}, "
                          f"{config.env} has {mine.action_space.low.tolist()} to {mine.action_space.high.tolist()}: "
                          f"the same params would act otherwise")
    return dataclasses.replace(ppo, pretrained=Pretrained(source.params, source.obs_stats))
