"""The host loop of a run: compile once, call compiled chunks of updates, and between chunks report
progress, write metrics, checkpoint, guard against non-finite values and honour stop signals.

Nothing here calls back from compiled code. The same loop (`drive`) serves a single run and a sweep,
whose runs are split into equal calls that advance chunk by chunk in lockstep.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxppo import checkpoint
from purejaxppo import config as config_lib
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.loggers import Loggers
from purejaxppo.train import TrainState, make_trainer

# The metrics every run reports, in this order; variants add their own after these.
METRIC_NAMES: tuple[str, ...] = (
    "env_steps",
    "episode_return",
    "episode_length",
    "episode_count",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "value_error",
    "advantage_mean",
    "advantage_std",
    "ratio_mean",
    "ratio_max",
    "grad_norm",
    "lr",
)
# A non-finite value in one of these stops a run (episode metrics are NaN by design when none ended).
GUARDED_METRICS: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")

EXIT_NON_FINITE = 3


class NonFiniteError(RuntimeError):
    """A run produced a non-finite loss, gradient norm or parameter and was stopped."""


def metric_names(metrics: dict[str, Any]) -> list[str]:
    return [n for n in METRIC_NAMES if n in metrics] + sorted(n for n in metrics if n not in METRIC_NAMES)


@dataclasses.dataclass
class RunResult:
    config: PPOConfig
    state: TrainState
    metrics: dict[str, np.ndarray]  # one entry per update, from update 0 (a resumed run includes the earlier ones)
    compile_time: float
    run_time: float
    run_dir: Path | None
    first_update: int = 0  # where this call started: > 0 for a resumed run
    stopped: bool = False  # stopped early by a signal or `until_update`, with a checkpoint to resume from
    superseded: Path | None = None  # where the checkpoints after the resumed one were moved

    @property
    def env_steps(self) -> int:
        return int(self.metrics["env_steps"][-1])

    @property
    def steps_per_second(self) -> float:
        """Env steps of this call per second of this call's run time."""
        return (self.env_steps - self.first_update * self.config.batch_size) / self.run_time

    @property
    def final_return(self) -> float:
        return final_return(self.metrics["episode_return"])


def final_return(returns: np.ndarray) -> float:
    """The mean episode return over the last 10% of updates (at least one), ignoring updates in which
    no episode completed."""
    returns = np.asarray(returns, np.float64)
    tail = returns[..., -max(1, returns.shape[-1] // 10) :]
    with np.errstate(all="ignore"):
        return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def default_run_dir(config: PPOConfig, root: str | Path = "runs", suffix: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / f"{config.env.replace('/', '-')}-{stamp}{suffix}"


class MetricsWriter:
    """Appends one CSV row per update, flushing after each chunk so a crashed run keeps its rows.

    Floats are written with 9 significant digits, which round-trips float32 exactly. On resume, rows
    past the restored update are dropped: they belong to a future the run no longer has.
    """

    def __init__(self, path: Path, resume_from: int | None = None):
        self.path = path
        self.previous: dict[str, np.ndarray] = {}
        rows: list[dict[str, str]] = []
        if resume_from is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["update"]) < resume_from]
            if rows:
                self.previous = {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "update"}
        self._names: list[str] | None = list(self.previous) or None
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        if self._names is not None:
            self._writer.writerow(["update", *self._names])
            self._writer.writerows([[r["update"], *(r[n] for n in self._names)] for r in rows])
            self._file.flush()

    def write(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        if self._names is None:
            self._names = metric_names(metrics)
            self._writer.writerow(["update", *self._names])
        for i in range(len(metrics["env_steps"])):
            self._writer.writerow([first_update + i, *(_fmt(metrics[name][i]) for name in self._names)])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.9g}"


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to stop after the current chunk; a second signal interrupts."""

    def __init__(self) -> None:
        self.requested: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: Any) -> None:
            self.requested = signal.Signals(signum).name
            for sig, old in previous.items():  # a second signal acts as usual
                signal.signal(sig, old)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def first_non_finite(metrics: dict[str, np.ndarray]) -> tuple[int, str] | None:
    """(index along the update axis, metric name) of the first non-finite guarded metric, if any."""
    found = []
    for order, name in enumerate(GUARDED_METRICS):
        if name in metrics:
            bad = ~np.isfinite(metrics[name])
            bad = bad.reshape(-1, bad.shape[-1]).any(axis=0)  # any run of a sweep
            if bad.any():
                found.append((int(np.argmax(bad)), order, name))
    return (min(found)[0], min(found)[2]) if found else None


ENV_AXIS_FIELDS = ("env_state", "obs", "discounted_return", "episode_return", "episode_length")


@dataclasses.dataclass(frozen=True)
class RunShardings:
    """Where a run's state and its metrics live when its envs are split over several devices."""

    state: Any  # TrainState of shardings: per-env fields split along the env axis, the rest replicated
    replicated: NamedSharding


def env_sharding(config: PPOConfig, abstract_state: TrainState) -> RunShardings | None:
    """Shardings of a run over every device JAX sees: all local devices, and under
    `jax.distributed.initialize` every device of every process. None on one device, or (one process
    only) when num_envs does not split evenly over the devices.

    jit partitions the whole update from these: rollouts and GAE stay on each device's envs, and the
    batch means of the losses, gradients and observation statistics become cross-device reductions.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if config.num_envs % len(devices):
        if jax.process_count() > 1:
            raise ConfigError(f"num_envs: {config.num_envs} envs do not split evenly over the {len(devices)} devices "
                              f"of {jax.process_count()} processes; use a multiple of {len(devices)}")
        return None
    mesh = Mesh(np.array(devices), ("envs",))
    split, whole = NamedSharding(mesh, PartitionSpec("envs")), NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree.map(lambda _: whole, abstract_state)
    shardings = shardings.replace(**{
        name: jax.tree.map(lambda _: split, getattr(abstract_state, name)) for name in ENV_AXIS_FIELDS
    })
    return RunShardings(shardings, whole)


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
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def supersede_later(run_dir: str | Path | None, resume_step: int) -> Path | None:
    """Before a run resumed from `resume_step` writes checkpoints, move the later ones aside (orbax
    writes no step at or below its newest one). Returns where they went, if anywhere."""
    if run_dir is None:
        return None
    moved = checkpoint.supersede_later(run_dir, resume_step) if is_primary() else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("purejaxppo: later checkpoints moved aside")
    return moved


def stopping(stop: StopSignal) -> bool:
    """Whether to stop after this chunk. Every process of a multi-host run must agree, or the ones that
    go on wait for ever in the next chunk's collectives while the others save."""
    if jax.process_count() == 1:
        return stop.requested is not None
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.array(stop.requested is not None)).any())


