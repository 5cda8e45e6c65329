"""The PPO update, fused into the compiled program.

`make_train(config)` returns a pure `train(key, hparams=None)`: an init followed by a `lax.scan` over
`PPO.update`, one whole PPO iteration that names its steps: collect a rollout, compute advantages,
learn from them in epochs of shuffled minibatch steps, report metrics (assembled in `diagnostics`).
Float hyperparameters live in the state as traced values (`HParams`), so one compiled program trains
a grid of them under `vmap`.

Absent parts are None, in pytrees and in arguments alike: a feedforward policy's carry, the action
masks of an env that does not mask, the reference policy when the reference KL is off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from purejaxppo import envs
from purejaxppo.config import TRACED, PPOConfig, validate
from purejaxppo.envs import Env
from purejaxppo.errors import ConfigError
from purejaxppo.program import diagnostics, losses, optim, recurrent
from purejaxppo.program.hparams import HParams
from purejaxppo.program.normalization import RunningStats
from purejaxppo.program.policy import Carry, Policy, make_policy

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    obs_stats: RunningStats
    return_stats: RunningStats  # of the discounted returns, for normalize_reward
    kl_beta: jax.Array  # coefficient of the adaptive KL penalty
    env_state: Any
    obs: jax.Array
    carry: Carry  # the policy's carried state per env; None for a feedforward policy
    discounted_return: jax.Array  # of each env's current episode, scaled, for normalize_reward
    episode_return: jax.Array  # running undiscounted return of each env's current episode
    episode_length: jax.Array
    key: jax.Array
    update_step: jax.Array
    hparams: HParams
    ref: Any  # the frozen reference policy's (params, obs_stats) for ref_kl_coef; None when it is off


class Pretrained(NamedTuple):
    """The trained policy a fine-tuning run starts from (init_from): one run's params and observation
    statistics."""

    params: Any
    obs_stats: RunningStats


# TrainState fields with one entry per env: a run's envs may be split over devices along this axis.
ENV_AXIS_FIELDS = ("env_state", "obs", "carry", "discounted_return", "episode_return", "episode_length")


class Transition(NamedTuple):
    obs: jax.Array  # raw observation the action was chosen on
    action: jax.Array  # the distribution's raw sample (pre-squash for tanh_gaussian)
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array  # scaled by reward_scale
    discounted_return: jax.Array  # running discounted return including this reward
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    finished_return: jax.Array  # the episode's raw return where it ended this step, else 0
    finished_length: jax.Array
    carry: Carry  # the policy's carry after this step's obs, before any reset: final_obs is seen after it
    ref_kl: Any = None  # with the reference KL in the reward: each step's estimate of KL(policy || reference)
    mask: Any = None  # a masked action space's legal actions in the state the action was chosen in


class Batch(NamedTuple):
    obs: jax.Array  # raw: the loss normalises with the rollout's statistics, as the rollout did
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    first: Any = None  # recurrent: where the carry resets before a step, [B, T]
    carry: Carry = None  # recurrent: the carry each sequence started with
    mask: Any = None  # a masked action space's legal actions per sample


@dataclasses.dataclass(frozen=True)
class PPO:
    """One PPO program's pieces: a validated config, its env and its policy, and the trained policy a
    fine-tuning run starts from (`pretrained`, loaded by the host only when a run starts: a resume
    restores its own state)."""

    config: PPOConfig
    env: Env
    policy: Policy
    pretrained: Pretrained | None = None

    def init(self, key: jax.Array, hparams: HParams | None = None) -> TrainState:
        hp = HParams.from_config(self.config) if hparams is None else hparams
        key, k_params, k_reset = jax.random.split(key, 3)
        if self.pretrained is None:
            params = self.policy.init(k_params, self.env.observation_shape)
            obs_stats = RunningStats.create(self.env.observation_shape)
        else:
            params, obs_stats = jax.tree.map(jnp.asarray, tuple(self.pretrained))
        n = self.config.num_envs
        obs, env_state = jax.vmap(self.env.reset)(jax.random.split(k_reset, n))
        zeros = jnp.zeros(n, jnp.float32)
        return TrainState(
            params=params, opt_state=optim.make_optimizer(self.config, hp).init(params),
            obs_stats=obs_stats, return_stats=RunningStats.create(()),
            kl_beta=hp.kl_coef, env_state=env_state, obs=obs, carry=self.policy.initial_carry((n,)),
            discounted_return=zeros, episode_return=zeros, episode_length=jnp.zeros(n, jnp.int32),
            key=key, update_step=jnp.zeros((), jnp.int32), hparams=hp,
            ref=(params, obs_stats) if self.config.ref_kl_coef else None,
        )

    def update(self, state: TrainState) -> tuple[TrainState, Metrics]:
        """One PPO iteration: collect, advantages, learn, metrics."""
        key, k_rollout, k_learn = jax.random.split(state.key, 3)
        # 1. Collect a rollout with the current policy and observation statistics; the statistics take in
        #    the rollout only once this update has learned from it.
        start_carry = state.carry
        state, traj = self.rollout(state, k_rollout)
        # 2. Advantages of the rewards as learned from, bootstrapping on truncation only.
        advantages, targets, return_stats = self.advantages(state, traj)
        batch = self.batch(traj, advantages, targets, start_carry)
        # 3. Learn: epochs of shuffled minibatch steps.
        ent_coef = self.entropy_coef(state)
        params, opt_state, steps = self.learn(state, batch, ent_coef, k_learn)
        kl_beta, kl_metrics = self.adapted_kl_beta(state, params, batch)
        # 4. Metrics, then the state the next update starts from.
        metrics = diagnostics.update_metrics(self.config, state, traj, advantages, targets, steps, opt_state, ent_coef,
                                             kl_metrics)
        obs_stats = state.obs_stats.update(traj.obs) if self.config.normalize_obs else state.obs_stats
        state = state.replace(
            params=params, opt_state=opt_state, obs_stats=obs_stats, return_stats=return_stats, kl_beta=kl_beta,
            key=key, update_step=state.update_step + 1,
        )
        return state, metrics

    def rollout(self, state: TrainState, key: jax.Array) -> tuple[TrainState, Transition]:
        """`num_steps` vmapped env steps; the trajectory comes back time-major `[T, N, ...]`."""
        hp = state.hparams

        def step(s: TrainState, step_key: jax.Array) -> tuple[TrainState, Transition]:
            k_act, k_env = jax.random.split(step_key)
            mask = envs.action_masks(self.env, s.env_state)
            dist, value, carry = self.policy.apply(s.params, s.obs_stats, s.obs, s.carry, mask)
            action = dist.sample(k_act)
            log_prob = dist.log_prob(action)
            out = envs.step_all(self.env, k_env, s.env_state, dist.env_action(action), self.config.resets_per_step)
            done = out.terminated | out.truncated
            reward = out.reward * hp.reward_scale
            ref_kl = None
            if self.reference_kl_in("reward"):  # RLHF's form: the reference KL is a per-step cost in the reward
                ref_dist, _, _ = self.policy.apply(*s.ref, s.obs, mask=mask)
                ref_kl = losses.kl_to_reference(log_prob, ref_dist.log_prob(action), self.ref_kl_estimator)
                reward = reward - hp.ref_kl_coef * ref_kl
            discounted = s.discounted_return * hp.gamma + reward
            ep_return, ep_length = s.episode_return + out.reward, s.episode_length + 1
            transition = Transition(
                obs=s.obs, action=action, log_prob=log_prob, value=value, reward=reward,
                discounted_return=discounted, terminated=out.terminated, truncated=out.truncated,
                final_obs=out.final_obs, finished_return=jnp.where(done, ep_return, 0.0),
                finished_length=jnp.where(done, ep_length, 0), carry=carry, ref_kl=ref_kl, mask=mask,
            )
            s = s.replace(
                env_state=out.state, obs=out.obs, carry=self.policy.reset(carry, done),
                discounted_return=jnp.where(done, 0.0, discounted),
                episode_return=jnp.where(done, 0.0, ep_return), episode_length=jnp.where(done, 0, ep_length),
            )
            return s, transition

        return jax.lax.scan(step, state, jax.random.split(key, self.config.num_steps))

    def advantages(self, state: TrainState, traj: Transition) -> tuple[jax.Array, jax.Array, RunningStats]:
        """GAE's advantages and value targets of the rollout, time-major, and the return statistics after
        it."""
        hp = state.hparams
        next_values = self.bootstrap_values(state, traj)
        rewards, return_stats = self.learning_rewards(traj.reward, traj.discounted_return, state.return_stats)
        advantages, targets = losses.gae(
            rewards, traj.value, next_values, traj.terminated, traj.truncated, hp.gamma, hp.gae_lambda
        )
        return advantages, targets, return_stats

    def bootstrap_values(self, state: TrainState, traj: Transition) -> jax.Array:
        """V of each step's final observation, seen after the carry of the episode it ended (never the
        reset one): a truncated step's bootstrap, and elsewhere V of the next observation."""
        return self.policy.value(state.params, state.obs_stats, traj.final_obs, traj.carry)

    def learning_rewards(
        self, rewards: jax.Array, discounted_returns: jax.Array, return_stats: RunningStats
    ) -> tuple[jax.Array, RunningStats]:
        """The rewards GAE sees: scaled rewards divided by the running std of the discounted return
        (normalize_reward; the statistics first take in this rollout), then clipped (reward_clip)."""
        if self.config.normalize_reward:
            return_stats = return_stats.update(discounted_returns)
            rewards = rewards / jnp.sqrt(return_stats.var + 1e-8)
        if self.config.reward_clip:
            rewards = jnp.clip(rewards, -self.config.reward_clip, self.config.reward_clip)
        return rewards, return_stats

    def entropy_coef(self, state: TrainState) -> jax.Array:
        """This update's entropy coefficient, along ent_schedule."""
        hp = state.hparams
        fraction = state.update_step.astype(jnp.float32) / max(1, self.config.num_updates - 1)
        return optim.entropy_coef(self.config.ent_schedule, hp.ent_coef, hp.ent_coef_final, fraction)

    def learn(
        self, state: TrainState, batch: Batch, ent_coef: jax.Array, key: jax.Array
    ) -> tuple[Any, Any, Metrics]:
        """`update_epochs` passes over `batch` in shuffled minibatches, each a step through
        clip_by_global_norm and Adam. With target_kl, a minibatch whose KL (before its step) is past 1.5 x
        target_kl ends the update: it and every later step are masked out, inside the compiled program.
        Returns the params, the optimizer state and each step's diagnostics, `[epochs, minibatches]`."""
        config = self.config

        def epoch(carry: tuple, epoch_key: jax.Array) -> tuple[tuple, Metrics]:
            k_perm, k_steps = jax.random.split(epoch_key)
            step_keys = jax.random.split(k_steps, config.num_minibatches)
            step = lambda c, xs: self.minibatch_step(state, ent_coef, c, *xs)  # noqa: E731
            return jax.lax.scan(step, carry, (self.minibatches(batch, k_perm), step_keys))

        (params, opt_state, _), steps = jax.lax.scan(
            epoch, (state.params, state.opt_state, jnp.bool_(True)), jax.random.split(key, config.update_epochs)
        )
        return params, opt_state, steps

    def minibatch_step(
        self, state: TrainState, ent_coef: jax.Array, carry: tuple, minibatch: Batch, key: jax.Array
    ) -> tuple[tuple, Metrics]:
        """One gradient step on a minibatch; `carry` is (params, optimizer state, whether steps are still
        taken under target_kl)."""
        config, hp = self.config, state.hparams
        params, opt_state, going = carry
        minibatch = self.learning_advantages(minibatch)
        keys = None  # an exact entropy needs none
        if self.policy.entropy_is_sampled:
            shape = minibatch.log_prob.shape  # samples, or env sequences x steps
            keys = jax.random.split(key, math.prod(shape)).reshape(shape)
        grads, stats = self.gradients(state, ent_coef, params, minibatch, keys)
        stats["grad_norm"] = optax.global_norm(grads)
        updates, new_opt_state = optim.make_optimizer(config, hp).update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if config.target_kl:
            going = going & losses.kl_within_target(stats["approx_kl"], hp.target_kl)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(going, a, b), new, old)  # noqa: E731
            new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
        stats["taken"] = going.astype(jnp.float32)
        return (new_params, new_opt_state, going), stats

    def gradients(
        self, state: TrainState, ent_coef: jax.Array, params: Any, minibatch: Batch, keys: jax.Array | None
    ) -> tuple[Any, Metrics]:
        """The loss's gradient on a minibatch and its diagnostics; with grad_accumulation k, the mean of its
        k micro-batches' gradients."""
        k = self.config.grad_accumulation
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)

        def one(part: tuple[Batch, jax.Array | None]) -> tuple[Any, Metrics]:
            (_, stats), grads = grad_fn(params, state.obs_stats, part[0], state.hparams, state.kl_beta, ent_coef,
                                        part[1], state.ref)
            return grads, stats

        if k == 1:
            return one((minibatch, keys))
        parts = jax.tree.map(lambda x: x.reshape((k, -1) + x.shape[1:]), (minibatch, keys))

        def accumulate(total: Any, part: tuple[Batch, jax.Array | None]) -> tuple[Any, Metrics]:
            grads, stats = one(part)
            return jax.tree.map(jnp.add, total, grads), stats

        total, stats = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), parts)
        return jax.tree.map(lambda g: g / k, total), diagnostics.combine(stats)

    def adapted_kl_beta(self, state: TrainState, params: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
        """The adaptive KL penalty's coefficient for the next update, from the KL this update moved the
        policy on its batch (kl_coef; unchanged, with no metrics, when the penalty is off)."""
        if not self.config.kl_coef:
            return state.kl_beta, {}
        dist, _ = self.policy.unroll(params, state.obs_stats, batch.obs, batch.carry, batch.first, batch.mask)
        update_kl = losses.approx_kl(dist.log_prob(batch.action) - batch.log_prob, self.config.kl_estimator)
        kl_beta = losses.adapt_kl_coef(state.kl_beta, update_kl, state.hparams.kl_target)
        return kl_beta, {"update_kl": update_kl, "kl_beta": kl_beta}

    def learning_advantages(self, minibatch: Batch) -> Batch:
        """`minibatch` with its advantages as the loss learns from them: normalised over the whole
        minibatch (normalize_advantages), before any split into micro-batches."""
        if not self.config.normalize_advantages:
            return minibatch
        return minibatch._replace(advantage=losses.normalize(minibatch.advantage))

    def reference_kl_in(self, mode: str) -> bool:
        """Whether the KL to the reference policy is on, acting in `mode` (reward or loss)."""
        return bool(self.config.ref_kl_coef) and self.config.ref_kl_mode == mode

    @property
    def ref_kl_estimator(self) -> str:
        estimator = self.config.ref_kl_estimator
        return {"reward": "k1", "loss": "k3"}[self.config.ref_kl_mode] if estimator == "auto" else estimator

    def loss(
        self, params: Any, obs_stats: RunningStats, batch: Batch, hp: HParams, kl_beta: jax.Array,
        ent_coef: jax.Array, keys: jax.Array | None, ref: Any = None,
    ) -> tuple[jax.Array, Metrics]:
        """The PPO loss of a (micro-)batch whose advantages are as learned from (`learning_advantages`),
        with the variants the config switches on, and its diagnostics; `keys`, one per sample, drive a
        sampled entropy estimate (None for an exact entropy), so a sample's loss does not depend on how
        its batch is split."""
        config = self.config
        dist, value = self.policy.unroll(params, obs_stats, batch.obs, batch.carry, batch.first, batch.mask)
        log_prob = dist.log_prob(batch.action)
        log_ratio = log_prob - batch.log_prob
        advantage = batch.advantage
        dual_clip = hp.dual_clip if config.dual_clip else None
        if config.clip_policy:
            policy_loss = losses.clipped_surrogate(log_ratio, advantage, hp.clip_eps, dual_clip)
        else:
            policy_loss = -jnp.mean(jnp.exp(log_ratio) * advantage)
        kl = losses.approx_kl(log_ratio, config.kl_estimator)
        if config.clip_value:
            value_loss = losses.clipped_value_loss(value, batch.value, batch.target, hp.value_clip_eps)
        else:
            value_loss = losses.value_loss(value, batch.target)
        entropy = jnp.mean(dist.entropy(keys))
        total = policy_loss + hp.vf_coef * value_loss - ent_coef * entropy
        if config.kl_coef:
            total = total + kl_beta * kl
        stats = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "approx_kl": kl,
                 **diagnostics.minibatch(log_ratio, advantage, hp.clip_eps, dual_clip)}
        if self.reference_kl_in("loss"):  # on the rollout's actions, as GRPO's loss term
            ref_dist, _ = self.policy.unroll(*ref, batch.obs, mask=batch.mask)
            ref_kl = jnp.mean(losses.kl_to_reference(log_prob, ref_dist.log_prob(batch.action),
                                                     self.ref_kl_estimator))
            total = total + hp.ref_kl_coef * ref_kl
            stats["ref_kl"] = ref_kl
        if not self.policy.action_space.discrete:
            stats["policy_std"] = jnp.mean(dist.std())
        return total, stats

    def batch(self, traj: Transition, advantages: jax.Array, targets: jax.Array, start_carry: Carry) -> Batch:
        """What the epochs learn from: single samples `[T * N]` for a feedforward policy; for a recurrent
        one, each env's whole sequence `[N, T]` with the carry it started from (`start_carry`, the
        rollout's first) and where its carry resets, so the loss replays it as the rollout ran."""
        batch = Batch(traj.obs, traj.action, traj.log_prob, traj.value, advantages, targets, mask=traj.mask)
        if not self.policy.recurrent:
            return jax.tree.map(lambda x: x.reshape((self.config.batch_size,) + x.shape[2:]), batch)
        first = recurrent.starts(traj.terminated | traj.truncated)
        batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), batch._replace(first=first))
        return batch._replace(carry=start_carry)

    def minibatches(self, batch: Batch, key: jax.Array) -> Batch:
        """`batch` shuffled along its first axis (samples, or envs) and split into `num_minibatches`
        stacked on a new leading axis."""
        size = self.config.num_envs if self.policy.recurrent else self.config.batch_size
        perm = jax.random.permutation(key, size)
        count = self.config.num_minibatches
        return jax.tree.map(lambda x: jnp.take(x, perm, axis=0).reshape((count, -1) + x.shape[1:]), batch)


