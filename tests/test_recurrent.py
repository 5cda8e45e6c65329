"""Recurrent policies: the carry's episode boundaries against loops written out here, the loss replaying
the rollout exactly, truncation bootstrapped with the carry that saw the final observation, and the
run path (resume, sweeps, `load_policy`) with a recurrent policy on."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import train
from purejaxppo.config import validate
from purejaxppo.envs import ActionSpace, EnvStep, make_env
from purejaxppo.errors import ConfigError
from purejaxppo.host import trained
from purejaxppo.program import recurrent
from purejaxppo.program.policy import make_policy
from purejaxppo.program.ppo import PPO, make_ppo
from purejaxppo.sweep import sweep

from conftest import PENDULUM, TINY, leaves_equal

# CartPole with its velocities hidden, 8 updates in chunks of 3, 3 and 2, like TINY
TINY_GRU = TINY.replace(memory="gru", memory_size=8, obs_mask=[1, 3])

# ---- the pure functions, against loops ---------------------------------------------------------------


def test_reset_replaces_the_carry_where_an_episode_starts():
    rng = np.random.default_rng(0)
    carry = {"h": rng.normal(size=(5, 3)).astype(np.float32), "c": (rng.normal(size=(5, 2, 2)).astype(np.float32),)}
    initial = {"h": np.full(3, 7.0, np.float32), "c": (np.full((2, 2), -1.0, np.float32),)}
    first = np.array([True, False, False, True, False])
    out = recurrent.reset(carry, initial, jnp.asarray(first))
    for i in range(5):
        np.testing.assert_array_equal(out["h"][i], initial["h"] if first[i] else carry["h"][i])
        np.testing.assert_array_equal(out["c"][0][i], initial["c"][0] if first[i] else carry["c"][0][i])


def test_starts_flag_the_step_after_each_episode_end():
    done = np.array([[0, 1], [1, 0], [0, 0], [1, 1]], bool)
    expected = np.zeros_like(done)
    for t in range(1, len(done)):
        expected[t] = done[t - 1]
    np.testing.assert_array_equal(recurrent.starts(jnp.asarray(done)), expected)


def test_unroll_matches_a_loop_that_resets_where_episodes_start():
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(6, 4)).astype(np.float32)
    first = rng.random((6, 4)) < 0.3
    start = rng.normal(size=(4,)).astype(np.float32)

    def step(c, x):  # a running sum that remembers: any reset error shows in every later output
        c = 0.5 * c + x
        return c, 2.0 * c

    last, ys = recurrent.unroll(step, jnp.asarray(start), jnp.float32(0.0), jnp.asarray(xs), jnp.asarray(first))
    c, expected = start.copy(), []
    for t in range(6):
        c = np.where(first[t], 0.0, c)
        c = 0.5 * c + xs[t]
        expected.append(2.0 * c)
    np.testing.assert_allclose(ys, np.stack(expected), rtol=1e-6)
    np.testing.assert_allclose(last, c, rtol=1e-6)


def test_the_cells_match_flax_with_the_same_weights():
    # flax's cells keep one Dense per gate (biases on the input side for GRU, the recurrent side for LSTM)
    x, size = jax.random.normal(jax.random.key(0), (5, 3)), 4
    for kind, cell, gates, input_bias in (("gru", nn.GRUCell(size), ("r", "z", "n"), True),
                                          ("lstm", nn.LSTMCell(size), ("i", "f", "g", "o"), False)):
        carry = cell.initialize_carry(jax.random.key(1), x.shape)
        carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(2), c.shape), carry)
        params = cell.init(jax.random.key(3), carry, x)["params"]
        params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(4), p.shape), params)
        expected_carry, expected = cell.apply({"params": params}, carry, x)
        zeros = jnp.zeros(size)
        w_in = jnp.concatenate([params[f"i{g}"]["kernel"] for g in gates], axis=1)
        b_in = jnp.concatenate([params[f"i{g}"]["bias"] if input_bias else zeros for g in gates])
        w_h = jnp.concatenate([params[f"h{g}"]["kernel"] for g in gates], axis=1)
        b_h = jnp.concatenate([params[f"h{g}"]["bias"] if "bias" in params[f"h{g}"] else zeros for g in gates])
        step, count = recurrent.CELLS[kind]
        assert count == len(gates)
        new_carry, out = step(carry, x @ w_in + b_in, w_h, b_h)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_carry, expected_carry)


# ---- the rollout and the loss's replay ---------------------------------------------------------------

REPLAYED = {
    "gru, one core": TINY_GRU.replace(shared_torso=True),
    "lstm, a core per head": TINY_GRU.replace(memory="lstm"),
    "lstm, continuous": PENDULUM.replace(memory="lstm", memory_size=8, distribution="tanh_gaussian",
                                         normalize_obs=True),
}


@pytest.fixture(scope="module", params=list(REPLAYED))
def replayed(request):
    """A second rollout (so it starts mid-episode, from a carry that is not the initial one) of 8 envs
    x 40 steps with 20-step (Pendulum: 16-step) episodes, its batch and minibatches as the update builds them."""
    config = REPLAYED[request.param].replace(num_envs=8, num_steps=40, total_timesteps=8 * 40)
    ppo = make_ppo(config)

    @jax.jit
    def go(key):
        k0, k1, k2, k3 = jax.random.split(key, 4)
        state = ppo.init(k0)
        state = state.replace(obs_stats=state.obs_stats.update(jax.random.normal(k3, (64,) + state.obs.shape[1:])))
        state, _ = ppo.rollout(state, k1)
        start = state.carry
        after, traj = ppo.rollout(state, k2)
        zeros = jnp.zeros_like(traj.value)
        batch = ppo.batch(traj, zeros, zeros, start)
        return state, traj, ppo.minibatches(batch, k3)

    state, traj, minibatches = go(jax.random.key(4))
    return ppo, state, traj, minibatches


def test_the_rollout_resets_the_carry_where_episodes_start(replayed):
    ppo, state, traj, _ = replayed
    policy, params, stats = ppo.policy, state.params, state.obs_stats
    done = np.asarray(traj.terminated | traj.truncated)
    if ppo.config.env == "CartPole-v1":
        assert traj.terminated.any() and traj.truncated.any()  # both kinds of end inside the rollout
    assert done[:-1].any()
    assert not all(np.allclose(x, 0) for x in jax.tree.leaves(state.carry))  # started mid-episode
    initial = policy.initial_carry((ppo.config.num_envs,))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731 (one step, not the scan)

    @jax.jit
    def step(obs, carry, action):  # one step alone, compiled once rather than dispatched op by op
        dist, value, carry = policy.apply(params, stats, obs, carry)
        return dist.log_prob(action), value, carry

    carry = state.carry
    for t in range(done.shape[0]):  # step by step, with a reset written out here
        log_prob, value, carry = step(traj.obs[t], carry, traj.action[t])
        close(log_prob, traj.log_prob[t])
        close(value, traj.value[t])
        jax.tree.map(close, carry, jax.tree.map(lambda x: x[t], traj.carry))  # the carry that saw step t
        carry = jax.tree.map(lambda c, i: np.where(done[t][:, None], i, c), carry, initial)


def test_truncation_bootstraps_with_the_carry_of_the_ended_episode(replayed):
    ppo, state, traj, _ = replayed
    policy, params, stats = ppo.policy, state.params, state.obs_stats
    truncated = np.asarray(traj.truncated)
    assert truncated.any()
    bootstrap = jax.jit(ppo.bootstrap_values)(state, traj)
    done = np.asarray(traj.terminated | traj.truncated)
    initial = policy.initial_carry((ppo.config.num_envs,))

    @jax.jit
    def step(obs, final_obs, carry):  # one step alone, compiled once rather than dispatched op by op
        _, _, carry = policy.apply(params, stats, obs, carry)
        return carry, policy.value(params, stats, final_obs, carry), policy.value(params, stats, final_obs, initial)

    carry, expected, from_reset = state.carry, [], []
    for t in range(done.shape[0]):  # the episode's own carry, then the final observation
        carry, value, value_from_reset = step(traj.obs[t], traj.final_obs[t], carry)
        expected.append(value)
        from_reset.append(value_from_reset)
        carry = jax.tree.map(lambda c, i: np.where(done[t][:, None], i, c), carry, initial)
    expected, from_reset = np.stack(expected), np.stack(from_reset)
    np.testing.assert_allclose(bootstrap, expected, rtol=1e-5, atol=1e-6)
    # the reset carry would give other values at the truncated steps: the check above can tell them apart
    assert np.abs(from_reset[truncated] - expected[truncated]).max() > 1e-3


def test_the_loss_replays_the_rollout_exactly_before_any_step(replayed):
    ppo, state, traj, minibatches = replayed
    num = ppo.config.num_minibatches
    assert jax.tree.leaves(minibatches.obs)[0].shape[:3] == (num, ppo.config.num_envs // num, 40)
    assert minibatches.first.any()  # episodes start inside the sequences

    @jax.jit
    def replay(mb):  # compiled with its gradient, as the loss is
        def objective(params):
            dist, value = ppo.policy.unroll(params, state.obs_stats, mb.obs, mb.carry, mb.first)
            log_prob = dist.log_prob(mb.action)
            return jnp.mean(log_prob) + jnp.mean(value), (log_prob, value)

        return jax.value_and_grad(objective, has_aux=True)(state.params)[0][1]

    for i in range(num):
        mb = jax.tree.map(lambda x: x[i], minibatches)
        log_prob, value = replay(mb)
        np.testing.assert_array_equal(log_prob, mb.log_prob)  # every ratio exactly 1
        # the critic head's dot is rounded another way once differentiated: a few float32 ulps
        np.testing.assert_allclose(value, mb.value, rtol=0, atol=1e-6)
    # a replay that ignores the episode starts does not match: the check above can fail
    mb = jax.tree.map(lambda x: x[0], minibatches)
    log_prob, value = replay(mb._replace(first=jnp.zeros_like(mb.first)))
    assert np.abs(value - mb.value).max() > 1e-3 and not np.array_equal(log_prob, mb.log_prob)


# ---- truncation, bootstrapped with the carry that saw the final observation ------------------------


@dataclasses.dataclass(frozen=True)
class Constant:
    """An env whose observation never changes, that pays 1 a step, and whose episodes are only ever
    truncated, after `limit` steps: the value of every state is 1 / (1 - gamma)."""

    limit: int = 5
    observation_shape: tuple[int, ...] = (1,)
    action_space: ActionSpace = ActionSpace(discrete=True, n=2)

    def reset(self, key):
        return jnp.ones(1), jnp.int32(0)

    def step(self, key, t, action):
        t = t + 1
        truncated = t >= self.limit
        return EnvStep(jnp.ones(1), jnp.where(truncated, 0, t), jnp.float32(1.0), jnp.bool_(False), truncated,
                       jnp.ones(1))


def test_a_recurrent_value_learns_the_bootstrapped_return_under_truncation():
    # the carry counts the steps of an episode, so a value without the bootstrap would learn the
    # return left before the time limit, (1 - gamma^(limit - t)) / (1 - gamma): 1.0 at the last step
    config = TINY.replace(memory="gru", memory_size=8, gamma=0.8, num_envs=8, num_steps=10, num_minibatches=2,
                          total_timesteps=8 * 10 * 150, lr=3e-3, lr_schedule="constant", normalize_obs=False)
    env = Constant()
    ppo = PPO(config, env, make_policy(config, env.action_space))
    state, _ = jax.jit(lambda k: jax.lax.scan(lambda s, _: ppo.update(s), ppo.init(k), None,
                                              length=config.num_updates))(jax.random.key(0))
    _, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    values = np.asarray(traj.value)
    target = 1.0 / (1.0 - config.gamma)
    assert traj.truncated.any() and not traj.terminated.any()
    np.testing.assert_allclose(values, target, rtol=0.05)
    np.testing.assert_allclose(values[np.asarray(traj.truncated)], target, rtol=0.05)  # at the time limit too


# ---- config and env ----------------------------------------------------------------------------------


def test_recurrent_minibatches_must_divide_the_envs():
    with pytest.raises(ConfigError, match="num_minibatches: a recurrent policy's minibatches hold whole env"):
        TINY_GRU.replace(num_envs=6, num_steps=2, num_minibatches=4, total_timesteps=12)
    validate(TINY.replace(num_envs=6, num_steps=2, num_minibatches=4, total_timesteps=12))  # feedforward: samples


@pytest.mark.parametrize("mask, message", [
    ([4], "obs_mask: index 4 is outside this env's 4 observation components"),
    ([0, 1, 2, 3], "obs_mask: hides all 4 observation components"),
])
def test_obs_mask_out_of_range_or_hiding_everything_is_refused(mask, message):
    with pytest.raises(ConfigError, match=message):
        make_ppo(TINY.replace(obs_mask=mask))


def test_obs_mask_hides_the_components_everywhere():
    full, hidden = make_env("CartPole-v1"), make_env("CartPole-v1", obs_mask=(1, 3))
    assert hidden.observation_shape == (2,)
    key = jax.random.key(0)
    (obs, s_full), (h_obs, s_hidden) = full.reset(key), hidden.reset(key)
    np.testing.assert_array_equal(h_obs, obs[np.array([0, 2])])
    for _ in range(30):  # past the pole's fall, so final_obs is checked where it differs from obs
        out, h_out = full.step(key, s_full, 1), hidden.step(key, s_hidden, 1)
        np.testing.assert_array_equal(h_out.obs, out.obs[np.array([0, 2])])
        np.testing.assert_array_equal(h_out.final_obs, out.final_obs[np.array([0, 2])])
        s_full, s_hidden = out.state, h_out.state


# ---- the run path with a recurrent policy --------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    straight = train(TINY_GRU, tmp_path_factory.mktemp("gru") / "straight")
    run_dir = tmp_path_factory.mktemp("gru") / "resumed"
    train(TINY_GRU, run_dir, until_update=4)
    resumed = train(TINY_GRU, run_dir, resume=True)
    return straight, resumed


def test_a_recurrent_run_resumes_bit_identically(runs):
    straight, resumed = runs
    assert jax.tree.leaves(straight.state.carry)  # the carry is in the state, and saved with it
    assert leaves_equal(straight.state, resumed.state)
    np.testing.assert_array_equal(straight.metrics["episode_return"], resumed.metrics["episode_return"])


def test_a_recurrent_sweep_trains_each_seed_as_a_single_run(runs, tmp_path):
    straight, _ = runs
    result = sweep(TINY_GRU, seeds=2, run_dir=tmp_path / "sweep")
    # a batched program rounds in another order: equal within the bound test_sweep.py holds runs to
    for name in ("episode_return", "policy_loss", "value_loss", "approx_kl"):
        np.testing.assert_allclose(result.metrics[name][0], straight.metrics[name][0], rtol=2e-4, atol=1e-5,
                                   err_msg=name)
    for a, b in zip(jax.tree.leaves((result.state.params, result.state.carry)),
                    jax.tree.leaves((straight.state.params, straight.state.carry))):
        np.testing.assert_allclose(a[0], b[0], rtol=2e-4, atol=1e-5)


def test_load_policy_steps_a_recurrent_policy_as_training_did(runs):
    straight, _ = runs
    policy = trained.load_policy(straight.run_dir)
    ppo = make_ppo(TINY_GRU)
    state = jax.tree.map(lambda x: x[0], straight.state)
    assert policy.recurrent
    with pytest.raises(TypeError, match="a recurrent policy acts with its carry"):
        policy(np.zeros(4))
    obs = jax.random.normal(jax.random.key(7), (3, 4, 4)) * 2.0  # 3 steps of 4 envs, as CartPole gives them
    seen = obs[..., np.array([0, 2])]  # obs_mask [1, 3]: load_policy drops the velocities itself
    done = np.array([[False, True, False, False], [True, False, False, False]])
    apply = jax.jit(lambda o, c: ppo.policy.apply(state.params, state.obs_stats, o, c))
    carry, expected = policy.initial_carry(4), ppo.policy.initial_carry((4,))
    for t in range(3):
        action, carry = policy.step(obs[t], carry)
        dist, _, expected = apply(seen[t], expected)
        np.testing.assert_array_equal(action, dist.mode())
        assert leaves_equal(carry, expected)
        if t < 2:
            carry = policy.reset(carry, done[t])
            expected = jax.tree.map(lambda c: jnp.where(done[t][:, None], 0.0, c), expected)
    key = jax.random.key(3)
    action, _ = policy.step(obs[0, 0], policy.initial_carry(), key)  # one unbatched observation, sampled
    dist, _, _ = ppo.policy.apply(state.params, state.obs_stats, seen[0, 0], ppo.policy.initial_carry())
    np.testing.assert_array_equal(action, dist.sample(key))


def test_evaluation_runs_a_recurrent_policy(runs):
    straight, _ = runs
    source, returns, lengths = trained.evaluate_run(straight.run_dir, 4)
    assert source.record.config == TINY_GRU and source.step == TINY_GRU.num_updates
    np.testing.assert_array_equal(returns, lengths)  # CartPole pays 1 a step
    assert ((np.asarray(lengths) >= 1) & (np.asarray(lengths) <= 20)).all()
