"""Benchmark: CartPole-v1, 500k env steps, the default config, against Stable-Baselines3's PPO.

    python experiments/benchmark_cartpole.py [--sb3-python /path/to/venv/bin/python] [--sb3-steps 100000]

Prints compile time, run time, env steps/s (with and without compile) and the final return. SB3 is
never a dependency of purejaxppo: it is run, when asked, in a separate Python environment that has
`stable-baselines3` and `gymnasium` installed, with the same hyperparameters as the default config.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo import runner  # noqa: E402

SB3_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads({threads})
import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
c = json.loads(sys.argv[1])
env = make_vec_env("CartPole-v1", n_envs=c["num_envs"], seed=0)
lr = c["lr"]
model = PPO("MlpPolicy", env, n_steps=c["num_steps"], batch_size=c["num_envs"] * c["num_steps"] // c["num_minibatches"],
            n_epochs=c["update_epochs"], gamma=c["gamma"], gae_lambda=c["gae_lambda"], clip_range=c["clip_eps"],
            ent_coef=c["ent_coef"], vf_coef=c["vf_coef"], max_grad_norm=c["max_grad_norm"],
            learning_rate=lambda progress: lr * progress, policy_kwargs=dict(net_arch=c["hidden_sizes"]),
            device="cpu", seed=0, verbose=0)
start = time.perf_counter()
model.learn(total_timesteps=c["steps"])
elapsed = time.perf_counter() - start
rets = [e["r"] for e in model.ep_info_buffer]
print(json.dumps({{"steps": model.num_timesteps, "seconds": elapsed, "final_return": sum(rets) / max(1, len(rets))}}))
"""


def run_sb3(python: str, config: config_lib.PPOConfig, steps: int, threads: int) -> dict:
    payload = {**config.to_dict(), "steps": steps}
    proc = subprocess.run(
        [python, "-c", SB3_SCRIPT.format(threads=threads), json.dumps(payload)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_breakdown(config: config_lib.PPOConfig) -> tuple[float, float]:
    """Seconds spent tracing and lowering `train` to StableHLO, and in XLA's compiler."""
    import time

    import jax

    from purejaxppo.train import make_train

    start = time.perf_counter()
    lowered = jax.jit(make_train(config)).lower(jax.random.key(config.seed))
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("--sb3-python", help="python of a separate environment with stable-baselines3")
    parser.add_argument("--sb3-steps", type=int, default=100_000, help="SB3 env steps to time (it is slow)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for SB3")
    parser.add_argument("--sb3-set", action="append", default=[], metavar="KEY=VALUE",
                        help="run SB3 with these config keys changed (e.g. num_envs=4 num_steps=128)")
    args = parser.parse_args()

    config = config_lib.load(args.config)
    lower_time, xla_time = compile_breakdown(config)
    result = runner.train(config)
    total = result.compile_time + result.run_time
    print(f"purejaxppo  {config.env}, {result.env_steps:,} env steps, {config.num_envs} envs x {config.num_steps} steps")
    print(f"  compile time          {result.compile_time:.2f} s")
    print(f"    breakdown (whole-run program, measured separately): trace+lower {lower_time:.2f} s, "
          f"XLA compile {xla_time:.2f} s")
    print(f"  run time              {result.run_time:.2f} s")
    print(f"  env steps/s           {result.steps_per_second:,.0f} (run only)")
    print(f"  env steps/s           {result.env_steps / total:,.0f} (compile included)")
    print(f"  final return          {result.final_return:.1f}")
    if args.sb3_python:
        sb3_config = config_lib.load(args.config, args.sb3_set)
        sb3 = run_sb3(args.sb3_python, sb3_config, args.sb3_steps, args.threads)
        sb3_sps = sb3["steps"] / sb3["seconds"]
        same = "same hyperparameters" if not args.sb3_set else f"hyperparameters changed: {' '.join(args.sb3_set)}"
        print(f"stable-baselines3 PPO, {same}, {sb3['steps']:,} env steps, "
              f"{sb3_config.num_envs} envs x {sb3_config.num_steps} steps")
        print(f"  run time              {sb3['seconds']:.2f} s")
        print(f"  env steps/s           {sb3_sps:,.0f}")
        print(f"  final return          {sb3['final_return']:.1f} (mean of its last 100 episodes)")
        print(f"ratio (purejaxppo compile included / SB3)  {result.env_steps / total / sb3_sps:.1f}x")
        print(f"ratio (purejaxppo run only / SB3)          {result.steps_per_second / sb3_sps:.1f}x")


if __name__ == "__main__":
    main()
