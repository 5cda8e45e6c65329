"""Sweeps: seeds x a grid of traced hyperparameters, trained as one population by the one host loop.

This front end parses and checks the grid, builds the population, and names the outputs a sweep adds
to a run dir: `aggregate.csv` (per grid point, mean, median and IQM of the final return with 95%
stratified-bootstrap CIs over seeds) and `curves.png`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from purejaxppo import config as config_lib
from purejaxppo import plots
from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host import stats
from purejaxppo.host.loop import Progress, RunResult
from purejaxppo.host.population import Member, Population
from purejaxppo.host.prepare import Prepared, ResumePoint, prepare, resume_from
from purejaxppo.host.processes import is_primary


@dataclasses.dataclass
class SweepResult(RunResult):
    grid: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    points: list[dict[str, float]] = dataclasses.field(default_factory=list)  # one per grid point
    seeds: list[int] = dataclasses.field(default_factory=list)

    @property
    def runs(self) -> list[dict[str, Any]]:
        """One per run: its index, grid point, seed and swept values."""
        return [{"run": k, "point": m.point, "seed": m.seed, **m.values} for k, m in enumerate(self.population.members)]

    @property
    def num_calls(self) -> int:
        return self.layout.num_calls

    def aggregate(self) -> list[dict[str, Any]]:
        finals = self.final_returns().reshape(len(self.points), len(self.seeds))
        return [{**point, **stats.summarize(finals[g])} for g, point in enumerate(self.points)]


def parse_grid(items: Sequence[str]) -> dict[str, list[float]]:
    """Parse `key=v1,v2,...` items into grid axes; an axis given twice is refused."""
    grid: dict[str, list[float]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item}: a grid axis must look like key=v1,v2,...")
        key, raw = (part.strip() for part in item.split("=", 1))
        if key in grid:
            raise ConfigError(f"{key}: the grid axis is given twice; give each key once, with all its values")
        values = []
        for text in raw.split(","):
            name, value = config_lib.parse_override(f"{key}={text}")
            values.append(config_lib.coerce(name, value))
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            raise ConfigError(f"{key}: the grid axis lists {twice[0]} twice, which would train the same runs twice; "
                              f"give each value once")
        grid[key] = values
    return grid


def check_grid(config: PPOConfig, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, float]]:
    """Validate every grid point and return them in row-major order (last key varies fastest)."""
    for key, values in grid.items():
        config_lib.check_sweepable(config, key, list(values))
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]
    return [{k: float(v) for k, v in config.replace(**p).to_dict().items() if k in p} for p in points]


def population_of(config: PPOConfig, seeds: int, points: list[dict[str, float]]) -> Population:
    """Seed i of every grid point is `config.seed + i`, so run k reproduces `purejaxppo train` with
    that seed and that point's values."""
    if seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {seeds}")
    if config.seed + seeds - 1 > config_lib.MAX_SEED:
        raise ConfigError(f"seeds: seed {config.seed} + {seeds} seeds passes the largest seed, {config_lib.MAX_SEED}")
    members = [Member(config.seed + i, p, g) for g, p in enumerate(points) for i in range(seeds)]
    return Population(config, tuple(members))


def prepare_sweep(
    config: PPOConfig,
    seeds: int = 1,
    grid: Mapping[str, Sequence[float]] | None = None,
    run_dir: str | Path | None = None,
    max_runs_per_call: int | None = None,
    *,
    resume: bool | ResumePoint = False,
    step: int | None = None,
    env: Any = None,
) -> Prepared:
    """`seeds` x grid runs of `config`, built and checked; a resume (True, or a ResumePoint already read)
    takes its seeds, grid and call size from the checkpoint."""
    resume = resume_from(resume, run_dir, step, "sweep")
    if resume is not None:
        record = resume.record
        seeds, grid, max_runs_per_call = record.num_seeds, record.grid, record.max_runs_per_call
    grid = {k: list(v) for k, v in (grid or {}).items()}
    population = population_of(config, seeds, check_grid(config, grid))
    return prepare(population, run_dir, kind="sweep", resume=resume, max_runs_per_call=max_runs_per_call,
                   env=env, num_seeds=seeds, grid=grid)


def sweep(
    config: PPOConfig,
    seeds: int = 1,
    grid: Mapping[str, Sequence[float]] | None = None,
    run_dir: str | Path | None = None,
    max_runs_per_call: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    resume: bool | ResumePoint = False,
    step: int | None = None,
    until_update: int | None = None,
    env: Any = None,
) -> SweepResult:
    """Train `seeds` x grid runs in one compiled program (split into calls of equal size when
    `max_runs_per_call` asks). `resume`, `step` and `until_update` work as in `purejaxppo.train`; a
    resumed sweep takes its seeds, grid and call size from the checkpoint. A sweep has no NaN guard:
    one diverging run among many is a finding of the sweep, not a failure of it. `env`, an env object,
    replaces the config's env name, as in `purejaxppo.train`."""
    prepared = prepare_sweep(config, seeds, grid, run_dir, max_runs_per_call, resume=resume, step=step, env=env)
    return run_sweep(prepared, until_update=until_update, on_progress=on_progress)


def run_sweep(prepared: Prepared, *, until_update: int | None = None,
              on_progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """Run a prepared sweep; its aggregate.csv and curves.png are written once it ends."""
    record = prepared.record
    seeds, config = record.num_seeds, record.config
    points = [dict(m.values) for m in record.members[::seeds]]  # seed i of point g is member g * seeds + i

    def finish(result: RunResult) -> SweepResult:
        out = SweepResult.extending(result, grid=record.grid, points=points,
                                    seeds=[config.seed + i for i in range(seeds)])
        if out.run_dir is not None and not out.stopped and is_primary():
            write_results(out, out.run_dir)
        return out

    return prepared.run(until_update=until_update, guard=False, on_progress=on_progress, finish=finish)


def write_results(result: SweepResult, run_dir: Path) -> None:
    """aggregate.csv and curves.png (the loop has written config.yaml, metrics.csv and runs.csv)."""
    metrics_lib.write_table(run_dir / "aggregate.csv", result.aggregate())
    plots.plot_learning_curves([plots.read_curves(run_dir)], run_dir / "curves.png")
