"""Slide heatmaps (tile scores over the thumbnail, PNG; or every tile score at tile resolution, a tiled pyramidal
TIFF) and tile-score CSVs.

Example:
    >>> import tempfile
    >>> from domainfm.pathology.synthetic import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> slide = write_synthetic_slide(folder / "a.tif", (256, 256))
    >>> coords, attn = np.array([[0, 0], [128, 0], [0, 128]]), np.array([0.2, 0.5, 0.3])
    >>> write_heatmap(slide, coords, size0=128, scores=attn, out_png=folder / "a_attention.png").name
    'a_attention.png'
    >>> write_tile_scores(folder / "a_tiles.csv", coords, 128, {"attention": attn}).read_text().splitlines()[:2]
    ['x,y,size0,attention', '0,0,128,0.2']
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from domainfm.io_safety import atomic_output
from domainfm.viz import new_figure, save_figure

from .slide import open_slide, thumbnail_rgb


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Scores to percentiles in ``[0, 1]`` (as CLAM does for attention), robust to their scale.

    Example:
        >>> rank_normalize(np.array([0.1, 5.0, 0.3])).tolist()
        [0.0, 1.0, 0.5]
    """
    scores = np.asarray(scores, np.float64)
    if len(scores) <= 1:
        return np.ones_like(scores)
    order = scores.argsort(kind="stable").argsort(kind="stable")
    return order / (len(scores) - 1)


def heatmap_image(
    thumbnail: Image.Image,
    slide_size: tuple[int, int],
    coords: np.ndarray,
    size0: int,
    scores: np.ndarray,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "rank",
) -> Image.Image:
    """Blend a colour-mapped score per tile over ``thumbnail`` (tiles without a score keep the thumbnail).

    ``normalize``: ``rank`` (percentiles), ``minmax`` or ``none`` (scores already in ``[0, 1]``).
    """
    import matplotlib  # heavy import (matplotlib), loaded only for figures

    thumb = np.asarray(thumbnail.convert("RGB"), np.float32) / 255.0
    th, tw = thumb.shape[:2]
    sx, sy = tw / slide_size[0], th / slide_size[1]
    scores = np.asarray(scores, np.float64)
    if normalize == "rank":
        values = rank_normalize(scores)
    elif normalize == "minmax":
        span = scores.max() - scores.min() if len(scores) else 0
        values = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    else:
        values = np.clip(scores, 0, 1)
    value_map = np.zeros((th, tw), np.float32)
    covered = np.zeros((th, tw), bool)
    for (x, y), v in zip(np.asarray(coords), values):
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = int(np.ceil((x + size0) * sx)), int(np.ceil((y + size0) * sy))
        value_map[y0:y1, x0:x1] = v
        covered[y0:y1, x0:x1] = True
    colours = matplotlib.colormaps[cmap](value_map)[..., :3].astype(np.float32)
    out = np.where(covered[..., None], (1 - alpha) * thumb + alpha * colours, thumb)
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))


def write_heatmap(
    slide_path: str | Path,
    coords: np.ndarray,
    size0: int,
    scores: np.ndarray,
    out_png: str | Path,
    thumbnail_size: int = 1024,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "rank",
) -> Path:
    """Write the heatmap of one slide as PNG (atomically) and return its path.

    Example:
        >>> import tempfile
        >>> from domainfm.pathology.synthetic import write_synthetic_slide
        >>> folder = Path(tempfile.mkdtemp())
        >>> slide = write_synthetic_slide(folder / "slide.tif", (256, 128))
        >>> png = write_heatmap(slide, np.array([[0, 0], [128, 0]]), 128, np.array([0.1, 0.9]), folder / "slide.png")
        >>> Image.open(png).size                      # drawn over the slide's thumbnail: same aspect ratio
        (256, 128)
    """
    slide = open_slide(slide_path)
    try:
        thumb = thumbnail_rgb(slide, thumbnail_size)
        size = slide.level_dimensions[0]
    finally:
        slide.close()
    img = heatmap_image(thumb, size, coords, size0, scores, alpha, cmap, normalize)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_png) as tmp:
        img.save(tmp)
    return out_png


