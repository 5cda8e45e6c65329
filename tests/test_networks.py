"""The network's orthogonal initializer: flax's values, and a vmapped init over many seeds that finishes."""

import flax.linen as nn
import jax
import numpy as np

from purejaxppo.program.networks import orthogonal

from conftest import python


def test_orthogonal_gives_flax_values_alone_and_under_vmap():
    keys = jax.random.split(jax.random.key(7), 5)
    for shape, gain in (((8, 8), 2.0**0.5), ((16, 4), 1.0), ((4, 16), 0.01)):
        ours = orthogonal(gain)
        expected = np.stack([nn.initializers.orthogonal(gain)(k, shape) for k in keys])
        np.testing.assert_array_equal(np.stack([ours(k, shape) for k in keys]), expected)
        np.testing.assert_array_equal(jax.jit(jax.vmap(lambda k: ours(k, shape)))(keys), expected)
        # twice vmapped (a sweep of vmapped runs), and a vmap that leaves the key unbatched
        nested = jax.vmap(jax.vmap(lambda k: ours(k, shape)))(keys.reshape(1, 5))
        np.testing.assert_array_equal(nested[0], expected)
        shared = jax.vmap(lambda k, _: ours(k, shape), in_axes=(None, 0))(keys[0], np.arange(3))
        np.testing.assert_array_equal(shared, np.broadcast_to(expected[0], (3, *shape)))
    w = np.asarray(orthogonal(1.0)(keys[0], (32, 32)), np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(32), atol=1e-5)


def test_a_vmapped_init_of_many_seeds_finishes():
    # With flax's own initializer, this init hung every time on 2 CPU cores (jaxlib 0.10): batched QRs of
    # independent layers, side by side, each waiting for thread-pool work that no free thread could run.
    script = (
        "import jax\n"
        "from purejaxppo.config import PPOConfig\n"
        "from purejaxppo import make_ppo\n"
        "c = PPOConfig(env='CartPole-v1', num_envs=4, num_steps=8, total_timesteps=32, num_minibatches=2,"
        " hidden_sizes=(128, 128, 128, 128))\n"
        "init = jax.jit(jax.vmap(make_ppo(c).init))\n"
        "for i in range(3):\n"
        "    jax.block_until_ready(init(jax.random.split(jax.random.key(i), 64)))\n"
        "print('DONE')\n"
    )
    proc = python(script, timeout=240)
    assert "DONE" in proc.stdout
