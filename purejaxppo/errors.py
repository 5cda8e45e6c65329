"""Faults at run time that the CLI reports in one line, and notes for the user. Imports nothing of the
package, so the CLI can catch them without starting JAX."""

import sys

_SAID: set[str] = set()


def notify(message: str, once: bool = False) -> None:
    """Tell the user, in one `purejaxppo: note:` line on stderr, something they should know that does not
    stop the run; with `once`, only the first time in the process."""
    if once and message in _SAID:
        return
    _SAID.add(message)
    print(f"purejaxppo: note: {message}", file=sys.stderr, flush=True)


class NonFiniteError(RuntimeError):
    """A run produced a non-finite loss, gradient norm or parameter and was stopped."""


class SaveError(RuntimeError):
    """A checkpoint or a run file could not be written (a full disk, a lost mount). One line: what, why, and
    the last good checkpoint."""


class DeviceError(RuntimeError):
    """The device refused a computation (out of memory, an invalid argument). One line: what, and the key
    to change."""


def device_error(err: BaseException, out_of_memory: str) -> DeviceError:
    """XLA's error (a JaxRuntimeError) as one line; `out_of_memory` says what to change when it ran out of
    memory, e.g. `num_envs: ...; use fewer envs`."""
    first = " ".join((str(err).strip().splitlines() or [type(err).__name__])[0].split())[:300]
    if "RESOURCE_EXHAUSTED" in first or "out of memory" in first.lower():
        key, _, advice = out_of_memory.partition(": ")
        return DeviceError(f"{key}: the device ran out of memory ({first}); {advice}")
    return DeviceError(f"the device refused the computation: {first}")


def is_device_error(err: BaseException) -> bool:
    """Whether `err` is XLA's runtime error (jax.errors.JaxRuntimeError), without importing JAX."""
    return any(t.__name__ == "JaxRuntimeError" for t in type(err).__mro__)


class Interrupted(KeyboardInterrupt):
    """A run interrupted at once (a second Ctrl-C) after it began to write its run dir; the message says
    what the run dir holds now and how to go on."""
