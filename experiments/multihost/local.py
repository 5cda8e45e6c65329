"""Start N local processes of one purejaxppo command under jax.distributed, as N hosts would run it.

    python experiments/multihost/local.py 2 sweep --cpu-devices 1 --seeds 8 --run-dir runs/two-hosts

Each process gets `--coordinator 127.0.0.1:PORT --num-processes N --process-id I` after the command's own
arguments; process 0's output is shown, the others' go to RUN_DIR-less log files in a temporary folder
(named at the end). Ctrl-C is passed to every process (they stop together, with one checkpoint). The
exit status is the first non-zero one of the processes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: local.py N COMMAND [ARGS...]  (N processes of `purejaxppo COMMAND ARGS`)", file=sys.stderr)
        return 2
    count, command = int(argv[0]), argv[1:]
    logs = Path(tempfile.mkdtemp(prefix="purejaxppo-hosts-"))
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(count):
        args = [sys.executable, "-m", "purejaxppo", *command, "--coordinator", address, "--num-processes", str(count),
                "--process-id", str(i)]
        out = None if i == 0 else (logs / f"process{i}.txt").open("w")
        procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if out else None))
    previous = signal.signal(signal.SIGINT, lambda *_: [p.send_signal(signal.SIGINT) for p in procs])
    try:
        statuses = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGINT, previous)
    if count > 1:
        print(f"the other processes' output: {logs}", file=sys.stderr)
    return next((s for s in statuses if s != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
