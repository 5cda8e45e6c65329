"""Example sweep: lr x 16 seeds on CartPole-v1, all runs in one compiled call.

    python experiments/sweep_cartpole_lr.py [--seeds 16] [--out experiments/results/sweep_cartpole_lr]

Equivalent CLI: purejaxppo sweep configs/cartpole.yaml --seeds 16 --grid lr=3e-4,1e-3,2e-3,5e-3
    --set total_timesteps=200000
Trains in a temporary run dir, then copies config.yaml, runs.csv, aggregate.csv and curves.png into
--out, with a README.md of the command, machine and date (metrics.csv, every run's every update, is
left out of the repo). Like `purejaxppo sweep`, it gives JAX one CPU device per core.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo.cli import cpu_cores  # noqa: E402
from purejaxppo.sweep import sweep  # noqa: E402
from experiments.benchmark import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--lrs", default="3e-4,1e-3,2e-3,5e-3")
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "sweep_cartpole_lr"))
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", cpu_cores())

    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", [f"total_timesteps={args.total_timesteps}"])
    grid = {"lr": [float(x) for x in args.lrs.split(",")]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the run dir's checkpoints are not results
        result = sweep(config, seeds=args.seeds, grid=grid, run_dir=Path(tmp) / "run")
        for name in ("config.yaml", "runs.csv", "aggregate.csv", "curves.png"):
            shutil.copy2(Path(tmp) / "run" / name, out / name)
    (out / "sweep.json").unlink(missing_ok=True)  # written by earlier versions; runs.csv holds the grid and seeds
    runs = len(result.runs)
    lines = [
        f"{runs} runs of {config.num_updates * config.batch_size:,} env steps: compile {result.compile_time:.1f} s, "
        f"run {result.run_time:.1f} s ({runs * config.num_updates * config.batch_size / result.run_time:,.0f} "
        f"env steps/s), {result.num_calls} call(s) of one compiled program",
        *(f"lr {row['lr']:<8g} IQM {row['iqm']:7.1f} [{row['iqm_low']:.1f}, {row['iqm_high']:.1f}]  "
          f"mean {row['mean']:7.1f} [{row['mean_low']:.1f}, {row['mean_high']:.1f}]" for row in result.aggregate()),
    ]
    print("\n".join(lines))
    command = " ".join(["python experiments/sweep_cartpole_lr.py", *sys.argv[1:]])
    (Path(args.out) / "README.md").write_text(
        f"# CartPole-v1: learning rate x {args.seeds} seeds in one sweep\n\n"
        f"Command: `{command}`  \nDate: {datetime.now():%Y-%m-%d %H:%M}  \nMachine: {machine()}\n\n"
        "Final return: the mean over the last 10% of updates; IQM and mean over seeds with stratified-bootstrap "
        "95% CIs (`aggregate.csv`); per run in `runs.csv`; curves in `curves.png`.\n\n```\n" + "\n".join(lines) + "\n```\n"
    )


if __name__ == "__main__":
    main()
