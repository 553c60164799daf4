"""Predict on a whole-slide image far larger than memory: peak memory stays bounded while the tissue tiles stream
through a tile classifier (or a MIL model) into a tiled pyramidal TIFF heatmap at tile resolution.

Usage:
    python benchmarks/slide_predict_memory.py             # 150000 x 150000 px slide (67.5 GB as RGB), mostly glass
    python benchmarks/slide_predict_memory.py --quick     # 20000 x 20000 (make bench)
    python benchmarks/slide_predict_memory.py --size 40000 --task mil --patches 16

The slide is generated sparse: a pyramidal tiled TIFF (deflate, 256 px tiles, 0.5 µm/px) that is white glass
but for ``--patches`` squares of H&E-like tissue (``size / 40`` px a side); every glass tile is the same few
hundred compressed bytes, so a 150000 px slide is tens of MB on disk. The model
is tiny (a strided convolution as the encoder, a linear head or a gated ABMIL head; tiles of 64 px at 1 µm/px
resized to 32), so the time is the kit's tiling, reading, scoring and writing, not a network. The predict runs
in a child process; printed: wall-clock seconds (headline), CPU seconds, the child's peak RSS (its own ``VmHWM``),
the tissue tiles scored and the heatmap's size. Goal: peak RSS < 2 GB at 150000 px.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 256

CHILD = r"""
import json, sys, time, resource
import torch
from torch import nn
from domainfm.pathology.mil import GatedABMIL
from domainfm.pathology.predict import predict_slide

slide, out, task, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(1)

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Conv2d(3, 8, 8, stride=8)
        self.head = GatedABMIL(8, 2, hidden_dim=16, attn_dim=8) if task == "mil" else nn.Linear(8, 2)
        self.card = {"task": task, "classes": ["normal", "tumor"], "preprocessing": {
            "target_mpp": 1.0, "tile_size": 64, "img_size": 32, "min_tissue": 0.5}}
    def embed(self, x):
        return self.encoder(x).mean((2, 3))
    def logits(self, x):
        return self.head(self.embed(x))

