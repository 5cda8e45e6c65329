"""Mixed precision on this machine: env steps per second of float32 and bfloat16 compute, side by side.

    python experiments/precision.py [--repeats 3] [--out experiments/results/precision.md]

Two cases on CartPole-v1: the shipped config (64 x 64 networks, 1,024 samples per update) and a
network-bound one (256 x 256 x 256 networks, 64 envs x 128 steps, minibatches of 2,048). Each case's
`make_train` program is compiled once per dtype, then run `--repeats` times, alternating the dtypes;
the figure is the fastest run. Compile time is left out. The final return is the mean return of the
last update's finished episodes, as a check that both dtypes train.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmark import report_head  # noqa: E402
from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo.program.ppo import make_train  # noqa: E402

BASE = config_lib.load(ROOT / "configs" / "cartpole.yaml")
CASES = {
    "CartPole, shipped config (64 x 64)": BASE.replace(total_timesteps=32 * 32 * 100),
    "CartPole, 256 x 256 x 256, 8,192 samples per update": BASE.replace(
        hidden_sizes=[256, 256, 256], num_envs=64, num_steps=128, num_minibatches=4, total_timesteps=64 * 128 * 12),
}
DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "precision.md"))
    args = parser.parse_args()
    rows = []
    for name, base in CASES.items():
        programs = {d: jax.jit(make_train(base.replace(compute_dtype=d))) for d in DTYPES}
        key = jax.random.key(0)
        compiled = {d: programs[d].lower(key).compile() for d in DTYPES}
        best = {d: float("inf") for d in DTYPES}
        final = {}
        for _ in range(args.repeats):
            for d in DTYPES:
                start = time.perf_counter()
                _, metrics = jax.block_until_ready(compiled[d](key))
                best[d] = min(best[d], time.perf_counter() - start)
                final[d] = float(np.asarray(metrics["episode_return"])[-1])
        steps = base.num_updates * base.batch_size
        rows.append((name, steps, {d: steps / best[d] for d in DTYPES}, final))
        print(name, {d: round(steps / best[d]) for d in DTYPES}, final, flush=True)
    command = "python experiments/precision.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    lines = report_head("Mixed precision (compute_dtype) on this machine", command, __doc__) + [
             "| case | env steps per run | float32 env steps/s | bfloat16 env steps/s | bfloat16 / float32 | "
             "final return float32, bfloat16 |", "|---|---|---|---|---|---|"]
    for name, steps, speed, final in rows:
        lines.append(f"| {name} | {steps:,} | {speed['float32']:,.0f} | {speed['bfloat16']:,.0f} | "
                     f"{speed['bfloat16'] / speed['float32']:.2f} | {final['float32']:.1f}, {final['bfloat16']:.1f} |")
    lines += ["", "This machine's CPU has no bfloat16 arithmetic (/proc/cpuinfo lists neither avx512_bf16 nor "
              "amx_bf16), so bfloat16 costs time here instead of saving it. It pays on a GPU (tensor cores, half "
              "the activation memory) with large networks or batches; no GPU was lent to measure it.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
