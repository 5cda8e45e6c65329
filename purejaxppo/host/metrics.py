"""The one metrics store of runs and sweeps: `metrics.csv`, one row per run and update.

Columns: `run`, `update`, then every metric. Floats are written with 9 significant digits, which
round-trips float32 exactly. Rows are appended and flushed after each chunk, so a crashed run keeps
them; a resume cuts the file after the rows before its checkpoint and appends, never rewriting it,
and a row torn by a crash is ignored. Everything that reads metrics (a resume, `plot`, the result of
a call) reads this file.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from purejaxppo.errors import notify
from purejaxppo.host import rundir

FILE = "metrics.csv"

# The metrics every run reports, in this order; variants add their own after these.
METRIC_NAMES: tuple[str, ...] = (
    "env_steps", "episode_return", "episode_length", "episode_count", "policy_loss", "value_loss", "entropy",
    "approx_kl", "clip_fraction", "explained_variance", "value_error", "advantage_mean", "advantage_std",
    "ratio_mean", "ratio_max", "grad_norm", "lr",
)
# A non-finite value in one of these stops a guarded run (episode metrics are NaN by design when none ended).
GUARDED_METRICS: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")


def metric_names(metrics: dict[str, Any]) -> list[str]:
    return [n for n in METRIC_NAMES if n in metrics] + sorted(n for n in metrics if n not in METRIC_NAMES)


def _fmt(value: Any) -> str:
    """Integers exactly (a float read back from the file may hold one), other floats to 9 digits."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.9g}"


def read(path: str | Path, before: int | None = None) -> dict[str, np.ndarray]:
    """Every metric of a store as `[runs, updates]` arrays (updates below `before` only, when given).
    Rows that do not parse, such as one torn by a crash, are skipped."""
    data = Path(path).read_bytes()
    header, start = _header(data)
    if header[:2] != ["run", "update"]:
        return {}
    rows: dict[tuple[int, int], list[float]] = {}
    for _, row in _rows(data, start, len(header)):
        if row is not None and (before is None or row[1] < before):
            rows[(row[0], row[1])] = row[2]
    if not rows:
        return {}
    runs = 1 + max(r for r, _ in rows)
    updates = sorted({u for _, u in rows})
    if len(rows) != runs * len(updates) or updates != list(range(updates[0], updates[0] + len(updates))):
        updates = [u for u in updates if all((r, u) in rows for r in range(runs))]  # whole updates only
    table = np.array([[rows[(r, u)] for u in updates] for r in range(runs)], np.float64)
    return {name: table[..., i] for i, name in enumerate(header[2:])}


class MetricsStore:
    """Appends the rows of each chunk to `RUN_DIR/metrics.csv`, flushed at once.

    A resume from update `resume_from` never rewrites the file in place: it checks that the rows of every
    one of the `runs` runs before that update are there, then cuts the file after them (one `truncate`,
    which a kill cannot leave half done; or, where an earlier version left them in another order, a new
    file renamed over the old one) and appends, so the file reads as a straight run's would. The rows it
    kept are in `previous`, as `[runs, updates]` arrays. A file that cannot be read that far is moved
    into `RUN_DIR/superseded/`, the user is told in one line, and the file starts again at the resume
    point. Writes that fail raise OSError."""

    def __init__(self, run_dir: Path, runs: int, resume_from: int | None = None) -> None:
        self.path = run_dir / FILE
        self.previous: dict[str, np.ndarray] = {}
        self._names: list[str] | None = None
        append = False
        if resume_from is not None and self.path.is_file():
            try:
                kept, is_prefix, self._names, self.previous = rows_before(self.path, resume_from, runs)
            except ValueError as err:
                moved = rundir.superseded_folder(run_dir, "unreadable-metrics")
                self.path.rename(moved / FILE)
                notify(f"{self.path}: {err}; it is now {moved / FILE}, and this run's {FILE} starts at update "
                       f"{resume_from}")
            else:
                if is_prefix:
                    os.truncate(self.path, len(kept))
                else:  # rows in another order (an earlier version rewrote them on resume): a new file
                    fresh = self.path.with_name(f".{FILE}.new")
                    fresh.write_bytes(kept)
                    os.replace(fresh, self.path)
                append = True
        elif resume_from:
            notify(f"{self.path}: missing; this run's {FILE} starts at update {resume_from}")
        self._file = self.path.open("a" if append else "w", newline="")
        self._writer = csv.writer(self._file)

    def write(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        """`metrics`: each `[runs, updates]`, the updates from `first_update` on."""
        names = metric_names(metrics)
        if self._names is None:
            self._names = names
            self._writer.writerow(["run", "update", *names])
        elif names != self._names:  # kept rows of an earlier version, which reported other metrics
            self._renamed(names)
        columns = [metrics[n] for n in self._names]
        runs, count = columns[0].shape
        self._writer.writerows(
            [k, first_update + i, *(_fmt(c[k, i]) for c in columns)] for k in range(runs) for i in range(count)
        )
        self._file.flush()

    def _renamed(self, names: list[str]) -> None:
        """The kept rows under `names` (NaN where they lack one), written to a new file that replaces the
        old one in one rename; the old file is kept in `RUN_DIR/superseded/`."""
        self._file.close()
        kept = rundir.superseded_folder(self.path.parent, "earlier-metrics") / FILE
        shutil.copy2(self.path, kept)
        runs, count = next(iter(self.previous.values())).shape if self.previous else (0, 0)
        fresh = self.path.with_name(f".{FILE}.new")
        with fresh.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "update", *names])
            lacking = np.full((runs, count), np.nan)
            self.previous = {n: self.previous.get(n, lacking) for n in names} if self.previous else {}
            columns = [self.previous[n] for n in names] if self.previous else []
            writer.writerows([k, i, *(_fmt(c[k, i]) for c in columns)] for k in range(runs) for i in range(count))
        os.replace(fresh, self.path)
        notify(f"{self.path}: its earlier rows had the metrics of another version; rewritten with this version's "
               f"columns (NaN where they lack one), the file as it was kept in {kept}")
        self._names = names
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # every write flushes: a failing one has raised already
            self._file.close()


