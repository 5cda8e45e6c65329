"""The fused PPO training program.

`make_train(config)` returns a pure `train(key, hparams=None)`: an init followed by a `lax.scan` over
`update`. `update(state) -> (state, metrics)` does one whole PPO iteration (rollout, GAE, epochs of
minibatch steps) and is what chunked runners, sweeps and checkpoints build on. Float hyperparameters
live in the state as traced values (`HParams`), so one compiled program can train a grid of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from purejaxppo import losses
from purejaxppo.config import PPOConfig, validate
from purejaxppo.envs import Env, make_env
from purejaxppo.networks import Policy, make_policy
from purejaxppo.normalization import RunningStats

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class HParams:
    """The float hyperparameters the compiled program reads as traced values."""

    lr: jax.Array
    lr_end: jax.Array
    clip_eps: jax.Array
    dual_clip: jax.Array
    kl_coef: jax.Array
    kl_target: jax.Array
    target_kl: jax.Array
    value_clip_eps: jax.Array
    vf_coef: jax.Array
    ent_coef: jax.Array
    ent_coef_final: jax.Array
    max_grad_norm: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    reward_scale: jax.Array

    @classmethod
    def from_config(cls, config: PPOConfig) -> HParams:
        return cls(**{name: jnp.float32(getattr(config, name)) for name in TRACED_HPARAMS})


TRACED_HPARAMS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HParams))


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    obs_stats: RunningStats
    return_stats: RunningStats  # of the discounted returns, for normalize_reward
    kl_beta: jax.Array  # coefficient of the adaptive KL penalty
    env_state: Any
    obs: jax.Array
    discounted_return: jax.Array  # of each env's current episode, scaled, for normalize_reward
    episode_return: jax.Array  # running undiscounted return of each env's current episode
    episode_length: jax.Array
    key: jax.Array
    update_step: jax.Array
    hparams: HParams


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


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


def lr_schedule(config: PPOConfig, hp: HParams) -> optax.Schedule:
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


def make_optimizer(config: PPOConfig, hp: HParams) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adam(lr_schedule(config, hp), eps=config.adam_eps),
    )


def optimizer_steps(opt_state: Any) -> jax.Array:
    """The schedule's step count: minibatch steps taken so far (skipped ones by KL early stopping don't count)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    (schedule,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(s)]
    return schedule.count


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The pieces of one compiled PPO program for a validated config."""

    config: PPOConfig
    env: Env
    policy: Policy

    def normalize_obs(self, stats: RunningStats, obs: jax.Array) -> jax.Array:
        """What the network sees; training, evaluation and `load_policy` all go through here."""
        if self.config.normalize_obs:
            obs = stats.normalize(obs)
        return jnp.clip(obs, -self.config.obs_clip, self.config.obs_clip) if self.config.obs_clip else obs

    def init(self, key: jax.Array, hparams: HParams | None = None) -> TrainState:
        hp = HParams.from_config(self.config) if hparams is None else hparams
        key, k_params, k_reset = jax.random.split(key, 3)
        params = self.policy.init(k_params, self.env.observation_shape)
        obs, env_state = jax.vmap(self.env.reset)(jax.random.split(k_reset, self.config.num_envs))
        n = self.config.num_envs
        return TrainState(
            params=params,
            opt_state=make_optimizer(self.config, hp).init(params),
            obs_stats=RunningStats.create(self.env.observation_shape),
            return_stats=RunningStats.create(()),
            kl_beta=hp.kl_coef,
            env_state=env_state,
            obs=obs,
            discounted_return=jnp.zeros(n, jnp.float32),
            episode_return=jnp.zeros(n, jnp.float32),
            episode_length=jnp.zeros(n, jnp.int32),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
            hparams=hp,
        )

    def rollout(self, state: TrainState, key: jax.Array) -> tuple[TrainState, Transition]:
        """`num_steps` vmapped env steps; the trajectory comes back time-major `[T, N, ...]`."""
        env_step = jax.vmap(self.env.step)
        hp = state.hparams

        def step(carry: TrainState, step_key: jax.Array) -> tuple[TrainState, Transition]:
            k_act, k_env = jax.random.split(step_key)
            dist, value = self.policy(carry.params, self.normalize_obs(carry.obs_stats, carry.obs))
            action = dist.sample(k_act)
            out = env_step(
                jax.random.split(k_env, self.config.num_envs), carry.env_state, self.policy.env_action(action)
            )
            done = out.terminated | out.truncated
            reward = out.reward * hp.reward_scale
            discounted = carry.discounted_return * hp.gamma + reward
            ep_return = carry.episode_return + out.reward
            ep_length = carry.episode_length + 1
            transition = Transition(
                obs=carry.obs,
                action=action,
                log_prob=dist.log_prob(action),
                value=value,
                reward=reward,
                discounted_return=discounted,
                terminated=out.terminated,
                truncated=out.truncated,
                final_obs=out.final_obs,
                finished_return=jnp.where(done, ep_return, 0.0),
                finished_length=jnp.where(done, ep_length, 0),
            )
            carry = carry.replace(
                env_state=out.state,
                obs=out.obs,
                discounted_return=jnp.where(done, 0.0, discounted),
                episode_return=jnp.where(done, 0.0, ep_return),
                episode_length=jnp.where(done, 0, ep_length),
            )
            return carry, transition

        return jax.lax.scan(step, state, jax.random.split(key, self.config.num_steps))

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

    def loss(
        self, params: Any, batch: Batch, hp: HParams, kl_beta: jax.Array, ent_coef: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        config = self.config
        dist, value = self.policy(params, batch.obs)
        log_ratio = dist.log_prob(batch.action) - batch.log_prob
        advantage = losses.normalize(batch.advantage) if config.normalize_advantages else batch.advantage
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
        entropy = jnp.mean(dist.entropy(key))
        total = policy_loss + hp.vf_coef * value_loss - ent_coef * entropy
        if config.kl_coef:
            total = total + kl_beta * kl
        ratio_mean, ratio_max = losses.ratio_stats(log_ratio)
        stats = {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": kl,
            "clip_fraction": losses.clip_fraction(log_ratio, hp.clip_eps),
            "ratio_mean": ratio_mean,
            "ratio_max": ratio_max,
        }
        if dual_clip is not None:
            stats["dual_clip_fraction"] = losses.dual_clip_fraction(log_ratio, advantage, hp.clip_eps, dual_clip)
        if not self.policy.action_space.discrete:
            stats["policy_std"] = jnp.mean(self.policy.action_std(dist))
        return total, stats

    def update(self, state: TrainState) -> tuple[TrainState, Metrics]:
        """One PPO iteration: rollout, GAE, then `update_epochs` passes of shuffled minibatch steps."""
        config, hp = self.config, state.hparams
        key, k_rollout, k_epochs = jax.random.split(state.key, 3)

        # 1. Collect a rollout with the current policy and observation statistics.
        state, traj = self.rollout(state, k_rollout)
        obs = self.normalize_obs(state.obs_stats, traj.obs)
        next_values = self.policy.value(state.params, self.normalize_obs(state.obs_stats, traj.final_obs))
        obs_stats = state.obs_stats.update(traj.obs) if config.normalize_obs else state.obs_stats

        # 2. Rewards as learned from, then advantages, bootstrapping on truncation only.
        rewards, return_stats = self.learning_rewards(traj.reward, traj.discounted_return, state.return_stats)
        advantages, targets = losses.gae(
            rewards, traj.value, next_values, traj.terminated, traj.truncated, hp.gamma, hp.gae_lambda
        )
        flat = lambda x: x.reshape((config.batch_size,) + x.shape[2:])  # noqa: E731
        batch = Batch(*map(flat, (obs, traj.action, traj.log_prob, traj.value, advantages, targets)))

        # 3. Epochs of shuffled minibatch steps through clip_by_global_norm + adam. With target_kl, a
        #    minibatch whose KL (before its step) is past 1.5 x target_kl ends the update: it and every
        #    later step are masked out, inside the compiled program.
        tx = make_optimizer(config, hp)
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        fraction = state.update_step.astype(jnp.float32) / max(1, config.num_updates - 1)
        ent_coef = entropy_coef(config.ent_schedule, hp.ent_coef, hp.ent_coef_final, fraction)

        def minibatch_step(carry: tuple, xs: tuple[Batch, jax.Array]) -> tuple[tuple, Metrics]:
            params, opt_state, going = carry
            minibatch, step_key = xs
            (_, stats), grads = grad_fn(params, minibatch, hp, state.kl_beta, ent_coef, step_key)
            stats["grad_norm"] = optax.global_norm(grads)
            updates, new_opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            if config.target_kl:
                going = going & losses.kl_within_target(stats["approx_kl"], hp.target_kl)
                keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(going, a, b), new, old)  # noqa: E731
                new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
            stats["taken"] = going.astype(jnp.float32)
            return (new_params, new_opt_state, going), stats

        def epoch(carry: tuple, epoch_key: jax.Array) -> tuple[tuple, Metrics]:
            k_perm, k_steps = jax.random.split(epoch_key)
            perm = jax.random.permutation(k_perm, config.batch_size)
            shuffled = jax.tree.map(
                lambda x: jnp.take(x, perm, axis=0).reshape((config.num_minibatches, -1) + x.shape[1:]), batch
            )
            return jax.lax.scan(minibatch_step, carry, (shuffled, jax.random.split(k_steps, config.num_minibatches)))

        (params, opt_state, _), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state, jnp.bool_(True)), jax.random.split(k_epochs, config.update_epochs)
        )

        # 4. Per-update metrics: means over the minibatch steps taken and over episodes that completed.
        taken = stats.pop("taken")
        ratio_max = stats.pop("ratio_max")
        finished = traj.finished_length > 0
        count = finished.sum()
        metrics = {name: _weighted_mean(value, taken) for name, value in stats.items()}
        metrics.update(
            env_steps=(state.update_step + 1) * config.batch_size,
            episode_return=jnp.where(count > 0, traj.finished_return.sum() / count, jnp.nan),
            episode_length=jnp.where(count > 0, traj.finished_length.sum() / count, jnp.nan),
            episode_count=count,
            explained_variance=losses.explained_variance(traj.value, targets),
            value_error=jnp.mean(jnp.abs(traj.value - targets)),
            advantage_mean=jnp.mean(advantages),
            advantage_std=jnp.std(advantages),
            ratio_max=jnp.max(jnp.where(taken > 0, ratio_max, 0.0)),
            lr=lr_schedule(config, hp)(optimizer_steps(opt_state) - 1),
        )
        if config.ent_schedule != "constant":
            metrics["ent_coef"] = ent_coef
        if config.target_kl:
            metrics["minibatch_steps"] = taken.sum()
        kl_beta = state.kl_beta
        if config.kl_coef:
            dist, _ = self.policy(params, batch.obs)
            update_kl = losses.approx_kl(dist.log_prob(batch.action) - batch.log_prob, config.kl_estimator)
            kl_beta = losses.adapt_kl_coef(kl_beta, update_kl, hp.kl_target)
            metrics.update(update_kl=update_kl, kl_beta=kl_beta)
        state = state.replace(
            params=params, opt_state=opt_state, obs_stats=obs_stats, return_stats=return_stats, kl_beta=kl_beta,
            key=key, update_step=state.update_step + 1,
        )
        return state, metrics

    def evaluate(self, state: TrainState) -> jax.Array:
        """Mean return of `eval_episodes` deterministic episodes on separate envs. Its key is derived
        without advancing the training key, so evaluating does not change training."""
        from purejaxppo.acting import evaluate

        returns, _ = evaluate(self.policy, self.env, state.params, lambda o: self.normalize_obs(state.obs_stats, o),
                              jax.random.fold_in(state.key, 0x5EED), self.config.eval_episodes)
        return returns.mean()

    def run_chunk(
        self, state: TrainState, num_active: jax.Array, first_update: jax.Array | None = None
    ) -> tuple[TrainState, Metrics]:
        """`chunk_size` updates in one scan; updates past `num_active` leave the state untouched and
        report zeros (the host drops them), so one compiled chunk also serves the shorter last one.
        With `eval_every`, the chunk ends with an evaluation when it crossed a multiple of eval_every
        (or finished the run), reported as `eval_return` on its last active update.

        `first_update` is the state's update count, for callers that vmap over runs that share it: given
        unbatched, it keeps the evaluation a branch, where the state's own (batched) count would turn it
        into a select that evaluates every chunk."""
        metrics_shape = jax.eval_shape(self.update, state)[1]

        def skip(s: TrainState) -> tuple[TrainState, Metrics]:
            return s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

        def body(s: TrainState, i: jax.Array) -> tuple[TrainState, Metrics]:
            return jax.lax.cond(i < num_active, self.update, skip, s)

        state, metrics = jax.lax.scan(body, state, jnp.arange(self.config.chunk_size))
        if self.config.eval_every:
            step = (state.update_step if first_update is None else first_update + num_active)
            every = self.config.eval_every
            due = (step // every > (step - num_active) // every) | (step == self.config.num_updates)
            value = jax.lax.cond(due, self.evaluate, lambda s: jnp.float32(jnp.nan), state)
            metrics["eval_return"] = jnp.full(self.config.chunk_size, jnp.nan).at[num_active - 1].set(value)
        return state, metrics


def make_trainer(config: PPOConfig) -> Trainer:
    validate(config)
    env = make_env(config.env, config.env_kwargs)
    return Trainer(config, env, make_policy(config, env.action_space))


def make_train(config: PPOConfig) -> Callable[..., tuple[TrainState, Metrics]]:
    """A pure `train(key, hparams=None) -> (final state, metrics stacked over updates)`."""
    trainer = make_trainer(config)

    def train(key: jax.Array, hparams: HParams | None = None) -> tuple[TrainState, Metrics]:
        state = trainer.init(key, hparams)
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=config.num_updates)

    return train
