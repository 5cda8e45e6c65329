"""The run dir as a place to write: created and proven writable before anything compiles, and held
by one writer at a time.

A run or sweep holds an exclusive lock (`fcntl.flock`) on `RUN_DIR/.lock` from the start of its run
(`Prepared.run`, which checks the run dir again under it) to its last write, with the holder written in
the file; `prepare` refuses a run dir that another process holds. A second writer is refused with one line naming
the holder; readers (`eval`, `plot`, `load_policy`) take no lock and keep working on a live run. The
kernel drops the lock when the holder exits, however it exits, so a killed run never strands it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from purejaxppo.errors import RunDirError

LOCK_FILE = ".lock"
SUPERSEDED = "superseded"  # where files a run replaces are kept, never deleted


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


def check_writable(run_dir: Path) -> None:
    """Refuse, without creating anything, a run dir that could not be made and written: one that is a
    file or under one, or whose nearest existing folder cannot be written (a read-only disk)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a link to nowhere
            break
        existing = existing.parent
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir}: exists and is not a folder")
    if existing.exists() and not existing.is_dir():
        raise RunDirError(f"run dir {run_dir}: a part of its path is a file, not a folder")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        what = "write there" if existing == run_dir else "create it"
        reason = "Read-only file system" if _read_only(existing) else "Permission denied"
        raise RunDirError(f"run dir {run_dir}: cannot {what} ({reason})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def default(env: str, root: str | Path = "runs", suffix: str = "") -> Path:
    """A new run dir under `root`, named after the env (an import path's or class's characters that a
    folder name should not hold made dashes) and the time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", env)  # e.g. pkg.mod:MyEnv, brax/ant
    return Path(root) / f"{name}-{stamp}{suffix}"


def superseded_folder(run_dir: Path, label: str) -> Path:
    """A new folder `RUN_DIR/superseded/<label>-<time>/` for files that a run replaces."""
    folder = Path(run_dir) / SUPERSEDED / f"{label}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    folder.mkdir(parents=True)
    return folder


def check_free(run_dir: Path) -> None:
    """Refuse a run dir that another process is writing now (it holds the lock), naming that process."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): no writer, or one the claim itself will report
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirError(_busy(run_dir, fd)) from None
    finally:
        os.close(fd)


def _busy(run_dir: Path, fd: int) -> str:
    holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    return f"run dir {run_dir} is being written by {holder}; wait for it to end, or choose another run dir"


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
        message = _busy(run_dir, fd)
        os.close(fd)
        raise RunDirError(message) from None
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
