"""Errors the kit raises on purpose.

Every error a user can meet through bad input is a :class:`DomainFMError` (or a subclass) whose
message names the file or key and says what is wrong, in one line. The CLI prints that line and
exits non-zero, with no traceback.
"""

from __future__ import annotations

from pathlib import Path


class DomainFMError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(DomainFMError):
    """A config key, value or path is wrong (names the key and the file)."""


class DataError(DomainFMError):
    """An input file is unreadable or its content is wrong (names the file)."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(DomainFMError):
    """A checkpoint is missing, incomplete or does not fit the data."""


class NonFiniteLossError(DomainFMError):
    """Training produced a NaN/inf loss; the run stopped and kept the last good checkpoint."""


class UnsupportedError(DomainFMError, NotImplementedError):
    """A domain plugin does not offer this operation (e.g. ``predict`` for the synthetic domain)."""


class NotLearningError(DomainFMError):
    """The training loss (or, for self-distillation, the teacher) did not move from its start past warmup."""
