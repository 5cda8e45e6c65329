"""The one host loop. It trains a population (a single run is a population of one) with its compiled
chunk program, and between chunks it writes metrics and logs, reports progress, checkpoints, guards
against non-finite values and honours stop signals. `train`, `sweep` and later front ends build the
population and name the outputs; everything else happens here. Nothing calls back from compiled code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo import acting, checkpoint, rundir
from purejaxppo import metrics as metrics_lib
from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.envs.custom import OBJECT_PREFIX
from purejaxppo.loggers import Loggers
from purejaxppo.errors import Interrupted, NonFiniteError, SaveError, device_error, is_device_error, notify
from purejaxppo.population import Layout, Population, Program, check_fits, plan
from purejaxppo.train import TrainState, make_trainer, with_env



@dataclasses.dataclass(frozen=True)
class Progress:
    """What the loop reports after each chunk."""

    update: int
    num_updates: int
    env_steps: int  # per run
    total_env_steps: int  # per run, at the end
    num_runs: int
    steps_per_second: float  # env steps of all runs per second since this call's first chunk began
    episode_return: float  # the latest finite return, mean over runs (NaN before any episode ended)
    seconds: float


@dataclasses.dataclass
class RunResult:
    """The outcome of one call of `run`: final states and metrics of every run of the population."""

    config: PPOConfig
    population: Population
    state: TrainState  # final states, stacked over runs
    metrics: dict[str, np.ndarray]  # [runs, updates], from update 0 (a resumed call includes the earlier ones)
    compile_time: float
    run_time: float
    run_dir: Path | None
    layout: Layout
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds before the first update, by stage
    first_update: int = 0  # where this call started: > 0 when resumed
    update: int = 0  # where it ended
    stopped: bool = False  # stopped early by a signal or `until_update`, with a checkpoint to resume from
    superseded: Path | None = None  # where the checkpoints after the resumed one, or a stranded run's files, went

    @property
    def env_steps(self) -> int:
        """Env steps of each run so far."""
        return int(self.metrics["env_steps"][0, -1])

    @property
    def steps_per_second(self) -> float:
        """Env steps of all runs in this call per second of this call's run time."""
        steps = self.env_steps - self.first_update * self.config.batch_size
        return steps * len(self.population) / self.run_time

    def final_returns(self) -> np.ndarray:
        """Per run: the mean episode return over the last 10% of updates."""
        return np.array([metrics_lib.final_return(r) for r in self.metrics["episode_return"]])

    @property
    def final_return(self) -> float:
        """The final return of the first run (the only one of a single run)."""
        return float(self.final_returns()[0])


def default_run_dir(config: PPOConfig, root: str | Path = "runs", suffix: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.env.removeprefix(OBJECT_PREFIX))  # e.g. pkg.mod:MyEnv, brax/ant
    return Path(root) / f"{name}-{stamp}{suffix}"


class StopSignal:
    """Turns SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) into a request to stop
    after the current chunk; a second signal interrupts.

    While `interrupting` (the checks and the compile, before anything is written), the first signal
    raises KeyboardInterrupt at once, and is recorded as well: Python drops an exception raised inside a
    garbage-collection callback, and the caller then raises it itself.

    Python runs signal handlers between bytecodes of the main thread, so a process stuck inside one
    XLA computation (a deadlock, or a wait for memory) would ignore every signal. A watcher thread sees
    each signal through `signal.set_wakeup_fd`, which the C-level handler writes to whatever the main
    thread does: when the signal that should interrupt (the first while `interrupting`, else the second)
    has not ended the process within FORCE_AFTER_S, it says so in one line, with what `written()` says the
    run dir holds, and exits at once.
    """

    FORCE_AFTER_S = 10.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, interrupt: bool = False) -> None:
        self.requested: str | None = None
        self.interrupting = interrupt
        self.written: Callable[[], str] = lambda: "nothing new was written"

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}

        def handler(signum: int, _frame: Any) -> None:
            self.requested = signal.Signals(signum).name
            for sig, old in previous.items():  # a second signal acts as usual
                signal.signal(sig, old)
            if self.interrupting:
                raise KeyboardInterrupt

        for sig in previous:
            signal.signal(sig, handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(read_fd, done), daemon=True, name="purejaxppo-signals")
        watcher.start()
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(old_wakeup)
            done.set()
            os.write(write_fd, b"\0")  # wakes the watcher, which then ends
            watcher.join()
            os.close(read_fd)
            os.close(write_fd)

    @contextlib.contextmanager
    def stop_requests(self) -> Iterator[None]:
        """For the block, a first signal is a stop request, not an interruption."""
        self.interrupting = False
        try:
            yield
        finally:
            self.interrupting = True

    def _watch(self, read_fd: int, done: threading.Event) -> None:
        seen = 0
        while not done.is_set():
            for signum in os.read(read_fd, 64):
                if signum in self.SIGNALS:
                    seen += 1
                    if seen >= (1 if self.interrupting else 2) and not done.wait(self.FORCE_AFTER_S):
                        name = signal.Signals(signum).name
                        os.write(2, f"purejaxppo: {name} while stuck inside a computation: stopped at once, without "
                                    f"a checkpoint; {self.written()}\n".encode())
                        os._exit(128 + signum)


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
    except rundir.RunDirError as err:  # a read-only home: the cache is an optimisation, not a need
        jax.config.update("jax_enable_compilation_cache", False)
        notify(f"compilation_cache: {str(err).removeprefix('run dir ')}; running without the cache (every run "
               f"compiles afresh)", once=True)
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def stopping(stop: StopSignal) -> bool:
    """Whether to stop after this chunk. Every process of a multi-host run must agree, or the ones that
    go on wait for ever in the next chunk's collectives while the others save."""
    if jax.process_count() == 1:
        return stop.requested is not None
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.array(stop.requested is not None)).any())


