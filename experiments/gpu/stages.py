"""The stages of one GPU run, started by `experiments/gpu/run.sh OUTDIR [--dry-run] [--stages ...]`.

Each stage runs in a process of its own under its own time budget (cut to what is left of the whole
run's `--deadline`), and writes its results into OUTDIR as soon as it has any: a stage cut off by its
budget, or by the machine's time limit, keeps everything written before. OUTDIR gets at most these
files: versions.json, stages.json (each stage's status, seconds and output tail), and one
<stage>.json per stage.

Stages, in order:
  smoke   a handful of fast tests and a 2-update Brax run on the accelerator (under a minute)
  ant     Brax ant with Brax's published settings (configs/brax/ant.yaml, 50M env steps): ours, the
          rollout ceiling (over 20 updates' worth), then Brax's own PPO trainer on the same jax, in
          this Python
  sweep   CartPole-v1 with 1, 64, 512 and 4096 seeds, one call each: time per agent
  tune    a search of 4096 CartPole-v1 trials, 1024 slots at a time, ASHA with random draws: trials
          and env steps per second, and the best trial
  extra   if time is left: the recurrent policy's cost against the MLP, then humanoid and halfcheetah
          (ours, 50M env steps)
  playground  the shipped MuJoCo Playground configs at their published budget (60M env steps each),
          WalkerWalk, CheetahRun, CartpoleBalance, HopperHop in turn: the return curve as it goes,
          then the evaluation curve of each task that finishes (a third device call: --stages playground)

--dry-run runs every stage with tiny sizes on whatever device there is (the test suite runs it on
the CPU), so the script is known to work before it meets a GPU. `report.py` turns OUTDIR into
experiments/results/gpu.md and its curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

STAGES = ("smoke", "ant", "sweep", "tune", "extra", "playground")
# each stage's own limit, s
BUDGET_S = {"smoke": 120, "ant": 450, "sweep": 240, "tune": 150, "extra": 600, "playground": 600}
MIN_START_S = 20  # a stage with less than this left is not started
CEILING_UPDATES = 20  # updates' worth of rollouts the ceiling is measured over
LOSS_METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")  # finite on any update
SMOKE_TESTS = ["tests/test_losses.py", "tests/test_distributions.py", "tests/test_normalization.py",
               "tests/test_recurrent.py::test_unroll_matches_a_loop_that_resets_where_episodes_start",
               "tests/test_recurrent.py::test_the_cells_match_flax_with_the_same_weights"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each stage trains: the real run's sizes, or the dry run's tiny ones."""

    smoke_env: str
    ant_env: str  # a configs/brax/ name
    ant_overrides: tuple[str, ...]
    sweep_seeds: tuple[int, ...]
    sweep_overrides: tuple[str, ...]
    tune_trials: int
    tune_slots: int
    tune_overrides: tuple[str, ...]
    extra_envs: tuple[str, ...]
    extra_overrides: tuple[str, ...]
    recurrent_overrides: tuple[str, ...]
    playground_tasks: tuple[str, ...]  # configs/playground/ names
    playground_overrides: tuple[str, ...]


REAL = Sizes(
    smoke_env="ant", ant_env="ant", ant_overrides=(),
    sweep_seeds=(1, 64, 512, 4096), sweep_overrides=("total_timesteps=500000",),
    tune_trials=4096, tune_slots=1024, tune_overrides=("total_timesteps=491520",),  # 480 updates a trial
    extra_envs=("humanoid", "halfcheetah"), extra_overrides=(),
    recurrent_overrides=("num_envs=2048", "num_steps=64", "total_timesteps=26214400"),
    playground_tasks=("walker_walk", "cheetah_run", "cartpole_balance", "hopper_hop"), playground_overrides=(),
)
TINY_BRAX = ("num_envs=8", "num_steps=8", "num_minibatches=2", "update_epochs=1", "total_timesteps=128",
             "eval_every=1", "eval_episodes=2", "hidden_sizes=[8]", "env_kwargs={backend: positional, "
             "episode_length: 20}")
