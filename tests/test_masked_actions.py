"""Masked and multi-discrete Categoricals against float64 references written from the definitions; the
CNN torso: shapes, the same values under vmap as one by one, and a hand-made convolution; and the trainer
on a masked env of its own protocol (discrete and MultiDiscrete), which never takes an illegal action."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import LoadedPolicy, make_ppo, make_train
from purejaxppo.config import PPOConfig
from purejaxppo.envs import ActionSpace, EnvStep
from purejaxppo.program.distributions import Categorical, MultiCategorical
from purejaxppo.program.evaluation import evaluate
from purejaxppo.program.networks import Torso, conv_output_shape

LOGITS = np.array([[0.3, -1.2, 2.0, 0.5], [1.0, 1.0, -0.5, 3.0], [0.0, 0.7, 0.2, -2.0]], np.float32)
MASK = np.array([[True, False, True, True], [False, True, False, False], [True, True, True, True]])


def reference_probs(logits, mask):
    """Softmax over the legal actions only, in float64; 0 for the illegal ones."""
    z = np.where(mask, np.exp(np.asarray(logits, np.float64)), 0.0)
    return z / z.sum(-1, keepdims=True)


def reference_entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)


def test_masked_categorical_matches_the_softmax_over_legal_actions():
    dist = Categorical(jnp.asarray(LOGITS), jnp.asarray(MASK))
    p = reference_probs(LOGITS, MASK)
    for action in range(4):
        legal = MASK[:, action]
        got = np.asarray(dist.log_prob(jnp.full((3,), action)))
        np.testing.assert_allclose(got[legal], np.log(p[legal, action]), rtol=1e-5)
        assert (got[~legal] < -1e30).all()  # an illegal action is (as good as) impossible
    np.testing.assert_allclose(dist.entropy(), reference_entropy(p), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(dist.mode(), np.argmax(np.where(MASK, LOGITS, -np.inf), -1))
    # without a mask, the plain softmax
    plain = Categorical(jnp.asarray(LOGITS))
    full = reference_probs(LOGITS, np.ones_like(MASK))
    np.testing.assert_allclose(plain.entropy(), reference_entropy(full), rtol=1e-5)


def test_one_legal_action_has_entropy_zero_and_finite_gradients():
    mask = jnp.asarray(MASK[1])  # only action 1 is legal
    entropy = lambda logits: Categorical(logits, mask).entropy()  # noqa: E731
    assert float(entropy(jnp.asarray(LOGITS[1]))) == 0.0
    assert float(Categorical(jnp.asarray(LOGITS[1]), mask).log_prob(jnp.int32(1))) == 0.0
    grads = jax.grad(entropy)(jnp.asarray(LOGITS[1]))
    np.testing.assert_array_equal(grads, np.zeros(4))
    log_prob_grad = jax.grad(lambda lg: Categorical(lg, jnp.asarray(MASK[0])).log_prob(jnp.int32(2)))
    g = np.asarray(log_prob_grad(jnp.asarray(LOGITS[0])))
    assert np.isfinite(g).all() and g[1] == 0.0  # no gradient reaches the illegal logit
    # every action masked: uniform, finite, never NaN
    none = Categorical(jnp.asarray(LOGITS[0]), jnp.zeros(4, bool))
    assert np.isfinite(float(none.log_prob(jnp.int32(0))))


def test_sampling_never_picks_a_masked_action_and_follows_the_legal_probabilities():
    dist = Categorical(jnp.asarray(LOGITS), jnp.asarray(MASK))
    draws = 40_000
    samples = np.asarray(jax.vmap(dist.sample)(jax.random.split(jax.random.key(0), draws)))  # [draws, 3]
    p = reference_probs(LOGITS, MASK)
    for row in range(3):
        counts = np.bincount(samples[:, row], minlength=4) / draws
        assert (counts[~MASK[row]] == 0).all()
        np.testing.assert_allclose(counts, p[row], atol=5 * np.sqrt(0.25 / draws))


def test_masked_kl_matches_its_closed_form():
    other_logits = LOGITS[::-1].copy()
    mine, theirs = Categorical(jnp.asarray(LOGITS), jnp.asarray(MASK)), Categorical(jnp.asarray(other_logits))
    p, q = reference_probs(LOGITS, MASK), reference_probs(other_logits, np.ones_like(MASK))
    expected = np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0), -1)
    np.testing.assert_allclose(mine.kl(theirs), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mine.kl(mine), np.zeros(3), atol=1e-6)
    # the KL PPO's estimators target: the mean of log p - log q over p's samples
    samples = jax.vmap(mine.sample)(jax.random.split(jax.random.key(1), 40_000))
    estimate = np.mean(np.asarray(jax.vmap(lambda a: mine.log_prob(a) - theirs.log_prob(a))(samples)), 0)
    np.testing.assert_allclose(estimate, expected, atol=0.03)


NVEC = (2, 3, 4)


def test_multi_categorical_is_the_product_of_its_components():
    logits = np.random.default_rng(0).normal(size=(5, sum(NVEC))).astype(np.float32)
    mask = np.ones((5, sum(NVEC)), bool)
    mask[:, 2] = False  # component 1's first choice is illegal everywhere
    mask[0, 5:8] = False  # state 0: component 2 has one legal choice left (its last)
    dist = MultiCategorical(jnp.asarray(logits), NVEC, jnp.asarray(mask))
    cuts = np.cumsum(NVEC)[:-1]
    parts = [reference_probs(lg, m) for lg, m in zip(np.split(logits, cuts, -1), np.split(mask, cuts, -1))]
    # log prob of every joint action: the sum of the components'
    for action in itertools.product(*(range(n) for n in NVEC)):
        with np.errstate(divide="ignore"):  # log 0 of an illegal action
            expected = np.log(np.prod([parts[i][:, a] for i, a in enumerate(action)], 0))
        got = np.asarray(dist.log_prob(jnp.broadcast_to(jnp.asarray(action), (5, 3))))
        legal = np.isfinite(expected)
        np.testing.assert_allclose(got[legal], expected[legal], rtol=1e-5, atol=1e-6)
        assert (got[~legal] < -1e30).all()
    np.testing.assert_allclose(dist.entropy(), sum(reference_entropy(p) for p in parts), rtol=1e-5)
    samples = np.asarray(dist.sample(jax.random.key(3)))
    assert samples.shape == (5, 3) and samples.dtype == np.int32
    assert (samples[:, 1] != 0).all() and (samples[0, 2] == 3)
    other = MultiCategorical(jnp.zeros((5, sum(NVEC))), NVEC)
    uniform = [np.full((5, n), 1.0 / n) for n in NVEC]
    expected_kl = sum(np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(u)), 0.0), -1)
                      for p, u in zip(parts, uniform))
    np.testing.assert_allclose(dist.kl(other), expected_kl, rtol=1e-5, atol=1e-7)
    pieces = zip(np.split(logits, cuts, -1), np.split(mask, cuts, -1))
    modes = [np.argmax(np.where(m, lg, -np.inf), -1) for lg, m in pieces]
    np.testing.assert_array_equal(dist.mode(), np.stack(modes, -1))


# ----------------------------------------------------------------------------------------------------
# The CNN torso

IMAGE = (6, 5, 3)
CONVS = ((4, 3, 1), (2, 2, 2))


@pytest.fixture(scope="module")
def torso():
    net = Torso((8,), "relu", 2**0.5, False, convs=CONVS, image_shape=IMAGE)
    params = net.init(jax.random.key(0), jnp.zeros((int(np.prod(IMAGE)),)))
    return net, params


def test_cnn_torso_shapes(torso):
    net, params = torso
    assert conv_output_shape(IMAGE, CONVS) == (2, 1, 2)
    assert params["params"]["Dense_0"]["kernel"].shape == (3 * 3 * 3, 4)
    assert params["params"]["Dense_1"]["kernel"].shape == (2 * 2 * 4, 2)
    assert params["params"]["Dense_2"]["kernel"].shape == (2 * 1 * 2, 8)
    flat = jnp.ones((7, 2, int(np.prod(IMAGE))))
    assert net.apply(params, flat).shape == (7, 2, 8)
    assert net.apply(params, flat[0, 0]).shape == (8,)


def test_cnn_torso_is_the_same_under_vmap_as_one_by_one(torso):
    net, params = torso
    images = jax.random.normal(jax.random.key(1), (5, int(np.prod(IMAGE))))
    one_by_one = np.stack([net.apply(params, x) for x in images])
    np.testing.assert_allclose(jax.vmap(lambda x: net.apply(params, x))(images), one_by_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.apply(params, images), one_by_one, rtol=1e-5, atol=1e-6)


def test_cnn_torso_is_the_unpadded_convolution(torso):
    """Against XLA's own convolution, layer by layer, with each layer's kernel as [k, k, C, out]."""
    net, params = torso
    images = jax.random.normal(jax.random.key(2), (4, *IMAGE))
    x = images
    for layer, (channels, kernel, stride) in enumerate(CONVS):
        dense = params["params"][f"Dense_{layer}"]
        w = dense["kernel"].reshape(kernel, kernel, x.shape[-1], channels)
        x = jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x + dense["bias"])
    last = params["params"][f"Dense_{len(CONVS)}"]
    expected = jax.nn.relu(x.reshape(4, -1) @ last["kernel"] + last["bias"])
    np.testing.assert_allclose(net.apply(params, images.reshape(4, -1)), expected, rtol=1e-5, atol=1e-6)


def test_cnn_torso_computes_a_hand_made_convolution():
    net = Torso((), "relu", 1.0, False, convs=((1, 2, 1),), image_shape=(3, 3, 1))
    image = np.arange(9, dtype=np.float32)
    kernel = np.array([[1.0, -1.0], [2.0, 0.5]], np.float32)
    params = {"params": {"Dense_0": {"kernel": jnp.asarray(kernel).reshape(4, 1), "bias": jnp.asarray([0.25])}}}
    grid = image.reshape(3, 3)
    expected = [max(0.0, float(np.sum(grid[i:i + 2, j:j + 2] * kernel)) + 0.25) for i in range(2) for j in range(2)]
    np.testing.assert_allclose(net.apply(params, jnp.asarray(image)), expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# The trainer with a masked env: the mask reaches the rollout, the loss and evaluation


LENGTH = 5


class Pick:
    """Each step draws which of `n` actions are legal (at least one, often only one) and shows them; a legal
    action pays 1, an illegal one -10, so an episode's return is LENGTH exactly when no illegal action is
    ever taken. With `nvec`, a MultiDiscrete action, each component masked on its own."""

    def __init__(self, nvec: tuple[int, ...] = ()) -> None:
        self.nvec = nvec
        self.action_space = ActionSpace.multi_discrete(nvec, True) if nvec else ActionSpace.discrete_actions(4, True)
        self.observation_shape = (self.action_space.n,)

    def _draw(self, key):
        mask = jax.random.bernoulli(key, 0.3, (self.action_space.n,))
        cuts = np.cumsum(self.nvec or (4,))
        starts = np.concatenate([[0], cuts[:-1]])
        for start, end in zip(starts, cuts):  # each component keeps one legal choice at least
            forced = jax.random.randint(jax.random.fold_in(key, int(start)), (), start, end)
            mask = jnp.where(jnp.arange(self.action_space.n) == forced, True, mask)
        return mask

    def reset(self, key):
        mask = self._draw(key)
        return mask.astype(jnp.float32), (mask, jnp.int32(0))

    def action_mask(self, state):
        return state[0]

    def step(self, key, state, action):
        mask, t = state
        if self.nvec:
            offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
            legal = jnp.all(mask[jnp.asarray(offsets) + action])
        else:
            legal = mask[action]
        reward = jnp.where(legal, 1.0, -10.0)
        t = t + 1
        truncated = t >= LENGTH
        new_mask = self._draw(key)
        next_state = (new_mask, jnp.where(truncated, 0, t))
        return EnvStep(new_mask.astype(jnp.float32), next_state, reward, jnp.bool_(False), truncated,
                       new_mask.astype(jnp.float32))


MASKED = PPOConfig(env="Pick", num_envs=8, num_steps=10, total_timesteps=8 * 10 * 3, num_minibatches=2,
                   update_epochs=2, hidden_sizes=(16,))


@pytest.mark.parametrize("nvec", [(), (2, 3)], ids=["discrete", "multi-discrete"])
def test_the_trainer_never_takes_an_illegal_action(nvec):
    env = Pick(nvec)
    ppo = make_ppo(MASKED, env)
    state = ppo.init(jax.random.key(0))
    _, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    assert traj.mask.shape == (10, 8, env.action_space.n)
    if nvec:
        offsets = np.array([0, 2])
        taken = np.take_along_axis(np.asarray(traj.mask), np.asarray(traj.action) + offsets, -1)
    else:
        taken = np.take_along_axis(np.asarray(traj.mask), np.asarray(traj.action)[..., None], -1)
    assert taken.all()
    final, metrics = jax.jit(make_train(MASKED, env=env))(jax.random.key(2))
    metrics = jax.tree.map(np.asarray, metrics)
    np.testing.assert_array_equal(metrics["episode_return"], np.full(3, float(LENGTH)))
    assert all(np.isfinite(v).all() for v in metrics.values())
    returns, _ = jax.jit(lambda k: evaluate(ppo.policy, ppo.env, final.params, final.obs_stats, k, 6))(
        jax.random.key(3))
    np.testing.assert_array_equal(returns, np.full(6, float(LENGTH)))
    # a loaded policy given one legal choice per component takes it, sampled or deterministic
    loaded = LoadedPolicy(ppo.policy, final.params, final.obs_stats)
    choices = np.array([[0, 1], [1, 2], [0, 0]]) if nvec else np.array([[3], [1], [2]])
    offsets = np.array([0, 2]) if nvec else np.array([0])
    only = np.zeros((3, env.action_space.n), bool)
    np.put_along_axis(only, choices + offsets, True, -1)
    expected = choices if nvec else choices[:, 0]
    for key in (None, jax.random.key(4)):
        np.testing.assert_array_equal(loaded(only.astype(np.float32), key, mask=only), expected)
    with pytest.raises(TypeError, match=r"masks its actions .*: pass mask=env.action_mask\(state\), "
                                        rf"bool\[{env.action_space.n}\] batched like obs, or it may act illegally"):
        loaded(only.astype(np.float32))
