"""Signals during a run: a first SIGINT, SIGTERM or SIGHUP asks for a stop at the next chunk's end, a
second interrupts at once, and a process stuck inside a computation still yields; what an interrupted
run dir holds, said truthfully."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from purejaxppo.host import checkpoint
from purejaxppo.host.record import KINDS, start_again


class StopSignal:
    """Turns SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) into a request to stop
    after the current chunk; a second signal interrupts.

    While `interrupting` (the compile and the init or restore, before anything is written), the first signal
    raises KeyboardInterrupt at once, and is recorded as well: Python drops an exception raised inside a
    garbage-collection callback, and the caller then raises it itself.

    Python runs signal handlers between bytecodes of the main thread, so a process stuck inside one
    XLA computation (a deadlock, or a wait for memory) would ignore every signal. A watcher thread sees
    each signal through `signal.set_wakeup_fd`, which the C-level handler writes to whatever the main
    thread does: when the signal that should interrupt (the first while `interrupting`, else the second)
    has not ended the process within FORCE_AFTER_S, it says so in one line, with what `written()` says the
    run dir holds, and exits at once.
    """

    FORCE_AFTER_S = 10.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, interrupt: bool = False) -> None:
        self.requested: str | None = None
        self.interrupting = interrupt
        self.written: Callable[[], str] = lambda: "nothing new was written"

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}

        def handler(signum: int, _frame: Any) -> None:
            self.requested = signal.Signals(signum).name
            for sig, old in previous.items():  # a second signal acts as usual
                signal.signal(sig, old)
            if self.interrupting:
                raise KeyboardInterrupt

        for sig in previous:
            signal.signal(sig, handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(read_fd, done), daemon=True, name="purejaxppo-signals")
        watcher.start()
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(old_wakeup)
            done.set()
            os.write(write_fd, b"\0")  # wakes the watcher, which then ends
            watcher.join()
            os.close(read_fd)
            os.close(write_fd)

    @contextlib.contextmanager
    def stop_requests(self) -> Iterator[None]:
        """For the block, a first signal is a stop request, not an interruption."""
        self.interrupting = False
        try:
            yield
        finally:
            self.interrupting = True

    def _watch(self, read_fd: int, done: threading.Event) -> None:
        seen = 0
        while not done.is_set():
            for signum in os.read(read_fd, 64):
                if signum in self.SIGNALS:
                    seen += 1
                    if seen >= (1 if self.interrupting else 2) and not done.wait(self.FORCE_AFTER_S):
                        name = signal.Signals(signum).name
                        os.write(2, f"purejaxppo: {name} while stuck inside a computation: stopped at once, without "
                                    f"a checkpoint; {self.written()}\n".encode())
                        os._exit(128 + signum)


def written(run_dir: Path | None, kind: str) -> str:
    """What a run dir holds for the run that is writing it, and how to go on, in words."""
    if run_dir is None:
        return "nothing was kept (no run dir)"
    steps = checkpoint.completed_steps(run_dir)
    if steps:
        return f"checkpoint {steps[-1]} is the newest; resume with purejaxppo {KINDS[kind]} --resume {run_dir}"
    return f"no checkpoint was written; {start_again(run_dir, kind)}"

