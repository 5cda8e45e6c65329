"""The `purejaxppo` command line."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import math
import os
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from purejaxppo import config as config_lib
from purejaxppo.console import ProgressPrinter
from purejaxppo.errors import (
    ConfigError,
    DeviceError,
    Interrupted,
    NonFiniteError,
    SaveError,
    device_error,
    is_device_error,
)
from purejaxppo.host.samplers import SAMPLERS
from purejaxppo.host.search import SCHEDULERS

EXIT_NON_FINITE = 3
EXIT_SAVE_FAILED = 4
EXIT_DEVICE = 5  # the device refused a computation (out of memory)
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cartpole.yaml"  # the repo checkout


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class _Once(argparse.Action):
    """Store an option's value, refusing a second one instead of silently keeping the last."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given and option_string:
            parser.error(f"{option_string}: given twice; give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse with every usage error as one `purejaxppo: error:` line (exit 2), and every single-valued
    option refused when given twice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)

    def error(self, message: str) -> NoReturn:
        print(f"purejaxppo: error: {message}", file=sys.stderr)
        sys.exit(2)


def _run_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("config", nargs="?", help="YAML config (default: configs/cartpole.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable")
    p.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help=f"continue the {what} in RUN_DIR from its latest checkpoint")
    p.add_argument("--step", type=_count(0), help="with --resume: the checkpoint (update count) to continue from")


def _sweep_options(p: argparse.ArgumentParser, seeds: int | None) -> None:
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis over a traced hyperparameter; repeatable (the grid is their product)")
    p.add_argument("--max-runs-per-call", type=_count(1),
                   help="split the runs into calls of about this many (rounded up to a multiple of the devices)")
    p.add_argument("--seeds", type=_count(1), default=seeds,
                   help="seeds per grid point (config seed, seed+1, ...); for PBT, independent populations")


def _pbt_options(p: argparse.ArgumentParser, population: int | None) -> None:
    p.add_argument("--population", type=_count(1), default=population, help="members per population")
    p.add_argument("--explore", metavar="KEY[=LOW:HIGH],...",
                   help="traced hyperparameters to explore, each in a range (default: x1/4 to x4 of the config's)")
    p.add_argument("--interval", type=_count(1), default=10, help="updates between PBT steps")
    p.add_argument("--quantile", type=float, default=0.25, help="share of members replaced, and copied, per step")
    p.add_argument("--perturb", default="0.8,1.25", metavar="F1,F2,...",
                   help="factors a copied value is perturbed by")
    p.add_argument("--resample", type=float, default=0.25, help="probability a copied value is drawn afresh instead")
    p.add_argument("--score", default="episode_return", choices=("episode_return", "eval_return"),
                   help="what ranks members: the mean return over the interval, or deterministic episodes")


def _tune_options(p: argparse.ArgumentParser, shared: bool) -> None:
    """A search's options (`shared`: with --interval and --score, which check has from PBT's)."""
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                   help="a traced hyperparameter to tune: KEY=LOW:HIGH (uniform), KEY=log:LOW:HIGH or KEY=V1,V2,... "
                        "(a choice); repeatable")
    p.add_argument("--trials", type=_count(1), help="trials to run in all (default 32)")
    p.add_argument("--slots", type=_count(1), help="trials trained side by side (default 8)")
    p.add_argument("--eta", type=_count(2), help="ASHA's reduction factor: a rung keeps its top 1/eta (default 3)")
    p.add_argument("--min-budget", type=_count(1), metavar="ENV_STEPS",
                   help="a trial's env steps at the first rung (default: its total / eta^3, on a chunk end)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="asha (default), or none to run every trial to its end")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="how trials get their values: random draws (default), or Optuna's TPE or GP sampler, told "
                        "every score (the tune extra)")
    if shared:
        p.add_argument("--interval", type=_count(1),
                       help="updates per chunk; rungs fall on chunk ends (default: a divisor of a trial's updates)")
        p.add_argument("--score", choices=("episode_return", "eval_return"),
                       help="what ranks trials: the mean return over the last chunk (default), or deterministic "
                            "episodes at its end")