@dataclasses.dataclass
class DriveResult:
    states: list[Any]
    metrics: list[dict[str, np.ndarray]]  # per chunk, each metric [..., updates]
    done: int
    stopped: bool


def drive(
    chunk: Callable[[Any, int], tuple[Any, dict]],
    states: list[Any],
    config: PPOConfig,
    start: int,
    *,
    run_dir: Path | None,
    meta: dict[str, Any],
    stack: Callable[[list[Any]], Any],
    on_metrics: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    on_chunk: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    until_update: int | None = None,
    guard: bool = True,
) -> DriveResult:
    """Advance every state in `states` chunk by chunk from update `start` to `config.num_updates`.

    After each chunk: check for non-finite values (raises NonFiniteError after saving the last good
    state, when `guard`), hand the metrics to `on_metrics` (merged over states) and `on_chunk`, and
    checkpoint `stack(states)` every `config.checkpoint_every` updates, at the end, and when stopped by
    a signal or at `until_update`. The states are not donated, so the last good ones survive a bad chunk.
    """
    ckpt = checkpoint.Checkpointer(run_dir, config.keep_checkpoints) if run_dir is not None else None
    collected: list[dict[str, np.ndarray]] = []
    done, stopped, stop = start, False, StopSignal()
    last_saved = start

    def save(update: int, to_save: list[Any]) -> None:
        if ckpt is not None:
            ckpt.save(update, stack(to_save), {**meta, "update": update, "env_steps": update * config.batch_size})

    try:
        with stop.installed():
            while done < config.num_updates:
                active = min(config.chunk_size, config.num_updates - done)
                outputs = [chunk(s, active) for s in states]
                new_states = [o[0] for o in outputs]
                # copies, not views: a view would keep the chunk's whole device buffer alive for the run
                parts = [
                    {k: np.array(v[..., :active]) for k, v in jax.device_get(o[1]).items()} for o in outputs
                ]
                metrics = {k: np.concatenate([p[k] for p in parts]) if parts[0][k].ndim > 1 else parts[0][k]
                           for k in parts[0]}
                if guard:
                    bad = first_non_finite(metrics)
                    params_ok = all(bool(_all_finite(s.params)) for s in new_states)
                    if bad is not None or not params_ok:
                        where = (f"update {done + bad[0]} (env steps {(done + bad[0] + 1) * config.batch_size:,}): "
                                 f"{bad[1]} is not finite") if bad else f"the params of updates {done}-{done + active - 1}"
                        if on_metrics is not None:
                            on_metrics(done, metrics)
                        save(done, states)
                        kept = f"; the last good state is checkpoint {done} in {checkpoint.checkpoint_dir(run_dir)}" \
                            if ckpt is not None else ""
                        raise NonFiniteError(f"training stopped at {where}{kept}")
                states = new_states
                collected.append(metrics)
                if on_metrics is not None:
                    on_metrics(done, metrics)
                done += active
                if on_chunk is not None:
                    on_chunk(done, metrics)
                if done >= config.num_updates:
                    break
                if stopping(stop) or (until_update is not None and done >= until_update):
                    stopped = True
                    save(done, states)
                    break
                if config.checkpoint_every and done // config.checkpoint_every > last_saved // config.checkpoint_every:
                    save(done, states)
                    last_saved = done
            if not stopped:
                save(done, states)
    finally:
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
    return DriveResult(states, collected, done, stopped)


