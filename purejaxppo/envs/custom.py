"""The user's own env: an object given from Python, an import path `package.module:Name` in the config, or
a factory given to `register_env`. Each is adapted by what it is, then traced once (`jax.eval_shape`,
nothing compiles) to check that its outputs fit, so a mistake is one ConfigError line before training.

Three kinds are recognised, in this order:
- purejaxppo's own protocol (`envs.base.Env`): `observation_shape`, `action_space` (an ActionSpace),
  `reset(key) -> (obs, state)` and `step(key, state, action) -> EnvStep` (or the same six values as a
  tuple), with `step` resetting by itself where an episode ended; adapted here;
- a gymnax `Environment` (1.x, or older with a five-value `step`), or a factory returning gymnax's
  `(env, params)` pair: the gymnax family owns and adapts it;
- an env with Brax's state API, a Brax `PipelineEnv` or a Playground `MjxEnv`: the Brax family's.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs import brax, gymnax
from purejaxppo.envs.base import (
    USER_ERRORS,
    ActionSpace,
    Env,
    EnvStep,
    ObjectFamily,
    abstract_action,
    abstract_key,
    described,
    one_line,
    traced,
)
from purejaxppo.envs.gymnax import is_gymnax_like, with_params
from purejaxppo.errors import ConfigError

OBJECT_PREFIX = "object:"
# the families whose library's env objects may be given from Python, asked in turn whether one is theirs
OBJECT_FAMILIES: tuple[ObjectFamily, ...] = (gymnax, brax)


def is_import_path(name: str) -> bool:
    return ":" in name and not name.startswith(OBJECT_PREFIX)


def object_label(env: Any) -> str:
    """What a run's config records for an env object given from Python: its class, which says what was
    trained but cannot rebuild it (its constructor's arguments are unknown)."""
    cls = type(env)
    return f"{OBJECT_PREFIX}{cls.__module__}.{cls.__qualname__}"


def load(path: str, env_kwargs: dict[str, Any]) -> Env:
    """The env at import path `module:attr` (attr may be dotted), built with `env_kwargs` when it is a class
    or a factory. The current directory is searched after the installed packages, as `python -m` does."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + attr.split(".")):
        raise ConfigError(f"env: '{path}' is not an import path like 'package.module:EnvClass'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except USER_ERRORS as err:  # the module's own error, whatever it is (a sys.exit too), in one line
        raise ConfigError(f"env: cannot import {module_name} for '{path}': {one_line(err)}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"env: {module_name} has no attribute '{attr}' (for '{path}')")
        target = getattr(target, part)
    return build(target, env_kwargs, path)


def build(target: Any, env_kwargs: dict[str, Any], label: str) -> Env:
    """`target(**env_kwargs)` when `target` is a class or a factory, else `target` itself, adapted. For a
    gymnax env class, the env_kwargs its constructor does not take but its params have (e.g.
    `max_steps_in_episode`) are set on its params, as for the gymnax envs named in a config."""
    if not (inspect.isclass(target) or inspect.isroutine(target) or hasattr(target, "func")):  # partials too
        if env_kwargs:
            raise ConfigError(f"env_kwargs: {label} is an env object, not a class or factory, so it takes no "
                              f"env_kwargs")
        return adapt(target, label)
    taken, rest = _split(target, env_kwargs)
    try:
        obj = target(**taken)
    except USER_ERRORS as err:
        raise ConfigError(f"env: {label}(**env_kwargs) with env_kwargs {env_kwargs} failed: {one_line(err)}") from err
    params = None
    if rest:
        fields = set(getattr(getattr(obj, "default_params", None), "__dataclass_fields__", ()))
        unknown = sorted(set(rest) - fields)
        if unknown or not is_gymnax_like(obj):
            where = f" nor its params ({', '.join(sorted(fields))})" if is_gymnax_like(obj) else ""
            raise ConfigError(f"env_kwargs.{unknown[0] if unknown else sorted(rest)[0]}: neither {label}'s "
                              f"constructor ({', '.join(_taken_names(target)) or 'no keywords'}){where} takes it")
        params = with_params(obj.default_params, rest, label)
    return adapt(obj if params is None else (obj, params), label)


def _taken_names(target: Any) -> list[str]:
    params = inspect.signature(target).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _split(target: Any, env_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the env_kwargs `target`'s signature takes, the others); all taken when it takes **kwargs or has no
    signature to read."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return env_kwargs, {}
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return env_kwargs, {}
    names = set(_taken_names(target))
    return {k: v for k, v in env_kwargs.items() if k in names}, {k: v for k, v in env_kwargs.items() if k not in names}


def adapt(obj: Any, label: str | None = None) -> Env:
    """Any env object of a recognised kind as an Env (purejaxppo's protocol here; gymnax's and Brax's state
    API by their families), checked by tracing reset and step once alone and once vmapped."""
    label = label or object_label(obj).removeprefix(OBJECT_PREFIX)
    if isinstance(getattr(obj, "action_space", None), ActionSpace) and hasattr(obj, "observation_shape"):
        env: Env = ProtocolEnv(obj, label)
    else:
        family = next((f for f in OBJECT_FAMILIES if f.owns(obj)), None)
        if family is None:
            raise ConfigError(f"env: {label} fits none of the env kinds purejaxppo trains: {_missing(obj)}")
        env = family.adapt(obj, label)
    if callable(getattr(obj, "action_mask", None)) and not env.action_space.masked:
        how = ("declare it: ActionSpace.discrete_actions(n, masked=True), or multi_discrete(nvec, masked=True)"
               if isinstance(env, ProtocolEnv) else "give it purejaxppo's protocol (envs.Env) with a masked "
               "ActionSpace, which says which actions are legal in each state")
        raise ConfigError(f"env: {label} has an action_mask method, but its action space is not masked, so "
                          f"training would never see the mask; {how}")
    check(env, label)
    return env


def _missing(obj: Any) -> str:
    """What `obj` lacks for each kind, e.g. `a gymnax Environment (missing default_params)`."""
    has = lambda a: hasattr(obj, a)  # noqa: E731
    can = lambda a: callable(getattr(obj, a, None))  # noqa: E731
    space = isinstance(getattr(obj, "action_space", None), ActionSpace)
    kinds = {
        "purejaxppo's protocol": {
            "reset": can("reset"), "step": can("step"), "observation_shape": has("observation_shape"),
            "action_space as a purejaxppo.envs.ActionSpace": space,
        },
        "a gymnax Environment": {a: can(a) for a in ("reset", "step", "action_space", "observation_space")}
        | {"default_params": has("default_params")},
        "a Brax or Playground env": {"reset": can("reset"), "step": can("step"), "action_size": has("action_size")},
    }
    return "; ".join(f"{kind} (missing {', '.join(a for a, ok in needs.items() if not ok)})"
                     for kind, needs in kinds.items())


def _numeric(value: Any, what: str) -> jax.Array:
    if not isinstance(value, (jax.Array, np.ndarray, np.generic, bool, int, float)):
        raise ConfigError(f"{what} is a {type(value).__name__}, not an array")
    value = jnp.asarray(value)
    if value.dtype.kind not in "biuf":
        raise ConfigError(f"{what} has dtype {value.dtype}, not a number")
    return value


class ProtocolEnv:
    """An env that follows purejaxppo's protocol, with its outputs cast to the dtypes training takes (float32
    observations and rewards, bool flags) and its observations of any rank raveled, as the suites'
    adapters ravel theirs (one of rank 3 declares itself an image, unless the env says otherwise); any
    other kind of output is a ConfigError."""

    def __init__(self, env: Any, label: str) -> None:
        self.env = env
        self.name = label
        declared = env.observation_shape
        if not isinstance(declared, (tuple, list)) or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in declared):
            raise ConfigError(f"env: {label}.observation_shape must be a tuple of positive ints, like (4,) or "
                              f"(10, 10, 3); got {declared!r}")
        self.declared_shape = tuple(int(s) for s in declared)
        self.observation_shape = (int(np.prod(self.declared_shape)),)
        image = getattr(env, "image_shape", None)
        if image is None and len(self.declared_shape) == 3:
            image = self.declared_shape
        if image is not None and (len(tuple(image)) != 3 or int(np.prod(image)) != self.observation_shape[0]):
            raise ConfigError(f"env: {label}.image_shape {tuple(image)} is not an (H, W, C) image of its "
                              f"observation's {self.observation_shape[0]} components")
        self.image_shape = None if image is None else tuple(int(s) for s in image)
        self.action_space = env.action_space
        if callable(getattr(env, "step_without_reset", None)):
            self.step_without_reset = self._step_without_reset

    def __getattr__(self, attr: str) -> Any:
        if attr == "env":
            raise AttributeError(attr)
        return getattr(self.env, attr)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        out = self.env.reset(key)
        if not isinstance(out, tuple) or len(out) != 2:
            raise ConfigError(f"env: {self.name}.reset must return (obs, state), got {described(out)}")
        obs, state = out
        return self._flat(obs, "reset's obs"), state

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        return self._cast(self.env.step(key, state, action), "step")

    def _step_without_reset(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        return self._cast(self.env.step_without_reset(key, state, action), "step_without_reset")

    def _cast(self, out: Any, method: str) -> EnvStep:
        if not isinstance(out, tuple) or len(out) != len(EnvStep._fields):
            raise ConfigError(f"env: {self.name}.{method} must return an EnvStep({', '.join(EnvStep._fields)}), "
                              f"got {described(out)}")
        out = EnvStep(*out)
        field = lambda name, dtype: _numeric(getattr(out, name), f"env: {self.name}.{method}'s {name}").astype(dtype)  # noqa: E731
        return EnvStep(obs=self._flat(out.obs, f"{method}'s obs"), state=out.state,
                       reward=field("reward", jnp.float32), terminated=field("terminated", bool),
                       truncated=field("truncated", bool), final_obs=self._flat(out.final_obs, f"{method}'s final_obs"))

    def _flat(self, obs: Any, what: str) -> jax.Array:
        obs = _numeric(obs, f"env: {self.name}.{what}")
        if obs.shape != self.declared_shape:
            raise ConfigError(f"env: {self.name}: {what} has shape {obs.shape}, but its observation_shape is "
                              f"{self.declared_shape}")
        return obs.astype(jnp.float32).reshape(self.observation_shape)


def check_action_space(space: ActionSpace, label: str) -> None:
    """Refuse an action space no policy can act in: no actions, a component without choices, a Box whose
    bounds are not numbers or cross (every action would be clipped to one value)."""
    if space.discrete:
        if space.nvec and min(space.nvec) < 1:
            raise ConfigError(f"env: {label}: its MultiDiscrete action space {list(space.nvec)} has a component "
                              f"with no choice; each needs at least 1")
        if space.n < 1:
            raise ConfigError(f"env: {label}: its action space has {space.n} actions; it needs at least 1")
        return
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not space.shape or min(space.shape) < 1:
        raise ConfigError(f"env: {label}: its Box action space has shape {space.shape}; it needs at least one "
                          f"component")
    if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
        i = int(np.argmax(np.isnan(low) | np.isnan(high) | (low > high)))
        raise ConfigError(f"env: {label}: its Box action space has low {low.ravel()[i]} and high {high.ravel()[i]} "
                          f"at component {i}; each needs low <= high")


def check(env: Env, label: str) -> None:
    """Trace `env.reset` and `env.step` once alone and once under `jax.vmap` over two envs, as training
    runs them, and refuse outputs that do not fit the protocol: shapes other than the declared ones,
    non-scalar rewards or flags, or a state whose structure, shapes or dtypes change in a step (the
    rollout's scan carries it)."""
    check_action_space(env.action_space, label)
    key = abstract_key()
    action = abstract_action(env.action_space)
    obs, state = traced(label, "reset", lambda: jax.eval_shape(env.reset, key))
    out = traced(label, "step", lambda: jax.eval_shape(env.step, key, state, action))
    keys = abstract_key(2)
    actions = jax.ShapeDtypeStruct((2, *action.shape), action.dtype)
    try:
        jax.eval_shape(lambda k, a: jax.vmap(env.step)(k, jax.vmap(env.reset)(k)[1], a), keys, actions)
    except ConfigError:
        raise
    except USER_ERRORS as err:
        raise ConfigError(f"env: {label} fails under jax.vmap, which training steps many envs with: "
                          f"{one_line(err)}") from err
    shape = tuple(env.observation_shape)
    wrong = [f"reset's obs has shape {obs.shape}"] if obs.shape != shape else []
    wrong += [f"step's {f} has shape {getattr(out, f).shape}" for f in ("obs", "final_obs")
              if getattr(out, f).shape != shape]
    if wrong:
        raise ConfigError(f"env: {label}: {wrong[0]}, but its observation_shape is {shape}")
    for name in ("reward", "terminated", "truncated"):
        if getattr(out, name).shape != ():
            raise ConfigError(f"env: {label}.step's {name} has shape {getattr(out, name).shape}; it must be a "
                              f"scalar (training vmaps one env)")
    if env.action_space.masked:
        if not callable(getattr(env, "action_mask", None)):
            raise ConfigError(f"env: {label}: its action space is masked, but it has no action_mask(state) method")
        mask = traced(label, "action_mask", lambda: jax.eval_shape(env.action_mask, state))
        if getattr(mask, "shape", None) != (env.action_space.n,) or mask.dtype != bool:
            raise ConfigError(f"env: {label}.action_mask returns {getattr(mask, 'dtype', '?')}"
                              f"{list(getattr(mask, 'shape', []))}; it must be bool[{env.action_space.n}], one "
                              f"entry per action")
    before, after = jax.tree.flatten_with_path(state)[0], jax.tree.flatten_with_path(out.state)[0]
    if jax.tree.structure(state) != jax.tree.structure(out.state):
        raise ConfigError(f"env: {label}.step returns a state of another structure than reset's: "
                          f"{jax.tree.structure(out.state)} after {jax.tree.structure(state)}")
    for (path, a), (_, b) in zip(before, after):
        if (a.shape, a.dtype) != (b.shape, b.dtype):
            raise ConfigError(f"env: {label}.step changes the state's {jax.tree_util.keystr(path) or 'value'} from "
                              f"{a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}; a state keeps its shapes and "
                              f"dtypes")
