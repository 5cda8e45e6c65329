"""The speed benchmark: for each case, compile time, throughput, peak memory and the ceiling.

    PYTHONPATH=. python experiments/benchmark.py [--cases cartpole,cartpole-64,cartpole-64-1dev,breakout,pendulum]
        [--sb3-python /path/to/env/bin/python] [--brax-python /path/to/env/bin/python]
        [--out experiments/results/performance.md]

Each case trains its shipped config in a fresh process, with JAX's persistent compilation cache off,
so its compile is cold and its peak host memory (RSS) is its own. Per case it reports:

- compile: trace, lower and compile of the run's programs (as `purejaxppo train` reports it);
- startup: from process start to the first update, by stage (Python and imports, config, env and
  policy, trace and lower, XLA compile, init), against the run's training time;
- throughput: env steps of all runs per second of run time (compile excluded);
- the ceiling: the same envs stepped with the same network's forward pass and action sampling, and no
  learning (the rollout of `PPO.update` alone, scanned over as many updates), and the ratio of
  training throughput to it;
- peak memory: the process's peak RSS, and on a GPU the device's peak bytes in use.

Besides the cases: the CartPole run's compile again with a warm compilation cache (two fresh processes
sharing a cache folder), the 64-seed sweep against 64 single runs (one compile plus 64 times the
single run's run time), and, with --sb3-python (a separate environment with stable-baselines3,
gymnasium and torch; never a dependency), Stable-Baselines3's PPO on CartPole-v1 with the same
hyperparameters; with --brax-python (jax 0.9.2 and brax 0.14.2; see experiments/brax_peer.py), Brax's
own PPO trainer on each Brax case, with the same settings, one seed, in the same call: its throughput
and compile, and the wall time each trainer needs to reach Brax's final evaluation return. For more
seeds and the learning goals, see experiments/brax_benchmark.py.

The figures go into --out between the BEGIN/END markers below; the rest of that file is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- benchmark.py: BEGIN -->", "<!-- benchmark.py: END -->"
RESULT_PREFIX = "BENCHMARK_RESULT "


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: str  # relative to the repo root
    seeds: int = 1
    overrides: tuple[str, ...] = ()
    gpu_only: bool = False
    cpu_devices: int = 1  # JAX CPU devices (0: one per core, as `purejaxppo sweep` does); no effect on a GPU


CASES: dict[str, Case] = {
    "cartpole": Case("CartPole-v1, 1 seed", "configs/cartpole.yaml"),
    "cartpole-64": Case("CartPole-v1, 64 seeds (one sweep call, a CPU device per core)", "configs/cartpole.yaml",
                        seeds=64, cpu_devices=0),
    "cartpole-64-1dev": Case("CartPole-v1, 64 seeds (one sweep call, 1 CPU device)", "configs/cartpole.yaml", seeds=64),
    "breakout": Case("Breakout-MinAtar, 1 seed", "configs/breakout_minatar.yaml", overrides=("total_timesteps=1000000",)),
    "pendulum": Case("Pendulum-v1, 1 seed", "configs/pendulum.yaml"),
    "inverted_pendulum": Case("Brax inverted_pendulum, 1 seed, 102k steps (a CPU-sized Brax case)",
                              "configs/brax/inverted_pendulum.yaml",
                              overrides=("total_timesteps=102400", "num_envs=128", "eval_every=5", "eval_episodes=16")),
    **{f"playground-{task}": Case(f"Playground {name}, 1 seed, 8 updates of 128 envs x 30 steps (CPU-sized)",
                                  f"configs/playground/{task}.yaml",
                                  overrides=("num_envs=128", "num_steps=30", "total_timesteps=30720", "eval_every=0"))
       for task, name in (("cartpole_balance", "CartpoleBalance"), ("cheetah_run", "CheetahRun"),
                          ("walker_walk", "WalkerWalk"), ("hopper_hop", "HopperHop"))},
    "ant": Case("Brax ant, 1 seed", "configs/brax/ant.yaml", overrides=("total_timesteps=10000000",), gpu_only=True),
    "humanoid": Case("Brax humanoid, 1 seed", "configs/brax/humanoid.yaml", overrides=("total_timesteps=10000000",),
                     gpu_only=True),
}
CPU_CASES = ("cartpole", "cartpole-64", "cartpole-64-1dev", "breakout", "pendulum")

SB3_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads({threads})
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


def case_config(case: Case, cache: str = "") -> Any:
    from purejaxppo import config as config_lib

    return config_lib.load(ROOT / case.config, [*case.overrides, f"compilation_cache={cache}"])


def ceiling(config: Any, seeds: int) -> dict[str, float]:
    """Env steps/s of the training rollout alone (policy forward pass, sampling, env step), no learning."""
    import jax

    from purejaxppo.program.ppo import make_ppo

    ppo = make_ppo(config)

    def act_only(key: jax.Array) -> jax.Array:
        def body(carry: tuple, step_key: jax.Array) -> tuple[tuple, None]:
            state, total = carry
            state, traj = ppo.rollout(state, step_key)
            return (state, total + traj.value.sum() + traj.log_prob.sum()), None  # keeps them from being pruned

        init = (ppo.init(key), jax.numpy.float32(0.0))
        (_, total), _ = jax.lax.scan(body, init, jax.random.split(key, config.num_updates))
        return total

    keys = jax.random.split(jax.random.key(config.seed), seeds)
    if seeds > 1 and seeds % jax.device_count() == 0:  # the runs spread over the devices, as in the sweep
        mesh = jax.sharding.Mesh(jax.devices(), ("runs",))
        keys = jax.device_put(keys, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs")))
    fn = jax.jit(jax.vmap(act_only)) if seeds > 1 else jax.jit(act_only)
    arg = keys if seeds > 1 else keys[0]
    start = time.perf_counter()
    compiled = fn.lower(arg).compile()
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(arg))
    seconds = time.perf_counter() - start
    steps = seeds * config.num_updates * config.batch_size
    return {"ceiling_compile": compile_time, "ceiling_seconds": seconds, "ceiling_sps": steps / seconds}


def device_peak_bytes() -> float | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return float(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def measure(case_key: str, cache: str, with_ceiling: bool, spawned: float) -> dict[str, Any]:
    """Train the case once in this process and measure it; `spawned` is when the parent started the process."""
    import jax

    from purejaxppo import train
    from purejaxppo.cli import cpu_cores
    from purejaxppo.sweep import sweep

    imported = time.time()
    case = CASES[case_key]
    jax.config.update("jax_num_cpu_devices", case.cpu_devices or cpu_cores())
    config = case_config(case, cache)
    loaded = time.time()
    loop: dict[str, float] = {}

    def on_progress(p: Any) -> None:  # the loop's clock started at its first update
        loop.setdefault("start", time.time() - p.seconds)

    if case.seeds == 1:
        result = train(config, on_progress=on_progress)
    else:
        result = sweep(config, seeds=case.seeds, on_progress=on_progress)
    finals = [float(f) for f in result.final_returns()]
    startup = loop["start"] - spawned
    parts = {"python_and_imports": imported - spawned, "config": loaded - imported, **result.timings}
    parts["other"] = startup - sum(parts.values())
    steps = case.seeds * config.num_updates * config.batch_size
    out: dict[str, Any] = {
        "case": case_key, "env": config.env, "seeds": case.seeds, "num_envs": config.num_envs,
        "num_steps": config.num_steps, "env_steps": steps, "compile": result.compile_time,
        "run": result.run_time, "sps": steps / result.run_time,
        "sps_with_compile": steps / (result.compile_time + result.run_time),
        "final_return_mean": sum(finals) / len(finals),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mib": (lambda b: None if b is None else b / 2**20)(device_peak_bytes()),
        "backend": jax.default_backend(), "device": jax.local_devices()[0].device_kind,
        "devices": jax.device_count(), "startup": startup, "startup_parts": parts,
    }
    if case.seeds == 1 and "eval_return" in result.metrics:  # (env steps, deterministic eval return)
        out["eval_curve"] = [[int(n), float(r)] for n, r in
                             zip(result.metrics["env_steps"][0], result.metrics["eval_return"][0]) if math.isfinite(r)]
    if with_ceiling:
        out.update(ceiling(config, case.seeds))
        out["of_ceiling"] = out["sps"] / out["ceiling_sps"]
    return out


def run_child(case_key: str, cache: str = "", with_ceiling: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """`measure` in a fresh process; an error or a hang comes back as {"error": ...}."""
    cmd = [sys.executable, __file__, "--child", case_key, "--cache", cache, "--spawned", repr(time.time())] + (
        [] if with_ceiling else ["--no-ceiling"])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"case": case_key, "error": f"no result after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"case": case_key, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def run_sb3(python: str, threads: int, steps: int) -> dict[str, Any]:
    config = case_config(CASES["cartpole"])
    payload = {**config.to_dict(), "steps": steps}
    proc = subprocess.run([python, "-c", SB3_SCRIPT.format(threads=threads), json.dumps(payload)],
                          capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    version = subprocess.run([python, "-c", "import stable_baselines3, torch; print(stable_baselines3.__version__, "
                                            "torch.__version__)"], capture_output=True, text=True).stdout.split()
    return {**result, "sps": result["steps"] / result["seconds"], "sb3": version[0], "torch": version[1]}


def run_brax_peer(case_key: str, python: str, ours: dict[str, Any]) -> dict[str, Any]:
    """Brax's ppo.train on the case's config, one seed, through experiments/brax_benchmark.py's peer runner;
    with the wall time each trainer took to reach Brax's final evaluation return."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from brax_benchmark import run_brax

    case = CASES[case_key]
    config = case_config(case)
    with tempfile.TemporaryDirectory() as raw:
        try:
            side = run_brax(Path(case.config).stem, config, ROOT / case.config, 1, python, Path(raw))
        except SystemExit as err:
            return {"error": str(err)}
    target = side.final_returns[0]
    reached = next((n for n, r in ours.get("eval_curve", []) if r >= target), None)
    return {
        "compile": side.compile_time, "train": side.train_time, "wall": side.wall_time,
        "sps": side.steps_per_second, "final_return": target, "jax": side.extra["jax_version"],
        # ours: the compile, then env steps at the measured throughput (evaluations run inside the chunks)
        "ours_time_to_return": None if reached is None else ours["compile"] + reached / ours["sps"],
        "ours_steps_to_return": reached,
    }


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} CPU cores; JAX {jax.__version__} on {jax.default_backend()} "
            f"({jax.local_devices()[0].device_kind}); Python {platform.python_version()}")


