"""Running statistics against numpy over the concatenation of every batch seen."""

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo.program.normalization import RunningStats


def test_running_stats_match_numpy_over_several_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0, scale=s, size=(n, 4, 3)) for n, s in ((5, 1.0), (17, 4.0), (1, 0.5), (40, 2.0))]
    stats = RunningStats.create((3,))
    update = jax.jit(RunningStats.update)
    for i, batch in enumerate(batches):
        stats = update(stats, jnp.asarray(batch, jnp.float32))
        seen = np.concatenate([b.reshape(-1, 3) for b in batches[: i + 1]])
        assert float(stats.count) == len(seen)
        np.testing.assert_allclose(stats.mean, seen.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.var, seen.var(axis=0), rtol=1e-4)


def test_normalize_uses_the_statistics():
    stats = RunningStats(jnp.array([1.0, -2.0]), jnp.array([4.0, 0.25]), jnp.float32(10))
    obs = jnp.array([[3.0, -2.0], [1.0, 10.0]])
    np.testing.assert_allclose(stats.normalize(obs), [[1.0, 0.0], [0.0, 24.0]], rtol=1e-5)


def test_statistics_are_one_set_per_run_under_vmap():
    batches = jnp.stack([jnp.zeros((8, 2)), jnp.ones((8, 2)) * 5.0])  # two runs, different data
    stats = jax.vmap(lambda b: RunningStats.create((2,)).update(b))(batches)
    assert stats.mean.shape == (2, 2) and stats.count.shape == (2,)
    np.testing.assert_allclose(stats.mean, [[0.0, 0.0], [5.0, 5.0]])
