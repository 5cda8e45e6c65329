"""The policy: what an agent sees and what it emits, in one place.

`Policy.apply(params, obs_stats, obs, carry)` normalises and clips the observation with the run's
statistics, runs the network and returns the action distribution, the value and the carried state.
Training, in-program evaluation, `eval`, `render` and `load_policy` all act through it, so the
observation statistics travel with the policy to whoever acts. A recurrent policy's carry holds its
cores' states; a feedforward policy's carry is None. Whoever steps
a recurrent policy resets its carry where an episode ended (`reset`); `unroll` replays whole
sequences from the carry each started with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from purejaxppo.config import PPOConfig
from purejaxppo.envs import ActionSpace
from purejaxppo.errors import ConfigError
from purejaxppo.program import recurrent
from purejaxppo.program.distributions import (
    Beta,
    Categorical,
    DiagGaussian,
    Distribution,
    MultiCategorical,
    TanhGaussian,
)
from purejaxppo.program.networks import ActorCritic, RecurrentActorCritic, conv_output_shape
from purejaxppo.program.normalization import RunningStats

MIN_STD = 1e-3  # floor of a state-dependent std, so the log prob stays bounded
Carry = Any  # a policy's state carried from step to step; None for a feedforward policy


@dataclasses.dataclass(frozen=True)
class Policy:
    """The network, how its outputs form a distribution over the env's actions, and what it sees."""

    network: ActorCritic | RecurrentActorCritic
    action_space: ActionSpace
    kind: str  # categorical, gaussian, tanh_gaussian or beta
    state_dependent_std: bool = False
    normalize_obs: bool = False
    obs_clip: float = 0.0

    @property
    def recurrent(self) -> bool:
        return isinstance(self.network, RecurrentActorCritic)

    @property
    def entropy_is_sampled(self) -> bool:
        """Whether the distribution's entropy is a sampled estimate, drawn with a key (see TanhGaussian)."""
        return self.kind == "tanh_gaussian"

    def init(self, key: jax.Array, obs_shape: tuple[int, ...]) -> Any:
        return self.network.init(key, self.initial_carry(), jnp.zeros(obs_shape, jnp.float32))

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> Carry:
        """The carry at the start of an episode, for a batch of `batch_shape` envs."""
        return self.network.initial_carry(tuple(batch_shape))

    def reset(self, carry: Carry, done: jax.Array) -> Carry:
        """`carry` with the envs whose episode ended (`done`) back at the initial carry."""
        return recurrent.reset(carry, self.initial_carry(), done)

    def observe(self, obs_stats: RunningStats, obs: jax.Array) -> jax.Array:
        """The network's input: the observation normalised by the run's statistics, then clipped."""
        if self.normalize_obs:
            obs = obs_stats.normalize(obs)
        return jnp.clip(obs, -self.obs_clip, self.obs_clip) if self.obs_clip else obs

    def distribution(self, head: jax.Array, log_std: jax.Array | None, mask: jax.Array | None = None) -> Distribution:
        """The action distribution of the network's outputs; `mask` marks the legal actions of a masked
        discrete space (see `envs.Env.action_mask`)."""
        if self.kind == "categorical":
            if self.action_space.nvec:
                return MultiCategorical(head, self.action_space.nvec, mask)
            return Categorical(head, mask)
        low, high = self.action_space.low, self.action_space.high
        if self.kind == "beta":
            x_alpha, x_beta = jnp.split(head, 2, axis=-1)
            return Beta.from_unconstrained(x_alpha, x_beta, low, high)
        if self.state_dependent_std:
            head, std_input = jnp.split(head, 2, axis=-1)
            log_std = jnp.log(nn.softplus(std_input) + MIN_STD)
        if self.kind == "tanh_gaussian":
            return TanhGaussian(head, log_std, low, high)
        return DiagGaussian(head, log_std, low, high)

    def apply(
        self, params: Any, obs_stats: RunningStats, obs: jax.Array, carry: Carry = None, mask: jax.Array | None = None
    ) -> tuple[Distribution, jax.Array, Carry]:
        """One step: the action distribution (over the legal actions `mask` gives, if any) and value of
        `obs` seen after `carry`, and the next carry."""
        head, log_std, value, carry = self.network.apply(params, carry, self.observe(obs_stats, obs))
        return self.distribution(*_float32((head, log_std)), mask), _float32(value), carry

    def value(self, params: Any, obs_stats: RunningStats, obs: jax.Array, carry: Carry = None) -> jax.Array:
        return _float32(self.network.apply(params, carry, self.observe(obs_stats, obs), method="value"))

    def unroll(
        self, params: Any, obs_stats: RunningStats, obs: jax.Array, carry: Carry = None, first: Any = None,
        mask: jax.Array | None = None,
    ) -> tuple[Distribution, jax.Array]:
        """The distributions and values of a batch of observations, as `apply` gives them step by step.

        For a recurrent policy `obs` holds env-major sequences `[B, T, ...]`, `carry` the carry each
        sequence started with and `first` `[B, T]` where the carry resets before a step. A feedforward
        policy reads any batch shape and ignores both.
        """
        if not self.recurrent:
            dist, value, _ = self.apply(params, obs_stats, obs, mask=mask)
            return dist, value
        time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        features = self.network.apply(params, time_major(self.observe(obs_stats, obs)), method="encode")
        step = lambda c, x: self.network.apply(params, c, x, method="step")  # noqa: E731
        _, hidden = recurrent.unroll(step, carry, self.initial_carry(), features, time_major(first))
        head, log_std, value = _float32(self.network.apply(params, jax.tree.map(time_major, hidden), method="heads"))
        return self.distribution(head, log_std, mask), value

    def act(
        self, params: Any, obs_stats: RunningStats, obs: jax.Array, key: jax.Array | None = None, carry: Carry = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Carry]:
        """The env action (a legal one, given the `mask`): the distribution's deterministic action without a
        key, a sample with one."""
        dist, _, carry = self.apply(params, obs_stats, obs, carry, mask)
        action = dist.deterministic_action() if key is None else dist.env_action(dist.sample(key))
        return action, carry