def train(
    config: PPOConfig,
    run_dir: str | Path | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume: bool = False,
    step: int | None = None,
    until_update: int | None = None,
) -> RunResult:
    """Train one run in compiled chunks of `config.chunk_size` updates.

    With a run_dir, `config.yaml`, `metrics.csv` and checkpoints are written there. `resume=True`
    continues from the run dir's latest checkpoint (or `step`); the result is bit-identical to an
    uninterrupted run. `until_update` stops (with a checkpoint) at the first chunk end at or after it.
    `on_chunk` receives a progress dict after each chunk (env steps, steps/s, latest return).
    """
    trainer = make_trainer(config)
    use_compilation_cache(config)
    key = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(trainer.init, key)
    if resume:  # every check before anything compiles
        saved_step, _ = checkpoint.resume_point(run_dir, step, "run", config)
        checkpoint.check_arrays(Path(run_dir), saved_step, abstract_state)
    elif run_dir is not None:
        checkpoint.check_fresh(run_dir)
    start = time.perf_counter()
    shardings = env_sharding(config, abstract_state)
    if shardings is not None:
        abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      abstract_state, shardings.state)
    out_shardings = (shardings.state, shardings.replicated) if shardings else None
    chunk = jax.jit(trainer.run_chunk, out_shardings=out_shardings).lower(abstract_state, 0).compile()
    if resume:
        first, state, _ = checkpoint.restore(run_dir, abstract_state, saved_step)
    else:
        init = jax.jit(trainer.init, out_shardings=shardings.state if shardings else None)
        first, state = 0, init.lower(key).compile()(key)
    compile_time = time.perf_counter() - start
    superseded = supersede_later(run_dir, first) if resume else None

    writer = loggers = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_primary():
            config_lib.save(config, run_dir / "config.yaml")
            writer = MetricsWriter(run_dir / "metrics.csv", resume_from=first if resume else None)
            loggers = Loggers.create(config, run_dir)

    def on_metrics(first_update: int, metrics: dict[str, np.ndarray]) -> None:
        if writer is not None:
            writer.write(first_update, metrics)
        if loggers is not None:
            loggers.log(first_update, metrics)

    start = time.perf_counter()

    def progress(done: int, metrics: dict[str, np.ndarray]) -> None:
        if on_chunk is None or not is_primary():
            return
        elapsed = time.perf_counter() - start
        finite = metrics["episode_return"][np.isfinite(metrics["episode_return"])]
        on_chunk({
            "update": done,
            "num_updates": config.num_updates,
            "env_steps": int(metrics["env_steps"][-1]),
            "total_env_steps": config.num_updates * config.batch_size,
            "steps_per_second": (done - first) * config.batch_size / elapsed,
            "episode_return": float(finite[-1]) if finite.size else float("nan"),
        })

    meta = {"config": config.to_dict(), "kind": "run"}
    try:
        out = drive(chunk, [state], config, first, run_dir=run_dir, meta=meta, stack=lambda s: s[0],
                    on_metrics=on_metrics, on_chunk=progress, until_update=until_update)
    finally:
        if writer is not None:
            writer.close()
        if loggers is not None:
            loggers.close()
    state = jax.block_until_ready(out.states[0])
    run_time = time.perf_counter() - start
    names = metric_names(out.metrics[0]) if out.metrics else list(writer.previous if writer else [])
    previous = writer.previous if writer is not None else {}
    stacked = {n: np.concatenate([previous.get(n, np.zeros(0)), *(m[n] for m in out.metrics)]) for n in names}
    return RunResult(config, state, stacked, compile_time, run_time, run_dir, first, out.stopped, superseded)
