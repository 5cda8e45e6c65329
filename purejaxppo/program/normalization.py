"""Running observation statistics, merged batch by batch with Chan et al.'s parallel update."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RunningStats:
    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningStats:
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.zeros((), jnp.float32))

    def update(self, batch: jax.Array) -> RunningStats:
        """Merge a batch whose last axes match the statistics' shape; leading axes are samples."""
        batch = batch.reshape((-1,) + self.mean.shape)
        n = jnp.asarray(batch.shape[0], jnp.float32)
        batch_mean = batch.mean(axis=0)
        batch_var = batch.var(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        return RunningStats(mean, m2 / total, total)

    def normalize(self, obs: jax.Array, eps: float = 1e-8) -> jax.Array:
        return (obs - self.mean) / jnp.sqrt(self.var + eps)
