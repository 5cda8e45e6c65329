"""Population-based training inside the compiled program: `pbt(config, PBTConfig(...))`.

A PBT run is a population (`host.population.Population`) whose members start from hyperparameters
drawn from their ranges and train side by side in one compiled program, in chunks of `interval`
updates; at the end of each full chunk the program's own PBT step (`program.pbt_step.Exploit`) replaces
the worst members by copies of the best, with their hyperparameters perturbed or drawn afresh. This
front end parses and checks the setup, draws the members and names the outputs.

Outputs beside a run's files: `lineage.csv` (per interval and member: its parent, score and new
hyperparameters) and `pbt.png`. `load_policy(run_dir)` loads the best member by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from purejaxppo import config as config_lib
from purejaxppo import plots
from purejaxppo.config import TRACED, PPOConfig
from purejaxppo.errors import ConfigError
from purejaxppo.host import metrics as metrics_lib
from purejaxppo.host.loop import Progress, RunResult
from purejaxppo.host.population import Member, Population
from purejaxppo.host.prepare import Prepared, ResumePoint, prepare, resume_from
from purejaxppo.host.processes import is_primary
from purejaxppo.program import exploit
from purejaxppo.program.pbt_step import SCORES, Exploit, Explored, PBTConfig


def parse_explore(text: str | Sequence[str], config: PPOConfig) -> tuple[Explored, ...]:
    """`lr,ent_coef=0:0.05,...`: traced hyperparameters, each with its range, by default a factor of 4
    either side of the config's value within the field's bounds."""
    items = [i.strip() for i in (text.split(",") if isinstance(text, str) else text) if i.strip()]
    if not items:
        raise ConfigError("explore: name at least one traced hyperparameter, e.g. lr,ent_coef")
    out = []
    for item in items:
        name, _, bounds = item.partition("=")
        name = name.strip()
        if name not in TRACED:
            raise config_lib.unknown_key_error(name, TRACED, what="hyperparameter to explore (a traced key)")
        meta = config_lib.FIELDS[name].metadata
        value = float(getattr(config, name))
        if bounds:
            try:
                low, high = (float(b) for b in bounds.split(":"))
            except ValueError:
                raise ConfigError(f"explore: {item!r}: a range is LOW:HIGH, e.g. {name}=1e-4:1e-2") from None
        elif value > 0:
            low, high = value / 4, value * 4
            low = max(low, meta.get("min", meta.get("gt", low)))
            high = min(high, meta.get("max", high))
        else:
            raise ConfigError(f"explore: {name} is {value:g} in the config, so it needs a range: {name}=LOW:HIGH")
        out.append(Explored(name, low, high))
    return check_explored(tuple(out), config)


# The adaptive KL coefficient starts from kl_coef and then lives in the state (copied with the learner),
# so exploring kl_coef itself would change nothing after the start.
NOT_EXPLORABLE = {"kl_coef": "it only sets where the adaptive KL coefficient starts, which then lives in the state"}


def check_explored(explored: tuple[Explored, ...], config: PPOConfig) -> tuple[Explored, ...]:
    """Refuse explored hyperparameters that cannot work: none, unknown or untraced keys, a key given twice,
    a range outside the field's own bounds, or a key the program ignores (a variant switched off, a
    value that has no effect in this config)."""
    if not explored:
        raise ConfigError("explore: name at least one traced hyperparameter, e.g. lr,ent_coef")
    names = [e.name for e in explored]
    for e in explored:
        if e.name not in TRACED:
            raise config_lib.unknown_key_error(e.name, TRACED, what="hyperparameter to explore (a traced key)")
        if e.name in NOT_EXPLORABLE:
            raise ConfigError(f"explore: {e.name} cannot be explored: {NOT_EXPLORABLE[e.name]}")
        if names.count(e.name) > 1:
            raise ConfigError(f"explore: {e.name} is given twice")
        if not (math.isfinite(e.low) and math.isfinite(e.high) and e.low < e.high):
            raise ConfigError(f"explore: {e.name}: the range {e.low:g}:{e.high:g} must have LOW < HIGH, both finite")
        for bound in (e.low, e.high):
            config.replace(**{e.name: bound})  # the field's own range check, one clear line if it fails
        try:
            config_lib.check_sweepable(config, e.name, [e.low, e.high])
        except ConfigError as err:
            raise ConfigError(f"explore: {err}") from None
    return explored


def check(spec: PBTConfig, config: PPOConfig) -> PPOConfig:
    """Refuse a PBT setup that cannot work, before anything compiles; return the config it runs with:
    chunks of `interval` updates, so every PBT step falls on a chunk's end."""
    if spec.population < 1 or spec.seeds < 1:
        raise ConfigError("population: must be >= 1 member, in >= 1 seed(s)")
    if spec.interval < 1:
        raise ConfigError(f"interval: must be >= 1 update, got {spec.interval}")
    if not 0 < spec.quantile <= 0.5:
        raise ConfigError(f"quantile: must be in (0, 0.5], got {spec.quantile}")
    if not spec.perturb or any(not (math.isfinite(f) and f > 0) for f in spec.perturb):
        raise ConfigError(f"perturb: factors must be finite and > 0, got {list(spec.perturb)}")
    if not 0 <= spec.resample <= 1:
        raise ConfigError(f"resample: a probability in [0, 1], got {spec.resample}")
    if spec.score not in SCORES:
        raise ConfigError(f"score: one of {', '.join(SCORES)}, got {spec.score!r}")
    check_explored(tuple(spec.explore), config)
    for key in ("checkpoint_every", "eval_every"):
        every = getattr(config, key)
        if every % spec.interval:
            raise ConfigError(f"{key}: {every} is not a multiple of interval = {spec.interval}; PBT steps and "
                              f"{key.removesuffix('_every')}s both fall on chunk ends")
    return config.replace(log_every=spec.interval)


