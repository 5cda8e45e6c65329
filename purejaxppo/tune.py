"""Hyperparameter search inside the compiled program: `tune(config, TuneConfig(...))`.

Trials draw traced hyperparameters from their spaces and train in `slots` side by side, in one compiled
program; at chunk ends the host judges them by asynchronous successive halving and fills each freed slot
with the next trial (`host.search`), so the program never waits for a whole bracket and never compiles
again. Each trial trains for at most the config's total_timesteps. This front end parses and checks the
setup, and names the outputs beside a run's files: `trials.csv` (per trial: slot, seed, values, budget
used, score at each rung, status), `tune.png` and `best.yaml` (the best finished trial's config, ready for
`purejaxppo train`). `load_policy(run_dir)` loads the best finished trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo import config as config_lib
from purejaxppo import plots
from purejaxppo.config import PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host.loop import Progress, RunResult
from purejaxppo.host.population import Population
from purejaxppo.host.prepare import Prepared, ResumePoint, prepare, resume_from
from purejaxppo.host.processes import is_primary
from purejaxppo.host.samplers import SAMPLERS
from purejaxppo.host.search import SCHEDULERS, SCORES, Search, Space, Trial, TuneConfig

__all__ = ["Space", "TuneConfig", "TuneResult", "parse_space", "prepare_tune", "run_tune", "tune"]


def parse_space(text: str, config: PPOConfig) -> Space:
    """`key=LOW:HIGH` (uniform), `key=log:LOW:HIGH` (log-uniform) or `key=V1,V2,...` (a choice), over a
    traced hyperparameter; checked against the field's bounds and the config (`check_space`)."""
    name, sep, spec = (part.strip() for part in text.partition("="))
    if not sep or not spec:
        raise ConfigError(f"--space {text!r}: a space is KEY=LOW:HIGH, KEY=log:LOW:HIGH or KEY=V1,V2,...; "
                          f"e.g. lr=log:1e-4:1e-2")
    try:
        if "," in spec or ":" not in spec:
            space = Space(name, "choice", values=tuple(float(v) for v in spec.split(",")))
        else:
            parts = spec.split(":")
            log = parts[0].strip() == "log"
            low, high = (float(v) for v in parts[1 if log else 0:])
            space = Space(name, "log" if log else "uniform", low, high)
    except ValueError:
        raise ConfigError(f"--space {text!r}: a space is KEY=LOW:HIGH, KEY=log:LOW:HIGH or KEY=V1,V2,... with "
                          f"numbers; e.g. lr=log:1e-4:1e-2") from None
    return check_space(space, config)


def check_space(space: Space, config: PPOConfig) -> Space:
    """Refuse a space that cannot work: an untraced key, an empty or reversed range, a log range that
    reaches 0, a choice that repeats a value, values outside the field's bounds, or a key this config's
    program ignores."""
    name = space.name
    values = list(space.values) if space.kind == "choice" else [space.low, space.high]
    config_lib.check_sweepable(config, name, values)  # a grid's own line for a key the program cannot trace
    if space.kind == "choice":
        if not values or len(set(values)) < len(values):
            raise ConfigError(f"{name}: a choice lists each value once, at least one")
    else:
        if not (math.isfinite(space.low) and math.isfinite(space.high) and space.low < space.high):
            raise ConfigError(f"{name}: the range {space.low:g}:{space.high:g} must have LOW < HIGH, both finite")
        if space.kind == "log" and space.low <= 0:
            raise ConfigError(f"{name}: a log range needs LOW > 0, got {space.low:g}")
    for value in values:
        config.replace(**{name: value})  # the field's own range check, one clear line if it fails
    return space


