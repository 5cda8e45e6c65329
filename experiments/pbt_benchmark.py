"""PBT against a grid at the same env steps: Pendulum-v1 with the learning rate unknown over three decades.

    PYTHONPATH=. python experiments/pbt_benchmark.py [--seeds 5] [--population 8] [--interval 8]
        [--out experiments/results/pbt.md]

Both sides train `population` runs per seed from configs/pendulum.yaml, one compiled program each:
- PBT: `seeds` independent populations of `population` members exploring lr in [1e-5, 1e-2] (members
  start log-uniform in it), every `interval` updates;
- the grid: `population` learning rates log-spaced over the same range, each with `seeds` seeds.
Per seed, the PBT population's best member (by its last interval) against the grid's best point (by its
final return): IQM over seeds with 95% stratified-bootstrap CIs, the members' and points' means, and the
wall time of each side. Writes the figures between the page's markers (the rest of the page is kept)
and a plot beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

LOW, HIGH = 1e-5, 1e-2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--interval", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="total_timesteps (default: the config's)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pbt.md"))
    args = parser.parse_args()

    from benchmark import machine, write_report

    from purejaxppo import config as config_lib
    from purejaxppo.host import stats
    from purejaxppo.pbt import PBTConfig, parse_explore, pbt
    from purejaxppo.sweep import sweep

    overrides = [f"total_timesteps={args.steps}"] if args.steps else []
    config = config_lib.load(ROOT / "configs" / "pendulum.yaml", overrides)
    spec = PBTConfig(args.population, parse_explore(f"lr={LOW}:{HIGH}", config), interval=args.interval,
                     seeds=args.seeds)
    grid = [float(x) for x in np.logspace(np.log10(LOW), np.log10(HIGH), args.population)]

    clock = time.perf_counter()
    ours = pbt(config, spec)
    pbt_wall = time.perf_counter() - clock
    clock = time.perf_counter()
    fixed = sweep(config, seeds=args.seeds, grid={"lr": grid})
    grid_wall = time.perf_counter() - clock

    finals_pbt = ours.final_returns()  # members, population-major
    best = ours.best()
    pbt_best = np.array([finals_pbt[b] for b in best])
    finals_grid = fixed.final_returns().reshape(len(grid), args.seeds)  # point-major, then seed
    grid_best_point = finals_grid.argmax(axis=0)
    grid_best = finals_grid.max(axis=0)

    def summary(values: np.ndarray) -> str:
        low, high = stats.stratified_bootstrap_ci(values, stats.iqm)
        return f"{stats.iqm(values):.1f} [{low:.1f}, {high:.1f}]"

    steps = config.num_updates * config.batch_size
    command = "PYTHONPATH=. python experiments/pbt_benchmark.py " + " ".join(sys.argv[1:])
    final_lr = np.asarray(ours.state.hparams.lr)[best]
    lines = [
        f"Command: `{command.strip()}`  ",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}  ",
        f"Machine: {machine()}",
        "",
        f"Pendulum-v1 (`configs/pendulum.yaml`, {steps:,} env steps per run, its linear LR decay on top), with",
        f"the learning rate unknown within [{LOW:g}, {HIGH:g}]. PBT: {args.seeds} independent populations of",
        f"{args.population} members (`--seeds {args.seeds}`), exploring lr every {args.interval} updates "
        f"(quantile {spec.quantile}, perturb x{spec.perturb[0]}/x{spec.perturb[1]}, resample {spec.resample});",
        f"the grid: {args.population} learning rates log-spaced over the same range x {args.seeds} seeds. Each "
        "side is one compiled program",
        f"of {args.population * args.seeds} runs, so both spend {args.population * args.seeds * steps:,} env "
        "steps. Final return: the mean over the last 10% of updates.",
        "",
        "| | best of each seed: IQM [95% CI] | per seed | mean of all runs | wall time s (compile incl.) |",
        "|---|---|---|---|---|",
        f"| PBT, best member | {summary(pbt_best)} | {', '.join(f'{v:.1f}' for v in pbt_best)} | "
        f"{np.nanmean(finals_pbt):.1f} | {pbt_wall:.1f} |",
        f"| grid, best point | {summary(grid_best)} | {', '.join(f'{v:.1f}' for v in grid_best)} | "
        f"{np.nanmean(finals_grid):.1f} | {grid_wall:.1f} |",
        "",
        f"- PBT's wall time is {pbt_wall / grid_wall:.2f}x the grid's (its exploit step, and its chunks of "
        f"{args.interval} updates, against the grid's).",
        f"- The grid's best points: lr = {', '.join(f'{grid[i]:.2g}' for i in grid_best_point)}; PBT's best "
        f"members end at lr = {', '.join(f'{v:.2g}' for v in final_lr)} (before the schedule's decay).",
        "- Per-point grid finals (rows: lr; columns: seeds):",
        "",
        "| lr | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " |",
        "|---|" + "---|" * args.seeds,
        *(f"| {lr:.2g} | " + " | ".join(f"{v:.1f}" for v in row) + " |" for lr, row in zip(grid, finals_grid)),
        "",
        "![PBT against the grid](pbt.png)",
        "",
    ]
    out = Path(args.out)
    write_report(out, "\n".join(lines))
    plot(ours, fixed, best, grid_best_point, args.seeds, out.with_suffix(".png"))
    print("\n".join(lines))


def plot(ours, fixed, best, grid_best_point, seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from purejaxppo.pbt import lineage_rows
    from purejaxppo.plots import smooth_curves

    rows = lineage_rows(ours)
    steps = ours.metrics["env_steps"][0]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for g, b in enumerate(best):
        ax.plot(steps, smooth_curves(ours.metrics["episode_return"][b][None])[0], color="C0", alpha=0.8,
                label="PBT, best member per seed" if g == 0 else None)
        lineage = [r for r in rows if r["member"] == b]
        ax_lr.step([r["env_steps"] for r in lineage], [r["lr"] for r in lineage], where="post", color="C0", alpha=0.8)
    for s, point in enumerate(grid_best_point):
        run = point * seeds + s
        ax.plot(steps, smooth_curves(fixed.metrics["episode_return"][run][None])[0], color="C1", alpha=0.8,
                label="grid, best point per seed" if s == 0 else None)
    ax.set_ylabel("episode return")
    ax.legend()
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("best member's lr\n(as it was copied)")
    ax_lr.set_xlabel("env steps")
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
