"""The env protocol the trainer sees, and the one wrapper every family shares (hidden observations).

An env is unbatched (the trainer vmaps it) and jittable. `step` auto-resets and reports the two end
flags separately, with the last observation of the finished episode, so GAE can bootstrap on
truncation. Each family's adapter lives in its own module and turns its library's API into this one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """A Discrete space (`n` actions) or a Box (`shape`, `low`, `high`)."""

    discrete: bool
    n: int = 0
    shape: tuple[int, ...] = ()
    low: Any = None
    high: Any = None

    @property
    def dim(self) -> int:
        """The number of logits (discrete) or of action components (continuous)."""
        return self.n if self.discrete else int(np.prod(self.shape))

    def describe(self) -> str:
        return f"{self.n} discrete actions" if self.discrete else f"a Box of shape {self.shape}"

    @classmethod
    def discrete_actions(cls, n: int) -> ActionSpace:
        return cls(discrete=True, n=int(n))

    @classmethod
    def box(cls, low: Any, high: Any, shape: tuple[int, ...]) -> ActionSpace:
        """A Box with bounds broadcast to `shape`, as float32 arrays."""
        shape = tuple(int(s) for s in shape)
        return cls(discrete=False, shape=shape, low=np.broadcast_to(np.asarray(low, np.float32), shape),
                   high=np.broadcast_to(np.asarray(high, np.float32), shape))


class EnvStep(NamedTuple):
    obs: jax.Array  # first obs of the next episode where the episode ended
    state: Any
    reward: jax.Array  # float32 scalar
    terminated: jax.Array  # bool scalar: the episode reached a terminal state (no bootstrap)
    truncated: jax.Array  # bool scalar: cut by a time limit (bootstrap on V(final_obs))
    final_obs: jax.Array  # obs the transition reached, before any reset


@runtime_checkable
class Env(Protocol):
    """What the trainer needs of an env. `observation_shape` is the float32 observation's shape;
    actions arrive as an int32 scalar (discrete) or a float32 array of `action_space.shape`."""

    observation_shape: tuple[int, ...]
    action_space: ActionSpace

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]: ...

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep: ...


class HiddenObs:
    """Any env with chosen components of its flat observation removed, so the policy never sees them:
    a partially observed version of a fully observed task. Everything else passes through."""

    def __init__(self, env: Env, hidden: tuple[int, ...]) -> None:
        size = int(np.prod(env.observation_shape))
        if len(env.observation_shape) != 1:
            raise ConfigError(f"obs_mask: needs a flat observation; this env's has shape {env.observation_shape}")
        outside = [i for i in hidden if not 0 <= i < size]
        if outside:
            raise ConfigError(f"obs_mask: index {outside[0]} is outside this env's {size} observation components "
                              f"(0..{size - 1})")
        self._keep = np.array([i for i in range(size) if i not in hidden], np.int32)
        if self._keep.size == 0:
            raise ConfigError(f"obs_mask: hides all {size} observation components, leaving the policy nothing")
        self.env = env
        self.observation_shape = (int(self._keep.size),)
        self.action_space = env.action_space

    def __getattr__(self, attr: str) -> Any:  # e.g. a Brax env's render_html
        if attr == "env":  # not set yet (or being copied): no recursion
            raise AttributeError(attr)
        return getattr(self.env, attr)

    def hide(self, obs: jax.Array) -> jax.Array:
        """The components of the wrapped env's (flat) observations the policy sees."""
        return obs[..., self._keep]

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self.env.reset(key)
        return self.hide(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        out = self.env.step(key, state, action)
        return out._replace(obs=self.hide(out.obs), final_obs=self.hide(out.final_obs))


def abstract_action(space: ActionSpace) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one action in `space`, for tracing an env's `step`."""
    return jax.ShapeDtypeStruct((), jnp.int32) if space.discrete else jax.ShapeDtypeStruct(tuple(space.shape),
                                                                                              jnp.float32)


def described(out: Any) -> str:
    """What an env method returned, for a message: `5 values` or `a dict`."""
    return f"{len(out)} values" if isinstance(out, tuple) else f"a {type(out).__name__}"


def flat(obs: Any) -> jax.Array:
    """An observation (an array, or any pytree of them, e.g. a dict) as one float32 vector, for an MLP."""
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(obs)])


def one_line(err: BaseException) -> str:
    """An exception as `Type: message` on one line, for a ConfigError that quotes a library's error."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
