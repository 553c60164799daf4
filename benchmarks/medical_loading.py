"""Loading + preprocessing throughput: the medical domain's dataset vs MONAI's cached best practice.

Both pipelines read the same NIfTI CT volumes and apply the same recipe (channel first, RAS
orientation, 1.5 mm spacing, soft-tissue HU window to [0, 1], pad, random 3D crop) for several
epochs, as a pretraining run would. The plain pipeline decodes and resamples every volume every
epoch; the kit caches the deterministic part (MONAI ``CacheDataset`` / ``PersistentDataset``) and
only crops per item (seeded from seed/epoch/index). The anchor is MONAI's own best practice:
``CacheDataset`` over the same deterministic transforms + the same ``RandSpatialCropd``, read through
``ThreadDataLoader``. Prints volumes/s, cache fill time and cache memory of every pipeline, and ratios.

Usage:
    .venv/bin/python benchmarks/medical_loading.py            # small defaults, curve over 0,1,2,4,8 workers
    .venv/bin/python benchmarks/medical_loading.py --volumes 16 --shape 192,192,96 --epochs 5 --workers 0,2,16

``--workers`` is a list: every pipeline runs at its first count; the anchor and the kit's memory cache run
at each count (the worker curve, with fill time and cache memory of both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


ANCHOR = "MONAI CacheDataset+ThreadDataLoader"


def make_volumes(folder: Path, n: int, shape: tuple[int, ...]) -> list[Path]:
    from domainfm.medical.synthetic import write_ct_nifti_folder

    return write_ct_nifti_folder(folder, n=n, shape=shape, affine=np.diag([-0.9, -0.9, 2.5, 1.0]))


def monai_transforms(crop: int):
    """The recipe as MONAI transforms: ``(deterministic list, random crop)``."""
    from monai import transforms as mt

    keys = ["image"]
    det = [
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys, pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
        mt.ScaleIntensityRanged(keys, a_min=-160, a_max=240, b_min=0.0, b_max=1.0, clip=True),
        mt.SpatialPadd(keys, spatial_size=(crop,) * 3),
        mt.EnsureTyped(keys, dtype=torch.float32),
    ]
    return det, mt.RandSpatialCropd(keys, roi_size=(crop,) * 3, random_size=False)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers are joined at the end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _epochs(loader, epochs: int, crop: int, ds=None) -> tuple[float, int]:
    n = 0
    t = time.perf_counter()
    for epoch in range(epochs):
        if ds is not None:
            ds.set_epoch(epoch)
        for batch in loader:
            assert batch["image"].shape[-3:] == (crop,) * 3
            n += batch["image"].shape[0]
    return time.perf_counter() - t, n


def cache_bytes(cache) -> int:
    """Bytes of the tensors held by a MONAI CacheDataset's cache (the cached volumes)."""
    total = 0
    for item in cache._cache:
        for v in item.values() if isinstance(item, dict) else [item]:
            if isinstance(v, torch.Tensor):
                total += v.untyped_storage().nbytes()
    return total


def plain_monai(paths: list[Path], crop: int, epochs: int, workers: int) -> tuple[float, int]:
    """A MONAI Compose of the same transforms over ``monai.data.Dataset`` + DataLoader."""
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset

    det, rand = monai_transforms(crop)
    ds = Dataset([{"image": str(p)} for p in paths], transform=mt.Compose(det + [rand]))
    return _epochs(DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers), epochs, crop)


def monai_cached(paths: list[Path], crop: int, epochs: int, workers: int) -> tuple[float, int, float, int]:
    """MONAI's documented fast path: ``CacheDataset`` (deterministic part cached, ``copy_cache=False`` since the
    crop does not modify its input) + ``ThreadDataLoader``. Returns (epoch time, volumes, fill time, cache bytes)."""
    from monai import transforms as mt
    from monai.data import CacheDataset, ThreadDataLoader

    det, rand = monai_transforms(crop)
    t = time.perf_counter()
    ds = CacheDataset(
        [{"image": str(p)} for p in paths],
        transform=mt.Compose(det + [rand]),
        cache_rate=1.0,
        copy_cache=False,
        num_workers=max(1, workers) if workers else None,
        progress=False,
    )
    fill = time.perf_counter() - t
    loader = ThreadDataLoader(ds, batch_size=1, shuffle=True, num_workers=workers)
    dt, n = _epochs(loader, epochs, crop)
    return dt, n, fill, cache_bytes(ds)


