"""Sweeps: equivalence with single runs, outputs, grid checks, statistics and sharding over devices."""

import csv
import shutil
import textwrap

import jax
import numpy as np
import pytest

from purejaxppo import cli as cli_lib
from purejaxppo import train
from purejaxppo.errors import ConfigError
from purejaxppo.host import checkpoint, stats, trained
from purejaxppo.program.ppo import make_ppo
from purejaxppo.sweep import parse_grid, sweep

from conftest import CACHE, TINY, cli, leaves_equal, python

SMALL = TINY.replace(seed=3, eval_every=5, eval_episodes=2, log_every=4)  # chunks of 4 and 4: both due to evaluate
GRID = {"lr": [1e-3, 3e-3]}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # 2 grid points x 2 seeds = 4 runs, in 2 calls of 2 runs: still one compiled program
    return sweep(SMALL, seeds=2, grid=GRID, run_dir=tmp_path_factory.mktemp("sweep") / "s", max_runs_per_call=2)


def test_runs_match_single_train(result):
    assert result.num_calls == 2
    for k in (1, 2):  # (lr 1e-3, seed 4) and (lr 3e-3, seed 3): one from each call
        run = result.runs[k]
        single = train(SMALL.replace(lr=run["lr"], seed=run["seed"]))
        for name in ("episode_return", "policy_loss", "value_loss", "lr", "eval_return"):
            np.testing.assert_allclose(result.metrics[name][k], single.metrics[name][0], rtol=2e-4, atol=1e-5,
                                       err_msg=name)
        for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(single.state.params)):
            np.testing.assert_allclose(a[k], b[0], rtol=2e-4, atol=1e-5)


def test_sweep_outputs(result):
    run_dir = result.run_dir
    runs = list(csv.DictReader((run_dir / "runs.csv").open()))
    assert [(float(r["lr"]), int(r["seed"]), int(r["point"])) for r in runs] == [
        (1e-3, 3, 0), (1e-3, 4, 0), (3e-3, 3, 1), (3e-3, 4, 1)]
    np.testing.assert_allclose([float(r["final_return"]) for r in runs], result.final_returns(), rtol=1e-5)
    assert all(np.isfinite(float(r["auc"])) for r in runs)
    agg = list(csv.DictReader((run_dir / "aggregate.csv").open()))
    assert len(agg) == 2
    for row, finals in zip(agg, result.final_returns().reshape(2, 2)):
        np.testing.assert_allclose(float(row["mean"]), finals.mean(), rtol=1e-5)
        assert float(row["iqm_low"]) <= float(row["iqm"]) <= float(row["iqm_high"])
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 * SMALL.num_updates
    assert (run_dir / "curves.png").stat().st_size > 10_000


def test_sweep_stop_and_resume_is_bit_identical(result, tmp_path):
    part = sweep(SMALL, 2, GRID, tmp_path / "part", max_runs_per_call=2, until_update=2)
    assert part.stopped and not (tmp_path / "part" / "aggregate.csv").exists()
    rest = sweep(SMALL, 1, None, tmp_path / "part", resume=True)  # seeds, grid and calls come from the checkpoint
    assert rest.num_calls == 2 and rest.grid == GRID and rest.seeds == result.seeds
    assert leaves_equal(rest.state, result.state)
    for name in result.metrics:
        np.testing.assert_array_equal(rest.metrics[name], result.metrics[name], err_msg=name)
    for name in ("runs.csv", "metrics.csv", "aggregate.csv"):
        assert (tmp_path / "part" / name).read_text() == (result.run_dir / name).read_text(), name


def test_eval_of_a_sweep_says_which_run_it_evaluates(result, capsys):
    assert cli_lib.main(["eval", str(result.run_dir), "--episodes", "1"]) == 0
    assert capsys.readouterr().err == (f"purejaxppo: note: {result.run_dir} holds 4 runs; this is run 0 (choose another "
                                       f"with --run, or run= from Python; runs.csv lists them)\n")
    assert cli_lib.main(["eval", str(result.run_dir), "--episodes", "1", "--run", "2"]) == 0
    assert capsys.readouterr().err == ""


