"""Checkpoints, exact resume, safe stops, the NaN guard, clear errors, and using a trained policy.
Every run here uses one tiny CartPole config, so the chunk program compiles once per shape."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import acting, checkpoint, runner
from purejaxppo.checkpoint import CheckpointError
from purejaxppo.config import PPOConfig
from purejaxppo.sweep import sweep
from purejaxppo.train import make_trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = PPOConfig(
    env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 8, num_minibatches=2,
    update_epochs=2, hidden_sizes=(16,), log_every=2, normalize_obs=True, env_kwargs={"max_steps_in_episode": 20},
)


def leaves_equal(a, b) -> bool:
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    return all(np.array_equal(unwrap(x), unwrap(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    return runner.train(TINY, run_dir)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resumed") / "run"
    first = runner.train(TINY, run_dir, until_update=4)
    return first, runner.train(TINY, run_dir, resume=True)


def test_stop_and_resume_is_bit_identical(straight, resumed):
    first, second = resumed
    assert first.stopped and first.metrics["env_steps"][-1] == 4 * TINY.batch_size
    assert checkpoint.available_steps(first.run_dir)[-1] == TINY.num_updates
    assert second.first_update == 4 and not second.stopped
    assert leaves_equal(second.state, straight.state)  # params, Adam moments, obs stats, env states, keys
    assert (second.run_dir / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()
    for name in straight.metrics:
        np.testing.assert_array_equal(second.metrics[name][4:], straight.metrics[name][4:], err_msg=name)


def test_resume_from_an_earlier_step_moves_the_later_checkpoints_aside(straight, resumed, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(resumed[1].run_dir, run_dir)
    old_metrics = (run_dir / "metrics.csv").read_text()
    again = runner.train(TINY, run_dir, resume=True, step=4)
    assert again.first_update == 4
    # the old future is kept, not overwritten: checkpoint 8 and the metrics as they stood
    assert again.superseded is not None and again.superseded.parent == run_dir / "superseded"
    assert checkpoint.available_steps(again.superseded) == [8]
    assert (again.superseded / "metrics.csv").read_text() == old_metrics
    # and the resumed run wrote its own checkpoint 8 (orbax would have skipped a step at or below its newest)
    assert checkpoint.available_steps(run_dir) == [4, 8]
    _, restored, _ = checkpoint.restore(run_dir, jax.eval_shape(make_trainer(TINY).init, jax.random.key(0)))
    assert leaves_equal(restored, straight.state)
    assert (run_dir / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()
    with pytest.raises(CheckpointError, match=r"step 5: no checkpoint .* available: \[4, 8\]"):
        runner.train(TINY, run_dir, resume=True, step=5)


def test_a_new_run_refuses_a_run_dir_that_holds_a_run(straight):
    with pytest.raises(CheckpointError, match=r"already holds a run \(checkpoints \[.*\], metrics.csv\); resume it"):
        runner.train(TINY, straight.run_dir)
    with pytest.raises(CheckpointError, match="already holds a run"):
        sweep(TINY, 2, None, straight.run_dir)


def test_resume_refuses_a_length_that_would_change_the_schedules(straight):
    with pytest.raises(CheckpointError, match="total_timesteps: .* the lr_schedule linear schedules span the run"):
        runner.train(TINY.replace(total_timesteps=2 * TINY.total_timesteps), straight.run_dir, resume=True)
    with pytest.raises(CheckpointError, match="make 4 updates, fewer than the 8 that checkpoint 8"):
        runner.train(TINY.replace(total_timesteps=4 * TINY.batch_size), straight.run_dir, resume=True)


def test_a_save_orbax_declines_is_an_error_not_a_silent_skip(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path, keep=3)
    try:
        saver.save(5, Toy(jnp.zeros(2), jnp.int32(5)), {})
        saver.wait()
        with pytest.raises(CheckpointError, match="checkpoint 3 was not written: .* already holds later checkpoint 5"):
            saver.save(3, Toy(jnp.zeros(2), jnp.int32(3)), {})
    finally:
        saver.close()


def test_sweep_stop_and_resume_is_bit_identical(tmp_path):
    grid = {"lr": [1e-3, 3e-3]}
    whole = sweep(TINY, 2, grid, tmp_path / "whole", max_runs_per_call=2)  # 2 calls in lockstep
    part = sweep(TINY, 2, grid, tmp_path / "part", max_runs_per_call=2, until_update=2)
    assert part.stopped and not (tmp_path / "part" / "runs.csv").exists()
    rest = sweep(TINY, 1, None, tmp_path / "part", resume=True)  # seeds and grid come from the checkpoint
    assert rest.num_calls == 2 and rest.grid == grid and rest.seeds == whole.seeds
    assert leaves_equal(rest.state, whole.state)
    for name in whole.metrics:
        np.testing.assert_array_equal(rest.metrics[name], whole.metrics[name], err_msg=name)
    assert (tmp_path / "part" / "runs.csv").read_text() == (tmp_path / "whole" / "runs.csv").read_text()
    # one run of a sweep checkpoint acts as the run trained alone would
    act = acting.load_policy(tmp_path / "whole", run=3)
    obs = jnp.ones((5, 4))
    trainer = make_trainer(TINY)
    run3 = jax.tree.map(lambda x: x[3], whole.state)
    dist, _ = trainer.policy(run3.params, trainer.normalize_obs(run3.obs_stats, obs))
    np.testing.assert_array_equal(act(obs), dist.mode())


def test_load_policy_acts_as_the_policy_inside_training(straight):
    act = acting.load_policy(straight.run_dir)
    trainer = make_trainer(TINY)
    obs = jax.random.normal(jax.random.key(7), (64, 4)) * 2.0
    state = straight.state
    assert float(state.obs_stats.count) > 0  # the saved normalisation is in play
    dist, _ = trainer.policy(state.params, trainer.normalize_obs(state.obs_stats, obs))
    np.testing.assert_array_equal(act(obs), dist.mode())
    np.testing.assert_array_equal(act(obs[0]), dist.mode()[0])
    key = jax.random.key(3)
    np.testing.assert_array_equal(act(obs, key), dist.sample(key))


def test_mismatched_config_is_refused_with_the_difference(straight):
    with pytest.raises(CheckpointError, match=r"hidden_sizes: checkpoint has \[16\], config has \[32\]"):
        runner.train(TINY.replace(hidden_sizes=(32,)), straight.run_dir, resume=True)
    with pytest.raises(CheckpointError, match="env: checkpoint has 'CartPole-v1', config has 'Acrobot-v1'"):
        runner.train(TINY.replace(env="Acrobot-v1", env_kwargs={}), straight.run_dir, resume=True)
    other = make_trainer(TINY.replace(hidden_sizes=(32,)))  # arrays of another shape, whatever the metadata says
    with pytest.raises(CheckpointError, match="does not match the config"):
        checkpoint.restore(straight.run_dir, jax.eval_shape(other.init, jax.random.key(0)))


def test_missing_and_corrupt_checkpoints_give_one_clear_message(straight, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        acting.load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        acting.load_policy(tmp_path / "empty")

    broken = tmp_path / "broken"
    shutil.copytree(straight.run_dir, broken)
    step_dir = checkpoint.checkpoint_dir(broken) / str(TINY.num_updates)
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0 and "d" in p.parts]
    assert data, "expected array data files in the checkpoint"
    for path in data:
        path.write_bytes(b"\0garbage")
    with pytest.raises(CheckpointError, match="is corrupt"):
        acting.load_policy(broken)

    (step_dir / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="is corrupt: its metadata cannot be read"):
        acting.load_policy(broken)


class Toy(NamedTuple):
    params: jax.Array
    count: jax.Array


def test_nan_guard_reports_the_first_bad_update_and_keeps_the_last_good_state(tmp_path):
    config = TINY.replace(log_every=3, checkpoint_every=3)  # 8 updates in chunks of 3, 3, 2
    bad_update = 4

    def chunk(state: Toy, active: int):
        updates = state.count + jnp.arange(config.chunk_size)
        loss = jnp.where(updates >= bad_update, jnp.nan, 1.0)
        metrics = {name: loss for name in runner.GUARDED_METRICS}
        metrics["env_steps"] = (updates + 1) * config.batch_size
        return Toy(state.params + active, state.count + active), metrics

    with pytest.raises(runner.NonFiniteError) as err:
        runner.drive(chunk, [Toy(jnp.zeros(2), jnp.int32(0))], config, 0, run_dir=tmp_path, meta={"config": config.to_dict()},
                     stack=lambda s: s[0])
    assert f"update {bad_update} (env steps {(bad_update + 1) * config.batch_size:,}): policy_loss" in str(err.value)
    assert "last good state is checkpoint 3" in str(err.value)
    assert checkpoint.available_steps(tmp_path) == [3]
    _, good, _ = checkpoint.restore(tmp_path, Toy(jnp.zeros(2), jnp.int32(0)))
    np.testing.assert_array_equal(good.params, [3.0, 3.0])


def test_cli_non_finite_run_exits_non_zero_with_the_report(tmp_path):
    run_dir = tmp_path / "nan"
    proc = subprocess.run(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir), "--set", "reward_scale=3e38",
         "--set", "total_timesteps=1024", "--set", "num_envs=4", "--set", "num_steps=16", "--set", "log_every=4"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == runner.EXIT_NON_FINITE, proc.stderr
    assert "training stopped at update 0" in proc.stderr and "is not finite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint.available_steps(run_dir) == [0]


def _resume_for_more_updates(run_dir, step: int, more: int) -> None:
    """`train --resume` from checkpoint `step` of a 64-steps-an-update run, for `more` updates: it ends there."""
    total = (step + more) * 64
    proc = subprocess.run(
        [sys.executable, "-m", "purejaxppo", "train", "--resume", str(run_dir), "--set", f"total_timesteps={total}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"env steps    {total:,}" in proc.stdout
    assert checkpoint.available_steps(run_dir)[-1] == step + more


def test_sigint_finishes_the_chunk_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "sig"
    # a constant learning rate, so the resume may shorten the run (a schedule spans the run's length)
    common = ["--set", "num_envs=4", "--set", "num_steps=16", "--set", "hidden_sizes=[16]", "--set", "log_every=1",
              "--set", "lr_schedule=constant"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir),
         "--set", "total_timesteps=10000000", *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("update 5/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"purejaxppo train --resume {run_dir}" in out
    step = checkpoint.available_steps(run_dir)[-1]
    assert step >= 5
    _, meta = checkpoint.read_meta(run_dir)
    assert meta["update"] == step
    _resume_for_more_updates(run_dir, step, 3)


def test_kill_9_during_saves_leaves_the_last_completed_checkpoint_restorable(tmp_path):
    # a checkpoint after every update, so saves are under way most of the time when SIGKILL lands
    run_dir = tmp_path / "killed"
    common = ["--set", "num_envs=4", "--set", "num_steps=16", "--set", "hidden_sizes=[16]", "--set", "log_every=1",
              "--set", "checkpoint_every=1", "--set", "keep_checkpoints=2", "--set", "lr_schedule=constant"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir),
         "--set", "total_timesteps=10000000", *common],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    try:
        for line in proc.stdout:
            if line.startswith("update 8/"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    step = checkpoint.available_steps(run_dir)[-1]
    assert step >= 6
    _resume_for_more_updates(run_dir, step, 2)


def test_cli_eval_and_plot(straight, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "purejaxppo", "eval", str(straight.run_dir), "--episodes", "4"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # the checkpoint's policy, evaluated as `acting.evaluate` does with the CLI's default seed 0
    config, params, obs_stats, _ = acting.restore_policy(straight.run_dir)
    trainer = make_trainer(config)
    returns, _ = acting.evaluate(trainer.policy, trainer.env, params, lambda o: trainer.normalize_obs(obs_stats, o),
                                 jax.random.key(0), 4)
    assert f"4 deterministic episodes: return {np.mean(returns):.2f} +- {np.std(returns):.2f}" in proc.stdout
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "purejaxppo", "plot", str(straight.run_dir), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 10_000
    proc = subprocess.run([sys.executable, "-m", "purejaxppo", "eval", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


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
    result = runner.train(TINY.replace(tensorboard=True), tmp_path / "tb")
    (events,) = (tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*")
    scalars = _tensorboard_scalars(events)
    steps, losses = zip(*scalars["train/policy_loss"])
    assert list(steps) == [int(s) for s in result.metrics["env_steps"]]
    np.testing.assert_allclose(losses, result.metrics["policy_loss"], rtol=1e-6)
