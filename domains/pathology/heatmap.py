"""Slide heatmaps (tile scores over the thumbnail, PNG) and tile-score CSVs.

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
from pathlib import Path

import numpy as np
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