def _host_options(p: argparse.ArgumentParser, shared: str) -> None:
    dist = p.add_argument_group(
        "multi-host", f"share {shared} out over the devices of several processes (hosts) with jax.distributed; start "
        "the same command, with the same --run-dir on shared storage, in every process. --distributed alone lets JAX "
        "detect the cluster (SLURM, Open MPI, ...)")
    dist.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    dist.add_argument("--num-processes", type=_count(1), help="number of processes (implies --distributed)")
    dist.add_argument("--process-id", type=_count(0), help="this process's index, 0 to N-1 (implies --distributed)")


PBT_OPTIONS = ("population", "explore", "interval", "quantile", "perturb", "resample", "score")
SWEEP_OPTIONS = ("grid", "max_runs_per_call", "seeds")
TUNE_OPTIONS = ("space", "trials", "slots", "eta", "min_budget", "scheduler", "sampler", "interval", "score")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="purejaxppo", description="Fused, jit-compiled PPO in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one agent")
    _run_options(train, "run")
    train.add_argument("--cpu-devices", type=_count(1), metavar="N",
                       help="JAX CPU devices to split the run's envs over (default 1; no effect on a GPU)")
    _host_options(train, "one run's envs")

    sweep = sub.add_parser("sweep", help="train seeds x a hyperparameter grid in one compiled call")
    _run_options(sweep, "sweep")
    _sweep_options(sweep, seeds=8)
    sweep.add_argument("--top", type=_count(0), default=10, help="grid points to list at the end")
    sweep.add_argument("--cpu-devices", type=_count(1), metavar="N",
                       help="JAX CPU devices to share the runs out over, one thread each (default: one per CPU core, "
                            "at most one per run; on --resume, the checkpoint's; no effect on a GPU)")
    _host_options(sweep, "the runs")

    pbt = sub.add_parser("pbt", help="population-based training inside one compiled program")
    _run_options(pbt, "PBT run")
    _pbt_options(pbt, population=8)
    pbt.add_argument("--seeds", type=_count(1), default=1, help="independent populations in the one program")
    pbt.add_argument("--cpu-devices", type=_count(1), metavar="N",
                     help="JAX CPU devices to share the members out over (default 1; on --resume, the checkpoint's)")
    _host_options(pbt, "the members")

    search = sub.add_parser("tune", help="search hyperparameters: trials drawn from ranges, the bad ones stopped "
                                         "early (ASHA), in one compiled program")
    _run_options(search, "search")
    _tune_options(search, shared=True)
    search.add_argument("--cpu-devices", type=_count(1), metavar="N",
                        help="JAX CPU devices to share the slots out over (default 1; on --resume, the checkpoint's)")
    _host_options(search, "the slots")

    check = sub.add_parser(
        "check", help="prepare a run, sweep, PBT run or search without compiling it, and print its plan",
        description="Takes train's, sweep's, pbt's and tune's options: --grid, --seeds or --max-runs-per-call make "
                    "it a sweep, --explore or another PBT option a PBT run, --space or another tune option a search, "
                    "--resume the kind its checkpoint holds.")
    _run_options(check, "run")
    _sweep_options(check, seeds=None)
    _pbt_options(check, population=None)
    _tune_options(check, shared=False)
    check.add_argument("--cpu-devices", type=_count(1), metavar="N", help="as for train, sweep, pbt or tune")

    ev = sub.add_parser("eval", help="deterministic episodes of a trained policy")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--episodes", type=_count(1), default=10)
    ev.add_argument("--step", type=_count(0), help="checkpoint to evaluate (default: the latest)")
    ev.add_argument("--run", type=_count(0), default=None,
                    help="for a sweep: the run index (see runs.csv); for PBT: the member (default: the best)")
    ev.add_argument("--seed", type=_count(0), default=0, help="seed of the evaluation envs")

    export = sub.add_parser("export", help="write a trained policy as an ONNX model or a serialized JAX program")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", choices=("onnx", "jax"), default="onnx",
                        help="onnx (needs the export extra) or jax (jax.export's serialized StableHLO)")
    export.add_argument("--out", help="file to write (default: RUN_DIR/policy.onnx or RUN_DIR/policy.jaxexport)")
    export.add_argument("--step", type=_count(0), help="checkpoint to export (default: the latest)")
    export.add_argument("--run", type=_count(0), default=None,
                        help="for a sweep: the run index (see runs.csv); for PBT: the member (default: the best)")
    export.add_argument("--stochastic", action="store_true",
                        help="sample the action from a noise input instead of taking the distribution's mode")
    export.add_argument("--value", action="store_true", help="output the value too")

    render = sub.add_parser("render", help="a video of a trained policy's episodes (GIF or MP4), any env that draws")
    render.add_argument("run_dir", metavar="RUN_DIR")
    render.add_argument("--out", help="a .gif or .mp4 file (default: RUN_DIR/render.mp4)")
    render.add_argument("--episodes", type=_count(1), default=1, help="episodes, one after another")
    render.add_argument("--step", type=_count(0), help="checkpoint to render (default: the latest)")
    render.add_argument("--run", type=_count(0), default=None,
                        help="for a sweep: the run index; for PBT or a search: the member or slot (default: the best)")
    render.add_argument("--stochastic", action="store_true", help="sample the actions instead of taking the mode")
    render.add_argument("--max-steps", type=_count(1), default=1000, help="longest episode to draw")
    render.add_argument("--seed", type=_count(0), default=0, help="seed of the episodes' envs (as for eval)")

    plot = sub.add_parser("plot", help="learning curves of runs or sweeps against env steps")
    plot.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    plot.add_argument("--metric", default="episode_return", help="a column of metrics.csv (default: episode_return)")
    plot.add_argument("--out", help="image file (default: RUN_DIR/METRIC.png for one run dir, else METRIC.png)")

    sub.add_parser("envs", help="list the environments that can be trained")
    return parser


