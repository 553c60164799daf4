"""Atomic writers: a temporary name next to the final one, renamed at the end, so an interrupted writer never
leaves a file that looks complete; JSON and array files written that way."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.errors import DataError
from domainfm.io_safety.checks import _suffixes, os_error_text, refuse_input_overwrite


def temp_name(final: str | Path) -> Path:
    """A temporary name next to ``final`` that keeps its suffix (writers pick formats by suffix).

    Example:
        >>> temp_name("/data/pred.nii.gz").name.endswith(".nii.gz")
        True
    """
    final = Path(final)
    suffix = _suffixes(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    return final.with_name(f".tmp-{stem}-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_output(final: str | Path, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it to ``final`` (atomic), on any
    error (or Ctrl-C) delete it, so no half-written file ever carries the final name.

    OS errors while writing (disk full, permissions) become a one-line :class:`DataError`.
    """
    final = Path(final)
    refuse_input_overwrite(final, inputs)
    tmp = temp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise DataError(final, "the writer produced no file")
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        raise DataError(final, f"cannot write: {os_error_text(exc)}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy values and paths converted), atomically and synced to disk."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_arrays_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays to ``.npz``, or to ``.h5``/``.hdf5`` (strings stored as bytes), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py  # optional heavy dependency, only for HDF5 outputs

            with h5py.File(tmp, "w") as f:
                for key, value in arrays.items():
                    value = np.asarray(value)
                    f.create_dataset(key, data=value.astype("S") if value.dtype.kind == "U" else value)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path
