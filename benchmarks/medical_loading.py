"""Loading + preprocessing throughput: the medical domain's dataset vs a plain MONAI ``Compose``.

Both pipelines read the same NIfTI CT volumes and apply the same recipe (channel first, RAS
orientation, 1.5 mm spacing, soft-tissue HU window to [0, 1], pad, random 3D crop) for several
epochs, as a pretraining run would. The plain pipeline decodes and resamples every volume every
epoch; the kit caches the deterministic part (MONAI ``CacheDataset`` / ``PersistentDataset``) and
only crops per item (seeded from seed/epoch/index). Prints volumes/s of both and the ratio.

Usage:
    .venv/bin/python benchmarks/medical_loading.py            # small defaults, < 2 min on CPU
    .venv/bin/python benchmarks/medical_loading.py --volumes 16 --shape 192,192,96 --epochs 5 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_volumes(folder: Path, n: int, shape: tuple[int, ...]) -> list[Path]:
    from domainfm.medical.synthetic import write_ct_nifti_folder
    return write_ct_nifti_folder(folder, n=n, shape=shape, affine=np.diag([-0.9, -0.9, 2.5, 1.0]))


def plain_monai(paths: list[Path], crop: int, epochs: int, workers: int) -> tuple[float, int]:
    """A MONAI Compose of the same transforms over ``monai.data.Dataset`` + DataLoader."""
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset
    keys = ["image"]
    tr = mt.Compose([
        mt.LoadImaged(keys, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys, pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
        mt.ScaleIntensityRanged(keys, a_min=-160, a_max=240, b_min=0.0, b_max=1.0, clip=True),
        mt.SpatialPadd(keys, spatial_size=(crop,) * 3),
        mt.EnsureTyped(keys, dtype=torch.float32),
        mt.RandSpatialCropd(keys, roi_size=(crop,) * 3, random_size=False),
    ])
    ds = Dataset([{"image": str(p)} for p in paths], transform=tr)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers)
    n = 0
    t = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            assert batch["image"].shape[-3:] == (crop,) * 3
            n += batch["image"].shape[0]
    return time.perf_counter() - t, n


def kit(paths: list[Path], crop: int, epochs: int, workers: int, cache: str, out: Path) -> tuple[float, int]:
    """The medical domain's dataset (same recipe) through a DataLoader, with the engine's set_epoch."""
    from domainfm.runconfig import load_config
    from domainfm.data.sample import collate_samples
    from domainfm.registry import get_domain
    cfg = load_config({"domain": "medical", "out": str(out),
                       "data": {"path": str(paths[0].parent), "img_size": crop, "cache": cache, "num_workers": workers,
                                "options": {"modality": "ct", "window": "soft_tissue", "target_spacing": [1.5, 1.5, 1.5]}}})
    t = time.perf_counter()
    ds = get_domain("medical").dataset(cfg, "pretrain")
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers,
                                         collate_fn=collate_samples)  # re-created workers see set_epoch
    n = 0
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            assert batch["image"].shape[-3:] == (crop,) * 3
            n += batch["image"].shape[0]
    return time.perf_counter() - t, n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--shape", default="128,128,64", help="volume shape (voxels), e.g. 192,192,96")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for both pipelines")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.quick:
        args.volumes, shape, args.crop, args.epochs = 4, (64, 64, 32), 32, 3
    tmp = Path(tempfile.mkdtemp(prefix="medbench_"))
    try:
        paths = make_volumes(tmp / "ct", args.volumes, shape)
        print(f"{args.volumes} CT volumes {shape} (0.9x0.9x2.5 mm, LPS on disk) -> RAS, 1.5 mm, soft-tissue window, "
              f"{args.crop}^3 random crops; {args.epochs} epochs, {args.workers} workers, torch threads {torch.get_num_threads()}")
        plain_monai(paths[:1], args.crop, 1, 0)  # warm-up imports
        results = {}
        t, n = plain_monai(paths, args.crop, args.epochs, args.workers)
        results["plain MONAI Compose"] = n / t
        for cache in ("memory", "disk"):
            t, n = kit(paths, args.crop, args.epochs, args.workers, cache, tmp / f"run_{cache}")
            results[f"domainfm medical (cache={cache})"] = n / t
        base = results["plain MONAI Compose"]
        for name, v in results.items():
            print(f"  {name:34s} {v:8.2f} volumes/s   x{v / base:5.2f} vs plain")
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