def _given(args: argparse.Namespace) -> set[str]:
    """The options the command line gave (a repeatable --grid too)."""
    given = set(getattr(args, "_given", set()))
    return given | {name for name in ("grid", "space") if getattr(args, name, None)}


def _kind(args: argparse.Namespace) -> str:
    """What a command trains: "run", "sweep", "pbt" or "tune" (`check`'s from its options, or its checkpoint's)."""
    if args.command != "check":
        return {"train": "run"}.get(args.command, args.command)
    if args.resume:
        return _resume_point(args).record.kind
    given = _given(args)
    if given & (set(TUNE_OPTIONS) - set(PBT_OPTIONS)):
        return "tune"
    if given & set(PBT_OPTIONS):
        return "pbt"
    return "sweep" if given & set(SWEEP_OPTIONS) else "run"


def _resume_point(args: argparse.Namespace) -> Any:
    """The resume's checkpoint and run record, read once for the whole command (None without --resume)."""
    if not getattr(args, "resume", None):
        return None
    if "point" not in args.__dict__:
        from purejaxppo.host.prepare import resume_point

        args.point = resume_point(args.resume, args.step, None if args.command == "check" else _kind(args))
    return args.point


def _load(args: argparse.Namespace) -> config_lib.PPOConfig:
    point = _resume_point(args)
    if point is not None:
        # the checkpoint's own config, unless another is given; overrides apply on top of either
        if args.config:
            return config_lib.load(args.config, args.overrides)
        config = config_lib.from_dict(config_lib.apply_overrides(point.record.config.to_dict(), args.overrides))
        config_lib.check_given(config, [config_lib.parse_override(o)[0] for o in args.overrides])
        return config
    if getattr(args, "step", None) is not None:
        raise ConfigError("--step: only with --resume")
    # PPOConfig's defaults are configs/cartpole.yaml's values, for installs without the repo's configs/
    default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    return config_lib.load(args.config or default, args.overrides)


def _refuse_ignored(args: argparse.Namespace, kind: str) -> None:
    """Refuse options the command would ignore: a resume's, which it takes from its checkpoint, and
    another kind's (`check` takes them all)."""
    from purejaxppo.host.record import WHAT

    given = _given(args)
    own = {"run": (), "sweep": SWEEP_OPTIONS, "pbt": PBT_OPTIONS + ("seeds",), "tune": TUNE_OPTIONS}[kind]
    for name in dict.fromkeys(SWEEP_OPTIONS + PBT_OPTIONS + TUNE_OPTIONS):
        if name in given and (name not in own or args.resume):
            flag = f"--{name.replace('_', '-')}"
            what = (f"a resumed {WHAT[kind]} keeps its {flag} from the checkpoint" if name in own
                    else f"a {WHAT[kind]} takes no {flag}")
            raise ConfigError(f"{flag}: {what}; drop {flag}")


