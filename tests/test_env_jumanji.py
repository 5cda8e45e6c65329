"""The Jumanji adapter against Jumanji itself: names and refusals, the end flags (a time limit the
adapter owns is a truncation, a crash a termination, even on the last allowed step), observations and
masks equal to the library's own TimeSteps for the same keys, and the joint and per-component
MultiDiscrete actions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jumanji = pytest.importorskip("jumanji")

from jumanji import specs

from purejaxppo.envs import ActionSpace, make_env
from purejaxppo.envs import jumanji as adapter
from purejaxppo.errors import ConfigError

LIMIT = 3
SNAKE = {"num_rows": 6, "num_cols": 6}
UP = 0  # Snake's action 0 moves the head up, so repeating it runs into the top wall


def own_flat(observation) -> np.ndarray:
    """The policy's observation, computed here from the library's TimeStep: its fields but the mask."""
    fields = observation._asdict()
    return np.concatenate([np.ravel(np.asarray(x, np.float32)) for k, v in fields.items() if k != "action_mask"
                           for x in jax.tree.leaves(v)])


def jitted(env):
    return jax.jit(env.reset), jax.jit(env.step)


@pytest.fixture(scope="module")
def maze():
    ours = make_env("jumanji/Maze-v0", {"time_limit": LIMIT})
    lib = jumanji.make("Maze-v0", time_limit=LIMIT)
    return ours, jitted(ours), jitted(lib)


@pytest.fixture(scope="module")
def snake_crash():
    """Snake stepped UP from a fixed start until it hits the wall: the step it crashes at, per the library."""
    key = jax.random.key(2)  # the head starts on the bottom row
    lib = jumanji.make("Snake-v1", **SNAKE, time_limit=50)
    _, ts = lib.reset(key)
    head = np.argwhere(np.asarray(ts.observation.grid[..., 1]))[0]  # channel 1: the head
    return key, int(head[0]) + 1


def test_names_and_refusals():
    names = adapter.names()
    assert "jumanji/Maze-v0" in names and "jumanji/Snake-v1" in names
    for refused in adapter.REFUSED:
        assert "jumanji/" + refused not in names
        with pytest.raises(ConfigError, match="internet|one reward per agent") as err:
            make_env("jumanji/" + refused)  # refused by name, before anything is built or downloaded
        assert "\n" not in str(err.value)


def test_make_env_builds_by_name_and_refuses_bad_kwargs(maze):
    ours = maze[0]
    assert ours.action_space == ActionSpace.discrete_actions(4, masked=True)
    assert ours.time_limit == LIMIT and ours.image_shape is None
    for kwargs, words in (({"no_such_arg": 1}, "no_such_arg"), ({"time_limit": 0}, "time_limit")):
        with pytest.raises(ConfigError, match=words) as err:
            make_env("jumanji/Maze-v0", kwargs)
        assert "\n" not in str(err.value)


def test_one_reward_per_agent_is_refused_when_made():
    with pytest.raises(ConfigError, match=r"reward of shape \(10,\)") as err:
        adapter.JumanjiEnv("jumanji/Connector-v3")  # past `refuse`: the check on the traced step
    assert "\n" not in str(err.value)


def test_time_limit_truncates_with_the_librarys_last_observation(maze):
    ours, (reset, step), (lib_reset, lib_step) = maze
    k_reset, *k_steps = jax.random.split(jax.random.key(3), LIMIT + 2)
    action = jnp.int32(1)
    obs, state = reset(k_reset)
    lib_state, ts = lib_reset(k_reset)
    np.testing.assert_array_equal(obs, own_flat(ts.observation))
    np.testing.assert_array_equal(ours.action_mask(state), ts.observation.action_mask)
    for t in range(1, LIMIT + 1):
        out = step(k_steps[t - 1], state, action)
        lib_state, ts = lib_step(lib_state, action)
        assert bool(ts.last()) == (t == LIMIT) and float(ts.reward) == 0.0  # the goal is not reached
        assert not bool(out.terminated) and bool(out.truncated) == (t == LIMIT)
        np.testing.assert_array_equal(out.final_obs, own_flat(ts.observation))
        assert float(out.reward) == float(ts.reward)
        state = out.state
    _, first = lib_reset(k_steps[LIMIT - 1])  # the new episode starts from the ending step's key
    np.testing.assert_array_equal(out.obs, own_flat(first.observation))
    np.testing.assert_array_equal(ours.action_mask(state), first.observation.action_mask)
    assert int(state.t) == 0


def run_up(env, key, steps):
    reset, step = jitted(env)
    _, state = reset(key)
    flags = []
    for k in jax.random.split(jax.random.key(0), steps):
        out = step(k, state, jnp.int32(UP))
        flags.append((bool(out.terminated), bool(out.truncated)))
        state = out.state
    return flags


def test_crash_terminates_even_on_the_last_allowed_step(snake_crash):
    key, crash = snake_crash
    assert crash >= 2
    for limit in (crash + 5, crash):  # a crash on the time limit's step is still the crash
        flags = run_up(make_env("jumanji/Snake-v1", {**SNAKE, "time_limit": limit}), key, crash)
        assert flags == [(False, False)] * (crash - 1) + [(True, False)]


def test_joint_mask_flattens_to_one_discrete_and_unravels_for_the_library():
    ours = make_env("jumanji/Tetris-v0", {"num_rows": 6, "num_cols": 6})
    lib = jumanji.make("Tetris-v0", num_rows=6, num_cols=6)
    assert ours.action_space == ActionSpace.discrete_actions(4 * 6, masked=True)  # (rotation, column) pairs
    key = jax.random.key(0)
    _, state = ours.reset(key)
    lib_state, ts = lib.reset(key)
    mask = np.asarray(ts.observation.action_mask)
    np.testing.assert_array_equal(ours.action_mask(state), mask.ravel())
    rotation, column = np.argwhere(mask)[-1]  # the legal pair furthest from (0, 0)
    out = jax.jit(ours.step)(key, state, jnp.int32(rotation * 6 + column))
    _, ts = jax.jit(lib.step)(lib_state, jnp.array([rotation, column], jnp.int32))
    np.testing.assert_array_equal(out.final_obs, own_flat(ts.observation))
    np.testing.assert_array_equal(ours.action_mask(out.state), np.asarray(ts.observation.action_mask).ravel())


def test_per_component_mask_is_each_components_row():
    ours = make_env("jumanji/Cleaner-v0", {"time_limit": 5})
    assert ours.action_space == ActionSpace.multi_discrete([4, 4, 4], masked=True)  # one move per agent
    _, state = ours.reset(jax.random.key(0))
    _, ts = jumanji.make("Cleaner-v0").reset(jax.random.key(0))
    np.testing.assert_array_equal(ours.action_mask(state), np.asarray(ts.observation.action_mask).ravel())


def test_action_specs():
    space, to_env, mask_of = adapter.action_space_of(specs.BoundedArray((2,), jnp.int16, 0, 3), (2, 3), "x")
    assert space == ActionSpace.multi_discrete([4, 4], masked=True)
    np.testing.assert_array_equal(mask_of(jnp.ones((2, 3), bool)), [1, 1, 1, 0] * 2)  # past the mask: illegal
    assert to_env(jnp.array([1, 2], jnp.int32)).dtype == jnp.int16
    mixed = specs.MultiDiscreteArray(jnp.array([3, 2], jnp.int32))
    space, _, mask_of = adapter.action_space_of(mixed, (2, 3), "x")
    assert space == ActionSpace.multi_discrete([3, 2], masked=True)
    np.testing.assert_array_equal(mask_of(jnp.array([[1, 0, 1], [0, 1, 1]], bool)), [1, 0, 1, 0, 1])
    space, to_env, _ = adapter.action_space_of(specs.BoundedArray((2,), jnp.float32, -1.0, 1.0), None, "x")
    assert not space.discrete and space.shape == (2,)
    for mask_shape, words in (((2, 3), "cannot tell"), ((5,), "fits neither")):  # (2, 3): joint or by row?
        with pytest.raises(ConfigError, match=words):
            adapter.action_space_of(specs.MultiDiscreteArray(jnp.array([2, 3], jnp.int32)), mask_shape, "x")
