"""The one seam between a front end and a run: `prepare` builds and checks everything a run, a sweep or a
PBT population needs, once and without compiling: the config and its env, the PPO program's pieces and
the trained policy a fine-tune starts from, the population and its device layout, the memory it needs,
the run dir, and the resume point with its run record. `Prepared.describe()` says what will run;
`Prepared.run()` claims the run dir, compiles, initialises or restores, and trains (`loop`).

Every entrance goes through it: `purejaxppo.train`, `sweep`, `pbt`, their resumes, the CLI, and
`purejaxppo check`, which prepares and describes without running.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from purejaxppo import config as config_lib
from purejaxppo.config import PPOConfig
from purejaxppo.envs.custom import OBJECT_PREFIX
from purejaxppo.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    NonFiniteError,
    SaveError,
    device_error,
    is_device_error,
)
from purejaxppo.host import checkpoint, rundir
from purejaxppo.host.layout import Program, check_fits, fewer_runs, plan
from purejaxppo.host.limits import Headroom, size
from purejaxppo.host.loop import Progress, RunResult, train_population
from purejaxppo.host.population import Population
from purejaxppo.host.processes import agree, check_shared, is_primary, lost, use_compilation_cache, watching
from purejaxppo.host.record import KINDS, WHAT, RunRecord, Signature
from purejaxppo.host.search import TuneConfig
from purejaxppo.host.signals import StopSignal, written
from purejaxppo.host.trained import with_pretrained
from purejaxppo.host.video import check_draws
from purejaxppo.program.pbt_step import PBTConfig
from purejaxppo.program.ppo import PPO, TrainState, make_ppo, with_env


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, and its run record, read once."""

    run_dir: Path
    step: int
    record: RunRecord


def resume_point(run_dir: str | Path | None, step: int | None, kind: str | None) -> ResumePoint:
    """The checkpoint (the latest, or `step`) a `kind` ("run", "sweep" or "pbt"; None for whatever it
    holds) resumes from, with its record; refused in one line where the run dir holds none, or another
    kind. Reads JSON only: the CLI calls it before JAX starts, to learn the devices the run was written on."""
    if run_dir is None:
        raise CheckpointError("resume needs a run dir")
    step, record = checkpoint.read_record(run_dir, step, kind)
    if kind is not None and record.kind != kind:
        raise CheckpointError(f"{run_dir} holds a {WHAT[record.kind]}, not a {WHAT[kind]}; resume it with "
                              f"purejaxppo {record.command} --resume {run_dir}")
    return ResumePoint(Path(run_dir), step, record)


def resume_from(resume: bool | ResumePoint, run_dir: str | Path | None, step: int | None,
                kind: str) -> ResumePoint | None:
    """What a front end's `resume` argument names: the run dir's checkpoint (`resume_point`) for True, the
    point itself where it was read already, None for a new run."""
    return resume_point(run_dir, step, kind) if resume is True else resume or None


def check_compatible(saved: PPOConfig, config: PPOConfig, where: str) -> None:
    """Refuse a config that would build another program than the one a checkpoint was written by."""
    saved_d, new_d = saved.to_dict(), config.to_dict()
    diffs = [k for k in saved_d if k not in config_lib.RUN_CONTROL_KEYS and saved_d[k] != new_d[k]]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint has {saved_d[k]!r}, config has {new_d[k]!r}" for k in diffs[:4])
        raise CheckpointError(f"{where} was written for another config ({shown})")
    scheduled = [f"{k} {getattr(config, k)}" for k in ("lr_schedule", "ent_schedule") if getattr(config, k) != "constant"]
    if saved.num_updates != config.num_updates and scheduled:
        raise CheckpointError(
            f"total_timesteps: {where} was written for {saved.total_timesteps:,} env steps; the {' and '.join(scheduled)} "
            f"schedules span the run, so changing its length would change them mid-run. Resume with "
            f"total_timesteps={saved.total_timesteps}, or train with constant schedules"
        )


