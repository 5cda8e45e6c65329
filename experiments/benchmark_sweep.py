"""Benchmark: 64 seeds of CartPole-v1 at 500k env steps in one sweep call, against the same runs
trained one after another (one compiled single-run program, called once per seed).

    python experiments/benchmark_sweep.py [--seeds 64] [--sequential 64]

With --sequential K < seeds, K single runs are timed and the total is extrapolated to all seeds
(the figure printed says so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo.sweep import sweep  # noqa: E402
from purejaxppo.train import make_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=64, help="single runs to time (extrapolated)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"))
    args = parser.parse_args()
    config = config_lib.load(args.config)
    steps = config.num_updates * config.batch_size

    result = sweep(config, seeds=args.seeds)
    sweep_total = result.compile_time + result.run_time
    print(f"sweep: {args.seeds} runs x {steps:,} env steps in one call")
    print(f"  compile {result.compile_time:.2f} s, run {result.run_time:.2f} s, total {sweep_total:.2f} s, "
          f"{sweep_total / args.seeds:.3f} s per agent, {args.seeds * steps / result.run_time:,.0f} env steps/s")

    start = time.perf_counter()
    train = jax.jit(make_train(config)).lower(jax.random.key(0)).compile()
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    for seed in range(args.sequential):
        jax.block_until_ready(train(jax.random.key(config.seed + seed)))
    per_run = (time.perf_counter() - start) / args.sequential
    seq_total = compile_time + per_run * args.seeds
    note = "" if args.sequential == args.seeds else f" (extrapolated from {args.sequential} runs)"
    print(f"sequential: {args.seeds} single runs one after another, one compile{note}")
    print(f"  compile {compile_time:.2f} s, {per_run:.2f} s per run, total {seq_total:.2f} s")
    print(f"sweep / sequential = {sweep_total / seq_total:.3f}  (the sweep costs {sweep_total / seq_total:.1%} "
          f"of {args.seeds} single runs; {seq_total / sweep_total:.1f}x faster)")


if __name__ == "__main__":
    main()