def _float32(tree: Any) -> Any:
    """The network's outputs in float32 (bfloat16 under mixed precision): distributions, log probs and
    values are always computed in float32."""
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def resolve_distribution(config: PPOConfig, discrete: bool) -> str:
    """The action distribution `config` gives an env with discrete (or continuous) actions, checked to fit."""
    kind = config.distribution
    if kind == "auto":
        kind = "categorical" if discrete else "gaussian"
    if config.state_dependent_std and kind not in ("gaussian", "tanh_gaussian"):
        raise ConfigError(f"state_dependent_std: applies to gaussian and tanh_gaussian, not {kind}")
    if discrete != (kind == "categorical"):
        space = "discrete" if discrete else "continuous (Box)"
        raise ConfigError(f"distribution: {kind} does not fit the {space} actions of {config.env}")
    return kind


def cnn_torso(config: PPOConfig, image_shape: tuple[int, int, int] | None) -> dict[str, Any]:
    """The network's convolutions and the image they read, for `torso: cnn`; checked to fit the image."""
    if config.torso != "cnn":
        return {}
    if image_shape is None and config.obs_mask:
        raise ConfigError(f"torso: cnn needs an image observation, and obs_mask hides components of {config.env}'s, "
                          f"so the policy no longer sees an image; drop obs_mask, or use torso: mlp")
    if image_shape is None:
        raise ConfigError(f"torso: cnn needs an image observation, and {config.env}'s is not one (an env declares "
                          f"its image_shape: MinAtar, Craftax Pixels and XLand-MiniGrid do); use torso: mlp")
    convs = tuple(zip(config.cnn_channels, config.cnn_kernels, config.cnn_strides))
    if min(conv_output_shape(image_shape, convs)[:2]) < 1:
        raise ConfigError(f"cnn_kernels: the convolutions (kernels {list(config.cnn_kernels)}, strides "
                          f"{list(config.cnn_strides)}, unpadded) shrink {config.env}'s {image_shape[0]} x "
                          f"{image_shape[1]} image to nothing")
    return {"convs": convs, "image_shape": tuple(image_shape)}


def make_policy(
    config: PPOConfig, action_space: ActionSpace, image_shape: tuple[int, int, int] | None = None
) -> Policy:
    """The policy `config` describes for an env with `action_space` (whose flat observation is an image of
    `image_shape`, if it declares one); raises ConfigError when they do not fit."""
    kind = resolve_distribution(config, action_space.discrete)
    dim = action_space.dim
    state_dependent = config.state_dependent_std
    outputs = {"categorical": dim, "beta": 2 * dim}.get(kind, 2 * dim if state_dependent else dim)
    free_log_std = dim if kind in ("gaussian", "tanh_gaussian") and not state_dependent else 0
    common = dict(
        actor_outputs=outputs,
        free_log_std=free_log_std,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
        shared_torso=config.shared_torso,
        layer_norm=config.layer_norm,
        hidden_gain=config.hidden_gain,
        actor_head_gain=config.actor_head_gain,
        critic_head_gain=config.critic_head_gain,
        dtype=jnp.dtype(config.compute_dtype),
        **cnn_torso(config, image_shape),
    )
    if config.memory == "none":
        network: ActorCritic | RecurrentActorCritic = ActorCritic(**common)
    else:
        network = RecurrentActorCritic(memory=config.memory, memory_size=config.memory_size, **common)
    return Policy(network, action_space, kind, state_dependent, config.normalize_obs, config.obs_clip)
