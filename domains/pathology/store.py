"""The pathology domain in a store: each slide tiled once at the target MPP (:func:`~domainfm.pathology.
tiling.tile_slide`: tissue mask, grid, tissue filter), its tissue tiles stored as uint8 RGB (one chunk per
tile) with their level-0 coordinates; a sample is one tile (or a random crop of it), normalised like the
domain's :class:`~domainfm.pathology.datasets.TileTransform`.

Example:
    >>> from domainfm.store import get_store_spec
    >>> get_store_spec("pathology").domain
    'pathology'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domainfm.errors import ConfigError
from domainfm.registry import get_domain
from domainfm.store.spec import Source, register_store_preparer
from domainfm.utils import parse_list

from .datasets import TileTransform, list_slides
from .slide import open_slide
from .tiling import NoTissueError, tile_slide

BATCH = 64


def _three(value, name: str) -> list[float]:
    out = [float(v) for v in parse_list(value)]
    if len(out) != 3:
        raise ConfigError(f"data.options.{name} must be three numbers (one per RGB channel), got {value!r}")
    return out


def _side(size) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def list_sources(cfg) -> tuple[dict, list[Source]]:
    """Tiling settings of ``cfg`` and one source per slide."""
    get_domain("pathology")
    opts = cfg.options
    slides = list_slides(cfg.data.path, opts.mpp)
    settings = {
        "target_mpp": float(opts.target_mpp),
        "tile_size": int(opts.tile_size),
        "min_tissue": float(opts.min_tissue),
        "thumbnail_size": int(opts.thumbnail_size),
        "mpp": opts.mpp,
        "max_tiles_per_slide": opts.max_tiles_per_slide,
        "mean": _three(opts.mean, "mean"),
        "std": _three(opts.std, "std"),
        "out_size": _side(cfg.data.img_size),
        "crop": None,
        "stored": "uint8 RGB tiles N x S x S x 3, one chunk per tile; level-0 (x, y) corners",
    }
    sources = [Source(Path(s.path).name, s.path, [s.path], {"mpp": s.mpp, "label": s.label}) for s in slides]
    return settings, sources


def prepare_item(source: Source, settings: dict, writer) -> dict:
    """The tissue tiles of one slide (a slide without tissue is kept with no tiles, and says so)."""
    mpp = source.extra.get("mpp")
    try:
        grid = tile_slide(
            source.path,
            settings["target_mpp"],
            settings["tile_size"],
            settings["min_tissue"],
            mpp if mpp is not None else settings["mpp"],
            settings["thumbnail_size"],
        )
    except NoTissueError as exc:
        return {"samples": 0, "tiles": 0, "no_tissue": exc.problem, "slide_id": Path(source.path).stem}
    sel = np.arange(len(grid))
    cap = settings.get("max_tiles_per_slide")
    if cap is not None and len(grid) > cap:
        sel = np.sort(np.random.default_rng(0).choice(len(grid), int(cap), replace=False))
    t = int(settings["tile_size"])
    tiles = writer.array("tiles", (len(sel), t, t, 3), "uint8", (1, t, t, 3))
    slide = open_slide(source.path)
    try:
        for a in range(0, len(sel), BATCH):
            part = sel[a : a + BATCH]
            tiles[a : a + len(part)] = np.stack([np.asarray(grid.read(slide, int(i)))[..., :3] for i in part])
    finally:
        slide.close()
    writer.array("coords", (len(sel), 2), "int64", (max(1, len(sel)), 2))[...] = grid.coords[sel]
    return {
        "samples": int(len(sel)),
        "tiles": int(len(sel)),
        "slide_id": Path(source.path).stem,
        "mpp": grid.mpp,
        "level": grid.level,
        "size0": grid.size0,
        "slide_size": list(grid.slide_size),
        "n_grid": grid.n_grid,
        "label": source.extra.get("label"),
    }


def read_sample(group, record: dict, j: int, crop, rng, info: dict) -> dict:
    """Tile ``j`` of a slide (one chunk read), or a random ``crop`` of it, normalised (``3 x S x S``)."""
    s = info["settings"]
    t = int(s["tile_size"])
    c = t if crop is None else int(crop if isinstance(crop, (int, np.integer)) else crop[0])
    y0, x0 = (int(rng.integers(0, t - c + 1)), int(rng.integers(0, t - c + 1))) if c < t else (0, 0)
    rgb = np.asarray(group["tiles"][j, y0 : y0 + c, x0 : x0 + c, :])
    size = int(s["out_size"]) if crop is None else c
    image = TileTransform(size, mean=s["mean"], std=s["std"])(rgb)
    x, y = (int(v) for v in np.asarray(group["coords"][j]))
    scale = float(record["size0"]) / t
    meta = {
        "path": record["path"],
        "slide_id": record["slide_id"],
        "x": x + int(round(x0 * scale)),
        "y": y + int(round(y0 * scale)),
        "level": record["level"],
        "size0": int(round(c * scale)),
        "tile_index": int(j),
        "mpp": s["target_mpp"],
    }
    return {"image": image, "meta": meta}


register_store_preparer("pathology", list_sources, prepare_item, read_sample)
