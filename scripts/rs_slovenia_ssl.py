"""Self-distillation on the eo-learn Slovenia NDVI series: LULC segmentation gain over random init.

1. Writes every acquisition date of ``remote_sensing/eolearn_slovenia`` (68 dates, 101 x 100 px,
   EPSG:32633, 10 m) as its own single-band GeoTIFF (band description ``NDVI``; cloudy / no-data
   pixels are the file's nodata) with ``domainfm.remote_sensing.demo.write_slovenia_dates``, into
   ``--out/data`` (never into the shared data).
2. Pretrains one small ViT per objective (``dino``, ``mae`` by default) on those dates: every date is
   a sample, random 32 px chips, the same optimizer steps and images per step for every objective;
   CPU seconds (``time.process_time``) and wall seconds are recorded for each.
3. Scores land-cover segmentation with frozen encoders against the same architecture at random init
   (``domainfm.eval.encoders.random_like``, init seed 0): each encoder's final patch tokens on
   ``--eval-dates`` fully clear dates (evenly spread over the series) are upsampled bilinearly to the
   pixel grid and concatenated per pixel; a per-pixel linear probe (``domainfm.eval.linear_probe``)
   is trained on the train blocks of a ``--block`` px checkerboard split of the one labelled scene and
   scored on the test blocks. LULC ids {1, 2, 3, 4, 8} map to classes through ``ClassMap``; id 0 (no
   data) is ignored. Each seed trains the probe on a seeded stratified ``--fraction`` of the
   train-block pixels. mIoU (over the 5 classes) and pixel accuracy get bootstrap 95% intervals that
   resample test blocks and seeds (``domainfm.eval.bootstrap_ci``), also for the paired gain.
   A linear probe on the raw NDVI values of the same dates is reported as a reference, and a
   supervised baseline: a MONAI U-Net trained from scratch (``domainfm.eval.supervised``) on 20 px tiles
   of the same dates' NDVI with exactly the train-block pixels each probe seed sees, predicted over
   the scene; every encoder's gain over it is paired on the same test blocks and seeds.
4. ``--defaults``: pretraining gets only the data (folder, sensor description), the objective and
   ``--steps``; the recipe (``domainfm.recipes``) chooses chip and patch size, model, learning rate and
   the objective's settings from the scenes.

Usage:
    nice -n 5 .venv/bin/python scripts/rs_slovenia_ssl.py --out runs/rs_slovenia --steps 300 --threads 1
    .venv/bin/python scripts/rs_slovenia_ssl.py --quick --out /tmp/rs_quick   # smoke: 2 steps on 4 dates
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import domainfm
from domainfm.classmap import ClassMap
from domainfm.demo import sample_data
from domainfm.errors import DomainFMError
from domainfm.eval import (
    as_blocks,
    bootstrap_ci,
    checkerboard_blocks,
    linear_probe,
    pixel_accuracy,
    segmentation_metrics,
    stratified_fraction,
)
from domainfm.eval.encoders import RANDOM_SEED, random_like
from domainfm.eval.supervised import supervised_segmenter
from domainfm.remote_sensing.demo import clear_dates, load_slovenia, write_slovenia_dates

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("remote_sensing", "eolearn_slovenia")

#: the small-image dino settings shared by the measurement scripts (configs/objectives/dino_small_images.yaml)
DINO_SMALL = yaml.safe_load((ROOT / "configs" / "objectives" / "dino_small_images.yaml").read_text())["objective"]

#: per-objective settings on top of the shared model/budget
OBJECTIVES = {
    "dino": {**DINO_SMALL, "local_crop_size": 16},
    "mae": {"name": "mae", "mask_ratio": 0.75, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4},
}


def default_config(data: dict, out: Path, name: str, args) -> dict:
    """What a user gives: the data (folder and its sensor description), the objective and the steps."""
    options = {"sensor": data["sensor"], "bands": ["NDVI"], "sensors_file": data["sensors_file"]}
    return {
        "domain": "remote_sensing",
        "out": str(out),
        "data": {"path": str(data["folder"]), "options": options},
        "objective": {"name": name},
        "train": {"steps": args.steps, "seed": 0, "progress": False, "tensorboard": False, "threads": args.threads},
    }


def pretrain_config(data: dict, out: Path, name: str, args) -> dict:
    """The ``domainfm.pretrain`` config of one objective (model and budget shared by all objectives)."""
    if args.defaults:
        return default_config(data, out, name, args)
    objective = dict(OBJECTIVES[name])
    if name == "dino":
        objective["teacher_temp_warmup_steps"] = max(1, int(0.3 * args.steps))
    return {
        "domain": "remote_sensing",
        "out": str(out),
        "data": {
            "path": str(data["folder"]),
            "img_size": args.chip,
            "options": {
                "sensor": data["sensor"],
                "bands": ["NDVI"],
                "sensors_file": data["sensors_file"],
                "chips_per_scene": 16,
                "min_valid": 0.5,
                "stats_chips": 64,
            },
        },
        "model": {
            "name": "vit-tiny",
            "patch_size": args.patch,
            "depth": args.depth,
            "embed_dim": args.embed_dim,
            "num_heads": 4,
            "class_token": True,
        },
        "objective": objective,
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": max(1, args.steps // 10),
            "log_every": max(1, args.steps // 20),
            "ckpt_every": args.steps,
            "seed": 0,
            "progress": False,
            "tensorboard": False,
            "threads": args.threads,
        },
    }


@torch.no_grad()
def pixel_features(model, paths: list[Path]) -> np.ndarray:
    """``(H * W) x (dates * E)``: the final patch tokens of each date, upsampled bilinearly to the pixel grid."""
    out = []
    ph, pw = np.broadcast_to(model.card["encoder"]["patch_size"], (2,)).astype(int)
    for path in paths:
        x = model.preprocess(path)  # 1 x H x W, normalised with the card's statistics, nodata -> 0
        h, w = x.shape[-2:]
        x = F.pad(x[None], (0, -w % pw, 0, -h % ph))  # zeros = the band mean
        feats = model.features(x)
        gh, gw = feats["grid"]
        tok = feats["tokens"].transpose(1, 2).reshape(1, -1, gh, gw)
        up = F.interpolate(tok, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, :, :h, :w]
        out.append(up.reshape(up.shape[0], -1).T.numpy())
    return np.concatenate(out, 1)


def probe_maps(feats: np.ndarray, y: np.ndarray, test: np.ndarray, k: int, args) -> list[np.ndarray]:
    """One predicted class map (``H x W``, -1 outside the test blocks) per seed."""
    flat_y, flat_test = y.ravel(), test.ravel()
    tr = np.flatnonzero((flat_y >= 0) & ~flat_test)
    te = np.flatnonzero((flat_y >= 0) & flat_test)
    maps = []
    for seed in range(args.seeds):
        idx = tr[stratified_fraction(flat_y[tr], args.fraction, seed=seed, source="LULC train blocks")]
        scores = linear_probe(feats[idx], flat_y[idx], feats[te], num_classes=k, seed=seed, Cs=args.Cs)
        pred = np.full(flat_y.shape, -1, np.int64)
        pred[te] = scores.argmax(1)
        maps.append(pred.reshape(y.shape))
    return maps


def _tiles(x: torch.Tensor, target: np.ndarray, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``side`` px tiles of the scene (``C x H x W``) and of its training target; tiles without a label dropped."""
    h, w = target.shape
    xs, ms = [], []
    for i in range(0, h - side + 1, side):
        for j in range(0, w - side + 1, side):
            m = target[i : i + side, j : j + side]
            if (m >= 0).any():
                xs.append(x[:, i : i + side, j : j + side])
                ms.append(torch.from_numpy(m.copy()))
    return torch.stack(xs), torch.stack(ms)


