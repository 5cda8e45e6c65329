"""The host loop of a single run: compile once, run compiled chunks of updates, and between chunks
report progress and append metrics to `metrics.csv`. Nothing here calls back from compiled code."""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.train import TrainState, make_trainer

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
    "grad_norm",
    "lr",
)


@dataclasses.dataclass
class RunResult:
    config: PPOConfig
    state: TrainState
    metrics: dict[str, np.ndarray]  # one entry per update
    compile_time: float
    run_time: float
    run_dir: Path | None

    @property
    def env_steps(self) -> int:
        return int(self.metrics["env_steps"][-1])

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.run_time

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
    return Path(root) / f"{config.env}-{stamp}{suffix}"


class MetricsWriter:
    """Appends one CSV row per update, flushing after each chunk so a crashed run keeps its rows."""

    def __init__(self, path: Path):
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["update", *METRIC_NAMES])

    def write(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        for i in range(len(metrics["env_steps"])):
            self._writer.writerow([first_update + i, *(_fmt(metrics[name][i]) for name in METRIC_NAMES)])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.6g}"


def run_chunks(
    chunk: Callable[[Any, int], tuple[Any, dict]], state: Any, config: PPOConfig
) -> Iterator[tuple[Any, int, dict[str, np.ndarray]]]:
    """Call a compiled chunk program until every update has run. Yields the state, the number of updates
    done, and the chunk's metrics on the host with the padded updates (last axis) dropped."""
    done = 0
    while done < config.num_updates:
        active = min(config.chunk_size, config.num_updates - done)
        state, metrics = chunk(state, active)
        done += active
        yield state, done, {name: np.asarray(value)[..., :active] for name, value in jax.device_get(metrics).items()}


def train(
    config: PPOConfig,
    run_dir: str | Path | None = None,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train one run in compiled chunks of `config.chunk_size` updates.

    `on_chunk` receives a progress dict after each chunk (env steps, steps/s, latest return). With a
    run_dir, `config.yaml` and `metrics.csv` are written there.
    """
    trainer = make_trainer(config)
    writer = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(config, run_dir / "config.yaml")
        writer = MetricsWriter(run_dir / "metrics.csv")

    key = jax.random.key(config.seed)
    start = time.perf_counter()
    init = jax.jit(trainer.init).lower(key).compile()
    abstract_state = jax.eval_shape(trainer.init, key)
    chunk = jax.jit(trainer.run_chunk, donate_argnums=0).lower(abstract_state, 0).compile()
    compile_time = time.perf_counter() - start

    start = time.perf_counter()
    state = init(key)
    collected: list[dict[str, np.ndarray]] = []
    try:
        for state, done, metrics in run_chunks(chunk, state, config):
            collected.append(metrics)
            if writer is not None:
                writer.write(done - len(metrics["env_steps"]), metrics)
            if on_chunk is not None:
                elapsed = time.perf_counter() - start
                finite = metrics["episode_return"][np.isfinite(metrics["episode_return"])]
                on_chunk(
                    {
                        "update": done,
                        "num_updates": config.num_updates,
                        "env_steps": int(metrics["env_steps"][-1]),
                        "total_env_steps": config.num_updates * config.batch_size,
                        "steps_per_second": int(metrics["env_steps"][-1]) / elapsed,
                        "episode_return": float(finite[-1]) if finite.size else float("nan"),
                    }
                )
    finally:
        if writer is not None:
            writer.close()
    jax.block_until_ready(state)
    run_time = time.perf_counter() - start
    stacked = {name: np.concatenate([m[name] for m in collected]) for name in collected[0]}
    return RunResult(config, state, stacked, compile_time, run_time, run_dir)
