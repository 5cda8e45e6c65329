"""Envs by name or as objects: a small registry of env families, each found by its name's prefix in its own
module, imported only when a name of that family is used (a gymnax user never imports Brax or MuJoCo);
names the user registers; import paths to the user's own envs; and env objects given from Python.

| name                        | family                                        | module              |
|-----------------------------|-----------------------------------------------|---------------------|
| `CartPole-v1`, ...          | gymnax                                        | `envs.gymnax`       |
| `brax/<name>`               | Brax                                          | `envs.brax`         |
| `playground/<Task>`         | MuJoCo Playground's DM Control suite on MJX   | `envs.playground`   |
| `craftax/<name>`            | Craftax and Craftax-Classic                   | `envs.craftax`      |
| `jumanji/<name>`            | Jumanji's combinatorial and grid tasks        | `envs.jumanji`      |
| `xminigrid/<name>`          | XLand-MiniGrid's MiniGrid and XLand tasks     | `envs.xminigrid`    |
| `package.module:Name`       | the user's own env, built with env_kwargs     | `envs.custom`       |
| a name given `register_env` | the user's own env, from its factory          | `envs.custom`       |
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

from purejaxppo.envs import custom
from purejaxppo.envs.base import (
    ActionSpace,
    Env,
    EnvStep,
    Family,
    HiddenObs,
    ObjectFamily,
    action_masks,
    image_shape,
    one_line,
    step_all,
)
from purejaxppo.errors import ConfigError

__all__ = ["ActionSpace", "Env", "EnvStep", "Family", "HiddenObs", "ObjectFamily", "action_masks", "image_shape",
           "known_envs", "make_env", "register_env", "step_all"]

# name prefix -> (module, the extra that installs its library, or None when it is a dependency)
FAMILIES: dict[str, tuple[str, str | None]] = {
    "brax/": ("purejaxppo.envs.brax", None),
    "playground/": ("purejaxppo.envs.playground", "playground"),
    "craftax/": ("purejaxppo.envs.craftax", "craftax"),
    "jumanji/": ("purejaxppo.envs.jumanji", "jumanji"),
    "xminigrid/": ("purejaxppo.envs.xminigrid", "xminigrid"),
    "": ("purejaxppo.envs.gymnax", None),  # names without a prefix
}
# Packages that declare envs for the CLI: `[project.entry-points."purejaxppo.envs"] MyEnv-v0 = "pkg.mod:MyEnv"`
ENTRY_POINT_GROUP = "purejaxppo.envs"

_registered: dict[str, Callable[..., Any]] = {}


def register_env(name: str, factory: Callable[..., Any]) -> None:
    """Make `name` an env that `make_env`, the configs and `purejaxppo envs` know: `factory(**env_kwargs)`
    builds it, as any kind of env `make_env` accepts as an object. For the CLI, register it in a
    package's `purejaxppo.envs` entry points, or name it by import path (`env: "pkg.module:MyEnv"`)."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"register_env: name must be a non-empty string without surrounding spaces, got {name!r}")
    if ":" in name:
        raise ConfigError(f"register_env: '{name}' contains ':', which marks an import path")
    if not callable(factory):
        raise ConfigError(f"register_env: the factory for '{name}' is a {type(factory).__name__}, not callable")
    if _builtin(name):
        raise ConfigError(f"register_env: '{name}' is already an env of purejaxppo's families")
    _registered[name] = factory


def _builtin(name: str) -> bool:
    prefix = _prefix(name)
    try:
        return name in _module(prefix, name).names()
    except ConfigError:  # its family is not installed
        return False


def _factories() -> dict[str, Any]:
    """Registered names: factories given to register_env, and packages' entry points (loaded when used)."""
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**points, **_registered}


def _factory(name: str, target: Any) -> Any:
    if not isinstance(target, importlib.metadata.EntryPoint):
        return target
    try:
        return target.load()
    except Exception as err:  # the package's own error, in one line
        raise ConfigError(f"env: {name}: its entry point {target.value} cannot be loaded: {one_line(err)}") from err


def _prefix(name: str) -> str:
    return next(p for p in FAMILIES if name.startswith(p))


def _module(prefix: str, name: str) -> Family:
    module, extra = FAMILIES[prefix]
    try:
        return importlib.import_module(module) if extra is None else _with_extra(module, extra)
    except ModuleNotFoundError as err:
        if extra is None:
            raise ConfigError(f"env: {name}: its library is not installed ({err})") from err
        raise ConfigError(f"env: {name} needs the {extra} extra, which is not installed ({err}): "
                          f"pip install 'purejaxppo[{extra}]'") from err
    except Exception as err:  # an installed library that fails to import
        raise ConfigError(f"env: {name}: its library fails to import: {one_line(err)}") from err


def _with_extra(module: str, extra: str) -> Any:
    family = importlib.import_module(module)
    family.names()  # imports the extra's library
    return family


def known_envs() -> list[str]:
    """Every env name of the installed families, then the registered names."""
    names = []
    for prefix in ("", *(p for p in FAMILIES if p)):
        try:
            names += _module(prefix, prefix).names()
        except ConfigError:
            continue
    return names + sorted(_factories())


def missing_families() -> list[str]:
    """`prefix: pip install ...` for each family whose extra is not installed."""
    out = []
    for prefix, (_, extra) in FAMILIES.items():
        try:
            _module(prefix, prefix)
        except ConfigError as err:
            out.append(f"{prefix}<name>: pip install 'purejaxppo[{extra}]'" if extra else str(err))
    return out


def _family_for(name: str) -> Family:
    """The family module of a built-in name, after checking the name (one line with suggestions if unknown)."""
    prefix = _prefix(name)
    family = _module(prefix, name)
    family.refuse(name)
    if name in family.names():
        return family
    known = known_envs()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"env: unknown environment '{name}'; known: {', '.join(known)}{hint}; or give your own env's "
                      f"import path, 'package.module:EnvClass'")


def make_env(env: str | Any, env_kwargs: dict[str, Any] | None = None, obs_mask: tuple[int, ...] = ()) -> Env:
    """The env `env` names (see the table above) built with `env_kwargs`, or an env object adapted, with
    the observation components `obs_mask` lists hidden. Raises ConfigError for anything that does not
    fit, before anything compiles."""
    env_kwargs = dict(env_kwargs or {})
    if not isinstance(env, str):
        if env_kwargs:
            raise ConfigError("env_kwargs: an env object is already built, so it takes no env_kwargs")
        made = custom.adapt(env)
    elif env.startswith(custom.OBJECT_PREFIX):
        raise ConfigError(f"env: this run trained an env object given from Python "
                          f"({env.removeprefix(custom.OBJECT_PREFIX)}), which a config cannot rebuild; pass the "
                          f"same env again (env=...), or name it by import path ('package.module:EnvClass')")
    elif env in (factories := _factories()):
        made = custom.build(_factory(env, factories[env]), env_kwargs, env)
    elif custom.is_import_path(env):
        made = custom.load(env, env_kwargs)
    else:
        made = _family_for(env).make(env, env_kwargs)
    return HiddenObs(made, tuple(obs_mask)) if obs_mask else made


def label(env: str | Any) -> str:
    """What a config's `env` records: the name itself, or for an env object its class (see custom.object_label)."""
    if isinstance(env, str):
        return env
    return custom.object_label(env)
