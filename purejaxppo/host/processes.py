"""The processes a run spans, and what they set up once: `jax.distributed` over several hosts, which of
them writes the run's files, what they agree on (the plan at the start, the run dir they share, whether to
stop at each chunk's end, a search's decisions), the arrays they gather, how a lost process is named, and
JAX's persistent compilation cache.

Agreement goes through the coordinator's key-value store rather than a collective, so that a process that
refused its input (and exits) is reported by the others instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from purejaxppo.config import PPOConfig
from purejaxppo.errors import EXIT_PROCESS_LOST, ConfigError, RunDirError, notify
from purejaxppo.host import rundir

WAIT_S = 300.0  # how long a process waits for the others to prepare the same run (JAX's own connect timeout)
BEAT_S = 0.5  # each process's heartbeat in the store
LOST_AFTER_S = 10.0  # a process silent this long is lost (JAX's own heartbeat gives up after 100 s, with a crash)
PREFIX = "purejaxppo"
_ROUNDS = {name: itertools.count() for name in ("plan", "shared", "decided")}  # keys unique per call, alike everywhere
_lost: list[int] = []  # the process the watcher found lost
_stopping = threading.Event()  # set at exit: the watch ends
_written: Callable[[], str] | None = None  # what the run dir holds, while a run is watched


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
    cluster (SLURM, Open MPI, ...). Then this process's heartbeat, and its watch of the others', start
    (`_watch`)."""
    given = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    try:
        jax.distributed.initialize(**given)
    except (ValueError, RuntimeError) as err:  # no cluster detected, a bad address, a timeout
        message = " ".join(str(err).split())
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {message}") from None
    if count() > 1:  # neither this nor the heartbeat starts JAX's backends: the CPU device count is set after
        _store().key_value_set(_beat_key(_index()), "0", allow_overwrite=True)
        watch = threading.Thread(target=_watch, daemon=True, name="purejaxppo-heartbeat")
        watch.start()
        atexit.register(_stop_watching, watch)  # runs before JAX's own shutdown, registered earlier


def _stop_watching(watch: threading.Thread) -> None:
    """End the watch before the interpreter does: a daemon thread it ends inside a call to the store (C++)
    aborts the process ("exception not rethrown")."""
    _stopping.set()
    watch.join(timeout=5.0)


def count() -> int:
    """The number of processes, without starting JAX's backends (as `jax.process_count()` would)."""
    from jax._src import distributed as state

    return state.global_state.num_processes if state.global_state.client is not None else 1


def _index() -> int:
    from jax._src import distributed as state

    return state.global_state.process_id if state.global_state.client is not None else 0


def distributed() -> bool:
    """Whether this process is one of several under `jax.distributed` (without starting JAX's backends)."""
    return count() > 1


def gathered(tree: Any) -> Any:
    """Host copies of `tree`'s arrays (each with the runs on its first axis), whole in every process: under
    `jax.distributed` each process holds only its own runs of a population, so the parts are gathered
    from all, in one collective per dtype (the arrays side by side) rather than one per array."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    out: list[Any] = [None] * len(leaves)
    for dtype in dict.fromkeys(x.dtype for x in leaves):
        chosen = [i for i, x in enumerate(leaves) if x.dtype == dtype]
        whole = multihost_utils.process_allgather(_side_by_side([leaves[i] for i in chosen]), tiled=True)
        widths = [math.prod(leaves[i].shape[1:]) for i in chosen]
        for i, part in zip(chosen, np.split(whole, np.cumsum(widths)[:-1], axis=1)):
            out[i] = part.reshape(leaves[i].shape)
    return jax.tree.unflatten(treedef, out)


@jax.jit
def _side_by_side(arrays: list[jax.Array]) -> jax.Array:
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in arrays], axis=1)


def digest(plan: Any) -> str:
    """A short hash of a JSON-able plan, to compare across processes."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def agree(plan: Any, what: str) -> None:
    """Refuse, in every process, a run the processes prepared differently (another config, grid, seed or
    resume point: they were started with different commands), or one that another process refused."""
    if jax.process_count() == 1:
        return
    n, me = next(_ROUNDS["plan"]), jax.process_index()
    mine = digest(plan)
    _store().key_value_set(f"{PREFIX}/plan/{n}/{me}", mine)
    for other in range(jax.process_count()):
        theirs = _wait_for(f"{PREFIX}/plan/{n}/{other}", other, f"prepare the {what}")
        if theirs != mine:
            raise ConfigError(f"{what}: process {other} prepared another run than process {me} (plans {theirs} and "
                              f"{mine}): start every process with the same command, config and options")


def refuse(message: str) -> None:
    """Tell the other processes, which may be waiting in `agree`, that this one refused the run."""
    if distributed():
        try:
            _store().key_value_set(f"{PREFIX}/refused/{jax.process_index()}", message, allow_overwrite=True)
        except Exception:  # the coordinator is gone already: nobody is waiting
            pass


def leaving() -> None:
    """Before a process that failed ends at once (after `refuse`): process 0 keeps the coordinator, without
    which JAX ends the others with a crash report, so it first waits, up to LOST_AFTER_S, for each of the
    others to have refused too (or be lost), and a moment more for them to end."""
    if not distributed() or _index() != 0:
        return
    deadline, pending = time.monotonic() + LOST_AFTER_S, set(range(1, count()))
    while pending and time.monotonic() < deadline:
        pending -= {j for j in pending if _found(f"{PREFIX}/refused/{j}") is not None}
        pending -= set(_lost)
        time.sleep(0.05)
    time.sleep(0.5)