def supervised_maps(ndvi: np.ndarray, y: np.ndarray, test: np.ndarray, k: int, args) -> list[np.ndarray]:
    """Per seed, a U-Net trained from scratch on the train-block pixels that seed's probes see (20 px tiles of
    the ``dates x H x W`` NDVI stack), its prediction over the scene (-1 outside the test blocks)."""
    x = torch.from_numpy(np.ascontiguousarray(ndvi, dtype=np.float32))
    flat_y, flat_test = y.ravel(), test.ravel()
    tr = np.flatnonzero((flat_y >= 0) & ~flat_test)
    maps = []
    for seed in range(args.seeds):
        idx = tr[stratified_fraction(flat_y[tr], args.fraction, seed=seed, source="LULC train blocks")]
        target = np.full(flat_y.shape, -1, np.int64)
        target[idx] = flat_y[idx]
        tiles, masks = _tiles(x, target.reshape(y.shape), 20)
        pred, info = supervised_segmenter(tiles, masks, x[None], k, seed=seed, **args.supervised)
        maps.append(np.where(test & (y >= 0), pred[0], -1))
        args.supervised_info.append(info)
    return maps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=sample_data(*SOURCE),
        help="the eolearn_slovenia folder (default: $DOMAINFM_DATA or ../shared/data)",
    )
    p.add_argument("--out", type=Path, default=Path("runs") / "rs_slovenia")
    p.add_argument("--objectives", default="dino,mae", help="comma list; the gains are over random init")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps, the same for every objective")
    p.add_argument("--batch-size", type=int, default=32, help="images (chips) per step, the same for every objective")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chip", type=int, default=32, help="pretraining chip side (px)")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--eval-dates", type=int, default=6, help="fully clear dates whose features are concatenated")
    p.add_argument("--block", type=int, default=10, help="checkerboard block side (px) of the spatial split")
    p.add_argument("--fraction", type=float, default=0.5, help="train-block pixels per seed (stratified)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps on 4 dates, tiny model, 1 seed")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument(
        "--defaults", action="store_true", help="pretrain with the data-derived recipe (data, objective, steps)"
    )
    args = p.parse_args(argv)
    args.Cs = (0.01, 0.1, 1.0, 10.0)
    args.supervised, args.supervised_info = {}, []
    if args.quick:
        args.steps, args.batch_size, args.depth, args.embed_dim, args.seeds = 2, 4, 1, 32, 1
        args.eval_dates, args.n_boot, args.Cs, args.chip, args.patch = 2, 50, (1.0,), 16, 8
        args.supervised = {"max_epochs": 2}
    if args.threads:
        torch.set_num_threads(args.threads)
    src = args.data
    if src is None or not src.is_dir():
        print(f"{src or 'remote_sensing/eolearn_slovenia'}: sample not found (set DOMAINFM_DATA)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
    earlier = [n for n in names if any((args.out / n).glob("ckpt-*"))]
    if earlier and not args.overwrite:
        msg = f"{args.out}: holds an earlier {', '.join(earlier)} run; pass --overwrite or another --out"
        print(msg, file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    arrays = load_slovenia(src)
    eval_idx = clear_dates(arrays["valid"], args.eval_dates)
    # --quick: the evaluation dates and two partly cloudy ones (nodata exercised); otherwise every date
    cloudy = [i for i, f in enumerate(arrays["valid"].mean((1, 2))) if 0.5 < f < 1][:2]
    dates = sorted(eval_idx + cloudy) if args.quick else None
    data = write_slovenia_dates(src, args.out / "data", dates)
    print(f"wrote {len(data['paths'])} single-date NDVI GeoTIFFs to {data['folder']}", flush=True)
    ckpts, budget = {}, {}
    for name in names:
        t0, c0 = time.perf_counter(), time.process_time()
        cfg = pretrain_config(data, args.out / name, name, args)
        ckpts[name] = domainfm.pretrain(cfg, exist_ok="overwrite" if args.overwrite else "error")
        # CPU seconds of this process (all threads): the budget, independent of other jobs on the machine
        budget[name] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        print(f"{name}: pretraining {budget[name]} -> {ckpts[name]}", flush=True)

    # labels: LULC ids -> contiguous classes (id 0 = no data -> -1, ignored)
    lulc = arrays["lulc"]
    cmap = ClassMap([int(c) for c in np.unique(lulc) if c != 0])
    y = cmap.to_index(np.where(lulc == 0, -1, lulc), where="LULC.npy").numpy()
    k = cmap.num_classes
    test = checkerboard_blocks(*y.shape, args.block)
    eval_paths = [data["paths"][data["indices"].index(i)] for i in eval_idx]
    t1 = time.perf_counter()
    models = {name: domainfm.load(ckpts[name]) for name in names}
    first = models[names[0]]
    encoders = {"random": random_like(first, first.card, seed=RANDOM_SEED), **models}
    maps = {name: probe_maps(pixel_features(m, eval_paths), y, test, k, args) for name, m in encoders.items()}
    ndvi = np.stack([arrays["ndvi"][i].ravel() for i in eval_idx], 1)  # fully clear dates: no nodata
    maps["ndvi_only"] = probe_maps(ndvi, y, test, k, args)
    t_sup = time.perf_counter()
    maps["supervised"] = supervised_maps(np.stack([arrays["ndvi"][i] for i in eval_idx]), y, test, k, args)
    sup_seconds = round(time.perf_counter() - t_sup, 1)

    # bootstrap units: the test blocks (train-block pixels are -1 in the target and never scored)
    y_test = np.where(test, y, -1)
    units = as_blocks(y_test, args.block)
    keep = (units >= 0).any((1, 2))
    units = units[keep]

    def blocks(pred_maps):
        return [as_blocks(m, args.block)[keep] for m in pred_maps]

    def metric_fn(t, pr):
        return {
            "miou": segmentation_metrics(t, pr, k, ignore_background=False)["miou"],
            "pixel_accuracy": pixel_accuracy(t, pr),
        }

    base, sup = blocks(maps["random"]), blocks(maps["supervised"])
    rows = []
    for name, pm in maps.items():
        st = bootstrap_ci(
            units,
            blocks(pm),
            metric_fn=metric_fn,
            n_boot=args.n_boot,
            seed=1234,
            baseline_probas=None if name in ("random", "supervised") else base,
        )
        row = {"encoder": name, **{m: st[m] for m in ("miou", "pixel_accuracy")}}
        if name not in ("random", "supervised", "ndvi_only"):
            vs = bootstrap_ci(
                units, blocks(pm), metric_fn=metric_fn, n_boot=args.n_boot, seed=1234, baseline_probas=sup
            )
            row["vs_supervised"] = {m: {k_: vs[m][k_] for k_ in ("gain", "gain_low", "gain_high")} for m in vs}
        rows.append(row)
    counts = np.bincount(y_test[y_test >= 0], minlength=k)
    summary = {
        "data": str(src),
        "pretrain_dates": len(data["paths"]),
        "pretrain_dates_with_clear_pixels": int(sum(f > 0 for f in data["valid_fraction"])),
        "eval_dates": [arrays["dates"][i] for i in eval_idx],
        "class_ids": cmap.ids,
        "split": f"{args.block} px checkerboard blocks: train {int(((y >= 0) & ~test).sum())} px, "
        f"test {int(((y >= 0) & test).sum())} px in {int(keep.sum())} blocks",
        "majority_class_test_accuracy": float(counts.max() / counts.sum()),
        "settings": {k_: v for k_, v in vars(args).items() if k_ not in ("out",)},
        "checkpoints": {n: str(c) for n, c in ckpts.items()},
        "pretrain_budget": budget,
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "supervised": {
            "arch": args.supervised_info[0]["arch"],
            "params": args.supervised_info[0]["params"],
            "seconds": sup_seconds,
            "cpu_seconds": round(sum(i["cpu_seconds"] for i in args.supervised_info), 1),
            "mean_epochs": float(np.mean([i["epochs"] for i in args.supervised_info])),
        },
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "results": rows,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    table = markdown(summary)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


def _ci(st: dict, key: str = "mean", lo: str = "ci_low", hi: str = "ci_high") -> str:
    return f"{st[key]:.3f} [{st[lo]:.3f}, {st[hi]:.3f}]"


def markdown(summary: dict) -> str:
    """The results table (mean [95% CI]; gains paired with the random-init encoder)."""
    lines = [
        "| encoder | pretrain CPU s | mIoU | gain mIoU vs random | gain mIoU vs supervised | pixel acc | "
        "gain pixel acc vs random |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        cpu = (summary["pretrain_budget"].get(r["encoder"]) or {}).get("cpu_s", "-")
        if r["encoder"] == "supervised":
            cpu = f"(trains {summary['supervised']['cpu_seconds']} CPU s)"
        m, a = r["miou"], r["pixel_accuracy"]
        gm = _ci(m, "gain", "gain_low", "gain_high") if "gain" in m else "-"
        ga = _ci(a, "gain", "gain_low", "gain_high") if "gain" in a else "-"
        vs = r.get("vs_supervised", {}).get("miou")
        gs = _ci(vs, "gain", "gain_low", "gain_high") if vs else "-"
        lines.append(f"| {r['encoder']} | {cpu} | {_ci(m)} | {gm} | {gs} | {_ci(a)} | {ga} |")
    lines.append(
        f"\nsplit: {summary['split']}; evaluation dates {', '.join(summary['eval_dates'])}; "
        f"majority-class test pixel accuracy {summary['majority_class_test_accuracy']:.3f}"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DomainFMError as exc:  # one line naming the file or key and the fix, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
