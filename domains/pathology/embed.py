"""Slide feature extraction: every tissue tile of every slide through the encoder, one HDF5 file per slide.

Each ``<out>/<slide file name>.h5`` holds ``features`` (``N x E`` float32), ``coords`` (``N x 2``
level-0 ``x, y``), ``tissue`` (``N``) and attributes (slide path, MPPs, tile geometry, encoder).
Files are written to a temporary name and renamed, so an interrupted run never leaves a half file
that looks whole; a rerun skips slides whose file is complete. ``<out>/index.csv`` lists every
slide with its status (``done``, ``skipped``, ``no_tissue``).

Example:
    >>> import tempfile
    >>> import domainfm
    >>> from domainfm.demo import example_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> ckpt, _ = example_checkpoint("pathology", folder)   # 6 small H&E slides at 0.5 µm/px, a tiny encoder
    >>> model = domainfm.load(ckpt)
    >>> summary = embed_slides(model, folder / "slides", folder / "features", verbose=False)  # mpp=0.25 if none stored
    >>> summary["done"], summary["no_tissue"]
    (6, 0)
    >>> f = load_slide_features(folder / "features/s1.tif.h5"); f["features"].shape[1]   # tiles x embed_dim
    64
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from domainfm.errors import DataError
from domainfm.io_safety import atomic_output

from .datasets import IMAGENET_MEAN, IMAGENET_STD, SlideRecord, SlideTileDataset, TileTransform, list_slides
from .stain import MacenkoNormalizer
from .tiling import NoTissueError


def feature_path(out: str | Path, slide_path: str | Path) -> Path:
    """The feature file of ``slide_path`` inside ``out``."""
    return Path(out) / f"{Path(slide_path).name}.h5"


def is_complete(h5_path: str | Path) -> bool:
    """True when ``h5_path`` is a finished feature file (written by :func:`embed_slides`)."""
    try:
        with h5py.File(h5_path, "r") as f:
            return bool(f.attrs.get("complete", False)) and "features" in f and "coords" in f
    except (OSError, KeyError):
        return False


def load_slide_features(h5_path: str | Path) -> dict:
    """``{"features": N x E, "coords": N x 2, "tissue": N, "attrs": {...}}`` of one feature file."""
    try:
        with h5py.File(h5_path, "r") as f:
            out = {
                "features": f["features"][()],
                "coords": f["coords"][()],
                "tissue": f["tissue"][()] if "tissue" in f else None,
                "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()},
            }
    except (OSError, KeyError) as exc:
        raise DataError(h5_path, f"not a readable slide feature file ({exc})") from None
    return out


def _stack_images(batch: list[dict]) -> torch.Tensor:
    return torch.stack([s["image"] for s in batch])


def _encode(model, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "embed"):
        return model.embed(x)
    feats = model.forward_features(x)
    return feats["pooled"]


def _model_device(model) -> torch.device:
    module = getattr(model, "encoder", model)
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def transform_from_preprocessing(pre: dict) -> TileTransform:
    """The inference :class:`TileTransform` described by a card's ``preprocessing`` record."""
    macenko = MacenkoNormalizer.from_dict(pre["macenko"]) if pre.get("macenko") else None
    return TileTransform(
        int(pre.get("img_size", pre.get("tile_size", 224))),
        mean=pre.get("mean", IMAGENET_MEAN),
        std=pre.get("std", IMAGENET_STD),
        macenko=macenko,
        train=False,
    )