def _prepared(args: argparse.Namespace, kind: str) -> Any:
    """The command's run, sweep, PBT run or search, prepared (checked, nothing compiled) from its options."""
    import jax

    from purejaxppo.host.prepare import default_run_dir
    from purejaxppo.host.record import WHAT

    config = _load(args)
    point = _resume_point(args)
    if point is not None and args.run_dir:
        raise ConfigError(f"--run-dir: a resumed {kind} continues in its own run dir; drop --run-dir")
    if jax.process_count() > 1 and not (args.resume or args.run_dir):
        raise ConfigError(f"--run-dir: a multi-process {WHAT[kind]} needs one, the same folder for every process "
                          f"(shared storage)")
    run_dir = Path(args.resume or args.run_dir or default_run_dir(config, kind=kind))
    if kind == "run":
        from purejaxppo.single import prepare_train

        devices = jax.device_count()
        if args.cpu_devices is not None and config.num_envs % devices:
            raise ConfigError(f"--cpu-devices: num_envs = {config.num_envs} does not split evenly over {devices} "
                              f"devices")
        return prepare_train(config, run_dir, resume=point or False)
    if kind == "sweep":
        from purejaxppo.sweep import parse_grid, prepare_sweep

        return prepare_sweep(config, args.seeds or 8, parse_grid(args.grid), run_dir, args.max_runs_per_call,
                             resume=point or False)
    if kind == "tune":
        return _prepared_search(args, config, run_dir, point)
    from purejaxppo.pbt import PBTConfig, parse_explore, prepare_pbt

    try:
        perturb = tuple(float(f) for f in args.perturb.split(","))
    except ValueError:
        raise ConfigError(f"--perturb: comma-separated factors, e.g. 0.8,1.25; got {args.perturb!r}") from None
    spec = None
    if point is None and not args.explore:
        raise ConfigError("--explore: name the hyperparameters to explore, e.g. --explore lr,ent_coef=0:0.05")
    elif point is None:
        spec = PBTConfig(args.population or 8, parse_explore(args.explore, config), args.interval, args.quantile,
                         perturb, args.resample, args.score, args.seeds or 1)
    return prepare_pbt(config, spec, run_dir, resume=point or False)


def _prepared_search(args: argparse.Namespace, config: config_lib.PPOConfig, run_dir: Path, point: Any) -> Any:
    from purejaxppo.tune import TuneConfig, parse_space, prepare_tune

    spec = None
    if point is None:
        if not args.space:
            raise ConfigError("--space: name the hyperparameters to tune, e.g. --space lr=log:1e-4:1e-2")
        minimum = args.min_budget or 0
        if minimum % config.batch_size:
            raise ConfigError(f"--min-budget: {minimum:,} env steps is not a whole number of updates of "
                              f"{config.batch_size:,} env steps")
        given = _given(args)
        spec = TuneConfig(tuple(parse_space(s, config) for s in args.space), args.trials or 32, args.slots or 8,
                          args.eta or 3, minimum // config.batch_size,
                          args.interval if "interval" in given else 0, args.scheduler or "asha",
                          args.sampler or "random", args.score if "score" in given else "episode_return")
    return prepare_tune(config, spec, run_dir, resume=point or False)


def _stopped(result: Any, run_dir: Path, command: str) -> int:
    print(f"stopped at update {result.update}, which checkpoint {result.update} holds. Resume with:\n"
          f"  purejaxppo {command} --resume {run_dir}", flush=True)
    return 0


def _superseded(result: Any, resumed: bool, run_dir: Path, say: Callable[..., None]) -> None:
    if result.superseded is not None and resumed:
        say(f"the checkpoints after update {result.first_update}, and the metrics as they were, are in "
            f"{result.superseded}", flush=True)
    elif result.superseded is not None:
        say(f"the files of the earlier run in {run_dir}, which ended before its first checkpoint, are in "
            f"{result.superseded}", flush=True)


