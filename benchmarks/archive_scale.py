"""Archive-scale data (issue 22): prepare throughput and loader speed / memory, store vs source files vs MONAI caches.

Generates an archive of small CT volumes (NIfTI), then measures:

* ``prepare`` at 1 and 2 processes (files/s);
* random crops/s from the store (``open_store``), from the NIfTI files (the domain's ``MedicalDataset``,
  no cache), from MONAI ``CacheDataset`` and ``PersistentDataset`` (same crop, same transforms; the
  caches' fill time is reported apart);
* the loader's peak RSS (a fresh process reading crops) over a store of the small and the full archive.

Wall-clock first, CPU seconds (this process and its children) second. ``--quick`` is a small smoke run.

    python benchmarks/archive_scale.py --quick
    python benchmarks/archive_scale.py            # 1,000 volumes
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn):
    w0, c0 = time.perf_counter(), cpu()
    out = fn()
    return out, time.perf_counter() - w0, cpu() - c0


def archive(folder: Path, n: int, shape) -> Path:
    from domainfm.medical.synthetic import write_ct_nifti_folder

    if not folder.is_dir() or len(list(folder.glob("*.nii.gz"))) < n:
        write_ct_nifti_folder(folder, n=n, shape=shape)
    return folder


def subset(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = dst / f"ct_{i}.nii.gz"
        if not link.exists():
            link.symlink_to(src / f"ct_{i}.nii.gz")
    return dst


def read_crops(ds, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, len(ds), n):
        ds[int(i)]


def _rate(ds, n_crops: int, seed: int = 0) -> tuple[float, float]:
    _, w, c = timed(lambda: read_crops(ds, n_crops, seed))
    return n_crops / w, c


def loader_rates(src: Path, store: Path, crop: list[int], n_crops: int, cache_dir: Path) -> list[tuple]:
    from domainfm.medical.dataset import MedicalDataset
    from domainfm.medical.options import MedicalOptions
    from domainfm.medical.sources import discover
    from domainfm.store import open_store

    opts = MedicalOptions(modality="ct")
    items = discover(src, opts)[0]
    rows = [("store (zarr, partial reads)", *_rate(open_store(store, crop=crop), n_crops), 0.0)]
    rows.append(("source NIfTI files", *_rate(MedicalDataset(items, opts, crop=crop, cache="none"), n_crops), 0.0))
    w0 = time.perf_counter()
    memory = MedicalDataset(items, opts, crop=crop, cache="memory")
    fill = time.perf_counter() - w0
    rows.append(("MONAI CacheDataset", *_rate(memory, n_crops), fill))
    del memory
    disk = MedicalDataset(items, opts, crop=crop, cache="disk", cache_dir=cache_dir)
    w0 = time.perf_counter()
    for i in range(len(items)):  # the first pass writes the disk cache
        disk[i]
    fill = time.perf_counter() - w0
    rows.append(("MONAI PersistentDataset", *_rate(disk, n_crops), fill))
    return rows


RSS_CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
import numpy as np
from domainfm.store import open_store
ds = open_store({store!r}, crop={crop!r})
rng = np.random.default_rng(0)
for i in rng.integers(0, len(ds), {n}):
    ds[int(i)]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def loader_rss_mb(store: Path, crop: list[int], n_crops: int) -> float:
    code = RSS_CHILD.format(root=str(ROOT), store=str(store), crop=crop, n=n_crops)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small archive (smoke run)")
    ap.add_argument("--items", type=int, help="volumes in the archive (default 1000; --quick 40)")
    ap.add_argument("--small", type=int, help="volumes of the small store for the RSS comparison (default 100)")
    ap.add_argument("--crops", type=int, default=200, help="random crops read per loader")
    ap.add_argument("--work", help="folder for the archive and stores (default: a temporary one)")
    args = ap.parse_args()
    n = args.items or (40 if args.quick else 1000)
    small = args.small or (10 if args.quick else 100)
    shape, crop = (48, 48, 32), [32, 32, 16]
    work = Path(args.work or tempfile.mkdtemp(prefix="archive_scale_"))
    from domainfm.store import prepare

    src = archive(work / "ct", n, shape)
    ct = {"modality": "ct"}
    rows = []
    for workers in (1, 2):
        rep, w, c = timed(partial(prepare, "medical", src, work / f"store_w{workers}", workers=workers, options=ct))
        rows.append((f"prepare {n} volumes, {workers} process(es)", f"{w:.1f} s", f"{c:.1f} s", f"{n / w:.1f} files/s"))
    store = work / "store_w1"
    for name, rate, c, fill in loader_rates(src, store, crop, args.crops, work / "persistent"):
        extra = f"{rate:.0f} crops/s" + (f" (+{fill:.1f} s to fill the cache)" if fill else "")
        what = f"{args.crops} crops {'x'.join(map(str, crop))}: {name}"
        rows.append((what, f"{args.crops / rate:.2f} s", f"{c:.2f} s", extra))
    small_store = work / f"store_{small}"
    prepare("medical", subset(src, work / f"ct_{small}", small), small_store, workers=2, options=ct, progress=False)
    for count, path in ((small, small_store), (n, store)):
        rss = loader_rss_mb(path, crop, args.crops)
        rows.append((f"loader peak RSS, store of {count} items", "", "", f"{rss:.0f} MB"))
    width = max(len(r[0]) for r in rows)
    print(f"archive of {n} CT volumes {'x'.join(map(str, shape))} (int16 NIfTI), {os.cpu_count()} CPUs, in {work}")
    print(f"{'measure'.ljust(width)} | wall     | CPU      | result")
    print(f"{'-' * width}-|----------|----------|-------")
    for name, wall, c, result in rows:
        print(f"{name.ljust(width)} | {wall:>8} | {c:>8} | {result}")


if __name__ == "__main__":
    main()
