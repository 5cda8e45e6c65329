"""Acting with trained policies: `load_policy` acts as the policy did in training, and evaluation
episodes are deterministic and end when every episode has."""

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.host import trained
from purejaxppo.program.evaluation import evaluate
from purejaxppo.program.ppo import make_ppo

from conftest import TINY


def test_load_policy_acts_as_the_policy_inside_training(straight):
    act = trained.load_policy(straight.run_dir)
    ppo = make_ppo(TINY)
    state = jax.tree.map(lambda x: x[0], straight.state)
    assert float(state.obs_stats.count) > 0  # the saved normalisation is in play
    obs = jax.random.normal(jax.random.key(7), (64, 4)) * 2.0
    dist, _, _ = ppo.policy.apply(state.params, state.obs_stats, obs)
    np.testing.assert_array_equal(act(obs), dist.mode())
    np.testing.assert_array_equal(act(obs[0]), dist.mode()[0])
    key = jax.random.key(3)
    np.testing.assert_array_equal(act(obs, key), dist.sample(key))


def test_evaluation_runs_whole_deterministic_episodes(straight):
    source = trained.read_trained(straight.run_dir)
    assert source.step == TINY.num_updates
    ppo, params, obs_stats = make_ppo(TINY), source.params, source.obs_stats
    run = jax.jit(lambda key: evaluate(ppo.policy, ppo.env, params, obs_stats, key, 5))
    returns, lengths = run(jax.random.key(0))
    again, _ = run(jax.random.key(0))
    np.testing.assert_array_equal(returns, again)
    assert ((lengths >= 1) & (lengths <= 20)).all()  # TINY's episodes end by step 20
    np.testing.assert_array_equal(returns, lengths)  # CartPole pays 1 a step
    # a cap on the steps ends episodes that would go on
    capped, capped_lengths = jax.jit(
        lambda key: evaluate(ppo.policy, ppo.env, params, obs_stats, key, 5, max_steps=3))(
        jax.random.key(0))
    assert (capped_lengths <= 3).all() and (capped <= returns).all()


def test_evaluate_run_matches_evaluate(straight):
    source, returns, _ = trained.evaluate_run(straight.run_dir, 4, seed=2)
    ppo = make_ppo(TINY)
    expected, _ = evaluate(ppo.policy, ppo.env, source.params, source.obs_stats, jax.random.key(2), 4)
    np.testing.assert_array_equal(returns, expected)
    assert source.record.config == TINY and source.step == TINY.num_updates
    assert jnp.asarray(returns).shape == (4,)
