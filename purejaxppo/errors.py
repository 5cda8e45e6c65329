"""Every error a user can cause, each reported as one line (the CLI adds `purejaxppo: error:` and its exit
status), and notes for the user. Imports nothing of the package, so every module, the env families and
the CLI can raise and catch them without starting JAX.

Exit statuses: 2 for input that cannot work (ConfigError and its kinds), 3 NonFiniteError, 4 SaveError,
5 DeviceError, 6 another process lost, 130 an interruption."""

import difflib
import sys
from collections.abc import Iterable

EXIT_PROCESS_LOST = 6  # another process of a multi-host run died or lost touch (host.processes ends this one)

_SAID: set[str] = set()


def notify(message: str, once: bool = False) -> None:
    """Tell the user, in one `purejaxppo: note:` line on stderr, something they should know that does not
    stop the run; with `once`, only the first time in the process."""
    if once and message in _SAID:
        return
    _SAID.add(message)
    print(f"purejaxppo: note: {message}", file=sys.stderr, flush=True)


class ConfigError(ValueError):
    """Input that cannot be run: a config, an env, a path, an option. The message is one line that names
    the key and the problem."""


def unknown_key(key: str, known: Iterable[str], what: str, alias: str | None = None) -> ConfigError:
    """`key` is none of `known`: one line with the closest known key (`alias` first, when given), or all of them."""
    known = list(known)
    close = [alias] if alias else difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    close = close or [k for k in known if k.startswith(key) or key.startswith(k)][:1]
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{key}: unknown {what}{hint}")


class RunDirError(ConfigError):
    """A run dir that cannot be written, or that another process is writing."""


class CheckpointError(ConfigError):
    """A run dir or checkpoint that cannot be used: missing, corrupt, or written for another config."""


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