t0, c0 = time.perf_counter(), time.process_time()
predict_slide(Tiny(), slide, out, batch_size=64, progress=False, resume=resume)
hwm = int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM")))  # kB: own peak
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "maxrss_kb": hwm}))
"""


def tissue_square(side: int, seed: int = 0) -> np.ndarray:
    """A ``side`` x ``side`` RGB square of H&E-like tissue: flat pink stroma with purple nuclei (no pixel noise, so
    it compresses well and a large slide stays small on disk)."""
    rng = np.random.default_rng(seed)
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (228, 150, 190)
    yy, xx = np.ogrid[-5:6, -5:6]
    disk = yy * yy + xx * xx <= 25
    for y, x in rng.integers(0, side - 11, (side * side // 2000, 2)).tolist():
        img[y : y + 11, x : x + 11][disk] = (120, 60, 150)
    return img


def _patch_tiles(patches: list[tuple[int, int, np.ndarray]], level: int) -> dict[tuple[int, int], list]:
    """``(tile row, tile col) -> [(x, y, image)]`` of the tissue squares (downsampled to ``level``) a tile touches."""
    from PIL import Image

    out: dict[tuple[int, int], list] = {}
    for x, y, rgb in patches:
        d = 2**level
        side = max(1, rgb.shape[0] // d)
        img = rgb if d == 1 else np.asarray(Image.fromarray(rgb).resize((side, side), Image.BOX))
        lx, ly = x // d, y // d
        for ty in range(ly // TILE, (ly + side - 1) // TILE + 1):
            for tx in range(lx // TILE, (lx + side - 1) // TILE + 1):
                out.setdefault((ty, tx), []).append((lx, ly, img))
    return out


def _level_tiles(shape: tuple[int, int], touched: dict, glass: bytes):
    """The level's tiles, row-major, as deflate bytes: glass tiles one shared encoding, tissue tiles pasted."""
    h, w = shape
    for ty in range(-(-h // TILE)):
        for tx in range(-(-w // TILE)):
            parts = touched.get((ty, tx))
            if not parts:
                yield glass
                continue
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            x0, y0 = tx * TILE, ty * TILE
            for lx, ly, img in parts:
                ax0, ay0 = max(x0, lx), max(y0, ly)
                ax1, ay1 = min(x0 + TILE, lx + img.shape[1]), min(y0 + TILE, ly + img.shape[0])
                tile[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = img[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx]
            yield zlib.compress(tile.tobytes())


def write_sparse_slide(path: Path, size: int, patches: int = 16, mpp: float = 0.5, seed: int = 0) -> Path:
    """A ``size`` x ``size`` pyramidal tiled TIFF slide (OpenSlide ``generic-tiff``, MPP in the resolution tags):
    white glass but for ``patches`` squares of tissue (``size / 40`` px a side, at least 1024, so that the tissue
    detector sees them on a 1024 px thumbnail); small on disk, fast to write."""
    import tifffile

    rng = np.random.default_rng(seed)
    side = max(1024, -(-size // 40 // TILE) * TILE)
    cells = max(1, size // side)
    picks = rng.choice(cells * cells, min(patches, cells * cells), replace=False)
    square = tissue_square(side, seed)
    squares = [(int(p % cells) * side, int(p // cells) * side, square) for p in picks]
    glass = zlib.compress(np.full((TILE, TILE, 3), 255, np.uint8).tobytes())
    levels = 1
    while size // 2**levels >= TILE and levels < 10:
        levels += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=size > 60000) as tw:
        for i in range(levels):
            level_side = max(1, size // 2**i)
            f = 1e4 / (mpp * 2**i)  # pixels per centimetre
            tw.write(
                _level_tiles((level_side, level_side), _patch_tiles(squares, i), glass),
                shape=(level_side, level_side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if i == 0 else 1,
                resolution=(f, f),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def run_predict(
    slide: Path, out: Path, task: str = "classification", resume: bool = False, timeout: float | None = None
) -> dict:
    """Predict ``slide`` into ``out`` in a child process; its figures (``wall_s``, ``cpu_s``, ``maxrss_kb``)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(slide), str(out), task, "1" if resume else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Generate the sparse slide, predict it in a child process, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=150000, help="slide side in level-0 pixels")
    ap.add_argument("--quick", action="store_true", help="a 20000 x 20000 slide")
    ap.add_argument("--task", choices=["classification", "mil"], default="classification")
    ap.add_argument("--patches", type=int, default=16, help="squares of tissue")
    ap.add_argument("--keep", type=Path, help="folder to keep the slide and prediction in")
    args = ap.parse_args(argv)
    size = 20000 if args.quick else args.size
    sys.path.insert(0, str(ROOT))
    import tifffile

    with tempfile.TemporaryDirectory(prefix="slide-predict-mem-") as tmp:
        folder = args.keep or Path(tmp)
        t = time.perf_counter()
        slide = write_sparse_slide(folder / "slide.tif", size, patches=args.patches)
        made = time.perf_counter() - t
        out = folder / "heatmap.tif"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = run_predict(slide, out, args.task)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        peak_gb = figures["maxrss_kb"] * 1024 / 1e9
        with tifffile.TiffFile(out) as tf:
            meta = json.loads(tf.pages[0].description)
            shape = tf.pages[0].shape
        print(f"slide {size} x {size} px (RGB in memory {size * size * 3 / 1e9:.1f} GB), "
              f"{slide.stat().st_size / 1e6:.1f} MB on disk, written in {made:.1f} s; task {args.task}")  # fmt: skip
        print(f"{meta['n_tiles']} tissue tiles; heatmap {shape} at {meta['size0']} level-0 px per pixel")
        print(f"{'wall s':>10} {'cpu s':>10} {'peak RSS GB':>12} {'heatmap MB':>11}")
        print(f"{figures['wall_s']:>10.1f} {cpu:>10.1f} {peak_gb:>12.2f} {out.stat().st_size / 1e6:>11.2f}")
        print(f"goal peak RSS < 2 GB: {'met' if peak_gb < 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
