"""A few PPO updates on a small Brax env on the CPU: finite losses, a finite in-program evaluation,
checkpoint round trip, and the rendered viewer page. Brax compiles slowly on CPU, so the run is
compiled and trained once for the module."""

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import train
from purejaxppo.config import PPOConfig
from purejaxppo.host.trained import load_policy, read_trained
from purejaxppo.host.video import render_run
from purejaxppo.program.evaluation import evaluate, evaluation_return
from purejaxppo.program.ppo import make_ppo

from conftest import CACHE

CONFIG = PPOConfig(
    env="brax/inverted_pendulum", env_kwargs={"backend": "positional", "episode_length": 20},
    num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3, num_minibatches=2, update_epochs=2,
    hidden_sizes=(16,), activation="swish", distribution="tanh_gaussian", state_dependent_std=True,
    normalize_obs=True, obs_clip=10.0, normalize_reward=True, reward_scale=10.0, clip_eps=0.3, lr=3e-4,
    eval_every=3, eval_episodes=2, compilation_cache=CACHE,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(CONFIG, tmp_path_factory.mktemp("brax") / "run")


def test_a_few_updates_give_finite_losses_and_eval_return(trained):
    m = {name: values[0] for name, values in trained.metrics.items()}
    assert len(m["env_steps"]) == CONFIG.num_updates == 3
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "policy_std"):
        assert np.isfinite(m[name]).all(), name
    # one evaluation, at the end of the only chunk; inverted_pendulum pays 1 per step alive
    assert np.isnan(m["eval_return"][:-1]).all()
    ppo = make_ppo(CONFIG)
    state = jax.tree.map(lambda x: x[0], trained.state)
    evaluated = jax.jit(lambda s: evaluation_return(ppo, s))(state)
    np.testing.assert_allclose(m["eval_return"][-1], evaluated, rtol=1e-6)
    assert float(state.obs_stats.count) == CONFIG.num_updates * CONFIG.batch_size


def test_policy_round_trips_and_squashes_into_the_bounds(trained):
    act = load_policy(trained.run_dir)
    ppo = make_ppo(CONFIG)
    obs = jax.random.normal(jax.random.key(0), (6,) + ppo.env.observation_shape)
    state = jax.tree.map(lambda x: x[0], trained.state)
    dist, _, _ = ppo.policy.apply(state.params, state.obs_stats, obs)
    np.testing.assert_allclose(act(obs), jnp.tanh(dist.mean), rtol=1e-6)
    assert (np.abs(act(obs, jax.random.key(1))) <= 1.0).all()


def test_render_draws_the_episode_eval_plays(trained, tmp_path):
    done = render_run(trained.run_dir, tmp_path / "ant.mp4", max_steps=20)
    policy = read_trained(trained.run_dir)
    returns, lengths = evaluate(policy.policy, make_ppo(CONFIG).env, policy.params, policy.obs_stats,
                                jax.random.key(0), 1, max_steps=20)
    assert done.returns == [float(returns[0])] and done.frames == int(lengths[0]) == 20
    frames = iio.imread(done.path)
    assert frames.shape == (20, *done.size, 3) and not np.array_equal(frames[0], frames[-1])


def test_a_recurrent_policy_on_a_partly_hidden_brax_env(tmp_path):
    config = CONFIG.replace(memory="lstm", memory_size=8, obs_mask=[0], eval_every=3)
    result = train(config, tmp_path / "run")
    m = {name: values[0] for name, values in result.metrics.items()}
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "eval_return"):
        assert np.isfinite(m[name][-1]), name
    assert make_ppo(config).env.observation_shape == (make_ppo(CONFIG).env.observation_shape[0] - 1,)
    assert render_run(result.run_dir, tmp_path / "hidden.gif", max_steps=10).frames == 10
