"""MuJoCo Playground: `playground/<Task>`, the DM Control suite tasks on MJX (CartpoleBalance, CheetahRun,
WalkerWalk, HopperHop, ...). Needs the `playground` extra.

Playground's env is a Brax-style state env (`reset(rng) -> State`, `step(State, action) -> State`) that
never ends an episode by time: its `done` is termination only, so the time limit comes from the shared
state-env adapter, which reports it as truncation. Its suite's models ship inside the wheel; its
locomotion and manipulation robots come from the MuJoCo Menagerie, which Playground clones from GitHub
at first use, so those tasks are refused here: nothing is downloaded at run time.

env_kwargs are overrides of the task's own config (Playground's `get_default_config`): `episode_length`
(default 1000) and `action_repeat` (default 1) size the time limit as in Brax, `impl` picks MJX's
implementation (default `jax`, which runs on any device; Playground's own default, `warp`, needs an
NVIDIA GPU), and the rest (e.g. `ctrl_dt`, `sim_dt`) go to the task.
"""

from __future__ import annotations

from typing import Any

import jax

from purejaxppo.envs.base import one_line
from purejaxppo.envs.brax import StateEnv, positive_int
from purejaxppo.errors import ConfigError, unknown_key

PREFIX = "playground/"
IMPLS = ("jax", "warp")


def _suite() -> Any:
    from mujoco_playground import dm_control_suite

    return dm_control_suite


def names() -> list[str]:
    return [PREFIX + n for n in _suite().ALL_ENVS]


def _downloading() -> tuple[str, ...]:
    from mujoco_playground import locomotion, manipulation

    return tuple(locomotion.ALL_ENVS) + tuple(manipulation.ALL_ENVS)


def refuse(name: str) -> None:
    """Refuse a Playground task that would download its assets."""
    if name.removeprefix(PREFIX) in _downloading():
        raise ConfigError(f"env: {name} loads its robot from the MuJoCo Menagerie, which Playground downloads "
                          f"from GitHub at first use, and purejaxppo loads nothing from the internet at run time; "
                          f"the DM Control suite tasks ship with Playground (see `purejaxppo envs`)")


def _task_config(name: str, env_kwargs: dict[str, Any]) -> Any:
    config = _suite().get_default_config(name.removeprefix(PREFIX))
    known = set(config.keys())
    for key, value in env_kwargs.items():
        if key not in known:
            raise unknown_key(key, known, what=f"env_kwargs parameter of {name}")
    positive_int(env_kwargs, "episode_length", int(config.episode_length), name)
    positive_int(env_kwargs, "action_repeat", int(config.action_repeat), name)
    impl = env_kwargs.get("impl", "jax")
    if impl not in IMPLS:
        raise ConfigError(f"env_kwargs.impl: unknown MJX implementation {impl!r}; known: {', '.join(IMPLS)}")
    if impl == "warp" and jax.default_backend() != "gpu":
        raise ConfigError(f"env_kwargs.impl: warp runs MJX on an NVIDIA GPU only; this is a {jax.default_backend()} "
                          f"(use impl: jax)")
    for key in ("ctrl_dt", "sim_dt"):
        value = env_kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"env_kwargs.{key}: a time step in seconds, > 0; got {value!r}")
    if env_kwargs.get("vision"):
        raise ConfigError(f"env_kwargs.vision: {name}'s pixel observations need Madrona's batch renderer, which "
                          f"purejaxppo does not drive")
    try:
        config.update_from_flattened_dict({**env_kwargs, "impl": impl})
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"env_kwargs: {name} rejected {env_kwargs}: {one_line(err)}") from err
    return config


class PlaygroundEnv(StateEnv):
    """A Playground DM Control suite task on MJX behind the adapter interface."""

    def __init__(self, name: str, env_kwargs: dict[str, Any] | None = None) -> None:
        config = _task_config(name, env_kwargs or {})
        try:
            env = _suite().load(name.removeprefix(PREFIX), config=config)
        except Exception as err:  # the task's own refusal of its config, in one line
            raise ConfigError(f"env_kwargs: {name} rejected {env_kwargs}: {one_line(err)}") from err
        super().__init__(env, int(config.episode_length), int(config.action_repeat), name)

    def mj_model(self) -> Any:
        return self.base.mj_model

    def positions(self, state: Any) -> tuple[Any, Any]:
        return state.data.qpos, state.data.qvel


def make(name: str, env_kwargs: dict[str, Any]) -> PlaygroundEnv:
    return PlaygroundEnv(name, env_kwargs)
