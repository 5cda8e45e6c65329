"""The run dir: made and proven writable before anything compiles, one writer at a time, and every
failure one line. The lock and interrupt tests run real `purejaxppo` processes; the commands refused beside
them run through `main` in this process."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from purejaxppo.errors import RunDirError
from purejaxppo.host import checkpoint, rundir

from conftest import CACHE, ROOT, TINY_FLAGS, TINY_SHAPE, cli, here, one_error_line


def test_a_run_dir_that_is_a_file_or_under_one_is_refused_before_compiling(tmp_path):
    cache = tmp_path / "cache"  # a cache of its own: it stays empty if nothing compiled
    cache.mkdir()
    taken = tmp_path / "file"
    taken.write_text("not a folder")
    cases = ((taken, "exists and is not a folder"), (taken / "run", "a part of its path is a file, not a folder"))
    for run_dir, problem in cases:
        proc = cli("train", "--run-dir", str(run_dir), *TINY_SHAPE, "--set", f"compilation_cache={cache}")
        line = one_error_line(proc)
        assert line == f"purejaxppo: error: run dir {run_dir}: {problem}"
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("fails, problem", [("mkdir", "cannot create it (Permission denied)"),
                                            ("write_bytes", "cannot write there (No space left on device)")])
def test_an_unwritable_run_dir_is_one_line_naming_it(monkeypatch, tmp_path, fails, problem):
    # the process runs as root here, so permissions cannot be taken away: the OSError is injected
    errors = {"mkdir": PermissionError(13, "Permission denied"), "write_bytes": OSError(28, "No space left on device")}

    def fail(*args, **kwargs):
        raise errors[fails]

    monkeypatch.setattr(Path, fails, fail)
    with pytest.raises(RunDirError) as err:
        rundir.prepare(tmp_path / "run")
    assert str(err.value) == f"run dir {tmp_path / 'run'}: {problem}"


def test_other_paths_a_user_gives_fail_in_one_line(straight, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(here("plot", str(straight.run_dir), "--out", str(blocker / "curves.png")))
    assert line == f"purejaxppo: error: {blocker / 'curves.png'}: Not a directory"


def _wait_for(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the process ended before printing {prefix!r}: {proc.stderr.read()[-2000:]}")


def test_a_second_writer_is_refused_and_readers_keep_working(tmp_path):
    run_dir = tmp_path / "live"
    writer = subprocess.Popen(
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir), *TINY_FLAGS,
         "--set", "total_timesteps=10000000", "--set", "log_every=1", "--set", "checkpoint_every=1",
         "--set", "lr_schedule=constant"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _wait_for(writer, "update 3/")
        holder = f"process {writer.pid} on "
        for args in (["train", "--run-dir", str(run_dir), *TINY_FLAGS], ["train", "--resume", str(run_dir)],
                     ["sweep", "--seeds", "2", "--run-dir", str(run_dir), "--cpu-devices", "1", *TINY_FLAGS]):
            line = one_error_line(here(*args))
            assert line.startswith(f"purejaxppo: error: run dir {run_dir} is being written by {holder}"), line
        reader = here("eval", str(run_dir), "--episodes", "2")  # reads the latest checkpoint of the live run
        assert reader.returncode == 0 and "2 deterministic episodes" in reader.stdout, reader.stderr[-2000:]
        writer.send_signal(signal.SIGINT)
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
    # the lock went with the process: the run resumes
    step = checkpoint.available_steps(run_dir)[-1]
    resumed = here("train", "--resume", str(run_dir), "--set", f"total_timesteps={(step + 1) * 64}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_ctrl_c_before_training_is_one_line_and_exit_130(tmp_path):
    run_dir = tmp_path / "early"
    proc = subprocess.Popen(  # the cache off, so the compile takes seconds: the signal lands in it
        [sys.executable, "-m", "purejaxppo", "train", "--run-dir", str(run_dir), *TINY_SHAPE,
         "--set", "compilation_cache="], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _wait_for(proc, "training CartPole-v1")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip() == "purejaxppo: interrupted before training started; nothing was written"
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "checkpoints").exists()


TWO_CTRL_C = """
import atexit, os, signal, sys, time
from purejaxppo import cli, console
cli.EXIT_WITHIN_S = 1.0
# Ctrl-C as in a terminal: a suite started in the background by a shell without job control ignores SIGINT,
# and this process would inherit that, take the first signal as a stop and never see the second
signal.signal(signal.SIGINT, signal.default_int_handler)
atexit.register(time.sleep, 3600)  # a shutdown that waits on something that never ends
shown, at = console.ProgressPrinter.__call__, int(sys.argv.pop(1))
def progress(self, p):
    shown(self, p)
    if p.update == at:  # a stop request, then an interruption, at a chunk's end
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
console.ProgressPrinter.__call__ = progress
cli.entry()
"""


@pytest.mark.parametrize("at, newest", [(3, None), (6, 3)])
def test_a_second_ctrl_c_says_what_the_run_dir_holds_and_how_to_go_on(tmp_path, at, newest):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), *TINY_FLAGS, "--set", "total_timesteps=768", "--set", "log_every=3",
            "--set", "checkpoint_every=3"]
    proc = subprocess.run([sys.executable, "-c", TWO_CTRL_C, str(at), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # its shutdown never ends: the CLI's own bound ends it
    assert proc.returncode == 130, proc.stderr[-2000:]
    if newest is None:  # the checkpoint of update 3 was due after the progress report
        assert proc.stderr.strip() == (f"purejaxppo: interrupted; no checkpoint was written; start it again with "
                                       f"purejaxppo train --run-dir {run_dir} (its files are moved aside)")
        again = here(*args)
    else:
        assert proc.stderr.strip() == (f"purejaxppo: interrupted; checkpoint {newest} is the newest; resume with "
                                       f"purejaxppo train --resume {run_dir}")
        again = here("train", "--resume", str(run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert checkpoint.available_steps(run_dir)[-1] == 12


def test_anything_given_twice_is_refused():
    line = one_error_line(here("train", "--set", "lr=1e-3", "--set", "lr=2e-3"))
    assert line == "purejaxppo: error: lr: given twice ('lr=1e-3' and 'lr=2e-3'); give each key once"
    line = one_error_line(here("train", "--run-dir", "a", "--run-dir", "b"))
    assert line == "purejaxppo: error: --run-dir: given twice; give it once"
    line = one_error_line(here("sweep", "--cpu-devices", "1", "--grid", "lr=1e-3", "--grid", "lr=2e-3,3e-3"))
    assert line == "purejaxppo: error: lr: the grid axis is given twice; give each key once, with all its values"
    assert one_error_line(here("train", "--nope")) == "purejaxppo: error: unrecognized arguments: --nope"


def test_a_read_only_run_dir_is_one_line_for_new_and_existing_runs_and_resumes(straight, tmp_path, monkeypatch):
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        # where the machine allows no mount: the file system's refusal, injected
        (disk / "old").mkdir()
        read_only = OSError(30, "Read-only file system")
        monkeypatch.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(read_only))
        with pytest.raises(RunDirError, match=r"new: cannot create it \(Read-only file system\)$"):
            rundir.prepare(disk / "new")
        monkeypatch.setattr(rundir.os, "open", lambda *a, **k: (_ for _ in ()).throw(read_only))
        with pytest.raises(RunDirError, match=r"old: cannot write there \(Read-only file system\)$"):
            with rundir.claimed(disk / "old", create=False):
                pass
        return
    try:
        shutil.copytree(straight.run_dir, disk / "old", ignore=shutil.ignore_patterns(".lock"))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for args, run_dir, problem in (
            (["train", "--run-dir", str(disk / "new"), *TINY_FLAGS], disk / "new", "cannot create it"),
            (["train", "--run-dir", str(disk / "old"), *TINY_FLAGS], disk / "old", "cannot write there"),
            (["train", "--resume", str(disk / "old")], disk / "old", "cannot write there"),
        ):
            line = one_error_line(here(*args))
            assert line == f"purejaxppo: error: run dir {run_dir}: {problem} (Read-only file system)", line
        line = one_error_line(here("plot", str(disk / "old"), "--out", str(disk / "curves.png")))
        assert line == f"purejaxppo: error: {disk / 'curves.png'}: Read-only file system"
        assert here("eval", str(disk / "old"), "--episodes", "1").returncode == 0  # reading needs no write
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_compilation_cache_that_cannot_be_written_is_a_note_not_a_failure(tmp_path):
    disk = tmp_path / "home"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    if not mounted:  # where the machine allows no mount: a cache folder under a file cannot be made either
        (disk / ".cache").write_text("a file")
    cache = disk / ".cache" / "purejaxppo"
    try:
        proc = cli("train", "--run-dir", str(tmp_path / "run"), *TINY_SHAPE, "--set", "total_timesteps=128",
                   "--set", f"compilation_cache={cache}")
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    problem = "cannot create it (Read-only file system)" if mounted else "a part of its path is a file, not a folder"
    assert proc.stderr == (f"purejaxppo: note: compilation_cache: {cache}: {problem}; running without the cache "
                           f"(every run compiles afresh)\n")
    assert checkpoint.available_steps(tmp_path / "run") == [2]


def test_env_lengths_and_limits_must_be_positive():
    line = one_error_line(here("train", "--set", "env_kwargs={max_steps_in_episode: 0}"))
    assert line == ("purejaxppo: error: env_kwargs.max_steps_in_episode: a length, count or limit, so it must be >= 1; "
                    "got 0")


def test_a_run_that_died_before_its_first_checkpoint_is_not_stranded(straight, tmp_path):
    run_dir = tmp_path / "died"
    run_dir.mkdir()
    for name in ("metrics.csv", "runs.csv", "config.yaml"):  # what a run has written before a kill -9
        (run_dir / name).write_text((straight.run_dir / name).read_text())
    line = one_error_line(here("train", "--resume", str(run_dir)))
    assert line.endswith(f"its run ended before its first checkpoint, so there is nothing to resume or load: start it "
                         f"again with purejaxppo train --run-dir {run_dir} (its files are moved aside)")
    proc = here("train", "--run-dir", str(run_dir), *TINY_FLAGS, "--set", "total_timesteps=512",
                "--set", "log_every=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (moved,) = (run_dir / "superseded").iterdir()
    assert f"ended before its first checkpoint, are in {moved}" in proc.stdout
    assert (moved / "metrics.csv").read_text() == (straight.run_dir / "metrics.csv").read_text()
    assert checkpoint.available_steps(run_dir) == [8]


FULL_DISK = ["--set", "total_timesteps=20480", "--set", "checkpoint_every=5", "--set", "hidden_sizes=[256,256]",
             "--set", "log_every=5", "--set", f"compilation_cache={CACHE}"]
# checkpoint 5 of that config takes 1.6 MB: a 2.6 MB disk holds it, and not checkpoint 10 beside it
INJECTED = """
import sys
import orbax.checkpoint as ocp
from purejaxppo.cli import main
real, saves = ocp.CheckpointManager.save, []
def save(self, step, *args, **kwargs):
    saves.append(step)
    if len(saves) == 2:
        raise ValueError("RESOURCE_EXHAUSTED: Error writing in OCDBT database: [Errno 28] No space left on device")
    return real(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    run_dir, args = disk / "run", ["train", "--run-dir", str(disk / "run"), *FULL_DISK]
    try:
        if mounted:  # a real full disk, with orbax's writer threads failing as they do
            proc = cli(*args)
        else:  # where the machine allows no mount: the same failure, injected into the second save
            proc = subprocess.run([sys.executable, "-c", INJECTED, *args], capture_output=True, text=True, cwd=ROOT,
                                  timeout=300)
        line = one_error_line(proc, 4)
        assert line == (f"purejaxppo: error: checkpoint 10 could not be written to {run_dir / 'checkpoints'}: "
                        f"No space left on device; the last good one is checkpoint 5")
        kept = tmp_path / "kept"
        shutil.copytree(run_dir, kept)  # the space freed: the run moves to a disk with room
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    assert checkpoint.available_steps(kept) == [5]
    resumed = here("train", "--resume", str(kept))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = here("train", "--run-dir", str(tmp_path / "straight"), *FULL_DISK)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert (kept / "metrics.csv").read_text() == (tmp_path / "straight" / "metrics.csv").read_text()


METRICS_ON_A_FULL_DISK = """
import csv, sys
from purejaxppo.host import metrics
from purejaxppo.cli import main
write = metrics.MetricsStore.write
def full(self, first_update, chunk):
    if first_update >= 6:  # the disk is full from the third chunk on: /dev/full refuses every write
        self._file = open("/dev/full", "w", newline="")
        self._writer = csv.writer(self._file)
    write(self, first_update, chunk)
metrics.MetricsStore.write = full
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_under_metrics_csv_is_one_line_naming_it_and_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), *TINY_FLAGS, "--set", "total_timesteps=768", "--set", "log_every=3",
            "--set", "checkpoint_every=3"]
    proc = subprocess.run([sys.executable, "-c", METRICS_ON_A_FULL_DISK, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    line = one_error_line(proc, 4)
    assert line == (f"purejaxppo: error: {run_dir / 'metrics.csv'} could not be written: No space left on device; "
                    f"the last good checkpoint is 6")
    resumed = here("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = here(*args[:2], str(tmp_path / "straight"), *args[3:])
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert (run_dir / "metrics.csv").read_text() == (tmp_path / "straight" / "metrics.csv").read_text()
