"""Checkpoints of whole training states with orbax: everything a run needs to go on exactly, and the pins
that keep a checkpoint on disk while a reader reads it from a live run.

A checkpoint is the training states of a population (every run stacked on a leading axis; one for a
single run) saved with `StandardSave`, and its run record (`record.RunRecord`) as JSON. Restores go
through an abstract target built from the config, so a state comes back with its own types, and a
checkpoint written for another config is refused with a message that names the difference; a trained
policy's parts restore alone (`restore_parts`). Nothing uses pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from purejaxppo.errors import CheckpointError, SaveError
from purejaxppo.host import metrics, rundir
from purejaxppo.host.record import RunRecord, start_again
from purejaxppo.host.samplers import JOURNAL

CHECKPOINT_DIR = "checkpoints"
READERS_DIR = ".readers"  # a reader's pin on the checkpoint it reads: `<step>-<pid>-<id>`, locked while it reads
DELETING = ".deleting-"  # a pruned checkpoint's folder, renamed out of sight before it is removed


def resolved(run_dir: str | Path) -> Path:
    """A run dir's absolute path, its links followed; a link that leads back to itself is one line."""
    try:
        return Path(run_dir).resolve()
    except (RuntimeError, OSError):  # Python raises RuntimeError for a symlink loop
        raise CheckpointError(f"run dir {run_dir}: a symbolic link that leads back to itself") from None


def checkpoint_dir(run_dir: str | Path) -> Path:
    return resolved(run_dir) / CHECKPOINT_DIR


class Checkpointer:
    """Asynchronous saves into `RUN_DIR/checkpoints/<update>`, keeping the newest `keep` completed ones and
    any that a reader holds (`reading`). Orbax keeps every step; the older ones are pruned here once
    each save is complete, each renamed out of sight in one step before it is removed, so a reader
    never meets a half-deleted checkpoint."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self._dir = checkpoint_dir(run_dir)
        self._readers = resolved(run_dir) / READERS_DIR
        self._keep = keep
        self._pending: int | None = None  # the step of the save under way
        self._manager = ocp.CheckpointManager(
            self._dir, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True, create=True))

    def save(self, update: int, state: Any, record: RunRecord) -> None:
        """Save `state` as checkpoint `update`, with `record` (its update set to it)."""
        if update in self._manager.all_steps():  # already saved (a stop right after a periodic save)
            return
        self.wait()  # the previous save's failure is reported as its own (orbax would wait here anyway)
        self._pending = update
        # orbax declines, returning False, to save a step at or below its newest one
        try:
            saved = self._manager.save(
                update,
                args=ocp.args.Composite(state=ocp.args.StandardSave(without_empty(state)),
                                        meta=ocp.args.JsonSave(dataclasses.replace(record, update=update).to_json())),
            )
        except Exception as err:  # orbax and tensorstore raise many types
            raise self._failed(err) from None
        if not saved:
            raise CheckpointError(
                f"checkpoint {update} was not written: {self._dir} already holds later "
                f"checkpoint {self._manager.latest_step()}"
            )

    def wait(self) -> None:
        """Wait for the save under way, then prune the checkpoints past `keep` that no reader holds."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # orbax and tensorstore raise many types
            raise self._failed(err) from None
        self._prune()

    def _prune(self) -> None:
        if jax.process_index() != 0:  # one process of a multi-host run prunes the shared folder
            return
        for leftover in self._dir.glob(f"{DELETING}*"):  # a prune that a kill interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        steps = _completed(self._dir)
        for step in steps[:-self._keep]:
            if _pinned(self._readers, step):
                continue
            gone = self._dir / f"{DELETING}{step}-{uuid.uuid4().hex[:8]}"
            try:
                (self._dir / str(step)).rename(gone)
            except OSError:
                continue  # a prune cannot fail a run: the checkpoint stays, to go at the next one
            shutil.rmtree(gone, ignore_errors=True)

    def _failed(self, err: Exception) -> SaveError:
        text = str(err)
        found = re.search(r"\[Errno \d+\] ([^\]\"\n]+)|(No space left on device)", text)
        reason = (found.group(1) or found.group(2)) if found else (text.strip().splitlines() or [type(err).__name__])[0]
        return SaveError(f"checkpoint {self._pending} could not be written to {self._dir}: {reason[:200]}; "
                         f"the last good one is {last_good(self._dir.parent)}")

    def close(self) -> None:
        self._manager.close()
        self._prune()


