"""Action distributions as small pytrees of arrays: sample, log_prob, entropy, mode.

Each works on a single state or any batch of them; the event dimension of a continuous action is the
last axis.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


@flax.struct.dataclass
class Categorical:
    logits: jax.Array

    def _log_probs(self) -> jax.Array:
        return jax.nn.log_softmax(self.logits, axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits, axis=-1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        idx = jnp.expand_dims(action.astype(jnp.int32), -1)
        return jnp.take_along_axis(self._log_probs(), idx, axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = self._log_probs()
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, axis=-1)


@flax.struct.dataclass
class DiagGaussian:
    mean: jax.Array
    log_std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self) -> jax.Array:
        log_std = jnp.broadcast_to(self.log_std, self.mean.shape)
        return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)

    def mode(self) -> jax.Array:
        return self.mean


Distribution = Categorical | DiagGaussian
