"""Fast region reads from whole-slide images: raw TIFF tile decode where it is exact, OpenSlide otherwise.

OpenSlide's ``read_region`` paints every pixel through cairo and converts premultiplied ARGB to RGBA
in Python-side buffers; on a pyramidal TIFF whose tiles are losslessly compressed this costs more
than decoding the tiles. :class:`RegionReader` therefore reads a region of a pyramid level straight
from the TIFF page's tiles when the result is provably the same pixels OpenSlide would return:

* the slide is an OpenSlide ``generic-tiff`` or ``aperio`` file and the level is a tiled TIFF page
  of the same size (8-bit RGB, interleaved);
* the compression is lossless and decodable by :mod:`tifffile` without optional codecs (none,
  deflate/zlib) and there is no predictor;
* the level coordinates ``x0 / downsample`` are whole pixels (OpenSlide would otherwise resample).

Pixels outside the level are white, like :func:`~domainfm.pathology.slide.read_rgb` (OpenSlide's
transparent border composited over white). Any other slide or level (JPEG, JPEG 2000, MRXS, NDPI...)
is read with OpenSlide. Decoded TIFF tiles are kept in a small LRU so neighbouring reads share them,
and :meth:`RegionReader.read_many` decodes the missing tiles of a whole batch on a thread pool
(inflate releases the GIL), then crops every region from them. Deflate tiles are inflated with ISA-L
(the ``isal`` package) when it is installed, else with :mod:`zlib`; both give the same bytes.

Example:
    >>> reader = RegionReader("slide.tif")                              # doctest: +SKIP
    >>> reader.read((0, 0), 0, (224, 224)).shape                        # doctest: +SKIP
    (224, 224, 3)
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from .slide import SlideCache, open_slide, read_rgb

try:  # optional: ISA-L inflates deflate tiles about 2x faster than zlib, byte-identical (`pip install isal`)
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    _inflate = zlib

#: The deflate implementation used for raw tiles ("isal" or "zlib").
INFLATE = "isal" if _inflate is not zlib else "zlib"

#: TIFF compressions decoded here (1 none, 8 Adobe deflate, 32946 deflate): lossless, no optional codec.
RAW_COMPRESSIONS = (1, 8, 32946)
#: OpenSlide vendors whose levels are plain TIFF pages (no overlaps, no stitching).
RAW_VENDORS = ("generic-tiff", "aperio")


class _RawLevel:
    """One tiled TIFF page: tile geometry, file offsets and the decode function."""

    def __init__(self, page):
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.tiles_x = -(-self.width // self.tile_w)
        self.offsets = [int(v) for v in page.dataoffsets]
        self.counts = [int(v) for v in page.databytecounts]
        self.compression = int(page.compression)
        self.decode = page.decode
        self.jpegtables = page.jpegtables


def _raw_levels(path: str, slide) -> dict[int, _RawLevel]:
    """OpenSlide level -> raw TIFF page, for the levels that qualify (see the module doc)."""
    vendor = str(dict(slide.properties).get("openslide.vendor", ""))
    if vendor not in RAW_VENDORS or Path(path).suffix.lower() not in (".tif", ".tiff", ".svs"):
        return {}
    try:
        with tifffile.TiffFile(path) as tf:
            pages = [p for p in tf.pages if p.is_tiled]
            by_size: dict[tuple[int, int], list] = {}
            for p in pages:
                by_size.setdefault((int(p.imagewidth), int(p.imagelength)), []).append(p)
            out = {}
            for level, dims in enumerate(slide.level_dimensions):
                cand = by_size.get(tuple(int(v) for v in dims), [])
                if len(cand) != 1:
                    continue
                p = cand[0]
                if (
                    int(p.compression) in RAW_COMPRESSIONS
                    and int(p.predictor) == 1
                    and int(p.photometric) == 2
                    and int(p.planarconfig) == 1
                    and int(p.samplesperpixel) == 3
                    and int(p.bitspersample) == 8
                    and int(p.imagedepth) == 1
                    and len(p.dataoffsets) == len(p.databytecounts)
                ):
                    out[level] = _RawLevel(p)
            return out
    except Exception:
        return {}


class RegionReader:
    """Reads RGB regions of one slide as ``uint8`` arrays (raw TIFF tiles when exact, else OpenSlide).

    Thread-safe: OpenSlide handles are, file reads use ``os.pread`` and the tile cache is locked.

    Args:
        path: the slide file.  slide: an open OpenSlide handle for it (default: opened here).
        cache_bytes: size of the decoded-tile LRU.  raw: ``False`` always reads with OpenSlide.

    Example:
        >>> reader = RegionReader("slide.tif")                          # doctest: +SKIP
        >>> reader.raw_levels                                           # doctest: +SKIP
        [0, 1, 2, 3]
    """

    def __init__(self, path: str | Path, slide=None, cache_bytes: int = 64 << 20, raw: bool = True):
        self.path = str(path)
        self.slide = slide if slide is not None else open_slide(self.path)
        self._levels = _raw_levels(self.path, self.slide) if raw else {}
        self._fd = os.open(self.path, os.O_RDONLY) if self._levels else None
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self.cache_bytes = int(cache_bytes)
        self._lock = threading.Lock()

    @property
    def raw_levels(self) -> list[int]:
        """Levels read from raw TIFF tiles."""
        return sorted(self._levels)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tiles.clear()

    def _raw_box(self, location, level: int, size) -> tuple[int, int] | None:
        """Level-pixel top-left of the region if it can be read raw, else ``None``."""
        if level not in self._levels:
            return None
        ds = float(self.slide.level_downsamples[level])
        lx, ly = location[0] / ds, location[1] / ds
        rx, ry = round(lx), round(ly)
        if abs(lx - rx) > 1e-9 * max(1.0, abs(lx)) or abs(ly - ry) > 1e-9 * max(1.0, abs(ly)):
            return None
        return int(rx), int(ry)

    def _tile_ids(self, lv: _RawLevel, x: int, y: int, w: int, h: int) -> list[int]:
        x0, y0 = max(x, 0) // lv.tile_w, max(y, 0) // lv.tile_h
        x1, y1 = (min(x + w, lv.width) - 1) // lv.tile_w, (min(y + h, lv.height) - 1) // lv.tile_h
        if x + w <= 0 or y + h <= 0 or x >= lv.width or y >= lv.height:
            return []
        return [ty * lv.tiles_x + tx for ty in range(y0, y1 + 1) for tx in range(x0, x1 + 1)]

    def _decode(self, level: int, index: int) -> np.ndarray:
        lv = self._levels[level]
        data = os.pread(self._fd, lv.counts[index], lv.offsets[index])
        raw = data if lv.compression == 1 else _inflate.decompress(data)
        if len(raw) == lv.tile_h * lv.tile_w * 3:  # a full interleaved RGB tile, as TIFF stores them
            return np.frombuffer(raw, np.uint8).reshape(lv.tile_h, lv.tile_w, 3)
        tile, _, _ = lv.decode(data, index, jpegtables=lv.jpegtables)
        return tile.reshape(lv.tile_h, lv.tile_w, -1)[..., :3]

    def _cached(self, key) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def _store(self, key, tile: np.ndarray) -> None:
        with self._lock:
            if key not in self._tiles:
                self._tiles[key] = tile
                self._bytes += tile.nbytes
            while self._bytes > self.cache_bytes and len(self._tiles) > 1:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= old.nbytes

    def _ensure(self, level: int, ids, pool: ThreadPoolExecutor | None) -> dict[int, np.ndarray]:
        have = {i: self._cached((level, i)) for i in ids}
        missing = [i for i, t in have.items() if t is None]
        decoded = (
            pool.map(lambda i: self._decode(level, i), missing)
            if pool and len(missing) > 1
            else (self._decode(level, i) for i in missing)
        )
        for i, tile in zip(missing, decoded):
            self._store((level, i), tile)
            have[i] = tile
        return have

    def _crop(self, level: int, x: int, y: int, w: int, h: int, tiles: dict[int, np.ndarray]) -> np.ndarray:
        lv = self._levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        for i in self._tile_ids(lv, x, y, w, h):
            tx, ty = (i % lv.tiles_x) * lv.tile_w, (i // lv.tiles_x) * lv.tile_h
            ax0, ay0 = max(x, tx), max(y, ty)
            ax1 = min(x + w, tx + lv.tile_w, lv.width)
            ay1 = min(y + h, ty + lv.tile_h, lv.height)
            if ax1 > ax0 and ay1 > ay0:
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tiles[i][ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx]
        return out

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size = (w, h)`` pixels of ``level`` at level-0 ``location`` as ``h x w x 3`` uint8."""
        return self.read_many([location], level, size)[0]

    def read_many(
        self, locations, level: int, size: tuple[int, int], pool: ThreadPoolExecutor | None = None
    ) -> list[np.ndarray]:
        """Regions of one size at many level-0 ``locations``; missing tiles decoded on ``pool``.

        Regions that cannot be read raw are read with OpenSlide (on ``pool`` too when given).
        """
        w, h = int(size[0]), int(size[1])
        boxes = [self._raw_box(loc, level, size) for loc in locations]
        out: list[np.ndarray | None] = [None] * len(boxes)
        raw = [k for k, b in enumerate(boxes) if b is not None]
        if raw:
            lv = self._levels[level]
            ids = sorted({i for k in raw for i in self._tile_ids(lv, boxes[k][0], boxes[k][1], w, h)})
            tiles = self._ensure(level, ids, pool)
            for k in raw:
                out[k] = self._crop(level, boxes[k][0], boxes[k][1], w, h, tiles)
        rest = [k for k, b in enumerate(boxes) if b is None]
        if rest:

            def slow(k):
                loc = (int(locations[k][0]), int(locations[k][1]))
                return np.asarray(read_rgb(self.slide, loc, level, (w, h)))

            for k, arr in zip(rest, pool.map(slow, rest) if pool and len(rest) > 1 else map(slow, rest)):
                out[k] = arr
        return out


class ReaderCache(SlideCache):
    """A :class:`~domainfm.pathology.slide.SlideCache` that also keeps a :class:`RegionReader` per open slide.

    Example:
        >>> cache = ReaderCache(max_open=4)
        >>> cache.reader("a.tif").read((0, 0), 0, (64, 64)).shape      # doctest: +SKIP
        (64, 64, 3)
    """

    def __init__(self, max_open: int = 8):
        super().__init__(max_open)
        self._readers: dict[str, RegionReader] = {}

    def reader(self, path: str | Path) -> RegionReader:
        """The region reader of ``path`` (re-created when its slide handle was evicted or the process forked)."""
        slide = self.get(path)
        key = str(path)
        r = self._readers.get(key)
        if r is None or r.slide is not slide:
            if r is not None:
                r.close()
            for stale in [k for k in self._readers if k not in self._handles]:
                self._readers.pop(stale).close()
            r = self._readers[key] = RegionReader(key, slide)
        return r

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        super().close()