def _command(kind: str) -> str:
    return {"run": "train"}.get(kind, kind)


def written(run_dir: Path | None, kind: str) -> str:
    """What a run dir holds for the run that is writing it, and how to go on, in words."""
    if run_dir is None:
        return "nothing was kept (no run dir)"
    steps = checkpoint.available_steps(run_dir) if checkpoint.checkpoint_dir(run_dir).is_dir() else []
    if steps:
        return f"checkpoint {steps[-1]} is the newest; resume with purejaxppo {_command(kind)} --resume {run_dir}"
    return (f"no checkpoint was written; purejaxppo {_command(kind)} --run-dir {run_dir} starts the run again "
            f"(its files are moved aside)")


@contextlib.contextmanager
def finishing(run_dir: Path | None, kind: str) -> Iterator[None]:
    """For a front end's own outputs after `run`: a Ctrl-C there says what the run dir holds."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(written(run_dir, kind)) from None


@dataclasses.dataclass
class Started:
    """What `_start` has built, checked, compiled and initialised or restored, before anything is written."""

    program: Program
    resume_step: int | None
    stranded: list[str]  # the files of an earlier run in the run dir that never reached a checkpoint
    timings: dict[str, float]  # seconds before the first update, by stage
    compile_time: float = 0.0  # the compile and the init or restore
    first: int = 0  # the update the states have reached
    states: list[TrainState] = dataclasses.field(default_factory=list)  # one per call


def _start(
    population: Population, run_dir: Path | None, resume_step: int | None, max_runs_per_call: int | None,
    on_ready: Callable[[], None] | None = None, env: Any = None,
) -> Started:
    """Build, check, compile, then init or restore. `on_ready` is called once every check has passed, before
    the compile. Writes nothing."""
    config = population.config
    clock = time.perf_counter()
    trainer = make_trainer(config, env)
    if resume_step is None:  # a resume restores its own state, the started-from policy's included
        trainer = acting.starting(trainer)
    use_compilation_cache(config)
    program = plan(trainer, population, max_runs_per_call)
    check_fits(program)
    started = Started(program, resume_step, [], {"build": time.perf_counter() - clock})
    lay = program.layout
    if resume_step is not None:  # every check before anything compiles
        _, saved = checkpoint.read_meta(run_dir, resume_step)
        if int(saved.get("stacked_runs", -1)) != lay.stacked_runs:
            raise checkpoint.CheckpointError(
                f"{run_dir}: the checkpoint holds {saved.get('stacked_runs')} stacked runs, but {lay.devices} "
                f"device(s) give {lay.stacked_runs} here; resume on as many devices as it ran on "
                f"(--cpu-devices N)")
        checkpoint.check_arrays(run_dir, resume_step, program.abstract)
    elif run_dir is not None:
        started.stranded = checkpoint.check_fresh(run_dir)
    if on_ready is not None:
        on_ready()
    start = time.perf_counter()
    program.compile()
    started.timings.update(program.timings)
    clock = time.perf_counter()
    if resume_step is not None:
        started.first, restored, _ = checkpoint.restore(run_dir, program.restore_target(), resume_step)
        started.states = program.split(restored)
    else:
        started.states = jax.block_until_ready(program.initial_states())
    started.timings["init" if resume_step is None else "restore"] = time.perf_counter() - clock
    started.compile_time = time.perf_counter() - start
    return started


def _whole(states: list[TrainState]) -> TrainState:
    """The calls' states as one, every stacked run of the population in order."""
    return states[0] if len(states) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)


