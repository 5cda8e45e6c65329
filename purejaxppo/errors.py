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


class Interrupted(KeyboardInterrupt):
    """A run interrupted at once (a second Ctrl-C) after it began to write its run dir; the message says
    what the run dir holds now and how to go on."""
