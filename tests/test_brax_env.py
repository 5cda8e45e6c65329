"""The Brax adapter on brax/inverted_pendulum: one jitted, vmapped rollout compiled once per module.

Eight envs with constant actions: action 0 keeps the pole up past the 10-step limit (truncation),
larger actions tip it over (termination), and action 0.4 tips it exactly on the limit step.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.envs import known_envs, make_env
from purejaxppo.envs.brax import BraxEnv
from purejaxppo.errors import ConfigError

NAME = "brax/inverted_pendulum"
LIMIT = 10
STEPS = 24
ACTIONS = np.array([0.0, -1.0, 1.0, 0.3, 0.4, 0.5, 0.7, 0.9], np.float32)[:, None]
FALLEN = 0.2  # inverted_pendulum terminates when |hinge angle| = |obs[1]| exceeds this


@pytest.fixture(scope="module")
def env():
    return make_env(NAME, {"backend": "positional", "episode_length": LIMIT})


@pytest.fixture(scope="module")
def rollout(env):
    actions = jnp.asarray(ACTIONS)

    @jax.jit
    def run(key):
        first_obs, state = jax.vmap(env.reset)(jax.random.split(key, len(ACTIONS)))

        def body(state, step_key):
            out = jax.vmap(env.step)(jax.random.split(step_key, len(ACTIONS)), state, actions)
            return out.state, out._replace(state=None)

        _, traj = jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), STEPS))
        return first_obs, traj

    key = jax.random.key(0)
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    first_obs, traj = run(key)
    dtypes = {f: getattr(traj, f).dtype for f in ("obs", "reward", "terminated", "truncated", "final_obs")}
    return np.asarray(first_obs), jax.tree.map(np.asarray, traj), dtypes


def episode_steps(done: np.ndarray) -> np.ndarray:
    """The 1-based step number within its episode of every transition, shape (STEPS, envs)."""
    steps = np.zeros(done.shape, int)
    count = np.zeros(done.shape[1], int)
    for t in range(done.shape[0]):
        count += 1
        steps[t] = count
        count[done[t]] = 0
    return steps


def test_spaces(env):
    assert isinstance(env, BraxEnv)
    assert env.observation_shape == (4,)
    space = env.action_space
    assert not space.discrete and space.shape == (1,) and space.dim == 1
    assert space.low.dtype == space.high.dtype == jnp.float32
    np.testing.assert_array_equal(space.low, [-1.0])
    np.testing.assert_array_equal(space.high, [1.0])
    # Tracing only: typed and raw keys both give float32 flat observations
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        obs, _ = jax.eval_shape(env.reset, key)
        assert obs.shape == (4,) and obs.dtype == jnp.float32


def test_rollout_shapes_and_dtypes(rollout):
    first_obs, traj, dtypes = rollout
    n = len(ACTIONS)
    assert first_obs.shape == (n, 4)
    assert traj.obs.shape == traj.final_obs.shape == (STEPS, n, 4)
    assert traj.reward.shape == traj.terminated.shape == traj.truncated.shape == (STEPS, n)
    assert dtypes == {
        "obs": jnp.float32, "reward": jnp.float32, "terminated": jnp.bool_, "truncated": jnp.bool_,
        "final_obs": jnp.float32,
    }
    assert np.isfinite(traj.obs).all() and np.isfinite(traj.final_obs).all()
    np.testing.assert_array_equal(traj.reward, 1.0)


def test_truncation_at_the_time_limit(rollout):
    _, traj, _ = rollout
    done = traj.terminated | traj.truncated
    steps = episode_steps(done)
    assert (steps <= LIMIT).all()
    # The env with action 0 never falls: it is truncated every LIMIT steps and never terminated
    np.testing.assert_array_equal(np.flatnonzero(traj.truncated[:, 0]), [LIMIT - 1, 2 * LIMIT - 1])
    assert not traj.terminated[:, 0].any()
    # Truncation only ever happens on the limit step, to an upright pole
    assert (steps[traj.truncated] == LIMIT).all()
    assert (np.abs(traj.final_obs[traj.truncated][:, 1]) <= FALLEN).all()


def test_termination_is_not_truncation(rollout):
    _, traj, _ = rollout
    assert not (traj.terminated & traj.truncated).any()
    fallen = np.abs(traj.final_obs[..., 1]) > FALLEN
    np.testing.assert_array_equal(traj.terminated, fallen)
    # Full force tips the pole within the limit, in every episode
    for env_index in (1, 2):
        assert traj.terminated[:, env_index].sum() >= 2
        assert not traj.truncated[:, env_index].any()
    # An env that falls on the limit step itself reports termination only
    on_limit = traj.terminated & (episode_steps(traj.terminated | traj.truncated) == LIMIT)
    assert on_limit.any()


def test_final_obs_and_reset_obs(rollout):
    _, traj, _ = rollout
    done = traj.terminated | traj.truncated
    np.testing.assert_array_equal(traj.final_obs[~done], traj.obs[~done])
    assert (np.abs(traj.final_obs[done] - traj.obs[done]).max(axis=-1) > 0).all()
    # The returned obs of a done step is a fresh initial state: near upright, near rest
    assert (np.abs(traj.obs[done]) <= 0.011).all()
    # The next transition continues from the reset obs, not from the finished episode
    after = np.roll(done, 1, axis=0)
    after[0] = False
    assert (np.abs(traj.final_obs[after][:, 1]) < 0.05).all()


def test_each_episode_starts_from_a_new_state(rollout):
    first_obs, traj, _ = rollout
    done = traj.terminated | traj.truncated
    for env_index in range(len(ACTIONS)):
        starts = np.concatenate([first_obs[env_index][None], traj.obs[done[:, env_index], env_index]])
        assert len(starts) >= 3
        assert len(np.unique(starts, axis=0)) == len(starts), env_index
    assert len(np.unique(first_obs, axis=0)) == len(ACTIONS)


def test_known_envs_lists_both_families():
    names = known_envs()
    assert {"CartPole-v1", "brax/ant", "brax/inverted_pendulum", "brax/swimmer"} <= set(names)


@pytest.mark.parametrize(
    ("name", "env_kwargs", "message"),
    [
        ("brax/inverted_pendulm", {}, "env: unknown environment 'brax/inverted_pendulm'; known: "),
        ("brax/inverted_pendulm", {}, "did you mean 'brax/inverted_pendulum'"),
        (NAME, {"backend": "warp"}, "env_kwargs.backend: unknown Brax backend 'warp'; known: generalized, positional"),
        (NAME, {"episode_lenght": 5}, "episode_lenght: unknown env_kwargs parameter of brax/inverted_pendulum; "
                                      "did you mean 'episode_length'?"),
        ("brax/ant", {"ctrl_cost": 0.1}, "did you mean 'ctrl_cost_weight'?"),
        (NAME, {"episode_length": 0}, "env_kwargs.episode_length: must be an integer >= 1"),
        (NAME, {"action_repeat": 1.5}, "env_kwargs.action_repeat: must be an integer >= 1"),
    ],
)
def test_config_errors_compile_nothing(caplog, name, env_kwargs, message):
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        with pytest.raises(ConfigError) as err:
            make_env(name, env_kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not [r for r in caplog.records if "XLA compilation" in r.getMessage()]


def test_what_the_constructor_rejects_is_one_line():
    with pytest.raises(ConfigError, match="brax/swimmer rejected .*Unsupported backend: positional"):
        make_env("brax/swimmer", {"backend": "positional"})
