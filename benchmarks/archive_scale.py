"""Archive-scale data (issue 22): prepare throughput and loader speed / memory, store vs source files vs MONAI caches.

Generates an archive of small CT volumes (NIfTI), then measures:

* ``prepare`` at 1 and 2 processes (files/s);
* random crops/s from the store (``open_store``: the store's own chunk reader, with its decoded-chunk
  cache and without; and the same crops read through zarr-python's API, as before issue 22's fix), from
  the NIfTI files (the domain's ``MedicalDataset``, no cache), from MONAI ``CacheDataset`` and
  ``PersistentDataset`` (same crop, same transforms; the caches' fill time is reported apart);
* the loader's peak RSS over a store of the small and the full archive, each in its own child process
  (the child's own ``VmHWM`` high-water mark), with the chunk cache and without;
* ``--slides N``: N small generated slides (pathology), ``--scenes N``: N small GeoTIFF scenes (remote
  sensing): prepare throughput and crops/s from their stores.

Wall-clock first, CPU seconds (this process and its children) second. ``--quick`` is a small smoke run.

    python benchmarks/archive_scale.py --quick
    python benchmarks/archive_scale.py            # 1,000 volumes
    python benchmarks/archive_scale.py --items 200 --slides 20 --scenes 20
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


def store_rates(store: Path, crop, n_crops: int) -> list[tuple]:
    """crops/s from a store: through zarr's API, the chunk reader without and with its cache."""
    import zarr

    import domainfm.store.dataset as store_dataset
    from domainfm.store import open_store

    rows = []
    ds_open = store_dataset.open_item_group
    store_dataset.open_item_group = lambda folder, cache: zarr.open_group(str(folder), mode="r")
    try:
        rows.append(("store read through zarr-python", *_rate(open_store(store, crop=crop, max_open=8), n_crops), 0.0))
    finally:
        store_dataset.open_item_group = ds_open
    rows.append(("store, chunk reader, no cache", *_rate(open_store(store, crop=crop, cache_mb=0), n_crops), 0.0))
    rows.append(("store, chunk reader, 64 MB cache", *_rate(open_store(store, crop=crop), n_crops), 0.0))
    return rows


def loader_rates(src: Path, store: Path, crop: list[int], n_crops: int, cache_dir: Path) -> list[tuple]:
    from domainfm.medical.dataset import MedicalDataset
    from domainfm.medical.options import MedicalOptions
    from domainfm.medical.sources import discover

    opts = MedicalOptions(modality="ct")
    items = discover(src, opts)[0]
    rows = store_rates(store, crop, n_crops)
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
ds = open_store({store!r}, crop={crop!r}, cache_mb={cache_mb!r})
rng = np.random.default_rng(0)
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
ds[0]
before = resident()
for i in rng.integers(0, len(ds), {n}):
    ds[int(i)]
