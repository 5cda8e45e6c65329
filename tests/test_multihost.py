"""Populations over several processes (hosts) with jax.distributed, as local processes of one CPU device
each: a sweep, a PBT run and a search share their runs out over every process, process 0 writes the
files, the processes stop together and resume exactly, a lost process ends the others in bounded time,
and processes that disagree (another config, a run dir they do not share) are refused in one line."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from purejaxppo import config as config_lib
from purejaxppo.errors import EXIT_PROCESS_LOST
from purejaxppo.host import checkpoint, metrics
from purejaxppo.host.processes import LOST_AFTER_S
from purejaxppo.sweep import sweep

from conftest import CACHE, ROOT, TINY, cli, free_port, python

# 1000 updates of 8 runs, in chunks of 50: long enough to be stopped or killed in the middle (each chunk's end
# waits for every process, so a process cannot run on past one that stopped or was lost)
UPDATES = 1000
SHAPE = ["num_envs=4", "num_steps=16", "num_minibatches=2", "update_epochs=2", "hidden_sizes=[16]", "log_every=50",
         f"total_timesteps={64 * UPDATES}", "checkpoint_every=500", f"compilation_cache={CACHE}"]
SWEEP = ["sweep", "--seeds", "8", *[a for s in SHAPE for a in ("--set", s)]]
PBT = ["pbt", "--population", "8", "--explore", "lr,ent_coef=0:0.05", "--interval", "8",
       *[a for s in ["num_envs=4", "num_steps=16", "num_minibatches=2", "update_epochs=2", "hidden_sizes=[16]",
                     "total_timesteps=2048", f"compilation_cache={CACHE}"] for a in ("--set", s)]]



class Hosts:
    """Two processes of one purejaxppo command, one CPU device each, their output in files."""

    def __init__(self, logs: Path, *commands: list[str]) -> None:
        address = f"127.0.0.1:{free_port()}"
        self.logs = [(logs / f"out{i}.txt", logs / f"err{i}.txt") for i in range(len(commands))]
        self.procs = []
        for i, (command, (out, err)) in enumerate(zip(commands, self.logs)):
            with out.open("w") as o, err.open("w") as e:  # files, not pipes: neither child can block on output
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "purejaxppo", *command, "--cpu-devices", "1", "--coordinator", address,
                     "--num-processes", str(len(commands)), "--process-id", str(i)], cwd=ROOT, stdout=o, stderr=e))

    def output(self, i: int) -> tuple[str, str]:
        return self.logs[i][0].read_text(), self.logs[i][1].read_text()

    def wait_for(self, seen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not seen():
            assert time.monotonic() < deadline and all(p.poll() is None for p in self.procs), self.output(0)
            time.sleep(0.05)

    def wait(self, timeout: float = 300) -> list[int]:
        try:
            return [p.wait(timeout=timeout) for p in self.procs]
        finally:
            for p in self.procs:  # one that failed may leave the other waiting for it
                p.kill()


def errors(text: str) -> list[str]:
    """Our lines on stderr (gloo and XLA may add their own notes)."""
    return [line for line in text.splitlines() if line.startswith("purejaxppo:")]


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    """The sweep in one process of two CPU devices."""
    run_dir = tmp_path_factory.mktemp("one") / "sweep"
    proc = cli(*SWEEP, "--cpu-devices", "2", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    """The sweep over two processes of one CPU device each, stopped by a SIGINT to process 1 only, then
    resumed over both."""
    logs = tmp_path_factory.mktemp("two")
    run_dir = logs / "sweep"
    hosts = Hosts(logs, [*SWEEP, "--run-dir", str(run_dir)], [*SWEEP, "--run-dir", str(run_dir)])
    hosts.wait_for(lambda: "update 200/" in hosts.output(0)[0])
    hosts.procs[1].send_signal(signal.SIGINT)
    stopped = hosts.wait()
    first = [hosts.output(i) for i in range(2)]
    steps = checkpoint.available_steps(run_dir)
    resumed = Hosts(logs, ["sweep", "--resume", str(run_dir)], ["sweep", "--resume", str(run_dir)])
    return run_dir, stopped, first, steps, resumed.wait(), [resumed.output(i) for i in range(2)]


def test_a_sweep_over_two_processes_stops_together_and_resumes_as_in_one(one_host, two_hosts):
    run_dir, stopped, first, steps, statuses, second = two_hosts
    assert stopped == [0, 0], first
    # both stopped at the same chunk's end, with one checkpoint, and the resume command printed once
    at = int(first[0][0].split("stopped at update ")[1].split(",")[0])
    assert 200 <= at < UPDATES and at % 50 == 0 and steps[-1] == at and all(s % 500 == 0 for s in steps[:-1]), steps
    assert first[0][0].count("sweep --resume") == 1
    assert "stopped at update" not in first[1][0] and "update 50/" not in first[1][0]  # only process 0 prints
    assert statuses == [0, 0], second
    assert f"resume    from checkpoint {at}" in second[0][0] and "8 run(s) on 2 cpu device(s)" in second[0][0]
    # bit for bit the sweep of one process of two devices, which never stopped
    for name in ("metrics.csv", "runs.csv", "aggregate.csv"):
        assert (run_dir / name).read_text() == (one_host / name).read_text(), name
    assert checkpoint.available_steps(run_dir)[-1] == UPDATES


def test_the_runs_equal_the_one_device_sweep_over_the_first_updates(one_host):
    # the README's equivalence: a batched program of another size adds float differences that training grows
    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", SHAPE)
    alone = sweep(config, 8, until_update=1)
    stored = metrics.read(one_host / "metrics.csv")
    for name in ("policy_loss", "value_loss", "approx_kl", "entropy"):
        np.testing.assert_allclose(stored[name][:, :4], alone.metrics[name][:, :4], rtol=2e-4, atol=1e-6,
                                   err_msg=name)


def test_pbt_over_two_processes_gives_the_lineage_of_one(tmp_path):
    single = cli(*PBT, "--cpu-devices", "2", "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    hosts = Hosts(tmp_path, *[[*PBT, "--run-dir", str(tmp_path / "two")]] * 2)
    assert hosts.wait() == [0, 0], hosts.output(0)
    lineage = (tmp_path / "two" / "lineage.csv").read_text()
    assert lineage == (tmp_path / "one" / "lineage.csv").read_text()
    assert len(lineage.splitlines()) == 1 + 8 * (1 + 32 // 8)  # the start and 4 PBT steps of 8 members
    assert (tmp_path / "two" / "metrics.csv").read_text() == (tmp_path / "one" / "metrics.csv").read_text()


def test_a_search_with_optuna_over_two_processes_decides_as_in_one(tmp_path):
    search = ["tune", "--sampler", "tpe", "--space", "lr=log:1e-4:1e-2", "--trials", "6", "--slots", "3",
              *PBT[PBT.index("--set"):]]
    single = cli(*search, "--cpu-devices", "2", "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    hosts = Hosts(tmp_path, *[[*search, "--run-dir", str(tmp_path / "two")]] * 2)
    assert hosts.wait() == [0, 0], hosts.output(0)
    for name in ("trials.csv", "metrics.csv", "best.yaml"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name


def test_a_killed_process_ends_the_other_in_bounded_time_and_the_sweep_resumes(tmp_path, one_host):
    run_dir = tmp_path / "sweep"
    hosts = Hosts(tmp_path, *[[*SWEEP, "--run-dir", str(run_dir)]] * 2)
    hosts.wait_for(lambda: run_dir.is_dir() and 500 in checkpoint.completed_steps(run_dir))
    hosts.procs[1].kill()
    killed = time.monotonic()
    statuses = hosts.wait()
    took = time.monotonic() - killed
    out, err = hosts.output(0)
    assert statuses == [EXIT_PROCESS_LOST, -signal.SIGKILL], err[-3000:]
    assert took < LOST_AFTER_S + 20, took  # JAX's own heartbeat would take 100 s, and end it with a crash report
    (line,) = errors(err)
    assert line.startswith("purejaxppo: error: process 1 of 2 was lost"), line
    assert f"resume with purejaxppo sweep --resume {run_dir}" in line, line
    # resumed in one process of two devices: the runs re-split over another number of processes
    newest = checkpoint.available_steps(run_dir)[-1]
    resumed = cli("sweep", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume    from checkpoint {newest}" in resumed.stdout
    assert (run_dir / "metrics.csv").read_text() == (one_host / "metrics.csv").read_text()


@pytest.mark.parametrize("case", ["config", "run dir", "refused"])
def test_processes_that_disagree_are_refused_in_one_line(tmp_path, case):
    tiny = ["--set", "total_timesteps=1024", "--set", "compilation_cache=" + CACHE]
    base = ["sweep", "--seeds", "4", *tiny, "--run-dir", str(tmp_path / "a")]
    other = {"config": [*base, "--set", "seed=3"], "run dir": [*base[:-1], str(tmp_path / "b")],
             "refused": [*base, "--set", "num_envs=0"]}[case]
    hosts = Hosts(tmp_path, base, other)
    assert hosts.wait(timeout=120) == [2, 2]
    lines = [errors(hosts.output(i)[1]) for i in range(2)]
    assert all(len(found) == 1 for found in lines), lines
    (zero,), (one,) = lines
    if case == "config":
        assert "sweep: process 1 prepared another run than process 0" in zero
        assert "start every process with the same command" in one
    elif case == "run dir":
        assert zero.endswith(f"run dir {tmp_path / 'a'}: process 1 does not see the files process 0 writes there; "
                             f"every process needs the same folder, on storage they all share")
    else:
        assert one.startswith("purejaxppo: error: num_envs: "), one
        assert zero == f"purejaxppo: error: process 1 refused the run: {one.removeprefix('purejaxppo: error: ')}"
    assert not (tmp_path / "a").exists()  # nothing was compiled or written


def test_a_sweep_resumes_on_another_number_of_devices(tmp_path):
    # 3 runs on 2 devices are 4 stacked runs (one filler); resumed on this process's one device, 3
    run_dir = tmp_path / "sweep"
    python(
        "import sys, jax, numpy as np\n"
        "jax.config.update('jax_num_cpu_devices', 2)\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import TINY\n"
        "from purejaxppo.sweep import sweep\n"
        "straight = sweep(TINY, 3)\n"
        f"stopped = sweep(TINY, 3, run_dir={str(run_dir)!r}, until_update=4)\n"
        "assert stopped.stopped and stopped.layout.stacked_runs == 4\n"
        f"np.savez({str(tmp_path / 'straight.npz')!r}, **straight.metrics)\n")
    before = metrics.read(run_dir / "metrics.csv")
    resumed = sweep(TINY, 3, run_dir=run_dir, resume=True)
    assert resumed.first_update == 6 and resumed.layout.stacked_runs == 3 and not resumed.stopped
    straight = np.load(tmp_path / "straight.npz")
    after = metrics.read(run_dir / "metrics.csv")
    for name in ("policy_loss", "value_loss", "entropy", "episode_return"):
        np.testing.assert_array_equal(after[name][:, :6], before[name][:, :6], err_msg=name)
        # each run went on from its own state: its first update after the resume is the 2-device run's, up to
        # the float differences of a batch of another size
        np.testing.assert_allclose(after[name][:, 6], straight[name][:, 6], rtol=2e-4, atol=1e-6, err_msg=name)
