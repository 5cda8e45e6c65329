"""experiments/published.py's pieces: the per-task configs load and train, and the report and its figures
are what the results say (a small fake result; the learning runs themselves are the experiment's)."""

import dataclasses
import json
import math
import sys

import jax
import numpy as np
import pytest

from purejaxppo import config as config_lib
from purejaxppo.host.stats import summarize
from purejaxppo.program.ppo import make_train

from conftest import CACHE, ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import published  # noqa: E402

MINATAR_CONFIGS = sorted((ROOT / "configs" / "minatar").glob("*.yaml"))
TABLE_CONFIGS = [*MINATAR_CONFIGS, ROOT / "configs" / "pendulum_1m.yaml"]  # written for the table's rows


def test_every_row_names_a_shipped_config():
    for row in published.ROWS:
        config = config_lib.load(ROOT / "configs" / row.config, [f"total_timesteps={row.env_steps}"])
        assert config.total_timesteps == row.env_steps
    assert {p.name for p in MINATAR_CONFIGS} == {r.config.removeprefix("minatar/") for r in published.ROWS
                                                 if r.config.startswith("minatar/")}


@pytest.mark.parametrize("path", TABLE_CONFIGS, ids=lambda p: p.stem)
def test_a_table_config_trains_two_updates(path):
    # the config's env, network and PPO settings; fewer envs and steps, so that two updates are quick
    config = config_lib.load(path, ["num_envs=8", "num_steps=16", "num_minibatches=2", "total_timesteps=256",
                                    f"compilation_cache={CACHE}"])
    assert config.num_updates == 2
    _, metrics = jax.jit(make_train(config))(jax.random.key(0))
    for name in ("policy_loss", "value_loss", "entropy", "grad_norm"):
        assert np.isfinite(np.asarray(metrics[name])).all(), name


def test_the_mean_curve_and_the_step_it_first_reaches_a_figure():
    returns = np.array([[np.nan, 1.0, 3.0, 5.0, 7.0],
                        [np.nan, 3.0, np.nan, 7.0, 9.0]])
    # per update: nan, 2, 3, 6, 8; smoothed over 2 updates: nan, 2, 2.5, 4.5, 7
    np.testing.assert_allclose(published.mean_curve(returns, window=2), [np.nan, 2.0, 2.5, 4.5, 7.0])
    steps = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert published.first_reaching(steps, np.array([np.nan, 2.0, 2.5, 4.5, 7.0]), 4.5) == 40.0
    assert math.isnan(published.first_reaching(steps, np.array([np.nan, 2.0, 2.5, 4.5, 7.0]), 7.5))


def test_the_report_says_what_the_results_say(tmp_path):
    above = published.RowResult(published.ROWS[0], [0, 1, 2, 3, 4], [500.0, 500.0, 500.0, 500.0, 500.0], 100, 61_440.0,
                                42.0, "2 CPU device(s), x86_64", [1024.0, 2048.0], [300.0, 500.0])
    below = published.RowResult(published.ROWS[2], [0, 1, 2, 3, 4], [-180.0, -150.0, -140.0, -200.0, -160.0], 100,
                                float("nan"), 300.0, "2 CPU device(s), x86_64", [1024.0, 2048.0], [-900.0, -170.0],
                                parts=2)
    text = published.report([above, below], "2026-12-06")
    lines = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| ")}
    for result in (above, below):
        s = summarize(np.array(result.finals))
        line = lines[result.row.name]
        assert f"{s['iqm']:.1f} [{s['iqm_low']:.1f}, {s['iqm_high']:.1f}]" in line
        assert f"{result.row.figure:g} | {result.row.source}" in line
        assert ", ".join(f"{f:.1f}" for f in result.finals) in line
    assert "| 61,440 | at or above |" in lines[above.row.name]
    gap = below.row.figure - summarize(np.array(below.finals))["iqm"]
    assert f"| never | below by {gap:.1f} |" in lines[below.row.name]
    assert "| 42 s | 2 CPU" in lines[above.row.name] and "| 300 s in 2 parts | 2 CPU" in lines[below.row.name]
    # only the row below its figure gets what was tried on it
    assert f"- **{below.row.name}**: {published.TRIED[below.row.name]}" in text
    assert f"- **{above.row.name}**" not in text
    published.plot([above, below], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stopped_row_goes_on_to_the_row_never_stopped(tmp_path):
    row = published.Row("cartpole-blines", "cartpole.yaml", 32 * 32 * 10, 500.0, published.GYMNAX)  # 10 updates
    assert published.row_config(row).checkpoint_every == 1  # ten checkpoints over the budget
    straight = published.run_row(row, 2, 3, tmp_path / "straight")
    runs = tmp_path / "runs"
    assert published.newest_run_dir(runs, row) is None
    with pytest.raises(SystemExit, match=f"--rows {row.name} --resume$"):
        published.run_row(row, 2, 3, runs / f"{row.name}-20261206-120000", until_update=4)
    (runs / f"{row.name}-20261205-120000").mkdir()  # an older one is not picked
    run_dir = published.newest_run_dir(runs, row)
    assert run_dir.name == f"{row.name}-20261206-120000"
    first = json.loads((run_dir / published.WALL).read_text())
    assert first["parts"] == 1 and first["seconds"] > 0
    resumed = published.run_row(row, 2, 3, published.resumable(run_dir, row, published.row_config(row), 2),
                                resume=True)
    # the sweep's resume is exact: the same evaluation, the same curve; the wall time is both parts'
    assert resumed.finals == straight.finals
    np.testing.assert_array_equal(resumed.curve, straight.curve)
    assert resumed.curve_steps == straight.curve_steps
    assert resumed.parts == 2 and resumed.wall_s > first["seconds"]
    # what it refuses to go on with, in one line each (no compile: the checkpoint's record only)
    for args, says in [((None, row), "no run dir of this row"),
                       ((runs / f"{row.name}-20261205-120000", row), "has no checkpoint"),
                       ((run_dir, dataclasses.replace(row, env_steps=32 * 32 * 20)), "another config"),
                       ((run_dir, dataclasses.replace(row, config="acrobot.yaml")), "written for another config")]:
        with pytest.raises(SystemExit, match=says):
            published.resumable(*args, published.row_config(args[1]), 2)
    with pytest.raises(SystemExit, match="holds 2 seeds, not --seeds 3"):
        published.resumable(run_dir, row, published.row_config(row), 3)
    # how often a row checkpoints is not its config: a run dir of another checkpoint_every goes on
    assert published.resumable(run_dir, row, published.row_config(row).replace(checkpoint_every=5), 2) == run_dir
