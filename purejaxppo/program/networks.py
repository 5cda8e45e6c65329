"""The actor-critic networks: MLP torsos (behind convolutions, for image observations) with orthogonal
init, an optional recurrent core, and the actor and critic heads.

Both networks take `(carry, obs)` and return `(actor head, free log std or None, value, carry)`; the
feedforward one's carry is the empty tuple. They know nothing of configs, envs or distributions;
`policy.py` builds them and reads their outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from purejaxppo.program import recurrent

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


def conv_output_shape(image_shape: Sequence[int], convs: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The (H, W, C) a stack of unpadded convolutions `(channels, kernel, stride)` makes of an image; a side
    below 1 means the image is too small for them."""
    height, width, channels = image_shape
    for out, kernel, stride in convs:
        height, width, channels = (height - kernel) // stride + 1, (width - kernel) // stride + 1, out
    return height, width, channels


def patches(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """Each unpadded `kernel` x `kernel` window of the images `x` [..., H, W, C] (every `stride`-th), its
    pixels' channels in row-major order on the last axis: [..., H', W', kernel * kernel * C]. A Dense layer
    on them is the convolution, with its kernel [kernel, kernel, C, out] raveled. As a convolution op, one
    training update of configs/breakout_minatar_cnn.yaml took 10x as long on the CPU (6.6 s against 0.67 s)."""
    height, width = (x.shape[-3] - kernel) // stride + 1, (x.shape[-2] - kernel) // stride + 1
    windows = [x[..., i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride, :]
               for i in range(kernel) for j in range(kernel)]
    return jnp.concatenate(windows, axis=-1)


class Torso(nn.Module):
    """Hidden Dense layers with orthogonal init, optional layer norm, and the activation; with `convs`,
    unpadded convolutions `(channels, kernel, stride)` first, over the flat observation reshaped to its
    `image_shape` (H, W, C), then flattened for the Dense layers."""

    hidden_sizes: Sequence[int]
    activation: str
    gain: float
    layer_norm: bool
    dtype: Any = jnp.float32  # of the computation; params are always float32
    convs: Sequence[tuple[int, int, int]] = ()
    image_shape: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        if self.convs:
            batch = x.shape[:-1]
            x = x.reshape(batch + tuple(self.image_shape))
            for channels, kernel, stride in self.convs:
                x = act(nn.Dense(channels, kernel_init=orthogonal(self.gain), dtype=self.dtype)(
                    patches(x, kernel, stride)))
            x = x.reshape(batch + (-1,))
        for width in self.hidden_sizes:
            x = nn.Dense(width, kernel_init=orthogonal(self.gain), dtype=self.dtype)(x)
            x = act(nn.LayerNorm(dtype=self.dtype)(x) if self.layer_norm else x)
        return x


def _head(size: int, gain: float, dtype: Any) -> nn.Dense:
    return nn.Dense(size, kernel_init=orthogonal(gain), dtype=dtype)


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
    dtype: Any = jnp.float32  # of the computation (bfloat16 for mixed precision); params are float32
    convs: Sequence[tuple[int, int, int]] = ()  # a CNN torso's (channels, kernel, stride) per layer
    image_shape: Sequence[int] | None = None  # the (H, W, C) the flat observation is, for the convolutions

    def setup(self) -> None:
        self.actor_torso = self.torso()
        if not self.shared_torso:
            self.critic_torso = self.torso()
        self.setup_heads()

    def torso(self) -> Torso:
        return Torso(self.hidden_sizes, self.activation, self.hidden_gain, self.layer_norm, self.dtype, self.convs,
                     self.image_shape)

    def setup_heads(self) -> None:
        self.actor_head = _head(self.actor_outputs, self.actor_head_gain, self.dtype)
        self.critic_head = _head(1, self.critic_head_gain, self.dtype)
        if self.free_log_std:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.free_log_std,))

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> None:
        return None  # a feedforward network carries nothing

    def __call__(self, carry: None, obs: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array, None]:
        head = self.actor_head(self.actor_torso(obs))
        return head, _log_std(self, head), self.value(carry, obs), carry

    def value(self, carry: None, obs: jax.Array) -> jax.Array:
        torso = self.actor_torso if self.shared_torso else self.critic_torso
        return self.critic_head(torso(obs))[..., 0]


