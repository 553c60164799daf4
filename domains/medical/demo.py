"""The medical demo: MAE pretraining on real chest X-rays (PneumoniaMNIST), then a linear probe of the
pretrained encoder vs a random-init encoder of the same shape on the held-out test split.

Where ``../shared/data/medical/pneumoniamnist.npz`` is absent (a user's clone), it falls back to 3D:
CT phantom volumes written as NIfTI (with / without lesions) for 3D MAE pretraining, a lesion-presence probe,
and a segmentation fine-tune whose NIfTI prediction is
checked to land on the input grid.

Example:
    From the shell (or ``run_demo(Path("demo_out"), quick=True)`` from Python; it takes minutes, not seconds)::

        $ domainfm demo --domain medical --out demo_out --quick
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import domainfm
from domainfm.demo import loss_trend, sample_data
from domainfm.eval.embeddings import embed_dataset
from domainfm.eval.encoders import random_like
from domainfm.eval.metrics import classification_metrics
from domainfm.eval.protocols import linear_probe as fit_linear_probe
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card

from .synthetic import make_phantom


def find_pneumoniamnist() -> Path | None:
    """The PneumoniaMNIST ``.npz`` of the sample data (:func:`domainfm.demo.sample_data`), if present."""
    return sample_data("medical", "pneumoniamnist.npz")


def linear_probe(model, train_set, test_set, batch_size: int = 256, max_train: int | None = None) -> dict:
    """The kit's linear probe (:func:`domainfm.eval.protocols.linear_probe`) on ``model.embed`` features:
    accuracy, balanced accuracy and AUROC on the test set."""
    (xtr, ytr), (xte, yte) = embed_dataset(model, train_set, batch_size), embed_dataset(model, test_set, batch_size)
    if max_train is not None and len(ytr) > max_train:
        keep = np.random.default_rng(0).permutation(len(ytr))[:max_train]
        xtr, ytr = xtr[keep], ytr[keep]
    n_cls = int(max(ytr.max(), yte.max()) + 1)
    proba = fit_linear_probe(xtr, ytr, xte, num_classes=n_cls)
    return classification_metrics(yte, proba, n_cls, metrics=("accuracy", "balanced_accuracy", "auroc"))


def _print_table(title: str, rows: dict[str, dict]) -> None:
    print(f"[medical demo] {title}")
    keys = sorted({k for r in rows.values() for k in r})
    print("  " + "encoder".ljust(14) + "".join(k.rjust(20) for k in keys))
    for name, r in rows.items():
        print("  " + name.ljust(14) + "".join(f"{r.get(k, float('nan')):20.4f}" for k in keys))


def run_pneumonia_demo(npz: Path, out_dir: Path, quick: bool = False) -> dict:
    """Pretrain (MAE, no labels) on PneumoniaMNIST train images, probe on test vs random init."""
    t0 = time.perf_counter()
    steps = 100 if quick else 600
    cfg = {
        "domain": "medical",
        "out": str(out_dir / "pretrain"),
        "data": {
            "path": str(npz),
            "img_size": 28,
            "cache": "memory",
            "options": {"spatial_dims": 2, "modality": "xray"},
        },
        "model": {"name": "vit-tiny", "patch_size": 4, "depth": 4, "embed_dim": 96, "num_heads": 3},
        "objective": {
            "name": "mae",
            "mask_ratio": 0.75,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "decoder_heads": 4,
            "norm_pix_loss": True,
        },
        "train": {
            "steps": steps,
            "batch_size": 64,
            "lr": 1.5e-3,
            "warmup_steps": max(1, steps // 10),
            "log_every": 10,
            "ckpt_every": steps,
            "seed": 0,
            "progress": False,
            "tensorboard": False,
        },
    }
    print(f"[medical demo] MAE pretraining on {npz.name} train images, labels unused ({steps} steps, CPU ok)")
    ckpt = domainfm.pretrain(cfg)
    t_pre = time.perf_counter() - t0
    first, last = loss_trend(out_dir / "pretrain")
    model = domainfm.load(ckpt)
    run_cfg = config_from_card(model.card, updates={"finetune": {"task": "classification"}})
    dom = get_domain("medical")
    train_set, test_set = dom.dataset(run_cfg, "train"), dom.dataset(run_cfg, "test")
    max_train = 800 if quick else None
    rows = {
        "pretrained": linear_probe(model, train_set, test_set, max_train=max_train),
        "random_init": linear_probe(random_like(model, model.card), train_set, test_set, max_train=max_train),
    }
    _print_table(
        f"linear probe on PneumoniaMNIST test ({len(test_set)} images, "
        f"{max_train or len(train_set)} training embeddings)",
        rows,
    )
    figures = {
        "data": str(npz),
        "steps": steps,
        "mae_loss_first": first,
        "mae_loss_last": last,
        **{f"probe_{k}_{name}": v for name, r in rows.items() for k, v in r.items()},
        "pretrain_seconds": round(t_pre, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "checkpoint": str(ckpt),
    }
    print(
        f"[medical demo] MAE loss {first:.4f} -> {last:.4f}; probe AUC pretrained "
        f"{rows['pretrained'].get('auroc', float('nan')):.3f} vs random init "
        f"{rows['random_init'].get('auroc', float('nan')):.3f}"
    )
    return figures


def run_volume_demo(out_dir: Path, quick: bool = False) -> dict:
    """Fallback without PneumoniaMNIST: 3D MAE on NIfTI CT phantoms, a lesion-presence probe,
    and UNETR segmentation predicted back onto the source grid."""

    t0 = time.perf_counter()
    data = out_dir / "volumes"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "masks").mkdir(parents=True, exist_ok=True)
    n = 24 if quick else 40
    rows = []
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(n):
        lesion = i % 2
        vol, mask = make_phantom((40, 40, 28), seed=100 + i, n_blobs=2 * lesion)
        ip, mp = data / "images" / f"case{i:03d}.nii.gz", data / "masks" / f"case{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.int16), aff), str(ip))
        nib.save(nib.Nifti1Image(mask, aff), str(mp))
        rows.append({"image": str(ip), "label": "lesion" if lesion else "normal", "mask": str(mp)})
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "mask"])
        w.writeheader()
        w.writerows(rows)
    print(f"[medical demo] PneumoniaMNIST not found: 3D fallback on {n} CT phantoms written as NIfTI in {data}")
    steps = 20 if quick else 120
    cfg = {
        "domain": "medical",
        "out": str(out_dir / "pretrain3d"),
        "data": {
            "path": str(data / "manifest.csv"),
            "img_size": 32,
            "cache": "memory",
            "options": {"modality": "ct", "window": "soft_tissue", "target_spacing": [1.5, 1.5, 2.0]},
        },
        "model": {"name": "vit-tiny", "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        "objective": {"name": "mae", "mask_ratio": 0.75, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 1e-3,
            "warmup_steps": max(1, steps // 10),
            "log_every": 5,
            "ckpt_every": steps,
            "progress": False,
            "tensorboard": False,
        },
    }
    ckpt = domainfm.pretrain(cfg)
    first, last = loss_trend(out_dir / "pretrain3d")
    model = domainfm.load(ckpt)
    dom = get_domain("medical")
    pcfg = config_from_card(model.card, updates={"finetune": {"task": "classification"}, "data": {"val_fraction": 0.5}})
    tr, te = dom.dataset(pcfg, "train"), dom.dataset(pcfg, "val")
    probe = {
        "pretrained": linear_probe(model, tr, te),
        "random_init": linear_probe(random_like(model, model.card), tr, te),
    }
    _print_table("lesion-presence linear probe (3D)", probe)
    seg = domainfm.finetune(
        ckpt,
        task="segmentation",
        out=out_dir / "seg3d",
        overrides=[f"train.steps={10 if quick else 60}", "finetune.head_options={feature_size: 8}"],
    )
    src = Path(rows[1]["image"])
    pred_path = domainfm.predict(seg, src, out_dir / "case001_pred.nii.gz")
    pred, ref = nib.load(pred_path), nib.load(src)
    truth = np.asarray(nib.load(rows[1]["mask"]).dataobj) > 0
    p = np.asarray(pred.dataobj) > 0
    dice = 2 * float((p & truth).sum()) / max(1.0, float(p.sum() + truth.sum()))
    figures = {
        "data": "generated NIfTI phantoms",
        "mae_loss_first": first,
        "mae_loss_last": last,
        **{f"probe_{k}_{name}": v for name, r in probe.items() for k, v in r.items()},
        "seg_dice_case001": dice,
        "prediction_same_shape": pred.shape == ref.shape,
        "prediction_same_affine": bool(np.allclose(pred.affine, ref.affine)),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "checkpoint": str(ckpt),
    }
    print(
        f"[medical demo] MAE loss {first:.4f} -> {last:.4f}; segmentation Dice {dice:.3f}; prediction "
        f"shape/affine match the input: {figures['prediction_same_shape']}/{figures['prediction_same_affine']}"
    )
    return figures


def run_demo(out_dir: Path, quick: bool = False, npz: Path | None = None) -> dict:
    """Run the medical demo and return (and save to ``figures.json``) its figures."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    npz = npz or find_pneumoniamnist()
    figures = run_pneumonia_demo(npz, out_dir, quick) if npz else run_volume_demo(out_dir, quick)
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures
