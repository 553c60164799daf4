"""Errors the kit raises on purpose.

Every error a user can meet through bad input is a :class:`DomainFMError` (or a subclass) whose
message names the file or key and says what is wrong, in one line. The CLI prints that line and
exits non-zero, with no traceback; a notebook shows that line and where it was raised
(``_render_traceback_``), and the full traceback after :func:`debug` ``(True)`` or with the
environment variable ``DOMAINFM_DEBUG=1``.

Example:
    >>> unknown_choice("objective", "maeh", ["dino", "mae", "contrastive"])
    "unknown objective 'maeh' (did you mean 'mae'?); choose one of: contrastive, dino, mae"
    >>> try:
    ...     raise ConfigError("train.steps must be > 0")
    ... except ConfigError as exc:
    ...     print(exc._render_traceback_()[0])
    ConfigError: train.steps must be > 0
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Iterable
from pathlib import Path

_DEBUG = {"on": False}


def debug(on: bool = True) -> None:
    """Show the kit's own errors with their full traceback in a notebook (``domainfm.debug(True)``);
    ``debug(False)`` goes back to the one line and where it was raised. ``DOMAINFM_DEBUG=1`` does the same
    as ``debug(True)`` for a whole session.

    Example:
        >>> debug(True); debug_enabled()
        True
        >>> debug(False)
    """
    _DEBUG["on"] = bool(on)


def debug_enabled() -> bool:
    """Whether errors show their full traceback (:func:`debug`, or ``DOMAINFM_DEBUG=1``)."""
    return _DEBUG["on"] or os.environ.get("DOMAINFM_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``value``, or ``""`` when none is close.

    Example:
        >>> did_you_mean("vit-tiyn", ["vit-tiny", "vit-small"]), did_you_mean("zzz", ["vit-tiny"])
        (" (did you mean 'vit-tiny'?)", '')
    """
    names = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(value), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, value: object, choices: Iterable[object], listed: str = "choose one of") -> str:
    """The one-line message for a name that is not one of ``choices``: the closest one, then all of them."""
    names = sorted(str(c) for c in choices)
    return f"unknown {kind} {value!r}{did_you_mean(value, names)}; {listed}: {', '.join(names) or 'none'}"


def _where(tb) -> str:
    """``file:line in function`` of the innermost frame of a traceback (a kit path relative to the kit)."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if not frames:
        return ""
    frame = frames[-1]
    path = Path(frame.filename)
    parts = path.parts
    shown = "/".join(parts[parts.index("domainfm") :]) if "domainfm" in parts else path.name
    if "domains" in parts and "domainfm" not in parts:
        shown = "/".join(parts[parts.index("domains") :])
    return f"{shown}:{frame.lineno} in {frame.name}"


class DomainFMError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    def _short_traceback(self) -> list[str]:
        """What a notebook shows: the one line, and where it was raised."""
        lines = [f"{type(self).__name__}: {self}"]
        where = _where(self.__traceback__)
        if where:
            lines.append(f"  (raised in {where}; domainfm.debug(True) shows the full traceback)")
        return lines

    @property
    def _render_traceback_(self):
        """IPython's hook for how an exception is shown: the short form, unless debugging (then the
        attribute is absent and IPython shows its full traceback)."""
        if debug_enabled():
            raise AttributeError("_render_traceback_")
        return self._short_traceback


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
