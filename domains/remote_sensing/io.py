"""Windowed GeoTIFF/COG reading: band selection by name, nodata/masks, scale/offset, multi-resolution.

A :class:`Scene` is one acquisition: either one multi-band raster file, or a folder with one file
per band (e.g. Sentinel-2 ``*_B02_10m.tif``, ``*_B05_20m.tif``, ``*_B01_60m.tif``). Every read is
a window on the scene's *reference grid* (the finest band's grid, or the first file's): files at
other resolutions are read with a floating-point window and ``out_shape`` (GDAL resamples while
reading), so a scene is never loaded whole.

Example:
    >>> import tempfile
    >>> from domainfm.remote_sensing.synthetic import write_scene
    >>> path, _ = write_scene(Path(tempfile.mkdtemp()) / "S2A_T33TWM.tif", "sentinel2", ["B02", "B03", "B04", "B08"],
    ...                       size=(32, 32))
    >>> scene = Scene(path, sensor="sentinel2", bands="B02,B03,B04,B08")
    >>> data, valid = scene.read(Window(0, 0, 16, 16))
    >>> data.shape, valid.dtype
    ((4, 16, 16), dtype('bool'))
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window, from_bounds

from domainfm.errors import ConfigError, DataError, did_you_mean

from .sensors import Band, Sensor, _norm, get_sensor

log = logging.getLogger("domainfm.remote_sensing")

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".gtiff")
_RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
}


def is_raster_name(path: Path) -> bool:
    """Whether a path has a raster file suffix (``.tif``, ``.tiff``, ``.jp2``, ``.vrt``...)."""
    return path.suffix.lower() in RASTER_SUFFIXES


# ---- open-handle cache (per process: rasterio handles must not cross a fork) ----------------------
_HANDLES: dict[tuple[int, str], rasterio.io.DatasetReader] = {}
_MAX_HANDLES = 64


def open_raster(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a raster (cached per process); a file GDAL cannot read is a one-line :class:`DataError`."""
    key = (os.getpid(), str(path))
    src = _HANDLES.get(key)
    if src is not None and not src.closed:
        return src
    if not Path(path).exists():
        raise DataError(path, "file does not exist")
    try:
        src = rasterio.open(path)
    except (RasterioIOError, RasterioError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(path, f"not a raster GDAL can read ({msg[:160]})") from None
    if len(_HANDLES) >= _MAX_HANDLES:
        for k in list(_HANDLES)[: _MAX_HANDLES // 2]:
            try:
                _HANDLES.pop(k).close()
            except Exception:  # pragma: no cover
                pass
    _HANDLES[key] = src
    return src


def close_all() -> None:
    """Close every cached raster handle of this process."""
    for k in list(_HANDLES):
        try:
            _HANDLES.pop(k).close()
        except Exception:  # pragma: no cover
            pass


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size (the thing outputs must reproduce)."""

    crs: object
    transform: object
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    def same_as(self, other: Grid, rtol: float = 1e-6) -> bool:
        """Same CRS, size and (to a small fraction of a pixel) transform."""
        if (self.width, self.height) != (other.width, other.height):
            return False
        if not crs_equal(self.crs, other.crs):
            return False
        tol = rtol * max(self.res) + 1e-9
        return all(
            abs(a - b) <= max(tol, 1e-3 * max(self.res)) for a, b in zip(self.transform[:6], other.transform[:6])
        )

    def describe(self) -> str:
        t = self.transform
        return (
            f"{self.width}x{self.height} px, CRS {crs_name(self.crs)}, origin ({t.c:.3f}, {t.f:.3f}), "
            f"pixel {t.a:g}x{abs(t.e):g}"
        )


def crs_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return a == b
    except Exception:  # pragma: no cover
        return str(a) == str(b)


def crs_name(crs) -> str:
    if crs is None:
        return "none"
    try:
        epsg = crs.to_epsg()
    except Exception:  # pragma: no cover
        epsg = None
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] if hasattr(crs, "to_string") else str(crs)[:60])


def grid_of(src) -> Grid:
    return Grid(src.crs, src.transform, src.width, src.height)


# ---- band matching -----------------------------------------------------------------------------
@dataclass
class BandSource:
    """Where one output channel comes from: ``file`` band ``index`` (1-based), with its scale/offset."""

    band: Band
    file: Path
    index: int
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None


def _token_regex(key: str) -> re.Pattern:
    return re.compile(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])")


def _file_band_keys(path: Path) -> set[str]:
    """Normalised tokens of a file name (``T33_20200101_B02_10m`` -> {t33, 20200101, b02, 10m})."""
    return {_norm(t) for t in re.split(r"[^A-Za-z0-9]+", path.stem) if t}


def _match_descriptions(path: Path, descriptions: list[str], bands: list[Band]) -> list[int]:
    """1-based file band index for each requested band, from the file's band descriptions."""
    keys = [_norm(d) if d else "" for d in descriptions]
    out = []
    missing = []
    for band in bands:
        hits = [i for i, k in enumerate(keys) if k and k in band.keys()]
        if not hits:
            missing.append(band.name)
        else:
            out.append(hits[0] + 1)
    if missing:
        shown = [d or "?" for d in descriptions]
        raise DataError(
            path,
            f"band descriptions {shown} do not match the requested band(s) "
            f"{', '.join(missing)}; check data.options.bands or the file",
        )
    return out


def _scale_offset(src, idx: int, band: Band) -> tuple[float, float]:
    scale = float(src.scales[idx - 1]) if src.scales else 1.0
    offset = float(src.offsets[idx - 1]) if src.offsets else 0.0
    if scale == 1.0 and offset == 0.0 and (band.scale is not None or band.offset is not None):
        scale = 1.0 if band.scale is None else band.scale
        offset = 0.0 if band.offset is None else band.offset
    return scale, offset


def match_file_bands(path: Path, sensor: Sensor, bands: list[Band]) -> list[BandSource]:
    """Map requested ``bands`` onto one multi-band file.

    Rules: band descriptions in the file, when present, decide and must name every requested band;
    otherwise a file with all of the sensor's bands is in sensor order, and a file with exactly as
    many bands as requested holds them in the requested order. Anything else is an error.
    """
    src = open_raster(path)
    descriptions = list(src.descriptions or ())
    if any(d for d in descriptions):
        idx = _match_descriptions(path, descriptions, bands)
    elif src.count == len(sensor.bands):
        idx = [sensor.bands.index(b) + 1 for b in bands]
    elif src.count == len(bands):
        idx = list(range(1, len(bands) + 1))
    elif src.count < len(bands):
        raise DataError(
            path, f"has {src.count} band(s) but {len(bands)} are configured ({', '.join(b.name for b in bands)})"
        )
    else:
        raise DataError(
            path,
            f"has {src.count} bands, neither the {len(bands)} configured "
            f"({', '.join(b.name for b in bands)}) nor the {len(sensor.bands)} of sensor "
            f"{sensor.name!r}, and no band descriptions to tell which is which",
        )
    nod = src.nodatavals
    return [
        BandSource(b, Path(path), i, *_scale_offset(src, i, b), nodata=nod[i - 1] if nod else None)
        for b, i in zip(bands, idx)
    ]


def match_folder_bands(folder: Path, sensor: Sensor, bands: list[Band]) -> list[BandSource]:
    """Map requested ``bands`` onto a folder of rasters: one file per band matched by file name token
    (e.g. ``..._B02_10m.tif``), or files whose band descriptions name the bands."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_raster_name(p))
    if not files:
        raise DataError(folder, "no raster files (.tif/.tiff/.jp2/.vrt) in this scene folder")
    tokens = {f: _file_band_keys(f) for f in files}
    return [_band_in_file(_file_of_band(folder, files, tokens, band, sensor), band) for band in bands]


def _file_of_band(folder: Path, files: list[Path], tokens: dict[Path, set[str]], band: Band, sensor: Sensor) -> Path:
    """The one file of ``folder`` holding ``band``: named by a file-name token (the file whose first band
    description agrees, when several are), else the file whose band descriptions name it."""
    hits = [f for f in files if tokens[f] & band.keys()]
    if len(hits) > 1:  # prefer the file whose description agrees
        agree = [f for f in hits if _norm((open_raster(f).descriptions or ("",))[0] or "") in band.keys()]
        hits = agree or hits
    if not hits:  # a multi-band file in the folder whose band descriptions name the band
        hits = [f for f in files if any(_norm(d or "") in band.keys() for d in (open_raster(f).descriptions or ()))]
    if not hits:
        raise DataError(
            folder,
            f"no file for band {band.name} of sensor {sensor.name!r} "
            f"(files: {', '.join(f.name for f in files[:8])}{'...' if len(files) > 8 else ''})",
        )
    if len(hits) > 1:
        raise DataError(folder, f"several files match band {band.name}: {', '.join(f.name for f in hits)}")
    return hits[0]


def _band_in_file(f: Path, band: Band) -> BandSource:
    """Where ``band`` lies in file ``f``: the band its description names, or the only band of the file."""
    src = open_raster(f)
    descriptions = list(src.descriptions or ())
    if any(descriptions):
        (i,) = _match_descriptions(f, descriptions, [band])
    elif src.count == 1:
        i = 1
    else:
        raise DataError(f, f"has {src.count} bands and no band descriptions; cannot tell which is {band.name}")
    nod = src.nodatavals
    return BandSource(band, f, i, *_scale_offset(src, i, band), nodata=nod[i - 1] if nod else None)


# ---- scenes --------------------------------------------------------------------------------------
class Scene:
    """One scene (a multi-band file or a folder of per-band files) read in windows on one grid.

    Args:
        path: raster file or folder of per-band rasters.
        sensor: sensor name (or :class:`Sensor`).
        bands: requested band names (list or ``"B02,B03"``); all of the sensor's bands if empty.
        resolution: target pixel size in CRS units; default: the finest of the selected bands' files.
        resampling: ``bilinear`` (default), ``nearest``, ``cubic`` or ``average`` for bands read off-grid.
        sensors_file: YAML with user sensors.

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_band_folder
        >>> folder = write_band_folder(tempfile.mkdtemp(), "sentinel2", ["B02", "B05"], extent_m=(320.0, 320.0))
        >>> s = Scene(folder, "sentinel2", ["B02", "B05"])   # B02 at 10 m, B05 at 20 m: read on the 10 m grid
        >>> s.grid.res, (s.grid.height, s.grid.width)
        ((10.0, 10.0), (32, 32))
    """

    def __init__(
        self,
        path: str | Path,
        sensor: str | Sensor,
        bands=None,
        *,
        resolution: float | None = None,
        resampling: str = "bilinear",
        sensors_file: str | None = None,
    ):
        self.path = Path(path)
        self.sensor = get_sensor(sensor, sensors_file)
        self.bands = self.sensor.select(bands)
        if resampling not in _RESAMPLING:
            raise ConfigError(
                f"resampling must be one of {', '.join(_RESAMPLING)}, got {resampling!r}"
                + did_you_mean(resampling, _RESAMPLING)
            )
        self.resampling = _RESAMPLING[resampling]
        if self.path.is_dir():
            self.sources = match_folder_bands(self.path, self.sensor, self.bands)
        elif self.path.exists():
            self.sources = match_file_bands(self.path, self.sensor, self.bands)
        else:
            raise DataError(self.path, "scene does not exist")
        files = list(dict.fromkeys(s.file for s in self.sources))
        grids = {f: grid_of(open_raster(f)) for f in files}
        ref_file = files[0]
        for f in files[1:]:
            if not crs_equal(grids[f].crs, grids[ref_file].crs):
                raise DataError(
                    f,
                    f"CRS {crs_name(grids[f].crs)} differs from {crs_name(grids[ref_file].crs)} of "
                    f"{ref_file.name}; all files of one scene must share a CRS (reproject first)",
                )
        if grids[ref_file].crs is None:
            log.debug("%s has no CRS; outputs will carry none", ref_file)
        finest = min(files, key=lambda f: grids[f].res[0])
        ref = grids[finest]
        if resolution:
            b = _bounds(ref)
            width = max(1, int(round((b[2] - b[0]) / resolution)))
            height = max(1, int(round((b[3] - b[1]) / resolution)))
            ref = Grid(ref.crs, rasterio.transform.from_origin(b[0], b[3], resolution, resolution), width, height)
        self.grid = ref
        rb = _bounds(ref)
        for f in files:
            fb = _bounds(grids[f])
            tol = 1.01 * max(grids[f].res)
            if fb[0] > rb[2] or fb[2] < rb[0] or fb[1] > rb[3] or fb[3] < rb[1]:
                raise DataError(f, f"does not overlap the scene's grid ({ref.describe()})")
            if any(abs(a - c) > tol for a, c in zip(fb, rb)):
                log.debug("%s covers %s, the scene grid %s; outside pixels read as nodata", f, fb, rb)
        self._groups: dict[Path, list[tuple[int, BandSource]]] = {}
        for ch, s in enumerate(self.sources):
            self._groups.setdefault(s.file, []).append((ch, s))
        self._file_grids = grids

    # -- metadata
    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def wavelengths(self) -> list[float]:
        """Wavelengths (µm) the encoder sees, one per channel."""
        return [b.model_wavelength for b in self.bands]

    def __repr__(self) -> str:
        return f"Scene({self.path.name}, {self.sensor.name}, {self.band_names}, {self.grid.describe()})"

    # -- reading
    def read(self, window: Window, out_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` (reference-grid pixels; may extend past the edges) for all bands.

        Returns ``(data, valid)``: float32 ``C x h x w`` with scale/offset applied and invalid pixels
        set to 0, and a bool ``h x w`` that is True where every band has data (nodata, internal
        masks, NaN and out-of-scene pixels are invalid). ``out_size`` (h, w) resamples the window.
        """
        h, w = out_size or (int(round(window.height)), int(round(window.width)))
        data = np.zeros((len(self.sources), h, w), dtype=np.float32)
        valid = np.ones((h, w), dtype=bool)
        left, bottom, right, top = rasterio.windows.bounds(window, self.grid.transform)
        for f, chans in self._groups.items():
            src = open_raster(f)
            fgrid = self._file_grids[f]
            if fgrid.transform == self.grid.transform and out_size is None:
                fwin = window
            else:
                fwin = from_bounds(left, bottom, right, top, transform=fgrid.transform)
            arr, ok = _read_window(src, [s.index for _, s in chans], fwin, (h, w), self.resampling)
            for k, (ch, s) in enumerate(chans):
                band = arr[k].astype(np.float32, copy=False)
                if s.scale != 1.0 or s.offset != 0.0:
                    band = band * np.float32(s.scale) + np.float32(s.offset)
                data[ch] = band
                valid &= ok[k]
        valid &= np.isfinite(data).all(axis=0)
        data[:, ~valid] = 0.0
        return data, valid

    def stored(self, window: Window) -> bool:
        """Whether ``window`` may hold data: ``False`` only when every file of the scene is a GeoTIFF with a
        nodata value on the scene's grid whose blocks under ``window`` were never written (a sparse file:
        they read as nodata), so a reader may skip the window; ``True`` whenever that cannot be told."""
        for f, chans in self._groups.items():
            if self._file_grids[f].transform != self.grid.transform:
                return True
            if not _unwritten(open_raster(f), [s.index for _, s in chans], window):
                return True
        return False

    def read_all(self, max_pixels: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene (small scenes/tiles only; larger ones must be read in windows)."""
        if self.width * self.height > max_pixels:
            raise DataError(
                self.path,
                f"scene is {self.width}x{self.height} px; read it in windows "
                f"(domain.predict tiles it) instead of whole",
            )
        return self.read(Window(0, 0, self.width, self.height))


def _unwritten(src, indexes: list[int], window: Window) -> bool:
    """``True`` when the blocks of ``src`` (a GeoTIFF with nodata) under ``window`` are absent from the file."""
    if src.driver != "GTiff" or src.nodata is None:
        return False
    bh, bw = src.block_shapes[0]
    r0, c0 = max(0, int(window.row_off)), max(0, int(window.col_off))
    r1 = min(src.height, int(math.ceil(window.row_off + window.height)))
    c1 = min(src.width, int(math.ceil(window.col_off + window.width)))
    for idx in indexes:
        for i in range(r0 // bh, (r1 - 1) // bh + 1 if r1 > r0 else 0):
            for j in range(c0 // bw, (c1 - 1) // bw + 1 if c1 > c0 else 0):
                if src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=idx):
                    return False
    return True


def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a grid."""
    west, south, east, north = rasterio.windows.bounds(Window(0, 0, grid.width, grid.height), grid.transform)
    return (min(west, east), min(south, north), max(west, east), max(south, north))


def _read_window(src, indexes: list[int], fwin: Window, out_hw: tuple[int, int], resampling):
    """Read (possibly fractional, possibly out-of-bounds) ``fwin`` of ``src`` into ``out_hw``.

    Returns (values C x h x w, valid C x h x w). Pixels outside the file are invalid. In-bounds
    windows are plain (fast) GDAL reads; partial ones read the inside part into the right place.
    """
    h, w = out_hw
    c = len(indexes)
    col0, row0 = fwin.col_off, fwin.row_off
    col1, row1 = col0 + fwin.width, row0 + fwin.height
    ic0, ir0 = max(col0, 0.0), max(row0, 0.0)
    ic1, ir1 = min(col1, float(src.width)), min(row1, float(src.height))
    vals = np.zeros((c, h, w), dtype=np.float32)
    ok = np.zeros((c, h, w), dtype=bool)
    if ic1 <= ic0 or ir1 <= ir0:
        return vals, ok
    sx, sy = w / fwin.width, h / fwin.height  # output pixels per file pixel
    oc0 = int(round((ic0 - col0) * sx))
    or0 = int(round((ir0 - row0) * sy))
    oc1 = min(w, int(round((ic1 - col0) * sx)))
    or1 = min(h, int(round((ir1 - row0) * sy)))
    if oc1 <= oc0 or or1 <= or0:
        return vals, ok
    inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
    try:
        arr = src.read(indexes, window=inner, out_shape=(c, or1 - or0, oc1 - oc0), resampling=resampling, masked=True)
    except (RasterioIOError, RasterioError) as exc:
        raise DataError(src.name, f"read failed at window {inner} ({str(exc).splitlines()[0][:120]})") from None
    mask = np.ma.getmaskarray(arr)
    vals[:, or0:or1, oc0:oc1] = np.ma.getdata(arr)
    ok[:, or0:or1, oc0:oc1] = ~mask
    return vals, ok


class MaskRaster:
    """A label raster (segmentation mask) that must lie on a scene's grid.

    Values equal to the mask's nodata become ``ignore_index``.

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_mask, write_scene
        >>> folder = Path(tempfile.mkdtemp())
        >>> path, labels = write_scene(folder / "scene.tif", "sentinel2", ["B02", "B03"], size=(16, 16))
        >>> m = MaskRaster(write_mask(folder / "mask.tif", labels, path), Scene(path, "sentinel2", ["B02", "B03"]).grid)
        >>> bool((m.read(Window(0, 0, 16, 16)) == labels).all())
        True
    """

    def __init__(self, path: str | Path, grid: Grid, ignore_index: int = -1, image: str | Path | None = None):
        self.path = Path(path)
        src = open_raster(self.path)
        mgrid = grid_of(src)
        if not mgrid.same_as(grid):
            raise DataError(
                self.path,
                f"mask is not on the image's grid: mask {mgrid.describe()} vs image "
                f"{grid.describe()}{f' ({Path(image).name})' if image else ''}",
            )
        self.grid = mgrid
        self.nodata = src.nodata
        self.ignore_index = ignore_index

    def read(self, window: Window, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """``h x w`` int64 labels for ``window`` (outside the raster or nodata: ``ignore_index``);
        ``out_size`` resamples (nearest)."""
        src = open_raster(self.path)
        h, w = out_size or (int(round(window.height)), int(round(window.width)))
        vals, ok = _read_window(src, [1], window, (h, w), Resampling.nearest)
        out = vals[0].astype(np.int64)
        out[~ok[0]] = self.ignore_index
        return out


def raster_values(path: str | Path, band: int = 1) -> list[int]:
    """Every value of a label raster's ``band`` except its nodata, read block by block (never the whole
    raster in memory at once): the class ids a class map is built from.

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_mask, write_scene
        >>> folder = Path(tempfile.mkdtemp())
        >>> path, _ = write_scene(folder / "scene.tif", "sentinel2", ["B02"], size=(16, 16))
        >>> labels = np.zeros((16, 16), np.int64); labels[15, 15] = 8    # one pixel of a rare class
        >>> raster_values(write_mask(folder / "mask.tif", labels, path))
        [0, 8]
    """
    src = open_raster(path)
    found: set[int] = set()
    try:
        for _, window in src.block_windows(band):
            block = src.read(band, window=window, masked=True)
            values = np.unique(np.ma.compressed(block))
            found.update(int(v) for v in values if np.isfinite(v))
    except (RasterioIOError, RasterioError) as exc:
        raise DataError(path, f"cannot read the label raster ({str(exc).splitlines()[0][:120]})") from None
    return sorted(found)


def write_geotiff(
    path: str | Path, array: np.ndarray, grid: Grid, nodata=None, band_names: Iterable[str] | None = None, dtype=None
) -> Path:
    """Write ``array`` (``C x H x W`` or ``H x W``) as a tiled, compressed GeoTIFF on ``grid``.

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_scene
        >>> folder = Path(tempfile.mkdtemp())
        >>> path, _ = write_scene(folder / "scene.tif", "sentinel2", ["B02"], size=(16, 16))
        >>> scene = Scene(path, "sentinel2", ["B02"])
        >>> out = write_geotiff(folder / "pred.tif", np.zeros((16, 16), "uint8"), scene.grid)
        >>> with rasterio.open(out) as src:
        ...     src.shape, src.crs.to_epsg()
        ((16, 16), 32633)
    """
    path = Path(path)
    arr = array[None] if array.ndim == 2 else array
    if arr.shape[1:] != (grid.height, grid.width):
        raise DataError(path, f"array shape {arr.shape[1:]} does not fit the grid {grid.height}x{grid.width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        width=grid.width,
        height=grid.height,
        count=arr.shape[0],
        dtype=dtype or arr.dtype,
        crs=grid.crs,
        transform=grid.transform,
        nodata=nodata,
        compress="deflate",
    )
    if grid.width >= 256 and grid.height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype(profile["dtype"], copy=False))
        for i, name in enumerate(band_names or []):
            dst.set_band_description(i + 1, str(name))
    return path