DRY = Sizes(
    smoke_env="inverted_pendulum", ant_env="inverted_pendulum", ant_overrides=TINY_BRAX,
    sweep_seeds=(1, 2, 4), sweep_overrides=("total_timesteps=2048", "num_envs=8", "num_steps=16",
                                            "hidden_sizes=[8]"),
    tune_trials=8, tune_slots=3, tune_overrides=("total_timesteps=3456", "num_envs=8", "num_steps=16",
                                                 "hidden_sizes=[8]"),  # 27 updates a trial
    extra_envs=("inverted_pendulum",), extra_overrides=TINY_BRAX,
    recurrent_overrides=("num_envs=8", "num_steps=16", "total_timesteps=1024", "memory_size=8",
                         "hidden_sizes=[8]"),
    playground_tasks=("cartpole_balance",),
    playground_overrides=("num_envs=8", "num_steps=10", "num_minibatches=2", "update_epochs=1", "total_timesteps=160",
                          "eval_every=1", "eval_episodes=2", "hidden_sizes=[8]",
                          "env_kwargs={impl: jax, episode_length: 20}"),
)


def write(path: Path, record: dict[str, Any]) -> None:
    """Replace `path` with `record` as JSON in one rename, so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(path)


def load(name: str, overrides: tuple[str, ...], cache: str) -> Any:
    from purejaxppo import config as config_lib

    return config_lib.load(ROOT / "configs" / name, [*overrides, f"compilation_cache={cache}"])


def versions() -> dict[str, Any]:
    """The machine (brax_benchmark's hardware record), JAX's backend, and the packages in play."""
    import importlib.metadata

    import jax
    from brax_benchmark import hardware

    packages = {}
    for name in ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy", "gymnax", "brax", "mujoco",
                 "mujoco-mjx", "playground", "pytest"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {**hardware(), "backend": jax.default_backend(), "packages": packages}


def brax_trainer_problem() -> str | None:
    """Why Brax's own PPO trainer cannot run on this jax, or None when it can."""
    import inspect

    import jax
    from brax.training.agents.ppo import train as ppo

    if not hasattr(jax, "device_put_replicated") and "device_put_replicated" in inspect.getsource(ppo):
        return (f"the installed brax's PPO trainer calls jax.device_put_replicated, which jax {jax.__version__} no "
                f"longer has (the 0.14.2 release); carry Brax's main-branch wheel (experiments/gpu/fetch_wheels.sh)")
    return None


# ---- the stages -------------------------------------------------------------------------------------


def stage_smoke(out: Path, sizes: Sizes, cache: str) -> None:
    import jax
    import numpy as np

    from purejaxppo import train

    record: dict[str, Any] = {"devices": [str(d) for d in jax.devices()]}
    start = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SMOKE_TESTS],
                           capture_output=True, text=True, cwd=ROOT)
    record["tests"] = {"returncode": tests.returncode, "seconds": time.perf_counter() - start,
                       "summary": (tests.stdout.strip().splitlines() or [""])[-1], "tail": tests.stdout[-2000:]}
    write(out / "smoke.json", record)
    result = train(load(f"brax/{sizes.smoke_env}.yaml", TINY_BRAX, cache))  # 2 updates, 8 envs x 8 steps
    finite = {k: bool(np.isfinite(result.metrics[k][0]).all()) for k in LOSS_METRICS}
    record["brax_run"] = {"env": sizes.smoke_env, "updates": int(result.metrics["env_steps"].shape[1]),
                          "compile_time": result.compile_time, "run_time": result.run_time,
                          "all_finite": all(finite.values()), "not_finite": [k for k, ok in finite.items() if not ok],
                          "params_on": str(next(iter(jax.tree.leaves(result.state.params)[0].devices())))}
    write(out / "smoke.json", record)
    if tests.returncode != 0 or not record["brax_run"]["all_finite"]:
        raise SystemExit("smoke: failed; see smoke.json")


def time_to(curve: list[tuple[float, float]], target: float) -> float:
    """Seconds at the first (seconds, return) point at or above `target`; NaN when none is."""
    return next((t for t, r in curve if r >= target), math.nan)