def embed_slides(
    model,
    data: str | Path | list,
    out: str | Path,
    preprocessing: dict | None = None,
    mpp: float | None = None,
    min_tissue: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    coords_dir: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict:
    """Embed every tissue tile of the slides of ``data`` into ``out`` (one ``.h5`` per slide).

    ``preprocessing`` defaults to ``model.card["preprocessing"]`` (target MPP, tile size, input
    size, normalization). Returns a summary ``{"done", "skipped", "no_tissue", "tiles", "seconds"}``.
    """
    t0 = time.time()
    pre = dict(preprocessing or (getattr(model, "card", None) or {}).get("preprocessing") or {})
    target_mpp = float(pre.get("target_mpp", 0.5))
    tile_size = int(pre.get("tile_size", 224))
    min_tissue = float(min_tissue if min_tissue is not None else pre.get("min_tissue", 0.5))
    thumb = int(pre.get("thumbnail_size", 1024))
    transform = transform_from_preprocessing(pre)
    records = data if isinstance(data, list) else list_slides(data, mpp)
    records = [r if isinstance(r, SlideRecord) else SlideRecord(str(r), mpp) for r in records]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    coords_dir = Path(coords_dir) if coords_dir is not None else out / "tiles"
    encoder_config = json.dumps(getattr(getattr(model, "encoder", model), "config", {}), default=str)
    device = _model_device(model)
    summary = {"done": 0, "skipped": 0, "no_tissue": 0, "tiles": 0}
    rows = []
    for rec in records:
        dst = feature_path(out, rec.path)
        if not overwrite and is_complete(dst):
            summary["skipped"] += 1
            rows.append((rec.path, dst.name, "skipped", ""))
            continue
        try:
            ds = SlideTileDataset(
                [rec],
                target_mpp=target_mpp,
                tile_size=tile_size,
                out_size=transform.size,
                min_tissue=min_tissue,
                coords_dir=coords_dir,
                transform=transform,
                mpp=mpp,
                thumbnail_size=thumb,
                skip_no_tissue=False,
                verbose=False,
            )
        except NoTissueError as exc:
            summary["no_tissue"] += 1
            rows.append((rec.path, "", "no_tissue", exc.problem))
            continue
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_images
        )
        feats = []
        with torch.no_grad():
            for x in loader:
                feats.append(_encode(model, x.to(device)).float().cpu())
        features = torch.cat(feats).numpy()
        grid = ds.grids[0]
        with atomic_output(dst) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features.astype(np.float32))
            f.create_dataset("coords", data=grid.coords.astype(np.int64))
            f.create_dataset("tissue", data=grid.tissue.astype(np.float32))
            attrs = {
                "slide": str(Path(rec.path).resolve()),
                "slide_name": Path(rec.path).name,
                "mpp": grid.mpp,
                "target_mpp": grid.target_mpp,
                "tile_size": grid.tile_size,
                "size0": grid.size0,
                "level": grid.level,
                "read_size": grid.read_size,
                "slide_width": grid.slide_size[0],
                "slide_height": grid.slide_size[1],
                "n_tiles": len(grid),
                "encoder": encoder_config,
                "label": rec.label or "",
                "complete": True,
            }
            for k, v in attrs.items():
                f.attrs[k] = v
        summary["done"] += 1
        summary["tiles"] += len(grid)
        rows.append((rec.path, dst.name, "done", str(len(grid))))
    _merge_index(out / "index.csv", rows)
    summary["seconds"] = round(time.time() - t0, 2)
    if verbose:
        msg = (
            f"embedded {summary['done']} slide(s) ({summary['tiles']} tiles); "
            f"{summary['skipped']} already done, {summary['no_tissue']} skipped with no tissue"
        )
        print(msg)
    if summary["done"] + summary["skipped"] == 0:
        raise DataError(
            data if not isinstance(data, list) else out,
            f"no slide had tissue tiles ({summary['no_tissue']} skipped with no tissue)",
        )
    return summary


def _merge_index(path: Path, rows: list[tuple]) -> None:
    old = {}
    if path.exists():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                old[r["slide"]] = (r["slide"], r["file"], r["status"], r["detail"])
    for r in rows:
        prev = old.get(r[0])
        if r[2] == "skipped" and prev is not None:
            continue  # keep the original "done" entry
        old[r[0]] = (r[0], r[1], "done" if r[2] == "skipped" else r[2], r[3])
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide", "file", "status", "detail"])
        w.writerows(old.values())


def find_feature_files(folder: str | Path) -> dict[str, Path]:
    """Complete feature files of ``folder`` keyed by slide file name *and* by its stem."""
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).glob("*.h5")):
        if not is_complete(p):
            continue
        name = p.name[:-3]
        out[name] = p
        out.setdefault(Path(name).stem, p)
    return out


def no_tissue_slides(folder: str | Path) -> set[str]:
    """Names (and stems) of slides that ``index.csv`` records as skipped for lack of tissue."""
    index = Path(folder) / "index.csv"
    out: set[str] = set()
    if index.exists():
        with open(index, newline="") as f:
            for r in csv.DictReader(f):
                if r["status"] == "no_tissue":
                    out |= {Path(r["slide"]).name, Path(r["slide"]).stem}
    return out
