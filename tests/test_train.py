"""The compiled program on a tiny config: its metrics, purity, chunking and the CLI's outputs.
One small config is compiled once per module and shared."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from purejaxppo import config as config_lib
from purejaxppo import acting, runner
from purejaxppo.config import PPOConfig
from purejaxppo.envs import make_env
from purejaxppo.train import HParams, make_train, make_trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = PPOConfig(
    env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 7, num_minibatches=2,
    update_epochs=2, hidden_sizes=(16,), log_every=3, env_kwargs={"max_steps_in_episode": 20},
)


@pytest.fixture(scope="module")
def straight():
    train = jax.jit(make_train(TINY))
    state, metrics = train(jax.random.key(TINY.seed))
    return state, jax.device_get(metrics)


def test_metrics_are_per_update_and_complete(straight):
    _, metrics = straight
    assert set(metrics) == set(runner.METRIC_NAMES)
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


def test_chunked_runner_matches_the_single_scan(straight, tmp_path):
    state, metrics = straight
    result = runner.train(TINY, tmp_path / "run")  # 7 updates in chunks of 3, 3 and 1
    for name in metrics:
        np.testing.assert_allclose(result.metrics[name], metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["update"]) for r in rows] == list(range(TINY.num_updates))
    assert list(rows[0]) == ["update", *runner.METRIC_NAMES]
    np.testing.assert_allclose([float(r["episode_return"]) for r in rows], metrics["episode_return"], rtol=1e-5)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert PPOConfig(**{**saved, "hidden_sizes": tuple(saved["hidden_sizes"])}) == TINY


def test_train_is_pure_and_vmaps_over_keys_and_hparams(straight):
    _, metrics = straight
    train = make_train(TINY)
    hp = HParams.from_config(TINY)
    keys = jax.random.split(jax.random.key(0), 2).at[0].set(jax.random.key(TINY.seed))
    lrs = jax.numpy.stack([hp.lr, hp.lr * 3])
    batched = hp.replace(lr=lrs, lr_end=jax.numpy.zeros(2))
    in_axes = HParams(**{name: (0 if name in ("lr", "lr_end") else None) for name in HParams.__dataclass_fields__})
    _, vmetrics = jax.jit(jax.vmap(train, in_axes=(0, in_axes)))(keys, batched)
    np.testing.assert_allclose(vmetrics["episode_return"][0], metrics["episode_return"], rtol=1e-5)
    np.testing.assert_allclose(vmetrics["lr"][1], 3 * metrics["lr"], rtol=1e-5)


def test_continuous_actions_are_clipped_for_the_env_only():
    config = PPOConfig(env="Pendulum-v1", num_envs=2, num_steps=8, total_timesteps=32, num_minibatches=2,
                       env_kwargs={"max_steps_in_episode": 8},
                       hidden_sizes=(8,))
    trainer = make_trainer(config)
    assert not trainer.policy.action_space.discrete
    wide = jax.numpy.array([-5.0, 0.5, 7.0])[:, None]
    np.testing.assert_allclose(trainer.policy.env_action(wide)[:, 0], [-2.0, 0.5, 2.0])
    _, metrics = jax.jit(make_train(config))(jax.random.key(0))
    assert np.isfinite(metrics["policy_loss"]).all() and np.isfinite(metrics["episode_return"]).all()


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


def test_cli_train_writes_run_dir_and_summary(tmp_path):
    run_dir = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir),
         "--set", "total_timesteps=2048", "--set", "num_envs=4", "--set", "num_steps=64", "--set", "log_every=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "update 2/8" in out and "update 8/8" in out  # progress while training, not only at the end
    for field in ("final return", "env steps    2,048", "compile time", "run time", "env steps/s"):
        assert field in out, field
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 8
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_timesteps"] == 2048


def test_a_repeat_run_loads_its_program_from_the_compilation_cache(tmp_path):
    # in fresh processes, so no in-memory cache can answer: the second finds the first's entries
    script = (
        "import sys, jax; from purejaxppo import runner; from purejaxppo.config import PPOConfig\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if 'cache_hits' in e else None)\n"
        "config = PPOConfig(env='CartPole-v1', num_envs=4, num_steps=8, total_timesteps=64, num_minibatches=2,"
        " hidden_sizes=(8,), compilation_cache=sys.argv[1])\n"
        "result = runner.train(config)\n"
        "print('HITS', len(hits), 'COMPILE', result.compile_time)\n"
    )
    cache = tmp_path / "cache"
    outputs = []
    for folder in (cache, cache, ""):  # the third: the cache off, though the environment names the same folder
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
        proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, cwd=ROOT,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(int(proc.stdout.split("HITS")[1].split()[0]))
    assert any(cache.iterdir())
    assert outputs[0] == 0 and outputs[1] >= 1 and outputs[2] == 0


def test_a_run_sharded_over_four_devices_matches_one_device(tmp_path):
    script = (
        "import jax, numpy as np\n"
        "jax.config.update('jax_num_cpu_devices', 4)\n"
        "from purejaxppo import runner\n"
        "from purejaxppo.config import PPOConfig\n"
        "from purejaxppo.train import make_train\n"
        "c = PPOConfig(env='CartPole-v1', num_envs=8, num_steps=16, total_timesteps=8 * 16 * 6, num_minibatches=4,"
        " update_epochs=2, hidden_sizes=(16,), normalize_obs=True, log_every=3, compilation_cache='')\n"
        f"r = runner.train(c, {str(tmp_path / 'run')!r})\n"
        "assert r.state.obs.sharding.spec == jax.sharding.PartitionSpec('envs'), r.state.obs.sharding\n"
        "with jax.default_device(jax.local_devices()[0]):\n"
        "    state, m = jax.jit(make_train(c))(jax.random.key(c.seed))\n"
        "assert len(state.obs.devices()) == 1\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, sharded_loss=r.metrics['policy_loss'], loss=m['policy_loss'],"
        " sharded_mean=r.state.obs_stats.mean, mean=state.obs_stats.mean,"
        " sharded_leaf=jax.tree.leaves(r.state.params)[0], leaf=jax.tree.leaves(state.params)[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["sharded_loss"], out["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["sharded_mean"], out["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["sharded_leaf"], out["leaf"], rtol=1e-4, atol=1e-6)
    # its checkpoint, written from four devices, restores in this process of one
    _, params, _, _ = acting.restore_policy(tmp_path / "run")
    np.testing.assert_array_equal(jax.tree.leaves(params)[0], out["sharded_leaf"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_over_two_processes_matches_one_device(tmp_path):
    # jax.distributed on this machine: two processes of two CPU devices each, one run over all four
    run_dir, port = tmp_path / "dist", _free_port()
    overrides = ["num_envs=8", "num_steps=16", "total_timesteps=768", "num_minibatches=4", "update_epochs=2",
                 "hidden_sizes=[16]", "normalize_obs=true", "log_every=3", "checkpoint_every=3", "compilation_cache="]
    script = "import sys\nfrom purejaxppo.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["train", "--run-dir", str(run_dir), "--cpu-devices", "2", "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2",
            *[a for o in overrides for a in ("--set", o)]]
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
    procs = []
    try:
        for i, (out, err) in enumerate(logs):
            with out.open("w") as o, err.open("w") as e:  # files, not pipes: neither child can block on output
                procs.append(subprocess.Popen([sys.executable, "-c", script, *args, "--process-id", str(i)], cwd=ROOT,
                                              stdout=o, stderr=e))
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:  # one that failed leaves the other waiting for it
            p.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "on 4 devices" in outputs[0][0]
    assert "update 3/6" in outputs[0][0] and "update 3/6" not in outputs[1][0]  # only process 0 reports progress
    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", overrides)
    single = runner.train(config)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == config.num_updates
    for name in ("policy_loss", "value_loss", "approx_kl", "episode_return"):
        np.testing.assert_allclose([float(r[name]) for r in rows], single.metrics[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3", "6"]


def test_peak_memory_does_not_grow_with_the_number_of_updates():
    # In one fresh process, 2000 updates in 1000 chunks: the memory after the first 200 updates against that at
    # the end (10x the updates). Peak RSS differs by tens of MB between processes (the compile's peak), not
    # within one, so the run is compared with its own start.
    script = (
        "import os, resource\n"
        "from purejaxppo import runner\n"
        "from purejaxppo.config import PPOConfig\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page // 1024\n"
        "seen = {}\n"
        "def probe(p):\n"
        "    if p['update'] in (200, 2000):\n"
        "        seen[p['update']] = (rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "c = PPOConfig(env='CartPole-v1', num_envs=4, num_steps=8, total_timesteps=32 * 2000, num_minibatches=2,"
        " update_epochs=1, hidden_sizes=(8,), log_every=2, compilation_cache='')\n"
        "runner.train(c, on_chunk=probe)\n"
        "print('KIB', *seen[200], *seen[2000])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss_200, peak_200, rss_2000, peak_2000 = map(int, proc.stdout.split("KIB")[1].split())
    # What may grow: the per-update metrics kept for the result, ~2 KB a chunk here. Keeping each chunk's device
    # buffers alive (views instead of copies) grew ~27 KB a chunk: +24 MB over these 900 chunks.
    assert rss_2000 - rss_200 <= 5 * 1024, (rss_200, rss_2000)
    assert peak_2000 <= peak_200 * 1.01, (peak_200, peak_2000)


def test_cli_distributed_without_a_cluster_is_one_clear_error():
    proc = subprocess.run([sys.executable, "-m", "purejaxppo", "train", "--distributed"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("purejaxppo: error: --distributed: jax.distributed.initialize failed:")
    assert "coordinator" in lines[0]  # JAX's own reason: no coordinator address was given or detected


def test_cli_cpu_devices_that_do_not_split_the_envs_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "purejaxppo", "train", "--cpu-devices", "3", "--set", "num_envs=4",
                           "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "purejaxppo: error: --cpu-devices: num_envs = 4 does not split evenly over 3 devices"
    assert not (tmp_path / "r").exists()
