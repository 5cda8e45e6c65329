"""Faults at run time that the CLI reports in one line. Imports nothing, so the CLI can catch them
without starting JAX."""


class NonFiniteError(RuntimeError):
    """A run produced a non-finite loss, gradient norm or parameter and was stopped."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, a lost mount). One line: what, why, and the last
    good checkpoint."""