def _pinned(readers: Path, step: int) -> bool:
    """Whether a live reader holds checkpoint `step`. A pin whose reader died (its lock gone with the
    process) is removed."""
    held = False
    for pin in readers.glob(f"{step}-*") if readers.is_dir() else ():
        try:
            fd = os.open(pin, os.O_RDONLY)
        except OSError:
            continue  # its reader let go meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        else:
            with contextlib.suppress(OSError):
                pin.unlink()
        finally:
            os.close(fd)
    return held


@contextlib.contextmanager
def reading(run_dir: str | Path, step: int | None = None) -> Iterator[int]:
    """Hold checkpoint `step` (the newest by default) of a run dir for the block, which gets the step: a live
    run does not delete it meanwhile. The pin is a file in `RUN_DIR/.readers/` under a shared lock. Where
    the run dir cannot be written (a finished run on a read-only disk, which no run is writing), the
    checkpoint is read unpinned."""
    run_dir = Path(run_dir)
    readers = resolved(run_dir) / READERS_DIR
    while True:
        chosen = _pick_step(run_dir, step)
        name = f"{chosen}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        pin = readers / name
        try:
            readers.mkdir(exist_ok=True)
            fd = os.open(readers / f".{name}", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield chosen
            return
        try:
            # locked before it gets the name a run looks for, so a run never takes a new pin for a stale one
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(readers / f".{name}", pin)
            # a run may have deleted it between the choice and the pin: then choose again
            if step is not None or chosen in available_steps(run_dir):
                yield chosen
                return
        finally:
            for path in (pin, readers / f".{name}"):
                with contextlib.suppress(OSError):
                    path.unlink()
            os.close(fd)


RUN_FILES = (metrics.FILE, metrics.RUNS_FILE)  # what a run or sweep writes besides checkpoints


def check_fresh(run_dir: str | Path) -> list[str]:
    """Refuse to start a new run in a run dir that holds a run with a checkpoint, whose files it would
    overwrite. Returns the files of a run that ended before its first checkpoint (a kill, an
    out-of-memory error), which has nothing to resume: `set_aside` moves them before the new run writes."""
    run_dir = Path(run_dir)
    steps = completed_steps(run_dir)
    held = [name for name in (*RUN_FILES, "config.yaml", "tensorboard", JOURNAL) if (run_dir / name).exists()]
    if steps:
        raise CheckpointError(
            f"run dir {run_dir} already holds a run (checkpoints {steps}, {', '.join(held)}); resume it with "
            f"--resume {run_dir}, or choose another run dir"
        )
    return held


def set_aside(run_dir: str | Path, names: list[str]) -> Path | None:
    """Move the files `names` of a run that ended before its first checkpoint into
    `RUN_DIR/superseded/no-checkpoint-<time>/`, which is returned (None when there are none)."""
    if not names:
        return None
    target = rundir.superseded_folder(Path(run_dir), "no-checkpoint")
    for name in names:
        (Path(run_dir) / name).rename(target / name)
    return target


def supersede_later(run_dir: str | Path, step: int) -> Path | None:
    """Move the checkpoints after `step`, and copy the metrics files as they stand, into
    `RUN_DIR/superseded/after-<step>-<time>/`, so a run resumed from an earlier checkpoint writes its own
    future without destroying the one it replaces. Returns that folder, or None when nothing came after
    `step`."""
    run_dir = Path(run_dir)
    later = [s for s in available_steps(run_dir) if s > step]
    if not later:
        return None
    target = rundir.superseded_folder(run_dir, f"after-{step}")
    (target / CHECKPOINT_DIR).mkdir()
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    for s in later:
        (checkpoint_dir(run_dir) / str(s)).rename(target / CHECKPOINT_DIR / str(s))
    return target


def completed_steps(run_dir: str | Path) -> list[int]:
    """The completed checkpoints of a run dir, none where it has no checkpoints folder (or is no folder)."""
    return _completed(checkpoint_dir(run_dir))


def last_good(run_dir: str | Path) -> str:
    """The newest completed checkpoint of a run dir, in words."""
    steps = completed_steps(run_dir)
    return f"checkpoint {steps[-1]}" if steps else "none (no checkpoint was completed)"


def available_steps(run_dir: str | Path, kind: str | None = None) -> list[int]:
    """The completed checkpoints of a run dir (orbax renames a save into place only once it is whole). `kind`
    ("run", "sweep" or "pbt"; None where any, as for a reader) is what the caller expects it to hold, for
    the hint of a stranded one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} does not exist")
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        raise CheckpointError(f"run dir {run_dir} has no checkpoints (no {CHECKPOINT_DIR}/ folder)"
                              f"{_again(run_dir, kind)}")
    return _completed(directory)


def _completed(directory: Path) -> list[int]:
    """The completed checkpoints in a checkpoints folder (orbax renames a save into place only once it is
    whole, so a digit-named folder is a finished one)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _again(run_dir: Path, kind: str | None) -> str:
    """For a run dir whose run ended before its first checkpoint: how to train it again."""
    if not any((run_dir / name).exists() for name in RUN_FILES):
        return ""
    return f"; its run ended before its first checkpoint, so there is nothing to resume or load: " \
           f"{start_again(run_dir, kind)}"


def _pick_step(run_dir: Path, step: int | None, kind: str | None = None) -> int:
    steps = available_steps(run_dir, kind)
    if not steps:
        raise CheckpointError(f"run dir {run_dir} has no completed checkpoint{_again(run_dir, kind)}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"step {step}: no checkpoint at that update in {run_dir}; available: {steps}")
    return step


def read_record(run_dir: str | Path, step: int | None = None, kind: str | None = None) -> tuple[int, RunRecord]:
    """The step and run record of a checkpoint, the latest one by default (`kind` as in `available_steps`).
    Reads JSON only: no JAX work."""
    run_dir = Path(run_dir)
    step = _pick_step(run_dir, step, kind)
    try:
        data = json.loads((checkpoint_dir(run_dir) / str(step) / "meta" / "metadata").read_text())
        if "stacked_runs" not in data:
            raise CheckpointError(f"checkpoint {step} in {run_dir} was written by an earlier purejaxppo, whose "
                                  f"single runs were not yet stacked as populations; this version cannot restore it")
        return step, RunRecord.from_json(data)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {step} in {run_dir} is corrupt: its metadata cannot be read ({type(err).__name__}: {err})"
        ) from None


def _empty(leaf: Any) -> bool:
    return math.prod(leaf.shape) == 0


def without_empty(tree: Any) -> Any:
    """`tree` with its zero-size arrays (e.g. MJX's `act` for a model without actuator state) left out:
    orbax cannot store them, and they hold nothing. `restore` puts them back."""
    return jax.tree.map(lambda x: None if _empty(x) else x, tree)


def _leaf_name(path: tuple) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


# Training-state arrays a later version added: a checkpoint written before them restores with the value
# they had then. A traced hyperparameter's is its checkpoint config's (its default, which left it off).
ADDED_LATER = ("hparams.",)


def _stored_arrays(run_dir: Path, step: int) -> Any:
    """The stored state's array metadata, as a tree of the structure it was saved with."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a sub-item has no step metadata, which is expected here
    try:
        stored = ocp.StandardCheckpointer().metadata(checkpoint_dir(run_dir) / str(step) / "state").item_metadata
    except Exception:  # orbax and tensorstore raise many types; all mean the same to a user
        stored = None
    finally:
        absl.setLevel(level)
    if stored is None or not jax.tree.leaves(stored):
        raise CheckpointError(f"checkpoint {step} in {run_dir} is corrupt: its array metadata cannot be read")
    return stored


def _named(tree: Any) -> dict[str, Any]:
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_arrays(run_dir: Path, step: int, abstract_state: Any) -> Any:
    """Compare the stored arrays' names and shapes with the target's before reading any data, so a
    mismatch is one message rather than a storm of failed reads. Returns the stored arrays' metadata."""
    stored = _stored_arrays(run_dir, step)
    shapes = {m.name: tuple(m.shape) for m in jax.tree.leaves(stored)}
    wanted = {name: leaf for name, leaf in _named(abstract_state).items() if not _empty(leaf)}
    for name, leaf in wanted.items():
        shape = tuple(leaf.shape)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # typed keys are stored as their raw data
            shape = tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
        if name not in shapes:
            if name.startswith(ADDED_LATER):
                continue
            raise CheckpointError(f"checkpoint {step} in {run_dir} does not match the config: it has no array {name}")
        if shapes[name] != shape:
            raise CheckpointError(
                f"checkpoint {step} in {run_dir} does not match the config: {name} has shape {shapes[name]} "
                f"there and {shape} here"
            )
    extra = sorted(set(shapes) - set(wanted))
    if extra:
        raise CheckpointError(f"checkpoint {step} in {run_dir} does not match the config: it has array {extra[0]}, "
                              f"which this config's training state does not")
    return stored


def _here(abstract: Any) -> Any:
    """`abstract` with this process's first device on every leaf that has no sharding: without one, orbax
    refuses a checkpoint written on another device count."""
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
        abstract)


