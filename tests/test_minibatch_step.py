"""How a minibatch step computes: gradient accumulation over micro-batches, and mixed precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.program.ppo import abstract_states, make_ppo, make_train

from conftest import PENDULUM, TINY

CASES = {
    "categorical": TINY,
    "tanh_gaussian": PENDULUM.replace(distribution="tanh_gaussian"),  # its entropy is sampled, key by key
    "gru": TINY.replace(memory="gru", memory_size=8, num_envs=8, num_minibatches=2),  # micro-batches of sequences
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_update_with_four_micro_batches_equals_one_without(name):
    whole = CASES[name]
    split = whole.replace(grad_accumulation=4 if name != "gru" else 2)
    state = make_ppo(whole).init(jax.random.key(1))
    (a, metrics_a), (b, metrics_b) = (jax.jit(make_ppo(c).update)(state) for c in (whole, split))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "ratio_max", "grad_norm"):
        np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_micro_batches_lower_the_peak_memory_of_an_update():
    base = TINY.replace(num_envs=64, num_steps=64, num_minibatches=1, update_epochs=1, total_timesteps=64 * 64,
                        hidden_sizes=(256, 256))
    peaks = []
    for k in (1, 8):
        ppo = make_ppo(base.replace(grad_accumulation=k))
        state = jax.eval_shape(ppo.init, jax.random.key(0))
        peaks.append(jax.jit(ppo.update).lower(state).compile().memory_analysis().temp_size_in_bytes)
    assert peaks[1] < 0.6 * peaks[0], peaks


def test_bfloat16_computes_in_bfloat16_and_keeps_every_state_leaf_float32():
    config = TINY.replace(compute_dtype="bfloat16")
    ppo = make_ppo(config)
    dtypes = lambda c: [x.dtype for x in jax.tree.leaves(abstract_states(make_ppo(c), 2))]  # noqa: E731
    assert dtypes(config) == dtypes(TINY)
    state = ppo.init(jax.random.key(0))
    jaxpr = str(jax.make_jaxpr(lambda p, o: ppo.policy.apply(p, state.obs_stats, o))(state.params, state.obs))
    assert "dot_general" in jaxpr and "bf16" in jaxpr
    dist, value, _ = ppo.policy.apply(state.params, state.obs_stats, state.obs)
    assert dist.logits.dtype == jnp.float32 and value.dtype == jnp.float32


def test_a_short_bfloat16_run_is_finite_and_learns_cartpole():
    config = TINY.replace(compute_dtype="bfloat16", num_envs=16, num_steps=64, total_timesteps=16 * 64 * 40,
                          num_minibatches=4, update_epochs=4, hidden_sizes=(64, 64), lr=2.5e-3,
                          env_kwargs={"max_steps_in_episode": 200})
    state, metrics = jax.jit(make_train(config))(jax.random.key(0))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))
    returns = np.asarray(metrics["episode_return"])
    assert returns[0] < 40 and np.nanmean(returns[-5:]) > 150, returns  # random play lasts about 22 steps
    assert [x.dtype for x in jax.tree.leaves(state.params)] == [jnp.float32] * len(jax.tree.leaves(state.params))
