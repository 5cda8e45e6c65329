"""Memory tasks: a feedforward policy against a GRU and an LSTM core, on the same settings.

    python experiments/recurrent.py [--seeds 5] [--tasks cartpole,memory_chain] [--out experiments/results/recurrent.md]

cartpole: CartPole-v1 with both velocities hidden, 2M env steps (configs/cartpole_pomdp.yaml for the
MLP, configs/cartpole_pomdp_gru.yaml for the GRU, and the GRU's config with `memory: lstm`).
memory_chain: gymnax's MemoryChain-bsuite (configs/memory_chain_gru.yaml, and `memory: none` and
`memory: lstm` on it). Each policy trains its seeds in one sweep call (one compiled program, a CPU
device per core). Reported per policy: the final return (the mean over the last 10% of updates) as
IQM and mean over seeds with stratified-bootstrap 95% CIs; the env steps at which each seed's mean
episode return in an update first reached the task's threshold; compile time; and training
throughput (env steps/s over all seeds, compile excluded), with its ratio to the MLP's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmark import machine  # noqa: E402
from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo.host import stats  # noqa: E402
from purejaxppo.cli import cpu_cores  # noqa: E402
from purejaxppo.sweep import sweep  # noqa: E402

HAND_WRITTEN = "## Reading (written by hand)"  # from this heading on, a rerun keeps the file as it is
# task: (title, total env steps, threshold, {policy: (config file, overrides)})
TASKS = {
    "cartpole": ("CartPole-v1 with its velocities hidden (`obs_mask: [1, 3]`)", 2_000_000, 400.0, {
        "MLP": ("cartpole_pomdp.yaml", []),
        "GRU": ("cartpole_pomdp_gru.yaml", []),
        "LSTM": ("cartpole_pomdp_gru.yaml", ["memory=lstm"]),
    }),
    "memory_chain": ("MemoryChain-bsuite, 10 steps of memory (recall a bit shown at the first step: +1 right, -1 wrong)", None, 0.9, {
        "MLP": ("memory_chain_gru.yaml", ["memory=none"]),
        "GRU": ("memory_chain_gru.yaml", []),
        "LSTM": ("memory_chain_gru.yaml", ["memory=lstm"]),
    }),
}


def steps_to(returns: np.ndarray, env_steps: np.ndarray, threshold: float) -> float:
    """Env steps at the first update whose mean episode return reached `threshold`; inf if none did."""
    reached = np.flatnonzero(np.nan_to_num(returns, nan=-np.inf) >= threshold)
    return float(env_steps[reached[0]]) if reached.size else float("inf")


def task_table(task: str, seeds: int, first_seed: int) -> tuple[str, str]:
    """(the section's heading and settings, its markdown table) of one task."""
    title, total, threshold, policies = TASKS[task]
    rows = []
    for name, (file, overrides) in policies.items():
        steps = [f"total_timesteps={total}"] if total else []
        config = config_lib.load(ROOT / "configs" / file, [*overrides, *steps, f"seed={first_seed}",
                                                           "compilation_cache="])
        with tempfile.TemporaryDirectory() as tmp:
            result = sweep(config, seeds=seeds, run_dir=Path(tmp) / "run")
        final = result.final_returns()
        reach = [steps_to(r, s, threshold) for r, s in zip(result.metrics["episode_return"],
                                                            result.metrics["env_steps"])]
        rows.append({"name": name, "summary": stats.summarize(final), "final": final, "reach": reach,
                     "compile": result.compile_time, "sps": result.steps_per_second, "steps": result.env_steps})
        print(f"{task} {name}: IQM {rows[-1]['summary']['iqm']:.2f}, {result.steps_per_second:,.0f} env steps/s",
              flush=True)
    base = rows[0]["sps"]
    lines = [f"| policy | final return IQM [95% CI] | mean [95% CI] | per seed | env steps to {threshold:g} (per seed) "
             "| compile s | env steps/s | vs MLP |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row["summary"]
        reach = ", ".join("never" if np.isinf(r) else f"{r / 1e6:.2f}M" for r in row["reach"])
        lines.append(
            f"| {row['name']} | {s['iqm']:.2f} [{s['iqm_low']:.2f}, {s['iqm_high']:.2f}] "
            f"| {s['mean']:.2f} [{s['mean_low']:.2f}, {s['mean_high']:.2f}] "
            f"| {', '.join(f'{x:.2f}' for x in row['final'])} | {reach} | {row['compile']:.1f} "
            f"| {row['sps']:,.0f} | {row['sps'] / base:.2f}x |")
    heading = (f"## {title}\n\n{rows[0]['steps']:,} env steps per run, {seeds} seeds "
               f"({first_seed}-{first_seed + seeds - 1}) per policy")
    return heading, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=100, help="the first seed (the configs were tuned on 0-4)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "recurrent.md"))
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", cpu_cores())

    sections = []
    for task in args.tasks.split(","):
        heading, table = task_table(task, args.seeds, args.seed)
        print(table, flush=True)
        sections.append(f"{heading}\n\n{table}\n")
    command = " ".join(["python experiments/recurrent.py", *sys.argv[1:]])
    out = Path(args.out)
    kept = out.read_text().partition(HAND_WRITTEN)[2] if out.exists() else ""  # the reading, by hand
    out.write_text(
        f"# Recurrent policies on memory tasks\n\n"
        f"Command: `{command}`  \nDate: {datetime.now():%Y-%m-%d %H:%M}  \nMachine: {machine()}\n\n"
        + "\n".join(sections) + (f"\n{HAND_WRITTEN}{kept}" if kept else "")
    )


if __name__ == "__main__":
    main()
