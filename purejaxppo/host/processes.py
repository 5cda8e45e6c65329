"""The processes a run spans, and what they set up once: `jax.distributed` over several hosts, which of
them writes the run's files, their agreement at each chunk's end, and JAX's persistent compilation
cache."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError, RunDirError, notify
from purejaxppo.host import rundir


def is_primary() -> bool:
    """Whether this process writes the run's files and reports progress (always, on one host)."""
    return jax.process_index() == 0


def use_compilation_cache(config: PPOConfig) -> None:
    """Point JAX's persistent compilation cache at `config.compilation_cache`, or turn it off when that
    is empty. Every program is cached, however fast it compiled, since a run's programs are few and
    reused. JAX decides whether to use the cache once per process, at its first compile."""
    if not config.compilation_cache:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    path = Path(config.compilation_cache).expanduser()
    try:
        rundir.prepare(path)
    except RunDirError as err:  # a read-only home: the cache is an optimisation, not a need
        jax.config.update("jax_enable_compilation_cache", False)
        notify(f"compilation_cache: {str(err).removeprefix('run dir ')}; running without the cache (every run "
               f"compiles afresh)", once=True)
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def sync(name: str) -> None:
    """Wait until every process of a multi-host run gets here (nothing on one host)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` holds in any process of a multi-host run (this process's own, on one host): every
    process must agree whether to stop, or the ones that go on wait for ever in the next chunk's
    collectives while the others save."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array(flag)).any())


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """`jax.distributed.initialize`, before JAX does anything else; with no argument, JAX detects the
    cluster (SLURM, Open MPI, ...)."""
    given = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    try:
        jax.distributed.initialize(**given)
    except (ValueError, RuntimeError) as err:  # no cluster detected, a bad address, a timeout
        message = " ".join(str(err).split())
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {message}") from None
