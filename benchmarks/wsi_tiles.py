"""Tiles per second delivered by the pathology tile dataset (DataLoader workers, one OpenSlide handle
per worker) vs a plain single-process loop of ``OpenSlide.read_region`` over the same coordinates.

Both produce the same thing: every tissue tile at the target MPP, read from the best pyramid level,
resized to the tile size and turned into a float tensor. The kit's side adds normalization and
batching. Slides are pyramidal TIFFs written with tifffile (``--slide`` to use a real one, with
``--mpp`` if it lacks microns-per-pixel).

Besides the plain loop, the same OpenSlide reads run as a map-style dataset through a DataLoader, so kit and
baseline are both measured at every count of the curve: ``--workers`` DataLoader processes (one read thread
each) and ``--threads`` read threads in the main process (the baseline reads a batch on a thread pool).

Usage:
    python benchmarks/wsi_tiles.py                 # curve over 0,1,2,4,8 workers and 2,4,8 threads
    python benchmarks/wsi_tiles.py --quick         # 2 repeats, curve over 0 and 2 only
    python benchmarks/wsi_tiles.py --slides 4 --size 4096 --workers 0,4,16 --threads 4
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
from concurrent.futures import ThreadPoolExecutor
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


class PlainTiles(torch.utils.data.Dataset):
    """The baseline as a map-style dataset: the plain loop's read per tile (one OpenSlide handle per slide
    and process), so that DataLoader workers can run it; ``read_threads`` > 1 reads a batch's tiles on a
    thread pool (OpenSlide's ``read_region`` is thread-safe)."""

    def __init__(self, ds: SlideTileDataset, read_threads: int = 1):
        self.items = [(g.path, g.level, g.read_size, g.tile_size, x, y) for g in ds.grids for x, y in g.coords.tolist()]
        self.read_threads = read_threads
        self._slides: dict[str, openslide.OpenSlide] = {}
        self._pool = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        path, level, read_size, tile_size, x, y = self.items[i]
        slide = self._slides.get(path)
        if slide is None:
            slide = self._slides[path] = openslide.OpenSlide(path)
        img = slide.read_region((x, y), level, (read_size, read_size)).convert("RGB")
        if read_size != tile_size:
            img = img.resize((tile_size, tile_size), Image.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        if self.read_threads <= 1:
            return [self[i] for i in indices]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.read_threads)
        return list(self._pool.map(self.__getitem__, indices))

    def close(self) -> None:
        for slide in self._slides.values():
            slide.close()
        if self._pool is not None:
            self._pool.shutdown()


def plain_loader(ds: SlideTileDataset, workers: int, batch_size: int, threads: int = 1) -> int:
    """The baseline's reads through a DataLoader with ``workers`` processes (or ``threads`` read threads)."""
    plain = PlainTiles(ds, threads)
    loader = torch.utils.data.DataLoader(
        plain, batch_size=batch_size, num_workers=workers, collate_fn=torch.stack, persistent_workers=False
    )
    n = sum(len(b) for b in loader)
    plain.close()
    return n


def kit_loader(ds: SlideTileDataset, workers: int, batch_size: int, threads: int = 1) -> int:
    """The kit: a fresh copy of the dataset (cold handles and tile cache, like the loop's new handles)."""
    ds = pickle.loads(pickle.dumps(ds))
    ds.read_threads = max(1, threads)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples)
    return sum(len(b["image"]) for b in loader)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers are joined at the end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> tuple[float, float]:
    """``(tiles per wall second, CPU seconds)`` of one call of ``fn`` (which returns the tile count)."""
    t, c = time.perf_counter(), cpu_seconds()
    n = fn()
    return n / (time.perf_counter() - t), cpu_seconds() - c


def report_curve(results: dict, workers: list[int], threads: list[int]) -> tuple[dict, dict]:
    """Print the curve from the interleaved runs (the fastest wall-clock run of each, with its CPU seconds) and
    return ``(best tiles/s by case, curve)``."""
    best_runs = {k: max(v) for k, v in results.items()}  # the fastest wall-clock run, with its CPU seconds
    best = {k: v[0] for k, v in best_runs.items()}
    cpu = {k: v[1] for k, v in best_runs.items()}
    plain = best["plain loop"]
    print(f"plain OpenSlide.read_region loop (1 process): {plain:8.1f} tiles/s, {cpu['plain loop']:.2f} CPU s")
    print(
        "curve: kit SlideTileDataset vs the same OpenSlide.read_region reads as a Dataset (tiles per wall second; "
        "then CPU seconds of the run, workers included)"
    )
    print(
        f"  {'workers x read threads':24s} {'kit':>8s} {'plain':>8s} {'kit/plain':>9s} {'kit/plain loop':>14s} "
        f"{'kit CPU s':>9s} {'plain CPU s':>11s}"
    )
    curve = {}
    for label, key in [(f"{n} x 1", f"workers={n}") for n in workers] + [(f"0 x {n}", f"threads={n}") for n in threads]:
        kit, base = best[f"kit {key}"], best[f"plain {key}"]
        curve[key] = {"kit": kit, "plain": base, "kit_cpu_s": cpu[f"kit {key}"], "plain_cpu_s": cpu[f"plain {key}"]}
        print(
            f"  {label:24s} {kit:8.1f} {base:8.1f} {kit / base:8.2f}x {kit / plain:13.2f}x "
            f"{cpu[f'kit {key}']:9.2f} {cpu[f'plain {key}']:11.2f}"
        )
    return best, curve


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
    ap.add_argument(
        "--workers", default="0,1,2,4,8", help="DataLoader worker counts of the curve (kit and baseline, 1 read thread)"
    )
    ap.add_argument(
        "--threads", default="2,4,8", help="read-thread counts of the curve at 0 workers (kit and baseline)"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is reported")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.workers, args.threads = 2, "0,2", "2"
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
        target_mpp=args.target_mpp,
        tile_size=args.tile_size,
        out_size=args.tile_size,
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
    workers = [int(v) for v in args.workers.split(",") if v.strip()]
    if not workers:
        raise SystemExit("--workers needs at least one count, e.g. --workers 0")
    threads = [int(v) for v in args.threads.split(",") if v.strip() and int(v) > 1]
    cases = {"plain loop": lambda: plain_loop(ds)}
    for n in workers:  # DataLoader workers with one read thread each
        cases[f"kit workers={n}"] = lambda n=n: kit_loader(ds, n, args.batch_size, 1)
        cases[f"plain workers={n}"] = lambda n=n: plain_loader(ds, n, args.batch_size, 1)
    for n in threads:  # read threads in the main process
        cases[f"kit threads={n}"] = lambda n=n: kit_loader(ds, 0, args.batch_size, n)
        cases[f"plain threads={n}"] = lambda n=n: plain_loader(ds, 0, args.batch_size, n)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():  # interleaved: contention hits every case alike
            results[name].append(timed(fn))
    best, curve = report_curve(results, workers, threads)
    plain = best["plain loop"]
    head_key = "workers=0" if "workers=0" in curve else next(iter(curve))
    head = curve[head_key]
    print(f"headline: kit at {head_key} (1 read thread) / plain loop: {head['kit'] / plain:.2f}x")
    return {
        "tiles": len(ds),
        "plain_tiles_per_s": plain,
        "kit_tiles_per_s": head["kit"],
        "ratio": head["kit"] / plain,
        "curve": curve,
        "raw_levels": raw,
        "load_average": os.getloadavg()[0],
    }


if __name__ == "__main__":
    main()
