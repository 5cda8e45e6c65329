"""Action distributions as small pytrees of arrays: sample, log_prob, entropy, mode.

Each works on a single state or any batch of them; the event dimension of a continuous action is the
last axis. Every `entropy` takes an optional PRNG key (or one per state) so callers can treat all distributions
alike; only those without a closed form (TanhGaussian) use it.

Each also owns its action semantics: `env_action` turns a raw sample (what `log_prob` takes) into
the action an env steps with (clipped, squashed or as it is), `deterministic_action` is the env action
of the mode, and the continuous ones give their per-component `std`.

All but the Beta also sample from given noise (`sample_from`), for a program that cannot draw its own (an
exported policy): their `NOISE` says which, uniform in (0, 1) for the categoricals (the Gumbel-max
trick) or standard normal for the Gaussians, one value per logit or action component.
"""

from __future__ import annotations

import itertools
import math

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, digamma

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
# Keeps Beta log probs finite for actions on (or rounded onto) the bounds; 1 - 1e-6 is still < 1 in float32.
_BETA_EPS = 1e-6


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`logits` with the actions `mask` marks illegal (False) at the dtype's lowest finite value, so they
    get probability exactly 0 without the infinities that make `0 * log 0` NaN. Where every action is
    masked, every logit is that value and the distribution is uniform, never NaN."""
    return logits if mask is None else jnp.where(mask, logits, jnp.finfo(logits.dtype).min)


@flax.struct.dataclass
class Categorical:
    """A Categorical over the last axis of `logits`. With a `mask` (bool, the logits' shape; True where
    an action is legal), illegal actions have probability 0: they are never sampled and count in no
    entropy or KL, and a state with one legal action has entropy 0."""

    logits: jax.Array
    mask: jax.Array | None = None

    def _log_probs(self) -> jax.Array:
        return jax.nn.log_softmax(masked_logits(self.logits, self.mask), axis=-1)

    def _over_legal(self, terms: jax.Array) -> jax.Array:
        """The sum of per-action `terms` over the legal actions."""
        return jnp.sum(terms if self.mask is None else jnp.where(self.mask, terms, 0.0), axis=-1)

    NOISE = "uniform"

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, masked_logits(self.logits, self.mask), axis=-1)

    def sample_from(self, uniform: jax.Array) -> jax.Array:
        """A sample driven by `uniform` (the logits' shape, in (0, 1)): argmax(logits + Gumbel noise)."""
        return jnp.argmax(masked_logits(self.logits, self.mask) - jnp.log(-jnp.log(uniform)), axis=-1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        idx = jnp.expand_dims(action.astype(jnp.int32), -1)
        return jnp.take_along_axis(self._log_probs(), idx, axis=-1)[..., 0]

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Exact entropy over the legal actions; `key` is ignored."""
        logp = self._log_probs()
        return -self._over_legal(jnp.exp(logp) * logp)

    def kl(self, other: Categorical) -> jax.Array:
        """KL(self || other), over the actions legal under `self`'s mask."""
        logp = self._log_probs()
        return self._over_legal(jnp.exp(logp) * (logp - other._log_probs()))

    def mode(self) -> jax.Array:
        return jnp.argmax(masked_logits(self.logits, self.mask), axis=-1)

    def env_action(self, sample: jax.Array) -> jax.Array:
        return sample

    def deterministic_action(self) -> jax.Array:
        return self.mode()


@flax.struct.dataclass
class MultiCategorical:
    """Independent Categoricals, one per component of a MultiDiscrete action: `logits` (and the optional
    `mask`) hold each component's `nvec[i]` entries one after the other on the last axis, and an action
    is the int vector of the components' choices. Log probs, entropies and KLs are the components' sums."""

    logits: jax.Array
    nvec: tuple[int, ...] = flax.struct.field(pytree_node=False)
    mask: jax.Array | None = None

    def _split(self, x: jax.Array) -> list[jax.Array]:
        """Each component's part of the last axis of `x` (shaped as the logits)."""
        return jnp.split(x, list(itertools.accumulate(self.nvec))[:-1], axis=-1)

    def components(self) -> list[Categorical]:
        masks = [None] * len(self.nvec) if self.mask is None else self._split(self.mask)
        return [Categorical(lg, m) for lg, m in zip(self._split(self.logits), masks)]

    NOISE = "uniform"

    def sample(self, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(self.nvec))
        return jnp.stack([c.sample(k) for c, k in zip(self.components(), keys)], axis=-1)

    def sample_from(self, uniform: jax.Array) -> jax.Array:
        """A sample driven by `uniform` (the logits' shape, in (0, 1)), each component from its own part."""
        return jnp.stack([c.sample_from(u) for c, u in zip(self.components(), self._split(uniform))], axis=-1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        return sum(c.log_prob(action[..., i]) for i, c in enumerate(self.components()))

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Exact entropy, the components' sum; `key` is ignored."""
        return sum(c.entropy() for c in self.components())

    def kl(self, other: MultiCategorical) -> jax.Array:
        return sum(c.kl(o) for c, o in zip(self.components(), other.components()))

    def mode(self) -> jax.Array:
        return jnp.stack([c.mode() for c in self.components()], axis=-1)

    def env_action(self, sample: jax.Array) -> jax.Array:
        return sample

    def deterministic_action(self) -> jax.Array:
        return self.mode()


@flax.struct.dataclass
class DiagGaussian:
    """An unbounded diagonal Gaussian. Samples may fall outside a Box's bounds (`low`, `high`, when
    given): `env_action` clips the action the env steps with, while log probs stay those of the
    unclipped sample."""

    mean: jax.Array
    log_std: jax.Array
    low: jax.Array | None = None
    high: jax.Array | None = None

    NOISE = "normal"

    def sample(self, key: jax.Array) -> jax.Array:
        return self.sample_from(jax.random.normal(key, self.mean.shape, self.mean.dtype))

    def sample_from(self, normal: jax.Array) -> jax.Array:
        """The sample `normal` (standard normal, the mean's shape) stands for: mean + std * normal."""
        return self.mean + jnp.exp(self.log_std) * normal

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Exact entropy; `key` is ignored."""
        log_std = jnp.broadcast_to(self.log_std, self.mean.shape)
        return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)

    def mode(self) -> jax.Array:
        return self.mean

    def env_action(self, sample: jax.Array) -> jax.Array:
        return sample if self.low is None else jnp.clip(sample, self.low, self.high)

    def deterministic_action(self) -> jax.Array:
        return self.env_action(self.mode())

    def std(self) -> jax.Array:
        return jnp.broadcast_to(jnp.exp(self.log_std), self.mean.shape)


def _log_one_minus_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): the direct form hits log(0) once tanh
    rounds to +-1 (|u| >~ 8 in float32), this one stays finite and accurate."""
    return 2.0 * (_LOG_2 - u - jax.nn.softplus(-2.0 * u))


def squash(u: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """tanh, rescaled from (-1, 1) to the Box (low, high)."""
    return low + (jnp.tanh(u) + 1.0) * (high - low) / 2.0


@flax.struct.dataclass
class TanhGaussian:
    """A diagonal Gaussian over a pre-squash variable u, mapped to the Box [low, high] by
    a = low + (tanh(u) + 1) (high - low) / 2.

    `sample` and `mode` return u, not the env action, and `log_prob` takes u: storing u keeps log
    probs exact (inverting tanh on an action rounded to the bound is not). Use `squash` to get the
    action to step the env with. `low`/`high` broadcast against the event shape.
    """

    mean: jax.Array
    log_std: jax.Array
    low: jax.Array
    high: jax.Array

    def _log_det_jacobian(self, u: jax.Array) -> jax.Array:
        """log |da/du| summed over the event axis (bounds broadcast to u before the sum)."""
        return jnp.sum(_log_one_minus_tanh_sq(u) + jnp.log((self.high - self.low) / 2.0), axis=-1)

    def _gaussian(self) -> DiagGaussian:
        return DiagGaussian(self.mean, self.log_std)

    NOISE = "normal"

    def sample(self, key: jax.Array) -> jax.Array:
        """A raw pre-tanh sample u."""
        return self._gaussian().sample(key)

    def sample_from(self, normal: jax.Array) -> jax.Array:
        """The raw pre-tanh sample u that `normal` (standard normal, the mean's shape) stands for."""
        return self._gaussian().sample_from(normal)

    def log_prob(self, u: jax.Array) -> jax.Array:
        """Log density of the squashed action squash(u), given the pre-squash u."""
        return self._gaussian().log_prob(u) - self._log_det_jacobian(u)

    def squash(self, u: jax.Array) -> jax.Array:
        """The env action for a pre-squash u, inside [low, high]."""
        return squash(u, self.low, self.high)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Gaussian entropy + E[log |det J|]. The expectation has no closed form: with a key it is a
        one-sample reparameterised estimate (as Brax's PPO does), so it is unbiased and differentiable;
        without one it is evaluated at u = mean. `key` may also be one typed key per state (an array of
        the batch shape): each state's estimate then depends on its own key only, however the batch is cut."""
        if key is None:
            u = self.mean
        elif jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape and key.shape == self.mean.shape[:-1]:
            event = self.mean.shape[-1:]
            noise = jax.vmap(lambda k: jax.random.normal(k, event, self.mean.dtype))(key.reshape(-1))
            u = self.mean + self.std() * noise.reshape(self.mean.shape)
        else:
            u = self.sample(key)
        return self._gaussian().entropy() + self._log_det_jacobian(u)

    def mode(self) -> jax.Array:
        """The raw mean; squash(mode()) is the deterministic action."""
        return self.mean

    def env_action(self, u: jax.Array) -> jax.Array:
        return self.squash(u)

    def deterministic_action(self) -> jax.Array:
        return self.squash(self.mean)

    def std(self) -> jax.Array:
        """The pre-squash Gaussian's std."""
        return jnp.broadcast_to(jnp.exp(self.log_std), self.mean.shape)


@flax.struct.dataclass
class Beta:
    """A Beta(alpha, beta) on [0, 1] rescaled to the Box [low, high]; `sample` returns actions already in
    [low, high] and `log_prob` takes them. `low`/`high` broadcast against the event shape."""

    alpha: jax.Array
    beta: jax.Array
    low: jax.Array
    high: jax.Array

    @classmethod
    def from_unconstrained(
        cls, x_alpha: jax.Array, x_beta: jax.Array, low: jax.Array | float, high: jax.Array | float
    ) -> Beta:
        """alpha = softplus(x_alpha) + 1, beta = softplus(x_beta) + 1: both > 1 keeps the density
        unimodal and zero at the bounds (Chou et al. 2017, "Improving Stochastic Policy Gradients in
        Continuous Control with Deep Reinforcement Learning using the Beta Distribution")."""
        return cls(
            jax.nn.softplus(x_alpha) + 1.0, jax.nn.softplus(x_beta) + 1.0, jnp.asarray(low), jnp.asarray(high)
        )

    def _shape(self) -> tuple[int, ...]:
        return jnp.broadcast_shapes(jnp.shape(self.alpha), jnp.shape(self.beta))

    def _rescale(self, x: jax.Array) -> jax.Array:
        return self.low + x * (self.high - self.low)

    NOISE = None  # its sampler draws gammas by rejection, which no fixed noise input stands for

    def sample(self, key: jax.Array) -> jax.Array:
        x = jax.random.beta(key, self.alpha, self.beta, self._shape(), jnp.result_type(self.alpha))
        return self._rescale(x)

    def log_prob(self, action: jax.Array) -> jax.Array:
        x = jnp.clip((action - self.low) / (self.high - self.low), _BETA_EPS, 1.0 - _BETA_EPS)
        log_pdf = (self.alpha - 1.0) * jnp.log(x) + (self.beta - 1.0) * jnp.log1p(-x) - betaln(self.alpha, self.beta)
        # the rescaling correction is added per dimension, before the sum, so scalar bounds broadcast
        return jnp.sum(log_pdf - jnp.log(self.high - self.low), axis=-1)

    def entropy(self, key: jax.Array | None = None) -> jax.Array:
        """Exact entropy of the rescaled distribution; `key` is ignored."""
        a, b = self.alpha, self.beta
        h = betaln(a, b) - (a - 1.0) * digamma(a) - (b - 1.0) * digamma(b) + (a + b - 2.0) * digamma(a + b)
        return jnp.sum(h + jnp.log(self.high - self.low), axis=-1)

    def mode(self) -> jax.Array:
        """The rescaled mean alpha / (alpha + beta), not the true mode: the mode is undefined at
        alpha = beta = 1 and jumps to a bound when a parameter drops below 1, whereas the mean is a smooth,
        always-interior function of the parameters."""
        return self._rescale(self.alpha / (self.alpha + self.beta))

    def env_action(self, sample: jax.Array) -> jax.Array:
        """Samples already lie in the bounds; the clip only catches rounding onto them."""
        return jnp.clip(sample, self.low, self.high)

    def deterministic_action(self) -> jax.Array:
        return self.env_action(self.mode())

    def std(self) -> jax.Array:
        """The rescaled distribution's std."""
        total = self.alpha + self.beta
        return jnp.sqrt(self.alpha * self.beta / (total**2 * (total + 1.0))) * (self.high - self.low)


Distribution = Categorical | MultiCategorical | DiagGaussian | TanhGaussian | Beta
