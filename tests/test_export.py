"""Exporting a trained policy: the ONNX model and the serialized JAX program act as `load_policy` does, for
every kind of policy (on 1,000 observations), sample from their noise input as the distribution says, play
an episode as `eval` does, load without purejaxppo, and refuse what they cannot be in one line."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from purejaxppo import PPOConfig, load_policy, train
from purejaxppo import cli as cli_lib
from purejaxppo.envs import make_env
from purejaxppo.host.export import export_policy
from purejaxppo.host.trained import evaluate_run, read_trained
from purejaxppo.program.policy import Policy

from conftest import CACHE
from test_masked_actions import Pick

BASE = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1, hidden_sizes=(16,), normalize_obs=True,
            log_every=1, compilation_cache=CACHE)
KINDS = {  # each trained for one update: an export is of the params, whatever they learned
    "categorical": PPOConfig(env="CartPole-v1", total_timesteps=64, obs_mask=(1,), **BASE),
    "gaussian": PPOConfig(env="Pendulum-v1", total_timesteps=64, **BASE),
    "tanh_gaussian": PPOConfig(env="Pendulum-v1", total_timesteps=64, distribution="tanh_gaussian", **BASE),
    "beta": PPOConfig(env="Pendulum-v1", total_timesteps=64, distribution="beta", **BASE),
    "cnn": PPOConfig(env="Breakout-MinAtar", total_timesteps=64, torso="cnn", cnn_channels=(4,), **BASE),
    "gru": PPOConfig(env="CartPole-v1", total_timesteps=64, memory="gru", memory_size=8, **BASE),
    "lstm": PPOConfig(env="CartPole-v1", total_timesteps=64, memory="lstm", memory_size=8, **BASE),
    "masked": PPOConfig(env="Pick", total_timesteps=64, **BASE),
    "multi_discrete": PPOConfig(env="Pick", total_timesteps=64, **BASE),  # masked, two components
}
ENVS = {"masked": Pick(), "multi_discrete": Pick((2, 3))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {kind: train(config, root / kind, env=ENVS.get(kind)).run_dir
            for kind, config in KINDS.items()}


def onnx_session(path):
    return onnxruntime.InferenceSession(str(path))


def jax_program(path):
    return jax.export.deserialize(bytearray(path.read_bytes()))


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("gru", "lstm")])
def test_a_feedforward_export_acts_as_load_policy(runs, kind):
    run_dir = runs[kind]
    act = load_policy(run_dir)
    size = int(np.prod(read_trained(run_dir).signature.env_observation_shape))
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((1000, size)).astype(np.float32)
    feeds = {"obs": obs}
    if kind in ENVS:
        parts = [rng.random((1000, n)) < 0.5 for n in ENVS[kind].nvec or (4,)]
        for part in parts:
            part[np.arange(1000), rng.integers(0, part.shape[1], 1000)] = True  # one legal choice at least
        feeds["mask"] = np.concatenate(parts, axis=1)
    want = np.asarray(act(obs, mask=feeds.get("mask")))
    onnx = export_policy(run_dir, "onnx", run_dir / "p.onnx", value=True)
    exported = export_policy(run_dir, "jax", run_dir / "p", value=True)
    got_onnx = onnx_session(onnx.path).run(None, feeds)
    got_jax = jax_program(exported.path).call(*feeds.values())
    for got in (got_onnx[0], np.asarray(got_jax[0])):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the value: float32 sums in another order (a MinAtar CNN's differ by up to 7.6e-5 of 2.4, see export.py)
    np.testing.assert_allclose(got_onnx[1], np.asarray(got_jax[1]), rtol=1e-4, atol=1e-4)
    meta = json.loads(onnx.metadata.read_text())
    assert [i["name"] for i in meta["inputs"]] == list(feeds) and meta["outputs"][1]["name"] == "value"
    assert meta["checkpoint_step"] == 1 and meta["distribution"] == ("categorical" if kind in ("cnn", *ENVS)
                                                                     else kind)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_a_recurrent_export_steps_its_carry_as_load_policy(runs, kind):
    run_dir = runs[kind]
    policy = load_policy(run_dir)
    for fmt in ("onnx", "jax"):
        exported = export_policy(run_dir, fmt, run_dir / f"p-{fmt}")
        assert exported.initial_carry is not None
        if fmt == "onnx":
            step, initial = onnx_session(exported.path), onnx_session(exported.initial_carry)
            names = [i.name for i in step.get_inputs()]
            run_step = lambda o, c: step.run(None, {"obs": o, **dict(zip(names[1:], c))})  # noqa: E731
            carry = initial.run(None, {"obs": np.zeros((200, 4), np.float32)})
        else:
            step, initial = jax_program(exported.path), jax_program(exported.initial_carry)
            run_step = lambda o, c: step.call(o, *c)  # noqa: E731
            carry = initial.call(np.zeros((200, 4), np.float32))
        mine = policy.initial_carry(200)
        rng = np.random.default_rng(1)
        for _ in range(5):  # 1,000 observations in five steps of 200 envs
            obs = rng.standard_normal((200, 4)).astype(np.float32)
            want, mine = policy.step(obs, mine)
            action, *carry = run_step(obs, carry)
            np.testing.assert_array_equal(np.asarray(action), np.asarray(want))
            for a, b in zip(carry, jax.tree.leaves(mine)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_a_stochastic_export_samples_as_the_distribution_says(runs):
    run_dir = runs["categorical"]
    exported = export_policy(run_dir, "onnx", run_dir / "sampled", stochastic=True)
    trained = read_trained(run_dir)
    obs = np.full((20_000, 4), 0.3, np.float32)
    noise = np.random.default_rng(2).uniform(size=(20_000, 2)).astype(np.float32)
    (actions,) = onnx_session(exported.path).run(None, {"obs": obs, "noise": noise})
    dist, _, _ = trained.policy.apply(trained.params, trained.obs_stats, jnp.asarray(obs[:1, [0, 2, 3]]))
    probs = np.asarray(jax.nn.softmax(dist.logits[0]))
    np.testing.assert_allclose(np.bincount(actions, minlength=2) / 20_000, probs, atol=0.01)
    sampled = jax_program(export_policy(run_dir, "jax", run_dir / "sampled", stochastic=True).path)
    np.testing.assert_array_equal(np.asarray(sampled.call(obs[:100], noise[:100])[0]), actions[:100])
    meta = json.loads(exported.metadata.read_text())
    assert meta["noise"] == {"distribution": "uniform", "shape": ["batch", 2]} and meta["stochastic"]


@pytest.mark.parametrize("kind", ["categorical", "gru"])
def test_an_episode_with_onnxruntime_returns_what_eval_returns(runs, kind):
    run_dir = runs[kind]
    exported = export_policy(run_dir, "onnx")
    session = onnx_session(exported.path)
    names = [i.name for i in session.get_inputs()][1:]  # the carry's, for the GRU
    carry = onnx_session(exported.initial_carry).run(None, {"obs": np.zeros((1, 4), np.float32)}) if names else []
    _, returns, _ = evaluate_run(run_dir, 1, seed=4)
    env = make_env("CartPole-v1")  # the env as the run saw it but for obs_mask: the export drops component 1
    k_reset, k_steps = jax.random.split(jax.random.key(4))  # the keys evaluation draws for its one episode
    obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, 1))
    step = jax.jit(jax.vmap(env.step))
    total, done, key = 0.0, False, k_steps
    while not done:
        key, k_env = jax.random.split(key)
        action, *carry = session.run(None, {"obs": np.asarray(obs, np.float32), **dict(zip(names, carry))})
        out = step(jax.random.split(k_env, 1), state, jnp.asarray(action))
        total += float(out.reward[0])
        done = bool(out.terminated[0] | out.truncated[0])
        obs, state = out.obs, out.state
    assert total == float(returns[0])


def test_a_stochastic_gaussian_export_is_the_mean_plus_std_times_its_noise_in_the_bounds(runs):
    run_dir = runs["tanh_gaussian"]
    trained = read_trained(run_dir)
    rng = np.random.default_rng(3)
    obs, noise = rng.standard_normal((1000, 3)).astype(np.float32), rng.standard_normal((1000, 1)).astype(np.float32)
    (action,) = onnx_session(export_policy(run_dir, "onnx", run_dir / "sampled", stochastic=True).path).run(
        None, {"obs": obs, "noise": noise})
    dist, _, _ = trained.policy.apply(trained.params, trained.obs_stats, jnp.asarray(obs))
    raw = np.asarray(dist.mean, np.float64) + np.exp(np.asarray(dist.log_std, np.float64)) * noise
    np.testing.assert_allclose(action, -2.0 + (np.tanh(raw) + 1.0) * 2.0, rtol=1e-5, atol=1e-5)  # Pendulum: [-2, 2]
    assert np.all(np.abs(action) <= 2.0)


def test_the_cli_writes_into_a_folder_whole_files_and_says_what_it_wrote(runs, tmp_path, capsys):
    assert cli_lib.main(["export", str(runs["gru"]), "--format", "jax", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.initial_carry.jaxexport", "policy.jaxexport",
                                                           "policy.jaxexport.json"]  # no .part left behind
    # a GRU whose actor and critic each have a core: two carries
    assert out[0] == (f"wrote {tmp_path / 'policy.jaxexport'} (jax): obs[batch,4] float32, carry_0[batch,8] float32, "
                      f"carry_1[batch,8] float32 -> action[batch] int32, next_carry_0[batch,8] float32, "
                      f"next_carry_1[batch,8] float32")
    assert len(out) == 3


def test_the_jax_program_loads_where_purejaxppo_cannot_be_imported(runs, tmp_path):
    path = export_policy(runs["categorical"], "jax", tmp_path / "policy").path
    script = (
        "import sys\n"
        "sys.modules['purejaxppo'] = None  # not importable here\n"
        "import jax, numpy as np\n"
        "try:\n"
        "    import purejaxppo\n"
        "    raise SystemExit('purejaxppo was importable')\n"
        "except ImportError:\n"
        "    pass\n"
        f"program = jax.export.deserialize(bytearray(open({str(path)!r}, 'rb').read()))\n"
        "print(program.call(np.zeros((3, 4), np.float32))[0].tolist())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = load_policy(runs["categorical"])(np.zeros((3, 4), np.float32))
    assert proc.stdout.strip() == str(np.asarray(want).tolist())


def test_what_cannot_be_exported_is_one_line(runs, tmp_path, monkeypatch, capsys):
    def refused(*args: str) -> str:
        assert cli_lib.main(["export", *args]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        return err.strip().removeprefix("purejaxppo: error: ")

    (tmp_path / "empty").mkdir()
    assert refused(str(tmp_path / "empty")).startswith(f"run dir {tmp_path / 'empty'} has no checkpoints")
    assert refused(str(runs["categorical"]), "--out", str(tmp_path / "missing" / "p.onnx")) == (
        f"--out: {tmp_path / 'missing'} is not a folder")
    assert not (tmp_path / "missing").exists()
    assert refused(str(runs["beta"]), "--stochastic") == (
        "--stochastic: a Beta policy's sample cannot be driven by a noise input; export it deterministic")
    # a policy that acts through an op jax2onnx has no converter for (here a host callback)
    observe = Policy.observe
    monkeypatch.setattr(Policy, "observe", lambda self, stats, obs: jax.pure_callback(
        np.asarray, jax.ShapeDtypeStruct(obs.shape, obs.dtype), observe(self, stats, obs), vmap_method="sequential"))
    assert refused(str(runs["categorical"])) == ("--format onnx: this policy uses pure_callback, which jax2onnx "
                                                 "cannot convert to ONNX; export --format jax instead")
    monkeypatch.setattr(Policy, "observe", observe)
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # the export extra, not installed
    assert refused(str(runs["categorical"])) == ("--format onnx: needs the export extra (jax2onnx is not "
                                                 "installed): pip install 'purejaxppo[export]'")
    assert cli_lib.main(["export", str(runs["categorical"]), "--format", "jax"]) == 0
    assert "policy.jaxexport (jax): obs[batch,4] float32 -> action[batch] int32" in capsys.readouterr().out
