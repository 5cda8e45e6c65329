"""The env adapter interface the trainer sees, and its gymnax implementation.

An adapter is unbatched: the trainer vmaps it. `step` auto-resets and reports the two end flags
separately, with the last observation of a finished episode, so GAE can bootstrap on truncation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from purejaxppo.config import ConfigError, unknown_key_error


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
        return self.n if self.discrete else int(jnp.prod(jnp.array(self.shape)))


class EnvStep(NamedTuple):
    obs: jax.Array  # first obs of the next episode where the episode ended
    state: Any
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array  # obs the transition reached, before any reset


class Env(Protocol):
    observation_shape: tuple[int, ...]
    action_space: ActionSpace

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]: ...

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep: ...


class GymnaxEnv:
    """gymnax 1.x behind the adapter interface. Observations are flattened to float32 vectors."""

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None):
        import gymnax

        self.name = name
        self._env, params = gymnax.make(name)
        fields = {f.name for f in dataclasses.fields(params)}
        for key in env_kwargs or {}:
            if key not in fields:
                raise unknown_key_error(key, fields, what=f"env_kwargs parameter of {name}")
        self._params = params.replace(**(env_kwargs or {}))
        space = self._env.action_space(self._params)
        if hasattr(space, "n"):
            self.action_space = ActionSpace(discrete=True, n=int(space.n))
        else:
            self.action_space = ActionSpace(
                discrete=False,
                shape=tuple(space.shape),
                low=jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape),
                high=jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape),
            )
        obs_shape = self._env.observation_space(self._params).shape
        self.observation_shape = (int(jnp.prod(jnp.array(obs_shape))),)

    @staticmethod
    def _flat(obs: jax.Array) -> jax.Array:
        return jnp.reshape(obs, (-1,)).astype(jnp.float32)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self._env.reset(key, self._params)
        return self._flat(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, self._params)
        return EnvStep(
            obs=self._flat(obs),
            state=state,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool),
            final_obs=self._flat(info["final_observation"]),
        )


def known_envs() -> list[str]:
    import gymnax

    return list(gymnax.registered_envs)


def check_env(name: str, env_kwargs: dict[str, Any]) -> None:
    """Raise ConfigError for an unknown env or env parameter, without compiling anything."""
    make_env(name, env_kwargs)


def make_env(name: str, env_kwargs: dict[str, Any] | None = None) -> Env:
    known = known_envs()
    if name not in known:
        raise ConfigError(f"env: unknown environment '{name}'; known: {', '.join(known)}")
    return GymnaxEnv(name, env_kwargs)
