"""Peak resident memory (RSS) of default 3D runs on CPU, each scenario in a fresh process.

(a) ``ct``: four 100x100x80 CT volumes (generated phantoms in HU, with lesion masks): the default
    ``domainfm pretrain --domain medical`` then a default UNETR ``finetune --task segmentation``
    (nothing set but the data, the run folders and the step count). Goal: <= 4 GB.
(b) ``mri``: one 181x217x181 1 mm T1-like volume (generated, MRI intensities) with a 116-region atlas
    as the mask (generated blocks): pretrain + UNETR fine-tune with defaults, then ``predict``.

The volumes are generated NIfTI files (no download). Each scenario runs the CLI in a child process
and reports that process's peak RSS (``ru_maxrss``) after each stage, and the kit's estimate printed
before the first step (``DOMAINFM`` INFO log).

Usage:
    .venv/bin/python benchmarks/memory_peak.py                  # both scenarios, 2 steps each
    .venv/bin/python benchmarks/memory_peak.py --scenario ct --steps 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import json, logging, resource, sys, time
from domainfm.cli import run
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
logging.getLogger("domainfm.train").setLevel(logging.INFO)
stages = json.loads(sys.argv[1])
out = []
for name, argv in stages:
    t = time.time()
    try:
        code = run(argv)
    except Exception as exc:  # a refused stage is a result too (e.g. the memory check)
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    out.append({"stage": name, "exit": code, "seconds": round(time.time() - t, 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3)})
print("RESULT " + json.dumps(out), flush=True)
"""


def make_ct(folder: Path, n: int = 4, shape=(100, 100, 80)) -> Path:
    from domainfm.medical.synthetic import write_nifti_pair

    for i in range(n):
        write_nifti_pair(folder, f"ct{i}", shape=shape, affine=np.diag([1.0, 1.0, 1.5, 1.0]), seed=i)
    return folder


def make_mri(folder: Path, shape=(181, 217, 181), regions: int = 116) -> Path:
    import nibabel as nib

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.85**2
    vol = np.where(brain, 400 + 200 * grid[0] + rng.normal(0, 30, shape), 0).astype(np.float32)
    # 116 regions: a 5 x 5 x 5 block parcellation of the brain, ids 1..116 (0 = outside)
    cells = np.stack([np.clip(((g + 1) / 2 * 5).astype(int), 0, 4) for g in grid]).reshape(3, -1)
    region = (cells[0] * 25 + cells[1] * 5 + cells[2]).reshape(shape) % regions + 1
    mask = np.where(brain, region, 0).astype(np.int16)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), folder / "images" / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "masks" / "t1.nii.gz")
    return folder


def run_scenario(name: str, work: Path, steps: int) -> list[dict]:
    data = make_ct(work / "ct") if name == "ct" else make_mri(work / "mri")
    pre, ft = work / f"{name}-pre", work / f"{name}-seg"
    stages = [
        [
            "pretrain",
            ["pretrain", "--domain", "medical", "--data", str(data), "--steps", str(steps), "--out", str(pre)],
        ],
        [
            "finetune",
            [
                "finetune",
                str(pre),
                "--task",
                "segmentation",
                "--data",
                str(data),
                "--steps",
                str(steps),
                "--out",
                str(ft),
            ],
        ],
    ]
    if name == "mri":
        image = data / "images" / "t1.nii.gz"
        stages.append(["predict", ["predict", str(ft), "--input", str(image), "--out", str(work / "pred.nii.gz")]])
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(stages)], capture_output=True, text=True, cwd=ROOT)
    for line in proc.stderr.splitlines():
        if "memory estimate" in line or line.startswith(("error", "domainfm:")):
            print(f"  [{name}] {line}")
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not results:
        print(proc.stderr[-3000:])
        raise SystemExit(f"scenario {name} failed (exit {proc.returncode})")
    return results[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["ct", "mri", "all"], default="all")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    names = ["ct", "mri"] if args.scenario == "all" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="domainfm-mem-") as tmp:
        for name in names:
            t = time.time()
            res = run_scenario(name, Path(tmp), args.steps)
            for r in res:
                print(
                    f"{name:4s} {r['stage']:9s} exit {r['exit']}  peak RSS {r['peak_rss_gb']:.2f} GB  "
                    f"({r['seconds']} s)"
                )
            peak = max(r["peak_rss_gb"] for r in res)
            goal = " (goal <= 4 GB: " + ("met" if peak <= 4 else "MISSED") + ")" if name == "ct" else ""
            print(f"{name:4s} peak RSS {peak:.2f} GB{goal}, total {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
