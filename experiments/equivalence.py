"""How far a sweep's run equals the same run trained alone, and a run split over devices equals the
one-device run: the horizon of float agreement, and the gap it leaves in the final return.

    PYTHONPATH=. python experiments/equivalence.py [--seeds 8] [--steps 100000]
        [--out experiments/results/equivalence.md]

Both pairs run the same arithmetic in a different order (a batched program; reductions split over
devices), so they agree to float rounding at first, and training then amplifies the rounding. For
CartPole-v1 (configs/cartpole.yaml, shortened to --steps) it reports, per pair of runs:
- the first update whose metrics differ at all, and the first whose policy loss, value loss or
  episode return differ by more than 1e-4 relative;
- the final return (mean over the last 10% of updates) of each, and their gap.
Sweep: seeds x lr in {1e-3, 2e-3} in one call, each run against `purejaxppo.train` with its seed and lr.
Devices: one run on 2 CPU devices (its envs split) against the same run on 1, per seed, each side in
a fresh process with JAX's CPU device count set; with the shipped config (32 envs), and with 8 envs
and observation normalisation (whose statistics are a cross-device reduction too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMPARED = ("policy_loss", "value_loss", "episode_return")


def divergence(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[int | None, int | None]:
    """(first update with any difference, first with a relative difference above 1e-4) over COMPARED."""
    any_diff, big_diff = [], []
    for name in COMPARED:
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        differs = ~both_nan & (x != y)
        big = ~both_nan & ~(np.abs(x - y) <= 1e-4 * np.maximum(1.0, np.abs(y)))
        any_diff += [int(np.argmax(differs))] if differs.any() else []
        big_diff += [int(np.argmax(big))] if big.any() else []
    return (min(any_diff) if any_diff else None, min(big_diff) if big_diff else None)


CHILD = """
import json, sys, jax
jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
from purejaxppo import config as config_lib, train
config = config_lib.load(sys.argv[2], sys.argv[4:])
out = {}
for seed in range(int(sys.argv[3])):
    r = train(config.replace(seed=seed))
    out[seed] = {k: r.metrics[k][0].tolist() for k in ("policy_loss", "value_loss", "episode_return")}
    out[seed]["devices"] = r.layout.devices
print("RESULT " + json.dumps(out))
"""


def devices_runs(devices: int, seeds: int, overrides: list[str]) -> dict[int, dict[str, np.ndarray]]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(devices), str(ROOT / "configs" / "cartpole.yaml"),
                           str(seeds), *overrides], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(proc.stderr[-3000:])
    return {int(k): {n: np.array(v, np.float64) if n != "devices" else v for n, v in d.items()}
            for k, d in json.loads(line[7:]).items()}


def row(label: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[str, float, int | None]:
    from purejaxppo.host.metrics import final_return

    first, big = divergence(a, b)
    fa, fb = final_return(a["episode_return"]), final_return(b["episode_return"])
    text = f"| {label} | {'-' if first is None else first} | {'-' if big is None else big} | {fa:.1f} | {fb:.1f} | {abs(fa - fb):.1f} |"
    return text, abs(fa - fb), big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "equivalence.md")
    args = parser.parse_args()

    from purejaxppo import config as config_lib
    from purejaxppo import train
    from purejaxppo.sweep import sweep
    from experiments.benchmark import machine

    cache = tempfile.mkdtemp()
    overrides = [f"total_timesteps={args.steps}", f"compilation_cache={cache}"]
    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", overrides)
    lrs = [1e-3, 2e-3]
    swept = sweep(config, seeds=args.seeds, grid={"lr": lrs})
    sweep_rows, sweep_gaps, sweep_big = [], [], []
    for k, run in enumerate(swept.runs):
        single = train(config.replace(seed=run["seed"], lr=run["lr"]))
        text, gap, big = row(f"seed {run['seed']}, lr {run['lr']:g}",
                             {n: swept.metrics[n][k] for n in COMPARED}, {n: single.metrics[n][0] for n in COMPARED})
        sweep_rows.append(text)
        sweep_gaps.append(gap)
        sweep_big.append(big)
    device_sections = []
    for label, extra in (("32 envs (the shipped config)", []), ("8 envs, normalize_obs", ["num_envs=8",
                                                                                          "normalize_obs=true"])):
        one, two = devices_runs(1, args.seeds, overrides + extra), devices_runs(2, args.seeds, overrides + extra)
        assert all(two[s]["devices"] == 2 and one[s]["devices"] == 1 for s in one)
        rows, gaps, bigs = [], [], []
        for seed in sorted(one):
            text, gap, big = row(f"seed {seed}", two[seed], one[seed])
            rows.append(text)
            gaps.append(gap)
            bigs.append(big)
        device_sections.append((label, rows, gaps, bigs))

    def summary(gaps: list[float], bigs: list[int | None]) -> str:
        firsts = [b for b in bigs if b is not None]
        horizon = f"first past 1e-4 at update {min(firsts)} to {max(firsts)} (median {int(np.median(firsts))})" \
            if firsts else "never past 1e-4"
        return (f"{horizon}, {len(bigs) - len(firsts)} of {len(bigs)} pairs never; final-return gap mean "
                f"{np.mean(gaps):.1f}, max {np.max(gaps):.1f}")

    header = "| run | first update that differs | first past 1e-4 | final return (A) | final return (B) | gap |"
    body = [
        "# How far equal runs stay equal",
        "",
        f"Command: `PYTHONPATH=. python experiments/equivalence.py --seeds {args.seeds} --steps {args.steps}`  ",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}  ",
        f"Machine: {machine()}",
        "",
        f"CartPole-v1, `configs/cartpole.yaml` at {config.num_updates * config.batch_size:,} env steps "
        f"({config.num_updates} updates). Updates count from 0; compared: {', '.join(COMPARED)}.",
        "",
        f"## A sweep's run (A) against the same run alone (B): {summary(sweep_gaps, sweep_big)}",
        "",
        header, "|---|---|---|---|---|---|", *sweep_rows,
        "",
    ]
    for label, rows, gaps, bigs in device_sections:
        body += [f"## One run on 2 devices (A) against 1 device (B), {label}: {summary(gaps, bigs)}", "",
                 header, "|---|---|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
