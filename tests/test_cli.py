"""The command line, as a user runs it (a fresh process, or `main` in this one where nothing depends on the
process): what it prints, what it writes, and its exit status (2 for anything a user got wrong, one line and
no traceback; 3 for a non-finite run)."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import yaml

from purejaxppo import cli as cli_lib
from purejaxppo import config as config_lib
from purejaxppo.host import checkpoint, layout, metrics, trained
from purejaxppo.program.evaluation import evaluate
from purejaxppo.program.ppo import make_ppo

from conftest import ROOT, TINY, TINY_FLAGS, cli, here, one_error_line


def test_train_writes_the_run_dir_and_a_summary(tmp_path):
    run_dir = tmp_path / "cli"
    proc = cli("train", "--run-dir", str(run_dir), *TINY_FLAGS, "--set", "total_timesteps=512", "--set", "log_every=3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"training CartPole-v1 for 512 env steps (8 updates); writing {run_dir}")
    assert "update 3/8" in out and "update 8/8" in out  # progress while training, not only at the end
    for field in ("final return", "env steps    512", "compile time", "run time", "env steps/s"):
        assert field in out, field
    assert metrics.read(run_dir / "metrics.csv")["env_steps"].shape == (1, 8)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_timesteps"] == 512


def test_eval_and_plot(straight, tmp_path):
    proc = cli("eval", str(straight.run_dir), "--episodes", "4")
    assert proc.returncode == 0, proc.stderr
    # the checkpoint's policy, evaluated as `evaluate` does with the CLI's default seed 0
    source, ppo = trained.read_trained(straight.run_dir), make_ppo(TINY)
    returns, _ = evaluate(ppo.policy, ppo.env, source.params, source.obs_stats, jax.random.key(0), 4)
    assert f"4 deterministic episodes: return {np.mean(returns):.2f} +- {np.std(returns):.2f}" in proc.stdout
    out = tmp_path / "curves.png"
    proc = here("plot", str(straight.run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 10_000
    assert "does not exist" in one_error_line(here("eval", str(tmp_path / "none")))


def test_config_errors_exit_2_before_anything_is_written(tmp_path):
    line = one_error_line(cli("train", "--set", "num_minibatches=7", "--run-dir", str(tmp_path / "r")))
    assert "num_minibatches:" in line and "not divisible by num_minibatches = 7" in line
    line = one_error_line(here("train", "--set", "env=CartPole-v9", "--run-dir", str(tmp_path / "r")))
    assert "env: unknown environment 'CartPole-v9'" in line
    # what needs the env is checked before the run says it starts: the error line is all it prints
    for command in ("train", "sweep"):
        proc = here(command, "--set", "obs_mask=[7]", "--run-dir", str(tmp_path / "r"))
        assert one_error_line(proc).endswith("obs_mask: index 7 is outside this env's 4 observation components (0..3)")
        assert proc.stdout == "", proc.stdout
    assert not (tmp_path / "r").exists()  # nothing written before the config was accepted


def _refused(*args: str) -> str:
    """The one error line `main(args)` prints, in this process, checked to exit 2 and print nothing else."""
    proc = here(*args)
    assert proc.stdout == "", proc.stdout
    return one_error_line(proc).removeprefix("purejaxppo: error: ")


def test_input_that_would_be_ignored_or_misread_is_refused_in_one_line(tmp_path, straight):
    stranded = tmp_path / "stranded"
    stranded.mkdir()
    (stranded / "runs.csv").write_text("run,point,seed\n0,0,0\n1,0,1\n")  # a sweep killed before its first checkpoint
    assert _refused("sweep", "--resume", str(stranded)).endswith(
        f"nothing to resume or load: start it again with purejaxppo sweep --run-dir {stranded} and its other options "
        f"(its files are moved aside)")
    assert _refused("eval", str(stranded)).endswith(  # a reader does not know what made it
        f"start it again with the command that made it, with --run-dir {stranded} (its files are moved aside)")
    assert _refused("sweep", "--resume", str(straight.run_dir), "--seeds", "4") == \
        "--seeds: a resumed sweep keeps its --seeds from the checkpoint; drop --seeds"
    assert _refused("sweep", "--resume", str(straight.run_dir), "--max-runs-per-call", "2") == \
        "--max-runs-per-call: a resumed sweep keeps its --max-runs-per-call from the checkpoint; drop --max-runs-per-call"
    for option, value in (("--population", "4"), ("--interval", "5"), ("--score", "eval_return")):
        assert _refused("pbt", "--resume", str(straight.run_dir), option, value) == \
            f"{option}: a resumed PBT run keeps its {option} from the checkpoint; drop {option}"
    assert _refused("sweep", "--grid", "lr=1e-3,3e-3,0.001", *TINY_FLAGS) == \
        "lr: the grid axis lists 0.001 twice, which would train the same runs twice; give each value once"
    assert _refused("train", "--set", "env=xminigrid/MiniGrid-Empty-8x8", "--set", "torso=cnn",
                    "--set", "obs_mask=[0]") == (
        "torso: cnn needs an image observation, and obs_mask hides components of xminigrid/MiniGrid-Empty-8x8's, so "
        "the policy no longer sees an image; drop obs_mask, or use torso: mlp")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert _refused("eval", str(loop)) == f"run dir {loop}: a symbolic link that leads back to itself"
    for out in ("curves.xyz", "curves.jpeg2"):
        assert _refused("plot", str(straight.run_dir), "--out", str(tmp_path / out)).startswith(
            f"--out: {tmp_path / out} ends in .{out.split('.')[1]}, an image type matplotlib cannot write; use one of ")


def test_plot_names_the_file_it_wrote(straight, tmp_path, capsys):
    folder = tmp_path / "plots"
    folder.mkdir()
    for out, written in ((f"{folder}/", folder / "episode_return.png"), (str(folder), folder / "episode_return.png"),
                         (str(tmp_path / "curves"), tmp_path / "curves.png")):
        assert cli_lib.main(["plot", str(straight.run_dir), "--out", out]) == 0
        assert capsys.readouterr().out == f"wrote {written}\n" and written.stat().st_size > 10_000
        written.unlink()


def test_main_returns_2_on_a_config_error(capsys):
    assert cli_lib.main(["train", "--set", "clip_eps=-1"]) == 2
    assert capsys.readouterr().err.strip() == "purejaxppo: error: clip_eps: must be > 0.0, got -1.0"


def test_a_non_finite_run_exits_3_with_the_report(tmp_path):
    run_dir = tmp_path / "nan"
    proc = cli("train", "--run-dir", str(run_dir), *TINY_FLAGS, "--set", "reward_scale=3e38",
               "--set", "total_timesteps=512", "--set", "log_every=3")
    assert proc.returncode == cli_lib.EXIT_NON_FINITE, proc.stderr
    assert "training stopped at update 0" in proc.stderr and "is not finite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint.available_steps(run_dir) == [0]


def test_distributed_without_a_cluster_is_one_clear_error():
    line = one_error_line(cli("train", "--distributed"))
    assert line.startswith("purejaxppo: error: --distributed: jax.distributed.initialize failed:")
    assert "coordinator" in line  # JAX's own reason: no coordinator address was given or detected


def test_cpu_devices_that_do_not_split_the_envs_are_refused(tmp_path):
    proc = cli("train", "--cpu-devices", "3", "--set", "num_envs=4", "--run-dir", str(tmp_path / "r"))
    assert one_error_line(proc) == "purejaxppo: error: --cpu-devices: num_envs = 4 does not split evenly over 3 devices"
    assert not (tmp_path / "r").exists()


def test_sizes_that_cannot_work_are_refused_before_compiling(tmp_path):
    line = one_error_line(here("train", "--set", "total_timesteps=3000000000", "--run-dir", str(tmp_path / "a")))
    assert line == ("purejaxppo: error: total_timesteps: 2,999,999,488 env steps overflow the program's int32 step "
                    "counters; at most 2,147,483,647 per run")
    line = one_error_line(here("train", "--set", "num_envs=1000000", "--set", "num_steps=1000",
                              "--set", "total_timesteps=1000000000", "--run-dir", str(tmp_path / "b")))
    assert line.startswith("purejaxppo: error: num_envs: 1 run(s) of 1000000 envs x 1000 steps need at least ")
    assert line.endswith("GiB available (bound by the host's available memory); use fewer envs or steps or a larger "
                         "device")
    # a network too large for memory names the network's key, not the envs
    line = one_error_line(here("train", "--set", "memory=gru", "--set", "memory_size=16384", "--set",
                              "hidden_sizes=[16384]", "--run-dir", str(tmp_path / "c")))
    assert line.startswith("purejaxppo: error: memory_size: 1 run(s) need at least ")
    assert line.endswith("GiB available (bound by the host's available memory); use a smaller network or a larger "
                         "device")
    line = one_error_line(here("train", "--set", "memory_size=16385", "--run-dir", str(tmp_path / "d")))
    assert line == "purejaxppo: error: memory_size: must be <= 16384, got 16385"
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_a_ctrl_c_dropped_inside_a_callback_prints_nothing_of_its_own():
    # Python reports an exception raised in a __del__ or garbage-collection callback and drops it; a
    # Ctrl-C that lands there is recorded by the run, which raises it itself, so the report is noise
    script = ("from purejaxppo import cli\n"
              "cli._quiet_library_noise()\n"
              "class Finalized:\n"
              "    def __del__(self):\n"
              "        raise KeyboardInterrupt\n"
              "Finalized()\n"
              "class Broken:\n"
              "    def __del__(self):\n"
              "        raise ValueError('a real bug')\n"
              "Broken()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "KeyboardInterrupt" not in proc.stderr
    assert "ValueError: a real bug" in proc.stderr  # anything else is still reported


CHECKED = ["configs/cartpole.yaml", "configs/cartpole_pomdp_gru.yaml", "configs/brax/inverted_pendulum.yaml",
           "configs/playground/cartpole_balance.yaml", "configs/craftax/classic_symbolic.yaml",
           "configs/jumanji/snake.yaml", "configs/xminigrid/empty_8x8.yaml"]


def test_check_prints_the_plan_of_every_family_and_compiles_nothing(tmp_path, capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(layout.Program, "compile", lambda self: compiled.append(self))
    cache = tmp_path / "cache"  # the run's compilation cache: check never enables it, and never fills it
    for path in CHECKED:
        run_dir = tmp_path / Path(path).stem
        assert cli_lib.main(["check", str(ROOT / path), "--run-dir", str(run_dir),
                             "--set", f"compilation_cache={cache}"]) == 0, path
        plan = capsys.readouterr().out.splitlines()
        config = config_lib.load(ROOT / path)
        assert plan[0] == (f"training {config.env} for {config.num_updates * config.batch_size:,} env steps "
                           f"({config.num_updates} updates); writing {run_dir}")
        assert [line.split()[0] for line in plan[1:]] == ["env", "policy", "runs", "batch", "updates", "memory",
                                                          "run"]
        assert not run_dir.exists(), path  # nothing written
    # a sweep and a PBT run are checked with their own options
    assert cli_lib.main(["check", "--grid", "lr=1e-3,3e-3", "--seeds", "3", "--cpu-devices", "1"]) == 0
    assert capsys.readouterr().out.startswith("training sweep of 6 runs, CartPole-v1 for ")
    assert cli_lib.main(["check", "--explore", "lr", "--population", "4", "--cpu-devices", "1"]) == 0
    assert capsys.readouterr().out.startswith("training PBT population of 4 members, CartPole-v1 for ")
    assert compiled == [] and not cache.exists()


def test_check_refuses_what_train_refuses_in_the_same_line(straight, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    for args in (["--set", "lr=-1"], ["--set", "env_kwargs={max_steps_in_episode: 0}"],
                 ["--run-dir", str(tmp_path / "a-file")], ["--run-dir", str(straight.run_dir)],
                 ["--resume", str(tmp_path / "nowhere")], ["--set", "num_envs=1000000", "--set", "num_steps=1000"]):
        lines = []
        for command in ("train", "check"):
            assert cli_lib.main([command, *TINY_FLAGS, *args]) == 2, (command, args)
            out, err = capsys.readouterr()
            assert out == "" and len(err.splitlines()) == 1, err
            lines.append(err)
        assert lines[0] == lines[1], lines
    assert cli_lib.main(["check", "--resume", str(straight.run_dir), "--seeds", "3"]) == 2
    assert capsys.readouterr().err == "purejaxppo: error: --seeds: a run takes no --seeds; drop --seeds\n"
    assert cli_lib.main(["check", "--resume", str(straight.run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"  resume    from checkpoint 8 ({8 * 64:,} env steps)"