def check_shared(run_dir: Path | None) -> None:
    """Refuse, in every process, a run dir that is not one shared folder: process 0 writes a file with a
    fresh token there, and each process says whether it reads it back."""
    if jax.process_count() == 1 or run_dir is None:
        return
    n, me, store = next(_ROUNDS["shared"]), jax.process_index(), _store()
    probe = run_dir / f".purejaxppo-shared-{n}"
    if me == 0:
        token = uuid.uuid4().hex
        probe.write_text(token)
        store.key_value_set(f"{PREFIX}/shared/{n}", token)
    else:
        token = _wait_for(f"{PREFIX}/shared/{n}", 0, "write the run dir")
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    store.key_value_set(f"{PREFIX}/sees/{n}/{me}", "yes" if seen else "no")
    blind = [j for j in range(jax.process_count())
             if _wait_for(f"{PREFIX}/sees/{n}/{j}", j, "read the run dir") != "yes"]
    if me == 0:
        probe.unlink(missing_ok=True)
    if blind:
        raise RunDirError(f"run dir {run_dir}: process {blind[0]} does not see the files process 0 writes there; every "
                          f"process needs the same folder, on storage they all share")


def decided(make: Any) -> Any:
    """What `make()` (a JSON-able value) gives in process 0, in every process: a decision that only one
    process may take (it asks an Optuna study kept in the run dir)."""
    if jax.process_count() == 1:
        return make()
    key = f"{PREFIX}/decided/{next(_ROUNDS['decided'])}"
    if jax.process_index() == 0:
        value = make()
        _store().key_value_set(key, json.dumps(value))
        return value
    return json.loads(_wait_for(key, 0, "decide"))


@contextlib.contextmanager
def watching(written: Callable[[], str]) -> Iterator[None]:
    """While the block runs, a lost process (`_watch`) ends this one with one line that says so and, from
    `written()`, what the run dir holds and how to resume."""
    global _written
    before, _written = _written, written
    try:
        yield
    finally:
        _written = before


def lost(within: float | None = None) -> bool:
    """Whether another process is lost, waiting up to `within` seconds (LOST_AFTER_S and a beat, by default)
    for the watcher to see it: a failed collective may be the first sign. The watcher ends the process
    itself, so True is seen only where it is not watching."""
    if not distributed():
        return False
    deadline = time.monotonic() + (LOST_AFTER_S + 2 * BEAT_S if within is None else within)
    while not _lost and time.monotonic() < deadline:
        time.sleep(BEAT_S / 4)
    return bool(_lost)


def _store() -> Any:
    from jax._src import distributed as state

    return state.global_state.client


def _beat_key(process: int) -> str:
    return f"{PREFIX}/beat/{process}"


def _watch() -> None:
    """Beat, and watch the others' beats: a process whose beat has not moved for LOST_AFTER_S (process 0,
    where the store it keeps cannot be reached) is lost; then this process ends with one line, so that it
    neither waits in a collective or a checkpoint's barrier until JAX's own timeout ends it with a crash
    report, nor goes on alone."""
    store, me, n = _store(), _index(), count()
    seen: dict[int, tuple[str, float]] = {}
    reached = time.monotonic()
    for beat in itertools.count(1):
        if _stopping.wait(BEAT_S):
            return
        now = time.monotonic()
        try:
            store.key_value_set(_beat_key(me), str(beat), allow_overwrite=True)
            beats = dict(store.key_value_dir_get(f"{PREFIX}/beat/"))
            reached = now
        except Exception:  # the coordinator's store went with process 0
            if now - reached > LOST_AFTER_S:
                return _gone(0, n)
            continue
        for j in range(n):
            value = beats.get(_beat_key(j))
            if j == me or value is None:
                continue
            if seen.get(j, (None,))[0] != value:
                seen[j] = (value, now)
            elif now - seen[j][1] > LOST_AFTER_S:
                return _gone(j, n)


def _gone(process: int, n: int) -> None:
    _lost.append(process)
    if _written is None:  # not in a run: what waits for the others (`_wait_for`) says so itself
        return
    print(f"purejaxppo: error: process {process} of {n} was lost (no sign of it for {LOST_AFTER_S:.0f} s: it died "
          f"or lost touch), so process {_index()} stops too; {_written()}, on every process", file=sys.stderr,
          flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PROCESS_LOST)


def _found(key: str) -> str | None:
    """The value at `key` in the coordinator's store, or None while nothing is there."""
    try:
        return _store().key_value_try_get(key)
    except Exception:  # the client raises when the key is not (yet) there
        return None


def _wait_for(key: str, process: int, doing: str) -> str:
    """The value at `key`, which `process` sets, once it is there; a refusal of that process's instead
    raises ConfigError with its line, and so does a wait past WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        if (value := _found(key)) is not None:
            return value
        if (refusal := _found(f"{PREFIX}/refused/{process}")) is not None:
            raise ConfigError(f"process {process} refused the run: {refusal}")
        if _lost:
            raise ConfigError(f"process {_lost[0]} was lost (no sign of it for {LOST_AFTER_S:.0f} s) before the run "
                              f"began")
        if time.monotonic() > deadline:
            raise ConfigError(f"process {process} did not {doing} within {WAIT_S:.0f} s; start every process with "
                              f"the same command")
        time.sleep(0.05)