def _log_std(net: nn.Module, head: jax.Array) -> jax.Array | None:
    return jnp.broadcast_to(net.log_std, head.shape[:-1] + net.log_std.shape) if net.free_log_std else None


def _per_gate(init: nn.initializers.Initializer, gates: int) -> nn.initializers.Initializer:
    """`init` drawn for each gate's square block of a `[H, gates x H]` kernel (flax's cells keep one
    orthogonal matrix per gate), through our orthogonal: flax's batched QR can hang a vmapped init."""

    def draw(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        size = shape[0]
        return jnp.concatenate([init(k, (size, size), dtype) for k in jax.random.split(key, gates)], axis=1)

    return draw


class Core(nn.Module):
    """A GRU or LSTM core: its input projection (applied to a whole sequence at once) and its step."""

    memory: str  # gru or lstm
    size: int
    dtype: Any = jnp.float32  # of the input projection; the recurrent step runs in the carry's float32

    def setup(self) -> None:
        gates = recurrent.CELLS[self.memory][1]
        self.input_projection = nn.Dense(gates * self.size, dtype=self.dtype)
        self.recurrent_kernel = self.param("recurrent_kernel", _per_gate(orthogonal(1.0), gates),
                                           (self.size, gates * self.size))
        self.recurrent_bias = self.param("recurrent_bias", nn.initializers.zeros, (gates * self.size,))

    def project(self, x: jax.Array) -> jax.Array:
        return self.input_projection(x)

    def __call__(self, carry: Any, projected: jax.Array) -> tuple[Any, jax.Array]:
        return recurrent.CELLS[self.memory][0](carry, projected, self.recurrent_kernel, self.recurrent_bias)


class RecurrentActorCritic(ActorCritic):
    """An MLP encoder (the torso), a GRU or LSTM core, then the actor and critic heads: one encoder and
    core shared by both heads, or one of each per head.

    The carry is a tuple with one core state per core. Besides one step (`__call__`), the pieces are
    separate methods, so a sequence replay encodes, projects and reads out every step at once and
    scans only the cores' recurrent products.
    """

    memory: str = "gru"  # or lstm
    memory_size: int = 128

    @property
    def num_cores(self) -> int:
        return 1 if self.shared_torso else 2

    def setup(self) -> None:
        self.encoders = [self.torso() for _ in range(self.num_cores)]
        self.cores = [Core(self.memory, self.memory_size, self.dtype) for _ in range(self.num_cores)]
        self.setup_heads()

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> tuple:
        zeros = jnp.zeros(tuple(batch_shape) + (self.memory_size,), jnp.float32)
        state = (zeros, zeros) if self.memory == "lstm" else zeros
        return (state,) * self.num_cores

    def encode(self, obs: jax.Array) -> tuple[jax.Array, ...]:
        """Each core's projected input: what the recurrent steps need of the observation."""
        return tuple(core.project(encoder(obs)) for encoder, core in zip(self.encoders, self.cores))

    def step(self, carry: tuple, features: tuple[jax.Array, ...]) -> tuple[tuple, tuple[jax.Array, ...]]:
        stepped = [core(c, x) for core, c, x in zip(self.cores, carry, features)]
        return tuple(c for c, _ in stepped), tuple(h for _, h in stepped)

    def heads(self, hidden: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array | None, jax.Array]:
        head = self.actor_head(hidden[0])
        return head, _log_std(self, head), self.critic_head(hidden[-1])[..., 0]

    def __call__(self, carry: tuple, obs: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array, tuple]:
        carry, hidden = self.step(carry, self.encode(obs))
        return (*self.heads(hidden), carry)

    def value(self, carry: tuple, obs: jax.Array) -> jax.Array:
        """The critic's value of `obs` seen after `carry`: its own encoder and core only."""
        _, hidden = self.cores[-1](carry[-1], self.cores[-1].project(self.encoders[-1](obs)))
        return self.critic_head(hidden)[..., 0]
