"""The XLand-MiniGrid adapter: names, env_kwargs checks, the refused XLand tasks, and its end flags and
observations checked against xminigrid's own reset and step run with the same keys and actions."""

from __future__ import annotations

import socket

import pytest

xminigrid = pytest.importorskip("xminigrid")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from purejaxppo.envs import make_env  # noqa: E402
from purejaxppo.envs import xminigrid as family  # noqa: E402
from purejaxppo.errors import ConfigError  # noqa: E402

# Empty-5x5: the agent starts at (1, 1) facing right, the goal is at (3, 3). Actions: 0 forward,
# 1 turn clockwise, 2 turn counterclockwise, 5 toggle (nothing to toggle on empty floor).
TO_GOAL = [0, 0, 1, 0, 0]
LIMIT = 6
# A time limit (6 turns), a goal reached in 5 steps, then a goal reached on the 6th, the last allowed step.
SCRIPT = [1] * LIMIT + TO_GOAL + [5, *TO_GOAL] + [1]
TRUNCATED_AT = [LIMIT - 1]
TERMINATED_AT = [LIMIT + len(TO_GOAL) - 1, 2 * LIMIT + len(TO_GOAL) - 1]


def one_line_error(env: str, env_kwargs: dict | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        make_env(env, env_kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def run(env, key, actions):
    """The adapter from a reset, stepped with `actions`; returns its first obs, the step keys and the steps."""
    @jax.jit
    def rollout(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset)
        keys = jax.random.split(k_steps, len(actions))

        def body(state, x):
            out = env.step(x[0], state, x[1])
            return out.state, out._replace(state=None)

        return obs, jax.lax.scan(body, state, (keys, jnp.asarray(actions, jnp.int32)))[1]

    k_reset, k_steps = jax.random.split(key)
    obs, traj = jax.tree.map(np.asarray, rollout(key))
    return obs, k_reset, jax.random.split(k_steps, len(actions)), traj


def library(name: str, max_steps: int):
    """xminigrid's own reset and step for the task, jitted."""
    env, params = xminigrid.make(name)
    params = params.replace(max_steps=max_steps)
    return jax.jit(lambda k: env.reset(params, k)), jax.jit(lambda ts, a: env.step(params, ts, a))


def reference(reset, step, k_reset, keys, actions):
    """Per step, from xminigrid alone: the TimeStep it gives, and where it is the last of its episode, the
    next episode's first TimeStep from a reset with that step's key."""
    timestep, out = reset(k_reset), []
    for k, a in zip(keys, actions):
        timestep = step(timestep, jnp.int32(a))
        fresh = reset(k) if bool(timestep.last()) else timestep
        out.append((timestep, fresh))
        timestep = fresh
    return out


@pytest.fixture(scope="module")
def goal_runs():
    env = make_env("xminigrid/MiniGrid-Empty-5x5", {"max_steps": LIMIT})
    first, k_reset, keys, traj = run(env, jax.random.key(0), SCRIPT)
    reset, step = library("MiniGrid-Empty-5x5", LIMIT)
    return first, traj, reference(reset, step, k_reset, keys, SCRIPT), reset(k_reset)


def test_names_and_make_by_name():
    names = family.names()
    assert "xminigrid/MiniGrid-Empty-5x5" in names and "xminigrid/MiniGrid-DoorKey-8x8" in names
    assert len(names) == len([n for n in xminigrid.registered_environments() if n.startswith("MiniGrid-")])
    env = make_env("xminigrid/MiniGrid-DoorKey-5x5")
    assert env.observation_shape == (7 * 7 * 2,) and env.action_space.discrete and env.action_space.n == 6


def test_image_shape_matches_the_library():
    lib_env, params = xminigrid.make("MiniGrid-Empty-5x5")
    env = make_env("xminigrid/MiniGrid-Empty-5x5")
    assert env.image_shape == tuple(lib_env.observation_shape(params)) == (7, 7, 2)
    small = make_env("xminigrid/MiniGrid-Empty-5x5", {"view_size": 5})
    assert small.image_shape == (5, 5, 2) and small.observation_shape == (50,)
    obs, _ = jax.eval_shape(small.reset, jax.random.key(0))
    assert obs.shape == (50,) and obs.dtype == jnp.float32


@pytest.mark.parametrize("env_kwargs, words", [
    ({"max_step": 3}, ["unknown", "max_steps"]),
    ({"height": 9}, ["fixed", "max_steps, view_size"]),
    ({"max_steps": 0}, [">= 1"]),
    ({"max_steps": "ten"}, ["an integer"]),
    ({"max_steps": 2.5}, ["an integer"]),
    ({"view_size": 4}, ["odd"]),
    ({"view_size": 1}, ["odd"]),
    ({"view_size": True}, ["an integer"]),
])
def test_bad_env_kwargs_are_one_line_errors(env_kwargs, words):
    message = one_line_error("xminigrid/MiniGrid-Empty-5x5", env_kwargs)
    assert all(w in message for w in words), message


def test_xland_benchmark_tasks_are_refused():
    name = "xminigrid/XLand-MiniGrid-R1-9x9"
    assert "XLand-MiniGrid-R1-9x9" in xminigrid.registered_environments() and name not in family.names()
    message = one_line_error(name)
    assert "internet" in message and "MiniGrid-*" in message


def test_making_every_task_downloads_nothing(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("xminigrid reached for the network")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(xminigrid.benchmarks, "_download_from_hf", offline)
    for name in family.names():
        make_env(name, {"max_steps": 5})
    make_env("xminigrid/MiniGrid-FourRooms", {"view_size": 5})


def test_time_limit_truncates_with_the_library_last_observation():
    limit, steps = 3, 7
    env = make_env("xminigrid/MiniGrid-EmptyRandom-5x5", {"max_steps": limit})
    actions = [2] * steps  # turning never reaches the goal
    first, k_reset, keys, traj = run(env, jax.random.key(3), actions)
    reset, step = library("MiniGrid-EmptyRandom-5x5", limit)
    lib = reference(reset, step, k_reset, keys, actions)

    np.testing.assert_array_equal(first, np.ravel(reset(k_reset).observation))
    ends = [t for t in range(steps) if (t + 1) % limit == 0]
    np.testing.assert_array_equal(np.flatnonzero(traj.truncated), ends)
    assert not traj.terminated.any() and not traj.reward.any()
    for t, (timestep, fresh) in enumerate(lib):
        np.testing.assert_array_equal(traj.final_obs[t], np.ravel(timestep.observation))
        np.testing.assert_array_equal(traj.obs[t], np.ravel(fresh.observation))
        if t in ends:  # xminigrid's own end: last, with the discount of a time limit
            assert bool(timestep.last()) and float(timestep.discount) == 1.0
            np.testing.assert_array_equal(traj.obs[t], np.ravel(reset(keys[t]).observation))
            assert (traj.obs[t] != traj.final_obs[t]).any()
    # each new episode drew its own start
    assert (traj.obs[ends[0]] != first).any() and (traj.obs[ends[0]] != traj.obs[ends[1]]).any()


def test_reaching_the_goal_terminates_even_on_the_last_allowed_step(goal_runs):
    first, traj, lib, start = goal_runs
    np.testing.assert_array_equal(first, np.ravel(start.observation))
    np.testing.assert_array_equal(np.flatnonzero(traj.terminated), TERMINATED_AT)
    np.testing.assert_array_equal(np.flatnonzero(traj.truncated), TRUNCATED_AT)
    np.testing.assert_array_equal(np.flatnonzero(traj.reward), TERMINATED_AT)
    # xminigrid's reward, 1 - 0.9 * steps / max_steps, after 5 and after 6 of 6 steps
    np.testing.assert_allclose(traj.reward[TERMINATED_AT], [1 - 0.9 * 5 / LIMIT, 1 - 0.9], rtol=1e-6)
    both = lib[TERMINATED_AT[1]][0]  # the goal on the last allowed step: discount 0 at the time limit
    assert bool(both.last()) and float(both.discount) == 0.0 and int(both.state.step_num) == LIMIT
    for t, (timestep, fresh) in enumerate(lib):
        np.testing.assert_array_equal(traj.final_obs[t], np.ravel(timestep.observation))
        np.testing.assert_array_equal(traj.obs[t], np.ravel(fresh.observation))
    for t in TERMINATED_AT + TRUNCATED_AT:  # the next episode starts afresh
        np.testing.assert_array_equal(traj.obs[t], first)
