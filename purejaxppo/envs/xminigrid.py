"""XLand-MiniGrid: `xminigrid/<name>`, the MiniGrid tasks ported to JAX (MiniGrid-Empty-8x8,
MiniGrid-DoorKey-5x5, MiniGrid-FourRooms, ...). Needs the `xminigrid` extra.

xminigrid steps dm_env-style TimeSteps and never resets itself, so the adapter resets where an episode
ended, seeding the new one with the step's key, and keeps the finished episode's last observation as
`final_obs`. The flags come from `Environment.step` (xminigrid/environment.py): it sets `terminated`
from `check_goal` and `truncated` from `step_num == max_steps`, then `step_type` to LAST when either
holds and `discount` to 0 only when the goal was reached. So LAST with discount 0 is a termination,
and LAST with discount 1 a time limit only; a goal reached on the last allowed step has discount 0 and
counts as terminated alone (no bootstrap past a reached goal).

The XLand-MiniGrid-R* tasks play a ruleset drawn from a benchmark that `xminigrid.load_benchmark`
downloads from Hugging Face; without one their goal is empty and never rewards, so they are refused.
env_kwargs set `max_steps` (the time limit) and `view_size` (the odd side of the agent's square view).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.envs.base import (
    ActionSpace,
    EnvStep,
    abstract_key,
    flat,
    flat_shape,
    image_of,
    where_done,
)
from purejaxppo.envs.gymnax import with_params
from purejaxppo.errors import ConfigError, unknown_key

PREFIX = "xminigrid/"
# Prefix of the tasks whose rulesets come from a downloaded benchmark.
BENCHMARK_PREFIX = "XLand-MiniGrid-"
# Params env_kwargs may set; the others are fixed by the task's name (height, width) or unused here.
SETTABLE = ("max_steps", "view_size")


def _xminigrid() -> Any:
    import xminigrid

    return xminigrid


def names() -> list[str]:
    return [PREFIX + n for n in _xminigrid().registered_environments() if not n.startswith(BENCHMARK_PREFIX)]


def refuse(name: str) -> None:
    """Refuse an XLand task, whose rulesets would be downloaded."""
    if name.removeprefix(PREFIX).startswith(BENCHMARK_PREFIX):
        raise ConfigError(f"env: {name} plays rulesets from an XLand-MiniGrid benchmark, which xminigrid downloads "
                          f"from Hugging Face (without one its goal is empty and never rewards), and purejaxppo "
                          f"loads nothing from the internet at run time; the MiniGrid-* tasks are built in (see "
                          f"`purejaxppo envs`)")


def _params(name: str, env_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The task's env and its params with `env_kwargs` set, each checked."""
    env, params = _xminigrid().make(name.removeprefix(PREFIX))
    fields = {f.name for f in dataclasses.fields(params)}
    for key in env_kwargs:
        if key not in fields:
            raise unknown_key(key, SETTABLE, what=f"env_kwargs parameter of {name}")
        if key not in SETTABLE:
            why = ("the grid's size is part of the task's name: pick the task of the size you want"
                   if key in ("height", "width") else "not one purejaxppo lets you set")
            raise ConfigError(f"env_kwargs.{key}: a parameter of {name} that is fixed ({why}); settable: "
                              f"{', '.join(SETTABLE)}")
    params = with_params(params, env_kwargs, name)
    # The agent sits at the centre of its view's bottom row, which only an odd width has.
    if params.view_size < 3 or params.view_size % 2 == 0:
        raise ConfigError(f"env_kwargs.view_size: the side of the agent's square view, odd and >= 3; "
                          f"got {params.view_size!r}")
    return env, params


class XMiniGridEnv:
    """An xminigrid `Environment` (wrapped or not) and its params behind the adapter interface. The state
    is xminigrid's TimeStep, which its `step` takes; observations are flattened to one float32 vector,
    and one that is an image (the symbolic (view, view, 2) grid, or any RGB wrapper's) declares its
    `image_shape`, for a CNN torso."""

    def __init__(self, env: Any, params: Any, name: str | None = None) -> None:
        self._env = env
        self._params = params
        self.name = name or type(env).__name__
        self.action_space = ActionSpace.discrete_actions(env.num_actions(params))
        obs = jax.eval_shape(lambda k: env.reset(params, k), abstract_key()).observation
        self.image_shape = image_of(obs)
        self.observation_shape = flat_shape(obs)

    @classmethod
    def from_name(cls, name: str, env_kwargs: dict[str, Any] | None = None) -> XMiniGridEnv:
        env, params = _params(name, env_kwargs or {})
        return cls(env, params, name)

    def render(self, state: Any) -> np.ndarray:
        """One frame: XLand-MiniGrid's own RGB drawing of the whole grid."""
        params = self._params.replace(render_mode="rgb_array") if hasattr(self._params, "render_mode") else self._params
        return np.asarray(self._env.render(params, state), np.uint8)

    def _reset(self, key: jax.Array) -> Any:
        # Without weak types, so the state a reset gives and the one a step gives have one pytree type.
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), self._env.reset(self._params, key))

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        timestep = self._reset(key)
        return flat(timestep.observation), timestep

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        timestep = self._env.step(self._params, state, action)
        last = timestep.last()
        terminated = last & (timestep.discount == 0)
        fresh = self._reset(key)
        new = where_done(last, fresh, timestep)
        return EnvStep(
            obs=flat(new.observation),
            state=new,
            reward=jnp.asarray(timestep.reward, jnp.float32),
            terminated=terminated,
            truncated=last & ~terminated,
            final_obs=flat(timestep.observation),
        )


def make(name: str, env_kwargs: dict[str, Any]) -> XMiniGridEnv:
    return XMiniGridEnv.from_name(name, env_kwargs)