def _train(args: argparse.Namespace) -> int:
    from purejaxppo.host.processes import is_primary

    prepared = _prepared(args, "run")
    config, run_dir = prepared.config, prepared.run_dir
    primary = is_primary()
    say = print if primary else (lambda *_, **__: None)  # the other processes of a multi-host run stay quiet
    say(prepared.describe(), flush=True)
    progress = ProgressPrinter(config.num_updates * config.batch_size, show=primary)
    try:
        result = prepared.run(on_progress=progress)
    finally:
        progress.close()
    _superseded(result, bool(args.resume), run_dir, say)
    if result.stopped:
        return _stopped(result, run_dir, "train") if primary else 0
    say(
        f"final return {result.final_return:.2f} (mean over the last 10% of updates)\n"
        f"env steps    {result.env_steps:,}\n"
        f"compile time {result.compile_time:.2f} s\n"
        f"run time     {result.run_time:.2f} s\n"
        f"throughput   {result.steps_per_second:,.0f} env steps/s\n"
        f"metrics      {run_dir / 'metrics.csv'}",
        flush=True,
    )
    return 0


def _run_printed(args: argparse.Namespace, kind: str, run: Callable[..., Any]) -> tuple[Any, Any]:
    """A sweep, PBT run or search: prepared from the command's options, its plan printed, run by the front
    end's `run` with progress lines, and where it resumed, what it set aside said. Returns both."""
    prepared = _prepared(args, kind)
    print(prepared.describe(), flush=True)
    progress = ProgressPrinter(prepared.population.num_updates * prepared.config.batch_size)
    try:
        result = run(prepared, on_progress=progress)
    finally:
        progress.close()
    _superseded(result, bool(args.resume), prepared.run_dir, print)
    return prepared, result


def _sweep(args: argparse.Namespace) -> int:
    from purejaxppo.sweep import run_sweep

    prepared, result = _run_printed(args, "sweep", run_sweep)
    config, run_dir, grid = prepared.config, prepared.run_dir, prepared.record.grid
    if result.stopped:
        return _stopped(result, run_dir, "sweep")
    total_steps = len(result.runs) * config.num_updates * config.batch_size
    print(f"compile time {result.compile_time:.2f} s, run time {result.run_time:.2f} s, "
          f"{total_steps / result.run_time:,.0f} env steps/s over all runs, {result.num_calls} call(s)")
    rows = sorted(result.aggregate(), key=lambda r: -r["iqm"] if math.isfinite(r["iqm"]) else math.inf)
    keys = list(grid)
    header = "  ".join([*(f"{k:>12}" for k in keys), f"{'IQM final return [95% CI]':>32}",
                        f"{'mean [95% CI]':>28}"])
    print(header)
    for row in rows[: args.top]:
        print("  ".join([*(f"{row[k]:>12.4g}" for k in keys),
                         f"{row['iqm']:>10.2f} [{row['iqm_low']:.2f}, {row['iqm_high']:.2f}]".rjust(32),
                         f"{row['mean']:>8.2f} [{row['mean_low']:.2f}, {row['mean_high']:.2f}]".rjust(28)]))
    print(f"results      {run_dir}/runs.csv, aggregate.csv, curves.png, metrics.csv")
    return 0


