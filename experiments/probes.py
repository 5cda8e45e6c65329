"""Two measurements behind design decisions recorded in results/performance.md ("Tried, no gain").

    python experiments/probes.py compile-threads      # cold compile: chunk and init in turn vs in 2 threads
    python experiments/probes.py brax-reset [--env brax/ant --envs 64 --steps 50]

`compile-threads` runs each mode in a fresh process (the cache off), twice, and prints lower and
compile times. `brax-reset` times Brax's EpisodeWrapper.step alone, the adapter's step (the step, a
fresh reset, and the select), and the reset alone, each as a jitted scan over vmapped envs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compile_once(parallel: bool) -> None:
    import jax

    from purejaxppo.config import PPOConfig
    from purejaxppo.host.population import Population
    from purejaxppo.program.chunk import chunk_program, init_program
    from purejaxppo.program.ppo import abstract_states, make_ppo

    config = PPOConfig(compilation_cache="")
    ppo = make_ppo(config)
    start = time.perf_counter()
    chunk = jax.jit(chunk_program(ppo, 1)).lower(abstract_states(ppo, 1), 0, 0)
    single = Population.single(config)
    init = jax.jit(init_program(ppo, 1)).lower(*single.inputs(single.members))
    lowered = time.perf_counter()
    if parallel:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(chunk.compile), pool.submit(init.compile)]:
                future.result()
    else:
        chunk.compile()
        init.compile()
    done = time.perf_counter()
    mode = "2 threads" if parallel else "in turn  "
    print(f"{mode}: lower {lowered - start:.2f} s, compile {done - lowered:.2f} s, both {done - start:.2f} s", flush=True)


def brax_reset(name: str, num_envs: int, steps: int) -> None:
    import jax

    from purejaxppo.envs import make_env

    env = make_env(name)
    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), num_envs))
    dim = env.action_space.dim

    def timed(label: str, step_fn) -> None:
        def body(s, k):
            action = jax.random.uniform(k, (num_envs, dim), minval=-1.0, maxval=1.0)
            return step_fn(jax.random.split(k, num_envs), s, action), ()

        run = jax.jit(lambda s, key: jax.lax.scan(body, s, jax.random.split(key, steps))[0])
        jax.block_until_ready(run(state, jax.random.key(1)))  # compile
        best = min(_seconds(run, state, jax.random.key(2 + r)) for r in range(3))
        print(f"{label:<44} {num_envs * steps / best:>10,.0f} env steps/s", flush=True)

    def reset_only(keys, s, _action):
        fresh = jax.vmap(env.reset)(keys)[1]
        return jax.tree.map(lambda a, b: a + 0 * b if a.dtype == b.dtype else a, s, fresh)

    timed("EpisodeWrapper.step alone", lambda keys, s, a: jax.vmap(env._env.step)(s, a))
    timed("adapter step (step, fresh reset, select)", lambda keys, s, a: jax.vmap(env.step)(keys, s, a).state)
    timed("reset alone", reset_only)


def _seconds(run, state, key) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(run(state, key))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    threads = sub.add_parser("compile-threads")
    threads.add_argument("--one", choices=("turn", "threads"), help=argparse.SUPPRESS)  # a child process's mode
    reset = sub.add_parser("brax-reset")
    reset.add_argument("--env", default="brax/ant")
    reset.add_argument("--envs", type=int, default=64)
    reset.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.probe == "brax-reset":
        brax_reset(args.env, args.envs, args.steps)
    elif args.one:
        compile_once(args.one == "threads")
    else:
        for _ in range(2):
            for mode in ("turn", "threads"):
                subprocess.run([sys.executable, __file__, "compile-threads", "--one", mode], check=True)


if __name__ == "__main__":
    main()
