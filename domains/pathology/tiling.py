"""MPP-aware tile grids over whole-slide images, saved per slide and reused.

A tile is ``tile_size`` pixels at ``target_mpp`` microns per pixel. Its footprint at level 0 is
``tile_size * target_mpp / mpp`` pixels; it is read from the pyramid level that OpenSlide picks with
``get_best_level_for_downsample`` and resized to ``tile_size``. Tiles whose tissue fraction (from a
thumbnail mask, see :mod:`.tissue`) is below ``min_tissue`` are dropped.

Grids are written as CSV (``x,y,tissue`` in level-0 pixels, one JSON header line with the geometry
and the parameters) so tiling runs once per slide and parameter set.

Example:
    >>> import tempfile
    >>> from domainfm.pathology.synthetic import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> slide = write_synthetic_slide(folder / "slide.tif", (256, 256), mpp=0.5)
    >>> grid = tile_slide(slide, target_mpp=1.0, tile_size=64, min_tissue=0.5)
    >>> grid.coords.shape[1], grid.level, grid.read_size      # level-0 (x, y) corners; 128 px read per tile
    (2, 0, 128)
    >>> grid = cached_tile_grid(slide, folder / "tiles", target_mpp=1.0, tile_size=64)
    >>> sorted(p.name for p in (folder / "tiles").iterdir())
    ['slide.tif.tiles.csv']
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from domainfm.errors import DataError

from .slide import open_slide, read_rgb, slide_mpp, thumbnail_rgb
from .tissue import box_fractions, tissue_mask

GRID_VERSION = 1


class NoTissueError(DataError):
    """No tile of the slide reaches the minimum tissue fraction (callers skip such slides and count them)."""


@dataclass
class TileGrid:
    """The tiles of one slide.

    Attributes:
        path: the slide file.  mpp: its level-0 microns per pixel.
        target_mpp, tile_size: what a tile is (``tile_size`` px at ``target_mpp``).
        size0: tile footprint in level-0 pixels.  level, read_size: pyramid level read and the square
        size read there (then resized to ``tile_size``).  coords: ``N x 2`` level-0 ``(x, y)``
        top-left corners.  tissue: ``N`` tissue fractions.  slide_size: level-0 ``(W, H)``.
        n_grid: number of grid positions before the tissue filter.
        (All but ``path`` are keyword-only.)
    """

    path: str
    _: KW_ONLY
    mpp: float
    target_mpp: float
    tile_size: int
    size0: int
    level: int
    read_size: int
    coords: np.ndarray
    tissue: np.ndarray
    slide_size: tuple[int, int]
    n_grid: int
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.coords))

    def _rows(self) -> list[tuple[str, str]]:
        kept = f"{len(self)} of {self.n_grid} grid positions"
        if len(self.tissue):
            kept += f" (tissue {float(np.min(self.tissue)):.2f}..{float(np.max(self.tissue)):.2f})"
        return [
            ("slide", Path(self.path).name),
            ("tiles", kept),
            ("tile", f"{self.tile_size} px at {self.target_mpp:g} MPP ({self.size0} px at level 0)"),
            ("slide MPP", f"{self.mpp:g}"),
            ("read", f"level {self.level}, {self.read_size} px"),
            ("slide size", f"{self.slide_size[0]} x {self.slide_size[1]}"),
        ]

    def __repr__(self) -> str:
        """Counts, MPP and level, not the coordinates (``grid.coords`` holds them)."""
        return "TileGrid(" + ", ".join(f"{k}={v}" for k, v in self._rows()) + ")"

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
            for k, v in self._rows()
        )
        return f"<div><b>TileGrid</b><table>{cells}</table></div>"

    def read(self, slide, i: int) -> Image.Image:
        """Tile ``i`` as an RGB PIL image of ``tile_size`` pixels."""
        x, y = (int(v) for v in self.coords[i])
        img = read_rgb(slide, (x, y), self.level, (self.read_size, self.read_size))
        if self.read_size != self.tile_size:
            img = img.resize((self.tile_size, self.tile_size), Image.BILINEAR, reducing_gap=2.0)
        return img

    def read_many(self, reader, indices, pool=None) -> list[np.ndarray]:
        """Tiles ``indices`` as ``tile_size`` uint8 RGB arrays, through a
        :class:`~domainfm.pathology.regions.RegionReader` (one decode per TIFF tile for the whole batch,
        on ``pool`` threads when given). Pixel-identical to :meth:`read`: same region, same resize.
        """
        locs = [(int(self.coords[i][0]), int(self.coords[i][1])) for i in indices]
        tiles = reader.read_many(locs, self.level, (self.read_size, self.read_size), pool)
        if self.read_size == self.tile_size:
            return tiles
        size = (self.tile_size, self.tile_size)

        def resize(a):
            return np.array(Image.fromarray(a).resize(size, Image.BILINEAR, reducing_gap=2.0))  # writable

        return list(pool.map(resize, tiles)) if pool is not None and len(tiles) > 1 else [resize(a) for a in tiles]


def tile_geometry(slide, path, mpp: float, target_mpp: float, tile_size: int) -> tuple[int, int, int]:
    """``(size0, level, read_size)`` for a tile of ``tile_size`` px at ``target_mpp``.

    Raises:
        DataError: the tile would be larger than the slide.
    """
    if tile_size < 1 or target_mpp <= 0:
        raise DataError(path, f"tile_size must be >= 1 and target_mpp > 0 (got {tile_size}, {target_mpp})")
    downsample = target_mpp / mpp
    size0 = max(1, int(round(tile_size * downsample)))
    w, h = slide.level_dimensions[0]
    if size0 > w or size0 > h:
        raise DataError(
            path,
            f"tile size {tile_size} px at {target_mpp} µm/px covers {size0}x{size0} level-0 "
            f"pixels ({size0 * mpp:.0f} µm), larger than the slide ({w}x{h} px at {mpp:g} µm/px); "
            "use a smaller tile_size= or target_mpp=",
        )
    level = int(slide.get_best_level_for_downsample(max(downsample, 1.0)))
    read_size = max(1, int(round(size0 / slide.level_downsamples[level])))
    return size0, level, read_size


def tile_slide(
    path: str | Path,
    target_mpp: float = 0.5,
    tile_size: int = 224,
    min_tissue: float = 0.5,
    mpp: float | None = None,
    thumbnail_size: int = 1024,
    min_saturation: float = 0.05,
    slide=None,
) -> TileGrid:
    """Tile one slide: tissue mask on a thumbnail, grid at ``target_mpp``, tissue filter.

    Raises:
        DataError: unreadable slide, no MPP and no override, tile larger than the slide.
        NoTissueError: no tile reaches ``min_tissue``.
    """
    path = Path(path)
    own = slide is None
    if own:
        slide = open_slide(path)
    try:
        mpp0 = slide_mpp(slide, path, mpp, require=True)
        size0, level, read_size = tile_geometry(slide, path, mpp0, target_mpp, tile_size)
        if target_mpp < mpp0 * 0.9:
            warnings.warn(
                f"{path}: target {target_mpp} µm/px is finer than the scan ({mpp0:g} µm/px); tiles are upsampled",
                stacklevel=2,
            )
        w, h = slide.level_dimensions[0]
        nx, ny = w // size0, h // size0
        xs, ys = np.meshgrid(np.arange(nx) * size0, np.arange(ny) * size0)
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        thumb = np.asarray(thumbnail_rgb(slide, thumbnail_size))
        mask = tissue_mask(thumb, min_saturation=min_saturation)
        sx, sy = mask.shape[1] / w, mask.shape[0] / h
        boxes = np.stack(
            [coords[:, 0] * sx, coords[:, 1] * sy, (coords[:, 0] + size0) * sx, (coords[:, 1] + size0) * sy], 1
        )
        frac = box_fractions(mask, boxes)
    finally:
        if own:
            slide.close()
    keep = frac >= min_tissue
    plain = bool(getattr(slide, "_domainfm_plain", False))  # opened whole by Pillow: no slide pyramid
    params = {
        "target_mpp": float(target_mpp),
        "tile_size": int(tile_size),
        "min_tissue": float(min_tissue),
        "mpp_override": None if mpp is None else float(mpp),
        "thumbnail_size": int(thumbnail_size),
        "min_saturation": float(min_saturation),
    }
    grid = TileGrid(
        str(path),
        mpp=float(mpp0),
        target_mpp=float(target_mpp),
        tile_size=int(tile_size),
        size0=size0,
        level=level,
        read_size=read_size,
        coords=coords[keep],
        tissue=frac[keep].astype(np.float32),
        slide_size=(int(w), int(h)),
        n_grid=int(len(coords)),
        params=params,
    )
    if len(grid) == 0:
        what = "a plain (non-pyramidal) image, not a whole-slide scan, with " if plain else ""
        raise NoTissueError(
            path,
            f"{what}no tissue found at {target_mpp:g} µm/px: none of {len(coords)} tiles has >= {min_tissue:.0%} "
            f"tissue (max {float(frac.max()) if len(frac) else 0:.0%}); "
            f"{'give a slide scan (.svs, .ndpi, pyramidal TIFF...)' if plain else 'check the slide'} "
            "or lower min_tissue=",
        )
    return grid


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def save_grid(grid: TileGrid, csv_path: str | Path, stamp: dict | None = None) -> Path:
    """Write ``grid`` as CSV (atomically): a ``# {json}`` header line, then ``x,y,tissue`` rows."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in asdict(grid).items() if k not in ("coords", "tissue")}
    header["slide_size"] = list(grid.slide_size)
    header["version"] = GRID_VERSION
    header["stamp"] = stamp or _file_stamp(Path(grid.path))
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write("# " + json.dumps(header) + "\n")
        f.write("x,y,tissue\n")
        for (x, y), t in zip(grid.coords.tolist(), grid.tissue.tolist()):
            f.write(f"{x},{y},{t:.4f}\n")
    os.replace(tmp, csv_path)
    return csv_path


