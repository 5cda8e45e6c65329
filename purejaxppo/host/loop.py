"""The one host loop. It trains a prepared population (a single run is a population of one) with its
compiled chunk program, and between chunks it writes metrics and logs, reports progress, checkpoints,
guards against non-finite values and honours stop requests. Nothing calls back from compiled code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.errors import NonFiniteError, SaveError
from purejaxppo.host import checkpoint
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host.layout import Layout, Program
from purejaxppo.host.loggers import Loggers
from purejaxppo.host.population import Population
from purejaxppo.host.processes import any_process, gathered, is_primary, sync
from purejaxppo.host.record import RunRecord
from purejaxppo.host.signals import StopSignal, written
from purejaxppo.host.video import VideoRecorder
from purejaxppo.program.ppo import TrainState


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
    """The outcome of one call of `Prepared.run`: final states and metrics of every run of the population."""

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
        """Env steps of each run so far (of each slot of a search, whatever trials it trained)."""
        return self.update * self.config.batch_size

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

    @classmethod
    def extending(cls, result: RunResult, **more: Any) -> Any:
        """`result` as a front end's own result class (a subclass), with its `more` fields."""
        return cls(**{f.name: getattr(result, f.name) for f in dataclasses.fields(RunResult)}, **more)


@dataclasses.dataclass
class Outputs:
    """The run dir's writers for one call; all None without a run dir (and, but for the checkpoints, on
    every process of a multi-host run but the first)."""

    store: metrics_lib.MetricsStore | None = None
    loggers: Loggers | None = None
    ckpt: checkpoint.Checkpointer | None = None
    videos: VideoRecorder | None = None
    superseded: Path | None = None

    def hand_over_videos(self, wait: bool = False) -> None:
        """The training videos written so far (all, with `wait`), to the loggers."""
        if self.videos is not None:
            done = self.videos.close() if wait else self.videos.finished()
            if self.loggers is not None:
                self.loggers.videos(done)

    def close(self) -> None:
        try:
            self.hand_over_videos(wait=True)
        finally:
            for closing in (self.store, self.loggers):
                if closing is not None:
                    closing.close()
            if self.ckpt is not None:
                try:
                    self.ckpt.wait()
                finally:
                    with contextlib.suppress(Exception):  # after a failed save orbax's close fails the same way
                        self.ckpt.close()


def open_run_dir(run_dir: Path | None, record: RunRecord, first: int, resumed: bool,
                 stranded: list[str], ppo: Any = None) -> Outputs:
    """Set the run dir up for this call: the files a resume replaces, or an earlier run's that never
    reached a checkpoint, moved aside; config.yaml, the metrics store (cut at a resume's point), the
    loggers, runs.csv and the checkpointer."""
    out = Outputs()
    if run_dir is None:
        return out
    config, n = record.config, record.num_runs
    if is_primary():
        out.superseded = (checkpoint.supersede_later(run_dir, first) if resumed
                          else checkpoint.set_aside(run_dir, stranded))
    sync("purejaxppo: earlier files moved aside")
    if is_primary():
        with _writing(run_dir / "config.yaml", run_dir):
            config_lib.save(config, run_dir / "config.yaml")
        with _writing(run_dir / metrics_lib.FILE, run_dir):
            out.store = metrics_lib.MetricsStore(run_dir, n, resume_from=first if resumed else None)
        out.loggers = Loggers.create(config, run_dir, n)
        if config.video_every:
            out.videos = VideoRecorder(ppo, run_dir)
        with _writing(run_dir / metrics_lib.RUNS_FILE, run_dir):
            metrics_lib.write_runs(run_dir, record.members)
    out.ckpt = checkpoint.Checkpointer(run_dir, config.keep_checkpoints)
    return out


