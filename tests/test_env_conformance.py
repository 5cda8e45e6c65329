"""One conformance test for every env family that is installed, and for the user's own envs.

Each env runs with a time limit of LIMIT steps and a constant action that ends no episode early, in
one jitted, vmapped rollout: shapes and dtypes; truncation (never termination) at every LIMIT-th step,
with the final observation apart from the new episode's first; a fresh initial state after each end;
the vmapped rollout equal to the env stepped alone; the same key giving the same rollout.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.envs import ActionSpace, EnvStep, make_env
from purejaxppo.errors import ConfigError

LIMIT = 3
STEPS = 3 * LIMIT
ENVS = 4


class Walk:
    """purejaxppo's own protocol: a position walked with continuous actions; truncated at `limit`."""

    observation_shape = (2,)
    action_space = ActionSpace.box(-1.0, 1.0, (1,))

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def reset(self, key):
        state = (jax.random.uniform(key), jnp.int32(0))
        return jnp.stack([state[0], 0.0]), state

    def step(self, key, state, action):
        pos, t = state[0] + action[0], state[1] + 1
        truncated = t >= self.limit
        obs, fresh = self.reset(key)
        final_obs = jnp.stack([pos, t.astype(jnp.float32)])
        new = jax.tree.map(lambda a, b: jnp.where(truncated, a, b), fresh, (pos, t))
        return EnvStep(jnp.where(truncated, obs, final_obs), new, -jnp.abs(pos), jnp.bool_(False), truncated,
                       final_obs)


def installed(module: str) -> list:
    return [] if importlib.util.find_spec(module) else [pytest.mark.skip(reason=f"{module} is not installed")]


# (id, make the env with a time limit of LIMIT, the constant action, whether its reset is random)
CASES = [
    pytest.param(("gymnax", lambda: make_env("CartPole-v1", {"max_steps_in_episode": LIMIT}), 0, True), id="gymnax"),
    pytest.param(("brax", lambda: make_env("brax/inverted_pendulum", {"episode_length": LIMIT}), [0.0], True),
                 id="brax"),
    pytest.param(("playground", lambda: make_env("playground/CartpoleBalance", {"episode_length": LIMIT}), [0.0],
                  True), id="playground", marks=installed("mujoco_playground")),
    pytest.param(("craftax", lambda: make_env("craftax/Craftax-Classic-Symbolic-v1", {"max_timesteps": LIMIT}), 0,
                  True), id="craftax", marks=installed("craftax")),
    pytest.param(("jumanji", lambda: make_env("jumanji/Maze-v0", {"time_limit": LIMIT}), 1, True), id="jumanji",
                 marks=installed("jumanji")),
    pytest.param(("xminigrid", lambda: make_env("xminigrid/MiniGrid-EmptyRandom-8x8", {"max_steps": LIMIT}), 2, True),
                 id="xminigrid", marks=installed("xminigrid")),
    pytest.param(("own-protocol", lambda: make_env(Walk(LIMIT)), [0.0], True), id="own-protocol"),
    pytest.param(("own-gymnax", lambda: make_env("test_custom_env:Corridor", {"max_steps_in_episode": LIMIT}), 0,
                  False), id="own-gymnax"),
]


@pytest.fixture(scope="module", params=CASES)
def case(request):
    name, build, action, random_reset = request.param
    env = build()
    action = jnp.asarray(action, jnp.int32 if env.action_space.discrete else jnp.float32)
    actions = jnp.broadcast_to(action, (ENVS, *action.shape))

    @jax.jit
    def rollout(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, ENVS))

        def body(state, k):
            out = jax.vmap(env.step)(jax.random.split(k, ENVS), state, actions)
            return out.state, out._replace(state=None)

        last, traj = jax.lax.scan(body, state, jax.random.split(k_steps, STEPS))
        return obs, traj, (state, last)  # the envs' first and last states, for their drawing

    return name, env, action, random_reset, rollout


