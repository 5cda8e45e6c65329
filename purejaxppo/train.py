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
    vf_coef: jax.Array
    ent_coef: jax.Array
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
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # running undiscounted return of each env's current episode
    episode_length: jax.Array
    key: jax.Array
    update_step: jax.Array
    hparams: HParams


class Transition(NamedTuple):
    obs: jax.Array  # raw observation the action was chosen on
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array  # scaled, as learned from
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    finished_return: jax.Array  # the episode's raw return where it ended this step, else 0
    finished_length: jax.Array


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
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


def make_optimizer(config: PPOConfig, hp: HParams) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(hp.max_grad_norm),
        optax.adam(lr_schedule(config, hp), eps=config.adam_eps),
    )


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The pieces of one compiled PPO program for a validated config."""

    config: PPOConfig
    env: Env
    policy: Policy

    def normalize_obs(self, stats: RunningStats, obs: jax.Array) -> jax.Array:
        return stats.normalize(obs) if self.config.normalize_obs else obs

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
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros(n, jnp.float32),
            episode_length=jnp.zeros(n, jnp.int32),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
            hparams=hp,
        )

    def rollout(self, state: TrainState, key: jax.Array) -> tuple[TrainState, Transition]:
        """`num_steps` vmapped env steps; the trajectory comes back time-major `[T, N, ...]`."""
        env_step = jax.vmap(self.env.step)

        def step(carry: TrainState, step_key: jax.Array) -> tuple[TrainState, Transition]:
            k_act, k_env = jax.random.split(step_key)
            dist, value = self.policy(carry.params, self.normalize_obs(carry.obs_stats, carry.obs))
            action = dist.sample(k_act)
            out = env_step(
                jax.random.split(k_env, self.config.num_envs), carry.env_state, self.policy.env_action(action)
            )
            done = out.terminated | out.truncated
            ep_return = carry.episode_return + out.reward
            ep_length = carry.episode_length + 1
            transition = Transition(
                obs=carry.obs,
                action=action,
                log_prob=dist.log_prob(action),
                value=value,
                reward=out.reward * carry.hparams.reward_scale,
                terminated=out.terminated,
                truncated=out.truncated,
                final_obs=out.final_obs,
                finished_return=jnp.where(done, ep_return, 0.0),
                finished_length=jnp.where(done, ep_length, 0),
            )
            carry = carry.replace(
                env_state=out.state,
                obs=out.obs,
                episode_return=jnp.where(done, 0.0, ep_return),
                episode_length=jnp.where(done, 0, ep_length),
            )
            return carry, transition

        return jax.lax.scan(step, state, jax.random.split(key, self.config.num_steps))

    def loss(self, params: Any, batch: Batch, hp: HParams) -> tuple[jax.Array, Metrics]:
        dist, value = self.policy(params, batch.obs)
        log_ratio = dist.log_prob(batch.action) - batch.log_prob
        advantage = losses.normalize(batch.advantage) if self.config.normalize_advantages else batch.advantage
        policy_loss = losses.clipped_surrogate(log_ratio, advantage, hp.clip_eps)
        value_loss = losses.value_loss(value, batch.target)
        entropy = jnp.mean(dist.entropy())
        total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
        return total, {
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": losses.approx_kl(log_ratio),
            "clip_fraction": losses.clip_fraction(log_ratio, hp.clip_eps),
        }

    def update(self, state: TrainState) -> tuple[TrainState, Metrics]:
        """One PPO iteration: rollout, GAE, then `update_epochs` passes of shuffled minibatch steps."""
        config, hp = self.config, state.hparams
        key, k_rollout, k_epochs = jax.random.split(state.key, 3)

        # 1. Collect a rollout with the current policy and observation statistics.
        state, traj = self.rollout(state, k_rollout)
        obs = self.normalize_obs(state.obs_stats, traj.obs)
        next_values = self.policy.value(state.params, self.normalize_obs(state.obs_stats, traj.final_obs))
        obs_stats = state.obs_stats.update(traj.obs) if config.normalize_obs else state.obs_stats

        # 2. Advantages, bootstrapping on truncation only.
        advantages, targets = losses.gae(
            traj.reward, traj.value, next_values, traj.terminated, traj.truncated, hp.gamma, hp.gae_lambda
        )
        flat = lambda x: x.reshape((config.batch_size,) + x.shape[2:])  # noqa: E731
        batch = Batch(flat(obs), flat(traj.action), flat(traj.log_prob), flat(advantages), flat(targets))

        # 3. Epochs of shuffled minibatch steps through clip_by_global_norm + adam.
        tx = make_optimizer(config, hp)
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)

        def minibatch_step(carry: tuple, minibatch: Batch) -> tuple[tuple, Metrics]:
            params, opt_state = carry
            (_, stats), grads = grad_fn(params, minibatch, hp)
            stats["grad_norm"] = optax.global_norm(grads)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry: tuple, epoch_key: jax.Array) -> tuple[tuple, Metrics]:
            perm = jax.random.permutation(epoch_key, config.batch_size)
            shuffled = jax.tree.map(
                lambda x: jnp.take(x, perm, axis=0).reshape((config.num_minibatches, -1) + x.shape[1:]), batch
            )
            return jax.lax.scan(minibatch_step, carry, shuffled)

        (params, opt_state), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(k_epochs, config.update_epochs)
        )

        # 4. Per-update metrics: means over minibatch steps and over episodes that completed.
        steps_per_update = config.update_epochs * config.num_minibatches
        finished = traj.finished_length > 0
        count = finished.sum()
        metrics = {name: value.mean() for name, value in stats.items()}
        metrics.update(
            env_steps=(state.update_step + 1) * config.batch_size,
            episode_return=jnp.where(count > 0, traj.finished_return.sum() / count, jnp.nan),
            episode_length=jnp.where(count > 0, traj.finished_length.sum() / count, jnp.nan),
            episode_count=count,
            explained_variance=losses.explained_variance(traj.value, targets),
            lr=lr_schedule(config, hp)((state.update_step + 1) * steps_per_update - 1),
        )
        state = state.replace(
            params=params, opt_state=opt_state, obs_stats=obs_stats, key=key, update_step=state.update_step + 1
        )
        return state, metrics

    def run_chunk(self, state: TrainState, num_active: jax.Array) -> tuple[TrainState, Metrics]:
        """`chunk_size` updates in one scan; updates past `num_active` leave the state untouched and
        report zeros (the host drops them), so one compiled chunk also serves the shorter last one."""
        metrics_shape = jax.eval_shape(self.update, state)[1]

        def skip(s: TrainState) -> tuple[TrainState, Metrics]:
            return s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

        def body(s: TrainState, i: jax.Array) -> tuple[TrainState, Metrics]:
            return jax.lax.cond(i < num_active, self.update, skip, s)

        return jax.lax.scan(body, state, jnp.arange(self.config.chunk_size))


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
