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

from purejaxppo import config as config_lib
from purejaxppo import stats
from purejaxppo.config import ConfigError, PPOConfig
from purejaxppo.runner import METRIC_NAMES, final_return, run_chunks
from purejaxppo.train import TRACED_HPARAMS, HParams, TrainState, make_trainer


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
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]
    return [{k: float(v) for k, v in config.replace(**p).to_dict().items() if k in p} for p in points]


def sweep(
    config: PPOConfig,
    seeds: int = 1,
    grid: Mapping[str, Sequence[float]] | None = None,
    run_dir: str | Path | None = None,
    max_runs_per_call: int | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Train `seeds` x grid runs. Seed i uses `jax.random.key(config.seed + i)`, so run k reproduces
    `purejaxppo train` with that seed and that grid point's values."""
    if seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {seeds}")
    grid = {k: list(v) for k, v in (grid or {}).items()}
    points = check_grid(config, grid)
    trainer = make_trainer(config)
    seed_list = [config.seed + i for i in range(seeds)]
    runs = [{"run": g * seeds + i, "point": g, "seed": s, **p} for g, p in enumerate(points) for i, s in enumerate(seed_list)]

    devices = jax.local_devices()
    per_call = len(runs) if max_runs_per_call is None else max(1, min(max_runs_per_call, len(runs)))
    per_call = math.ceil(per_call / len(devices)) * len(devices)  # equal shards on every device
    num_calls = math.ceil(len(runs) / per_call)
    padded = runs + [runs[-1]] * (num_calls * per_call - len(runs))  # filler runs are dropped below

    mesh = Mesh(np.array(devices), ("runs",))
    sharded = NamedSharding(mesh, PartitionSpec("runs"))
    traces = 0

    def chunk(state: TrainState, num_active: jax.Array) -> tuple[TrainState, dict]:
        nonlocal traces
        traces += 1
        return jax.vmap(trainer.run_chunk, in_axes=(0, None))(state, num_active)

    init = jax.jit(jax.vmap(trainer.init), out_shardings=sharded)
    chunk_jit = jax.jit(chunk, donate_argnums=0, out_shardings=sharded)

    def call_inputs(batch: list[dict[str, Any]]) -> tuple[jax.Array, HParams]:
        keys = jax.vmap(jax.random.key)(jnp.array([r["seed"] for r in batch], jnp.uint32))
        hps = [HParams.from_config(config.replace(**{k: r[k] for k in grid})) for r in batch]
        hparams = jax.tree.map(lambda *xs: jnp.stack(xs), *hps)
        return jax.device_put((keys, hparams), sharded)

    start = time.perf_counter()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded),
        jax.eval_shape(jax.vmap(trainer.init), *call_inputs(padded[:per_call])),
    )
    init_c = init.lower(*call_inputs(padded[:per_call])).compile()
    chunk_c = chunk_jit.lower(abstract, 0).compile()
    compile_time = time.perf_counter() - start

    start = time.perf_counter()
    states, collected = [], []
    for call in range(num_calls):
        state = init_c(*call_inputs(padded[call * per_call : (call + 1) * per_call]))
        parts = []
        for state, done, metrics in run_chunks(chunk_c, state, config):
            parts.append(metrics)
            if on_chunk is not None:
                on_chunk({"call": call + 1, "num_calls": num_calls, "update": done, "num_updates": config.num_updates,
                          "env_steps": done * config.batch_size, "seconds": time.perf_counter() - start})
        states.append(state)
        collected.append({k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]})
    run_time = time.perf_counter() - start

    n = len(runs)
    metrics = {k: np.concatenate([c[k] for c in collected])[:n] for k in collected[0]}
    state = jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *states)
    result = SweepResult(config, grid, points, seed_list, runs, metrics, state, compile_time, run_time,
                         num_calls, traces, Path(run_dir) if run_dir else None)
    if run_dir is not None:
        write_results(result, Path(run_dir))
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
        **{name: result.metrics[name] for name in METRIC_NAMES},
    )
    plot_curves(result, run_dir / "curves.png")


def area_under_curve(env_steps: np.ndarray, returns: np.ndarray) -> float:
    """Trapezoidal area under the return curve over env steps, normalised by the steps covered, so it
    reads as the average return over training. Updates with no completed episode are skipped."""
    ok = np.isfinite(returns)
    if ok.sum() < 2:
        return float(returns[ok][0]) if ok.any() else float("nan")
    x, y = env_steps[ok], np.asarray(returns, np.float64)[ok]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def smooth_curves(curves: np.ndarray) -> np.ndarray:
    """Carry the last finite return forward over updates where no episode completed."""
    out = np.array(curves, np.float64)
    for row in out:
        last = np.nan
        for i, v in enumerate(row):
            if np.isfinite(v):
                last = v
            else:
                row[i] = last
    return out


def plot_curves(result: SweepResult, path: Path, num_resamples: int = 500) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result.metrics["env_steps"][0]
    curves = smooth_curves(result.metrics["episode_return"]).reshape(len(result.points), len(result.seeds), -1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g, point in enumerate(result.points):
        label = ", ".join(f"{k}={v:g}" for k, v in point.items()) or result.config.env
        line = np.array([stats.iqm(c) if np.isfinite(c).all() else np.nan for c in curves[g].T])
        band = np.array([
            stats.stratified_bootstrap_ci(c, stats.iqm, num_resamples=num_resamples) if np.isfinite(c).all()
            else (np.nan, np.nan) for c in curves[g].T
        ])
        ax.plot(steps, line, label=label)
        ax.fill_between(steps, band[:, 0], band[:, 1], alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return (IQM over seeds, 95% CI)")
    ax.set_title(f"{result.config.env}: {len(result.seeds)} seeds per curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
