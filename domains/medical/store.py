"""The medical domain in a store: each scan reoriented, resampled and intensity-normalised once by the
domain's own deterministic MONAI pipeline (:func:`~domainfm.medical.transforms.build_transforms`), stored
as int16 with its scale and offset (at most half a quantisation step off, recorded), chunked in 32^3
blocks, with its spacing and affine; random crops are read back by slicing.

Example:
    >>> x = np.array([[0.0, 0.25, 1.0]], np.float32)
    >>> q, scale, offset = quantize(x)
    >>> float(np.abs(q * scale + offset - x).max()) <= scale / 2
    True
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import torch

from domainfm.errors import DomainFMError
from domainfm.registry import get_domain
from domainfm.store.spec import Source, register_store_preparer

from .options import MedicalOptions
from .transforms import build_transforms, domain_errors, normalization_record

CHUNK_3D = 32
CHUNK_2D = 256
QMAX = 32767
#: the options that decide the stored voxels (the others are for training, predict or embed)
PREPROCESSING_KEYS = (
    "spatial_dims",
    "modality",
    "window",
    "window_range",
    "target_spacing",
    "orientation",
    "foreground_crop",
    "percentiles",
    "sequences",
    "resize_2d",
)


def quantize(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(int16 q, scale, offset)`` with ``q * scale + offset`` within ``scale / 2`` of ``x``."""
    lo, hi = float(x.min()), float(x.max())
    offset = (lo + hi) / 2.0
    scale = (hi - lo) / (2 * QMAX) if hi > lo else 1.0
    q = np.clip(np.rint((x - offset) / scale), -QMAX, QMAX).astype(np.int16)
    return q, scale, offset


def _default_crop(domain, cfg, opts: MedicalOptions) -> list[int]:
    try:
        return [int(c) for c in domain.crop_size(cfg)]
    except DomainFMError:  # an unreadable header: the file is named when its item runs
        return list(opts.crop_size or [96] * opts.spatial_dims)


def _decisions(domain, cfg) -> list[str]:
    try:
        return list(domain.decisions(cfg))
    except DomainFMError:
        return []


def list_sources(cfg) -> tuple[dict, list[Source]]:
    """The preprocessing settings of ``cfg`` (modality resolved from the data) and one source per scan."""
    domain = get_domain("medical")
    opts = domain.options(cfg)
    items, classes = domain.items(cfg, "pretrain")
    crop = _default_crop(domain, cfg, opts)
    settings = {
        "options": {k: v for k, v in dataclasses.asdict(opts).items() if k in PREPROCESSING_KEYS},
        "normalization": normalization_record(opts),
        "crop": crop,
        "prepare_crop": crop if opts.spatial_dims == 2 else [1] * 3,
        "chunk": CHUNK_3D if opts.spatial_dims == 3 else CHUNK_2D,
        "stored": "int16, value = q * scale + offset per item",
        "classes": classes,
        "decisions": _decisions(domain, cfg),
    }
    sources = []
    for it in items:
        image = it.get(opts.image_key, it.get("image"))
        files = [str(p) for p in image] if isinstance(image, (list, tuple)) else [str(image)]
        extra = {"image": image, **({"label": int(it["label"])} if it.get("label") is not None else {})}
        sources.append(Source(str(it.get("id") or Path(files[0]).name), files[0], files, extra))
    return settings, sources


@functools.lru_cache(maxsize=4)
def _pipeline(settings_json: str):
    settings = json.loads(settings_json)
    opts = MedicalOptions(**settings["options"])
    det, _ = build_transforms(opts, settings["prepare_crop"], "pretrain")
    return det


def prepare_item(source: Source, settings: dict, writer) -> dict:
    """One scan through the deterministic pipeline, written as int16 chunks; its record."""
    det = _pipeline(json.dumps(settings, sort_keys=True))
    with domain_errors():
        sample = det({"image": source.extra["image"], "id": source.key})
    image = sample["image"].numpy()
    q, scale, offset = quantize(image)
    dims = image.ndim - 1
    chunk = int(settings["chunk"])
    writer.array("image", q.shape, "int16", (q.shape[0],) + (chunk,) * dims)[...] = q
    meta = sample.get("meta") or {}
    record = {
        "samples": 1,
        "shape": list(image.shape),
        "spacing": meta.get("spacing"),
        "affine": meta.get("affine"),
        "original_shape": meta.get("original_shape"),
        "quantization": {"dtype": "int16", "scale": scale, "offset": offset, "max_abs_error": scale / 2},
        "range": [float(image.min()), float(image.max())],
    }
    if "label" in source.extra:
        record["label"] = source.extra["label"]
    return record


def _window(shape, crop, rng) -> tuple[list[int], list[tuple[int, int]]]:
    """Start of a uniform random crop per axis, and the (before, after) zero padding of axes shorter than it."""
    starts, pads = [], []
    for s, c in zip(shape, crop):
        starts.append(int(rng.integers(0, max(s - c, 0) + 1)))
        extra = max(c - s, 0)
        pads.append((extra // 2, extra - extra // 2))  # MONAI SpatialPad: symmetric
    return starts, pads


def read_sample(group, record: dict, j: int, crop, rng, info: dict) -> dict:
    """A random crop of one stored scan (only the chunks it covers are read), as float32 ``C x spatial``."""
    arr = group["image"]
    spatial = tuple(arr.shape[1:])
    crop = [int(crop)] * len(spatial) if isinstance(crop, int) else [int(c) for c in (crop or spatial)]
    starts, pads = _window(spatial, crop, rng)
    region = tuple(slice(a, min(a + c, s)) for a, c, s in zip(starts, crop, spatial))
    q = np.asarray(arr[(slice(None),) + region])
    quant = record["quantization"]
    x = q.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["offset"])
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, [(0, 0)] + pads)
    meta = {"path": record["path"], "id": record["key"], "crop_start": starts, "spacing": record.get("spacing")}
    if record.get("affine") is not None:
        aff = np.asarray(record["affine"], dtype=np.float64)
        shift = np.eye(aff.shape[0])
        shift[: len(starts), -1] = [a - p[0] for a, p in zip(starts, pads)]
        meta["affine"] = (aff @ shift).tolist()
    sample = {"image": torch.from_numpy(np.ascontiguousarray(x)), "meta": meta}
    if "label" in record:
        sample["label"] = int(record["label"])
    return sample


register_store_preparer("medical", list_sources, prepare_item, read_sample)
