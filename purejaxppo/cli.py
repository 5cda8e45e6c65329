"""The `purejaxppo` command line."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from purejaxppo import config as config_lib
from purejaxppo.config import ConfigError
from purejaxppo.console import ProgressPrinter
from purejaxppo.errors import DeviceError, Interrupted, NonFiniteError, SaveError, device_error, is_device_error

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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="purejaxppo", description="Fused, jit-compiled PPO in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one agent")
    train.add_argument("config", nargs="?", help="YAML config (default: configs/cartpole.yaml)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key; repeatable")
    train.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--step", type=_count(0), help="with --resume: the checkpoint (update count) to continue from")
    train.add_argument("--cpu-devices", type=_count(1), metavar="N",
                       help="JAX CPU devices to split the run's envs over (default 1; no effect on a GPU)")
    dist = train.add_argument_group(
        "multi-host", "run one training over several processes (hosts) with jax.distributed; start the same command "
        "in every process. --distributed alone lets JAX detect the cluster (SLURM, Open MPI, ...)")
    dist.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    dist.add_argument("--num-processes", type=_count(1), help="number of processes (implies --distributed)")
    dist.add_argument("--process-id", type=_count(0), help="this process's index, 0 to N-1 (implies --distributed)")

    sweep = sub.add_parser("sweep", help="train seeds x a hyperparameter grid in one compiled call")
    sweep.add_argument("config", nargs="?", help="YAML config (default: configs/cartpole.yaml)")
    sweep.add_argument("--seeds", type=_count(1), default=8, help="seeds per grid point (config seed, seed+1, ...)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a grid axis over a traced hyperparameter; repeatable (the grid is their product)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sweep.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    sweep.add_argument("--max-runs-per-call", type=_count(1),
                       help="split the runs into calls of about this many (rounded up to a multiple of the devices)")
    sweep.add_argument("--top", type=_count(0), default=10, help="grid points to list at the end")
    sweep.add_argument("--resume", metavar="RUN_DIR", help="continue the sweep in RUN_DIR from its latest checkpoint")
    sweep.add_argument("--step", type=_count(0), help="with --resume: the checkpoint (update count) to continue from")
    sweep.add_argument("--cpu-devices", type=_count(1), metavar="N",
                       help="JAX CPU devices to share the runs out over, one thread each (default: one per CPU core, "
                            "at most one per run; on --resume, the checkpoint's; no effect on a GPU)")

    pbt = sub.add_parser("pbt", help="population-based training inside one compiled program")
    pbt.add_argument("config", nargs="?", help="YAML config (default: configs/cartpole.yaml)")
    pbt.add_argument("--population", type=_count(1), default=8, help="members per population")
    pbt.add_argument("--explore", metavar="KEY[=LOW:HIGH],...",
                     help="traced hyperparameters to explore, each in a range (default: x1/4 to x4 of the config's)")
    pbt.add_argument("--interval", type=_count(1), default=10, help="updates between PBT steps")
    pbt.add_argument("--quantile", type=float, default=0.25, help="share of members replaced, and copied, per step")
    pbt.add_argument("--perturb", default="0.8,1.25", metavar="F1,F2,...",
                     help="factors a copied value is perturbed by")
    pbt.add_argument("--resample", type=float, default=0.25, help="probability a copied value is drawn afresh instead")
    pbt.add_argument("--score", default="episode_return", choices=("episode_return", "eval_return"),
                     help="what ranks members: the mean return over the interval, or deterministic episodes")
    pbt.add_argument("--seeds", type=_count(1), default=1, help="independent populations in the one program")
    pbt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pbt.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    pbt.add_argument("--resume", metavar="RUN_DIR", help="continue the PBT run in RUN_DIR from its latest checkpoint")
    pbt.add_argument("--step", type=_count(0), help="with --resume: the checkpoint (update count) to continue from")
    pbt.add_argument("--cpu-devices", type=_count(1), metavar="N",
                     help="JAX CPU devices to share the members out over (default 1; on --resume, the checkpoint's)")

    ev = sub.add_parser("eval", help="deterministic episodes of a trained policy")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--episodes", type=_count(1), default=10)
    ev.add_argument("--step", type=_count(0), help="checkpoint to evaluate (default: the latest)")
    ev.add_argument("--run", type=_count(0), default=None,
                    help="for a sweep: the run index (see runs.csv); for PBT: the member (default: the best)")
    ev.add_argument("--seed", type=_count(0), default=0, help="seed of the evaluation envs")

    render = sub.add_parser("render", help="write Brax's HTML viewer of one episode of a trained Brax policy")
    render.add_argument("run_dir", metavar="RUN_DIR")
    render.add_argument("--out", help="HTML file (default: RUN_DIR/render.html)")
    render.add_argument("--step", type=_count(0), help="checkpoint to render (default: the latest)")
    render.add_argument("--max-steps", type=_count(1), default=1000, help="longest episode to draw")
    render.add_argument("--seed", type=_count(0), default=0)

    plot = sub.add_parser("plot", help="learning curves of runs or sweeps against env steps")
    plot.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    plot.add_argument("--metric", default="episode_return", help="a column of metrics.csv (default: episode_return)")
    plot.add_argument("--out", help="image file (default: RUN_DIR/METRIC.png for one run dir, else METRIC.png)")

    sub.add_parser("envs", help="list the environments that can be trained")
    return parser


def _load(args: argparse.Namespace) -> config_lib.PPOConfig:
    if getattr(args, "resume", None):
        # the checkpoint's own config, unless another is given; overrides apply on top of either
        from purejaxppo import checkpoint

        if args.config:
            return config_lib.load(args.config, args.overrides)
        _, meta = checkpoint.read_meta(args.resume, args.step, {"train": "run"}.get(args.command, args.command))
        config = config_lib.from_dict(config_lib.apply_overrides(meta["config"], args.overrides))
        config_lib.check_given(config, [config_lib.parse_override(o)[0] for o in args.overrides])
        return config
    if getattr(args, "step", None) is not None:
        raise ConfigError("--step: only with --resume")
    # PPOConfig's defaults are configs/cartpole.yaml's values, for installs without the repo's configs/
    default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    return config_lib.load(args.config or default, args.overrides)


def _refuse_on_resume(args: argparse.Namespace, what: str, options: Sequence[str]) -> None:
    """Refuse options a resume would ignore, since it takes them from its checkpoint."""
    given = [name for name in options if name in getattr(args, "_given", ())]
    if given:
        flag = f"--{given[0].replace('_', '-')}"
        raise ConfigError(f"{flag}: a resumed {what} keeps its {flag} from the checkpoint; drop {flag}")


def _resume_hint(command: str, run_dir: Path, update: int) -> None:
    print(f"stopped at update {update}, which checkpoint {update} holds. Resume with:\n"
          f"  purejaxppo {command} --resume {run_dir}", flush=True)


def _train(args: argparse.Namespace) -> int:
    import jax

    from purejaxppo import runner

    config = _load(args)
    if args.resume and args.run_dir:
        raise ConfigError("--run-dir: a resumed run continues in its own run dir; drop --run-dir")
    if jax.process_count() > 1 and not (args.resume or args.run_dir):
        raise ConfigError("--run-dir: a multi-process run needs one, the same folder for every process (shared storage)")
    devices = jax.device_count()
    if args.cpu_devices is not None and config.num_envs % devices:
        raise ConfigError(f"--cpu-devices: num_envs = {config.num_envs} does not split evenly over {devices} devices")
    run_dir = Path(args.resume or args.run_dir or runner.default_run_dir(config))
    primary = runner.is_primary()
    say = print if primary else (lambda *_, **__: None)  # the other processes of a multi-host run stay quiet
    progress = ProgressPrinter(config.num_updates * config.batch_size, show=primary)
    verb = "resuming" if args.resume else "training"
    where = f" on {devices} devices" if devices > 1 and config.num_envs % devices == 0 else ""
    origin = f" from the policy in {config.init_from}" if config.init_from and not args.resume else ""
    header = (f"{verb} {config.env}{origin} for {config.num_updates * config.batch_size:,} env steps "
              f"({config.num_updates} updates){where}; writing {run_dir}")
    try:  # the header once every check has passed: a refused run prints its one error line alone
        result = runner.train(config, run_dir, on_progress=progress, resume=bool(args.resume), step=args.step,
                              on_ready=lambda: say(header, flush=True))
    finally:
        progress.close()
    if result.superseded is not None and args.resume:
        say(f"the checkpoints after update {result.first_update}, and the metrics as they were, are in "
            f"{result.superseded}", flush=True)
    elif result.superseded is not None:
        say(f"the files of the earlier run in {run_dir}, which ended before its first checkpoint, are in "
            f"{result.superseded}", flush=True)
    if result.stopped:
        if primary:
            _resume_hint("train", run_dir, result.update)
        return 0
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


def _sweep(args: argparse.Namespace) -> int:
    import jax

    from purejaxppo import runner
    from purejaxppo.sweep import check_grid, parse_grid, sweep

    config = _load(args)
    grid = parse_grid(args.grid)
    if args.resume:
        if args.grid or args.run_dir:
            raise ConfigError("--resume: a resumed sweep keeps its grid and run dir; drop --grid and --run-dir")
        _refuse_on_resume(args, "sweep", ("seeds", "max_runs_per_call"))
        from purejaxppo import checkpoint

        _, meta = checkpoint.resume_point(args.resume, args.step, "sweep", config)
        grid, args.seeds = meta["grid"], int(meta["num_seeds"])
    points = check_grid(config, grid)
    run_dir = Path(args.resume or args.run_dir or runner.default_run_dir(config, suffix="-sweep"))
    header = (f"sweep {config.env}: {len(points)} grid point(s) x {args.seeds} seed(s) = {len(points) * args.seeds} "
              f"runs of {config.num_updates * config.batch_size:,} env steps, one compiled program on "
              f"{len(jax.local_devices())} device(s); writing {run_dir}")

    progress = ProgressPrinter(config.num_updates * config.batch_size)
    result = sweep(config, args.seeds, grid, run_dir, args.max_runs_per_call, on_progress=progress,
                   resume=bool(args.resume), step=args.step, on_ready=lambda: print(header, flush=True))
    if result.superseded is not None:
        print(f"the earlier files that this sweep replaces are in {result.superseded}")
    if result.stopped:
        _resume_hint("sweep", run_dir, result.update)
        return 0
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
    import jax

    from purejaxppo import metrics as metrics_lib
    from purejaxppo import runner
    from purejaxppo.pbt import PBTConfig, parse_explore, pbt

    config = _load(args)
    try:
        perturb = tuple(float(f) for f in args.perturb.split(","))
    except ValueError:
        raise ConfigError(f"--perturb: comma-separated factors, e.g. 0.8,1.25; got {args.perturb!r}") from None
    if args.resume:
        if args.run_dir or args.explore:
            raise ConfigError("--resume: a resumed PBT run keeps its setup and run dir; drop --explore and --run-dir")
        _refuse_on_resume(args, "PBT run", ("population", "interval", "quantile", "perturb", "resample", "score", "seeds"))
        from purejaxppo import checkpoint

        spec = PBTConfig.from_meta(checkpoint.resume_point(args.resume, args.step, "pbt", config)[1]["pbt"])
    elif not args.explore:
        raise ConfigError("--explore: name the hyperparameters to explore, e.g. --explore lr,ent_coef=0:0.05")
    else:
        spec = PBTConfig(args.population, parse_explore(args.explore, config), args.interval, args.quantile, perturb,
                         args.resample, args.score, args.seeds)
    run_dir = Path(args.resume or args.run_dir or runner.default_run_dir(config, suffix="-pbt"))
    total = config.num_updates * config.batch_size

    def ready() -> None:
        print(f"pbt {config.env}: {spec.seeds} population(s) of {spec.population} members, exploring "
              f"{', '.join(e.name for e in spec.explore) or 'as before'} every {spec.interval} updates, "
              f"{total:,} env steps each, one compiled program on {len(jax.local_devices())} device(s); "
              f"writing {run_dir}", flush=True)

    progress = ProgressPrinter(total)
    result = pbt(config, spec, run_dir, progress, resume=bool(args.resume), step=args.step, on_ready=ready)
    if result.superseded is not None:
        print(f"the earlier files that this run replaces are in {result.superseded}")
    if result.stopped:
        _resume_hint("pbt", run_dir, result.update)
        return 0
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


def _eval(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from purejaxppo.acting import evaluate_run

    config, step, returns, lengths = evaluate_run(args.run_dir, args.episodes, args.step, args.run, args.seed)
    returns, lengths = jax.device_get((returns, lengths))
    print(f"{config.env}, checkpoint {step} ({step * config.batch_size:,} env steps), {args.episodes} deterministic "
          f"episodes: return {np.mean(returns):.2f} +- {np.std(returns):.2f} (mean +- std), "
          f"length {np.mean(lengths):.1f}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from purejaxppo.acting import render_html

    if args.max_steps < 1:
        raise ConfigError(f"--max-steps: must be >= 1, got {args.max_steps}")
    out = Path(args.out) if args.out else Path(args.run_dir) / "render.html"
    out.write_text(render_html(args.run_dir, args.step, args.max_steps, args.seed))
    print(f"wrote {out} (Brax's viewer; it loads its scripts from a CDN when opened)")
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


def _population_size(args: argparse.Namespace) -> int | None:
    """The runs of a sweep or PBT command: from its checkpoint on resume (None where it cannot be read: the
    resume itself reports that), else from its options."""
    if args.resume:
        from purejaxppo import checkpoint

        try:
            return int(checkpoint.read_raw_meta(args.resume, args.step)[1]["num_runs"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    if args.command == "pbt":
        return args.population * args.seeds
    from purejaxppo.sweep import parse_grid

    return args.seeds * math.prod(len(v) for v in parse_grid(args.grid).values())


def _sweep_cpu_devices(args: argparse.Namespace) -> int | None:
    """A sweep's default: one CPU device per core, no more than its runs (per call); on resume (of a sweep or
    a PBT run), the devices the checkpoint was written with (1 for checkpoints that do not say). None for a
    new PBT run (one device unless --cpu-devices), and where the user's environment already sets the CPU
    device count."""
    if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if args.resume:
        from purejaxppo import checkpoint

        try:
            return int(checkpoint.read_raw_meta(args.resume, args.step)[1].get("devices", 1))
        except (OSError, ValueError, AttributeError):
            return None  # the resume itself reports what is wrong with the checkpoint
    if args.command == "pbt":
        return None
    runs = _population_size(args)
    if args.max_runs_per_call:
        runs = min(runs, args.max_runs_per_call)
    return max(1, min(cpu_cores(), runs))


def _set_cpu_devices(args: argparse.Namespace) -> None:
    """How many devices JAX's CPU backend has: set before JAX starts it (loading a config builds env arrays),
    for the whole process. Where JAX has already started (`main` called from a program that used JAX),
    its devices stay; asking for another count is then an error."""
    asked = getattr(args, "cpu_devices", None)
    count = asked if asked is not None else _sweep_cpu_devices(args) if args.command in ("sweep", "pbt") else None
    if count is None:
        return
    if count < 1:
        raise ConfigError(f"--cpu-devices: must be >= 1, got {count}")
    runs = _population_size(args) if asked is not None and args.command in ("sweep", "pbt") else None
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
    given = {"coordinator_address": getattr(args, "coordinator", None),
             "num_processes": getattr(args, "num_processes", None), "process_id": getattr(args, "process_id", None)}
    if not getattr(args, "distributed", False) and all(v is None for v in given.values()):
        return
    import jax

    try:
        jax.distributed.initialize(**given)
    except (ValueError, RuntimeError) as err:  # no cluster detected, a bad address, a timeout
        message = " ".join(str(err).split())
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {message}") from None


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
        # a Ctrl-C that landed in a garbage-collection callback is dropped there; runner.StopSignal
        # recorded it, and the run raises it again itself
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        if not any(n in f"{unraisable.exc_value} {unraisable.object!r}" for n in SHUTDOWN_NOISE):
            default(unraisable)

    hook.quiets_library_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status. It may set JAX's CPU device count for the process
    (`--cpu-devices`, a sweep's default) and call `jax.distributed.initialize`, both before other JAX work."""
    args = _parser().parse_args(argv)
    _quiet_library_noise()
    commands = {"train": _train, "sweep": _sweep, "pbt": _pbt, "eval": _eval, "render": _render, "plot": _plot,
                "envs": _envs}
    try:
        _set_cpu_devices(args)
        _initialize_distributed(args)
        return commands[args.command](args)
    except ConfigError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return EXIT_NON_FINITE
    except SaveError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return EXIT_SAVE_FAILED
    except DeviceError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return EXIT_DEVICE
    except OSError as err:  # a path the user gave that cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        print(f"purejaxppo: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except Interrupted as err:  # a second Ctrl-C once the run had begun to write its run dir
        print(f"purejaxppo: interrupted; {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        # once a run writes its run dir, Ctrl-C is a stop request (a checkpoint, then exit 0); this one came
        # before that
        print("purejaxppo: interrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if not is_device_error(err):
            raise
        advice = "episodes: evaluate fewer" if args.command == "eval" else "num_envs: use fewer envs or steps"
        print(f"purejaxppo: error: {device_error(err, advice)}", file=sys.stderr)
        return EXIT_DEVICE


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