def members(spec: PBTConfig, config: PPOConfig) -> tuple[Member, ...]:
    """Population g's member k has seed config.seed + g * population + k; its explored values are drawn
    from their ranges with a key of the config's seed (a population of one keeps the config's values)."""
    count = spec.seeds * spec.population
    if config.seed + count - 1 > config_lib.MAX_SEED:
        raise ConfigError(f"seeds: seed {config.seed} + {count} members passes the largest seed, {config_lib.MAX_SEED}")
    low, high = (np.array([getattr(e, b) for e in spec.explore], np.float32) for b in ("low", "high"))
    log_scale = np.array([e.log_scale for e in spec.explore])
    drawn = np.asarray(exploit.sample(jax.random.key(config.seed), (count, len(spec.explore)), low, high, log_scale))
    return tuple(
        Member(config.seed + i, {e.name: float(v) for e, v in zip(spec.explore, drawn[i])} if spec.population > 1
               else {}, point=i // spec.population)
        for i in range(count))


@dataclasses.dataclass
class PBTResult(RunResult):
    spec: PBTConfig | None = None

    def best(self) -> list[int]:
        """Each population's best member (its index among all members), by the mean return over its last
        interval of updates."""
        spec = self.spec
        return exploit.best_members(self.metrics, spec.population, spec.seeds, spec.interval)


def prepare_pbt(
    config: PPOConfig, spec: PBTConfig | None, run_dir: str | Path | None = None, *,
    resume: bool | ResumePoint = False, step: int | None = None, env: Any = None,
) -> Prepared:
    """`spec.seeds` populations of `spec.population` members, built and checked; a resume (True, or a
    ResumePoint already read) takes its PBT setup and members from the checkpoint."""
    resume = resume_from(resume, run_dir, step, "pbt")
    saved = None
    if resume is not None:
        spec, saved = resume.record.pbt, resume.record.members
        if resume.step % spec.interval and resume.step < config.num_updates:
            raise ConfigError(f"total_timesteps: checkpoint {resume.step} ended the earlier run between two PBT "
                              f"steps (interval {spec.interval}), so a longer run would never meet one again; "
                              f"resume from a checkpoint at a multiple of {spec.interval} (--step)")
    config = check(spec, config)
    firsts = tuple(config.seed + g * spec.population for g in range(spec.seeds))
    population = Population(config, saved or members(spec, config), step=Exploit(spec, firsts))
    return prepare(population, run_dir, kind="pbt", resume=resume, env=env, pbt=spec)


def pbt(
    config: PPOConfig,
    spec: PBTConfig | None,
    run_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    resume: bool | ResumePoint = False,
    step: int | None = None,
    until_update: int | None = None,
    env: Any = None,
) -> PBTResult:
    """Train `spec.seeds` populations of `spec.population` members with PBT, in one compiled program. A
    resumed run takes its PBT setup and members from the checkpoint (`spec` may be None then). There is no
    NaN guard: a member that diverges is replaced at the next PBT step."""
    prepared = prepare_pbt(config, spec, run_dir, resume=resume, step=step, env=env)
    return run_pbt(prepared, until_update=until_update, on_progress=on_progress)


def run_pbt(prepared: Prepared, *, until_update: int | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> PBTResult:
    """Run a prepared PBT population; its lineage.csv and pbt.png are written once it ends."""
    spec = prepared.record.pbt

    def finish(result: RunResult) -> PBTResult:
        out = PBTResult.extending(result, spec=spec)
        if out.run_dir is not None and not out.stopped and is_primary():
            write_lineage(out, spec)
        return out

    return prepared.run(until_update=until_update, guard=False, on_progress=on_progress, finish=finish)


def write_lineage(out: PBTResult, spec: PBTConfig) -> None:
    """lineage.csv and pbt.png (the loop has written config.yaml, metrics.csv and runs.csv)."""
    rows = lineage_rows(out)
    metrics_lib.write_table(out.run_dir / "lineage.csv", rows)
    best = out.metrics["episode_return"][out.best()[0]]
    plots.plot_pbt(rows, [e.name for e in spec.explore], out.metrics["env_steps"][0], best, out.run_dir / "pbt.png")


def lineage_rows(result: PBTResult) -> list[dict[str, Any]]:
    """Per PBT step and member (and the start, as update 0): its population, parent, score and the
    explored hyperparameters it trains on from then on."""
    spec, m = result.spec, result.metrics
    names = [e.name for e in spec.explore]
    rows = []
    for k, member in enumerate(result.population.members):
        rows.append({"update": 0, "env_steps": 0, "population": member.point, "member": k, "parent": k,
                     "score": float("nan"),
                     **{n: member.values.get(n, getattr(result.config, n)) for n in names}})
    steps = np.flatnonzero(np.isfinite(m["pbt_parent"]).any(axis=0)) if "pbt_parent" in m else []
    for j in steps:  # the metrics hold every update from the first, resumed runs' included
        update = int(j) + 1
        for k, member in enumerate(result.population.members):
            rows.append({"update": update, "env_steps": update * result.config.batch_size, "population": member.point,
                         "member": k, "parent": int(m["pbt_parent"][k, j]), "score": float(m["pbt_score"][k, j]),
                         **{n: float(m[f"pbt_{n}"][k, j]) for n in names}})
    return rows

