"""The GPU run script (experiments/gpu/run.sh) in its dry-run mode: every stage with tiny sizes on this
CPU, each writing its results, then the results page made from them. So the script is known to work
before it meets a GPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CACHE, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.gpu_script]


def run_sh(out, *args, timeout=900):
    return subprocess.run(["bash", str(ROOT / "experiments" / "gpu" / "run.sh"), str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, "WHEELS": str(out) + "-no-wheels"})


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    proc = run_sh(out, "--dry-run", "--cache", CACHE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out, proc


def test_every_stage_runs_and_writes_its_results(dry):
    out, proc = dry
    status = json.loads((out / "stages.json").read_text())
    assert status["dry_run"] and list(status["stages"]) == ["smoke", "ant", "sweep", "tune", "extra", "playground"]
    assert all(s["status"] == "ok" for s in status["stages"].values()), status
    assert "no wheels in" in proc.stdout and (out / "log.txt").read_text().count("== stage") == 12
    versions = json.loads((out / "versions.json").read_text())
    assert versions["backend"] == "cpu" and versions["packages"]["jax"]

    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["tests"]["returncode"] == 0 and "passed" in smoke["tests"]["summary"]
    assert smoke["brax_run"]["updates"] == 2 and smoke["brax_run"]["all_finite"]

    ant = json.loads((out / "ant.json").read_text())
    assert ant["ours"]["env_steps"] == [ant["env_steps"]] and len(ant["ours"]["eval_curves"][0]) == 2
    assert ant["ceiling"]["ceiling_sps"] > 0 and ant["ratio_to_ceiling"] > 0
    assert len(ant["ours"]["extra"]["chunk_ends"]) == 2  # one evaluation at each of 2 chunk ends
    # this machine's brax is the 0.14.2 release, whose trainer needs a jax older than ours: said, not skipped
    if "unavailable" in ant["brax"]:
        assert "jax.device_put_replicated" in ant["brax"]["unavailable"]
    else:
        assert ant["brax"]["trainer"] == "brax" and "time_to_brax_final" in ant

    sweep = json.loads((out / "sweep.json").read_text())
    assert [c["seeds"] for c in sweep["calls"]] == [1, 2, 4]
    assert all(c["s_per_agent"] > 0 and c["final_return_min"] > 0 for c in sweep["calls"])

    tune = json.loads((out / "tune.json").read_text())
    assert tune["trials"] == 8 and sum(tune["status"].values()) == 8 and tune["rungs"] == [1, 3, 9]
    assert tune["env_steps_per_s"] > 0 and tune["best"] is not None

    extra = json.loads((out / "extra.json").read_text())
    assert set(extra["recurrent"]) == {"MLP", "GRU"} and all(r["env_steps_per_s"] > 0 for r in extra["recurrent"].values())
    assert list(extra["brax"]) == ["inverted_pendulum"]

    playground = json.loads((out / "playground.json").read_text())["playground/CartpoleBalance"]
    assert [p[0] for p in playground["progress"]] == [80, 160] and len(playground["eval_curve"]) == 2
    assert playground["env_steps_per_s"] > 0 and all(r == r for _, r in playground["eval_curve"])  # not NaN


def test_the_results_page_is_made_from_the_outputs(dry, tmp_path):
    out, _ = dry
    page = tmp_path / "gpu.md"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu" / "report.py"), str(out), "--command",
                    "bash experiments/gpu/run.sh OUT --dry-run", "--out", str(page)], check=True, cwd=ROOT)
    text = page.read_text()
    for heading in ("## Stages", "## Smoke", "## Brax ant", "## Sweep scaling", "## Hyperparameter search",
                    "## Extra", "## MuJoCo Playground", "## Targets"):
        assert heading in text
    assert "| smoke | ok |" in text and "bash experiments/gpu/run.sh OUT --dry-run" in text
    assert (tmp_path / "gpu.png").stat().st_size > 0


def test_a_stage_without_time_left_is_not_started_and_bad_stages_are_refused(tmp_path):
    proc = run_sh(tmp_path / "late", "--dry-run", "--stages", "sweep", "--deadline", "5", timeout=300)
    status = json.loads((tmp_path / "late" / "stages.json").read_text())
    assert proc.returncode == 0 and status["stages"]["sweep"]["status"] == "not started"
    proc = run_sh(tmp_path / "bad", "--dry-run", "--stages", "smoke,nope", timeout=300)
    assert proc.returncode == 2 and "--stages: unknown nope" in proc.stdout + proc.stderr
