"""The policy: what it sees (normalised, clipped observations), the distribution it builds for each
action space, the env actions it emits, and the network options that shape it. Nothing here trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.program.distributions import Beta, Categorical, DiagGaussian, TanhGaussian
from purejaxppo.program.normalization import RunningStats
from purejaxppo.program.policy import make_policy
from purejaxppo.program.ppo import make_ppo

from conftest import PENDULUM, TINY


def policy_and_params(config):
    ppo = make_ppo(config)
    return ppo.policy, ppo.policy.init(jax.random.key(0), ppo.env.observation_shape)


def test_the_policy_sees_normalised_then_clipped_observations():
    stats = RunningStats(jnp.array([1.0, -2.0, 0.0, 0.0]), jnp.array([4.0, 0.25, 1.0, 1.0]), jnp.float32(10))
    obs = jnp.array([[3.0, -2.0, 0.5, 9.0], [1.0, 10.0, -7.0, 0.0]])
    policy, params = policy_and_params(TINY.replace(obs_clip=5.0))
    np.testing.assert_allclose(policy.observe(stats, obs), [[1.0, 0.0, 0.5, 5.0], [0.0, 5.0, -5.0, 0.0]], rtol=1e-5)
    raw, _ = policy_and_params(TINY.replace(normalize_obs=False))
    np.testing.assert_array_equal(raw.observe(stats, obs), obs)
    # apply acts on what observe gives: the same as the network on the normalised input
    dist, value, carry = policy.apply(params, stats, obs)
    head, _, expected_value, _ = policy.network.apply(params, (), policy.observe(stats, obs))
    np.testing.assert_allclose(dist.logits, head, rtol=1e-6)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    assert carry is None and policy.initial_carry((7,)) is None  # a feedforward policy carries nothing


@pytest.mark.parametrize(
    "config, kind",
    [(TINY, Categorical), (PENDULUM, DiagGaussian), (PENDULUM.replace(distribution="tanh_gaussian"), TanhGaussian),
     (PENDULUM.replace(distribution="beta"), Beta),
     (PENDULUM.replace(distribution="tanh_gaussian", state_dependent_std=True), TanhGaussian)],
)
def test_each_action_space_gets_its_distribution(config, kind):
    policy, params = policy_and_params(config)
    obs = jax.random.normal(jax.random.key(1), (5,) + ((4,) if config.env == "CartPole-v1" else (3,)))
    dist, value, _ = policy.apply(params, RunningStats.create(obs.shape[1:]), obs)
    assert isinstance(dist, kind) and value.shape == (5,)


def test_act_is_the_deterministic_action_or_a_sample():
    policy, params = policy_and_params(PENDULUM.replace(distribution="tanh_gaussian"))
    stats = RunningStats.create((3,))
    obs = jax.random.normal(jax.random.key(2), (6, 3))
    dist, _, _ = policy.apply(params, stats, obs)
    np.testing.assert_allclose(policy.act(params, stats, obs)[0], 2.0 * jnp.tanh(dist.mean), rtol=1e-5, atol=1e-6)
    key = jax.random.key(3)
    np.testing.assert_allclose(policy.act(params, stats, obs, key)[0], 2.0 * jnp.tanh(dist.sample(key)), rtol=1e-5,
                               atol=1e-6)


def test_continuous_actions_are_clipped_for_the_env_only():
    policy, params = policy_and_params(PENDULUM)
    dist, _, _ = policy.apply(params, RunningStats.create((3,)), jnp.zeros((3, 3)))
    wide = jnp.array([-5.0, 0.5, 7.0])[:, None]
    np.testing.assert_allclose(dist.env_action(wide)[:, 0], [-2.0, 0.5, 2.0])
    # the log prob is that of the unclipped sample
    assert not np.allclose(dist.log_prob(wide), dist.log_prob(dist.env_action(wide)))


@pytest.mark.parametrize("distribution,state_dependent", [("tanh_gaussian", True), ("beta", False)])
def test_bounded_policies_emit_actions_in_the_bounds(distribution, state_dependent):
    policy, params = policy_and_params(PENDULUM.replace(distribution=distribution, state_dependent_std=state_dependent))
    dist, _, _ = policy.apply(params, RunningStats.create((3,)), jnp.ones((5, 3)))
    actions = dist.env_action(dist.sample(jax.random.key(1)) * 10.0)
    assert ((actions >= -2.0) & (actions <= 2.0)).all()


def test_shared_torso_and_layer_norm_change_the_network():
    params = policy_and_params(TINY.replace(shared_torso=True, layer_norm=True))[1]["params"]
    assert "critic_torso" not in params and "LayerNorm_0" in params["actor_torso"]
    separate = policy_and_params(TINY)[1]["params"]
    assert "critic_torso" in separate and "LayerNorm_0" not in separate["actor_torso"]


def test_orthogonal_gains_set_the_layer_scales():
    params = policy_and_params(TINY.replace(hidden_gain=1.5, actor_head_gain=0.3, critic_head_gain=2.0,
                                            hidden_sizes=(8,)))[1]["params"]
    singular = lambda w: np.linalg.svd(np.asarray(w), compute_uv=False)  # noqa: E731
    np.testing.assert_allclose(singular(params["actor_torso"]["Dense_0"]["kernel"]), 1.5, rtol=1e-5)
    np.testing.assert_allclose(singular(params["actor_head"]["kernel"]), 0.3, rtol=1e-5)
    np.testing.assert_allclose(singular(params["critic_head"]["kernel"]), 2.0, rtol=1e-5)


def test_the_free_log_std_is_a_parameter_and_the_state_dependent_one_is_not():
    ppo = make_ppo(PENDULUM)
    assert "log_std" in ppo.policy.init(jax.random.key(0), (3,))["params"]
    dependent = make_policy(PENDULUM.replace(state_dependent_std=True), ppo.env.action_space)
    params = dependent.init(jax.random.key(0), (3,))["params"]
    assert "log_std" not in params and params["actor_head"]["kernel"].shape[-1] == 2
