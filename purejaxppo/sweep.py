"""Many runs, seeds x a grid of traced hyperparameters, trained by one compiled, vmapped program.

The run axis is sharded over every local device with `jax.sharding`. When the runs do not fit in
one call, they are split into calls of equal size, so the program still compiles once.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purejaxppo import checkpoint, plots, runner, stats
from purejaxppo import config as config_lib
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.runner import final_return, metric_names
from purejaxppo.train import TRACED_HPARAMS, HParams, Trainer, TrainState, make_trainer


@dataclasses.dataclass
class SweepResult:
    config: PPOConfig
    grid: dict[str, list[float]]
    points: list[dict[str, float]]  # one per grid point
    seeds: list[int]
    runs: list[dict[str, Any]]  # one per run: grid point index, seed, swept values
    metrics: dict[str, np.ndarray]  # [runs, updates]
    state: TrainState  # final states, stacked over runs
    compile_time: float
    run_time: float
    num_calls: int
    traces: int  # how many times the chunk program was traced: 1 per sweep
    run_dir: Path | None
    stopped: bool = False  # stopped early with a checkpoint to resume from
    superseded: Path | None = None  # where the checkpoints after the resumed one were moved

    def final_returns(self) -> np.ndarray:
        return np.array([final_return(r) for r in self.metrics["episode_return"]])

    def aggregate(self) -> list[dict[str, Any]]:
        finals = self.final_returns().reshape(len(self.points), len(self.seeds))
        return [{**point, **stats.summarize(finals[g])} for g, point in enumerate(self.points)]


def parse_grid(items: Sequence[str]) -> dict[str, list[float]]:
    """Parse `key=v1,v2,...` items; refuse keys the compiled program cannot take as values."""
    grid: dict[str, list[float]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item}: a grid axis must look like key=v1,v2,...")
        key, raw = item.split("=", 1)
        values = []
        for text in raw.split(","):
            name, value = config_lib.parse_override(f"{key}={text}")
            values.append(config_lib.coerce(name, value))
        grid[key.strip()] = values
    return grid


# Variants that a nonzero value switches on. Whether one is on shapes the program, so it is decided
# by the base config; a grid may vary the value, but not switch the variant on or off.
SWITCHES: tuple[str, ...] = ("dual_clip", "kl_coef", "target_kl")


def _unused_because(config: PPOConfig, key: str) -> str | None:
    """Why `key` does not act in runs of `config`, or None when it does. A grid over it would train the
    same thing at every point."""
    reasons = {
        "lr_end": config.lr_schedule == "constant" and "lr_schedule is constant",
        "ent_coef_final": config.ent_schedule == "constant" and "ent_schedule is constant",
        "value_clip_eps": not config.clip_value and "clip_value is off",
        "kl_target": config.kl_coef == 0 and "the adaptive KL penalty is off (kl_coef 0)",
    }
    return reasons.get(key) or None


def check_grid(config: PPOConfig, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, float]]:
    """Validate every grid point and return them in row-major order (last key varies fastest)."""
    for key, values in grid.items():
        if key not in config_lib.FIELDS:
            raise config_lib.unknown_key_error(key, config_lib.FIELDS)
        if key not in TRACED_HPARAMS:
            raise ConfigError(
                f"{key}: cannot be swept in one compiled call, because it changes the program's shapes or "
                f"structure; run one sweep per value instead. Sweepable keys: {', '.join(TRACED_HPARAMS)}"
            )
        if len(values) == 0:
            raise ConfigError(f"{key}: the grid axis has no values")
        if key in SWITCHES and getattr(config, key) == 0 and any(v != 0 for v in values):
            raise ConfigError(f"{key}: it is off (0) in the config, so the program is built without it and the grid's "
                              f"values would be ignored; set it to one of them (--set {key}=v) to switch it on")
        if key in SWITCHES and getattr(config, key) != 0 and any(v == 0 for v in values):
            raise ConfigError(f"{key}: 0 switches the variant off, which changes the program; sweep the nonzero "
                              f"values here and run the 0 point as a sweep of its own")
        reason = _unused_because(config, key)
        if reason:
            raise ConfigError(f"{key}: has no effect because {reason}, so every grid point would train the same")
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]
    return [{k: float(v) for k, v in config.replace(**p).to_dict().items() if k in p} for p in points]


def vmapped_chunk(trainer: Trainer) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
    """`trainer.run_chunk` vmapped over stacked runs. The runs share their update count, so it goes in
    unbatched, which keeps the in-program evaluation a branch rather than a select."""

    def chunk(state: TrainState, num_active: jax.Array) -> tuple[TrainState, dict]:
        return jax.vmap(trainer.run_chunk, in_axes=(0, None, None))(state, num_active, state.update_step[0])

    return chunk


def sweep(
    config: PPOConfig,
    seeds: int = 1,
    grid: Mapping[str, Sequence[float]] | None = None,
    run_dir: str | Path | None = None,
    max_runs_per_call: int | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume: bool = False,
    step: int | None = None,
    until_update: int | None = None,
) -> SweepResult:
    """Train `seeds` x grid runs. Seed i uses `jax.random.key(config.seed + i)`, so run k reproduces
    `purejaxppo train` with that seed and that grid point's values.

    When the runs are split into several calls, the calls advance chunk by chunk in lockstep, so one
    checkpoint holds every run of the sweep. `resume`, `step` and `until_update` work as in
    `runner.train`; a resumed sweep takes its seeds and grid from the checkpoint.
    """
    if resume:
        saved_step, meta = checkpoint.resume_point(run_dir, step, "sweep", config)
        seeds, grid = int(meta["num_seeds"]), meta["grid"]
        max_runs_per_call = meta["max_runs_per_call"]
    if seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {seeds}")
    if config.seed + seeds - 1 > config_lib.MAX_SEED:
        raise ConfigError(f"seeds: seed {config.seed} + {seeds} seeds passes the largest seed, {config_lib.MAX_SEED}")
    if max_runs_per_call is not None and max_runs_per_call < 1:
        raise ConfigError(f"max_runs_per_call: must be >= 1, got {max_runs_per_call}")
    if jax.process_count() > 1:
        raise ConfigError("sweep: runs on the devices of one process; under jax.distributed, start one sweep per "
                          "host with its own seeds (config seed) instead")
    grid = {k: list(v) for k, v in (grid or {}).items()}
    points = check_grid(config, grid)
    trainer = make_trainer(config)
    runner.use_compilation_cache(config)
    seed_list = [config.seed + i for i in range(seeds)]
    runs = [{"run": g * seeds + i, "point": g, "seed": s, **p} for g, p in enumerate(points) for i, s in enumerate(seed_list)]

    devices = jax.local_devices()
    per_call = len(runs) if max_runs_per_call is None else min(max_runs_per_call, len(runs))
    per_call = math.ceil(per_call / len(devices)) * len(devices)  # equal shards on every device
    num_calls = math.ceil(len(runs) / per_call)
    padded = runs + [runs[-1]] * (num_calls * per_call - len(runs))  # filler runs are dropped below

    mesh = Mesh(np.array(devices), ("runs",))
    sharded = NamedSharding(mesh, PartitionSpec("runs"))
    traces = 0

    vmapped = vmapped_chunk(trainer)

    def chunk(state: TrainState, num_active: jax.Array) -> tuple[TrainState, dict]:
        nonlocal traces
        traces += 1
        return vmapped(state, num_active)

    def call_inputs(batch: list[dict[str, Any]]) -> tuple[jax.Array, HParams]:
        keys = jax.vmap(jax.random.key)(jnp.array([r["seed"] for r in batch], jnp.uint32))
        hps = [HParams.from_config(config.replace(**{k: r[k] for k in grid})) for r in batch]
        hparams = jax.tree.map(lambda *xs: jnp.stack(xs), *hps)
        return jax.device_put((keys, hparams), sharded)

    call_shape = jax.eval_shape(jax.vmap(trainer.init), *call_inputs(padded[:per_call]))
    whole = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_calls * x.shape[0],) + x.shape[1:], x.dtype), call_shape)
    if resume:
        if int(meta.get("stacked_runs", -1)) != num_calls * per_call:
            raise checkpoint.CheckpointError(
                f"{run_dir}: the checkpoint holds {meta.get('stacked_runs')} stacked runs, but {len(devices)} "
                f"device(s) give {num_calls * per_call} here; resume on as many devices as the sweep ran on "
                f"(purejaxppo sweep --cpu-devices N)"
            )
        checkpoint.check_arrays(Path(run_dir), saved_step, whole)
    elif run_dir is not None:
        checkpoint.check_fresh(run_dir)
    start = time.perf_counter()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded), call_shape)
    chunk_c = jax.jit(chunk, out_shardings=sharded).lower(abstract, 0).compile()
    if resume:
        first, restored, _ = checkpoint.restore(run_dir, whole, saved_step)
        states = [jax.device_put(jax.tree.map(lambda x: x[c * per_call : (c + 1) * per_call], restored), sharded)
                  for c in range(num_calls)]
    else:
        init_c = jax.jit(jax.vmap(trainer.init), out_shardings=sharded).lower(*call_inputs(padded[:per_call])).compile()
        first = 0
        states = [init_c(*call_inputs(padded[c * per_call : (c + 1) * per_call])) for c in range(num_calls)]
    compile_time = time.perf_counter() - start
    superseded = runner.supersede_later(run_dir, first) if resume else None

    partial = Path(run_dir) / "metrics_partial.npz" if run_dir is not None else None
    collected: list[dict[str, np.ndarray]] = []
    if resume and partial is not None and partial.is_file():
        with np.load(partial) as saved:
            collected.append({k: saved[k][:, :first] for k in saved.files})
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        config_lib.save(config, Path(run_dir) / "config.yaml")

    def on_metrics(_: int, metrics: dict[str, np.ndarray]) -> None:
        collected.append(metrics)
        if partial is not None:  # what a resume needs besides the checkpoint; written before each save
            merged = {k: np.concatenate([c[k] for c in collected], axis=1) for k in collected[-1]}
            tmp = partial.with_suffix(".tmp.npz")
            np.savez(tmp, **merged)
            tmp.replace(partial)

    def progress(done: int, _: dict[str, np.ndarray]) -> None:
        if on_chunk is not None:
            on_chunk({"call": num_calls, "num_calls": num_calls, "update": done, "num_updates": config.num_updates,
                      "env_steps": done * config.batch_size, "seconds": time.perf_counter() - start})

    meta = {"config": config.to_dict(), "kind": "sweep", "num_seeds": seeds, "grid": grid, "devices": len(devices),
            "max_runs_per_call": max_runs_per_call, "num_runs": len(runs), "stacked_runs": num_calls * per_call}
    stack = lambda parts: jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)  # noqa: E731
    start = time.perf_counter()
    out = runner.drive(chunk_c, states, config, first, run_dir=Path(run_dir) if run_dir else None, meta=meta,
                       stack=stack, on_metrics=on_metrics, on_chunk=progress, until_update=until_update, guard=False)
    jax.block_until_ready(out.states)
    run_time = time.perf_counter() - start

    n = len(runs)
    metrics = {k: np.concatenate([c[k] for c in collected], axis=1)[:n] for k in collected[-1]}
    state = jax.tree.map(lambda x: x[:n], stack(out.states))
    result = SweepResult(config, grid, points, seed_list, runs, metrics, state, compile_time, run_time,
                         num_calls, traces, Path(run_dir) if run_dir else None, out.stopped, superseded)
    if run_dir is not None and not out.stopped:
        write_results(result, Path(run_dir))
        if partial is not None:
            partial.unlink(missing_ok=True)
    return result


def write_results(result: SweepResult, run_dir: Path) -> None:
    """config.yaml, sweep.json, runs.csv, aggregate.csv, metrics.npz and curves.png."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(result.config, run_dir / "config.yaml")
    (run_dir / "sweep.json").write_text(json.dumps({"grid": result.grid, "seeds": result.seeds}, indent=2))
    keys = list(result.grid)
    finals = result.final_returns()
    env_steps = result.metrics["env_steps"][0].astype(np.float64)
    with (run_dir / "runs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "seed", *keys, "final_return", "auc"])
        for run, final, curve in zip(result.runs, finals, result.metrics["episode_return"]):
            writer.writerow([run["run"], run["seed"], *(run[k] for k in keys), f"{final:.6g}",
                             f"{area_under_curve(env_steps, curve):.6g}"])
    with (run_dir / "aggregate.csv").open("w", newline="") as f:
        rows = result.aggregate()
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    np.savez_compressed(
        run_dir / "metrics.npz",
        seeds=np.array([r["seed"] for r in result.runs]),
        **{f"param_{k}": np.array([r[k] for r in result.runs]) for k in keys},
        **{name: result.metrics[name] for name in metric_names(result.metrics)},
    )
    plots.plot_learning_curves([plots.curves_of_sweep(result.metrics, result.runs, list(result.grid), result.config.env)],
                               run_dir / "curves.png")


def area_under_curve(env_steps: np.ndarray, returns: np.ndarray) -> float:
    """Trapezoidal area under the return curve over env steps, normalised by the steps covered, so it
    reads as the average return over training. Updates with no completed episode are skipped."""
    ok = np.isfinite(returns)
    if ok.sum() < 2:
        return float(returns[ok][0]) if ok.any() else float("nan")
    x, y = env_steps[ok], np.asarray(returns, np.float64)[ok]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))
