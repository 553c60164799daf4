"""The remote-sensing domain in a store: each scene read once on its grid through the domain's
:class:`~domainfm.remote_sensing.io.Scene` (band selection by name, scale/offset, nodata, multi-resolution
bands resampled to one grid), stored as float32 ``C x H x W`` in 256-pixel chunks with a valid-pixel mask,
its CRS (WKT), transform, band names, wavelengths and per-band statistics; chips are read back by slicing
and normalised with the statistics of the whole store.

Example:
    >>> combine_stats([{"B02": [1.0, 0.0]}, {"B02": [3.0, 0.0]}], [10, 10])["B02"]
    [2.0, 1.0]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from rasterio.windows import Window

from domainfm.registry import get_domain
from domainfm.store.spec import Source, register_store_preparer

from .datasets import discover_items
from .io import Scene
from .stats import BandStats

CHUNK = 256
MAX_TRIES = 10


def list_sources(cfg) -> tuple[dict, list[Source]]:
    """The sensors, bands and grid settings of ``cfg`` and one source per scene."""
    domain = get_domain("remote_sensing")
    bands = domain.sensors_and_bands(cfg)  # resolves the sensor from the files when not given
    opts = cfg.options
    size = cfg.data.img_size
    settings = {
        "bands": bands,
        "layout": opts.layout,
        "resolution": opts.resolution,
        "resampling": opts.resampling,
        "sensors_file": opts.sensors_file,
        "chips_per_scene": int(opts.chips_per_scene),
        "min_valid": float(opts.min_valid),
        "crop": int(opts.chip_size or (size[0] if isinstance(size, (list, tuple)) else size)),
        "chunk": CHUNK,
        "stored": "float32 C x H x W (scale/offset applied, invalid pixels 0) + uint8 valid mask",
    }
    items, _, _ = discover_items(cfg.data.path, list(bands), opts.layout, opts.sensors_file, opts.label_sep)
    sources = [Source(str(it.path.name), str(it.path), [str(it.path)], {"sensor": it.sensor}) for it in items]
    return settings, sources


def prepare_item(source: Source, settings: dict, writer) -> dict:
    """One scene, written in chunk-aligned row blocks, with its band statistics."""
    sensor = source.extra["sensor"]
    scene = Scene(
        source.path,
        sensor,
        settings["bands"][sensor],
        resolution=settings["resolution"],
        resampling=settings["resampling"],
        sensors_file=settings["sensors_file"],
    )
    h, w, c = scene.height, scene.width, len(scene.band_names)
    chunk = int(settings["chunk"])
    image = writer.array("image", (c, h, w), "float32", (c, chunk, chunk))
    valid = writer.array("valid", (h, w), "uint8", (chunk, chunk))
    stats = BandStats(scene.band_names)
    for r in range(0, h, chunk):
        rows = min(chunk, h - r)
        data, ok = scene.read(Window(0, r, w, rows))
        image[:, r : r + rows, :] = data
        valid[r : r + rows, :] = ok.astype(np.uint8)
        stats.update(data, ok)
    grid = scene.grid
    return {
        "samples": int(settings["chips_per_scene"]) if stats.count else 0,
        "sensor": scene.sensor.name,
        "bands": scene.band_names,
        "wavelengths": scene.wavelengths,
        "height": h,
        "width": w,
        "crs": grid.crs.to_wkt() if grid.crs else None,
        "transform": list(grid.transform)[:6],
        "stats": stats.result() if stats.count else {},
        "valid_pixels": int(stats.count),
    }


def combine_stats(per_scene: list[dict], counts: list[int]) -> dict:
    """``{band: [mean, std]}`` over scenes from each scene's ``{band: [mean, std]}`` and pixel count."""
    out = {}
    bands = {b for s in per_scene for b in s}
    for b in sorted(bands):
        parts = [(s[b][0], s[b][1], n) for s, n in zip(per_scene, counts) if b in s and n]
        total = sum(n for _, _, n in parts)
        mean = sum(m * n for m, _, n in parts) / total
        second = sum((sd * sd + m * m) * n for m, sd, n in parts) / total
        out[b] = [float(mean), float(max(math.sqrt(max(second - mean * mean, 0.0)), 1e-6))]
    return out


def summarize(records: list[dict], settings: dict) -> dict:
    """Per-sensor band statistics over every scene of the store (what the chips are normalised with)."""
    by_sensor: dict[str, list[dict]] = {}
    for r in records:
        by_sensor.setdefault(r.get("sensor", ""), []).append(r)
    stats = {
        s: combine_stats([r.get("stats") or {} for r in rs], [int(r.get("valid_pixels", 0)) for r in rs])
        for s, rs in by_sensor.items()
    }
    return {"stats": stats}


def _chip(group, h: int, w: int, c: int, rng, min_valid: float) -> tuple[int, int, np.ndarray]:
    """A random chip position whose valid fraction passes (up to ``MAX_TRIES`` tries) and its mask."""
    for _ in range(MAX_TRIES):
        r0 = int(rng.integers(0, max(h - c, 0) + 1))
        c0 = int(rng.integers(0, max(w - c, 0) + 1))
        ok = np.asarray(group["valid"][r0 : r0 + c, c0 : c0 + c]).astype(bool)
        if ok.any() and ok.mean() >= min_valid:
            break
    return r0, c0, ok


def read_sample(group, record: dict, j: int, crop, rng, info: dict) -> dict:
    """A random chip of one scene (only its chunks read), normalised per band, ``C x crop x crop``."""
    s = info["settings"]
    c = int(crop if isinstance(crop, (int, np.integer)) else (crop or [s["crop"]])[0])
    h, w = int(record["height"]), int(record["width"])
    r0, c0, ok = _chip(group, h, w, c, rng, float(s["min_valid"]))
    data = np.asarray(group["image"][:, r0 : r0 + c, c0 : c0 + c], dtype=np.float32)
    stats = (info.get("summary") or {}).get("stats", {}).get(record["sensor"]) or record.get("stats") or {}
    bands = record["bands"]
    mean = np.array([stats.get(b, [0.0, 1.0])[0] for b in bands], np.float32)[:, None, None]
    std = np.array([stats.get(b, [0.0, 1.0])[1] for b in bands], np.float32)[:, None, None]
    data = np.where(ok[None], (data - mean) / std, 0.0).astype(np.float32)
    if data.shape[1:] != (c, c):
        data = np.pad(data, [(0, 0), (0, c - data.shape[1]), (0, c - data.shape[2])])
    meta = {
        "path": record["path"],
        "sensor": record["sensor"],
        "bands": bands,
        "window": [c0, r0, c, c],
        "crs": record["crs"],
        "transform": record["transform"],
        "valid_fraction": float(ok.mean()) if ok.size else 0.0,
    }
    return {"image": torch.from_numpy(data), "wavelengths": list(record["wavelengths"]), "meta": meta}


register_store_preparer("remote_sensing", list_sources, prepare_item, read_sample, summarize)
