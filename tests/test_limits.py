"""Memory limits that are real: the host's available memory, the memory cgroup (v1 and v2, with its
ancestors) and the address-space limit, whichever is smallest, named in the one line that refuses a run;
the parts of the estimate and the key each names; XLA's own out-of-memory error as one line. The limits
are set on real processes (`ulimit -v`, a memory cgroup where this machine lets the test make one)."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from purejaxppo import cli as cli_lib
from purejaxppo.errors import ConfigError
from purejaxppo.host import layout, limits
from purejaxppo.host.limits import Headroom
from purejaxppo.host.population import Member, Population
from purejaxppo.pbt import Exploit, PBTConfig, parse_explore
from purejaxppo.program.ppo import make_ppo

from conftest import ROOT, TINY, TINY_FLAGS, here, one_error_line

GIB = 2**30


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_v1_cgroup_is_bounded_by_its_tightest_ancestor(tmp_path):
    proc = tree(tmp_path / "proc", {"self/cgroup": "5:cpu,cpuacct:/slurm/job7\n4:memory:/slurm/job7/step0\n"})
    root = tree(tmp_path / "cg", {
        "memory/memory.limit_in_bytes": "9223372036854771712",  # the root: no limit
        "memory/slurm/job7/memory.limit_in_bytes": str(2 * GIB), "memory/slurm/job7/memory.usage_in_bytes": str(GIB),
        "memory/slurm/job7/step0/memory.limit_in_bytes": str(3 * GIB),
        "memory/slurm/job7/step0/memory.usage_in_bytes": str(GIB // 2),
    })
    room = limits.cgroup_headroom(root, proc)
    assert room == Headroom(GIB, f"the memory cgroup v1 {root / 'memory/slurm/job7'} (limit 2.0 GiB, 1.0 GiB in use)")


def test_a_v2_cgroup_and_a_containers_own_namespace(tmp_path):
    proc = tree(tmp_path / "proc", {"self/cgroup": "0::/user.slice/job\n"})
    root = tree(tmp_path / "cg", {"cgroup.controllers": "cpu memory\n", "user.slice/memory.max": "max\n",
                                  "user.slice/job/memory.max": f"{4 * GIB}\n",
                                  "user.slice/job/memory.current": f"{GIB}\n"})
    room = limits.cgroup_headroom(root, proc)
    assert room.bytes == 3 * GIB and room.source.startswith("the memory cgroup v2 ")
    # a container names a path its own mount does not hold: the mount's root is its cgroup
    proc = tree(tmp_path / "proc2", {"self/cgroup": "4:memory:/docker/0a1b\n"})
    root = tree(tmp_path / "cg2", {"memory/memory.limit_in_bytes": str(GIB), "memory/memory.usage_in_bytes": "0"})
    assert limits.cgroup_headroom(root, proc).bytes == GIB
    proc = tree(tmp_path / "proc3", {"self/cgroup": "4:memory:/\n"})
    root = tree(tmp_path / "cg3", {"memory/memory.limit_in_bytes": "9223372036854771712"})
    assert limits.cgroup_headroom(root, proc) is None  # no limit anywhere


BIG_ROLLOUT = ["--set", "num_envs=65536", "--set", "num_steps=256", "--set", "total_timesteps=16777216",
               "--set", "num_minibatches=64"]  # a rollout of 3.6 GiB by the estimate, on a host with more free


LIMITED = """
import os, resource, sys
limit, cgroup, *command = sys.argv[1:]
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, *command])
"""


def limited(*command: str, limit_as: int | None = None, cgroup: Path | None = None) -> list[str]:
    """`python COMMAND` under an address-space limit or in a memory cgroup, set by a process that then becomes
    it (no fork of this multithreaded one)."""
    return [sys.executable, "-c", LIMITED, str(limit_as or ""), str(cgroup or ""), *command]


def test_an_address_space_limit_is_named_when_it_bounds_the_run(tmp_path):
    proc = subprocess.run(limited("-m", "purejaxppo", "train", *BIG_ROLLOUT, "--run-dir", str(tmp_path / "r"),
                                  limit_as=3 * GIB), capture_output=True, text=True, cwd=ROOT, timeout=300)
    line = one_error_line(proc)
    assert line.startswith("purejaxppo: error: num_envs: 1 run(s) of 65536 envs x 256 steps need at least 3.6 GiB "
                           "(the rollout 3.6 GiB), more than the "), line
    assert "available (bound by the address-space limit (ulimit -v 3145728, " in line
    assert line.endswith("held)); use fewer envs or steps or a larger device") and not (tmp_path / "r").exists()


def test_a_memory_cgroup_is_named_when_it_bounds_the_run(tmp_path, monkeypatch, capsys):
    parent = Path("/sys/fs/cgroup/memory")
    cgroup = parent / f"purejaxppo-test-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(3 * GIB))
    except OSError:  # no cgroup v1 memory controller to write here: the same files, faked, in this process
        cgroup = None
    args = ["train", *BIG_ROLLOUT, "--run-dir", str(tmp_path / "r")]
    try:
        if cgroup is not None:
            proc = subprocess.run(limited("-m", "purejaxppo", *args, cgroup=cgroup), capture_output=True, text=True,
                                  cwd=ROOT, timeout=300)
            line, where = one_error_line(proc), cgroup
        else:
            fake = tmp_path / "cg" / "memory" / "job"
            tree(tmp_path / "cg", {"memory/job/memory.limit_in_bytes": str(3 * GIB),
                                   "memory/job/memory.usage_in_bytes": "0"})
            tree(tmp_path / "proc", {"self/cgroup": "4:memory:/job\n", "meminfo": f"MemAvailable: {64 << 20} kB\n"})
            monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path / "cg")
            monkeypatch.setattr(limits, "PROC", tmp_path / "proc")
            assert cli_lib.main(args) == 2
            line, where = capsys.readouterr().err.strip(), fake
    finally:
        if cgroup is not None:
            cgroup.rmdir()
    assert line.startswith("purejaxppo: error: num_envs: 1 run(s) of 65536 envs x 256 steps need at least 3.6 GiB")
    assert f"available (bound by the memory cgroup v1 {where} (limit 3.0 GiB, " in line, line


def _program(config, runs: int = 1, step=None):
    members = tuple(Member(config.seed + i) for i in range(runs))
    return layout.plan(make_ppo(config), Population(config, members, step))


def test_each_part_of_the_estimate_names_its_own_key(monkeypatch):
    monkeypatch.setattr(limits, "device_headroom", lambda: Headroom(1 << 20, "a test's 1 MiB"))
    cases = [
        (TINY.replace(eval_every=1, eval_episodes=100_000), 1, None, "eval_episodes: 1 run(s) need at least",
         "use fewer evaluation episodes"),
        (TINY.replace(total_timesteps=64 * 100_000, log_every=100_000, lr_schedule="constant"), 1, None,
         "log_every: 1 run(s) need at least", "use fewer updates per chunk (log_every)"),
        (TINY.replace(hidden_sizes=(512, 512)), 3, None, "hidden_sizes: 3 run(s) need at least",
         "use a smaller network or --max-runs-per-call, or a larger device"),
    ]
    spec = PBTConfig(3, parse_explore("lr", TINY), interval=4)
    cases.append((TINY.replace(hidden_sizes=(512, 512)), 3, Exploit(spec, (0,)), "hidden_sizes: 3 run(s)",
                  "use a smaller network or a smaller --population, or a larger device"))
    for config, runs, step, start, advice in cases:
        with pytest.raises(ConfigError) as err:
            layout.check_fits(_program(config, runs, step))
        line = str(err.value)
        assert line.startswith(start) and line.endswith(f"(bound by a test's 1 MiB); {advice}"), line
        assert "max-runs-per-call" not in line or step is None


def test_the_chunk_never_outgrows_the_run():
    assert TINY.replace(log_every=10**9).chunk_size == TINY.num_updates


XLA_OUT_OF_MEMORY = """
import sys
import jax.numpy as jnp
from purejaxppo.cli import main
from purejaxppo.host import layout
start = layout.Program.initial_states
def hungry(self):  # XLA's own allocation fails: 4 GiB more than the address space allows
    jnp.ones((1 << 30,), jnp.float32).block_until_ready()
    return start(self)
