"""Craftax: `craftax/<name>`, the open-world survival game and its smaller Classic version, each with a
symbolic (flat) or a pixel observation. Needs the `craftax` extra.

The adapter steps Craftax's no-auto-reset env (`make_craftax_env_from_name(name, auto_reset=False)`)
through its `step_env`, and resets itself, splitting the step's key as Craftax's own auto-reset base
(`environment_bases.EnvironmentAutoReset.step`) does, so its rollouts are the library's own. The flags
come from reading craftax 1.6.1: `step_env` returns `done = is_terminal(state)`, which is `is_game_over`
of the state after the step: `state.timestep >= params.max_timesteps` (the time limit) or a true end,
the player's health at or below 0 (and, in Craftax, the final boss beaten; in Classic, standing in
lava). `craftax_step` adds one to `timestep`, which `generate_world` sets to 0, so the time limit ends
the episode on its `max_timesteps`-th step. `terminated` is `is_terminal` with the time limit lifted,
so a death on the last step is a termination; `truncated` is `done` without a termination.

env_kwargs are overrides of the variant's `EnvParams` (`max_timesteps`, `day_length`, `god_mode`, spawn
chances, ...), each checked against its default's kind.
"""

from __future__ import annotations

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
    refuses_nothing,
    where_done,
)
from purejaxppo.envs.gymnax import with_params
from purejaxppo.errors import ConfigError

PREFIX = "craftax/"
# The names `craftax.craftax_env.make_craftax_env_from_name` builds without auto-reset; its
# `-AutoReset-v1` aliases name the same games with the library's own reset, which drops the final obs.
NAMES = ("Craftax-Symbolic-v1", "Craftax-Pixels-v1", "Craftax-Classic-Symbolic-v1", "Craftax-Classic-Pixels-v1")
# `timestep` is an int32, so a larger limit could not be compared with it; this one is never reached.
NO_LIMIT = int(np.iinfo(np.int32).max)


def _make_env(name: str) -> Any:
    from craftax.craftax_env import make_craftax_env_from_name

    return make_craftax_env_from_name(name.removeprefix(PREFIX), auto_reset=False)


def names() -> list[str]:
    import craftax.craftax_env  # noqa: F401  # the registry calls names() to learn the extra is installed

    return [PREFIX + n for n in NAMES]


def _params(default: Any, env_kwargs: dict[str, Any], name: str) -> Any:
    """`default` EnvParams with `env_kwargs` set, each checked against its default."""
    params = with_params(default, env_kwargs, name)
    if int(params.max_timesteps) > NO_LIMIT:
        raise ConfigError(f"env_kwargs.max_timesteps: Craftax counts steps in an int32, so at most {NO_LIMIT}; "
                          f"got {params.max_timesteps!r}")
    return params


class CraftaxEnv:
    """A Craftax no-auto-reset env and its params behind the adapter interface. The pixel variants'
    observations are (H, W, C) images, raveled, with their `image_shape` declared for a CNN torso."""

    def __init__(self, env: Any, params: Any, name: str) -> None:
        self._env = env
        self._params = params
        self._no_limit = params.replace(max_timesteps=NO_LIMIT)
        self.name = name
        # a run traces its env's reset and step many times, and tracing Craftax's world generation and step
        # takes seconds: jitted, each is traced once per shape and enters every program as a call
        self._reset = jax.jit(lambda key: env.reset_env(key, params))
        self._step = jax.jit(lambda key, state, action: env.step_env(key, state, action, params))
        self.action_space = ActionSpace.discrete_actions(int(env.action_space(params).n))
        obs = jax.eval_shape(self._reset, abstract_key())[0]
        self.image_shape = image_of(obs)
        self.observation_shape = flat_shape(obs)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self._reset(key)
        return flat(obs), _strong(state)

    def render(self, state: Any) -> np.ndarray:
        """One frame: Craftax's own pixel renderer, 16 pixels a block."""
        if getattr(self, "_pixels", None) is None:
            import importlib

            package = "craftax.craftax_classic" if "Classic" in self.name else "craftax.craftax"
            renderer = importlib.import_module(f"{package}.renderer")
            block = importlib.import_module(f"{package}.constants").BLOCK_PIXEL_SIZE_IMG
            self._pixels = jax.jit(renderer.make_craftax_pixel_renderer(block))
        return np.clip(np.asarray(self._pixels(state)), 0, 255).astype(np.uint8)

    def step_without_reset(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        """One step, not reset where the episode ended (`obs` is `final_obs`): for `resets_per_step`, where
        training draws fewer resets than envs, since a reset (world generation) costs about 10x a step."""
        return self._advance(jax.random.split(key)[0], state, action)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        k_step, k_reset = jax.random.split(key)  # in the order of Craftax's own auto-reset
        out = self._advance(k_step, state, action)
        fresh = self.reset(k_reset)
        obs, state = where_done(out.terminated | out.truncated, fresh, (out.obs, out.state))
        return out._replace(obs=obs, state=state)

    def _advance(self, key: jax.Array, state: Any, action: jax.Array) -> EnvStep:
        obs, state, reward, done, _ = self._step(key, state, action)
        terminated = jnp.asarray(self._env.is_terminal(state, self._no_limit), bool)
        return EnvStep(
            obs=flat(obs),
            state=state,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=terminated,
            truncated=jnp.asarray(done, bool) & ~terminated,
            final_obs=flat(obs),
        )


def _strong(state: Any) -> Any:
    """`state` with no weak-typed leaves: Classic's `generate_world` sets some from Python numbers, and a
    reset state typed unlike a stepped one would make every jitted function taking it compile twice."""
    def strong(x: Any) -> Any:
        x = jnp.asarray(x)
        return x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jax.lax.convert_element_type(x, x.dtype)

    return jax.tree.map(strong, state)


def make(name: str, env_kwargs: dict[str, Any]) -> CraftaxEnv:
    env = _make_env(name)
    return CraftaxEnv(env, _params(env.default_params, env_kwargs, name), name)


refuse = refuses_nothing
