"""Shared resets (`resets_per_step`): the assignment of fresh starts against hand-computed values, and one
batched step against the exact one, on an env of purejaxppo's protocol whose starts are all different."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import make_ppo
from purejaxppo.config import PPOConfig
from purejaxppo.envs import ActionSpace, EnvStep, make_env
from purejaxppo.envs.base import shared_resets, step_all
from purejaxppo.errors import ConfigError

ENVS = 6


def test_the_envs_that_end_take_the_starts_in_turn():
    done = jnp.array([False, True, True, False, True, True])
    np.testing.assert_array_equal(np.asarray(shared_resets(done, 4))[np.asarray(done)], [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(shared_resets(done, 3))[np.asarray(done)], [0, 1, 2, 0])
    np.testing.assert_array_equal(np.asarray(shared_resets(done, 1))[np.asarray(done)], [0, 0, 0, 0])


class Countdown:
    """Starts at a random value in [0, 1) and at step 0; ends (terminated) when an action of 1 is taken, and
    is truncated after `limit` steps. The observation is (start, steps)."""

    observation_shape = (2,)
    action_space = ActionSpace.discrete_actions(2)

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit

    def reset(self, key):
        state = (jax.random.uniform(key), jnp.int32(0))
        return self.observe(state), state

    def observe(self, state):
        return jnp.stack([state[0], state[1].astype(jnp.float32)])

    def step_without_reset(self, key, state, action):
        state = (state[0], state[1] + 1)
        terminated = action == 1
        truncated = (state[1] >= self.limit) & ~terminated
        obs = self.observe(state)
        return EnvStep(obs, state, jnp.float32(1.0), terminated, truncated, obs)

    def step(self, key, state, action):
        out = self.step_without_reset(key, state, action)
        obs, fresh = self.reset(key)
        done = out.terminated | out.truncated
        return out._replace(obs=jnp.where(done, obs, out.obs),
                            state=jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, out.state))


@pytest.mark.parametrize("resets", [2, ENVS])
def test_a_shared_reset_step_keeps_the_episode_and_starts_from_fresh_starts(resets):
    env = make_env(Countdown())
    obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), ENVS))
    actions = jnp.array([1, 0, 1, 1, 0, 0])  # four envs end by action, two go on
    key = jax.random.key(1)
    exact = step_all(env, key, state, actions)
    shared = jax.jit(lambda k, s, a: step_all(env, k, s, a, resets))(key, state, actions)
    # the step itself, its flags, rewards and final observations, are the exact step's
    for field in ("reward", "terminated", "truncated", "final_obs"):
        np.testing.assert_array_equal(getattr(shared, field), getattr(exact, field))
    done = np.asarray(shared.terminated | shared.truncated)
    # the envs that go on keep their state; those that ended start afresh at step 0, from starts all
    # different while no more than `resets` envs ended together
    np.testing.assert_array_equal(shared.obs[~done], exact.obs[~done])
    starts = np.asarray(shared.obs[done])
    assert (starts[:, 1] == 0).all() and (starts[:, 0] != np.asarray(obs)[done][:, 0]).all()
    assert len(set(starts[:, 0].tolist())) == min(resets, done.sum())
    np.testing.assert_array_equal(np.asarray(shared.state[0])[done], starts[:, 0])


def test_resets_per_step_needs_an_env_that_steps_without_resetting():
    config = PPOConfig(num_envs=4, num_steps=8, total_timesteps=64, num_minibatches=2, resets_per_step=2)
    with pytest.raises(ConfigError, match="resets_per_step: CartPole-v1 has no step_without_reset"):
        make_ppo(config)
    with pytest.raises(ConfigError, match="resets_per_step: 8 is more than num_envs"):
        make_ppo(config.replace(resets_per_step=8))
    ppo = make_ppo(config, Countdown())
    state = ppo.init(jax.random.key(0))
    _, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    assert traj.truncated.any() or traj.terminated.any()
    assert np.isfinite(np.asarray(traj.log_prob)).all()
