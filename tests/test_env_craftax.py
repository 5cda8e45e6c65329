"""The Craftax adapter: names, env_kwargs checks, and its end flags against the library's own envs, on
Craftax-Classic (the smaller game, for a short compile)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("craftax")

from craftax.craftax_env import make_craftax_env_from_name  # noqa: E402

from purejaxppo.envs import craftax as family  # noqa: E402
from purejaxppo.envs import make_env  # noqa: E402
from purejaxppo.errors import ConfigError  # noqa: E402

NAME = "Craftax-Classic-Symbolic-v1"
LIMIT = 2
ACTION = jnp.int32(0)  # noop: Classic's world alone cannot end the episode in two steps


@pytest.fixture(scope="module")
def env():
    return make_env("craftax/" + NAME, {"max_timesteps": LIMIT})


@pytest.fixture(scope="module")
def stepped(env):
    """One compiled function: the adapter's step, next to Craftax's own auto-reset env stepped with the same
    key and Craftax's no-auto-reset env stepped with the key the auto-reset one steps with."""
    auto = make_craftax_env_from_name(NAME, auto_reset=True)
    plain = make_craftax_env_from_name(NAME, auto_reset=False)
    params = auto.default_params.replace(max_timesteps=LIMIT)

    @jax.jit
    def step(key, state):
        ours = env.step(key, state, ACTION)
        lib_obs, lib_state, lib_reward, lib_done, _ = auto.step(key, state, ACTION, params)
        last_obs = plain.step(jax.random.split(key)[0], state, ACTION, params)[0]
        return ours, (lib_obs, lib_state, lib_reward, lib_done, last_obs)

    return step


@pytest.fixture(scope="module")
def reset(env):
    return jax.jit(env.reset)


def test_names_and_make_by_name(env):
    assert {f"craftax/{n}" for n in ("Craftax-Symbolic-v1", "Craftax-Pixels-v1", "Craftax-Classic-Symbolic-v1",
                                     "Craftax-Classic-Pixels-v1")} <= set(family.names())
    assert isinstance(env, family.CraftaxEnv)
    assert env.action_space.discrete and env.action_space.n == 17
    assert env.image_shape is None and len(env.observation_shape) == 1


@pytest.mark.parametrize("kwargs, words", [
    ({"max_timestep": 5}, "unknown env_kwargs parameter"),
    ({"max_timesteps": "10"}, "expected an integer"),
    ({"max_timesteps": 0}, ">= 1"),
    ({"always_diamond": 1}, "expected a bool"),
    ({"max_timesteps": 2**31}, "int32"),
    ({"fractal_noise_angles": [0, 0, 0, 0]}, "cannot set it"),
])
def test_bad_env_kwargs_are_one_line_config_errors(kwargs, words):
    with pytest.raises(ConfigError) as err:
        make_env("craftax/" + NAME, kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_good_env_kwargs_are_set():
    env = make_env("craftax/Craftax-Symbolic-v1", {"max_timesteps": 7, "god_mode": True, "day_length": 50})
    assert (env._params.max_timesteps, env._params.god_mode, env._params.day_length) == (7, True, 50)
    assert env.action_space.n == 43


def _close(a, b):  # the same computation, compiled apart: the light level may differ in its last bit
    if jax.dtypes.issubdtype(jnp.asarray(a).dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _assert_like_library(ours, lib):
    lib_obs, lib_state, lib_reward, lib_done, last_obs = lib
    _close(ours.obs, np.ravel(lib_obs))
    _close(ours.final_obs, np.ravel(last_obs))
    _close(ours.reward, lib_reward)
    assert bool(ours.terminated | ours.truncated) == bool(lib_done)
    for a, b in zip(jax.tree.leaves(ours.state), jax.tree.leaves(lib_state)):
        _close(a, b)


def test_the_time_limit_truncates_on_its_last_step(reset, stepped):
    _, state = reset(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), LIMIT)
    for t, key in enumerate(keys, start=1):
        ours, lib = stepped(key, state)
        _assert_like_library(ours, lib)
        assert not ours.terminated and bool(ours.truncated) == (t == LIMIT)
        state = ours.state
    # the last step: its own obs kept apart from the new episode's first, which the reset key draws
    assert (ours.obs != ours.final_obs).any()
    fresh_obs, _ = reset(jax.random.split(keys[-1])[1])
    _close(ours.obs, fresh_obs)
    assert int(ours.state.timestep) == 0


@pytest.mark.parametrize("before_limit", [True, False], ids=["first-step", "last-step"])
def test_death_terminates_even_on_the_last_step(reset, stepped, before_limit):
    _, state = reset(jax.random.key(2))
    if not before_limit:  # one step in, so the next one also reaches the time limit
        state = stepped(jax.random.key(3), state)[0].state
    dead = state.replace(player_health=jnp.zeros_like(state.player_health))
    ours, lib = stepped(jax.random.key(4), dead)
    _assert_like_library(ours, lib)
    assert ours.terminated and not ours.truncated
    assert (ours.obs != ours.final_obs).any() and int(ours.state.timestep) == 0


def test_pixels_declare_their_image():
    env = make_env("craftax/Craftax-Classic-Pixels-v1")
    h, w, c = env.image_shape
    assert c == 3 and env.observation_shape == (h * w * c,)
    obs, _ = jax.eval_shape(env.reset, jax.random.key(0))
    assert obs.shape == env.observation_shape and obs.dtype == jnp.float32