def report_head(title: str, command: str, doc: str | None) -> list[str]:
    """A results page's opening lines: the title, the command, the date, this machine, and what the
    script measures (the paragraphs of its docstring after the usage line)."""
    return [f"# {title}", "", f"Command: `{command}`  ", f"Date: {datetime.now():%Y-%m-%d %H:%M}  ",
            f"Machine: {machine()}", "", (doc or "").split("\n\n", 2)[2].strip(), ""]


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[dict[str, Any]], warm: dict[str, Any] | None, sb3: dict[str, Any] | None,
           brax: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}  ",
        f"Machine: {machine()}",
        "",
        "| case | envs x steps | env steps (all runs) | compile s | run s | env steps/s | incl. compile | "
        "ceiling env steps/s | of ceiling | peak RSS MiB | device peak MiB | final return (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_case = {r["case"]: r for r in results}
    for r in results:
        name = CASES[r["case"]].name
        if "error" in r:
            lines.append(f"| {name} | FAILED: {r['error']} |" + " |" * 10)
            continue
        lines.append(
            f"| {name} | {r['num_envs']} x {r['num_steps']} | {r['env_steps']:,} | {r['compile']:.2f} | "
            f"{r['run']:.2f} | {r['sps']:,.0f} | {r['sps_with_compile']:,.0f} | {fmt(r.get('ceiling_sps'))} | "
            f"{fmt(r.get('of_ceiling'), '.0%')} | {r['peak_rss_mib']:,.0f} | {fmt(r['device_peak_mib'])} | "
            f"{r['final_return_mean']:.1f} |")
    lines.append("")
    single = by_case.get("cartpole")
    if warm is not None and single is not None and "error" not in single:
        if "error" in warm:
            lines.append(f"- Warm compilation cache: FAILED ({warm['error']})")
        else:
            lines.append(f"- CartPole-v1 compile with a warm persistent compilation cache (a second fresh process "
                         f"sharing the cache folder): {warm['compile']:.2f} s, against {single['compile']:.2f} s cold.")
            if "startup" in warm:
                parts = ", ".join(f"{STAGES.get(k, k)} {v:.2f}" for k, v in warm["startup_parts"].items())
                lines.append(f"- CartPole-v1 with the warm cache (the default, for any run after a config's first): from "
                             f"process start to the first update **{warm['startup']:.2f} s** ({parts}), against "
                             f"{warm['run']:.2f} s of training ({warm['startup'] / warm['run']:.2f}x).")
    for key in ("cartpole-64", "cartpole-64-1dev"):
        many = by_case.get(key)
        if single and many and "error" not in single and "error" not in many:
            sequential = single["compile"] + many["seeds"] * single["run"]
            total = many["compile"] + many["run"]
            lines.append(f"- {CASES[key].name} against 64 single runs (one compile, then 64 runs of "
                         f"{single['run']:.2f} s): {total:.1f} s against {sequential:.1f} s, **{total / sequential:.0%}** "
                         f"of the sequential cost.")
    for r in results:
        if "startup" in r:
            parts = ", ".join(f"{STAGES.get(k, k)} {v:.2f}" for k, v in r["startup_parts"].items())
            lines.append(f"- {CASES[r['case']].name}: from process start to the first update **{r['startup']:.2f} s** "
                         f"({parts}), against {r['run']:.2f} s of training "
                         f"({r['startup'] / r['run']:.2f}x).")
    if sb3 is not None and single is not None and "error" not in single:
        if "error" in sb3:
            lines.append(f"- Stable-Baselines3: FAILED ({sb3['error']})")
        else:
            lines.append(
                f"- Stable-Baselines3 {sb3['sb3']} (torch {sb3['torch']}, CPU) PPO on gymnasium CartPole-v1, the same "
                f"hyperparameters (32 envs x 32 steps, 8 minibatches, 4 epochs), {sb3['steps']:,} env steps: "
                f"{sb3['sps']:,.0f} env steps/s (final return {sb3['final_return']:.1f}). purejaxppo / SB3: "
                f"**{single['sps_with_compile'] / sb3['sps']:.1f}x** compile included, "
                f"**{single['sps'] / sb3['sps']:.1f}x** run only.")
    for key, peer in brax.items():
        name = CASES[key].name
        if "error" in peer:
            lines.append(f"- {name}, Brax's ppo.train: FAILED ({peer['error']})")
            continue
        ours = by_case[key]
        lines.append(
            f"- {name}, Brax's ppo.train (jax {peer['jax']}), same settings: compile {peer['compile']:.1f} s, "
            f"{peer['sps']:,.0f} env steps/s (ours / Brax: **{ours['sps'] / peer['sps']:.2f}x**), final eval return "
            f"{peer['final_return']:.1f} after {peer['wall']:.1f} s.")
        if peer["ours_time_to_return"] is None:
            lines.append(f"  Ours never reached that return in an evaluation (final {ours['final_return_mean']:.1f}).")
        else:
            lines.append(
                f"  Ours reached it at {peer['ours_steps_to_return']:,} env steps, about "
                f"{peer['ours_time_to_return']:.1f} s into its run (compile + steps / throughput): "
                f"**{peer['ours_time_to_return'] / peer['wall']:.2f}x** Brax's wall time.")
    skipped = [k for k, c in CASES.items() if c.gpu_only and k not in by_case]
    if skipped:
        lines.append(f"- Not run here: {', '.join(CASES[k].name for k in skipped)} (GPU cases; `--cases "
                     f"{','.join(skipped)}` on a GPU).")
    return "\n".join(lines) + "\n"


