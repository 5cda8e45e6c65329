"""The compiled training program: its per-update metrics, its purity under vmap, and the wiring of
every PPO variant into the loss and the rewards, checked on a fixed batch against the formulas
written out here in numpy (the formulas themselves are tested in test_losses.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo.host.metrics import METRIC_NAMES
from purejaxppo.program import losses
from purejaxppo.program.hparams import HParams
from purejaxppo.program.normalization import RunningStats
from purejaxppo.program.ppo import Batch, make_ppo, make_train

from conftest import TINY


@pytest.fixture(scope="module")
def scanned():
    """TINY as one scan of all its updates (no host loop)."""
    state, metrics = jax.jit(make_train(TINY))(jax.random.key(TINY.seed))
    return state, jax.device_get(metrics)


def test_metrics_are_per_update_and_complete(scanned):
    _, metrics = scanned
    assert set(metrics) == set(METRIC_NAMES)
    for name, value in metrics.items():
        assert value.shape == (TINY.num_updates,), name
    np.testing.assert_array_equal(metrics["env_steps"], TINY.batch_size * np.arange(1, TINY.num_updates + 1))
    # 20-step episodes at most, so episodes complete in every 16-step rollout of 4 envs
    assert (metrics["episode_count"] > 0).all()
    assert np.all((metrics["episode_length"] >= 1) & (metrics["episode_length"] <= 20))
    np.testing.assert_allclose(metrics["episode_return"], metrics["episode_length"])  # CartPole pays 1 per step
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "lr"):
        assert np.isfinite(metrics[name]).all(), name
    assert (np.diff(metrics["lr"]) < 0).all()  # linear decay
    np.testing.assert_allclose(metrics["lr"][-1], TINY.lr / (TINY.num_updates * 4), rtol=1e-4)


def test_episode_return_is_nan_when_no_episode_completes():
    # 4 steps from CartPole's start can tip the pole past neither 12 degrees nor the cart past 2.4
    config = TINY.replace(env_kwargs={"max_steps_in_episode": 500}, num_steps=4, total_timesteps=4 * 4, log_every=0)
    _, metrics = jax.jit(make_train(config))(jax.random.key(3))
    assert metrics["episode_count"][0] == 0
    assert np.isnan(metrics["episode_return"][0]) and np.isnan(metrics["episode_length"][0])


def test_train_is_pure_and_vmaps_over_keys_and_hparams(scanned):
    _, metrics = scanned
    train = make_train(TINY)
    hp = HParams.from_config(TINY)
    keys = jax.random.split(jax.random.key(0), 2).at[0].set(jax.random.key(TINY.seed))
    batched = hp.replace(lr=jnp.stack([hp.lr, hp.lr * 3]), lr_end=jnp.zeros(2))
    in_axes = HParams(**{name: (0 if name in ("lr", "lr_end") else None) for name in HParams.__dataclass_fields__})
    _, vmetrics = jax.jit(jax.vmap(train, in_axes=(0, in_axes)))(keys, batched)
    np.testing.assert_allclose(vmetrics["episode_return"][0], metrics["episode_return"], rtol=1e-5)
    np.testing.assert_allclose(vmetrics["lr"][1], 3 * metrics["lr"], rtol=1e-5)


# ---- the loss on a fixed batch --------------------------------------------------------------------------

N = 64


@pytest.fixture(scope="module")
def fixed():
    """A batch whose ratios spread over [0.2, 4.5] and whose advantages have both signs, the params that
    score it, and observation statistics far from the identity."""
    ppo = make_ppo(TINY)
    params = ppo.policy.init(jax.random.key(0), (4,))
    k = jax.random.split(jax.random.key(1), 6)
    stats = RunningStats(jnp.array([0.5, -1.0, 0.2, 0.0]), jnp.array([4.0, 0.25, 1.0, 9.0]), jnp.float32(50))
    obs = jax.random.normal(k[0], (N, 4)) * 3.0
    action = jax.random.bernoulli(k[1], 0.5, (N,)).astype(jnp.int32)
    dist, _, _ = ppo.policy.apply(params, stats, obs)
    log_prob = dist.log_prob(action) - jax.random.uniform(k[2], (N,), minval=-1.5, maxval=1.5)
    batch = Batch(obs, action, log_prob, jax.random.normal(k[3], (N,)),
                  jax.random.normal(k[4], (N,)) + 0.3, jax.random.normal(k[5], (N,)) * 2.0)
    return params, stats, jax.device_get(batch)


def reference(config, params, stats, batch, kl_beta=0.5, ent_coef=0.01):
    """The loss terms of `config` on `batch`, from the formulas, in float64 numpy."""
    ppo = make_ppo(config)
    obs = np.asarray(batch.obs, np.float64)
    if config.normalize_obs:
        obs = (obs - np.asarray(stats.mean)) / np.sqrt(np.asarray(stats.var) + 1e-8)
    if config.obs_clip:
        obs = np.clip(obs, -config.obs_clip, config.obs_clip)
    logits, _, value = (np.asarray(x, np.float64) if x is not None else None
                        for x in ppo.policy.network.apply(params, (), jnp.asarray(obs, jnp.float32))[:3])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ratio = np.exp(logp[np.arange(N), batch.action] - batch.log_prob)
    adv = np.asarray(batch.advantage, np.float64)
    if config.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    eps = config.clip_eps
    objective = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    if config.dual_clip:
        objective = np.where(adv < 0, np.maximum(objective, config.dual_clip * adv), objective)
    policy_loss = -objective.mean() if config.clip_policy else -(ratio * adv).mean()
    v_old, target = np.asarray(batch.value, np.float64), np.asarray(batch.target, np.float64)
    value_loss = 0.5 * ((value - target) ** 2).mean()
    if config.clip_value:
        clipped = v_old + np.clip(value - v_old, -config.value_clip_eps, config.value_clip_eps)
        value_loss = 0.5 * np.maximum((value - target) ** 2, (clipped - target) ** 2).mean()
    entropy = -(np.exp(logp) * logp).sum(-1).mean()
    kl = (-np.log(ratio)).mean() if config.kl_estimator == "k1" else ((ratio - 1) - np.log(ratio)).mean()
    total = policy_loss + config.vf_coef * value_loss - ent_coef * entropy + (kl_beta * kl if config.kl_coef else 0)
    return {"total": total, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "approx_kl": kl}


def computed(config, params, stats, batch, kl_beta=0.5, ent_coef=0.01):
    ppo = make_ppo(config)
    total, out = ppo.loss(params, stats, ppo.learning_advantages(batch), HParams.from_config(config),
                              jnp.float32(kl_beta), jnp.float32(ent_coef), jax.random.key(0))
    return {"total": total, **out}


VARIANTS = {
    "default": {},
    "clip_value": {"clip_value": True, "value_clip_eps": 0.1},
    "dual_clip": {"dual_clip": 2.0},
    "kl_penalty": {"kl_coef": 0.5},
    "kl_penalty_without_clipping": {"kl_coef": 0.5, "clip_policy": False},
    "k1": {"kl_estimator": "k1", "kl_coef": 0.5},
    "raw_advantages": {"normalize_advantages": False},
    "raw_observations": {"normalize_obs": False},
    "obs_clip": {"obs_clip": 0.8},
    "clip_eps": {"clip_eps": 0.05},
    "vf_coef": {"vf_coef": 2.0},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_loss_follows_its_formula_with_each_variant(fixed, name):
    config = TINY.replace(**VARIANTS[name])
    got, want = computed(config, *fixed), reference(config, *fixed)
    for term in want:
        np.testing.assert_allclose(float(got[term]), want[term], rtol=2e-5, atol=1e-6, err_msg=term)


# what each variant is switched on against: the default, or the variant it refines
OFF = {"k1": {"kl_coef": 0.5}, "kl_penalty_without_clipping": {"kl_coef": 0.5}}


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "default"])
def test_each_variant_changes_the_loss_or_its_gradient(fixed, name):
    params = fixed[0]

    def value_and_grad(config):
        fn = lambda p: computed(config, p, *fixed[1:])["total"]  # noqa: E731
        value, grads = jax.value_and_grad(fn)(params)
        return float(value), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])

    on, off = value_and_grad(TINY.replace(**VARIANTS[name])), value_and_grad(TINY.replace(**OFF.get(name, {})))
    assert on[0] != off[0] or not np.allclose(on[1], off[1]), name


def test_dual_clip_binds_on_the_fixed_batch(fixed):
    # the batch has negative advantages with ratios past c = 2, so the bound is in play, not vacuous
    config = TINY.replace(dual_clip=2.0)
    out = computed(config, *fixed)
    assert 0.0 < float(out["dual_clip_fraction"]) < 1.0


def test_the_entropy_bonus_enters_with_its_coefficient(fixed):
    low, high = computed(TINY, *fixed, ent_coef=0.0), computed(TINY, *fixed, ent_coef=0.2)
    np.testing.assert_allclose(float(low["total"] - high["total"]), 0.2 * float(low["entropy"]), rtol=1e-5)


# ---- rewards: scaling, normalisation and clipping reach GAE -------------------------------------------------


@pytest.mark.parametrize("changes", [{}, {"reward_scale": 5.0, "reward_clip": 2.0},
                                     {"reward_scale": 3.0, "normalize_reward": True, "reward_clip": 0.5}])
def test_the_rewards_gae_sees(changes):
    """One update's advantages, against GAE on the rollout's rewards transformed by hand."""
    config = TINY.replace(normalize_obs=False, **changes)
    ppo = make_ppo(config)
    state = ppo.init(jax.random.key(4))
    _, k_rollout, _ = jax.random.split(state.key, 3)
    after, traj = ppo.rollout(state, k_rollout)
    np.testing.assert_allclose(traj.reward, config.reward_scale)  # CartPole pays 1 a step, scaled
    rewards = np.asarray(traj.reward, np.float64)
    if config.normalize_reward:  # statistics start empty, so they are this rollout's discounted returns
        rewards = rewards / np.sqrt(np.var(np.asarray(traj.discounted_return, np.float64)) + 1e-8)
    if config.reward_clip:
        rewards = np.clip(rewards, -config.reward_clip, config.reward_clip)
    next_values = ppo.policy.value(after.params, after.obs_stats, traj.final_obs)
    adv, _ = losses.gae(jnp.asarray(rewards, jnp.float32), traj.value, next_values, traj.terminated, traj.truncated,
                        config.gamma, config.gae_lambda)
    _, metrics = jax.jit(ppo.update)(state)
    np.testing.assert_allclose(metrics["advantage_mean"], np.mean(adv), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["advantage_std"], np.std(adv), rtol=1e-4, atol=1e-6)


def test_observation_statistics_take_in_the_rollout_after_learning_from_it():
    ppo = make_ppo(TINY)
    state = ppo.init(jax.random.key(5))
    _, k_rollout, _ = jax.random.split(state.key, 3)
    _, traj = ppo.rollout(state, k_rollout)
    new, _ = jax.jit(ppo.update)(state)
    seen = np.asarray(traj.obs, np.float64).reshape(-1, 4)
    np.testing.assert_allclose(new.obs_stats.mean, seen.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.obs_stats.var, seen.var(0), rtol=1e-3, atol=1e-5)
    assert float(new.obs_stats.count) == TINY.batch_size
