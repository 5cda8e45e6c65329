"""The gymnax adapter: flags, final observations, flattened observations. (Brax: test_brax_env.py.)"""

import importlib

import jax
import numpy as np

from purejaxppo import envs
from purejaxppo.envs import make_env
from purejaxppo.envs.gymnax import import_gymnax


def test_gymnax_adapter_reports_truncation_and_final_obs():
    env = make_env("CartPole-v1", {"max_steps_in_episode": 3})
    obs, state = env.reset(jax.random.key(0))
    assert obs.shape == env.observation_shape == (4,)
    flags = []
    for i in range(3):
        out = env.step(jax.random.key(i + 1), state, 0 if i % 2 else 1)
        flags.append((bool(out.terminated), bool(out.truncated)))
        state = out.state
    assert flags == [(False, False), (False, False), (False, True)]
    assert not np.allclose(out.obs, out.final_obs)  # the returned obs starts a new episode
    flat = make_env("Breakout-MinAtar")
    assert flat.observation_shape == (400,) and flat.action_space.discrete
    assert make_env("CartPole-v1").image_shape is None


def test_minatar_declares_its_image_and_its_flat_obs_ravels_it():
    from purejaxppo.envs.gymnax import import_gymnax

    env = make_env("Breakout-MinAtar")
    assert env.image_shape == (10, 10, 4)
    obs, _ = env.reset(jax.random.key(0))
    gymnax_env, params = import_gymnax().make("Breakout-MinAtar")
    image, _ = gymnax_env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(np.asarray(obs).reshape(env.image_shape), np.asarray(image, np.float32))
    assert make_env("Breakout-MinAtar", obs_mask=(0,)).image_shape is None  # hidden components: no image


def test_every_family_module_is_a_family_that_knows_its_own_objects():
    for prefix, (module, _) in envs.FAMILIES.items():
        family = importlib.import_module(module)
        assert isinstance(family, envs.Family), module
        assert all(name.startswith(prefix) for name in family.names()), module
    for family in (envs.gymnax, envs.brax):
        assert isinstance(family, envs.ObjectFamily)
    gymnax_env, params = import_gymnax().make("CartPole-v1")
    assert envs.gymnax.owns(gymnax_env) and envs.gymnax.owns((gymnax_env, params))
    assert not envs.brax.owns(gymnax_env)
    assert envs.gymnax.adapt((gymnax_env, params), "pair").observation_shape == (4,)
