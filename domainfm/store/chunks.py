"""The read path of a store without zarr's per-read machinery: :class:`StoredArray` reads a slice of one
zarr v3 array the kit wrote by reading and decoding exactly the chunk files the slice covers, in the
calling thread.

zarr-python 3 runs every read through its asyncio event loop thread and the async codec pipeline, and
re-reads the array metadata each time an array is taken from a group: about 2 ms per crop of a few small
chunks, most of it waiting on the loop. The arrays a store holds use a small, fixed part of the format
(regular chunk grid, ``default`` chunk keys, the ``bytes`` codec then Blosc, zstd or gzip), so that part is
read here directly: the metadata once per array, then one file read and one decompression per chunk
(numcodecs, the library zarr decodes with). An array using anything else (sharding, a transpose, another
codec) is read through zarr itself. Decoded chunks are kept in a :class:`ChunkCache` bounded in bytes, so
memory does not grow with the archive, and a crop still reads at most the chunks it covers.

Example:
    >>> import tempfile
    >>> from domainfm.store.layout import ItemWriter
    >>> w = ItemWriter(Path(tempfile.mkdtemp()) / "item")
    >>> w.array("image", (1, 40, 40), "int16", (1, 32, 32))[:] = np.arange(1600).reshape(1, 40, 40)
    >>> arr = StoredArray.open(w.folder / "image", ChunkCache(1 << 20))
    >>> arr.shape, arr.chunks, arr[0, 30:34, 39].tolist()
    ((1, 40, 40), (1, 32, 32), [1239, 1279, 1319, 1359])
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .layout import StoreError, store_library

#: the codecs read here (after ``bytes``); anything else goes through zarr
COMPRESSORS = ("blosc", "zstd", "gzip")


def read_chunk_file(path: Path) -> bytes | None:
    """The bytes of one chunk file, ``None`` when it was never written (all fill value); tests wrap this
    to count the chunks a crop reads."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class ChunkCache:
    """Decoded chunks, least recently used first out, at most ``max_bytes`` in all (0: none kept).

    Example:
        >>> c = ChunkCache(100)
        >>> c.put("a", np.zeros(10, np.int64)); c.put("b", np.zeros(10, np.int64))
        >>> c.get("a") is None, c.get("b") is not None, c.nbytes
        (True, True, 80)
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.nbytes = 0
        self._chunks: OrderedDict[object, np.ndarray] = OrderedDict()

    def get(self, key) -> np.ndarray | None:
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
        return chunk

    def put(self, key, chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        old = self._chunks.pop(key, None)
        self.nbytes += chunk.nbytes - (old.nbytes if old is not None else 0)
        self._chunks[key] = chunk
        while self.nbytes > self.max_bytes:
            _, dropped = self._chunks.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        self._chunks.clear()
        self.nbytes = 0


def _decoder(codecs: list):
    """A ``bytes -> bytes`` decompressor for the codec list, or ``None`` when it is not one read here."""
    if not codecs or codecs[0].get("name") != "bytes" or len(codecs) > 2:
        return None
    if len(codecs) == 1:
        return bytes
    name = codecs[1].get("name")
    if name == "blosc":
        return store_library("numcodecs.blosc").decompress
    if name == "zstd":
        return store_library("numcodecs").Zstd().decode
    if name == "gzip":
        return store_library("numcodecs").GZip().decode
    return None


def _axis(key, size: int) -> tuple[int, int, bool] | None:
    """``(start, stop, keep the axis)`` of an int or a unit-step slice on an axis of ``size``."""
    if isinstance(key, (int, np.integer)):
        k = int(key) + (size if key < 0 else 0)
        if not 0 <= k < size:
            raise IndexError(f"index {int(key)} is out of bounds for an axis of size {size}")
        return k, k + 1, False
    if isinstance(key, slice) and key.step in (None, 1):
        start, stop, _ = key.indices(size)
        return start, max(start, stop), True
    return None


class StoredArray:
    """One zarr v3 array read chunk by chunk in this thread (see the module docstring): ``shape``,
    ``dtype``, ``chunks`` and basic indexing (ints and unit-step slices, as numpy clips them)."""

    def __init__(self, folder: Path, meta: dict, decode, cache: ChunkCache):
        self.folder = Path(folder)
        self.shape = tuple(int(s) for s in meta["shape"])
        self.chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        endian = (meta["codecs"][0].get("configuration") or {}).get("endian", "little")
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
        self.fill_value = meta.get("fill_value", 0) or 0
        self.separator = (meta["chunk_key_encoding"].get("configuration") or {}).get("separator", "/")
        self.decode = decode
        self.cache = cache
        self.ndim = len(self.shape)

    @classmethod
    def open(cls, folder: str | Path, cache: ChunkCache):
        """The array at ``folder``: a :class:`StoredArray` when its layout is one read here, else the
        zarr array itself (read through zarr)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            raise StoreError(
                folder / "zarr.json", "array metadata is missing or damaged; prepare the store again"
            ) from None
        decode = _decoder(meta.get("codecs") or []) if meta.get("node_type") == "array" else None
        grid, keys = meta.get("chunk_grid") or {}, meta.get("chunk_key_encoding") or {}
        plain = grid.get("name") == "regular" and keys.get("name") == "default" and not meta.get("storage_transformers")
        dtype = meta.get("data_type")
        if decode is None or not plain or not isinstance(dtype, str) or dtype not in np.sctypeDict:
            return store_library().open_array(str(folder), mode="r")
        return cls(folder, meta, decode, cache)

    def __repr__(self) -> str:
        return f"StoredArray({self.folder}, shape={self.shape}, chunks={self.chunks}, dtype={self.dtype})"

    def chunk(self, index: tuple[int, ...]) -> np.ndarray:
        """The decoded chunk at grid ``index`` (full chunk shape; a chunk never written is the fill value)."""
        key = (str(self.folder), index)
        got = self.cache.get(key)
        if got is not None:
            return got
        path = self.folder / self.separator.join(("c", *map(str, index)))
        raw = read_chunk_file(path)
        if raw is None:
            got = np.full(self.chunks, self.fill_value, self.dtype)
        else:
            try:
                got = np.frombuffer(self.decode(raw), self.dtype).reshape(self.chunks)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise StoreError(path, f"damaged chunk ({type(exc).__name__}); prepare the store again") from None
        self.cache.put(key, got)
        return got

    def __getitem__(self, key) -> np.ndarray:
        axes = self._selection(key)
        if axes is None:
            # an indexing form not read here (steps, arrays): zarr reads it
            return np.asarray(store_library().open_array(str(self.folder), mode="r")[key])
        out = np.empty(tuple(b - a for a, b, _ in axes), self.dtype)
        ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for (a, b, _), c in zip(axes, self.chunks)]
        for index in itertools.product(*ranges):
            src, dst = [], []
            for i, (a, b, _), c in zip(index, axes, self.chunks):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = self.chunk(index)[tuple(src)]
        return out[tuple(slice(None) if keep else 0 for _, _, keep in axes)]

    def _selection(self, key) -> list[tuple[int, int, bool]] | None:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        key = key + (slice(None),) * (self.ndim - len(key))
        axes = [_axis(k, s) for k, s in zip(key, self.shape)]
        return None if any(a is None for a in axes) else axes


class StoredGroup:
    """An item's arrays by name (opened on first use), read through :class:`StoredArray`.

    ``group[name]`` and ``name in group`` work as on a zarr group."""

    def __init__(self, folder: str | Path, cache: ChunkCache):
        self.folder = Path(folder)
        self.cache = cache
        self._arrays: dict[str, object] = {}

    def __getitem__(self, name: str):
        arr = self._arrays.get(name)
        if arr is None:
            if not (self.folder / name / "zarr.json").is_file():
                raise KeyError(name)
            arr = self._arrays[name] = StoredArray.open(self.folder / name, self.cache)
        return arr

    def __contains__(self, name: str) -> bool:
        return name in self._arrays or (self.folder / name / "zarr.json").is_file()

    def __repr__(self) -> str:
        return f"StoredGroup({self.folder})"