def _header(data: bytes) -> tuple[list[str], int]:
    """The header of a metrics file's bytes, and where its rows start."""
    end = data.find(b"\n")
    return (data[:end].decode("utf-8", "replace").rstrip("\r").split(",") if end >= 0 else []), end + 1


def _rows(data: bytes, start: int, width: int) -> Iterator[tuple[bytes, tuple[int, int, list[float]] | None]]:
    """Each line of a metrics file's bytes from `start`, with its (run, update, values), or None where it
    does not parse or is torn (a last line without its newline, as a crash leaves it)."""
    while start < len(data):
        stop = data.find(b"\n", start)
        stop = len(data) if stop < 0 else stop + 1
        line = data[start:stop]
        yield line, (_parse_row(line, width) if line.endswith(b"\n") else None)
        start = stop


def _parse_row(line: bytes, width: int) -> tuple[int, int, list[float]] | None:
    fields = line.decode("utf-8", "replace").rstrip("\r\n").split(",")
    if len(fields) != width:
        return None
    try:
        return int(fields[0]), int(fields[1]), [float(v) for v in fields[2:]]
    except ValueError:
        return None


def rows_before(path: Path, before: int, runs: int) -> tuple[bytes, bool, list[str], dict[str, np.ndarray]]:
    """What a resume from update `before` keeps of a metrics file: (its header and rows before `before`,
    as the bytes they are in the file and in its order; whether those bytes begin the file, so that
    cutting it keeps them; the metric names; the rows as `[runs, before]` arrays). Rows that do not parse,
    such as one torn by a crash, are dropped. Raises ValueError, saying what is wrong, when the header
    does not parse or a row of the `runs` runs before `before` is missing."""
    data = path.read_bytes()
    header, start = _header(data)
    names = header[2:]
    if header[:2] != ["run", "update"] or not names or len(set(names)) != len(names) or "" in names:
        shown = ",".join(header[:4]) + ("..." if len(header) > 4 else "")
        raise ValueError(f"its header {shown!r} is not run,update,<metrics>")
    rows: dict[tuple[int, int], list[float]] = {}
    kept = [data[:start]]
    for line, row in _rows(data, start, len(header)):
        if row is not None and row[1] < before and (row[0], row[1]) not in rows:
            rows[(row[0], row[1])] = row[2]
            kept.append(line)
    wanted = runs * before
    if len(rows) != wanted or any(not (0 <= r < runs and 0 <= u < before) for r, u in rows):
        raise ValueError(f"it holds {len(rows)} readable rows before update {before} where {runs} run(s) need "
                         f"{wanted}")
    table = np.array([[rows[(r, u)] for u in range(before)] for r in range(runs)], np.float64).reshape(
        runs, before, len(names))
    kept_bytes = b"".join(kept)
    arrays = {n: table[..., i] for i, n in enumerate(names)} if before else {}
    return kept_bytes, data.startswith(kept_bytes), names, arrays


def final_return(returns: np.ndarray) -> float:
    """The mean episode return over the last 10% of updates (at least one), ignoring updates in which
    no episode completed."""
    returns = np.asarray(returns, np.float64)
    tail = returns[..., -max(1, returns.shape[-1] // 10):]
    with np.errstate(all="ignore"):
        return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def first_non_finite(metrics: dict[str, np.ndarray]) -> tuple[int, str] | None:
    """(index along the update axis, metric name) of the first non-finite guarded metric of any run."""
    found = []
    for order, name in enumerate(GUARDED_METRICS):
        if name in metrics:
            bad = ~np.isfinite(metrics[name])
            bad = bad.reshape(-1, bad.shape[-1]).any(axis=0)
            if bad.any():
                found.append((int(np.argmax(bad)), order, name))
    return (min(found)[0], min(found)[2]) if found else None


def area_under_curve(env_steps: np.ndarray, returns: np.ndarray) -> float:
    """Trapezoidal area under the return curve over env steps, normalised by the steps covered, so it
    reads as the average return over training. Updates with no completed episode are skipped."""
    ok = np.isfinite(returns)
    if ok.sum() < 2:
        return float(returns[ok][0]) if ok.any() else float("nan")
    x, y = env_steps[ok], np.asarray(returns, np.float64)[ok]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


RUNS_FILE = "runs.csv"


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """`rows` as a CSV file with a header from the first row's keys, floats to 6 digits."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def write_runs(run_dir: Path, members: Sequence[Any], metrics: dict[str, np.ndarray] | None = None) -> None:
    """`runs.csv`: per run (a population's member) its index, grid point, seed and the values it changes;
    with `metrics`, also its final return and the area under its return curve."""
    keys = list(dict.fromkeys(k for m in members for k in m.values))
    with (run_dir / RUNS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "point", "seed", *keys, *(["final_return", "auc"] if metrics else [])])
        for k, m in enumerate(members):
            finals = []
            if metrics:
                returns, steps = metrics["episode_return"][k], metrics["env_steps"][k].astype(np.float64)
                finals = [f"{final_return(returns):.6g}", f"{area_under_curve(steps, returns):.6g}"]
            writer.writerow([k, m.point, m.seed, *(m.values.get(key, "") for key in keys), *finals])


def read_runs(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of `runs.csv`, or none when the run dir has no such file."""
    path = run_dir / RUNS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