layout.Program.initial_states = hungry
sys.exit(main(sys.argv[1:]))
"""


def test_xlas_out_of_memory_is_one_line_naming_the_key(tmp_path):
    proc = subprocess.run(limited("-c", XLA_OUT_OF_MEMORY, "train", *TINY_FLAGS, "--set", "total_timesteps=512",
                                  "--set", "log_every=3", "--run-dir", str(tmp_path / "r"),
                                  limit_as=3 * GIB), capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == cli_lib.EXIT_DEVICE and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == ("purejaxppo: error: num_envs: the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory "
                        "allocating 4294967296 bytes.); use fewer envs or steps (num_envs, num_steps) or a smaller "
                        "network")


def test_evaluation_episodes_and_cpu_devices_are_bounded(straight, tmp_path):
    line = one_error_line(here("eval", str(straight.run_dir), "--episodes", "1000000000000"))
    assert line.startswith("purejaxppo: error: episodes: 1,000,000,000,000 episodes, one env each, need at least ")
    assert line.endswith("; evaluate fewer")
    line = one_error_line(here("sweep", "--seeds", "2", "--cpu-devices", "64", "--run-dir", str(tmp_path / "s"),
                              *TINY_FLAGS))
    assert line == ("purejaxppo: error: --cpu-devices: 64 devices for 2 run(s) would pad the population to 64 runs, "
                    "one a device, and train the filler runs too; use at most 2")