def stage_ant(out: Path, sizes: Sizes, cache: str) -> None:
    from benchmark import ceiling
    from brax_benchmark import run_brax, run_ours

    path = ROOT / "configs" / "brax" / f"{sizes.ant_env}.yaml"
    config = load(f"brax/{sizes.ant_env}.yaml", sizes.ant_overrides, cache)
    record: dict[str, Any] = {"config": str(path.relative_to(ROOT)), "overrides": list(sizes.ant_overrides),
                              "env_steps": config.num_updates * config.batch_size, "batch_size": config.batch_size}
    ours = run_ours(sizes.ant_env, config, seeds=1)
    record["ours"] = dataclasses.asdict(ours)
    write(out / "ant.json", record)
    # a rate, so a few updates' worth measures it: the stage's time goes on the two trainers
    record["ceiling"] = ceiling(config.replace(total_timesteps=min(config.num_updates, CEILING_UPDATES)
                                               * config.batch_size), 1)
    record["ratio_to_ceiling"] = ours.steps_per_second / record["ceiling"]["ceiling_sps"]
    write(out / "ant.json", record)
    problem = brax_trainer_problem()
    if problem is not None:
        record["brax"] = {"unavailable": problem}
        write(out / "ant.json", record)
        return
    brax = run_brax(sizes.ant_env, config, path, 1, sys.executable, out / "brax-peer-logs")
    record["brax"] = dataclasses.asdict(brax)
    # wall time of each trainer to Brax's final eval return, from the start of its call (compile included)
    target = brax.final_returns[0]
    updates_at = {int(u): t for u, t in ours.extra["chunk_ends"]}
    ours_curve = [(updates_at.get(s // config.batch_size, math.nan), r) for s, r in ours.eval_curves[0]]
    record["time_to_brax_final"] = {"target": target, "ours_s": time_to(ours_curve, target),
                                    "brax_s": time_to(brax.extra["timed_curves"][0], target)}
    write(out / "ant.json", record)


def stage_sweep(out: Path, sizes: Sizes, cache: str) -> None:
    from purejaxppo.host import stats
    from purejaxppo.sweep import sweep

    config = load("cartpole.yaml", sizes.sweep_overrides, cache)
    record: dict[str, Any] = {"config": "configs/cartpole.yaml", "overrides": list(sizes.sweep_overrides),
                              "env_steps_per_agent": config.num_updates * config.batch_size, "calls": []}
    for seeds in sizes.sweep_seeds:
        start = time.perf_counter()
        result = sweep(config, seeds=seeds)
        wall = time.perf_counter() - start
        finals = result.final_returns()
        record["calls"].append({
            "seeds": seeds, "wall_s": wall, "compile_s": result.compile_time, "run_s": result.run_time,
            "s_per_agent": wall / seeds, "env_steps_per_s": result.steps_per_second,
            "final_return_iqm": float(stats.iqm(finals)), "final_return_min": float(finals.min())})
        write(out / "sweep.json", record)


def stage_tune(out: Path, sizes: Sizes, cache: str) -> None:
    from purejaxppo.tune import TuneConfig, parse_space, tune

    config = load("cartpole.yaml", sizes.tune_overrides, cache)
    spaces = tuple(parse_space(s, config) for s in ("lr=log:1e-4:1e-2", "ent_coef=0:0.02", "gamma=0.98,0.99,0.995"))
    spec = TuneConfig(spaces, trials=sizes.tune_trials, slots=sizes.tune_slots)
    start = time.perf_counter()
    result = tune(config, spec)
    wall = time.perf_counter() - start
    trials = result.search.trials
    used = sum(t.updates for t in trials) * config.batch_size
    best = result.best()
    write(out / "tune.json", {
        "config": "configs/cartpole.yaml", "overrides": list(sizes.tune_overrides), "spaces": [str(s) for s in spaces],
        "trials": spec.trials, "slots": spec.slots, "rungs": list(result.search.rungs),
        "updates_per_trial": config.num_updates, "wall_s": wall, "compile_s": result.compile_time,
        "run_s": result.run_time, "updates_run": result.update, "env_steps_of_trials": used,
        "env_steps_per_s": used / result.run_time, "trials_per_s": len(trials) / result.run_time,
        "status": {s: sum(t.status == s for t in trials) for s in ("finished", "stopped", "diverged")},
        "best": None if best is None else {"trial": best.id, "seed": best.seed, "values": best.values,
                                           "score": best.scores[-1]}})


def stage_extra(out: Path, sizes: Sizes, cache: str) -> None:
    from brax_benchmark import run_ours

    from purejaxppo import train

    record: dict[str, Any] = {"recurrent": {}, "brax": {}}
    for name, overrides in (("MLP", ("memory=none",)), ("GRU", ())):
        config = load("cartpole_pomdp_gru.yaml", (*overrides, *sizes.recurrent_overrides), cache)
        result = train(config)
        record["recurrent"][name] = {"overrides": [*overrides, *sizes.recurrent_overrides],
                                     "compile_s": result.compile_time, "run_s": result.run_time,
                                     "env_steps_per_s": result.steps_per_second, "final_return": result.final_return}
        write(out / "extra.json", record)
    for env in sizes.extra_envs:
        config = load(f"brax/{env}.yaml", sizes.extra_overrides, cache)
        record["brax"][env] = dataclasses.asdict(run_ours(env, config, seeds=1))
        write(out / "extra.json", record)


def stage_playground(out: Path, sizes: Sizes, cache: str) -> None:
    from purejaxppo import train

    record: dict[str, Any] = {}
    for task in sizes.playground_tasks:
        config = load(f"playground/{task}.yaml", sizes.playground_overrides, cache)
        progress: list[list[float]] = []  # [env steps, seconds into the run, mean return of the chunk]
        entry = record[config.env] = {"overrides": list(sizes.playground_overrides), "progress": progress,
                                      "total_timesteps": config.num_updates * config.batch_size}

        def on_progress(p: Any, entry: dict[str, Any] = entry, progress: list[list[float]] = progress) -> None:
            progress.append([p.env_steps, p.seconds, p.episode_return])
            entry["env_steps_per_s"] = p.steps_per_second
            write(out / "playground.json", record)  # a stage cut off by its budget keeps the curve so far

        result = train(config, on_progress=on_progress)
        steps, evals = result.metrics["env_steps"][0], result.metrics["eval_return"][0]
        entry.update(compile_s=result.compile_time, run_s=result.run_time, env_steps_per_s=result.steps_per_second,
                     final_return=result.final_return,
                     eval_curve=[[int(n), float(r)] for n, r in zip(steps, evals) if math.isfinite(r)])
        write(out / "playground.json", record)


RUNNERS = {"smoke": stage_smoke, "ant": stage_ant, "sweep": stage_sweep, "tune": stage_tune, "extra": stage_extra,
           "playground": stage_playground}


# ---- the driver -------------------------------------------------------------------------------------


def drive(out: Path, stages: list[str], dry_run: bool, deadline: float, cache: str) -> int:
    """Run `stages` one process each, within `deadline` seconds in all; returns how many failed."""
    began = time.perf_counter()
    status: dict[str, Any] = {"dry_run": dry_run, "deadline_s": deadline, "stages": {}}
    write(out / "stages.json", status)
    failed = 0
    for name in stages:
        left = deadline - (time.perf_counter() - began)
        budget = min(BUDGET_S[name], left)
        if budget < MIN_START_S:
            status["stages"][name] = {"status": "not started", "why": f"{left:.0f} s left of the run's deadline"}
            write(out / "stages.json", status)
            continue
        print(f"== stage {name} (budget {budget:.0f} s)", flush=True)
        command = [sys.executable, __file__, str(out), "--stage", name, "--cache", cache,
                   *(["--dry-run"] if dry_run else [])]
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=budget)
            state = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            state = f"cut off at its budget of {budget:.0f} s"
            output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        failed += state != "ok"
        status["stages"][name] = {"status": state, "seconds": time.perf_counter() - start, "tail": output[-3000:]}
        write(out / "stages.json", status)
        print(f"== stage {name}: {state} in {time.perf_counter() - start:.1f} s", flush=True)
        if state != "ok":
            print(output[-3000:], flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, on whatever device there is")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for all the stages together")
    parser.add_argument("--cache", default="", help="JAX compilation cache folder ('' turns it off: cold compiles)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in its own process
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = DRY if args.dry_run else REAL
    if args.stage:
        from purejaxppo.host.processes import use_compilation_cache

        use_compilation_cache(load("cartpole.yaml", (), args.cache))
        RUNNERS[args.stage](args.out, sizes, args.cache)
        return
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)}; known: {', '.join(STAGES)}")
    record = versions()
    write(args.out / "versions.json", record)
    print(json.dumps(record, indent=1), flush=True)
    sys.exit(1 if drive(args.out, stages, args.dry_run, args.deadline, args.cache) else 0)


if __name__ == "__main__":
    main()