def load_grid(csv_path: str | Path) -> TileGrid:
    """Read a grid written by :func:`save_grid`."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path) as f:
            first = f.readline()
            header = json.loads(first[2:]) if first.startswith("# ") else None
        if header is None:
            raise ValueError("missing '# {json}' header line")
        body = csv_path.read_text().splitlines()[2:]
        data = np.array([[float(v) for v in line.split(",")] for line in body if line.strip()], np.float64).reshape(
            -1, 3
        )
    except Exception as exc:
        raise DataError(csv_path, f"not a domainfm tile grid CSV ({exc})") from None
    coords = data[:, :2].astype(np.int64) if data.size else np.zeros((0, 2), np.int64)
    tissue = data[:, 2].astype(np.float32) if data.size else np.zeros((0,), np.float32)
    return TileGrid(
        header["path"],
        mpp=header["mpp"],
        target_mpp=header["target_mpp"],
        tile_size=header["tile_size"],
        size0=header["size0"],
        level=header["level"],
        read_size=header["read_size"],
        coords=coords,
        tissue=tissue,
        slide_size=tuple(header["slide_size"]),
        n_grid=header["n_grid"],
        params=header.get("params", {}),
    )


def grid_csv_path(coords_dir: str | Path, slide_path: str | Path) -> Path:
    """Where the grid of ``slide_path`` is cached inside ``coords_dir``."""
    return Path(coords_dir) / f"{Path(slide_path).name}.tiles.csv"


def cached_tile_grid(
    path: str | Path,
    coords_dir: str | Path | None,
    target_mpp: float = 0.5,
    tile_size: int = 224,
    min_tissue: float = 0.5,
    mpp: float | None = None,
    thumbnail_size: int = 1024,
    min_saturation: float = 0.05,
) -> TileGrid:
    """:func:`tile_slide` with its result cached as CSV in ``coords_dir`` (``None``: no cache).

    The cache is reused only when the slide file (size, mtime) and every parameter match; otherwise
    the slide is tiled again and the CSV replaced.
    """
    path = Path(path)
    if coords_dir is None:
        return tile_slide(path, target_mpp, tile_size, min_tissue, mpp, thumbnail_size, min_saturation)
    params = {
        "target_mpp": float(target_mpp),
        "tile_size": int(tile_size),
        "min_tissue": float(min_tissue),
        "mpp_override": None if mpp is None else float(mpp),
        "thumbnail_size": int(thumbnail_size),
        "min_saturation": float(min_saturation),
    }
    csv_path = grid_csv_path(coords_dir, path)
    if not path.exists():
        raise DataError(path, "slide file does not exist")
    stamp = _file_stamp(path)
    if csv_path.exists():
        grid = None
        try:
            with open(csv_path) as f:
                header = json.loads(f.readline()[2:])
            if (
                header.get("version") == GRID_VERSION
                and header.get("params") == params
                and header.get("stamp") == stamp
                and Path(header.get("path", "")).resolve() == path.resolve()
            ):
                grid = load_grid(csv_path)
        except (ValueError, OSError, KeyError, DataError):
            grid = None  # stale or corrupt cache: tile again
        if grid is not None:
            if len(grid) == 0:
                raise NoTissueError(
                    path, f"no tissue found (cached in {csv_path}); lower min_tissue= or check the slide"
                )
            return grid
    try:
        grid = tile_slide(path, target_mpp, tile_size, min_tissue, mpp, thumbnail_size, min_saturation)
    except NoTissueError:
        empty = TileGrid(
            str(path),
            mpp=0.0,
            target_mpp=float(target_mpp),
            tile_size=int(tile_size),
            size0=0,
            level=0,
            read_size=0,
            coords=np.zeros((0, 2), np.int64),
            tissue=np.zeros((0,), np.float32),
            slide_size=(0, 0),
            n_grid=0,
            params=params,
        )
        save_grid(empty, csv_path, stamp)
        raise
    save_grid(grid, csv_path, stamp)
    return grid
