"""The actor-critic network and the policy factory that turns an action space and a config into a
distribution over actions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from purejaxppo.config import PPOConfig, resolve_distribution
from purejaxppo.distributions import Beta, Categorical, DiagGaussian, Distribution, TanhGaussian, squash
from purejaxppo.envs import ActionSpace

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "swish": nn.swish,
    "gelu": nn.gelu,
}
MIN_STD = 1e-3  # floor of a state-dependent std, so the log prob stays bounded


def orthogonal(scale: float) -> nn.initializers.Initializer:
    """flax's orthogonal initializer, drawn one matrix at a time under vmap (a `lax.map` over the batch),
    with the same values.

    Batched, its QR is a LAPACK kernel that splits the batch over XLA's CPU thread pool and blocks
    until the pieces are done; two such kernels of independent layers, run side by side, can take
    every thread of a small pool and wait on each other for ever (jaxlib 0.10, 2 CPU cores: a vmapped
    init of 64 seeds hung every time). One matrix at a time runs no pieces on the pool.
    """
    base = nn.initializers.orthogonal(scale)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        @jax.custom_batching.custom_vmap
        def draw(k: jax.Array) -> jax.Array:
            return base(k, shape, dtype)

        @draw.def_vmap
        def _draw_batched(axis_size: int, in_batched: list[bool], k: jax.Array) -> tuple[jax.Array, bool]:
            # only called with the key batched: vmap over an unbatched key never reaches this rule
            return jax.lax.map(draw, k), True

        return draw(key)

    return init


class Torso(nn.Module):
    """Hidden Dense layers with orthogonal init, optional layer norm, and the activation."""

    hidden_sizes: Sequence[int]
    activation: str
    gain: float
    layer_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = nn.Dense(width, kernel_init=orthogonal(self.gain))(x)
            x = act(nn.LayerNorm()(x) if self.layer_norm else x)
        return x


def _head(size: int, gain: float) -> nn.Dense:
    return nn.Dense(size, kernel_init=orthogonal(gain))


class ActorCritic(nn.Module):
    """Actor and critic heads on separate torsos (default) or one shared torso.

    The actor head emits `actor_outputs` numbers: logits, means (+ std inputs when state-dependent), or
    the two Beta concentrations. A state-independent log std is a free parameter of its own.
    """

    actor_outputs: int
    free_log_std: int  # size of the state-independent log-std parameter; 0 for none
    hidden_sizes: Sequence[int]
    activation: str
    shared_torso: bool = False
    layer_norm: bool = False
    hidden_gain: float = 2.0**0.5
    actor_head_gain: float = 0.01
    critic_head_gain: float = 1.0

    def setup(self) -> None:
        torso = lambda: Torso(self.hidden_sizes, self.activation, self.hidden_gain, self.layer_norm)  # noqa: E731
        self.actor_torso = torso()
        if not self.shared_torso:
            self.critic_torso = torso()
        self.actor_head = _head(self.actor_outputs, self.actor_head_gain)
        self.critic_head = _head(1, self.critic_head_gain)
        if self.free_log_std:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.free_log_std,))

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array]:
        """(actor head output, free log std or None, value)."""
        head = self.actor_head(self.actor_torso(obs))
        log_std = jnp.broadcast_to(self.log_std, head.shape[:-1] + self.log_std.shape) if self.free_log_std else None
        return head, log_std, self.value(obs)

    def value(self, obs: jax.Array) -> jax.Array:
        torso = self.actor_torso if self.shared_torso else self.critic_torso
        return self.critic_head(torso(obs))[..., 0]


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the trainer needs to act: the network, how its outputs form a distribution, and how a
    sampled action becomes the action the env receives."""

    network: ActorCritic
    action_space: ActionSpace
    kind: str  # categorical, gaussian, tanh_gaussian or beta
    state_dependent_std: bool = False

    def init(self, key: jax.Array, obs_shape: tuple[int, ...]) -> dict:
        return self.network.init(key, jnp.zeros(obs_shape, jnp.float32))

    def distribution(self, head: jax.Array, log_std: jax.Array | None) -> Distribution:
        if self.kind == "categorical":
            return Categorical(head)
        low, high = self.action_space.low, self.action_space.high
        if self.kind == "beta":
            x_alpha, x_beta = jnp.split(head, 2, axis=-1)
            return Beta.from_unconstrained(x_alpha, x_beta, low, high)
        if self.state_dependent_std:
            head, std_input = jnp.split(head, 2, axis=-1)
            log_std = jnp.log(nn.softplus(std_input) + MIN_STD)
        if self.kind == "tanh_gaussian":
            return TanhGaussian(head, log_std, low, high)
        return DiagGaussian(head, log_std)

    def __call__(self, params: dict, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        head, log_std, value = self.network.apply(params, obs)
        return self.distribution(head, log_std), value

    def value(self, params: dict, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs, method=ActorCritic.value)

    def action_std(self, dist: Distribution) -> jax.Array:
        """Per-component std of a continuous policy: the Gaussian's (pre-squash for tanh_gaussian), or
        the rescaled Beta's."""
        if isinstance(dist, Beta):
            total = dist.alpha + dist.beta
            return jnp.sqrt(dist.alpha * dist.beta / (total**2 * (total + 1.0))) * (dist.high - dist.low)
        return jnp.exp(dist.log_std)

    def env_action(self, action: jax.Array) -> jax.Array:
        """The action the env receives. The log prob keeps the raw sample: a Gaussian sample is
        clipped for the env only, and a tanh-Gaussian's pre-squash sample is squashed here."""
        if self.kind == "categorical":
            return action
        low, high = self.action_space.low, self.action_space.high
        if self.kind == "tanh_gaussian":
            return squash(action, low, high)
        return jnp.clip(action, low, high)


def make_policy(config: PPOConfig, action_space: ActionSpace) -> Policy:
    kind = resolve_distribution(config, action_space.discrete)
    dim = action_space.dim
    state_dependent = config.state_dependent_std
    outputs = {"categorical": dim, "beta": 2 * dim}.get(kind, 2 * dim if state_dependent else dim)
    free_log_std = dim if kind in ("gaussian", "tanh_gaussian") and not state_dependent else 0
    network = ActorCritic(
        actor_outputs=outputs,
        free_log_std=free_log_std,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
        shared_torso=config.shared_torso,
        layer_norm=config.layer_norm,
        hidden_gain=config.hidden_gain,
        actor_head_gain=config.actor_head_gain,
        critic_head_gain=config.critic_head_gain,
    )
    return Policy(network, action_space, kind, state_dependent)
