"""The one host loop: chunks against a single scan, what a run dir holds, exact resume, refusals,
the NaN guard, stop signals, the compilation cache, memory, sharding over devices and processes,
and the loggers. Runs here train TINY, whose program compiles once per session (see conftest)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from purejaxppo import config as config_lib
from purejaxppo import prepare, train
from purejaxppo.errors import CheckpointError, ConfigError, NonFiniteError
from purejaxppo.host import checkpoint, layout, metrics
from purejaxppo.host.loop import Progress
from purejaxppo.host.population import Population
from purejaxppo.host.processes import use_compilation_cache
from purejaxppo.host.trained import read_trained
from purejaxppo.program import chunk as chunk_lib
from purejaxppo.program.ppo import abstract_states, make_ppo, make_train
from purejaxppo.sweep import sweep

from conftest import CACHE, ROOT, TINY, TINY_FLAGS, free_port, here, leaves_equal, python, restored


def test_chunks_match_the_single_scan_and_the_run_dir_holds_the_run(straight):
    state, scanned = jax.jit(make_train(TINY))(jax.random.key(TINY.seed))
    for name, values in jax.device_get(scanned).items():  # 8 updates in chunks of 3, 3 and 2
        np.testing.assert_allclose(straight.metrics[name][0], values, rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)
    run_dir = straight.run_dir
    stored = metrics.read(run_dir / "metrics.csv")
    for name, values in straight.metrics.items():
        # 9 significant digits round-trip float32 exactly
        np.testing.assert_array_equal(stored[name].astype(np.float32), values.astype(np.float32), err_msg=name)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["run", "update", *metrics.METRIC_NAMES]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config_lib.from_dict(saved) == TINY
    assert checkpoint.available_steps(run_dir) == [TINY.num_updates]
    assert (run_dir / "runs.csv").read_text().splitlines()[0] == "run,point,seed,final_return,auc"


def test_stop_and_resume_is_bit_identical(straight, resumed):
    first, second = resumed
    assert first.stopped and first.env_steps == 6 * TINY.batch_size  # the chunk end at or after update 4
    assert checkpoint.available_steps(first.run_dir)[-1] == TINY.num_updates
    assert second.first_update == 6 and not second.stopped
    assert leaves_equal(second.state, straight.state)  # params, Adam moments, obs stats, env states, keys
    assert (second.run_dir / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()
    for name in straight.metrics:
        np.testing.assert_array_equal(second.metrics[name][:, 6:], straight.metrics[name][:, 6:], err_msg=name)


def test_resume_from_an_earlier_step_moves_the_later_checkpoints_aside(straight, resumed, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(resumed[1].run_dir, run_dir)
    old_metrics = (run_dir / "metrics.csv").read_text()
    again = train(TINY, run_dir, resume=True, step=6)
    assert again.first_update == 6
    # the old future is kept, not overwritten: checkpoint 8 and the metrics as they stood
    assert again.superseded is not None and again.superseded.parent == run_dir / "superseded"
    assert checkpoint.available_steps(again.superseded) == [8]
    assert (again.superseded / "metrics.csv").read_text() == old_metrics
    # and the resumed run wrote its own checkpoint 8 (orbax would have skipped a step at or below its newest)
    assert checkpoint.available_steps(run_dir) == [6, 8]
    assert leaves_equal(again.state, straight.state)
    assert (run_dir / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match=r"step 5: no checkpoint .* available: \[6, 8\]"):
        train(TINY, run_dir, resume=True, step=5)


def test_a_resume_keeps_the_rows_before_it_even_after_a_torn_row(resumed, straight, tmp_path):
    run_dir = tmp_path / "torn"
    shutil.copytree(resumed[1].run_dir, run_dir)
    text = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(text + "0,8,8192,12.5,3")  # a crash mid-row
    train(TINY, run_dir, resume=True, step=6)
    assert (run_dir / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()


INTERRUPTED_AT_THE_CUT = """
import os, signal, sys
sys.path.insert(0, "tests")
from conftest import TINY
from purejaxppo import train
from purejaxppo.sweep import sweep
kind, run_dir, sig = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3])
real = os.truncate
def truncate(path, length):  # the resume cuts metrics.csv at checkpoint 6, and the signal lands at once
    real(path, length)
    os.kill(os.getpid(), sig)
