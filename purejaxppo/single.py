"""A single run: `train(config)`, a population of one through the one seam (`host.prepare`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from purejaxppo.config import PPOConfig
from purejaxppo.host.loop import Progress, RunResult
from purejaxppo.host.population import Population
from purejaxppo.host.prepare import Prepared, ResumePoint, prepare, resume_from


def prepare_train(
    config: PPOConfig, run_dir: str | Path | None = None, *, resume: bool | ResumePoint = False,
    step: int | None = None, env: Any = None,
) -> Prepared:
    """One run of `config` (on `env`, an env object, when given), built and checked; `resume` continues the
    run in `run_dir` from its latest checkpoint (or `step`), or from a ResumePoint already read."""
    resume = resume_from(resume, run_dir, step, "run")
    return prepare(Population.single(config), run_dir, kind="run", resume=resume, env=env)


def train(
    config: PPOConfig,
    run_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    resume: bool | ResumePoint = False,
    step: int | None = None,
    until_update: int | None = None,
    env: Any = None,
) -> RunResult:
    """Train one run in compiled chunks of `config.chunk_size` updates, on the config's env or on `env`, an
    env object of any kind `envs.make_env` accepts (then the run's config records the object's class, and
    a resume needs the same `env` again).

    `resume=True` continues from the run dir's latest checkpoint (or `step`); the result is bit-identical
    to an uninterrupted run. `until_update` stops, with a checkpoint, at the first chunk end at or after
    it. The result's state and metrics keep the run axis, of size 1.
    """
    prepared = prepare_train(config, run_dir, resume=resume, step=step, env=env)
    return prepared.run(until_update=until_update, on_progress=on_progress)
