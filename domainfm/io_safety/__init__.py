"""Nothing is lost: outputs never replace inputs, run folders are locked, writes are atomic and checked.

* :func:`check_output` — before any expensive work, refuse an output path that is (or would replace)
  one of the inputs (same resolved path or same inode), that sits under a file, or whose folder is
  not writable; one-line :class:`~domainfm.errors.DataError` naming the path.
* :func:`check_exists` — the one ``exist_ok`` rule of every writer (``import_weights``, ``embed``,
  ``predict``, ``evaluate``'s ``out``, the export): an existing output is refused in one line that names it
  and says "pass exist_ok=True to replace it"; with ``exist_ok=True`` it is replaced atomically by the
  writer, but never when it is, or holds, an input or a checkpoint. :func:`exist_ok_policy` applies the
  same rule to the file names a domain's writer derives from ``out`` (through :func:`check_output`).
* :func:`atomic_output` — write to a temporary name in the same folder and rename at the end, so an
  interrupted writer never leaves a file that looks complete; write errors (disk full, permissions)
  become one line.
* :class:`RunLock` — a lock file with the holder's pid in a run folder; a second process is refused
  with that pid, a lock left by a dead process is taken over.
* :func:`clean_stale_tmp` — remove ``.tmp-*`` / ``.old-*`` leftovers of interrupted checkpoint writes.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from domainfm.errors import DataError
    >>> d = Path(tempfile.mkdtemp()); src = d / "scan.nii.gz"; _ = src.write_bytes(b"x")
    >>> check_output(d / "pred.nii.gz", [src]).name
    'pred.nii.gz'
    >>> try:
    ...     check_output(d / "scan.nii.gz", [src])
    ... except DataError as e:
    ...     print("refused")
    refused
    >>> with atomic_output(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text(), sorted(p.name for p in d.iterdir() if ".tmp" in p.name)
    ('done', [])
    >>> check_exists(d / "out.txt", exist_ok=False)
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: .../out.txt already exists; pass exist_ok=True to replace it, or another out (...)
    >>> check_exists(d / "out.txt", exist_ok=True), check_exists(d / "new.txt")
    (True, False)
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (io_safety.np: tests reach numpy's writers through it)

from domainfm.io_safety.checks import (
    CHECKPOINT_FILES,
    EMBED_SUFFIXES,
    EXIST_OK_WORDS,
    REPLACE_HINT,
    check_embed_suffix,
    check_exists,
    check_not_in_checkpoint,
    check_output,
    check_regular,
    check_writable_folder,
    checkpoint_around,
    exist_ok_mode,
    exist_ok_policy,
    existing_output,
    has_output,
    os_error_text,
    refuse_input_overwrite,
    refuse_replacing,
    report_dangling,
    same_file,
    special_file,
)
from domainfm.io_safety.locks import LOCK_NAME, RunLock, clean_stale_tmp, lock_run
from domainfm.io_safety.writers import atomic_output, temp_name, write_arrays_atomic, write_json_atomic

__all__ = [
    "CHECKPOINT_FILES",
    "EMBED_SUFFIXES",
    "EXIST_OK_WORDS",
    "LOCK_NAME",
    "REPLACE_HINT",
    "RunLock",
    "atomic_output",
    "check_embed_suffix",
    "check_exists",
    "check_not_in_checkpoint",
    "check_output",
    "check_regular",
    "check_writable_folder",
    "checkpoint_around",
    "clean_stale_tmp",
    "exist_ok_mode",
    "exist_ok_policy",
    "existing_output",
    "has_output",
    "lock_run",
    "os_error_text",
    "refuse_input_overwrite",
    "refuse_replacing",
    "report_dangling",
    "same_file",
    "special_file",
    "temp_name",
    "write_arrays_atomic",
    "write_json_atomic",
]