def train_population(
    program: Program, states: list[TrainState], first: int, run_dir: Path | None, record: RunRecord, *,
    resumed: bool, stranded: list[str], stop: StopSignal, until_update: int | None = None, guard: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Train `states` (the calls' states, at update `first`) to the end of the run, or to a stop: the
    first chunk end at or after `until_update`, or a stop `stop` records. With `guard`, a non-finite loss,
    gradient norm or parameter in any run stops the call with NonFiniteError, after checkpointing the last
    good state. Returns the result, its compile time and timings left to the caller."""
    config, n = record.config, record.num_runs
    if run_dir is not None and is_primary():
        stop.written = lambda: written(run_dir, record.kind)
    out = open_run_dir(run_dir, record, first, resumed, stranded, program.ppo)

    between = program.population.between
    horizon = program.population.num_updates

    def save(update: int, to_save: list[TrainState]) -> None:
        if out.ckpt is not None:
            out.ckpt.save(update, _whole(to_save), record if between is None else between.recorded(record))

    collected: list[dict[str, np.ndarray]] = []
    update, stopped, last_saved = first, False, first
    start = time.perf_counter()
    try:
        if between is not None:
            states = between.start(program, states)
        while update < horizon and not (between is not None and between.done):
            if any_process(stop.requested is not None) or (
                    until_update is not None and update >= until_update and update > first):
                stopped = True
                save(update, states)
                break
            active = min(config.chunk_size, horizon - update)
            chunks = [program.chunk(s, update, active) for s in states]
            # copies, not views: a view would keep the chunk's whole device buffer alive for the run
            reported = gathered([(c.metrics, c.params_finite) for c in chunks])
            parts = [{k: np.array(v[:, :active]) for k, v in m.items()} for m, _ in reported]
            metrics = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
            finite = np.concatenate([np.asarray(f) for _, f in reported])[:n]
            next_states = [c.states for c in chunks]
            if between is not None:
                next_states, metrics = between(program, next_states, update + active, active, metrics, finite)
            if out.store is not None:  # a bad chunk's rows too, for the post-mortem
                with _writing(out.store.path, run_dir, out.ckpt):
                    out.store.write(update, metrics)
            if guard:
                _guard(metrics, finite, update, active, config, lambda: save(update, states), run_dir)
            states = next_states
            collected.append(metrics)
            if out.loggers is not None:
                out.loggers.log(update, metrics)
            update += active
            if out.videos is not None:
                last = update >= horizon or (between is not None and between.done)
                if out.videos.due(update - active, update, last):  # the chunk's policies, before any refill
                    out.videos.record(update, [c.states for c in chunks], program.layout.per_call, metrics)
                out.hand_over_videos()
            if on_progress is not None and is_primary():
                elapsed = time.perf_counter() - start
                returns = [metrics_lib.last_finite(r) for r in metrics["episode_return"]]
                on_progress(Progress(
                    update, horizon, update * config.batch_size, horizon * config.batch_size,
                    n, (update - first) * config.batch_size * n / elapsed,
                    float(np.nanmean(returns)) if np.isfinite(returns).any() else float("nan"), elapsed))
            if (config.checkpoint_every and update < horizon
                    and update // config.checkpoint_every > last_saved // config.checkpoint_every):
                save(update, states)
                last_saved = update
        if not stopped:
            save(update, states)
    finally:
        out.close()
    states = jax.block_until_ready(states)
    run_time = time.perf_counter() - start
    earlier = out.store.previous if out.store is not None else {}
    stacked = _history(program.metric_shapes, earlier, collected, first, n, config.batch_size)
    state = _whole(states)
    state = jax.tree.map(lambda x: x[:n], state) if program.layout.stacked_runs != n else state
    if run_dir is not None and is_primary() and not stopped:
        with _writing(run_dir / metrics_lib.RUNS_FILE, run_dir):
            # a search's runs are slots that train one trial after another: its results are per trial
            metrics_lib.write_runs(run_dir, record.members, stacked if between is None else None)
    return RunResult(config, program.population, state, stacked, 0.0, run_time, run_dir, program.layout,
                     first_update=first, update=update, stopped=stopped, superseded=out.superseded)


def _guard(metrics: dict[str, np.ndarray], params_finite: np.ndarray, update: int, active: int, config: PPOConfig,
           save_last_good: Callable[[], None], run_dir: Path | None) -> None:
    """The NaN guard: a non-finite guarded metric or parameter in any run stops the call, once the last
    good state (the chunk's start) is saved."""
    bad = metrics_lib.first_non_finite(metrics)
    params_ok = bool(params_finite.all())
    if bad is None and params_ok:
        return
    where = (f"update {update + bad[0]} (env steps {(update + bad[0] + 1) * config.batch_size:,}): {bad[1]} is not "
             f"finite") if bad else f"the params of updates {update}-{update + active - 1}"
    save_last_good()
    kept = f"; the last good state is checkpoint {update} in {checkpoint.checkpoint_dir(run_dir)}" \
        if run_dir is not None else ""
    raise NonFiniteError(f"training stopped at {where}{kept}")


def _history(shapes: dict[str, Any], earlier: dict[str, np.ndarray], chunks: list[dict[str, np.ndarray]],
             first: int, runs: int, batch_size: int) -> dict[str, np.ndarray]:
    """Every metric the program reports, `[runs, updates]` from update 0: the rows before `first` as
    metrics.csv held them (float64, 9 digits, so float32 round-trips: given back the program's dtypes),
    then this call's chunks. Rows the file could not give (it was missing or set aside) are NaN, with
    their env steps, in float64."""
    out = {}
    for name in metrics_lib.metric_names(shapes):
        dtype = np.dtype(shapes[name].dtype)
        before = earlier.get(name)
        if before is None:
            before = np.full((runs, first), np.nan) if name != "env_steps" else \
                np.broadcast_to((np.arange(first) + 1) * batch_size, (runs, first))
        if np.issubdtype(dtype, np.floating) or np.isfinite(before).all():  # an int metric's NaN stays float
            before = before.astype(dtype)
        out[name] = np.concatenate([before, *(c[name] for c in chunks)], axis=1)
    return out


def _whole(states: list[TrainState]) -> TrainState:
    """The calls' states as one, every stacked run of the population in order."""
    return states[0] if len(states) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)


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
