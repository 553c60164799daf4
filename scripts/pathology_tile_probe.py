"""Pathology: pretrain on tiles of the real TCGA slide, then the 34-tile leave-one-out probe (tissue vs
no tissue), pretrained vs random init, for several objectives at the same step budget (``--steps``)
or the same CPU seconds (``--cpu-seconds``). Both encoders are probed with the same pooling (``--pool``,
default ``token+avg``: DINO's linear-evaluation features; ``avg`` for encoders without a class token);
balanced accuracy of the leave-one-out predictions, with a paired bootstrap 95% interval of the gain.
A supervised baseline is scored the same way: for each tile, a ResNet-18 trained from scratch on the
other 33 (``domainfm.eval.supervised``), with the gain of every encoder over it. ``--defaults`` leaves
everything but the data (slide, assumed MPP, tile size) and the objective to the data-derived recipe.

The TCGA slide carries no microns-per-pixel value: it is read at an assumed 0.5 um/px (stated in the
output), tiles of 64 px at 1.0 um/px, as the pathology demo does.

Usage:
    .venv/bin/python scripts/pathology_tile_probe.py --steps 150 --out runs/path_probe
    .venv/bin/python scripts/pathology_tile_probe.py --cpu-seconds 600 --out runs/path_probe_budget
    .venv/bin/python scripts/pathology_tile_probe.py --defaults --objectives dino,mae --out runs/path_defaults
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import domainfm
from domainfm.demo import sample_data
from domainfm.eval import bootstrap_ci, leave_one_out_probe
from domainfm.eval.encoders import random_like, with_pool
from domainfm.eval.supervised import supervised_classifier
from domainfm.pathology.datasets import TileFolderDataset, TileTransform
from domainfm.pathology.demo import ASSUMED_MPP, REAL_SLIDE, _tile_label

OBJECTIVES = {
    "dino": {
        "objective": {
            "name": "dino",
            "prototypes": 256,
            "head_hidden_dim": 256,
            "head_bottleneck_dim": 128,
            "head_bn": True,
            "teacher_temp": 0.05,
            "warmup_teacher_temp": 0.04,
            "koleo_weight": 0.1,
            "global_crops": 2,
            "local_crops": 4,
            "local_crop_size": 32,
        },
        "model": {"class_token": True},
    },
    "mae+contrastive": {
        "objective": {
            "name": "mae+contrastive",
            "mask_ratio": 0.6,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "proj_dim": 64,
            "proj_hidden_dim": 128,
        },
    },
    "mae": {"objective": {"name": "mae"}},
}


def supervised_loo(x: torch.Tensor, y: np.ndarray) -> tuple[np.ndarray, dict]:
    """Leave-one-out class scores of a ResNet-18 trained from scratch on the other tiles, and its cost."""
    k, scores, infos = int(y.max()) + 1, np.zeros((y.size, int(y.max()) + 1)), []
    for i in range(y.size):
        rest = np.arange(y.size) != i
        tile_scores, info = supervised_classifier(x[rest], y[rest], x[i : i + 1], k, seed=0)
        scores[i] = tile_scores[0]
        infos.append(info)
    cost = {"arch": infos[0]["arch"], "params": infos[0]["params"]}
    cost.update(
        cpu_s=round(sum(i["cpu_seconds"] for i in infos), 1), mean_epochs=float(np.mean([i["epochs"] for i in infos]))
    )
    return scores, cost


def _config(args, name: str, manifest: Path) -> dict:
    """The pretraining config: the data (slide, assumed MPP, 64 px tiles) and, unless ``--defaults``, the
    measured small-model settings; with ``--defaults`` the recipe picks model, lr and objective settings."""
    data = {"path": str(manifest), "img_size": 64, "options": {"target_mpp": 1.0, "tile_size": 64, "min_tissue": 0.5}}
    train = {"steps": args.steps, "progress": False, "tensorboard": False, "seed": 0}
    if args.defaults:
        return {"domain": "pathology", "out": str(args.out / name.replace("+", "_")), "data": data,
                "objective": {"name": name}, "train": train}  # fmt: skip
    extra = OBJECTIVES[name]
    return {
        "domain": "pathology",
        "out": str(args.out / name.replace("+", "_")),
        "data": data,
        "model": {
            "name": "vit-tiny",
            "patch_size": 8,
            "depth": 4,
            "embed_dim": 96,
            "num_heads": 3,
            **extra.get("model", {}),
        },  # fmt: skip
        "objective": extra["objective"],
        "train": {
            **train,
            "batch_size": 32,
            "lr": 1e-3,
            "warmup_steps": max(1, args.steps // 10),
            "ckpt_every": args.steps,
            "log_every": 10,
        },  # fmt: skip
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", type=Path, default=Path("runs/path_probe"))
    p.add_argument("--objectives", default="dino,mae+contrastive")
    p.add_argument("--cpu-seconds", type=float, default=None, help="same CPU budget per objective (sets the steps)")
    p.add_argument("--pool", default="token+avg", choices=("token+avg", "token", "avg"), help="for both encoders")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--defaults", action="store_true", help="the recipe picks model and objective settings")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = sample_data("pathology")
    if shared is None or not (shared / REAL_SLIDE).is_file():
        print("the shared TCGA slide is absent (set DOMAINFM_DATA)")
        return 2
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.out / "slides.csv"
    manifest.write_text(f"slide,mpp\n{shared / REAL_SLIDE},{ASSUMED_MPP}\n")
    tile_root = args.out / "labelled_tiles"
    for path in sorted((shared / "tiles").glob("*.png")):
        label = _tile_label(path.name)
        if label:
            (tile_root / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tile_root / label / path.name)
    results = {"assumed_mpp": ASSUMED_MPP, "steps": args.steps, "cpu_seconds": args.cpu_seconds, "pool": args.pool}
    supervised = None
    for name in [n.strip() for n in args.objectives.split(",") if n.strip()]:
        cfg = _config(args, name, manifest)
        if args.cpu_seconds:
            cfg = domainfm.steps_for_cpu_budget(cfg, args.cpu_seconds)
        t0, c0 = time.perf_counter(), time.process_time()
        model = domainfm.load(domainfm.pretrain(cfg, exist_ok="overwrite"))
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
        pre = model.card["preprocessing"]
        tiles = TileFolderDataset(tile_root, "all", transform=TileTransform(64, mean=pre["mean"], std=pre["std"]))
        x = torch.stack([tiles[i]["image"] for i in range(len(tiles))])
        y = np.array([tiles[i]["label"] for i in range(len(tiles))])
        if supervised is None:  # the same tiles and normalisation for every objective: trained once
            supervised = supervised_loo(x, y)
        pretrained, pool = with_pool(model, args.pool)
        random_init, _ = with_pool(random_like(model, model.card), args.pool)  # seed-0 weights: where pretraining began
        with torch.no_grad():
            scores = leave_one_out_probe(pretrained.embed(x).numpy(), y)
            base = leave_one_out_probe(random_init.embed(x).numpy(), y)
        ci = bootstrap_ci(y, [scores], baseline_probas=[base], n_boot=2000)["balanced_accuracy"]
        vs_sup = bootstrap_ci(y, [scores], baseline_probas=[supervised[0]], n_boot=2000)["balanced_accuracy"]
        base_ci = bootstrap_ci(y, [base], n_boot=2000)["balanced_accuracy"]
        results[name] = {
            "steps": cfg["train"]["steps"],
            "pool": pool,
            "pretrained": round(ci["mean"], 3),
            "pretrained_ci": [round(ci["ci_low"], 3), round(ci["ci_high"], 3)],
            "random_init": round(base_ci["mean"], 3),
            "gain": round(ci["gain"], 3),
            "gain_ci": [round(ci["gain_low"], 3), round(ci["gain_high"], 3)],
            "gain_vs_supervised": round(vs_sup["gain"], 3),
            "gain_vs_supervised_ci": [round(vs_sup["gain_low"], 3), round(vs_sup["gain_high"], 3)],
            "tiles": {c: int((y == i).sum()) for i, c in enumerate(tiles.classes)},
            "cpu_s": round(cpu_s, 1),
            "wall_s": round(wall_s, 1),
        }
        print(name, results[name], flush=True)
    rgb = bootstrap_ci(y, [leave_one_out_probe(x.mean((2, 3)).numpy(), y)], n_boot=2000)["balanced_accuracy"]
    results["mean_rgb_baseline"] = round(rgb["mean"], 3)
    sup = bootstrap_ci(y, [supervised[0]], n_boot=2000)["balanced_accuracy"]
    results["supervised"] = {"balanced_accuracy": round(sup["mean"], 3), "ci": [round(sup["ci_low"], 3),
                             round(sup["ci_high"], 3)], **supervised[1]}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
