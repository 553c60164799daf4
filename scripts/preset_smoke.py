"""Short CPU runs of the literature presets (configs/*/...): do they run on real or written files, and
what do the first steps log? Not a quality figure: a measured line per preset for docs/evaluation.md.

Usage:
    .venv/bin/python scripts/preset_smoke.py --out runs/preset_smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DOMAINFM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def last_metrics(run: Path) -> dict:
    rows = list(csv.reader(open(run / "metrics.csv")))[1:]
    first, last = int(rows[0][0]), int(rows[-1][0])

    def pick(step: int) -> dict:
        return {m: round(float(v), 4) for st, m, v in rows if int(st) == step and m.endswith(("loss", "mi", "rank"))}

    return {"first_step": first, "first": pick(first), "last_step": last, "last": pick(last)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "preset_smoke")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    import domainfm
    from domainfm.medical.synthetic import write_ct_nifti_folder

    quiet = ["train.progress=false", "train.tensorboard=false", "train.threads=1"]
    ct_dir = write_ct_nifti_folder(args.out / "ct_nifti", n=4, shape=(48, 48, 40))[0].parent
    runs = {
        "xray_mae_paper": (
            "configs/medical/xray_mae_paper.yaml",
            [
                f"data.path={DATA / 'medical' / 'pneumoniamnist.npz'}",
                "train.steps=100",
                "train.batch_size=64",
                "train.log_every=10",
                "train.warmup_steps=10",
            ],
        ),
        "tiles_dino_pathdino": (
            "configs/pathology/tiles_dino_pathdino.yaml",
            [
                f"data.path={DATA / 'pathology' / 'tcga-cr-7395-01a-01-ts1.svs'}",
                "data.options.mpp=0.25",
                "data.img_size=64",
                "data.options.tile_size=64",
                "data.options.max_tiles_per_slide=64",
                "data.num_workers=0",
                "objective.local_crop_size=32",
                "objective.local_crops=2",
                "objective.prototypes=1024",
                "objective.head_hidden_dim=512",
                "objective.teacher_temp_warmup_steps=5",
                "train.steps=10",
                "train.batch_size=16",
                "train.warmup_steps=2",
                "train.log_every=1",
            ],
        ),
        "ct_dino_3d": (
            "configs/medical/ct_dino_3d.yaml",
            [
                f"data.path={ct_dir}",
                "data.img_size=[32,32,32]",
                "data.num_workers=0",
                "model.name=vit-tiny",
                "model.patch_size=8",
                "objective.local_crop_size=[16,16,16]",
                "objective.prototypes=1024",
                "objective.head_hidden_dim=512",
                "objective.teacher_temp_warmup_steps=2",
                "train.steps=4",
                "train.batch_size=2",
                "train.warmup_steps=1",
                "train.log_every=1",
            ],
        ),
    }
    results = {}
    for name, (config, overrides) in runs.items():
        out = args.out / name
        t0 = time.perf_counter()
        domainfm.pretrain(ROOT / config, overrides=[f"out={out}", *quiet, *overrides])
        results[name] = {
            "config": config,
            "overrides": overrides,
            "wall_s": round(time.perf_counter() - t0, 1),
            **last_metrics(out),
        }
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "presets.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
