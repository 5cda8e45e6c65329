"""The PPO variants inside the compiled program: KL early stopping, the adaptive KL penalty, the
entropy schedule, value and dual clipping, network options, the continuous distributions, reward and
observation handling. The formulas themselves are tested on plain arrays in test_losses.py and
test_distributions.py. Here the options whose effect shows in the metrics or the state (early
stopping, the KL penalty's coefficient, the entropy schedule, the network options, the distributions)
are checked against their rules in training; value and dual clipping, reward and observation
clipping and normalisation are checked to train with finite values, all switched on at once."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import losses
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.distributions import Beta, TanhGaussian
from purejaxppo.train import make_train, make_trainer

BASE = PPOConfig(
    env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 6, num_minibatches=4,
    update_epochs=3, hidden_sizes=(16,), env_kwargs={"max_steps_in_episode": 30},
)
STEPS = BASE.update_epochs * BASE.num_minibatches


def run(config: PPOConfig):
    return jax.device_get(jax.jit(make_train(config))(jax.random.key(1)))


@pytest.fixture(scope="module")
def many():
    """One program with most switches on at once, compiled once for the module."""
    config = BASE.replace(
        clip_value=True, value_clip_eps=0.1, dual_clip=3.0, kl_coef=0.5, kl_target=0.001, target_kl=1e6,
        ent_schedule="linear", ent_coef=0.02, ent_coef_final=0.002, shared_torso=True, layer_norm=True,
        kl_estimator="k1", reward_clip=0.5, obs_clip=1.0, normalize_obs=True, normalize_reward=True,
    )
    return config, *run(config)


def test_every_metric_is_finite_with_the_switches_on(many):
    _, _, metrics = many
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "dual_clip_fraction",
                 "kl_beta", "update_kl", "minibatch_steps", "ratio_mean", "ratio_max", "value_error",
                 "advantage_mean", "advantage_std", "ent_coef"):
        assert np.isfinite(metrics[name]).all(), name
    assert ((metrics["dual_clip_fraction"] >= 0) & (metrics["dual_clip_fraction"] <= 1)).all()
    assert (metrics["ratio_max"] >= metrics["ratio_mean"]).all()


def test_kl_beta_follows_the_adaptive_rule(many):
    config, _, metrics = many
    beta = config.kl_coef
    for kl, logged in zip(metrics["update_kl"], metrics["kl_beta"]):
        beta = float(losses.adapt_kl_coef(beta, kl, config.kl_target))
        assert logged == pytest.approx(beta, rel=1e-6)
    assert len(set(np.round(metrics["kl_beta"], 8))) > 1  # it moved


def test_entropy_schedule_is_linear_over_updates(many):
    config, _, metrics = many
    expected = np.linspace(config.ent_coef, config.ent_coef_final, config.num_updates)
    np.testing.assert_allclose(metrics["ent_coef"], expected, rtol=1e-5)


def test_kl_early_stopping_skips_the_rest_of_the_update():
    # a target so small that any change of the policy passes it: only the first step of each update,
    # taken at ratio 1 (KL 0), goes ahead
    _, tiny = run(BASE.replace(target_kl=1e-12))
    np.testing.assert_array_equal(tiny["minibatch_steps"], 1)
    _, huge = run(BASE.replace(target_kl=1e6))
    np.testing.assert_array_equal(huge["minibatch_steps"], STEPS)
    # the schedule counts taken steps only: after 6 updates of one step the linear lr is at 6 of its steps
    total = BASE.num_updates * STEPS
    np.testing.assert_allclose(tiny["lr"][-1], BASE.lr * (1 - 5 / total), rtol=1e-5)


def test_kl_early_stopping_triggers_mid_update():
    _, m = run(BASE.replace(target_kl=0.002, lr=0.05))
    assert (m["minibatch_steps"] >= 1).all() and (m["minibatch_steps"] < STEPS).any()


def test_kl_penalty_without_clipping_trains():
    _, m = run(BASE.replace(clip_policy=False, kl_coef=1.0))
    assert np.isfinite(m["policy_loss"]).all() and np.isfinite(m["kl_beta"]).all()


def test_shared_torso_and_layer_norm_change_the_network(many):
    _, state, _ = many
    params = state.params["params"]
    assert "critic_torso" not in params and "LayerNorm_0" in params["actor_torso"]
    separate = make_trainer(BASE).policy.init(jax.random.key(0), (4,))["params"]
    assert "critic_torso" in separate and "LayerNorm_0" not in separate["actor_torso"]


def test_orthogonal_gains_set_the_layer_scales():
    config = BASE.replace(hidden_gain=1.5, actor_head_gain=0.3, critic_head_gain=2.0, hidden_sizes=(8,))
    params = make_trainer(config).policy.init(jax.random.key(0), (4,))["params"]
    singular = lambda w: np.linalg.svd(np.asarray(w), compute_uv=False)  # noqa: E731
    np.testing.assert_allclose(singular(params["actor_torso"]["Dense_0"]["kernel"]), 1.5, rtol=1e-5)
    np.testing.assert_allclose(singular(params["actor_head"]["kernel"]), 0.3, rtol=1e-5)
    np.testing.assert_allclose(singular(params["critic_head"]["kernel"]), 2.0, rtol=1e-5)


def test_observation_and_reward_clipping():
    trainer = make_trainer(BASE.replace(obs_clip=0.5))
    stats = trainer.init(jax.random.key(0)).obs_stats
    np.testing.assert_allclose(trainer.normalize_obs(stats, jnp.array([3.0, -2.0, 0.1, 0.6])),
                               [0.5, -0.5, 0.1, 0.5], rtol=1e-6)
    rewards = jnp.array([[3.0, -0.1], [-2.0, 0.2]])
    returns = jnp.array([[3.0, -0.1], [1.0, 0.1]])
    trainer = make_trainer(BASE.replace(reward_clip=0.5))
    clipped, _ = trainer.learning_rewards(rewards, returns, trainer.init(jax.random.key(0)).return_stats)
    np.testing.assert_allclose(clipped, [[0.5, -0.1], [-0.5, 0.2]], rtol=1e-6)


def test_reward_normalisation_divides_by_the_return_std():
    trainer = make_trainer(BASE.replace(normalize_reward=True))
    stats = trainer.init(jax.random.key(0)).return_stats
    rewards = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    returns = jnp.array([[1.0, 2.0], [1.5, 1.0]])
    scaled, stats = trainer.learning_rewards(rewards, returns, stats)
    assert float(stats.count) == 4
    np.testing.assert_allclose(stats.var, np.var([1.0, 2.0, 1.5, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(scaled, np.asarray(rewards) / np.sqrt(np.var([1.0, 2.0, 1.5, 1.0]) + 1e-8), rtol=1e-6)


PENDULUM = PPOConfig(env="Pendulum-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, num_minibatches=2,
                     update_epochs=2, hidden_sizes=(16,), env_kwargs={"max_steps_in_episode": 16})


@pytest.mark.parametrize("distribution,state_dependent", [("tanh_gaussian", True), ("beta", False)])
def test_continuous_distributions_train_and_respect_the_bounds(distribution, state_dependent):
    config = PENDULUM.replace(distribution=distribution, state_dependent_std=state_dependent)
    trainer = make_trainer(config)
    kind = {"tanh_gaussian": TanhGaussian, "beta": Beta}[distribution]
    params = trainer.policy.init(jax.random.key(0), (3,))
    dist, _ = trainer.policy(params, jnp.ones((5, 3)))
    assert isinstance(dist, kind)
    actions = trainer.policy.env_action(dist.sample(jax.random.key(1)) * 10.0)
    assert ((actions >= -2.0) & (actions <= 2.0)).all()
    _, m = run(config)
    for name in ("policy_loss", "value_loss", "entropy", "policy_std"):
        assert np.isfinite(m[name]).all(), name


def test_tanh_gaussian_env_action_is_the_squashed_sample():
    trainer = make_trainer(PENDULUM.replace(distribution="tanh_gaussian"))
    u = jnp.array([[-3.0], [0.0], [0.4]])
    np.testing.assert_allclose(trainer.policy.env_action(u)[:, 0], 2.0 * np.tanh([-3.0, 0.0, 0.4]), rtol=1e-6)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dual_clip": 0.5}, "dual_clip: must be > 1"),
        ({"dual_clip": 2.0, "clip_policy": False, "kl_coef": 1.0}, "dual_clip: needs clip_policy"),
        ({"clip_policy": False}, "clip_policy: with the clipped surrogate off, set kl_coef"),
        ({"kl_coef": -1.0}, "kl_coef: must be >= 0"),
        ({"kl_target": 0.0}, "kl_target: must be > 0"),
        ({"target_kl": -0.1}, "target_kl: must be >= 0"),
        ({"kl_estimator": "k2"}, "kl_estimator: must be one of k1, k3"),
        ({"value_clip_eps": 0.0}, "value_clip_eps: must be > 0"),
        ({"ent_schedule": "exp"}, "ent_schedule: must be one of constant, linear, cosine"),
        ({"ent_schedule": "linear", "ent_coef_final": 0.5}, "ent_coef_final: 0.5 is above ent_coef"),
        ({"distribution": "gamma"}, "distribution: must be one of"),
        ({"distribution": "beta", "state_dependent_std": True}, "state_dependent_std: applies to gaussian"),
        ({"hidden_gain": 0.0}, "hidden_gain: must be > 0"),
        ({"reward_clip": -1.0}, "reward_clip: must be >= 0"),
        ({"obs_clip": -1.0}, "obs_clip: must be >= 0"),
        ({"eval_episodes": 0}, "eval_episodes: must be >= 1"),
        ({"clip_value": "yes"}, "clip_value: expected bool"),
    ],
)
def test_new_keys_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        BASE.replace(**changes)


def test_distribution_must_fit_the_action_space():
    with pytest.raises(ConfigError, match="distribution: beta does not fit the discrete actions of CartPole-v1"):
        make_trainer(BASE.replace(distribution="beta"))
    with pytest.raises(ConfigError, match="categorical does not fit the continuous"):
        make_trainer(PENDULUM.replace(distribution="categorical"))


def test_cosine_entropy_schedule_endpoints():
    from purejaxppo.train import entropy_coef

    start, end = jnp.float32(0.1), jnp.float32(0.01)
    assert float(entropy_coef("cosine", start, end, jnp.float32(0.0))) == pytest.approx(0.1)
    assert float(entropy_coef("cosine", start, end, jnp.float32(0.5))) == pytest.approx(0.055)
    assert float(entropy_coef("cosine", start, end, jnp.float32(1.0))) == pytest.approx(0.01)
    assert float(entropy_coef("linear", start, end, jnp.float32(0.25))) == pytest.approx(0.1 - 0.25 * 0.09)
    assert math.isclose(float(entropy_coef("constant", start, end, jnp.float32(0.7))), 0.1, rel_tol=1e-6)
