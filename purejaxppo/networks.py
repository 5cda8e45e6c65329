"""The actor-critic network: MLP torsos with orthogonal init, and the actor and critic heads.

It knows nothing of configs, envs or distributions; `policy.py` builds it and reads its outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "swish": nn.swish,
    "gelu": nn.gelu,
}


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
