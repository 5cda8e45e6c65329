"""Shared configs, helpers and compiled fixtures.

Every test process shares one JAX compilation cache folder (`CACHE`, under the repo's ignored
.pytest_cache), and the tiny configs name it, so a program compiled once (in this process, a CLI
subprocess or an earlier run of the suite) is read back, not compiled again. Fixtures that train are
session-scoped: each is trained once and read by several modules.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purejaxppo import cli as cli_lib
from purejaxppo import train
from purejaxppo.config import PPOConfig
from purejaxppo.host import checkpoint
from purejaxppo.host.loop import RunResult
from purejaxppo.host.processes import use_compilation_cache

from compile_report import (  # noqa: F401  (pytest --compile-report: hooks pytest finds here)
    pytest_addoption,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_protocol,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = str(ROOT / ".pytest_cache" / "jax-compilation-cache")

# 8 updates in chunks of 3, 3 and 2: every run through the host loop meets a shorter last chunk.
TINY = PPOConfig(
    env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 8, num_minibatches=2,
    update_epochs=2, hidden_sizes=(16,), log_every=3, normalize_obs=True, env_kwargs={"max_steps_in_episode": 20},
    compilation_cache=CACHE,
)
PENDULUM = PPOConfig(
    env="Pendulum-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, num_minibatches=2, update_epochs=2,
    hidden_sizes=(16,), env_kwargs={"max_steps_in_episode": 16}, compilation_cache=CACHE,
)
use_compilation_cache(TINY)  # for every compile in this process, runs or not

# the CLI flags that give TINY's program from the default config (so a CLI run reads TINY's compiled program)
TINY_SHAPE = ["--set", "num_envs=4", "--set", "num_steps=16", "--set", "num_minibatches=2", "--set", "update_epochs=2",
              "--set", "hidden_sizes=[16]", "--set", "normalize_obs=true",
              "--set", "env_kwargs={max_steps_in_episode: 20}"]
TINY_FLAGS = [*TINY_SHAPE, "--set", f"compilation_cache={CACHE}"]


# The files that take longest on a cold cache (2 CPU cores, 2026-12-05), started first, so that the parallel
# workers of `make test` (one file at a time each) finish together rather than wait for one long file at the end.
SLOWEST_FIRST = ("test_runner.py", "test_rundir.py", "test_multihost.py", "test_pbt.py", "test_docs.py", "test_export.py",
                 "test_brax_train.py", "test_playground.py", "test_env_conformance.py", "test_custom_env.py",
                 "test_recurrent.py", "test_learning.py", "test_sweep.py", "test_cli.py", "test_minibatch_step.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: each file keeps its order


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now: for a jax.distributed coordinator."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leaves_equal(a, b) -> bool:
    """Whether two pytrees hold bit-identical arrays (typed PRNG keys compared by their data)."""
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(unwrap(x), unwrap(y)) for x, y in zip(la, lb))


def restored(run_dir: Path, abstract, step: int):
    """The whole training state of checkpoint `step`, against `abstract`, as a resume restores it."""
    _, record = checkpoint.read_record(run_dir, step)
    return checkpoint.restore(run_dir, abstract, step, record, checkpoint.check_arrays(run_dir, step, abstract))


def cli(*args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m purejaxppo ARGS` in a fresh process, from the repo root."""
    return subprocess.run([sys.executable, "-m", "purejaxppo", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, **kwargs)


def here(*args: str) -> subprocess.CompletedProcess:
    """`purejaxppo ARGS` through `cli.main` in this process: its exit status and what it prints, as `cli` gives
    them, without the seconds a fresh Python and JAX take to start. For a refusal or a run that ends by itself;
    a signal, a killed process, a device count or a compilation cache of its own needs a fresh process (`cli`)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli_lib.main(list(args))
        except SystemExit as exit:  # argparse's own exit, as `python -m purejaxppo` would end
            status = exit.code
    return subprocess.CompletedProcess(["purejaxppo", *args], status, out.getvalue(), err.getvalue())


def python(script: str, *args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """`python -c SCRIPT ARGS` in a fresh process from the repo root, checked to have succeeded."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_error_line(proc: subprocess.CompletedProcess, status: int = 2) -> str:
    """The single `purejaxppo: error:` line a command that failed with exit `status` (2: refused) prints,
    checked to be all it printed to stderr."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("purejaxppo: error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> RunResult:
    """TINY trained straight through, in a run dir with its checkpoint."""
    return train(TINY, tmp_path_factory.mktemp("straight") / "run")


@pytest.fixture(scope="session")
def resumed(tmp_path_factory) -> tuple[RunResult, RunResult]:
    """TINY stopped at the first chunk end at or after update 4 (update 6), then resumed to the end."""
    run_dir = tmp_path_factory.mktemp("resumed") / "run"
    first = train(TINY, run_dir, until_update=4)
    return first, train(TINY, run_dir, resume=True)