def write_tile_scores(csv_path: str | Path, coords: np.ndarray, size0: int, columns: dict[str, np.ndarray]) -> Path:
    """Write ``x,y,size0,<column>...`` rows, one per tile (level-0 pixel coordinates).

    Example:
        >>> import tempfile
        >>> out = write_tile_scores(Path(tempfile.mkdtemp()) / "s.csv", np.array([[0, 0]]), 448,
        ...                         {"attention": np.array([1.0])})
        >>> out.read_text().splitlines()
        ['x,y,size0,attention', '0,0,448,1']
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "size0", *names])
        for i, (x, y) in enumerate(np.asarray(coords).tolist()):
            w.writerow([int(x), int(y), int(size0), *(f"{float(columns[n][i]):.6g}" for n in names)])
    return csv_path


def heatmap_figure(
    slide_path: str | Path,
    coords: np.ndarray,
    size0: int,
    scores: np.ndarray,
    thumbnail_size: int = 1024,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalize: str = "rank",
    title: str | None = None,
    path: str | Path | None = None,
):
    """The heatmap of one slide as a matplotlib Figure that shows itself in a notebook (see
    :func:`domainfm.viz.new_figure`); written to ``path`` only when given.

    Example:
        >>> fig = heatmap_figure("slide.tif", grid.coords, grid.size0, attention)  # doctest: +SKIP
    """
    slide = open_slide(slide_path)
    try:
        thumb = thumbnail_rgb(slide, thumbnail_size)
        size = slide.level_dimensions[0]
    finally:
        slide.close()
    img = heatmap_image(thumb, size, coords, size0, scores, alpha, cmap, normalize)
    fig = new_figure(figsize=(6, 6 * img.height / max(img.width, 1)), dpi=100)
    ax = fig.subplots()
    ax.imshow(np.asarray(img))
    ax.set_title(title or f"{Path(slide_path).name}: {len(coords)} tiles ({normalize} scores)")
    ax.axis("off")
    return save_figure(fig, path)


#: Tile side of the pyramidal TIFF heatmap (pixels), and the side below which no smaller level is added.
HEATMAP_TILE = 256


def heatmap_levels(shape: tuple[int, int], tile: int = HEATMAP_TILE) -> list[tuple[int, int]]:
    """``(height, width)`` of each level of a heatmap pyramid: halved (rounded up) until one tile holds it.

    Example:
        >>> heatmap_levels((1171, 600))
        [(1171, 600), (586, 300), (293, 150), (147, 75)]
    """
    levels = [(int(shape[0]), int(shape[1]))]
    while max(levels[-1]) > tile:
        h, w = levels[-1]
        levels.append((-(-h // 2), -(-w // 2)))
    return levels


def _level_tiles(gy: np.ndarray, gx: np.ndarray, values: np.ndarray, k: int, shape, tile: int) -> Iterator[np.ndarray]:
    """The tiles of pyramid level ``k`` (each pixel the mean of the scores of the ``2^k x 2^k`` grid tiles under it,
    NaN where none), row-major, built one strip of ``tile`` rows at a time from the per-tile scores (``gy``
    sorted): memory holds one strip, never the level."""
    lh, lw = shape
    c = values.shape[1]
    for r0 in range(0, lh, tile):
        a, b = np.searchsorted(gy, [r0 << k, (r0 + tile) << k])
        sums = np.zeros((tile, lw, c), np.float64)
        counts = np.zeros((tile, lw), np.int64)
        ry, rx = (gy[a:b] >> k) - r0, gx[a:b] >> k
        np.add.at(sums, (ry, rx), values[a:b])
        np.add.at(counts, (ry, rx), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            strip = np.where(counts[..., None] > 0, sums / counts[..., None], np.nan).astype(np.float32)
        pad = -(-lw // tile) * tile - lw
        if pad:
            strip = np.concatenate([strip, np.full((tile, pad, c), np.nan, np.float32)], 1)
        for c0 in range(0, lw, tile):
            block = strip[:, c0 : c0 + tile]
            yield np.ascontiguousarray(block[..., 0] if c == 1 else block)


def write_heatmap_tiff(
    out_tif: str | Path,
    coords: np.ndarray,
    size0: int,
    columns: dict[str, np.ndarray],
    slide_size: tuple[int, int],
    mpp: float | None = None,
    metadata: dict | None = None,
    tile: int = HEATMAP_TILE,
) -> Path:
    """Write every tile score of a slide as a tiled, deflate-compressed pyramidal TIFF (atomically): one pixel
    per tile of the slide's grid (pixel ``(i, j)`` is the tile at level-0 ``(j * size0, i * size0)``), one float32
    channel per column, NaN where no tile was scored; smaller levels (each the mean of 2 x 2 pixels) in SubIFDs.

    The ImageDescription holds JSON metadata: ``channels``, the slide's level-0 ``slide_size`` ``[W, H]`` and
    ``mpp``, ``size0`` (level-0 pixels per heatmap pixel), ``heatmap_mpp`` and anything in ``metadata``; the
    resolution tags give the heatmap's own pixel size, so viewers overlay it on the slide at the right scale.
    The levels are written one strip of ``tile`` rows at a time from the per-tile scores: memory holds a strip,
    not the heatmap, whatever the slide's size.

    Example:
        >>> import tempfile
        >>> out = write_heatmap_tiff(Path(tempfile.mkdtemp()) / "h.tif", np.array([[0, 0], [256, 128]]), 128,
        ...                          {"p_tumor": np.array([0.25, 0.75])}, slide_size=(512, 384), mpp=0.5)
        >>> with tifffile.TiffFile(out) as tf:
        ...     page = tf.pages[0]
        ...     json.loads(page.description)["size0"], page.shape, float(page.asarray()[1, 2])
        (128, (3, 4), 0.75)
    """
    out_tif = Path(out_tif)
    names = list(columns)
    w, h = (int(v) for v in slide_size)
    size0 = int(size0)
    grid = (max(1, h // size0), max(1, w // size0))
    xy = np.asarray(coords, np.int64).reshape(-1, 2)
    gx, gy = xy[:, 0] // size0, xy[:, 1] // size0
    order = np.lexsort((gx, gy))
    values = np.stack([np.asarray(columns[n], np.float32).reshape(-1) for n in names], 1)[order]
    gy, gx = gy[order], gx[order]
    levels = heatmap_levels(grid, tile)
    desc = {
        "kind": "domainfm slide heatmap",
        "channels": names,
        "slide_size": [w, h],
        "mpp": None if mpp is None else float(mpp),
        "size0": size0,
        "heatmap_mpp": None if mpp is None else float(mpp) * size0,
        "grid": [grid[1], grid[0]],
        "levels": [[lw, lh] for lh, lw in levels],
        **(metadata or {}),
    }
    c = len(names)
    out_tif.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_tif) as tmp, tifffile.TiffWriter(tmp, bigtiff=grid[0] * grid[1] * c * 4 > 2**31) as tw:
        for k, shape in enumerate(levels):
            res = {}
            if mpp is not None:
                f = 1e4 / (float(mpp) * size0 * 2**k)  # heatmap pixels per centimetre
                res = {"resolution": (f, f), "resolutionunit": "CENTIMETER"}
            tw.write(
                _level_tiles(gy, gx, values, k, shape, tile),
                shape=shape if c == 1 else (*shape, c),
                dtype=np.float32,
                tile=(tile, tile),
                compression="zlib",
                photometric="minisblack",
                planarconfig=None if c == 1 else "contig",
                subifds=len(levels) - 1 if k == 0 else None,
                subfiletype=1 if k else 0,
                description=json.dumps(desc) if k == 0 else None,
                metadata=None,
                **res,
            )
    return out_tif
