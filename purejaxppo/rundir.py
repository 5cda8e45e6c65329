"""The run dir as a place to write: created and proven writable before anything compiles, and held
by one writer at a time.

A run or sweep holds an exclusive lock (`fcntl.flock`) on `RUN_DIR/.lock` from before its checks to
its last write, with the holder written in the file. A second writer is refused with one line naming
the holder; readers (`eval`, `plot`, `load_policy`) take no lock and keep working on a live run. The
kernel drops the lock when the holder exits, however it exits, so a killed run never strands it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from purejaxppo.config import ConfigError

LOCK_FILE = ".lock"
SUPERSEDED = "superseded"  # where files a run replaces are kept, never deleted


class RunDirError(ConfigError):
    """A run dir that cannot be written, or that another process is writing. One line."""


def prepare(run_dir: Path) -> None:
    """Create `run_dir` (and its parents) if needed and prove that files can be written there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"run dir {run_dir}: exists and is not a folder") from None
    except NotADirectoryError:
        raise RunDirError(f"run dir {run_dir}: a part of its path is a file, not a folder") from None
    except OSError as err:
        raise RunDirError(f"run dir {run_dir}: cannot create it ({err.strerror or err})") from None
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"purejaxppo")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run dir {run_dir}: cannot write there ({err.strerror or err})") from None


def superseded_folder(run_dir: Path, label: str) -> Path:
    """A new folder `RUN_DIR/superseded/<label>-<time>/` for files that a run replaces."""
    folder = Path(run_dir) / SUPERSEDED / f"{label}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    folder.mkdir(parents=True)
    return folder


@contextlib.contextmanager
def claimed(run_dir: Path | None, create: bool = True, primary: bool = True) -> Iterator[None]:
    """Hold `run_dir` for the block: created when `create` (and proven writable), then locked against
    every other writer. Only the primary process of a multi-host run claims it."""
    if run_dir is None or not primary or (not create and not run_dir.is_dir()):
        yield  # a resume of a missing run dir is reported by the resume's own checks
        return
    created = create and not run_dir.exists()
    if create:
        prepare(run_dir)
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(f"run dir {run_dir}: cannot write there ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(f"run dir {run_dir} is being written by {holder}; wait for it to end, or choose another "
                          f"run dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])})".encode(), 0)
        yield
    except BaseException:
        if created:  # a run refused (a config error) or stopped before it wrote anything leaves no folder behind
            with contextlib.suppress(OSError):
                (run_dir / LOCK_FILE).unlink()
                run_dir.rmdir()
        raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