def run(
    population: Population,
    run_dir: str | Path | None = None,
    *,
    kind: str = "run",
    meta: dict[str, Any] | None = None,
    max_runs_per_call: int | None = None,
    resume_step: int | None = None,
    until_update: int | None = None,
    guard: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    env: Any = None,
) -> RunResult:
    """Train every run of `population` from its init, or from checkpoint `resume_step` of `run_dir`.
    `on_ready` is called once the config, env and run dir have passed every check, before the compile.
    `env`, an env object, replaces the config's env name (the config records its class).

    The caller holds the run dir (`rundir.claimed`). With a run dir: `config.yaml`, `metrics.csv` (every
    run), the optional loggers, and checkpoints of the whole stacked state every `checkpoint_every`
    updates, at the end, and on a stop (SIGINT, SIGTERM, SIGHUP, or `until_update`). With `guard`, a
    non-finite loss, gradient norm or parameter in any run stops the call with NonFiniteError, after
    checkpointing the last good state. `meta` is stored with each checkpoint, beside what the loop
    itself needs.

    A signal during the checks, the compile and the init or restore interrupts at once (KeyboardInterrupt),
    before anything is written; from then on the first asks for a stop at the next chunk's end, with a
    checkpoint, and a second interrupts at once (errors.Interrupted, saying what the run dir holds).
    """
    population = dataclasses.replace(population, config=with_env(population.config, env))
    run_dir = Path(run_dir) if run_dir is not None else None
    stop = StopSignal(interrupt=True)
    fewer = {"sweep": ", or fewer runs per call (max_runs_per_call)", "pbt": ", or a smaller population"}.get(kind, "")
    out_of_memory = f"num_envs: use fewer envs or steps (num_envs, num_steps) or a smaller network{fewer}"
    with stop.installed():
        try:
            started = _start(population, run_dir, resume_step, max_runs_per_call, on_ready, env)
        except Exception as err:
            if is_device_error(err):
                raise device_error(err, out_of_memory) from None
            raise
        if stop.requested:  # its KeyboardInterrupt was dropped, as inside a garbage-collection callback
            raise KeyboardInterrupt
        with stop.stop_requests():
            try:
                return _train_population(started, run_dir, kind, meta, max_runs_per_call, until_update, guard,
                                         on_progress, stop)
            except KeyboardInterrupt:
                raise Interrupted(written(run_dir, kind)) from None
            except Exception as err:
                if is_device_error(err):
                    raise device_error(err, f"{out_of_memory}; {written(run_dir, kind)}") from None
                raise


