"""The env adapter interface the trainer sees, and its gymnax and Brax implementations.

An adapter is unbatched: the trainer vmaps it. `step` auto-resets and reports the two end flags
separately, with the last observation of a finished episode, so GAE can bootstrap on truncation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import types
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

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


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is used, then imports it."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _import_gymnax() -> Any:
    """gymnax, with the plotting modules that its renderers import at the top (seaborn and pyplot: over a
    second of a cold start on 2 cores) imported only when something uses them."""
    for name in ("seaborn", "matplotlib.pyplot"):
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = _Deferred(name)
    import gymnax

    return gymnax


class GymnaxEnv:
    """gymnax 1.x behind the adapter interface. Observations are flattened to float32 vectors."""

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None) -> None:
        gymnax = _import_gymnax()

        self.name = name
        self._env, params = gymnax.make(name)
        fields = {f.name for f in dataclasses.fields(params)}
        changes = {}
        for key, value in (env_kwargs or {}).items():
            if key not in fields:
                raise unknown_key_error(key, fields, what=f"env_kwargs parameter of {name}")
            changes[key] = _like(f"env_kwargs.{key}", value, getattr(params, key))
        self._params = params.replace(**changes)
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


def _like(name: str, value: Any, default: Any) -> Any:
    """`value` as an env parameter of its default's kind: refused when of another kind or length, so a
    typo is a ConfigError here instead of a traceback from inside the traced env."""
    default = np.asarray(default)
    kind = default.dtype.kind  # b, i, u or f

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


# Words in an env parameter's name that make it a length, count or limit, which must be positive.
LENGTH_WORDS = ("step", "length", "size", "num", "count", "limit", "max", "horizon")


BRAX_PREFIX = "brax/"
BRAX_BACKENDS = ("generalized", "positional", "spring", "mjx")
_BRAX_WRAPPER_KWARGS = {"backend", "episode_length", "action_repeat"}


class BraxEnv:
    """A Brax env behind the adapter interface, named `brax/<name>` (any name in `brax.envs`).

    env_kwargs: `backend` (one of BRAX_BACKENDS; default `positional`, or `generalized` for envs
    that reject positional, e.g. swimmer), `episode_length` (default 1000), `action_repeat`
    (default 1); any other key goes to the env's constructor (e.g. `ctrl_cost_weight`, `n_frames`).
    As in Brax, `episode_length` counts base-env steps, so an episode lasts
    episode_length / action_repeat agent steps, and the reward is summed over the repeats.

    Only Brax's EpisodeWrapper is used: its AutoResetWrapper would replay one cached initial
    state, so `step` draws a fresh initial state from the step's key when an episode ends.
    """

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None) -> None:
        from brax.envs.wrappers.training import EpisodeWrapper

        self.name = name
        base, episode_length, action_repeat = _make_brax_base(name, env_kwargs or {})
        self._env = EpisodeWrapper(base, episode_length, action_repeat)
        size = int(base.action_size)
        self.action_space = ActionSpace(
            discrete=False,
            shape=(size,),
            low=-jnp.ones((size,), jnp.float32),
            high=jnp.ones((size,), jnp.float32),
        )
        # `observation_size` would run an un-jitted reset; tracing the shape is near free.
        obs = jax.eval_shape(self.reset, jax.random.key(0))[0]
        self.observation_shape = tuple(obs.shape)

    @staticmethod
    def _flat(obs: Any) -> jax.Array:
        # Some envs (e.g. `fast` with obs_mode) return dict observations; concatenate them.
        return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(obs)])

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        state = self._env.reset(key)
        return self._flat(state.obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        stepped = self._env.step(state, action)
        done = stepped.done > 0
        # EpisodeWrapper sets truncation = 1 - done_of_env at the time limit, so an env that
        # terminates on the last step reports termination only.
        truncated = stepped.info["truncation"] > 0
        obs, fresh = self.reset(key)
        final_obs = self._flat(stepped.obs)
        return EnvStep(
            obs=jnp.where(done, obs, final_obs),
            state=jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped),
            reward=jnp.asarray(stepped.reward, jnp.float32),
            terminated=done & ~truncated,
            truncated=truncated,
            final_obs=final_obs,
        )

    def render_html(self, pipeline_states: list[Any]) -> str:
        """Brax's viewer page for a trajectory. It loads the viewer's scripts from a CDN when opened."""
        from brax.io import html

        return html.render(self._env.sys, pipeline_states)


def _brax_kwarg_names(env_class: type) -> set[str]:
    """Constructor keywords of a Brax env class, following `**kwargs` up to PipelineEnv."""
    import inspect

    names: set[str] = set()
    for cls in env_class.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {"self", "sys"}


def _brax_int(env_kwargs: dict[str, Any], key: str, default: int, minimum: int, name: str) -> int:
    value = env_kwargs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"env_kwargs.{key}: must be an integer >= {minimum} for {name}, got {value!r}")
    return value


def _make_brax_base(name: str, env_kwargs: dict[str, Any]) -> tuple[Any, int, int]:
    """Validate env_kwargs and build the unwrapped Brax env (loads the model; compiles nothing)."""
    import brax.envs

    env_class = brax.envs._envs[name.removeprefix(BRAX_PREFIX)]
    known = _brax_kwarg_names(env_class) | _BRAX_WRAPPER_KWARGS
    for key in env_kwargs:
        if key not in known:
            raise unknown_key_error(key, known, what=f"env_kwargs parameter of {name}")
    episode_length = _brax_int(env_kwargs, "episode_length", 1000, 1, name)
    action_repeat = _brax_int(env_kwargs, "action_repeat", 1, 1, name)
    rest = {k: v for k, v in env_kwargs.items() if k not in _BRAX_WRAPPER_KWARGS}
    backend = env_kwargs.get("backend")
    if backend is not None and backend not in BRAX_BACKENDS:
        raise ConfigError(f"env_kwargs.backend: unknown Brax backend {backend!r}; known: {', '.join(BRAX_BACKENDS)}")
    try:
        if backend is None:
            try:
                return env_class(backend="positional", **rest), episode_length, action_repeat
            except ValueError:  # e.g. swimmer supports generalized only
                backend = "generalized"
        return env_class(backend=backend, **rest), episode_length, action_repeat
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())  # ConfigError messages are one line
        raise ConfigError(f"env_kwargs: {name} rejected {env_kwargs}: {message}") from err


def _brax_names() -> list[str]:
    import brax.envs

    # brax 0.14 has no public listing of its registry
    return [BRAX_PREFIX + n for n in brax.envs._envs]


# gymnax envs whose constructor downloads a dataset: purejaxppo loads nothing from the internet.
DOWNLOADING_ENVS = ("MNISTBandit-bsuite",)


def _gymnax_names() -> list[str]:
    gymnax = _import_gymnax()
    return [n for n in gymnax.registered_envs if n not in DOWNLOADING_ENVS]


def known_envs() -> list[str]:
    return _gymnax_names() + _brax_names()


def _check_name(name: str) -> None:
    import difflib

    if name in DOWNLOADING_ENVS:
        raise ConfigError(f"env: {name} downloads its dataset when it is made, and purejaxppo loads nothing from "
                          f"the internet at run time")
    # Look only in the family the name belongs to, so gymnax users never import brax.
    if name in (_brax_names() if name.startswith(BRAX_PREFIX) else _gymnax_names()):
        return
    known = known_envs()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"env: unknown environment '{name}'; known: {', '.join(known)}{hint}")


def check_env(name: str, env_kwargs: dict[str, Any]) -> bool:
    """Raise ConfigError for an unknown env or env parameter, without compiling anything. Returns
    whether the env's actions are discrete."""
    if name.startswith(BRAX_PREFIX):
        _check_name(name)
        _make_brax_base(name, env_kwargs or {})
        return False
    return make_env(name, env_kwargs).action_space.discrete


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


def make_env(name: str, env_kwargs: dict[str, Any] | None = None, obs_mask: tuple[int, ...] = ()) -> Env:
    """The env `name` with `env_kwargs`, with the observation components `obs_mask` lists hidden."""
    _check_name(name)
    env: Env = BraxEnv(name, env_kwargs) if name.startswith(BRAX_PREFIX) else GymnaxEnv(name, env_kwargs)
    return HiddenObs(env, tuple(obs_mask)) if obs_mask else env
