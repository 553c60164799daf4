"""Tiles per second delivered by the pathology tile dataset (DataLoader workers, one OpenSlide handle
per worker) vs a plain single-process loop of ``OpenSlide.read_region`` over the same coordinates.

Both produce the same thing: every tissue tile at the target MPP, read from the best pyramid level,
resized to the tile size and turned into a float tensor. The kit's side adds normalization and
batching. Slides are pyramidal TIFFs written with tifffile (``--slide`` to use a real one, with
``--mpp`` if it lacks microns-per-pixel).

Usage:
    python benchmarks/wsi_tiles.py                 # curve over 0,1,2,4,8 workers and threads (~2 min, 2 cores)
    python benchmarks/wsi_tiles.py --quick         # 2 repeats, curve over 0 and 2 only
    python benchmarks/wsi_tiles.py --slides 4 --size 4096 --workers 4 --threads 1
    python benchmarks/wsi_tiles.py --slide ../shared/data/pathology/tcga-cr-7395-01a-01-ts1.svs --mpp 0.25
"""

from __future__ import annotations

import argparse
import os
import pickle
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
from domainfm.pathology.regions import INFLATE, RegionReader  # noqa: E402
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


def kit_loader(ds: SlideTileDataset, workers: int, batch_size: int, threads: int = 1) -> int:
    """The kit: a fresh copy of the dataset (cold handles and tile cache, like the loop's new handles)."""
    ds = pickle.loads(pickle.dumps(ds))
    ds.read_threads = max(1, threads)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples)
    return sum(len(b["image"]) for b in loader)


def timed(fn) -> float:
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, curve over 0/2 workers only (for `make bench`)")
    ap.add_argument("--slides", type=int, default=3, help="generated slides")
    ap.add_argument("--size", type=int, default=3072, help="generated slide side (level-0 px)")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="MPP of the generated slides")
    ap.add_argument("--slide", help="benchmark this slide instead of generated ones")
    ap.add_argument("--mpp", type=float, help="MPP override for --slide")
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the headline kit figure")
    ap.add_argument("--threads", type=int, default=1, help="read threads per process of the headline kit figure")
    ap.add_argument("--curve", default="0,1,2,4,8", help="worker / thread counts of the scaling curve")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is reported")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.curve = 2, "0,2"
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="wsi_bench_"))
    if args.slide:
        records = [SlideRecord(args.slide, args.mpp)]
    else:
        records = [
            SlideRecord(
                str(
                    write_synthetic_slide(
                        tmp / f"bench{i}.tif",
                        (args.size, args.size),
                        mpp=args.slide_mpp,
                        seed=i,
                        tumor=bool(i % 2),
                        tissue_fraction=0.7,
                    )
                )
            )
            for i in range(args.slides)
        ]
    ds = SlideTileDataset(
        records,
        args.target_mpp,
        args.tile_size,
        args.tile_size,
        min_tissue=0.25,
        coords_dir=tmp / "tiles",
        transform=TileTransform(args.tile_size),
    )
    g = ds.grids[0]
    raw = RegionReader(g.path).raw_levels
    print(
        f"{len(ds)} tissue tiles from {len(ds.grids)} slide(s): {args.tile_size} px at {args.target_mpp} µm/px, "
        f"read at level {g.level} ({g.read_size} px, slide {g.mpp:g} µm/px); raw TIFF tile levels: {raw or 'none'}, "
        f"inflate: {INFLATE}"
    )
    print(
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; {args.repeats} interleaved repeats, "
        "best of each"
    )
    curve = [int(v) for v in args.curve.split(",") if v.strip()]
    cases = {
        "plain": lambda: plain_loop(ds),
        "kit": lambda: kit_loader(ds, args.workers, args.batch_size, args.threads),
    }
    for n in curve:  # DataLoader workers with one read thread each, and read threads in the main process
        cases[f"workers={n} threads=1"] = lambda n=n: kit_loader(ds, n, args.batch_size, 1)
        if n >= 2:
            cases[f"workers=0 threads={n}"] = lambda n=n: kit_loader(ds, 0, args.batch_size, n)
    results: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():  # interleaved: contention hits every case alike
            results[name].append(timed(fn))
    best = {k: max(v) for k, v in results.items()}
    plain, kit = best["plain"], best["kit"]
    print(f"plain OpenSlide.read_region loop (1 process):            {plain:8.1f} tiles/s")
    print(f"kit SlideTileDataset, {args.workers} workers x {args.threads} read threads:      {kit:8.1f} tiles/s")
    print(f"ratio kit / plain loop: {kit / plain:.2f}x")
    print("scaling (tiles/s, ratio to the plain loop):")
    for name in cases:
        if name not in ("plain", "kit"):
            print(f"  {name:24s} {best[name]:8.1f}  {best[name] / plain:5.2f}x")
    return {
        "tiles": len(ds),
        "plain_tiles_per_s": plain,
        "kit_tiles_per_s": kit,
        "ratio": kit / plain,
        "curve": {k: v for k, v in best.items() if k not in ("plain", "kit")},
        "raw_levels": raw,
    }


if __name__ == "__main__":
    main()
