"""gymnax: the family of names without a prefix (CartPole-v1, Breakout-MinAtar, ...), and the adapter for
any gymnax `Environment` object, including old ones whose `step` returns five values.

gymnax 1.x's `step` returns `obs, state, reward, terminated, truncated, info`, auto-resets, and keeps
the finished episode's last observation in `info["final_observation"]`. gymnax before 1.0 returned
`obs, state, reward, done, info`, with its time limit inside `done`: there the adapter takes `done`
as termination (it cannot tell a time limit apart) and resets the env itself where it is set.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs.base import (
    ActionSpace,
    EnvStep,
    abstract_action,
    abstract_key,
    channels_image,
    described,
    flat,
    flat_shape,
    image_of,
    traced,
    where_done,
)
from purejaxppo.errors import ConfigError, notify, unknown_key

# gymnax envs whose constructor downloads a dataset: purejaxppo loads nothing from the internet.
DOWNLOADING_ENVS = ("MNISTBandit-bsuite",)
# Words in an env parameter's name that make it a length, count or limit, which must be positive.
LENGTH_WORDS = ("step", "length", "size", "num", "count", "limit", "max", "horizon")


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is used, then imports it."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_gymnax() -> Any:
    """gymnax, with the plotting modules that its renderers import at the top (seaborn and pyplot: over a
    second of a cold start on 2 cores) imported only when something uses them."""
    for name in ("seaborn", "matplotlib.pyplot"):
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = _Deferred(name)
    import gymnax

    return gymnax



def action_space_of(space: Any) -> ActionSpace:
    """A gymnax Discrete or Box space as an ActionSpace."""
    if hasattr(space, "n"):
        return ActionSpace.discrete_actions(int(space.n))
    return ActionSpace.box(space.low, space.high, tuple(space.shape))


class GymnaxEnv:
    """A gymnax `Environment` with its params behind the adapter interface. Observations (any pytree of
    arrays, e.g. MinAtar's boolean images) are flattened to one float32 vector; one that is an image
    declares its `image_shape`, for a CNN torso."""

    def __init__(self, env: Any, params: Any = None, name: str | None = None, old_api: bool = False) -> None:
        self._env = env
        self._params = env.default_params if params is None else params
        self.name = name or type(env).__name__
        self.old_api = old_api
        self.action_space = action_space_of(env.action_space(self._params))
        obs = jax.eval_shape(lambda k: self._env.reset(k, self._params), abstract_key())[0]
        self.image_shape = image_of(obs)
        self.observation_shape = flat_shape(obs)

    @classmethod
    def from_name(cls, name: str, env_kwargs: dict[str, Any] | None = None) -> GymnaxEnv:
        """A registered gymnax env, its params overridden by `env_kwargs` (each checked against its default)."""
        env, params = import_gymnax().make(name)
        return cls(env, with_params(params, env_kwargs or {}, name), name)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self._env.reset(key, self._params)
        return flat(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        if self.old_api:
            return self._step_old(key, state, action)
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, self._params)
        return EnvStep(
            obs=flat(obs),
            state=state,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool),
            final_obs=flat(info["final_observation"]),
        )

    def render(self, state: Any) -> np.ndarray:
        """One frame: gymnasium's drawing of the classic-control tasks, or the observation's channels in
        colour where it is an image (MinAtar); refused for the rest."""
        try:
            from gymnax.visualize import vis_gym
        except ImportError as err:
            raise ConfigError(f"render: drawing {self.name} needs {err.name}: pip install 'purejaxppo[video]'") from None
        if self.name in vis_gym.SUPPORTED_GYM_ENVS:
            if getattr(self, "_gym", None) is None:  # one gymnasium env for every frame (making one takes ms)
                # it draws with pygame, off screen: no window, no sound, no greeting
                for name, value in (("SDL_VIDEODRIVER", "dummy"), ("SDL_AUDIODRIVER", "dummy"),
                                    ("PYGAME_HIDE_SUPPORT_PROMPT", "1")):
                    os.environ.setdefault(name, value)
                self._gym = vis_gym.gym.make(self.name, render_mode="rgb_array")
                self._gym.reset()
                vis_gym.set_gym_params(self._gym.unwrapped, self.name, self._params)
            self._gym.unwrapped.state = vis_gym.get_gym_state(state, self.name)
            if self.name == "Pendulum-v1":
                self._gym.unwrapped.last_u = np.asarray(state.last_u, np.float64)
            return np.asarray(self._gym.render(), np.uint8)
        if self.image_shape is not None and hasattr(self._env, "get_obs"):
            return channels_image(self._env.get_obs(state, self._params))
        raise ConfigError(f"render: {self.name} has no drawing (gymnax draws the classic-control tasks, and "
                          f"image observations are shown as they are)")

    def _step_old(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        # The reset here makes a fresh start certain whether or not the old env auto-resets; its
        # final observation never matters, because `done` counts as termination.
        k_step, k_reset = jax.random.split(key)
        obs, state, reward, done, _ = self._env.step(k_step, state, action, self._params)
        done = jnp.asarray(done, bool)
        fresh_obs, fresh = self._env.reset(k_reset, self._params)
        return EnvStep(
            obs=jnp.where(done, flat(fresh_obs), flat(obs)),
            state=where_done(done, fresh, state),
            reward=jnp.asarray(reward, jnp.float32),
            terminated=done,
            truncated=jnp.zeros((), bool),
            final_obs=flat(obs),
        )


def with_params(params: Any, env_kwargs: dict[str, Any], name: str) -> Any:
    """gymnax env params with `env_kwargs` set, each checked against its default's kind."""
    fields = {f.name for f in dataclasses.fields(params)}
    changes = {}
    for key, value in env_kwargs.items():
        if key not in fields:
            raise unknown_key(key, fields, what=f"env_kwargs parameter of {name}")
        changes[key] = _like(f"env_kwargs.{key}", value, getattr(params, key))
    return params.replace(**changes)


def _like(name: str, value: Any, default: Any) -> Any:
    """`value` as an env parameter of its default's kind: refused when of another kind or length, so a
    typo is a ConfigError here instead of a traceback from inside the traced env."""
    default = np.asarray(default)
    kind = default.dtype.kind  # b, i, u or f
    if kind not in "biuf":  # e.g. a tuple of None: not a value a config can give
        raise ConfigError(f"{name}: this parameter is not a number or a flag (its default is {default.tolist()!r}), "
                          f"so env_kwargs cannot set it")

    def fits(v: Any) -> bool:
        if kind == "b":
            return isinstance(v, bool)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return isinstance(v, int) if kind in "iu" else math.isfinite(v)

    is_list = isinstance(value, (list, tuple))
    if default.ndim == 0:
        ok = not is_list and fits(value)
    else:
        ok = is_list and len(value) == default.size and all(fits(v) for v in value)
    if not ok:
        expected = {"b": "a bool", "i": "an integer", "u": "an integer", "f": "a finite number"}[kind]
        if default.ndim:
            expected = f"a list of {default.size} values, each {expected}"
        raise ConfigError(f"{name}: expected {expected} like its default {default.tolist()!r}, got {value!r}")
    if kind in "iu" and default.ndim == 0 and default > 0 and value < 1 and any(w in name for w in LENGTH_WORDS):
        raise ConfigError(f"{name}: a length, count or limit, so it must be >= 1; got {value!r}")
    return jnp.asarray(value, default.dtype) if default.ndim else value


def names() -> list[str]:
    return [n for n in import_gymnax().registered_envs if n not in DOWNLOADING_ENVS]


def refuse(name: str) -> None:
    """Refuse a gymnax env that would download its data."""
    if name in DOWNLOADING_ENVS:
        raise ConfigError(f"env: {name} downloads its dataset when it is made, and purejaxppo loads nothing from "
                          f"the internet at run time")


def make(name: str, env_kwargs: dict[str, Any]) -> GymnaxEnv:
    return GymnaxEnv.from_name(name, env_kwargs)


def is_gymnax_like(obj: Any) -> bool:
    """Whether `obj` has a gymnax Environment's API (its own class or a subclass of gymnax's)."""
    return all(callable(getattr(obj, a, None)) for a in ("reset", "step", "action_space", "observation_space")) \
        and hasattr(obj, "default_params")


def owns(obj: Any) -> bool:
    """A gymnax Environment, or the `(env, params)` pair `gymnax.make` returns."""
    pair = isinstance(obj, tuple) and len(obj) == 2
    return is_gymnax_like(obj[0] if pair else obj)


def adapt(obj: Any, label: str) -> GymnaxEnv:
    """A gymnax-style env object (or an `(env, params)` pair) as an Env: its `step` traced once to tell the
    1.x six-value API from the old five-value one, which is said once."""
    env, params = obj if isinstance(obj, tuple) else (obj, None)
    adapted = traced(label, "step", lambda: wrap(env, params, label))
    if adapted.old_api:
        notify(f"{label}.step returns five values (gymnax before 1.0): its `done` is taken as termination, so an "
               f"episode cut by a time limit is not bootstrapped", once=True)
    return adapted


def wrap(obj: Any, params: Any = None, name: str | None = None) -> GymnaxEnv:
    """`obj` with `params` (its default ones when None) behind the adapter interface."""
    params = obj.default_params if params is None else params
    key = abstract_key()
    _, state = jax.eval_shape(lambda k: obj.reset(k, params), key)
    action = abstract_action(action_space_of(obj.action_space(params)))
    out = jax.eval_shape(lambda k, s, a: obj.step(k, s, a, params), key, state, action)
    if not isinstance(out, tuple) or len(out) not in (5, 6):
        raise ConfigError(f"env: {name or type(obj).__name__}.step returns {described(out)}; a gymnax env returns "
                          f"obs, state, reward, terminated, truncated, info (or, before gymnax 1.0, five values)")
    return GymnaxEnv(obj, params, name, old_api=len(out) == 5)
