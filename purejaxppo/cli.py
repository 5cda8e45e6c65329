"""The `purejaxppo` command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from purejaxppo import config as config_lib
from purejaxppo.config import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cartpole.yaml"  # the repo checkout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purejaxppo", description="Fused, jit-compiled PPO in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one agent")
    train.add_argument("config", nargs="?", help="YAML config (default: configs/cartpole.yaml)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key; repeatable")
    train.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")

    sub.add_parser("envs", help="list the environments that can be trained")
    return parser


class _Progress:
    """A rich progress bar on a terminal; one plain line per chunk elsewhere (logs, CI, pipes)."""

    def __init__(self, total_steps: int):
        from rich.console import Console

        self.console = Console()
        self._bar = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
                TextColumn("{task.fields[sps]:,.0f} steps/s"), TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(), console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, sps=0, ret="-")
            self._bar.start()

    def __call__(self, p: dict[str, Any]) -> None:
        ret = "-" if math.isnan(p["episode_return"]) else f"{p['episode_return']:.1f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=p["env_steps"], sps=p["steps_per_second"], ret=ret)
        else:
            print(f"update {p['update']}/{p['num_updates']}  env steps {p['env_steps']:,}  "
                  f"{p['steps_per_second']:,.0f} steps/s  return {ret}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _train(args: argparse.Namespace) -> int:
    from purejaxppo import runner

    # PPOConfig's defaults are configs/cartpole.yaml's values, for installs without the repo's configs/
    default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    config = config_lib.load(args.config or default, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else runner.default_run_dir(config)
    progress = _Progress(config.num_updates * config.batch_size)
    print(f"training {config.env} for {config.num_updates * config.batch_size:,} env steps "
          f"({config.num_updates} updates); writing {run_dir}", flush=True)
    try:
        result = runner.train(config, run_dir, on_chunk=progress)
    finally:
        progress.close()
    print(
        f"final return {result.final_return:.2f} (mean over the last 10% of updates)\n"
        f"env steps    {result.env_steps:,}\n"
        f"compile time {result.compile_time:.2f} s\n"
        f"run time     {result.run_time:.2f} s\n"
        f"throughput   {result.steps_per_second:,.0f} env steps/s\n"
        f"metrics      {run_dir / 'metrics.csv'}",
        flush=True,
    )
    return 0


def _envs(_: argparse.Namespace) -> int:
    from purejaxppo.envs import known_envs

    print("\n".join(known_envs()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": _train, "envs": _envs}[args.command](args)
    except ConfigError as err:
        print(f"purejaxppo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