def test_shapes_and_dtypes(case):
    _, env, _, _, rollout = case
    obs, traj, _ = rollout(jax.random.key(0))
    shape = tuple(env.observation_shape)
    assert obs.shape == (ENVS, *shape) and obs.dtype == jnp.float32
    assert traj.obs.shape == traj.final_obs.shape == (STEPS, ENVS, *shape)
    assert traj.obs.dtype == traj.final_obs.dtype == traj.reward.dtype == jnp.float32
    assert traj.reward.shape == traj.terminated.shape == traj.truncated.shape == (STEPS, ENVS)
    assert traj.terminated.dtype == traj.truncated.dtype == bool
    assert np.isfinite(np.asarray(traj.obs)).all() and np.isfinite(np.asarray(traj.reward)).all()


def test_time_limits_truncate_with_the_final_observation_and_a_fresh_start(case):
    _, _, _, random_reset, rollout = case
    obs, traj = jax.tree.map(np.asarray, rollout(jax.random.key(0))[:2])
    ends = (np.arange(1, STEPS + 1) % LIMIT == 0)[:, None].repeat(ENVS, 1)
    np.testing.assert_array_equal(traj.truncated, ends)  # so the step count restarted after each end
    assert not traj.terminated.any()
    np.testing.assert_array_equal(traj.obs[~ends], traj.final_obs[~ends])
    assert (traj.obs[ends] != traj.final_obs[ends]).any(axis=-1).all()  # a new episode's first obs
    if random_reset:  # each new episode starts from a freshly drawn state, not the first one replayed
        starts = traj.obs[LIMIT - 1 :: LIMIT]
        assert (starts != obs[None]).any(axis=-1).all()
        assert (starts[0] != starts[1]).any(axis=-1).all()


def test_vmapped_equals_alone_and_a_key_fixes_the_rollout(case):
    _, env, action, random_reset, rollout = case
    key = jax.random.key(1)
    obs, traj, _ = rollout(key)
    again_obs, again, _ = rollout(key)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves((obs, traj)), jax.tree.leaves((again_obs, again))))
    if random_reset:
        assert not np.array_equal(obs, rollout(jax.random.key(2))[0])

    # env 0 stepped alone, with the keys the vmapped rollout gave it
    k_reset, k_steps = jax.random.split(key)
    step = jax.jit(env.step)
    first, state = jax.jit(env.reset)(jax.random.split(k_reset, ENVS)[0])
    np.testing.assert_allclose(first, obs[0], rtol=1e-5, atol=1e-6)
    for t, k in enumerate(jax.random.split(k_steps, STEPS)[: LIMIT + 1]):
        out = step(jax.random.split(k, ENVS)[0], state, action)
        state = out.state
        np.testing.assert_allclose(out.obs, traj.obs[t, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.final_obs, traj.final_obs[t, 0], rtol=1e-5, atol=1e-6)
        assert (bool(out.terminated), bool(out.truncated)) == (bool(traj.terminated[t, 0]), bool(traj.truncated[t, 0]))


def test_an_env_that_draws_gives_frames_of_one_size_that_change(case):
    name, env, _, _, rollout = case
    _, _, (first, last) = rollout(jax.random.key(0))
    at = lambda states, k: jax.tree.map(lambda x: x[k], states)  # noqa: E731
    if name == "own-protocol":  # it defines no render(state): `purejaxppo render` refuses it
        assert not callable(getattr(env, "render", None))
        return
    if name == "own-gymnax":  # a gymnax env that is neither classic control nor seen as an image
        with pytest.raises(ConfigError, match="has no drawing"):
            env.render(at(first, 0))
        return
    # env 0 at its start and after STEPS steps, and env 1 at its own start
    frames = [np.asarray(env.render(s)) for s in (at(first, 0), at(last, 0), at(first, 1))]
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 3 and f.shape == frames[0].shape
               for f in frames), [(f.dtype, f.shape) for f in frames]
    assert frames[0].shape[0] >= 32 and frames[0].shape[1] >= 32
    assert not (np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], frames[2]))
    with ThreadPoolExecutor(1) as worker:  # training videos are drawn in a worker thread
        assert np.array_equal(worker.submit(env.render, at(last, 0)).result(), frames[1])
