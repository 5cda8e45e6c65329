"""The processes a run spans, and what they set up once: `jax.distributed` over several hosts, which of
them writes the run's files, their agreement at each chunk's end, and JAX's persistent compilation
cache."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError, RunDirError, notify
from purejaxppo.host import rundir


def is_primary() -> bool:
    """Whether this process writes the run's files and reports progress (always, on one host)."""
    return jax.process_index() == 0


def use_compilation_cache(config: PPOConfig) -> None:
    """Point JAX's persistent compilation cache at `config.compilation_cache`, or turn it off when that
    is empty, for the compiles from here on. Every program is cached, however fast it compiled, since a
    run's programs are few and reused."""
    path = Path(config.compilation_cache).expanduser() if config.compilation_cache else None
    if path is not None:
        try:
            rundir.prepare(path)
        except RunDirError as err:  # a read-only home: the cache is an optimisation, not a need
            notify(f"compilation_cache: {str(err).removeprefix('run dir ')}; running without the cache (every run "
                   f"compiles afresh)", once=True)
            path = None
    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_enable_compilation_cache", path is not None)
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        if jax.default_backend() == "cpu":
            # JAX puts its GPU autotuning cache beside the entries and writes that folder's path into every
            # program's compile options, which are part of the key: the same program reached through another
            # path to the cache (another HOME, a symlink, a copied cache) would miss. A CPU has no autotuning.
            jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    if (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != before:
        # JAX settles whether and where it caches at a process's first compile (importing gymnax compiles);
        # this makes it settle again, so that the setting holds for this run
        compilation_cache.reset_cache()


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
