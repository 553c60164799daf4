"""Small mechanisms every layer uses: atomic file writers, device lookup, list-option parsing.

Nothing here imports the kit beyond :mod:`domainfm.errors`.

Example:
    >>> import tempfile, pathlib, json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "card.json"
    >>> write_json_atomic(path, {"step": 3}) == path, json.loads(path.read_text())
    (True, {'step': 3})
    >>> parse_list("B02, B03,B04"), parse_list([0.5, 1]), parse_list("1,2", float)
    (['B02', 'B03', 'B04'], [0.5, 1], [1.0, 2.0])
    >>> pick_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from domainfm.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block ends without error,
    removed otherwise, so readers never see a half-written file.

    The temporary name keeps the suffix (``.npz``, ``.png``...) so libraries that pick a format by
    suffix write the right one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_arrays_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays to ``.npz``, or to ``.h5``/``.hdf5`` (strings stored as bytes), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
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


def pick_device(name: str = "auto", local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``auto`` -> the local CUDA device when present, else CPU; a bad or absent device is a ConfigError."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key} {name!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {name!r} but no CUDA GPU is available here; use auto or cpu")
    return device


def parse_list(value: Any, item: Callable[[Any], Any] | None = None) -> list:
    """A list option given as a list, a scalar, or a comma-separated string (``"a,b"``; blanks dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        values: list = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    return [item(v) for v in values] if item else values