def test_a_resumed_sweep_reads_its_checkpoints_record_once(result, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(result.run_dir, run_dir, ignore=shutil.ignore_patterns(".lock"))
    reads = []
    read = checkpoint.read_record
    monkeypatch.setattr(checkpoint, "read_record", lambda *a, **k: reads.append(a) or read(*a, **k))
    assert cli_lib.main(["sweep", "--resume", str(run_dir)]) == 0
    assert len(reads) == 1 and "resuming sweep of 4 runs" in capsys.readouterr().out


def test_one_run_of_a_sweep_acts_as_its_trained_policy(result):
    act = trained.load_policy(result.run_dir, run=3)
    ppo = make_ppo(SMALL)
    run3 = jax.tree.map(lambda x: x[3], result.state)
    obs = jax.random.normal(jax.random.key(0), (5, 4))
    np.testing.assert_array_equal(act(obs), ppo.policy.act(run3.params, run3.obs_stats, obs)[0])


def test_iqm_and_bootstrap_against_direct_numpy():
    rng = np.random.default_rng(42)
    scores = rng.normal(size=12)
    ordered = np.sort(scores)
    assert stats.iqm(scores) == pytest.approx(ordered[3:9].mean())
    # n not divisible by 4: the edge scores count with weight 0.25 (trimmed mean of the empirical law)
    five = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats.iqm(five) == pytest.approx((0.75 * 2 + 3 + 0.75 * 4) / 2.5)

    resamples = 1000
    low, high = stats.stratified_bootstrap_ci(scores, stats.iqm, num_resamples=resamples, seed=7)
    draw = np.random.default_rng(7).integers(0, 12, size=(resamples, 1, 12))
    values = [np.sort(scores[d[0]])[3:9].mean() for d in draw]
    np.testing.assert_allclose([low, high], np.quantile(values, [0.025, 0.975]), rtol=1e-10)

    # stratified over tasks: seeds are resampled within each row
    two = rng.normal(size=(2, 4)) + np.array([[0.0], [100.0]])
    low, high = stats.stratified_bootstrap_ci(two, stats.STATISTICS["mean"], num_resamples=200, seed=1)
    draw = np.random.default_rng(1).integers(0, 4, size=(200, 2, 4))
    values = [np.mean([two[t, d[t]] for t in range(2)]) for d in draw]
    np.testing.assert_allclose([low, high], np.quantile(values, [0.025, 0.975]), rtol=1e-10)


@pytest.mark.parametrize("key", ["num_envs", "hidden_sizes", "env", "num_steps"])
def test_structural_keys_are_refused(key):
    with pytest.raises(ConfigError, match=f"{key}: cannot be swept in one compiled call"):
        sweep(SMALL, seeds=1, grid={key: [1, 2]})


def test_a_grid_may_not_switch_a_variant_or_sweep_a_key_with_no_effect():
    with pytest.raises(ConfigError, match="dual_clip: it is off .*set it to one of them"):
        sweep(SMALL, grid={"dual_clip": [2.0, 3.0]})
    with pytest.raises(ConfigError, match="target_kl: 0 switches the variant off"):
        sweep(SMALL.replace(target_kl=0.02), grid={"target_kl": [0.0, 0.02]})
    with pytest.raises(ConfigError, match="lr_end: has no effect because lr_schedule is constant"):
        sweep(SMALL.replace(lr_schedule="constant"), grid={"lr_end": [0.0, 1e-4]})
    with pytest.raises(ConfigError, match="kl_target: has no effect because the adaptive KL penalty is off"):
        sweep(SMALL, grid={"kl_target": [0.01, 0.02]})


def test_seeds_and_call_sizes_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="seeds: seed 4294967295 \\+ 2 seeds passes the largest seed"):
        sweep(SMALL.replace(seed=2**32 - 1), seeds=2)
    with pytest.raises(ConfigError, match="max_runs_per_call: must be >= 1, got 0"):
        sweep(SMALL, seeds=2, max_runs_per_call=0)


def test_grid_parsing_and_cli_errors(capsys):
    assert parse_grid(["lr=1e-3,3e-4", "gamma=0.9,0.99"]) == {"lr": [1e-3, 3e-4], "gamma": [0.9, 0.99]}
    with pytest.raises(ConfigError, match="lr: the grid axis is given twice"):
        parse_grid(["lr=1e-3", "lr=3e-4"])
    with pytest.raises(ConfigError, match="lr: expected float"):
        sweep(SMALL, grid=parse_grid(["lr=fast"]))
    # --cpu-devices 1: main sets JAX's device count for the process when JAX has not started yet
    assert cli_lib.main(["sweep", "--cpu-devices", "1", "--grid", "num_envs=4,8"]) == 2
    assert "num_envs: cannot be swept" in capsys.readouterr().err
    assert cli_lib.main(["sweep", "--cpu-devices", "1", "--grid", "learning_rate=1,2"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_four_devices_give_the_same_results(tmp_path):
    script = textwrap.dedent(
        f"""
        import jax, numpy as np
        jax.config.update("jax_num_cpu_devices", 4)
        from purejaxppo.config import PPOConfig, from_dict
        from purejaxppo.sweep import sweep
        assert len(jax.local_devices()) == 4
        r = sweep(from_dict({SMALL.to_dict()!r}), seeds=4, grid={GRID!r})
        assert r.state.obs.sharding.mesh.shape == {{"runs": 4, "envs": 1}}
        leaf = jax.tree.leaves(r.state.params)[0]
        np.savez({str(tmp_path / "multi.npz")!r}, ret=r.metrics["episode_return"], loss=r.metrics["policy_loss"],
                 leaf=np.asarray(leaf))
        """
    )
    python(script)
    multi = np.load(tmp_path / "multi.npz")
    # 8 runs on this process's one device, in calls of the fixture's program of 2 runs
    single = sweep(SMALL, seeds=4, grid=GRID, max_runs_per_call=2)
    assert len(jax.local_devices()) == 1
    np.testing.assert_allclose(multi["ret"], single.metrics["episode_return"], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(multi["loss"], single.metrics["policy_loss"], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(multi["leaf"], np.asarray(jax.tree.leaves(single.state.params)[0]), rtol=2e-4,
                               atol=1e-5)


def test_cli_sweep_uses_a_cpu_device_per_core(tmp_path):
    proc = cli("sweep", "--seeds", "2", "--run-dir", str(tmp_path / "s"), "--set", "total_timesteps=256",
               "--set", "num_envs=4", "--set", "num_steps=32", "--set", "hidden_sizes=[8]",
               "--set", f"compilation_cache={CACHE}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"2 run(s) on {min(cli_lib.cpu_cores(), 2)} cpu device(s)" in proc.stdout  # at most one a run
    assert len((tmp_path / "s" / "runs.csv").read_text().strip().splitlines()) == 3  # header and 2 runs


def test_a_sweep_builds_its_env_once(monkeypatch):
    from purejaxppo import envs

    built = []
    real = envs.make_env
    monkeypatch.setattr(envs, "make_env", lambda *a, **k: built.append(a) or real(*a, **k))
    sweep(SMALL, seeds=2, grid=GRID, max_runs_per_call=2)  # in two calls of the fixture's program
    assert len(built) == 1
