"""The PPO variants whose rules play out over training, checked against those rules in the metrics
and the state: KL early stopping, the adaptive KL coefficient, the entropy schedules, and the
continuous distributions. Every switch on at once still trains with finite values. How each variant
enters the loss and the rewards is checked on a fixed batch in test_train.py; the formulas on plain
arrays in test_losses.py and test_distributions.py."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.program import losses
from purejaxppo.program.hparams import HParams
from purejaxppo.program.optim import entropy_coef
from purejaxppo.program.ppo import make_train

from conftest import CACHE, PENDULUM

BASE = PPOConfig(
    env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 6, num_minibatches=4,
    update_epochs=3, hidden_sizes=(16,), env_kwargs={"max_steps_in_episode": 30}, compilation_cache=CACHE,
)
STEPS = BASE.update_epochs * BASE.num_minibatches


def run(config: PPOConfig):
    return jax.device_get(jax.jit(make_train(config))(jax.random.key(1)))


KL_STOPPING = BASE.replace(target_kl=0.01)


@functools.cache
def kl_stopping_train():
    """KL early stopping on; its target and the lr are traced, so the KL tests' configs are inputs of this one
    program (built when first called, not when the file is collected)."""
    return jax.jit(make_train(KL_STOPPING))


def run_kl_stopping(**values: float):
    return jax.device_get(kl_stopping_train()(jax.random.key(1), HParams.from_config(KL_STOPPING.replace(**values))))


@pytest.fixture(scope="module", params=["none", "gru"])
def many(request):
    """One program with most switches on at once, compiled once for the module, feedforward and recurrent."""
    config = BASE.replace(
        memory=request.param, memory_size=8, clip_value=True, value_clip_eps=0.1, dual_clip=3.0, kl_coef=0.5, kl_target=0.001, target_kl=1e6,
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
    _, tiny = run_kl_stopping(target_kl=1e-12)
    np.testing.assert_array_equal(tiny["minibatch_steps"], 1)
    _, huge = run_kl_stopping(target_kl=1e6)
    np.testing.assert_array_equal(huge["minibatch_steps"], STEPS)
    # the schedule counts taken steps only: after 6 updates of one step the linear lr is at 6 of its steps
    total = BASE.num_updates * STEPS
    np.testing.assert_allclose(tiny["lr"][-1], BASE.lr * (1 - 5 / total), rtol=1e-5)


def test_kl_early_stopping_triggers_mid_update():
    _, m = run_kl_stopping(target_kl=0.002, lr=0.05)
    assert (m["minibatch_steps"] >= 1).all() and (m["minibatch_steps"] < STEPS).any()


def test_kl_penalty_without_clipping_trains():
    _, m = run(BASE.replace(clip_policy=False, kl_coef=1.0))
    assert np.isfinite(m["policy_loss"]).all() and np.isfinite(m["kl_beta"]).all()


@pytest.mark.parametrize("distribution,state_dependent", [("tanh_gaussian", True), ("beta", False)])
def test_continuous_distributions_train(distribution, state_dependent):
    config = PENDULUM.replace(distribution=distribution, state_dependent_std=state_dependent)
    _, m = run(config)
    for name in ("policy_loss", "value_loss", "entropy", "policy_std"):
        assert np.isfinite(m[name]).all(), name


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


def test_cosine_entropy_schedule_endpoints():
    start, end = jnp.float32(0.1), jnp.float32(0.01)
    assert float(entropy_coef("cosine", start, end, jnp.float32(0.0))) == pytest.approx(0.1)
    assert float(entropy_coef("cosine", start, end, jnp.float32(0.5))) == pytest.approx(0.055)
    assert float(entropy_coef("cosine", start, end, jnp.float32(1.0))) == pytest.approx(0.01)
    assert float(entropy_coef("linear", start, end, jnp.float32(0.25))) == pytest.approx(0.1 - 0.25 * 0.09)
    assert math.isclose(float(entropy_coef("constant", start, end, jnp.float32(0.7))), 0.1, rel_tol=1e-6)
