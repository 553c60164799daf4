"""The on-disk layout of a store, its manifest and the writer of one item.

```
STORE/
  zarr.json        the root zarr v3 group (attributes: format, domain)
  manifest.json    format, domain, settings (the preprocessing decisions), provenance, items, failures
  journal.jsonl    one line per item finished since the manifest was last written (crash-safe record)
  items/<key>/     one zarr group per prepared source, renamed into place only when complete
  tmp/             items being written (removed by the next run: an interrupted item is redone whole)
```

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> is_store(folder), is_store(folder / "missing")
    (False, False)
    >>> read_manifest(folder)
    Traceback (most recent call last):
    ...
    domainfm.store.layout.StoreError: ...: not a domainfm store (no manifest.json); prepare one with ...
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.errors import ConfigError, DataError

FORMAT = "domainfm-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
ITEMS = "items"
TMP = "tmp"
PREPARE_HINT = "prepare one with domainfm prepare --domain D --data SRC --out STORE"


class StoreError(DataError):
    """A store is missing, damaged, or was prepared differently (names the store and the fix)."""


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a prepared store (a folder holding ``manifest.json`` and ``zarr.json``); the
    contents are checked by :func:`read_manifest`.

    Example:
        >>> is_store("scans/")
        False
    """
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file() and (p / "zarr.json").is_file()


def read_manifest(path: str | Path, domain: str | None = None) -> dict:
    """The manifest of the store at ``path``; :class:`StoreError` when it is not a store, the manifest is
    damaged, or the store holds another ``domain``'s data."""
    p = Path(path)
    if not p.exists():
        raise StoreError(p, f"does not exist; {PREPARE_HINT}")
    if not (p / MANIFEST).is_file():
        raise StoreError(p, f"not a domainfm store (no {MANIFEST}); {PREPARE_HINT}")
    try:
        manifest = json.loads((p / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(
            p / MANIFEST, f"damaged store manifest ({type(exc).__name__}); prepare the store again into a new --out"
        ) from None
    missing = (
        [k for k in ("format", "domain", "settings", "items") if k not in manifest]
        if isinstance(manifest, dict)
        else ["format"]
    )
    if missing or manifest.get("format") != FORMAT:
        raise StoreError(
            p / MANIFEST,
            f"damaged store manifest (no {', '.join(missing) or 'format ' + FORMAT}); "
            "prepare the store again into a new --out",
        )
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(p, f"store format {manifest['format_version']} is newer than this kit reads; upgrade domainfm")
    if domain is not None and manifest["domain"] != domain:
        other = manifest["domain"]
        raise StoreError(p, f"holds {other} data, not {domain}; give a {domain} store or use --domain {other}")
    return manifest


def safe_key(text: str) -> str:
    """A folder-safe item key from an id or a path.

    Example:
        >>> safe_key("case 01/ct.nii.gz")
        'case_01_ct.nii.gz'
    """
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "item"
    return key[:120]


def file_stamp(path: str | Path) -> dict:
    """``{path, size, mtime_ns}`` of a file (a folder: the sum of its files' sizes, the latest mtime).

    Example:
        >>> sorted(file_stamp(__file__))
        ['mtime_ns', 'path', 'size']
    """
    p = Path(path)
    st = p.stat()
    if not p.is_dir():
        return {"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    size, mtime = 0, int(st.st_mtime_ns)
    for f in p.rglob("*"):
        if f.is_file():
            fs = f.stat()
            size, mtime = size + int(fs.st_size), max(mtime, int(fs.st_mtime_ns))
    return {"path": str(p), "size": size, "mtime_ns": mtime}


#: Blosc settings by name: ``lz4`` decodes about twice as fast as ``zstd`` level 3 (the crops a loader
#: reads per second) for stores about 1.5 times as large (benchmarks/archive_scale.py, docs/store.md)
COMPRESSIONS = {"lz4": ("lz4", 5), "zstd": ("zstd", 3)}
COMPRESSION = "lz4"


def compressor(name: str = COMPRESSION):
    """Blosc (``lz4`` or ``zstd``, :data:`COMPRESSIONS`) with byte shuffle, through zarr's own codec."""
    if name not in COMPRESSIONS:
        raise ConfigError(f"compression: unknown {name!r}; choose one of {', '.join(COMPRESSIONS)}")
    cname, level = COMPRESSIONS[name]
    return store_library("zarr.codecs").BloscCodec(cname=cname, clevel=level, shuffle="shuffle")


class ItemWriter:
    """Writes one item's arrays into its temporary group ``folder`` (the domain's ``prepare_item`` calls
    :meth:`array`); :meth:`finish` records the item in the group's attributes.

    Example:
        >>> import tempfile
        >>> w = ItemWriter(Path(tempfile.mkdtemp()) / "tmp" / "a")
        >>> w.array("image", (2, 40, 40), "int16", (1, 32, 32))[:] = 7
        >>> w.finish({"samples": 1})["samples"], sorted(p.name for p in w.folder.iterdir())
        (1, ['image', 'zarr.json'])
    """

    def __init__(self, folder: str | Path, compression: str = COMPRESSION):
        zarr = store_library()
        self.folder = Path(folder)
        self.compression = compression
        self.group = zarr.open_group(str(self.folder), mode="w")

    def array(self, name: str, shape, dtype, chunks):
        """A new compressed zarr array ``name`` of this item (chunks clipped to the shape)."""
        shape = tuple(int(s) for s in shape)
        chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, shape))
        codec = compressor(self.compression)
        return self.group.create_array(
            name, shape=shape, dtype=np.dtype(dtype), chunks=chunks, compressors=codec, fill_value=0
        )

    def finish(self, record: dict) -> dict:
        self.group.attrs["record"] = record
        return record


def store_library(name: str = "zarr"):
    """The module ``name`` of the ``store`` extra (zarr, or the numcodecs it brings), imported when a store is
    written or read; without it, one line saying what to install.

    Example:
        >>> store_library("numpy").__name__
        'numpy'
        >>> try:
        ...     store_library("no_such_codec_library")
        ... except ConfigError as exc:
        ...     print(exc)
        prepared stores need no_such_codec_library, which is not installed: pip install 'domainfm[store]'
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"prepared stores need {name.split('.')[0]}, which is not installed: pip install 'domainfm[store]'"
        ) from None


def create_root(path: Path, domain: str) -> None:
    """The root zarr group of a new store (so other zarr tools open it)."""
    store_library().open_group(str(path), mode="a", attributes={"format": FORMAT, "domain": domain})
    (path / ITEMS).mkdir(exist_ok=True)


def item_record(folder: Path) -> dict | None:
    """The record of a complete item group (``None`` when the group has none: never finished)."""
    try:
        meta = json.loads((folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    record = (meta.get("attributes") or {}).get("record")
    return record if isinstance(record, dict) else None


def read_journal(path: Path) -> list[dict]:
    """Records appended since the manifest was written (a torn last line is ignored)."""
    out = []
    try:
        lines = (path / JOURNAL).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


def append_journal(path: Path, record: dict) -> None:
    """Append one finished item to the journal, synced (the item itself is already in place)."""
    with open(path / JOURNAL, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def jsonable(obj: Any) -> Any:
    """Numpy values, paths and tuples in ``obj`` as plain JSON values.

    Example:
        >>> jsonable({"a": np.float32(1.5), "b": (Path("x"), np.arange(2))})
        {'a': 1.5, 'b': ['x', [0, 1]]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