def kit(
    paths: list[Path], crop: int, epochs: int, workers: int, cache: str, out: Path
) -> tuple[float, int, float, int]:
    """The medical domain's dataset (same recipe) through a DataLoader, with the engine's set_epoch.
    Returns (epoch time, volumes, build/fill time, cache bytes; 0 for the disk cache)."""
    from domainfm.data.sample import collate_samples
    from domainfm.registry import get_domain
    from domainfm.runconfig import load_config

    cfg = load_config(
        {
            "domain": "medical",
            "out": str(out),
            "data": {
                "path": str(paths[0].parent),
                "img_size": crop,
                "cache": cache,
                "num_workers": workers,
                "options": {"modality": "ct", "window": "soft_tissue", "target_spacing": [1.5, 1.5, 1.5]},
            },
        }
    )
    t = time.perf_counter()
    ds = get_domain("medical").dataset(cfg, "pretrain")
    fill = time.perf_counter() - t
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, shuffle=True, num_workers=workers, collate_fn=collate_samples
    )  # re-created workers see set_epoch
    dt, n = _epochs(loader, epochs, crop, ds)
    return dt, n, fill, cache_bytes(ds.base) if cache == "memory" else 0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--shape", default="128,128,64", help="volume shape (voxels), e.g. 192,192,96")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--workers",
        default="0,1,2,4,8",
        help="DataLoader worker counts: all pipelines at the first, the anchor and the kit's memory cache at each",
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is reported")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = ap.parse_args(argv)
    # torch warns when workers outnumber the cores; the curve asks for that on purpose
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.quick:
        args.volumes, shape, args.crop, args.epochs, args.repeats = 4, (64, 64, 32), 32, 3, 2
        args.workers = "0,2" if args.workers == "0,1,2,4,8" else args.workers
    workers = [int(v) for v in str(args.workers).split(",") if v.strip()]
    if not workers:
        raise SystemExit("--workers needs at least one count, e.g. --workers 0")
    head = workers[0]
    tmp = Path(tempfile.mkdtemp(prefix="medbench_"))
    try:
        paths = make_volumes(tmp / "ct", args.volumes, shape)
        print(
            f"{args.volumes} CT volumes {shape} (0.9x0.9x2.5 mm, LPS on disk) -> RAS, 1.5 mm, soft-tissue window, "
            f"{args.crop}^3 random crops; {args.epochs} epochs, workers {workers}, torch threads "
            f"{torch.get_num_threads()}; {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; "
            f"{args.repeats} interleaved repeats, best of each"
        )
        plain_monai(paths[:1], args.crop, 1, 0)  # warm-up imports
        runs: dict[tuple[str, int], list] = {}
        for r in range(args.repeats):  # interleaved: contention from other processes hits every pipeline alike
            for w in workers:
                if w == head:
                    c0 = cpu_seconds()
                    t, n = plain_monai(paths, args.crop, args.epochs, w)
                    runs.setdefault(("plain MONAI Compose", w), []).append((n / t, 0.0, 0, cpu_seconds() - c0))
                c0 = cpu_seconds()
                t, n, fill, mem = monai_cached(paths, args.crop, args.epochs, w)
                runs.setdefault((ANCHOR, w), []).append((n / t, fill, mem, cpu_seconds() - c0))
                for cache in ("memory", "disk") if w == head else ("memory",):
                    c0 = cpu_seconds()
                    t, n, fill, mem = kit(paths, args.crop, args.epochs, w, cache, tmp / f"run_{cache}_{r}_{w}")
                    key = (f"domainfm medical (cache={cache})", w)
                    runs.setdefault(key, []).append((n / t, fill, mem, cpu_seconds() - c0))
        best = {key: max(v, key=lambda x: x[0]) for key, v in runs.items()}
        results = {name: value for (name, w), value in best.items() if w == head}
        anchor = results[ANCHOR][0]
        base = results["plain MONAI Compose"][0]
        print(f"at {head} workers:")
        print(
            f"  {'pipeline':38s} {'volumes/s':>10s} {'vs plain':>9s} {'vs anchor':>10s} {'fill s':>7s} {'cache MB':>9s}"
            f" {'CPU s':>7s}   (volumes per wall second; CPU seconds of the run, fill and workers included)"
        )
        for name, (v, fill, mem, cpu) in results.items():
            print(
                f"  {name:38s} {v:10.2f} {v / base:8.2f}x {v / anchor:9.2f}x {fill:7.2f} {mem / 2**20:9.1f} {cpu:7.2f}"
            )
        print(f"curve: domainfm medical (cache=memory) vs {ANCHOR} (volumes/s; fill s and cache MB of both)")
        print(
            f"  {'workers':>7s} {'kit':>8s} {'anchor':>8s} {'kit/anchor':>10s} {'kit fill':>8s} {'anchor fill':>11s} "
            f"{'kit MB':>7s} {'anchor MB':>9s} {'kit CPU s':>9s} {'anchor CPU s':>12s}"
        )
        curve = {}
        for w in workers:
            k, a = best[("domainfm medical (cache=memory)", w)], best[(ANCHOR, w)]
            curve[w] = {
                "kit": k[0],
                "anchor": a[0],
                "kit_cache_bytes": k[2],
                "anchor_cache_bytes": a[2],
                "kit_cpu_s": k[3],
                "anchor_cpu_s": a[3],
            }
            print(
                f"  {w:7d} {k[0]:8.2f} {a[0]:8.2f} {k[0] / a[0]:9.2f}x {k[1]:8.2f} {a[1]:11.2f} "
                f"{k[2] / 2**20:7.1f} {a[2] / 2**20:9.1f} {k[3]:9.2f} {a[3]:12.2f}"
            )
        out = {
            name: {"volumes_per_s": v, "fill_s": fill, "cache_bytes": mem, "cpu_s": cpu}
            for name, (v, fill, mem, cpu) in results.items()
        }
        out["curve"] = curve
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
