"""Predict on a GeoTIFF far larger than memory: peak memory stays bounded while the scene streams window
by window into a tiled, compressed output.

Usage:
    python benchmarks/remote_sensing_predict_memory.py            # 60000 x 60000 x 3 bands, mostly nodata
    python benchmarks/remote_sensing_predict_memory.py --quick    # 8000 x 8000 (make bench)
    python benchmarks/remote_sensing_predict_memory.py --size 20000 --chip 64 --patches 16

The scene is generated sparse (nodata but for ``--patches`` squares of data; tiled, deflate, absent blocks
take no space), so a 60000 x 60000 x 3 scene (21.6 GB as float32) is a few MB on disk. The model is a tiny
per-pixel segmenter (a 1 x 1 convolution, 3 classes) with a Sentinel-2 card, so the time is the kit's
reading, blending and writing, not a network. The predict runs in a child process; printed: wall-clock
seconds (headline), CPU seconds, the child's peak RSS (its own ``VmHWM``) and the output's size on disk.
Goal: peak RSS < 2 GB at 60000 x 60000.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, resource
import torch
from torch import nn
from domainfm.remote_sensing.predict import predict_scene
from domainfm.remote_sensing.sensors import get_sensor, sensor_to_dict

scene, out, chip, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(1)
s = get_sensor("sentinel2")
bands = ["B02", "B03", "B04"]

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(1, 1, 1)
        self.head = nn.Conv2d(3, 3, 1)
        torch.manual_seed(0)
        self.card = {"domain": "remote_sensing", "task": "segmentation", "preprocessing": {
            "sensors": {s.name: sensor_to_dict(s, [s.band(b) for b in bands])}, "bands": {s.name: bands},
            "stats": {s.name: {b: [0.1, 0.05] for b in bands}}, "img_size": chip, "chip_size": chip,
            "resolution": None, "resampling": "bilinear", "predict_overlap": 0.25}}
    def logits(self, x, wavelengths=None):
        return self.head(x)

t0, c0 = time.perf_counter(), time.process_time()
predict_scene(Tiny(), scene, out, batch_size=32, max_pixels=10**10, resume=resume)
hwm = int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM")))  # kB: own peak
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "maxrss_kb": hwm}))
"""


def run_predict(scene: Path, out: Path, chip: int = 64, resume: bool = False, timeout: float | None = None) -> dict:
    """Predict ``scene`` into ``out`` in a child process; its figures (``wall_s``, ``cpu_s``, ``maxrss_kb``)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(scene), str(out), str(chip), "1" if resume else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Generate the sparse scene, predict it in a child process, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=60000, help="scene side in pixels")
    ap.add_argument("--quick", action="store_true", help="an 8000 x 8000 scene")
    ap.add_argument("--chip", type=int, default=64)
    ap.add_argument("--patches", type=int, default=32, help="squares of 256 px with data")
    ap.add_argument("--keep", type=Path, help="folder to keep the scene and prediction in")
    args = ap.parse_args(argv)
    size = 8000 if args.quick else args.size
    sys.path.insert(0, str(ROOT))
    from domainfm.remote_sensing.synthetic import write_sparse_scene

    with tempfile.TemporaryDirectory(prefix="rs-predict-mem-") as tmp:
        folder = args.keep or Path(tmp)
        t = time.perf_counter()
        scene = write_sparse_scene(folder / "scene.tif", size, patches=args.patches)
        made = time.perf_counter() - t
        out = folder / "pred.tif"
        if out.exists():
            out.unlink()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures = run_predict(scene, out, args.chip)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        peak_gb = figures["maxrss_kb"] * 1024 / 1e9
        print(f"scene {size} x {size} x 3 (float32 in memory {size * size * 12 / 1e9:.1f} GB), "
              f"{scene.stat().st_size / 1e6:.1f} MB on disk, written in {made:.1f} s; chip {args.chip}")  # fmt: skip
        print(f"{'wall s':>10} {'cpu s':>10} {'peak RSS GB':>12} {'output MB':>10}")
        print(f"{figures['wall_s']:>10.1f} {cpu:>10.1f} {peak_gb:>12.2f} {out.stat().st_size / 1e6:>10.1f}")
        print(f"goal peak RSS < 2 GB: {'met' if peak_gb < 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
