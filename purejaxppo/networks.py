"""The actor-critic network and the policy factory that turns an action space into a distribution."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from purejaxppo.config import PPOConfig
from purejaxppo.distributions import Categorical, DiagGaussian, Distribution
from purejaxppo.envs import ActionSpace

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "swish": nn.swish,
    "gelu": nn.gelu,
}


class MLP(nn.Module):
    """Hidden layers with orthogonal init (gain sqrt 2), then a linear head with its own gain."""

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str
    head_gain: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)))(x))
        return nn.Dense(self.out_size, kernel_init=nn.initializers.orthogonal(self.head_gain))(x)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs. The actor's output is the distribution's parameters.

    For a continuous action space the policy also owns a state-independent log std.
    """

    action_dim: int
    continuous: bool
    hidden_sizes: Sequence[int]
    activation: str

    def setup(self) -> None:
        self.actor = MLP(self.hidden_sizes, self.action_dim, self.activation, head_gain=0.01)
        self.critic = MLP(self.hidden_sizes, 1, self.activation, head_gain=1.0)
        if self.continuous:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def __call__(self, obs: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        head = self.actor(obs)
        value = self.value(obs)
        if not self.continuous:
            return (head,), value
        return (head, jnp.broadcast_to(self.log_std, head.shape)), value

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)[..., 0]


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the trainer needs to act: the network, how its outputs form a distribution, and how a
    sampled action becomes the action the env receives."""

    network: ActorCritic
    action_space: ActionSpace

    def init(self, key: jax.Array, obs_shape: tuple[int, ...]) -> dict:
        return self.network.init(key, jnp.zeros(obs_shape, jnp.float32))

    def __call__(self, params: dict, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        dist_params, value = self.network.apply(params, obs)
        if self.action_space.discrete:
            return Categorical(*dist_params), value
        return DiagGaussian(*dist_params), value

    def value(self, params: dict, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs, method=ActorCritic.value)

    def env_action(self, action: jax.Array) -> jax.Array:
        """The log prob keeps the unclipped sample; only the env sees the clipped action."""
        if self.action_space.discrete:
            return action
        return jnp.clip(action, self.action_space.low, self.action_space.high)


def make_policy(config: PPOConfig, action_space: ActionSpace) -> Policy:
    network = ActorCritic(
        action_dim=action_space.dim,
        continuous=not action_space.discrete,
        hidden_sizes=tuple(config.hidden_sizes),
        activation=config.activation,
    )
    return Policy(network, action_space)