@dataclasses.dataclass
class Prepared:
    """A run, sweep or PBT population, built and checked, not yet compiled."""

    program: Program  # the PPO program's pieces, the population, its layout and its state's shapes
    record: RunRecord  # what each checkpoint will say about the run
    run_dir: Path | None
    resume: ResumePoint | None
    stored: Any = None  # the resume checkpoint's array metadata, read once by the checks and the restore
    target: Any = None  # what the resume checkpoint restores onto (`Program.restore_target`), checked against it
    stranded: list[str] = dataclasses.field(default_factory=list)  # an earlier run's files without a checkpoint
    memory: dict[str, int] = dataclasses.field(default_factory=dict)  # the estimate, by part
    headroom: Headroom | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    ran: bool = False  # a prepared run runs once: its checks speak of the run dir as it was then

    @property
    def config(self) -> PPOConfig:
        return self.record.config

    @property
    def ppo(self) -> PPO:
        return self.program.ppo

    @property
    def population(self) -> Population:
        return self.program.population

    def headline(self) -> str:
        """One line: what runs, for how long, where."""
        config, n = self.config, self.record.num_runs
        steps = f"{config.num_updates * config.batch_size:,} env steps ({config.num_updates} updates)"
        verb = "resuming" if self.resume is not None else "training"
        origin = f" from the policy in {config.init_from}" if config.init_from and self.resume is None else ""
        spec = self.record.tune
        runs = {"run": "", "sweep": f" sweep of {n} runs,", "pbt": f" PBT population of {n} members,",
                "tune": spec and f" search of {spec.trials} trials in {spec.slots} slots,"}[self.record.kind]
        steps += " a trial" if spec else ""
        where = f"writing {self.run_dir}" if self.run_dir is not None else "writing no files (no run dir)"
        return f"{verb}{runs} {config.env}{origin} for {steps}; {where}"

    def describe(self) -> str:
        """The plan, a line each: env, policy, runs and devices, batch, updates and chunks, memory, run dir
        and resume point."""
        config, signature, lay = self.config, self.record.signature, self.program.layout
        params = sum(math.prod(x.shape) for x in jax.tree.leaves(self.program.abstract.params))
        params //= lay.stacked_runs
        filler = lay.stacked_runs - len(self.population)
        recurrent = f", {config.memory.upper()} core of {config.memory_size}" if config.memory != "none" else ""
        torso = "CNN + MLP" if config.torso == "cnn" else "MLP"
        image = f" (an image {signature.image_shape})" if signature.image_shape else ""
        minibatch = config.batch_size // config.num_minibatches
        horizon = self.population.num_updates
        chunks = math.ceil((horizon - self.first_update) / config.chunk_size)
        need = sum(self.memory.values())
        room = (f" of {size(self.headroom.bytes)} available ({self.headroom.source})" if self.headroom is not None
                else "")
        lines = [
            self.headline(),
            f"  env       {config.env}: observations {signature.observation_shape}{image}, "
            f"{signature.action_space.describe()}",
            f"  policy    {self.ppo.policy.kind}, {torso} {list(config.hidden_sizes)}{recurrent}, "
            f"{params:,} parameters",
            f"  runs      {len(self.population)} run(s) on {lay.devices} {jax.devices()[0].platform} device(s)"
            + (f" of {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + (f", in {lay.num_calls} calls of {lay.per_call}" if lay.num_calls > 1 else "")
            + (f", with {filler} filler run(s) (trained, then dropped) to split evenly" if filler else ""),
            f"  batch     {config.num_envs} envs x {config.num_steps} steps = {config.batch_size:,} env steps an "
            f"update; {config.num_minibatches} minibatches of {minibatch:,}, {config.update_epochs} epochs",
            f"  updates   {horizon - self.first_update} to go of {horizon}{' at most' if self.record.tune else ''}, "
            f"in {chunks} chunk(s) of up to {config.chunk_size}",
            *([f"  search    {self.population.between.describe()}"] if self.record.tune else []),
            f"  memory    at least {size(need)}{room}",
            f"  run dir   {self.run_dir if self.run_dir is not None else '(none)'}"
            + (f" (an earlier run's {', '.join(self.stranded)} without a checkpoint will be moved aside)"
               if self.stranded else ""),
        ]
        if self.resume is not None:
            saved = self.resume.record
            moved = (f"; written on {saved.devices} device(s), its runs now share {lay.devices}"
                     if saved.devices != lay.devices else "")
            lines.append(f"  resume    from checkpoint {self.resume.step} ({saved.env_steps:,} env steps){moved}")
        return "\n".join(lines)

    @property
    def first_update(self) -> int:
        return 0 if self.resume is None else self.resume.step

    def run(self, *, until_update: int | None = None, guard: bool = True,
            on_progress: Callable[[Progress], None] | None = None,
            finish: Callable[[RunResult], Any] | None = None) -> Any:
        """Claim the run dir, compile, initialise or restore, and train to the end, or to a stop at the first
        chunk end at or after `until_update`, or on a signal, with a checkpoint. With `guard`, a non-finite
        loss, gradient norm or parameter stops the run (errors.NonFiniteError). Returns the RunResult, or
        what `finish` (a front end's own outputs, written while the run dir is still held) makes of it.

        A signal during the compile and the init or restore interrupts at once (KeyboardInterrupt), before
        anything is written; from then on the first asks for a stop at the next chunk's end, with a
        checkpoint, and a second interrupts at once (errors.Interrupted, saying what the run dir holds)."""
        kind = self.record.kind
        fewer = fewer_runs(self.population, self.resume is not None).rstrip(",")
        out_of_memory = (f"num_envs: use fewer envs or steps (num_envs, num_steps){',' if fewer else ' or'} a smaller "
                         f"network{fewer}")
        if self.ran:
            raise ConfigError("this prepared run has run already; prepare it again (with resume_point to go on)")
        self.ran = True
        with rundir.claimed(self.run_dir, create=self.resume is None, primary=is_primary()), \
                watching(lambda: written(self.run_dir, kind)):
            check_shared(self.run_dir)
            self._check_unchanged()
            stop = StopSignal(interrupt=True)
            with stop.installed():
                try:
                    first, states, compile_time = self._start()
                except Exception as err:
                    if is_device_error(err):
                        raise device_error(err, out_of_memory) from None
                    raise
                if stop.requested:  # its KeyboardInterrupt was dropped, as inside a garbage-collection callback
                    raise KeyboardInterrupt
                with stop.stop_requests():
                    try:
                        result = train_population(
                            self.program, states, first, self.run_dir, self.record, resumed=self.resume is not None,
                            stranded=self.stranded, stop=stop, until_update=until_update, guard=guard,
                            on_progress=on_progress)
                    except KeyboardInterrupt:
                        raise Interrupted(written(self.run_dir, kind)) from None
                    except Exception as err:
                        if not isinstance(err, (ConfigError, NonFiniteError, SaveError)):
                            lost()  # a collective failed with a lost process: the watcher ends this one
                        if is_device_error(err):
                            raise device_error(err, f"{out_of_memory}; {written(self.run_dir, kind)}") from None
                        raise
            result = dataclasses.replace(result, compile_time=compile_time, timings=dict(self.timings))
            if finish is None:
                return result
            try:
                return finish(result)
            except KeyboardInterrupt:
                raise Interrupted(written(self.run_dir, kind)) from None

    def _check_unchanged(self) -> None:
        """With the run dir held: refuse a run dir that another writer changed since this was prepared (a
        resume's checkpoint gone, a new run's dir holding a run now), and find a stranded run's files."""
        kind = self.record.kind
        if self.resume is not None and self.resume.step not in checkpoint.available_steps(self.run_dir, kind):
            raise CheckpointError(f"checkpoint {self.resume.step} in {self.run_dir} is gone since the run was "
                                  f"prepared; prepare it again")
        if self.resume is None and self.run_dir is not None and is_primary():
            self.stranded = checkpoint.check_fresh(self.run_dir)

    def _start(self) -> tuple[int, list[TrainState], float]:
        """Compile, then init or restore: (the update the states are at, the calls' states, the seconds)."""
        use_compilation_cache(self.config)
        start = time.perf_counter()
        self.program.compile()
        self.timings.update(self.program.timings)
        clock = time.perf_counter()
        if self.resume is None:
            first, states = 0, jax.block_until_ready(self.program.initial_states())
        else:
            restored = checkpoint.restore(self.run_dir, self.target, self.resume.step, self.resume.record, self.stored)
            first, states = self.resume.step, self.program.resumed(restored, self.resume.record.stacked_runs)
        self.timings["init" if self.resume is None else "restore"] = time.perf_counter() - clock
        return first, states, time.perf_counter() - start


def prepare(
    population: Population,
    run_dir: str | Path | None = None,
    *,
    kind: str = "run",
    resume: ResumePoint | None = None,
    max_runs_per_call: int | None = None,
    env: Any = None,
    num_seeds: int | None = None,
    grid: dict[str, list[float]] | None = None,
    pbt: PBTConfig | None = None,
    tune: TuneConfig | None = None,
) -> Prepared:
    """Build and check `population`'s run (`kind` "run", "sweep" or "pbt") before anything compiles or is
    written: from its init, or from `resume` (see `resume_point`). `env`, an env object, replaces the
    config's env name (the config records its class). `num_seeds` and `grid` (a sweep's) and `pbt` (a PBT
    run's setup) go into the run record. Raises ConfigError (CheckpointError, RunDirError) in one line."""
    clock = time.perf_counter()
    config = with_env(population.config, env)
    population = dataclasses.replace(population, config=config)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume is not None:
        if run_dir is not None and checkpoint.resolved(run_dir) != checkpoint.resolved(resume.run_dir):
            raise CheckpointError(f"run dir {run_dir}: the resume point is in {resume.run_dir}; a resumed run "
                                  f"continues in its own run dir")
        run_dir = resume.run_dir
    if run_dir is not None and run_dir.is_dir() and is_primary():
        rundir.check_free(run_dir)  # a run dir another process writes is refused first, whatever else is wrong
    if resume is not None:  # a config the checkpoint was not written for, before its env is built
        where = f"checkpoint {resume.step} in {run_dir}"
        if population.num_updates < resume.step:
            raise CheckpointError(f"total_timesteps: {config.total_timesteps:,} env steps make {config.num_updates} "
                                  f"updates, fewer than the {resume.step} that {where} has done already")
        check_compatible(resume.record.config, config, where)
    ppo = make_ppo(config, env)
    if config.video_every:
        check_draws(ppo.env)
    if resume is None:  # a resume restores its own state, the started-from policy's included
        ppo = with_pretrained(ppo)
    program = plan(ppo, population, max_runs_per_call)
    memory, headroom = check_fits(program, resumed=resume is not None)
    lay = program.layout
    record = RunRecord(kind, config, population.members, lay.stacked_runs, lay.devices, 0, Signature.of(ppo.env),
                       max_runs_per_call, num_seeds, grid, pbt, tune)
    stored, target, stranded = None, None, []
    if resume is not None:
        target = program.restore_target(resume.record.stacked_runs)
        stored = checkpoint.check_arrays(run_dir, resume.step, target)
    if run_dir is not None and is_primary():
        rundir.check_writable(run_dir)
    if resume is None and run_dir is not None and run_dir.is_dir():
        stranded = checkpoint.check_fresh(run_dir)
    planned = record.to_json()
    planned["config"].pop("compilation_cache")  # each host may keep its compiled programs in its own folder
    agree({**planned, "resume": resume.step if resume is not None else None}, WHAT[kind])
    return Prepared(program, record, run_dir, resume, stored, target, stranded, memory, headroom,
                    {"build": time.perf_counter() - clock})


def default_run_dir(config: PPOConfig, root: str | Path = "runs", kind: str = "run") -> Path:
    """A new folder under `root` named after the env and the time (a sweep's and a PBT run's say so)."""
    return rundir.default(config.env.removeprefix(OBJECT_PREFIX), root, "" if kind == "run" else f"-{KINDS[kind]}")
