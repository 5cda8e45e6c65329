"""One sweep in 1 process of 2 CPU devices against 2 processes of 1 CPU device each (jax.distributed, gloo
collectives, one machine): the wall time, and what the cross-process part of each chunk costs: gathering
the chunk's metrics and finite-params flags to every process, and agreeing whether to stop.

    python experiments/multihost/collectives.py [--seeds 16] [--steps 100000] [--repeats 2]

Prints a table and writes experiments/results/multihost.json. The collectives are timed apart from the
run, on arrays of a chunk's shapes and shardings (median of 50 calls after 3 warm-ups).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "experiments" / "results" / "multihost.json"


def worker(procs: int, pid: int, address: str, seeds: int, steps: int, out: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 2 // procs)
    from purejaxppo.host import processes

    if procs > 1:
        processes.initialize(address, procs, pid)
    import numpy as np

    from purejaxppo import config as config_lib
    from purejaxppo.sweep import prepare_sweep, run_sweep

    config = config_lib.load(ROOT / "configs" / "cartpole.yaml", [f"total_timesteps={steps}", "compilation_cache="])
    clock = time.perf_counter()
    result = run_sweep(prepare_sweep(config, seeds))
    wall = time.perf_counter() - clock
    lay, chunk = result.layout, config.chunk_size
    names = list(result.metrics)
    arrays = {k: jax.device_put(np.zeros((lay.per_call, chunk), np.float32), lay.runs_sharding) for k in names}
    finite = jax.device_put(np.ones(lay.per_call, bool), lay.runs_sharding)

    def median_ms(call) -> float:
        for _ in range(3):
            call()
        times = []
        for _ in range(50):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    gather = median_ms(lambda: processes.gathered([(arrays, finite)]))
    agree = median_ms(lambda: processes.any_process(False))
    if pid == 0:
        Path(out).write_text(json.dumps({
            "processes": procs, "devices": lay.devices, "runs": seeds, "env_steps_per_run": config.num_updates
            * config.batch_size, "updates": config.num_updates, "chunk_size": chunk,
            "chunks": -(-config.num_updates // chunk), "compile_s": result.compile_time, "run_s": result.run_time,
            "wall_s": wall, "steps_per_s": result.steps_per_second, "gather_ms": gather, "any_process_ms": agree,
            "gathered_bytes": sum(a.nbytes for a in arrays.values()) + finite.nbytes, "metrics": len(names)}))


def run(procs: int, seeds: int, steps: int, out: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    children = [subprocess.Popen([sys.executable, __file__, "--worker", str(procs), str(i), address, str(seeds),
                                  str(steps), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL) for i in range(procs)]
    statuses = [c.wait(timeout=1800) for c in children]
    assert statuses == [0] * procs, statuses
    return json.loads(out.read_text())


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        procs, pid, address, seeds, steps, out = sys.argv[2:]
        return worker(int(procs), int(pid), address, int(seeds), int(steps), out)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    scratch = Path("/tmp") / f"purejaxppo-collectives-{time.time_ns()}.json"
    rows = []
    for repeat in range(args.repeats):  # alternating, so that a drift in the machine's speed hits both
        for procs in (1, 2):
            rows.append({"repeat": repeat, **run(procs, args.seeds, args.steps, scratch)})
            r = rows[-1]
            print(f"{procs} process(es) x {r['devices'] // procs} device(s): wall {r['wall_s']:.1f} s (compile "
                  f"{r['compile_s']:.1f} s, run {r['run_s']:.1f} s, {r['steps_per_s']:,.0f} env steps/s); per chunk: "
                  f"gather {r['gather_ms']:.3f} ms of {r['gathered_bytes']:,} bytes, any_process "
                  f"{r['any_process_ms']:.3f} ms; {r['chunks']} chunks", flush=True)
    OUT.write_text(json.dumps({"machine": "2 CPU cores, 24 GiB", "command": " ".join(sys.argv), "rows": rows},
                              indent=1))


if __name__ == "__main__":
    main()