def _unreadable(run_dir: Path, step: int, err: Exception) -> CheckpointError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(f"checkpoint {step} in {run_dir} cannot be restored: {first[:300]}; it is corrupt or was "
                           f"written by another version (other steps: {available_steps(run_dir)})")


def restore(run_dir: str | Path, abstract_state: Any, step: int, record: RunRecord, stored: Any) -> Any:
    """The training state of checkpoint `step`, against `abstract_state`; `record` and `stored` (the arrays'
    metadata, from `check_arrays`) as read before.

    The arrays are read by name into the structure they were stored with, then placed into the
    target's, so a checkpoint of an earlier version restores as long as every array it lacks is one a
    later version added (`ADDED_LATER`)."""
    run_dir = Path(run_dir)
    abstract_state = _here(abstract_state)
    wanted = _named(abstract_state)
    target = jax.tree.map(lambda m: wanted[m.name], stored)
    reader = None
    try:  # the step's own folder only: a manager would read every step's, which a live run may be deleting
        reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        restored = reader.restore(checkpoint_dir(run_dir) / str(step),
                                  args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as err:  # orbax and tensorstore raise many types; all mean the same to a user
        raise _unreadable(run_dir, step, err) from None
    finally:
        if reader is not None:
            reader.close()
    arrays = dict(zip((m.name for m in jax.tree.leaves(stored)), jax.tree.leaves(restored.state)))
    paths, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)

    def placed(name: str, x: Any) -> Any:
        if name in arrays:
            return arrays[name]
        # a zero-size array, or an array added later (a traced hyperparameter: its config value)
        value = getattr(record.config, name.removeprefix("hparams.")) if name.startswith("hparams.") else 0
        return jax.device_put(np.full(x.shape, value, x.dtype), getattr(x, "sharding", None))

    return treedef.unflatten([placed(_leaf_name(path), x) for path, x in paths])


def restore_parts(run_dir: str | Path, step: int, parts: tuple[str, ...]) -> dict[str, Any]:
    """Only the named top-level parts of checkpoint `step`'s training state (e.g. params and observation
    statistics), as host arrays in the nested dicts they were stored as: what acting with a trained
    policy needs, without its envs' states or a training state's structure."""
    run_dir = Path(run_dir)
    stored = _stored_arrays(run_dir, step)
    wanted = {p: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored[p]) for p in parts}
    wanted = _here(wanted)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            checkpoint_dir(run_dir) / str(step) / "state",
            args=ocp.args.PyTreeRestore(item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                                        partial_restore=True))
    except Exception as err:  # orbax and tensorstore raise many types; all mean the same to a user
        raise _unreadable(run_dir, step, err) from None
    return jax.device_get(restored)
