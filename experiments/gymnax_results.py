"""Train every shipped gymnax config for a few seeds and write experiments/results/gymnax.md.

    python experiments/gymnax_results.py [--seeds 3] [--configs cartpole acrobot ...]

Each run is a separate `purejaxppo train` (compile included in its wall time, cold: the persistent
compilation cache is off, so a seed after the first does not load the first's program). The table reports the
final return (mean over the last 10% of updates) per seed, and the first env step at which the
return, smoothed over 5 updates, reached the config's target.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo import train  # noqa: E402

# (config file, target return) — targets come from the issue that asked for each config.
CASES = {
    "cartpole": 450.0,
    "acrobot": -100.0,
    "pendulum": -200.0,
    "mountaincar_continuous": 90.0,
    "breakout_minatar": 10.0,
}


def first_step_reaching(steps: np.ndarray, returns: np.ndarray, target: float, window: int = 5) -> float:
    """First env step at which the mean of the last `window` finite per-update returns >= target."""
    finite = np.isfinite(returns)
    seen: list[float] = []
    for step, ret, ok in zip(steps, returns, finite):
        if ok:
            seen.append(ret)
            if len(seen) >= window and np.mean(seen[-window:]) >= target:
                return float(step)
    return float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=list(CASES))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "gymnax.md"))
    args = parser.parse_args()

    rows = []
    for name in args.configs:
        base = config_lib.load(ROOT / "configs" / f"{name}.yaml", ["compilation_cache="])
        finals, reach, walls, compiles = [], [], [], []
        for seed in range(args.seeds):
            result = train(base.replace(seed=seed))
            finals.append(result.final_return)
            reach.append(first_step_reaching(result.metrics["env_steps"][0], result.metrics["episode_return"][0],
                                             CASES[name]))
            walls.append(result.compile_time + result.run_time)
            compiles.append(result.compile_time)
            print(f"{base.env} seed {seed}: final {result.final_return:.1f}, reached {CASES[name]} at {reach[-1]:,.0f} "
                  f"steps, {walls[-1]:.1f} s", flush=True)
        rows.append(
            f"| {base.env} | `configs/{name}.yaml` | {base.num_updates * base.batch_size:,} | "
            f"{np.mean(finals):.1f} ± {np.std(finals):.1f} | {', '.join(f'{f:.1f}' for f in finals)} | "
            f"{CASES[name]:g} | {', '.join('never' if np.isnan(r) else f'{r:,.0f}' for r in reach)} | "
            f"{np.mean(compiles):.1f} | {np.mean(walls):.1f} |"
        )

    text = "\n".join(
        [
            "# gymnax results",
            "",
            f"Produced by `python experiments/gymnax_results.py --seeds {args.seeds}` on {date.today()}.",
            f"Machine: {cpu_name()}, {jax.device_count()} JAX device(s) ({jax.devices()[0].platform}), "
            f"{__import__('os').cpu_count()} cores; JAX {jax.__version__}, Python {platform.python_version()}.",
            "",
            "Final return: mean of `episode_return` over the last 10% of updates, per seed (seeds 0..N-1).",
            "Reached target: first env step at which the mean return of 5 consecutive updates with completed",
            "episodes met the target. Wall time: one run, compile included.",
            "",
            "| env | config | env steps | final return (mean ± std) | per seed | target | reached target at | "
            "compile s | wall s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