os.truncate = truncate
resumed = train(TINY, run_dir, resume=True, step=6) if kind == "run" else sweep(TINY, run_dir=run_dir, resume=True, step=6)
print("stopped", resumed.stopped, "at", resumed.update)
"""


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_a_resume_interrupted_as_it_cuts_the_metrics_loses_no_row(kind, resumed, straight, tmp_path):
    if kind == "run":
        whole, run_dir = straight.run_dir / "metrics.csv", tmp_path / "run"
        shutil.copytree(resumed[1].run_dir, run_dir)  # checkpoints 6 and 8, and every row
    else:  # two runs, whose rows a rewrite would reorder: chunks of 3 updates, so two chunks before update 6
        whole, run_dir = sweep(TINY, 2, None, tmp_path / "straight").run_dir / "metrics.csv", tmp_path / "sweep"
        sweep(TINY, 2, None, run_dir, until_update=4)
        sweep(TINY, run_dir=run_dir, resume=True)
    assert (run_dir / "metrics.csv").read_text() == whole.read_text()
    killed = subprocess.run([sys.executable, "-c", INTERRUPTED_AT_THE_CUT, kind, str(run_dir), "SIGKILL"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rows = (run_dir / "metrics.csv").read_text()
    assert rows == whole.read_text()[:len(rows)] and len(rows.splitlines()) == 1 + 6 * (1 + (kind == "sweep"))
    # Ctrl-C as the file is cut: a stop request, honoured before the first chunk, with the truth about it
    stopped = python(INTERRUPTED_AT_THE_CUT, kind, str(run_dir), "SIGINT")
    assert stopped.stdout.strip() == "stopped True at 6" and stopped.stderr == ""
    assert (run_dir / "metrics.csv").read_text() == rows
    again = train(TINY, run_dir, resume=True) if kind == "run" else sweep(TINY, run_dir=run_dir, resume=True)
    assert again.first_update == 6
    assert (run_dir / "metrics.csv").read_text() == whole.read_text()
    assert (run_dir / "runs.csv").read_text() == (whole.parent / "runs.csv").read_text()  # the AUC from every row


def test_a_resume_without_the_earlier_rows_says_so_and_reports_them_as_unknown(resumed, straight, tmp_path, capsys):
    for step in (6, 8):  # mid-run, and at the end (no chunk left to train)
        run_dir = tmp_path / f"lost-{step}"
        shutil.copytree(resumed[1].run_dir, run_dir)
        (run_dir / "metrics.csv").unlink()
        again = train(TINY, run_dir, resume=True, step=step)
        assert f"metrics.csv: missing; this run's metrics.csv starts at update {step}" in capsys.readouterr().err
        env_steps, returns = again.metrics["env_steps"][0], again.metrics["episode_return"][0]
        assert env_steps.tolist() == [(u + 1) * TINY.batch_size for u in range(TINY.num_updates)]
        assert np.isnan(returns[:step]).all()
        np.testing.assert_array_equal(returns[step:], straight.metrics["episode_return"][0, step:])
        assert (run_dir / "runs.csv").is_file()


def test_a_prepared_run_runs_once(tmp_path):
    prepared = prepare(Population.single(TINY), tmp_path / "once")
    prepared.run(until_update=3)
    with pytest.raises(ConfigError, match="has run already; prepare it again"):
        prepared.run()


def test_a_new_run_refuses_a_run_dir_that_holds_a_run(straight):
    with pytest.raises(CheckpointError, match=r"already holds a run \(checkpoints \[.*\], metrics.csv, runs.csv, config"):
        train(TINY, straight.run_dir)
    with pytest.raises(CheckpointError, match="already holds a run"):
        sweep(TINY, 2, None, straight.run_dir)


def test_resume_refuses_a_length_that_would_change_the_schedules(straight):
    with pytest.raises(CheckpointError, match="total_timesteps: .* the lr_schedule linear schedules span the run"):
        train(TINY.replace(total_timesteps=2 * TINY.total_timesteps), straight.run_dir, resume=True)
    with pytest.raises(CheckpointError, match="make 4 updates, fewer than the 8 that checkpoint 8"):
        train(TINY.replace(total_timesteps=4 * TINY.batch_size), straight.run_dir, resume=True)
    with pytest.raises(CheckpointError, match="holds a run, not a sweep; resume it with purejaxppo train --resume "):
        sweep(TINY, resume=True, run_dir=straight.run_dir)


def test_mismatched_config_is_refused_with_the_difference(straight):
    with pytest.raises(CheckpointError, match=r"hidden_sizes: checkpoint has \[16\], config has \[32\]"):
        train(TINY.replace(hidden_sizes=(32,)), straight.run_dir, resume=True)
    with pytest.raises(CheckpointError, match="env: checkpoint has 'CartPole-v1', config has 'Acrobot-v1'"):
        train(TINY.replace(env="Acrobot-v1", env_kwargs={}), straight.run_dir, resume=True)
    # the difference is what is wrong, before the env is built
    with pytest.raises(CheckpointError, match="env: checkpoint has 'CartPole-v1', config has 'NoSuchEnv-v0'"):
        train(TINY.replace(env="NoSuchEnv-v0", env_kwargs={}), straight.run_dir, resume=True)


def test_nan_guard_reports_the_first_bad_update_and_keeps_the_last_good_state(monkeypatch, tmp_path):
    bad_update = 4
    real = chunk_lib.chunk_program

    def poisoned(*args):
        chunk = real(*args)

        def wrapped(states, first_update, num_active):
            states, out, finite = chunk(states, first_update, num_active)
            updates = first_update + jnp.arange(TINY.chunk_size)
            out["policy_loss"] = jnp.where(updates >= bad_update, jnp.nan, out["policy_loss"])
            return chunk_lib.ChunkOut(states, out, finite)

        return wrapped

    monkeypatch.setattr(chunk_lib, "chunk_program", poisoned)
    config = TINY.replace(checkpoint_every=3)
    with pytest.raises(NonFiniteError) as err:
        train(config, tmp_path / "nan")
    assert (f"training stopped at update {bad_update} (env steps {(bad_update + 1) * TINY.batch_size:,}): policy_loss "
            f"is not finite; the last good state is checkpoint 3") in str(err.value)
    assert checkpoint.available_steps(tmp_path / "nan") == [3]
    monkeypatch.setattr(chunk_lib, "chunk_program", real)
    good = train(config, tmp_path / "good", until_update=3)
    program = layout.plan(make_ppo(config), Population.single(config))
    assert leaves_equal(restored(tmp_path / "nan", program.abstract, 3), good.state)
    # the rows up to the bad chunk are kept, the bad chunk's too, for the post-mortem
    assert metrics.read(tmp_path / "nan" / "metrics.csv")["policy_loss"].shape == (1, 6)


def _resume_for_more_updates(run_dir, step: int, more: int) -> None:
    """`train --resume` from checkpoint `step` of a 64-steps-an-update run, for `more` updates: it ends there."""
    total = (step + more) * 64
    proc = here("train", "--resume", str(run_dir), "--set", f"total_timesteps={total}")
    assert proc.returncode == 0, proc.stderr
    assert f"env steps    {total:,}" in proc.stdout
    assert checkpoint.available_steps(run_dir)[-1] == step + more


def _train_until(run_dir, line: str, sig: signal.Signals, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir), *TINY_FLAGS,
         "--set", "total_timesteps=10000000", "--set", "log_every=1", "--set", "lr_schedule=constant", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        for out in proc.stdout:  # wait until training is under way
            if out.startswith(line):
                break
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])  # SIGHUP: a closed terminal, a dropped ssh session
def test_a_signal_finishes_the_chunk_checkpoints_and_resumes(tmp_path, sig):
    # a constant learning rate, so the resume may shorten the run (a schedule spans the run's length)
    run_dir = tmp_path / "sig"
    proc = _train_until(run_dir, "update 5/", sig)
    out = proc.stdout.read()
    assert proc.returncode == 0, proc.stderr.read()
    assert f"purejaxppo train --resume {run_dir}" in out
    step = checkpoint.available_steps(run_dir)[-1]
    assert step >= 5
    _, record = checkpoint.read_record(run_dir)
    assert record.update == step and f"stopped at update {step}, which checkpoint {step} holds" in out
    _resume_for_more_updates(run_dir, step, 3)


def test_kill_9_during_saves_leaves_the_last_completed_checkpoint_restorable(tmp_path):
    # a checkpoint after every update, so saves are under way most of the time when SIGKILL lands
    run_dir = tmp_path / "killed"
    proc = _train_until(run_dir, "update 8/", signal.SIGKILL, "--set", "checkpoint_every=1",
                        "--set", "keep_checkpoints=2")
    assert proc.returncode == -signal.SIGKILL
    step = checkpoint.available_steps(run_dir)[-1]
    assert step >= 6
    _resume_for_more_updates(run_dir, step, 2)


def test_a_repeat_run_loads_its_program_from_the_compilation_cache(tmp_path):
    # in fresh processes, so no in-memory cache can answer: the second finds the first's entries
    script = (
        "import sys, jax; from purejaxppo import train; from purejaxppo.config import PPOConfig\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if 'cache_hits' in e else None)\n"
        "config = PPOConfig(env='CartPole-v1', num_envs=4, num_steps=8, total_timesteps=64, num_minibatches=2,"
        " hidden_sizes=(8,), compilation_cache=sys.argv[1])\n"
        "result = train(config)\n"
        "print('HITS', len(hits), 'COMPILE', result.compile_time)\n"
    )
    cache, link = tmp_path / "cache", tmp_path / "link"
    link.symlink_to(cache, target_is_directory=True)
    outputs = []
    # the second reaches the same folder by another path (another HOME, say): the path is no part of the key;
    # the third: the cache off, though the environment names the same folder
    for folder in (cache, link, ""):
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
        proc = python(script, str(folder), timeout=300, env=env)
        outputs.append(int(proc.stdout.split("HITS")[1].split()[0]))
    assert any(cache.iterdir())
    assert outputs[0] == 0 and outputs[1] >= 1 and outputs[2] == 0


def test_each_run_in_one_process_uses_its_own_cache_setting(tmp_path):
    # JAX settles whether and where it caches at a process's first compile; a later run's setting holds anyway
    own = tmp_path / "own"
    scaled = lambda c: jax.jit(lambda x: x * c)(jnp.arange(3.0))  # noqa: E731  (c: a program no other test has)
    try:
        use_compilation_cache(TINY.replace(compilation_cache=str(own)))
        scaled(1234.5678)
        entries = sorted(own.iterdir())
        assert entries
        use_compilation_cache(TINY.replace(compilation_cache=""))
        scaled(8765.4321)
        assert sorted(own.iterdir()) == entries
    finally:
        use_compilation_cache(TINY)


@pytest.mark.parametrize("memory", ["none", "gru"])
def test_a_run_sharded_over_four_devices_matches_one_device(tmp_path, memory):
    script = (
        "import jax, numpy as np\n"
        "jax.config.update('jax_num_cpu_devices', 4)\n"
        "from purejaxppo import make_train, train\n"
        "from purejaxppo.config import PPOConfig\n"
        "c = PPOConfig(env='CartPole-v1', num_envs=8, num_steps=16, total_timesteps=8 * 16 * 6, num_minibatches=4,"
        f" update_epochs=2, hidden_sizes=(16,), normalize_obs=True, log_every=3, compilation_cache={CACHE!r},"
        f" memory={memory!r}, memory_size=8)\n"
        f"r = train(c, {str(tmp_path / 'run')!r})\n"
        "assert r.state.obs.sharding.spec == jax.sharding.PartitionSpec('runs', 'envs'), r.state.obs.sharding\n"
        "assert r.state.obs.sharding.mesh.shape == {'runs': 1, 'envs': 4}\n"
        "with jax.default_device(jax.local_devices()[0]):\n"
        "    state, m = jax.jit(make_train(c))(jax.random.key(c.seed))\n"
        "assert len(state.obs.devices()) == 1\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, sharded_loss=r.metrics['policy_loss'][0], loss=m['policy_loss'],"
        " sharded_mean=r.state.obs_stats.mean[0], mean=state.obs_stats.mean,"
        " sharded_leaf=jax.tree.leaves(r.state.params)[0][0], leaf=jax.tree.leaves(state.params)[0])\n"
    )
    python(script)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["sharded_loss"], out["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["sharded_mean"], out["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["sharded_leaf"], out["leaf"], rtol=1e-4, atol=1e-6)
    # its checkpoint, written from four devices, restores in this process of one
    params = read_trained(tmp_path / "run").params
    np.testing.assert_array_equal(jax.tree.leaves(params)[0], out["sharded_leaf"])



def test_a_run_over_two_processes_matches_one_device(tmp_path):
    # jax.distributed on this machine: two processes of two CPU devices each, one run over all four
    run_dir, port = tmp_path / "dist", free_port()
    overrides = ["num_envs=8", "num_steps=16", "total_timesteps=768", "num_minibatches=4", "update_epochs=2",
                 "hidden_sizes=[16]", "normalize_obs=true", "log_every=3", "checkpoint_every=3",
                 f"compilation_cache={CACHE}"]
    script = "import sys\nfrom purejaxppo.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["train", "--run-dir", str(run_dir), "--cpu-devices", "2", "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", *[a for o in overrides for a in ("--set", o)]]
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
    assert "1 run(s) on 4 cpu device(s)" in outputs[0][0]
    assert "update 3/6" in outputs[0][0] and "update 3/6" not in outputs[1][0]  # only process 0 reports progress
    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", overrides)
    single = train(config)
    stored = metrics.read(run_dir / "metrics.csv")
    assert stored["env_steps"].shape == (1, config.num_updates)
    for name in ("policy_loss", "value_loss", "approx_kl", "episode_return"):
        np.testing.assert_allclose(stored[name], single.metrics[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3", "6"]


def test_peak_memory_does_not_grow_with_the_number_of_updates():
    # In one fresh process, 2000 updates in 1000 chunks: the memory after the first 200 updates against that at
    # the end (10x the updates). Peak RSS differs by tens of MB between processes (the compile's peak), not
    # within one, so the run is compared with its own start.
    script = (
        "import os, resource\n"
        "from purejaxppo import train\n"
        "from purejaxppo.config import PPOConfig\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page // 1024\n"
        "seen = {}\n"
        "def probe(p):\n"
        "    if p.update in (200, 2000):\n"
        "        seen[p.update] = (rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "c = PPOConfig(env='CartPole-v1', num_envs=4, num_steps=8, total_timesteps=32 * 2000, num_minibatches=2,"
        f" update_epochs=1, hidden_sizes=(8,), log_every=2, compilation_cache={CACHE!r})\n"
        "train(c, on_progress=probe)\n"
        "print('KIB', *seen[200], *seen[2000])\n"
    )
    proc = python(script, timeout=300)
    rss_200, peak_200, rss_2000, peak_2000 = map(int, proc.stdout.split("KIB")[1].split())
    # What may grow: the per-update metrics kept for the result, ~2 KB a chunk here. Keeping each chunk's device
    # buffers alive (views instead of copies) grew ~27 KB a chunk: +24 MB over these 900 chunks.
    assert rss_2000 - rss_200 <= 5 * 1024, (rss_200, rss_2000)
    assert peak_2000 <= peak_200 * 1.01, (peak_200, peak_2000)


def _tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Read an event file's scalars back: TFRecord framing (length, its CRC, data, its CRC) around Event protos."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    data, at = path.read_bytes(), 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 8], "little")
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_gets_every_update_at_its_env_steps(tmp_path):
    result = train(TINY.replace(tensorboard=True), tmp_path / "tb")
    (events,) = (tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*")
    steps, losses = zip(*_tensorboard_scalars(events)["train/policy_loss"])
    assert list(steps) == [int(s) for s in result.metrics["env_steps"][0]]
    np.testing.assert_allclose(losses, result.metrics["policy_loss"][0], rtol=1e-6)


def test_a_sweep_writes_one_tensorboard_stream_per_run(tmp_path):
    # in calls of 2 runs, TINY's sweep program of the other tests here
    result = sweep(TINY.replace(tensorboard=True), 2, {"lr": [1e-3, 3e-3]}, tmp_path / "tb", max_runs_per_call=2)
    for k in range(4):
        (events,) = (tmp_path / "tb" / "tensorboard" / f"run-{k}").glob("events.out.tfevents.*")
        steps, losses = zip(*_tensorboard_scalars(events)["train/policy_loss"])
        assert list(steps) == [int(s) for s in result.metrics["env_steps"][k]]
        np.testing.assert_allclose(losses, result.metrics["policy_loss"][k], rtol=1e-6)


def test_progress_is_one_record_for_runs_and_sweeps(tmp_path):
    seen: list[Progress] = []
    sweep(TINY, 2, None, on_progress=seen.append)
    assert [p.update for p in seen] == [3, 6, 8] and all(p.num_runs == 2 for p in seen)
    assert seen[-1].env_steps == seen[-1].total_env_steps == TINY.num_updates * TINY.batch_size
    assert all(np.isfinite(p.episode_return) and p.steps_per_second > 0 for p in seen)


def test_the_evaluation_stays_a_branch_under_the_run_axis():
    # with the host's shared update count the evaluation's cond stays a cond under the run axis's vmap;
    # with a batched count it would become a select that evaluates every chunk
    ppo = make_ppo(TINY.replace(eval_every=5, eval_episodes=2))
    jaxpr = str(jax.make_jaxpr(chunk_lib.chunk_program(ppo, 2))(abstract_states(ppo, 2), 0, 2))
    assert jaxpr.count(" cond[") == 2  # update-or-skip, and the evaluation


def test_one_compile_whatever_the_number_of_calls(monkeypatch):
    traced = []
    real = chunk_lib.chunk_program
    monkeypatch.setattr(chunk_lib, "chunk_program", lambda *args: traced.append(1) or real(*args))
    result = sweep(TINY, 3, None, max_runs_per_call=1)
    assert result.num_calls == 3 and len(traced) == 1


STUCK = """
import sys, jax
from purejaxppo.host.signals import StopSignal
StopSignal.FORCE_AFTER_S = 1.0
with StopSignal(interrupt=sys.argv[1] == "early").installed():
    print("ready", flush=True)
    # an XLA computation that never returns: Python's own signal handlers never get to run
    jax.jit(lambda: jax.lax.while_loop(lambda x: x == x, lambda x: x + 1, 0))().block_until_ready()
"""


@pytest.mark.parametrize("phase, signals, status", [
    ("training", [signal.SIGINT, signal.SIGINT], 130),  # the first asks for a stop at the chunk's end
    ("training", [signal.SIGTERM, signal.SIGTERM], 143),
    ("training", [signal.SIGHUP, signal.SIGHUP], 129),
    ("early", [signal.SIGINT], 130),  # before training, the first interrupts
])
def test_a_process_stuck_inside_a_computation_still_yields_to_signals(phase, signals, status):
    proc = subprocess.Popen([sys.executable, "-c", STUCK, phase], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # inside the computation
    for i, sig in enumerate(signals):
        if i:
            time.sleep(2.0)
            assert proc.poll() is None  # one signal asked for a stop, which a stuck computation cannot reach
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "while stuck inside a computation" in lines[0], err
    assert ("nothing new was written" if phase == "early" else "without a checkpoint") in lines[0]