def _default_interval(updates: int) -> int:
    """The largest divisor of a trial's updates that is at most a fiftieth of them (at least 1)."""
    return max(d for d in range(1, max(1, updates // 50) + 1) if updates % d == 0)


def check(spec: TuneConfig, config: PPOConfig) -> tuple[TuneConfig, PPOConfig]:
    """Refuse a search that cannot work, before anything compiles; return it with its chunk size and first
    rung chosen where they were left 0, and the config it runs with (chunks of `interval` updates; with
    the evaluation score, an evaluation at the end of every chunk)."""
    if not spec.spaces:
        raise ConfigError("--space: name at least one hyperparameter to tune, e.g. --space lr=log:1e-4:1e-2")
    names = [s.name for s in spec.spaces]
    for space in spec.spaces:
        if names.count(space.name) > 1:
            raise ConfigError(f"--space: {space.name} is given twice")
        check_space(space, config)
    if spec.trials < 1 or spec.slots < 1:
        raise ConfigError(f"--trials, --slots: at least 1 each, got {spec.trials} and {spec.slots}")
    if spec.slots > spec.trials:
        raise ConfigError(f"--slots: {spec.slots} slots for {spec.trials} trials would leave slots idle from the "
                          f"start; use at most {spec.trials}")
    if config.seed + spec.trials - 1 > config_lib.MAX_SEED:
        raise ConfigError(f"--trials: seed {config.seed} + {spec.trials} trials passes the largest seed, "
                          f"{config_lib.MAX_SEED}")
    for key, allowed in (("scheduler", SCHEDULERS), ("sampler", SAMPLERS), ("score", SCORES)):
        if getattr(spec, key) not in allowed:
            raise ConfigError(f"--{key}: one of {', '.join(allowed)}, got {getattr(spec, key)!r}")
    if spec.eta < 2:
        raise ConfigError(f"--eta: the reduction factor must be >= 2, got {spec.eta}")
    updates = config.num_updates
    interval = spec.interval or _default_interval(updates)
    if interval < 1 or updates % interval:
        nearest = max(interval, updates // interval * interval) * config.batch_size
        raise ConfigError(f"total_timesteps: {config.total_timesteps:,} env steps make {updates} updates a trial, not "
                          f"a multiple of --interval {interval} (rungs fall on chunk ends); use e.g. "
                          f"total_timesteps={nearest}")
    minimum = spec.min_updates or interval * max(1, round(updates / spec.eta ** 3 / interval))
    if minimum % interval:
        raise ConfigError(f"--min-budget: {minimum * config.batch_size:,} env steps make {minimum} updates, not a "
                          f"multiple of --interval {interval} updates ({interval * config.batch_size:,} env steps)")
    if spec.scheduler == "asha" and minimum >= updates:
        raise ConfigError(f"--min-budget: the first rung ({minimum} updates) must come before a trial's end "
                          f"({updates} updates); lower it, or run every trial to the end with --scheduler none")
    spec = dataclasses.replace(spec, interval=interval, min_updates=minimum)
    config = config.replace(log_every=interval)
    if spec.score == "eval_return":
        config = config.replace(eval_every=interval)
    for key in ("checkpoint_every", "eval_every"):
        every = getattr(config, key)
        if every % interval:
            raise ConfigError(f"{key}: {every} is not a multiple of --interval {interval}; searches judge, "
                              f"checkpoint and evaluate at chunk ends")
    return spec, config


@dataclasses.dataclass
class TuneResult(RunResult):
    search: Search | None = None

    def best(self) -> Trial | None:
        """The best finished trial (by its final score), None if none finished."""
        return self.search.best()

    def trials(self) -> list[dict[str, Any]]:
        """One row per trial started, as trials.csv has them."""
        return trial_rows(self.search, self.config)


def trial_rows(search: Search, config: PPOConfig) -> list[dict[str, Any]]:
    """Per trial: id, slot, seed, values, status, budget used, its score at each rung it reached and at
    its end (NaN where it did not get there)."""
    budgets = [*search.rungs, search.max_updates]
    rows = []
    for t in search.trials:  # a finished trial has a score at every rung and at its end
        scores = dict(zip(budgets, t.scores))
        rows.append({"trial": t.id, "slot": t.slot, "seed": t.seed, **{k: float(v) for k, v in t.values.items()},
                     "status": t.status, "updates": t.updates, "env_steps": t.updates * config.batch_size,
                     **{f"score_{b * config.batch_size}": float(scores.get(b, math.nan)) for b in budgets}})
    return rows


def prepare_tune(
    config: PPOConfig, spec: TuneConfig | None, run_dir: str | Path | None = None, *,
    resume: bool | ResumePoint = False, step: int | None = None, env: Any = None,
) -> Prepared:
    """A search, built and checked; a resume (True, or a ResumePoint already read) takes its setup and
    its trials from the checkpoint."""
    resume = resume_from(resume, run_dir, step, "tune")
    if resume is not None:
        spec = resume.record.tune
        saved = resume.record.config
        if config.num_updates != saved.num_updates:
            raise ConfigError(f"total_timesteps: a resumed search keeps its trials' budget, {saved.total_timesteps:,} "
                              f"env steps ({saved.num_updates} updates); its rungs and scores are counted in it")
    spec, config = check(spec, config)
    where = resume.run_dir if resume is not None else Path(run_dir) if run_dir is not None else None
    if resume is not None:
        search = Search.from_json(spec, config.seed, config.num_updates, resume.record.search, where)
    else:
        search = Search(spec, config.seed, config.num_updates, run_dir=where)
    population = Population(config, search.members(), between=search)
    return prepare(population, run_dir, kind="tune", resume=resume, env=env, tune=spec)


def tune(
    config: PPOConfig,
    spec: TuneConfig | None,
    run_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    resume: bool | ResumePoint = False,
    step: int | None = None,
    until_update: int | None = None,
    env: Any = None,
) -> TuneResult:
    """Search `spec.trials` trials of `config`, `spec.slots` at a time, in one compiled program. A resumed
    search takes its setup and trials from the checkpoint (`spec` may be None then). There is no NaN guard:
    a trial that diverges is stopped, and its slot refilled."""
    prepared = prepare_tune(config, spec, run_dir, resume=resume, step=step, env=env)
    return run_tune(prepared, until_update=until_update, on_progress=on_progress)


def run_tune(prepared: Prepared, *, until_update: int | None = None,
             on_progress: Callable[[Progress], None] | None = None) -> TuneResult:
    """Run a prepared search; trials.csv is written when it ends or stops, tune.png and best.yaml when it
    ends."""
    search = prepared.population.between

    def finish(result: RunResult) -> TuneResult:
        out = TuneResult.extending(result, search=search)
        if out.run_dir is not None and is_primary():
            write_results(out)
        return out

    return prepared.run(until_update=until_update, guard=False, on_progress=on_progress, finish=finish)


def write_results(out: TuneResult) -> None:
    """trials.csv; once the search has ended, tune.png and best.yaml (the loop has written config.yaml,
    metrics.csv and runs.csv)."""
    config, search = out.config, out.search
    metrics_lib.write_table(out.run_dir / "trials.csv", out.trials())
    if out.stopped:
        return
    best = out.best()
    curve = None
    if best is not None:
        rows = slice(best.start, best.start + search.max_updates)
        curve = out.metrics["env_steps"][best.slot, rows], out.metrics["episode_return"][best.slot, rows]
        config_lib.save(config.replace(seed=best.seed, **best.values), out.run_dir / "best.yaml")
    budgets = np.array([*search.rungs, search.max_updates]) * config.batch_size
    plots.plot_tune(out.trials(), budgets, curve, out.run_dir / "tune.png")