hwm = int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM")))  # kB: own peak
print(before, resident(), hwm)
"""


def loader_rss_mb(store: Path, crop: list[int], n_crops: int, cache_mb: float) -> tuple[float, float, float]:
    """Memory (MB) of a fresh process: resident after opening the store and reading one crop, resident after
    ``n_crops`` more random crops, and its peak RSS (its own ``VmHWM``, imports included)."""
    code = RSS_CHILD.format(root=str(ROOT), store=str(store), crop=crop, n=n_crops, cache_mb=cache_mb)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, peak = (int(v) / 1024.0 for v in out.stdout.strip().splitlines()[-1].split())
    return before, after, peak


#: prepare at these process counts (``--quick``: 1 only; each spawned worker imports torch, seconds each)
WORKERS = [1, 2]


def prepare_rows(domain: str, src: Path, work: Path, n: int, what: str, options: dict, **kw) -> tuple[list, Path]:
    """Prepare ``src`` at 1 and 2 processes: rows of wall, CPU and files/s; the 1-process store."""
    from domainfm.store import prepare

    rows = []
    for workers in WORKERS:
        out = work / f"{domain}_store_w{workers}"
        job = partial(prepare, domain, src, out, workers=workers, options=options, progress=False, **kw)
        rep, w, c = timed(job)
        assert not rep.failed, rep.failure_text()
        rows.append((f"prepare {n} {what}, {workers} process(es)", f"{w:.1f} s", f"{c:.1f} s", f"{n / w:.1f} files/s"))
    return rows, work / f"{domain}_store_w1"


def crop_rows(rates: list[tuple], n_crops: int, crop_text: str) -> list[tuple]:
    rows = []
    for name, rate, c, fill in rates:
        extra = f"{rate:.0f} crops/s" + (f" (+{fill:.1f} s to fill the cache)" if fill else "")
        rows.append((f"{n_crops} crops {crop_text}: {name}", f"{n_crops / rate:.2f} s", f"{c:.2f} s", extra))
    return rows


def slide_rows(work: Path, n: int, n_crops: int) -> list[tuple]:
    """``n`` generated 512 x 512 slides at 0.5 MPP, tiled at 1 MPP in 64-pixel tiles."""
    from domainfm.pathology.synthetic import write_synthetic_slide

    src = work / "slides"
    for i in range(n):
        if not (src / f"s{i}.tif").exists():
            write_synthetic_slide(src / f"s{i}.tif", (512, 512), mpp=0.5, seed=i)
    opts = {"target_mpp": 1.0, "tile_size": 64, "min_tissue": 0.3}
    rows, store = prepare_rows("pathology", src, work, n, "slides 512^2", opts, img_size=64)
    return rows + crop_rows(store_rates(store, 48, n_crops), n_crops, "48^2 of 64^2 tiles")


def scene_rows(work: Path, n: int, n_crops: int) -> list[tuple]:
    """``n`` generated 4-band Sentinel-2 GeoTIFF scenes of 512 x 512 pixels, 64-pixel chips."""
    from domainfm.remote_sensing.synthetic import write_scene

    src, bands = work / "scenes", ["B02", "B03", "B04", "B08"]
    for i in range(n):
        if not (src / f"scene{i}.tif").exists():
            write_scene(src / f"scene{i}.tif", "sentinel2", bands, size=(512, 512), seed=i)
    opts = {"sensor": "sentinel2", "bands": ",".join(bands), "chips_per_scene": 8}
    rows, store = prepare_rows("remote_sensing", src, work, n, "scenes 4x512^2", opts, img_size=64)
    return rows + crop_rows(store_rates(store, 64, n_crops), n_crops, "4x64^2 chips")


def rss_rows(stores: list[tuple[int, Path]], crop, n_crops: int, caches=(0, 64)) -> list[tuple]:
    rows = []
    for cache_mb in caches:
        for count, path in stores:
            before, after, peak = loader_rss_mb(path, crop, n_crops, cache_mb)
            what = f"loader memory, store of {count} items, {n_crops} crops, cache {cache_mb} MB"
            rows.append((what, "", "", f"peak RSS {peak:.0f} MB; resident {before:.0f} -> {after:.0f} MB"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small archive (smoke run)")
    ap.add_argument("--items", type=int, help="volumes in the archive (default 1000; --quick 40)")
    ap.add_argument("--small", type=int, help="volumes of the small store for the RSS comparison (default 100)")
    ap.add_argument("--crops", type=int, default=200, help="random crops read per loader")
    ap.add_argument("--slides", type=int, help="also an archive of N small generated slides (--quick: 4)")
    ap.add_argument("--scenes", type=int, help="also an archive of N small generated GeoTIFF scenes (--quick: 4)")
    ap.add_argument("--work", help="folder for the archive and stores (default: a temporary one)")
    args = ap.parse_args()
    n = args.items or (40 if args.quick else 1000)
    small = args.small or (10 if args.quick else 100)
    slides = args.slides if args.slides is not None else (4 if args.quick else 0)
    scenes = args.scenes if args.scenes is not None else (4 if args.quick else 0)
    shape, crop = (48, 48, 32), [32, 32, 16]
    work = Path(args.work or tempfile.mkdtemp(prefix="archive_scale_"))
    WORKERS[:] = [1] if args.quick else [1, 2]
    from domainfm.store import prepare

    src = archive(work / "ct", n, shape)
    ct = {"modality": "ct"}
    rows, store = prepare_rows("medical", src, work, n, "volumes", ct)
    rates = loader_rates(src, store, crop, args.crops, work / "persistent")
    rows += crop_rows(rates, args.crops, "x".join(map(str, crop)))
    small_store = work / f"store_{small}"
    prepare("medical", subset(src, work / f"ct_{small}", small), small_store, workers=1, options=ct, progress=False)
    rows += rss_rows([(small, small_store), (n, store)], crop, args.crops * 5, (64,) if args.quick else (0, 64))
    if slides:
        rows += slide_rows(work, slides, args.crops)
    if scenes:
        rows += scene_rows(work, scenes, args.crops)
    width = max(len(r[0]) for r in rows)
    print(f"archive of {n} CT volumes {'x'.join(map(str, shape))} (int16 NIfTI), {os.cpu_count()} CPUs, in {work}")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}" if Path("/proc/loadavg").exists() else "")
    print(f"{'measure'.ljust(width)} | wall     | CPU      | result")
    print(f"{'-' * width}-|----------|----------|-------")
    for name, wall, c, result in rows:
        print(f"{name.ljust(width)} | {wall:>8} | {c:>8} | {result}")


if __name__ == "__main__":
    main()
