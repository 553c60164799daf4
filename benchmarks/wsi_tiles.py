"""Tiles per second delivered by the pathology tile dataset (DataLoader workers, one OpenSlide handle
per worker) vs a plain single-process loop of ``OpenSlide.read_region`` over the same coordinates.

Both produce the same thing: every tissue tile at the target MPP, read from the best pyramid level,
resized to the tile size and turned into a float tensor. The kit's side adds normalization and
batching. Slides are pyramidal TIFFs written with tifffile (``--slide`` to use a real one, with
``--mpp`` if it lacks microns-per-pixel).

Usage:
    python benchmarks/wsi_tiles.py                 # quick defaults (< 1 min on 2 CPU cores)
    python benchmarks/wsi_tiles.py --slides 4 --size 4096 --workers 4
    python benchmarks/wsi_tiles.py --slide ../shared/data/pathology/tcga-cr-7395-01a-01-ts1.svs --mpp 0.25
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domainfm.data.sample import collate_samples  # noqa: E402
from domainfm.pathology.datasets import SlideRecord, SlideTileDataset, TileTransform  # noqa: E402
from domainfm.pathology.synthetic import write_synthetic_slide  # noqa: E402


def plain_loop(ds: SlideTileDataset) -> int:
    """The baseline: one OpenSlide handle per slide, read_region over the dataset's coordinates."""
    n = 0
    for grid in ds.grids:
        slide = openslide.OpenSlide(grid.path)
        for x, y in grid.coords.tolist():
            img = slide.read_region((x, y), grid.level, (grid.read_size, grid.read_size)).convert("RGB")
            if grid.read_size != grid.tile_size:
                img = img.resize((grid.tile_size, grid.tile_size), Image.BILINEAR)
            _ = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)
            n += 1
        slide.close()
    return n


def kit_loader(ds: SlideTileDataset, workers: int, batch_size: int) -> int:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples)
    return sum(len(b["image"]) for b in loader)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the defaults are already quick (kept for `make bench`)")
    ap.add_argument("--slides", type=int, default=3, help="generated slides")
    ap.add_argument("--size", type=int, default=3072, help="generated slide side (level-0 px)")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="MPP of the generated slides")
    ap.add_argument("--slide", help="benchmark this slide instead of generated ones")
    ap.add_argument("--mpp", type=float, help="MPP override for --slide")
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="wsi_bench_"))
    if args.slide:
        records = [SlideRecord(args.slide, args.mpp)]
    else:
        records = [SlideRecord(str(write_synthetic_slide(tmp / f"bench{i}.tif", (args.size, args.size), mpp=args.slide_mpp,
                                                         seed=i, tumor=bool(i % 2), tissue_fraction=0.7)))
                   for i in range(args.slides)]
    ds = SlideTileDataset(records, args.target_mpp, args.tile_size, args.tile_size, min_tissue=0.25,
                          coords_dir=tmp / "tiles", transform=TileTransform(args.tile_size))
    g = ds.grids[0]
    print(f"{len(ds)} tissue tiles from {len(ds.grids)} slide(s): {args.tile_size} px at {args.target_mpp} µm/px, "
          f"read at level {g.level} ({g.read_size} px, slide {g.mpp:g} µm/px)")
    results = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        n = plain_loop(ds)
        results.setdefault("plain", []).append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = kit_loader(ds, args.workers, args.batch_size)
        results.setdefault("kit", []).append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = kit_loader(ds, 0, args.batch_size)
        results.setdefault("kit0", []).append(n / (time.perf_counter() - t))
    plain, kit, kit0 = (float(np.median(results[k])) for k in ("plain", "kit", "kit0"))
    print(f"plain OpenSlide.read_region loop (1 process):      {plain:8.1f} tiles/s")
    print(f"kit SlideTileDataset, DataLoader {args.workers} workers:        {kit:8.1f} tiles/s")
    print(f"kit SlideTileDataset, DataLoader 0 workers:        {kit0:8.1f} tiles/s")
    print(f"ratio kit({args.workers} workers) / plain loop: {kit / plain:.2f}x   "
          f"(kit(0 workers) / plain: {kit0 / plain:.2f}x)")
    return {"tiles": len(ds), "plain_tiles_per_s": plain, "kit_tiles_per_s": kit, "kit0_tiles_per_s": kit0,
            "ratio": kit / plain}


if __name__ == "__main__":
    main()
