"""Faults at run time that the CLI reports in one line, and notes for the user. Imports nothing of the
package, so the CLI can catch them without starting JAX."""

import logging

NOTES = logging.getLogger("purejaxppo")


def notify(message: str) -> None:
    """Tell the user, in one line, something they should know that does not stop the run (the CLI prints
    it as `purejaxppo: note: ...`; elsewhere it goes to Python's logging, shown by default)."""
    NOTES.warning(message)


class NonFiniteError(RuntimeError):
    """A run produced a non-finite loss, gradient norm or parameter and was stopped."""


class SaveError(RuntimeError):
    """A checkpoint or a run file could not be written (a full disk, a lost mount). One line: what, why, and
    the last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """A run interrupted at once (a second Ctrl-C) after it began to write its run dir; the message says
    what the run dir holds now and how to go on."""