def with_env(config: PPOConfig, env: Any = None) -> PPOConfig:
    """`config` as a run records it: with an env object given, its `env` names the object's class."""
    return config if env is None else dataclasses.replace(config, env=envs.label(env))


def make_ppo(config: PPOConfig, env: Any = None) -> PPO:
    """Build the env and the policy of a validated config, checking what needs the env (its name and
    parameters, the distribution's fit) before anything compiles. `env`, an env object of any kind
    `envs.make_env` accepts, replaces the config's `env` name. Raises ConfigError."""
    config = with_env(config, env)
    validate(config)
    made = envs.make_env(config.env if env is None else env, config.env_kwargs, config.obs_mask)
    if config.resets_per_step and not callable(getattr(made, "step_without_reset", None)):
        raise ConfigError(f"resets_per_step: {config.env} has no step_without_reset, so it draws its own reset "
                          f"in each step; set resets_per_step: 0")
    return PPO(config, made, make_policy(config, made.action_space, envs.image_shape(made)))


def abstract_states(ppo: PPO, num_runs: int) -> TrainState:
    """Shapes and dtypes of `num_runs` training states stacked on a leading run axis."""
    hparams = HParams(**{name: jax.ShapeDtypeStruct((num_runs,), jnp.float32) for name in TRACED})
    seeds = jax.ShapeDtypeStruct((num_runs,), jnp.uint32)
    return jax.eval_shape(jax.vmap(lambda seed, hp: ppo.init(jax.random.key(seed), hp)), seeds, hparams)


def make_train(config: PPOConfig, env: Any = None) -> Callable[..., tuple[TrainState, Metrics]]:
    """A pure `train(key, hparams=None) -> (final state, metrics stacked over updates)`, on the config's
    env or on `env`, an env object (see `make_ppo`). It starts from a fresh init: a run with `init_from`
    goes through `purejaxppo.train`, whose preparation loads the trained policy it starts from."""
    if config.init_from:
        raise ConfigError("init_from: make_train builds a fresh init; fine-tune through purejaxppo.train, which "
                          "loads the trained policy it starts from")
    ppo = make_ppo(config, env)

    def train(key: jax.Array, hparams: HParams | None = None) -> tuple[TrainState, Metrics]:
        state = ppo.init(key, hparams)
        return jax.lax.scan(lambda s, _: ppo.update(s), state, None, length=config.num_updates)

    return train
