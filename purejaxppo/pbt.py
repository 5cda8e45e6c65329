"""Population-based training inside the compiled program: `pbt(config, PBTConfig(...))`.

A PBT run is a population (`population.Population`) whose members start from hyperparameters drawn
from their ranges and train side by side in one compiled program, in chunks of `interval` updates.
At the end of each full chunk, still inside the program, `Exploit` ranks each population's members by
their score over the interval, copies a top member's learner state (params, optimizer state,
normaliser statistics, KL coefficient, hyperparameters) into each bottom member, which keeps its own
envs, PRNG key and episode counters, and perturbs or resamples the copied hyperparameters (the math is
in `exploit.py`). Its PRNG key is the population's seed folded with the update count, so a run is
deterministic given its seed, and a resume is bit-identical.

Outputs beside a run's files: `lineage.csv` (per interval and member: its parent, score and new
hyperparameters) and `pbt.png`. `load_policy(run_dir)` loads the best member by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purejaxppo import checkpoint, exploit, plots, rundir, runner
from purejaxppo import config as config_lib
from purejaxppo import metrics as metrics_lib
from purejaxppo.config import TRACED, ConfigError, PPOConfig
from purejaxppo.population import Member, Population, evaluation_return
from purejaxppo.train import Trainer, TrainState, with_env

SCORES = ("episode_return", "eval_return")
# the learner's state, which a replaced member copies from its parent (the rest belongs to its envs)
COPIED = ("params", "opt_state", "obs_stats", "return_stats", "kl_beta", "hparams", "ref")
DIVERGED_IF_NOT_FINITE = ("policy_loss", "value_loss", "grad_norm")
KEY_SALT = 0x9B7  # folded into the population's seed, so the PBT key differs from the members' keys


@dataclasses.dataclass(frozen=True)
class Explored:
    """A hyperparameter that PBT explores, within [low, high] (sampled in log space when low > 0)."""

    name: str
    low: float
    high: float

    @property
    def log_scale(self) -> bool:
        return self.low > 0


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    population: int
    explore: tuple[Explored, ...]
    interval: int = 10
    quantile: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.25)
    resample: float = 0.25
    score: str = "episode_return"
    seeds: int = 1  # independent populations in one call

    def to_meta(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "explore": [dataclasses.asdict(e) for e in self.explore]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> PBTConfig:
        return cls(**{**meta, "explore": tuple(Explored(**e) for e in meta["explore"]),
                      "perturb": tuple(meta["perturb"])})


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


@dataclasses.dataclass(frozen=True)
class Exploit:
    """The in-program PBT step at a chunk's end (`population.chunk_program` calls it over the stacked
    states): `(trainer, states, metrics, params_finite, first_update, num_active) -> (states, extra
    metrics)`, where `params_finite` is the chunk's own per-run check of the params."""

    spec: PBTConfig
    seeds: tuple[int, ...]  # each population's first member's seed

    def __call__(self, trainer: Trainer, states: TrainState, metrics: dict[str, jax.Array], params_finite: jax.Array,
                 first_update: jax.Array, num_active: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        spec = self.spec
        g, n = spec.seeds, spec.population
        real = g * n  # the stacked runs past these are filler runs, left alone
        names = [e.name for e in spec.explore]
        update = first_update + num_active
        due = (num_active == trainer.config.chunk_size) & (update % spec.interval == 0)

        def step(states: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
            mine = jax.tree.map(lambda x: x[:real], states)
            if spec.score == "eval_return":
                scores = jax.vmap(lambda s: evaluation_return(trainer, s))(mine)
            else:
                scores = exploit.interval_scores(metrics["episode_return"][:real])
            bad = [~jnp.isfinite(metrics[m][:real]).all(axis=-1) for m in DIVERGED_IF_NOT_FINITE if m in metrics]
            finite = params_finite[:real]
            diverged = ~finite | jnp.stack(bad).any(axis=0) if bad else ~finite
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), KEY_SALT), update))(
                jnp.asarray(self.seeds, jnp.uint32))
            k_exploit, k_explore = jax.vmap(jax.random.split, out_axes=1)(keys)
            local = jax.vmap(lambda s, d, k: exploit.exploit(s, d, k, spec.quantile))(
                scores.reshape(g, n), diverged.reshape(g, n), k_exploit)
            parents = (local + n * jnp.arange(g)[:, None]).reshape(real)
            replaced = parents != jnp.arange(real)
            copied = mine.replace(**{f: jax.tree.map(lambda x: x[parents], getattr(mine, f)) for f in COPIED})
            values = jnp.stack([getattr(copied.hparams, name) for name in names], axis=-1)
            low, high = (jnp.array([getattr(e, b) for e in spec.explore], jnp.float32) for b in ("low", "high"))
            log_scale = jnp.array([e.log_scale for e in spec.explore])
            factors = jnp.array(spec.perturb, jnp.float32)
            new = jax.vmap(lambda v, r, k: exploit.explore(v, r, k, factors, spec.resample, low, high, log_scale))(
                values.reshape(g, n, -1), replaced.reshape(g, n), k_explore).reshape(real, -1)
            copied = copied.replace(hparams=copied.hparams.replace(**{m: new[:, j] for j, m in enumerate(names)}))
            states = jax.tree.map(lambda whole, part: whole.at[:real].set(part), states, copied)
            extra = {"pbt_parent": parents.astype(jnp.float32), "pbt_score": scores,
                     **{f"pbt_{m}": new[:, j] for j, m in enumerate(names)}}
            return states, extra

        def skip(states: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
            keys = ["pbt_parent", "pbt_score", *(f"pbt_{m}" for m in names)]
            return states, {k: jnp.full(real, jnp.nan) for k in keys}

        states, extra = jax.lax.cond(due, step, skip, states)
        runs, size = metrics["episode_return"].shape
        return states, {k: jnp.full((runs, size), jnp.nan).at[:real, num_active - 1].set(v) for k, v in extra.items()}


@dataclasses.dataclass
class PBTResult(runner.RunResult):
    spec: PBTConfig | None = None

    def best(self) -> list[int]:
        """Each population's best member (its index among all members), by the mean return over its last
        interval of updates."""
        spec = self.spec
        return exploit.best_members(self.metrics, spec.population, spec.seeds, spec.interval)


def pbt(
    config: PPOConfig,
    spec: PBTConfig,
    run_dir: str | Path | None = None,
    on_progress: Callable[[runner.Progress], None] | None = None,
    *,
    resume: bool = False,
    step: int | None = None,
    until_update: int | None = None,
    on_ready: Callable[[], None] | None = None,
    env: Any = None,
) -> PBTResult:
    """Train `spec.seeds` populations of `spec.population` members with PBT, in one compiled program. A
    resumed run takes its PBT setup and members from the checkpoint. There is no NaN guard: a member that
    diverges is replaced at the next PBT step."""
    config = with_env(config, env)
    run_dir = Path(run_dir) if run_dir is not None else None
    with rundir.claimed(run_dir, create=not resume, primary=runner.is_primary()):
        saved, resume_step = None, None
        if resume:
            resume_step, meta = checkpoint.resume_point(run_dir, step, "pbt", config)
            spec = PBTConfig.from_meta(meta["pbt"])
            if resume_step % spec.interval and resume_step < config.num_updates:
                raise ConfigError(f"total_timesteps: checkpoint {resume_step} ended the earlier run between two PBT "
                                  f"steps (interval {spec.interval}), so a longer run would never meet one again; "
                                  f"resume from a checkpoint at a multiple of {spec.interval} (--step)")
            saved = tuple(Member(m["seed"], m["values"], m["point"]) for m in meta["members"])
        config = check(spec, config)
        firsts = tuple(config.seed + g * spec.population for g in range(spec.seeds))
        population = Population(config, saved or members(spec, config), step=Exploit(spec, firsts))
        result = runner.run(population, run_dir, kind="pbt", meta={"pbt": spec.to_meta()}, resume_step=resume_step,
                            until_update=until_update, guard=False, on_progress=on_progress, on_ready=on_ready,
                            env=env)
        out = PBTResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(runner.RunResult)}, spec=spec)
        if out.run_dir is not None and not out.stopped and runner.is_primary():
            with runner.finishing(run_dir, "pbt"):
                write_lineage(out, spec)
    return out


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