def _train_population(
    started: Started, run_dir: Path | None, kind: str, meta: dict[str, Any] | None, max_runs_per_call: int | None,
    until_update: int | None, guard: bool, on_progress: Callable[[Progress], None] | None, stop: StopSignal,
) -> RunResult:
    """Set up the run dir's files, then the chunk loop."""
    program, resume_step, first, states = started.program, started.resume_step, started.first, started.states
    population, lay = program.population, program.layout
    config = population.config

    store = loggers = ckpt = superseded = None
    n = len(population)
    if run_dir is not None:
        if is_primary():
            stop.written = lambda: written(run_dir, kind)
            superseded = (checkpoint.supersede_later(run_dir, first) if resume_step is not None
                          else checkpoint.set_aside(run_dir, started.stranded))
        _sync("purejaxppo: earlier files moved aside")
        if is_primary():
            with _writing(run_dir / "config.yaml", run_dir):
                config_lib.save(config, run_dir / "config.yaml")
            with _writing(run_dir / metrics_lib.FILE, run_dir):
                store = metrics_lib.MetricsStore(run_dir, n, resume_from=first if resume_step is not None else None)
            loggers = Loggers.create(config, run_dir, n)
            with _writing(run_dir / metrics_lib.RUNS_FILE, run_dir):
                metrics_lib.write_runs(run_dir, population.to_meta())
        ckpt = checkpoint.Checkpointer(run_dir, config.keep_checkpoints)
    meta = {**(meta or {}), "config": config.to_dict(), "kind": kind, "members": population.to_meta(),
            "num_runs": n, "stacked_runs": lay.stacked_runs, "devices": lay.devices,
            "max_runs_per_call": max_runs_per_call}

    def save(update: int, to_save: list[TrainState]) -> None:
        if ckpt is not None:
            ckpt.save(update, _whole(to_save), {**meta, "update": update, "env_steps": update * config.batch_size})

    collected: list[dict[str, np.ndarray]] = [store.previous] if store is not None and store.previous else []
    done, stopped, last_saved = first, False, first
    start = time.perf_counter()
    try:
        while done < config.num_updates:
            if stopping(stop) or (until_update is not None and done >= until_update and done > first):
                stopped = True
                save(done, states)
                break
            active = min(config.chunk_size, config.num_updates - done)
            outputs = [program.chunk(s, done, active) for s in states]
            # copies, not views: a view would keep the chunk's whole device buffer alive for the run
            parts = [{k: np.array(v[:, :active]) for k, v in jax.device_get(o[1]).items()} for o in outputs]
            chunk_metrics = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
            if store is not None:  # a bad chunk's rows too, for the post-mortem
                with _writing(store.path, run_dir, ckpt):
                    store.write(done, chunk_metrics)
            if guard:
                bad = metrics_lib.first_non_finite(chunk_metrics)
                params_ok = all(bool(np.asarray(jax.device_get(o[2]))[:n].all()) for o in outputs)
                if bad is not None or not params_ok:
                    where = (f"update {done + bad[0]} (env steps {(done + bad[0] + 1) * config.batch_size:,}): "
                             f"{bad[1]} is not finite") if bad else \
                        f"the params of updates {done}-{done + active - 1}"
                    save(done, states)
                    kept = f"; the last good state is checkpoint {done} in {checkpoint.checkpoint_dir(run_dir)}" \
                        if ckpt is not None else ""
                    raise NonFiniteError(f"training stopped at {where}{kept}")
            states = [o[0] for o in outputs]
            collected.append(chunk_metrics)
            if loggers is not None:
                loggers.log(done, chunk_metrics)
            done += active
            if on_progress is not None and is_primary():
                elapsed = time.perf_counter() - start
                returns = [metrics_lib.last_finite(r) for r in chunk_metrics["episode_return"]]
                on_progress(Progress(
                    done, config.num_updates, done * config.batch_size, config.num_updates * config.batch_size,
                    n, (done - first) * config.batch_size * n / elapsed,
                    float(np.nanmean(returns)) if np.isfinite(returns).any() else float("nan"), elapsed))
            if (config.checkpoint_every and done < config.num_updates
                    and done // config.checkpoint_every > last_saved // config.checkpoint_every):
                save(done, states)
                last_saved = done
        if not stopped:
            save(done, states)
    finally:
        for closing in (store, loggers):
            if closing is not None:
                closing.close()
        if ckpt is not None:
            try:
                ckpt.wait()
            finally:
                with contextlib.suppress(Exception):  # after a failed save orbax's close fails the same way
                    ckpt.close()
    states = jax.block_until_ready(states)
    run_time = time.perf_counter() - start
    names = metrics_lib.metric_names(collected[-1]) if collected else []
    # rows read back from metrics.csv (float64) take the dtype the program gives: 9 digits round-trip float32
    stacked = {k: np.concatenate([c[k].astype(collected[-1][k].dtype) for c in collected], axis=1) for k in names}
    state = _whole(states)
    state = jax.tree.map(lambda x: x[:n], state) if lay.stacked_runs != n else state
    if run_dir is not None and is_primary() and not stopped:
        with _writing(run_dir / metrics_lib.RUNS_FILE, run_dir):
            metrics_lib.write_runs(run_dir, population.to_meta(), stacked)
    return RunResult(config, population, state, stacked, started.compile_time, run_time, run_dir, lay,
                     started.timings, first, done, stopped, superseded)


@contextlib.contextmanager
def _writing(path: Path, run_dir: Path, ckpt: checkpoint.Checkpointer | None = None) -> Iterator[None]:
    """A failure to write the run file `path` (a full disk, a lost mount) as one SaveError line naming the
    file and the newest checkpoint, once `ckpt`'s save under way has ended."""
    try:
        yield
    except OSError as err:
        if ckpt is not None:
            with contextlib.suppress(Exception):
                ckpt.wait()
        raise SaveError(f"{err.filename or path} could not be written: {err.strerror or err}; the last good "
                        f"checkpoint is {checkpoint.last_good(run_dir).removeprefix('checkpoint ')}") from None


def train(
    config: PPOConfig,
    run_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    resume: bool = False,
    step: int | None = None,
    until_update: int | None = None,
    on_ready: Callable[[], None] | None = None,
    env: Any = None,
) -> RunResult:
    """Train one run (a population of one) in compiled chunks of `config.chunk_size` updates, on the
    config's env or on `env`, an env object of any kind `envs.make_env` accepts (then the run's config
    records the object's class, and a resume needs the same `env` again).

    `resume=True` continues from the run dir's latest checkpoint (or `step`); the result is
    bit-identical to an uninterrupted run. `until_update` stops, with a checkpoint, at the first chunk
    end at or after it. The result's state and metrics keep the run axis, of size 1.
    """
    config = with_env(config, env)
    run_dir = Path(run_dir) if run_dir is not None else None
    with rundir.claimed(run_dir, create=not resume, primary=is_primary()):
        resume_step = checkpoint.resume_point(run_dir, step, "run", config)[0] if resume else None
        return run(Population.single(config), run_dir, kind="run", resume_step=resume_step,
                   until_update=until_update, on_progress=on_progress, on_ready=on_ready, env=env)