STAGES = {"python_and_imports": "Python and imports", "config": "config", "build": "env and policy",
          "trace_lower": "trace and lower", "xla_compile": "XLA compile", "init": "init", "other": "other"}


def write_report(path: Path, body: str) -> None:
    text = path.read_text() if path.is_file() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CPU_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--sb3-python", help="python of a separate environment with stable-baselines3")
    parser.add_argument("--sb3-steps", type=int, default=100_000, help="SB3 env steps to time (it is slow)")
    parser.add_argument("--sb3-threads", type=int, default=2, help="torch threads for SB3")
    parser.add_argument("--brax-python", help="python of a separate environment with jax 0.9.2 and brax 0.14.2, "
                                              "for Brax's own trainer on the Brax cases")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "performance.md")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a case counts as hung")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(args.child, args.cache, not args.no_ceiling, args.spawned)), flush=True)
        return
    command = "python experiments/benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = []
    for key in args.cases:
        results.append(run_child(key, timeout=args.timeout))
        print(json.dumps(results[-1]), flush=True)
    warm = None
    if "cartpole" in args.cases:
        with tempfile.TemporaryDirectory() as cache:
            run_child("cartpole", cache, with_ceiling=False, timeout=args.timeout)
            warm = run_child("cartpole", cache, with_ceiling=False, timeout=args.timeout)
        print("warm cache:", json.dumps(warm), flush=True)
    sb3 = run_sb3(args.sb3_python, args.sb3_threads, args.sb3_steps) if args.sb3_python else None
    if sb3 is not None:
        print("sb3:", json.dumps(sb3), flush=True)
    brax = {}
    if args.brax_python:
        for r in results:
            if CASES[r["case"]].config.startswith("configs/brax/") and "error" not in r:
                brax[r["case"]] = run_brax_peer(r["case"], args.brax_python, r)
                print("brax:", r["case"], json.dumps(brax[r["case"]]), flush=True)
    body = report(results, warm, sb3, brax, command.strip())
    write_report(args.out, body)
    print(body)


if __name__ == "__main__":
    main()