def _pbt(args: argparse.Namespace) -> int:
    from purejaxppo.host import metrics as metrics_lib
    from purejaxppo.pbt import run_pbt

    prepared, result = _run_printed(args, "pbt", run_pbt)
    config, run_dir = prepared.config, prepared.run_dir
    total = config.num_updates * config.batch_size
    if result.stopped:
        return _stopped(result, run_dir, "pbt")
    steps = len(result.population) * total
    print(f"compile time {result.compile_time:.2f} s, run time {result.run_time:.2f} s, "
          f"{steps / result.run_time:,.0f} env steps/s over all members")
    for g, best in enumerate(result.best()):
        member = result.population.members[best]
        values = ", ".join(f"{e.name}={float(getattr(result.state.hparams, e.name)[best]):.4g}"
                           for e in result.spec.explore)
        last = metrics_lib.last_finite(result.metrics["episode_return"][best])
        print(f"population {g}: best member {best} (seed {member.seed}), last return {last:.2f}, now {values}")
    print(f"results      {run_dir}/lineage.csv, pbt.png, runs.csv, metrics.csv; load_policy({str(run_dir)!r}) "
          f"loads the best member")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from purejaxppo.tune import run_tune

    prepared, result = _run_printed(args, "tune", run_tune)
    config, run_dir = prepared.config, prepared.run_dir
    if result.stopped:
        return _stopped(result, run_dir, "tune")
    trials = result.search.trials
    used = sum(t.updates for t in trials) * config.batch_size
    print(f"compile time {result.compile_time:.2f} s, run time {result.run_time:.2f} s, {used:,} env steps of "
          f"trials, {used / result.run_time:,.0f} env steps/s")
    counts = {s: sum(t.status == s for t in trials) for s in ("finished", "stopped", "diverged")}
    print(f"trials       {len(trials)}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    best = result.best()
    if best is not None:
        values = ", ".join(f"{k}={v:.4g}" for k, v in best.values.items())
        print(f"best trial   {best.id} (seed {best.seed}): {values}; final score {best.scores[-1]:.2f}")
    print(f"results      {run_dir}/trials.csv, tune.png, best.yaml, metrics.csv; load_policy({str(run_dir)!r}) "
          f"loads the best trial, and purejaxppo train {run_dir / 'best.yaml'} trains it again")
    return 0


def _check(args: argparse.Namespace) -> int:
    print(_prepared(args, _kind(args)).describe())
    return 0


def _eval(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from purejaxppo.host.trained import evaluate_run

    trained, returns, lengths = evaluate_run(args.run_dir, args.episodes, args.step, args.run, args.seed)
    returns, lengths = jax.device_get((returns, lengths))
    record = trained.record
    print(f"{record.config.env}, checkpoint {trained.step} ({trained.step * record.config.batch_size:,} env steps), "
          f"{args.episodes} deterministic episodes: return {np.mean(returns):.2f} +- {np.std(returns):.2f} "
          f"(mean +- std), length {np.mean(lengths):.1f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from purejaxppo.host.export import export_policy

    exported = export_policy(args.run_dir, args.format, args.out, step=args.step, run=args.run,
                             stochastic=args.stochastic, value=args.value)
    shown = lambda items: ", ".join(f"{n}[{','.join(map(str, s))}] {d}" for n, s, d in items)  # noqa: E731
    interface = exported.interface
    print(f"wrote {exported.path} ({args.format}): {shown(interface.inputs)} -> {shown(interface.outputs)}")
    if exported.initial_carry is not None:
        print(f"wrote {exported.initial_carry}: the initial carry for a batch of observations")
    print(f"wrote {exported.metadata}: its inputs, outputs, spaces and source (checkpoint {exported.step})")
    return 0


def _render(args: argparse.Namespace) -> int:
    from purejaxppo.host.video import render_run

    done = render_run(args.run_dir, args.out, args.episodes, args.step, args.run, args.seed, args.stochastic,
                      args.max_steps)
    returns = ", ".join(f"{r:.2f}" for r in done.returns)
    print(f"wrote {done.path}: {done.frames} frames of {done.size[1]}x{done.size[0]}, checkpoint {done.step}, "
          f"{len(done.returns)} episode(s), return {returns}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from purejaxppo import plots

    out = plots.image_path(args.out, f"{args.metric}.png") if args.out else (
        Path(args.run_dirs[0]) / f"{args.metric}.png" if len(args.run_dirs) == 1 else Path(f"{args.metric}.png"))
    curves = [plots.read_curves(d, args.metric) for d in args.run_dirs]
    plots.plot_learning_curves(curves, out, args.metric)
    print(f"wrote {out}")
    return 0


def _envs(_: argparse.Namespace) -> int:
    from purejaxppo.envs import known_envs, missing_families

    print("\n".join(known_envs()))
    for line in missing_families():
        print(f"not installed: {line}", file=sys.stderr)
    return 0


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_devices_set_by_environment() -> bool:
    """Whether the user's environment sets how many CPU devices JAX has (JAX_NUM_CPU_DEVICES, or XLA_FLAGS'
    xla_force_host_platform_device_count): then that count stands."""
    flags = os.environ.get("XLA_FLAGS", "")
    return "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in flags


def _population_size(args: argparse.Namespace, kind: str) -> int:
    """The runs of a sweep or PBT command: from its checkpoint on resume, else from its options."""
    point = _resume_point(args)
    if point is not None:
        return point.record.num_runs
    if kind == "pbt":
        return (args.population or 8) * (args.seeds or 1)
    if kind == "tune":
        return (args.slots or 8) + 1  # and the keeper
    from purejaxppo.sweep import parse_grid

    return (args.seeds or 8) * math.prod(len(v) for v in parse_grid(args.grid).values())


def _cpu_devices(args: argparse.Namespace, kind: str) -> int | None:
    """The CPU devices a command asks for: --cpu-devices; on a resume of a sweep or PBT run, the devices its
    checkpoint was written with; for a new sweep, one per CPU core, no more than its runs (per call). None
    where the user's environment already sets the count, and for a new run or PBT run without the option
    (one device)."""
    asked = getattr(args, "cpu_devices", None)
    if asked is not None or kind == "run":
        return asked
    if cpu_devices_set_by_environment():
        return None
    point = _resume_point(args)
    if point is not None:  # each of several processes (hosts) holds its share of the devices
        from purejaxppo.host.processes import count

        return max(1, point.record.devices // count())
    if kind in ("pbt", "tune"):
        return None
    runs = _population_size(args, kind)
    if args.max_runs_per_call:
        runs = min(runs, args.max_runs_per_call)
    return max(1, min(cpu_cores(), runs))


def _set_cpu_devices(args: argparse.Namespace) -> None:
    """How many devices JAX's CPU backend has: set before JAX starts it (loading a config builds env arrays),
    for the whole process. Where JAX has already started (`main` called from a program that used JAX),
    its devices stay; asking for another count is then an error."""
    if args.command not in ("train", "sweep", "pbt", "tune", "check"):
        return
    kind = _kind(args)  # a check of a resume reads its checkpoint for it; the other commands read nothing
    _refuse_ignored(args, kind)
    count = _cpu_devices(args, kind)
    if count is None:
        return
    asked = getattr(args, "cpu_devices", None)
    runs = _population_size(args, kind) if asked is not None and kind != "run" else None
    if runs is not None and asked > runs:
        raise ConfigError(f"--cpu-devices: {asked} devices for {runs} run(s) would pad the population to {asked} runs, "
                          f"one a device, and train the filler runs too; use at most {runs}")
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if asked is not None and asked != have:
            raise ConfigError(f"--cpu-devices: JAX has already started with {have} CPU device(s) in this process; "
                              f"set jax_num_cpu_devices before any JAX work") from None


def _initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize, before JAX does anything else (loading a config builds env arrays)."""
    given = tuple(getattr(args, name, None) for name in ("coordinator", "num_processes", "process_id"))
    if getattr(args, "distributed", False) or any(v is not None for v in given):
        from purejaxppo.host import processes

        processes.initialize(*given)


# What orbax's writer threads and asyncio's loops report again, as exceptions nobody can catch, during
# and after a failed save or read, and at exit. The one `purejaxppo: error:` line has said it all.
SHUTDOWN_NOISE = ("Event loop is closed", "sys.meta_path is None", "orbax", "tensorstore")


def _quiet_library_noise() -> None:
    logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax logs its threads' failures through absl
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # and asyncio its tasks' ("never retrieved")
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # a read-only home: it falls back to a temporary folder
    # orbax's save coroutines, left unawaited when a save fails, warn at interpreter exit
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    default = sys.unraisablehook
    if getattr(default, "quiets_library_noise", False):  # main called again in this process
        return

    def hook(unraisable: Any) -> None:
        # a Ctrl-C that landed in a garbage-collection callback is dropped there; host.signals.StopSignal
        # recorded it, and the run raises it again itself
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        if not any(n in f"{unraisable.exc_value} {unraisable.object!r}" for n in SHUTDOWN_NOISE):
            default(unraisable)

    hook.quiets_library_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


# The exit status of each kind of error a user can cause (a CheckpointError is a ConfigError: 2).
EXIT_STATUS: dict[type[Exception], int] = {ConfigError: 2, NonFiniteError: EXIT_NON_FINITE, SaveError: EXIT_SAVE_FAILED,
                                           DeviceError: EXIT_DEVICE}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status. It may set JAX's CPU device count for the process
    (`--cpu-devices`, a sweep's default) and call `jax.distributed.initialize`, both before other JAX work.
    One of several processes under `jax.distributed` prints only its errors unless it is process 0, and
    one that fails ends at once (`_one_of_several`)."""
    args = _parser().parse_args(argv)
    _quiet_library_noise()
    commands = {"train": _train, "sweep": _sweep, "pbt": _pbt, "tune": _tune, "check": _check, "eval": _eval, "export": _export,
                "render": _render, "plot": _plot, "envs": _envs}
    try:
        _initialize_distributed(args)  # first: a resume's devices are shared out over its processes
        _set_cpu_devices(args)
    except ConfigError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return 2
    with _one_of_several() as ended:
        ended.status, ended.error = _command(commands[args.command], args)
    return ended.status


@contextlib.contextmanager
def _one_of_several() -> Iterator[Any]:
    """Under `jax.distributed`: all but process 0 print nothing to stdout; a process that fails tells the
    others why (they may be waiting for it to agree on the run) and ends at once, so that their collectives
    fail rather than wait, and JAX's shutdown, which would wait for every process, is skipped."""
    from purejaxppo.host import processes

    ended = types.SimpleNamespace(status=0, error="")
    if not processes.distributed():
        yield ended
        return
    quiet = None if processes.is_primary() else open(os.devnull, "w")  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(quiet or sys.stdout):
            yield ended
    except BaseException:  # a bug's traceback: the others must not wait for this process either
        traceback.print_exc()
        ended.status, ended.error = 1, "it failed (see its traceback)"
    if ended.status != 0:
        processes.refuse(ended.error or f"it ended with exit status {ended.status}")
        processes.leaving()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ended.status)


def _command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> tuple[int, str]:
    """The command's exit status, and the one line it printed to stderr where it failed."""

    def failed(status: int, line: str) -> tuple[int, str]:
        print(f"purejaxppo: {line}", file=sys.stderr)
        return status, line.removeprefix("error: ")

    try:
        return command(args), ""
    except (ConfigError, NonFiniteError, SaveError, DeviceError) as err:
        return failed(next(status for kind, status in EXIT_STATUS.items() if isinstance(err, kind)), f"error: {err}")
    except OSError as err:  # a path the user gave that cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        return failed(2, f"error: {where}{err.strerror or err}")
    except Interrupted as err:  # a second Ctrl-C once the run had begun to write its run dir
        return failed(EXIT_INTERRUPTED, f"interrupted; {err}")
    except KeyboardInterrupt:
        # once a run writes its run dir, Ctrl-C is a stop request (a checkpoint, then exit 0); this one came
        # before that
        return failed(EXIT_INTERRUPTED, "interrupted before training started; nothing was written")
    except Exception as err:
        if not is_device_error(err):
            raise
        advice = "episodes: evaluate fewer" if args.command == "eval" else "num_envs: use fewer envs or steps"
        return failed(EXIT_DEVICE, f"error: {device_error(err, advice)}")


# An interrupted command's process ends within this many seconds, whatever interpreter shutdown waits on
# (an XLA computation that never returns keeps its thread busy for ever).
EXIT_WITHIN_S = 10.0


def _exit_within(status: int, seconds: float) -> None:
    """End the process with `status` after `seconds`, should it still be shutting down then: from a thread
    (which needs Python to run), and, last, faulthandler's C watchdog (which does not; it exits 1)."""

    def force() -> None:
        time.sleep(seconds)
        os._exit(status)

    threading.Thread(target=force, daemon=True, name="purejaxppo-exit").start()
    faulthandler.dump_traceback_later(seconds + 5, exit=True, file=open(os.devnull, "w"))  # noqa: SIM115


def entry() -> NoReturn:
    """The `purejaxppo` command: `main`, and an interrupted command's bounded exit."""
    status = main()
    if status == EXIT_INTERRUPTED:
        _exit_within(status, EXIT_WITHIN_S)
    sys.exit(status)


if __name__ == "__main__":
    entry()
