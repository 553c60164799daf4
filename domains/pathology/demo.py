"""``domainfm demo --domain pathology``: slides -> tiles -> pretraining -> tile probe -> slide features ->
MIL with heatmaps, on the real TCGA slide and tiles of ``../shared/data/pathology`` when present,
otherwise on slides the demo writes itself (pyramidal TIFF, tifffile).

Steps:
1. Show the MPP check: the real TCGA slide has no microns-per-pixel, so the kit refuses it with a
   one-line error; the demo then passes an explicit (assumed) MPP through a manifest CSV.
2. Tile the slide(s) at a target MPP (tissue mask, best pyramid level); tile grids saved as CSV.
3. Pretrain a small ViT (MAE + contrastive, HED stain jitter) on the tissue tiles.
4. Tile classification probe, tissue vs no-tissue, on the labelled real tiles (file names carry the
   labels): leave-one-out logistic regression on embeddings of the pretrained vs a random-init encoder.
5. Slide-level MIL on generated slides ("tumour" = a region of dense large nuclei; labels known by
   construction), with the pretrained encoder's features: ABMIL vs mean pooling, attention heatmaps.
6. The trained ABMIL applied to the real slide: its attention heatmap (PNG) and tile scores (CSV).

Example:
    From the shell (or ``run_demo(Path("demo_out/pathology"), quick=True)`` from Python; it takes minutes)::

        $ domainfm demo --domain pathology --out demo_out/pathology --quick
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import domainfm
from domainfm.demo import sample_data
from domainfm.eval import classification_metrics, leave_one_out_probe
from domainfm.models.encoder import build_encoder

from .datasets import SlideRecord, TileFolderDataset, TileTransform
from .embed import embed_slides, load_slide_features
from .heatmap import rank_normalize, write_heatmap, write_tile_scores
from .mil import build_mil
from .mil_task import run_mil
from .slide import open_slide, slide_mpp
from .synthetic import synthetic_he_image, write_synthetic_slide

SHARED = sample_data("pathology") or Path("shared-data-absent")
REAL_SLIDE = "tcga-cr-7395-01a-01-ts1.svs"
ASSUMED_MPP = 0.5  # the TCGA fixture carries no MPP; 0.5 µm/px (20x) is an explicit assumption

TISSUE_PREFIXES = ("tissue-", "high-nuclei", "medium-nuclei", "low-nuclei", "very-low-nuclei", "liver-", "kidney-ihc")
NO_TISSUE_PREFIXES = ("no-tissue", "almost-white")


def _tile_label(name: str) -> str | None:
    if name.startswith(NO_TISSUE_PREFIXES):
        return "no-tissue"
    if name.startswith(TISSUE_PREFIXES):
        return "tissue"
    return None


def _last_loss(run_dir: Path) -> tuple[float | None, float | None]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None, None
    losses = [float(r["value"]) for r in csv.DictReader(open(path)) if r["metric"] == "loss"]
    return (losses[0], losses[-1]) if losses else (None, None)


def _probe(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out balanced accuracy of a standardized logistic regression."""
    scores = leave_one_out_probe(features, labels)
    return classification_metrics(labels, scores)["balanced_accuracy"]


def _synthetic_tiles(root: Path, n: int = 12) -> Path:

    for cls, blank in (("tissue", False), ("no-tissue", True)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rgb = synthetic_he_image(96, 96, seed=100 + i, blank=blank, tissue_fraction=1.0 if not blank else 0.0)
            Image.fromarray(rgb).save(root / cls / f"{cls}-{i}.png")
    return root


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Run the demo into ``out_dir``; print and return its figures (see the module doc)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():  # small models: intra-op threads beyond half the cores only contend
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) // 2)))
    real = (SHARED / REAL_SLIDE).is_file() and (SHARED / "tiles").is_dir()
    fig: dict = {
        "data": "real TCGA slide + real tiles (../shared/data/pathology)"
        if real
        else "generated pyramidal TIFF slides (../shared/data/pathology absent)",
        "quick": quick,
    }
    warnings.filterwarnings("ignore", category=UserWarning, module=r"domainfm\.pathology.*")
    synth_dir, labels_csv = _generated_slides(out_dir, quick)  # 1-2. slides and the MPP check
    slide_path, pre_data = _slides_to_pretrain(out_dir, synth_dir, real, fig)
    fig["slide"] = str(slide_path)
    model = _pretrain(out_dir, pre_data, real, quick, fig)  # 3.
    fig.update(_tile_probe(model, out_dir / "labelled_tiles", real))  # 4.
    mil_ckpt = _slide_mil(model, synth_dir, labels_csv, out_dir, quick, fig)  # 5.
    fig.update(_slide_heatmap(model, mil_ckpt, slide_path, real, out_dir))  # 6.
    fig["seconds"] = round(time.time() - t0, 1)
    torch.set_num_threads(threads)
    (out_dir / "figures.json").write_text(json.dumps(fig, indent=2))
    print("pathology demo:")
    for k, v in fig.items():
        print(f"  {k}: {v}")
    return fig


def _generated_slides(out_dir: Path, quick: bool) -> tuple[Path, Path]:
    """Steps 1-2: pyramidal TIFF slides with and without a tumour region (odd ones tumour), and their labels
    CSV: ``(slide folder, labels CSV)``."""
    synth_dir = out_dir / "generated_slides"
    labels_rows = []
    for i in range(6 if quick else 10):
        tumor = bool(i % 2)
        write_synthetic_slide(
            synth_dir / f"gen{i:02d}.tif", (768, 768) if quick else (1024, 1024), mpp=0.5, seed=i, tumor=tumor
        )
        labels_rows.append((f"gen{i:02d}.tif", "tumor" if tumor else "normal"))
    labels_csv = out_dir / "generated_labels.csv"
    labels_csv.write_text("slide,label\n" + "".join(f"{s},{lab}\n" for s, lab in labels_rows))
    return synth_dir, labels_csv


def _slides_to_pretrain(out_dir: Path, synth_dir: Path, real: bool, fig: dict) -> tuple[Path, Path]:
    """The slide the heatmap is drawn on and the data to pretrain on: the real slide through a manifest that
    gives its (assumed) MPP, after showing that the slide itself carries none; else the generated slides."""
    if not real:
        return synth_dir / "gen01.tif", synth_dir
    slide_path = (SHARED / REAL_SLIDE).resolve()
    if slide_mpp(open_slide(slide_path), slide_path) is None:
        fig["mpp_check"] = f"{slide_path}: no microns-per-pixel in the slide; {ASSUMED_MPP} µm/px is assumed"
    manifest = out_dir / "slides.csv"
    manifest.write_text(f"slide,mpp\n{slide_path},{ASSUMED_MPP}\n")
    fig["assumed_mpp"] = ASSUMED_MPP
    return slide_path, manifest


def _pretrain_config(out_dir: Path, pre_data: Path, real: bool, steps: int, batch: int) -> dict:
    """Step 3's recipe: a small ViT, MAE + contrastive, on 64 px tissue tiles at 1 µm/px."""
    return {
        "domain": "pathology",
        "out": str(out_dir / "pretrain"),
        "data": {
            "path": str(pre_data),
            "img_size": 64,
            "options": {
                "target_mpp": 1.0,
                "tile_size": 64,
                "min_tissue": 0.5,
                **({} if real else {"max_tiles_per_slide": 64}),
            },
        },
        "model": {"name": "vit-tiny", "patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3},
        "objective": {
            "name": "mae+contrastive",
            "mask_ratio": 0.6,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "proj_dim": 64,
            "proj_hidden_dim": 128,
        },
        "train": {
            "steps": steps,
            "batch_size": batch,
            "lr": 1e-3,
            "warmup_steps": 5,
            "progress": False,
            "tensorboard": False,
            "ckpt_every": steps,
            "log_every": 5,
        },
    }


def _pretrain(out_dir: Path, pre_data: Path, real: bool, quick: bool, fig: dict):
    """Step 3: pretraining on the tissue tiles (HED stain jitter in the views); the loaded model."""
    steps, batch = (15, 16) if quick else (60, 32)
    ckpt = domainfm.pretrain(_pretrain_config(out_dir, pre_data, real, steps, batch))
    first, last = _last_loss(out_dir / "pretrain")
    grids = sorted((out_dir / "pretrain" / "tiles").glob("*.tiles.csv"))
    fig.update(
        {
            "pretrain_slides": len(grids),
            "pretrain_tiles": sum(sum(1 for _ in open(g)) - 2 for g in grids),
            "pretrain_steps": steps,
            "pretrain_loss_first": first,
            "pretrain_loss_last": last,
            "checkpoint": str(ckpt),
        }
    )
    return domainfm.load(ckpt)


def _labelled_tiles(tile_root: Path, real: bool) -> Path:
    """Tissue / no-tissue tiles in class folders: the real tiles (labelled by their file names) or generated."""
    if not real:
        return _synthetic_tiles(tile_root)
    for p in sorted((SHARED / "tiles").glob("*.png")):
        lab = _tile_label(p.name)
        if lab:
            (tile_root / lab).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, tile_root / lab / p.name)
    return tile_root


def _tile_probe(model, tile_root: Path, real: bool) -> dict:
    """Step 4: tissue vs no-tissue, leave-one-out probe on the pretrained vs a random-init encoder (and the
    mean colour, a colour-only baseline)."""
    pre = model.card["preprocessing"]
    tiles = TileFolderDataset(
        _labelled_tiles(tile_root, real), "all", transform=TileTransform(64, mean=pre["mean"], std=pre["std"])
    )
    x = torch.stack([tiles[i]["image"] for i in range(len(tiles))])
    y = np.array([tiles[i]["label"] for i in range(len(tiles))])
    torch.manual_seed(0)
    random_encoder = build_encoder(**model.encoder.config).eval()
    with torch.no_grad():
        f_pre = model.embed(x).numpy()
        f_rand = random_encoder.embed(x).numpy()
    return {
        "probe_tiles": {c: int((y == i).sum()) for i, c in enumerate(tiles.classes)},
        "probe_balanced_accuracy_pretrained": round(_probe(f_pre, y), 3),
        "probe_balanced_accuracy_random_init": round(_probe(f_rand, y), 3),
        "probe_balanced_accuracy_mean_rgb": round(_probe(x.mean((2, 3)).numpy(), y), 3),
    }


def _slide_mil(model, synth_dir: Path, labels_csv: Path, out_dir: Path, quick: bool, fig: dict) -> Path:
    """Step 5: slide features and MIL on the generated slides (labels known by construction): ABMIL vs mean
    pooling; the MIL checkpoint."""
    embed_slides(model, synth_dir, out_dir / "features", batch_size=128, verbose=False)
    mil_ckpt = run_mil(
        out_dir / "features",
        labels_csv,
        out_dir / "mil",
        epochs=15 if quick else 25,
        lr=5e-4,
        hidden_dim=64,
        val_fraction=0.4,
        seed=0,
        heatmaps=True,
        card=dict(model.card),
        verbose=False,
    )
    metrics = json.loads((mil_ckpt / "metrics.json").read_text())
    for name in ("abmil", "mean"):
        m = metrics[name].get("val") or metrics[name]["train"]
        fig[f"mil_{name}_val_accuracy"] = m["accuracy"]
        fig[f"mil_{name}_val_auc"] = None if m["auc"] is None else round(m["auc"], 3)
    fig["mil_val_slides"] = metrics["n_val"]
    fig["heatmap_generated_tumor_slide"] = str(mil_ckpt / "heatmaps" / "gen01.tif.png")
    return mil_ckpt


def _slide_heatmap(model, mil_ckpt: Path, slide_path: Path, real: bool, out_dir: Path) -> dict:
    """Step 6: the trained ABMIL's attention over the real slide (or a generated one): heatmap PNG and tile
    scores CSV. (The slide's class probability under a head trained on generated slides means nothing; only
    the map is shown.)"""
    feats = out_dir / "features"
    if real:
        embed_slides(model, [_record(slide_path, ASSUMED_MPP)], feats, batch_size=128, verbose=False)
    data = load_slide_features(feats / f"{Path(slide_path).name}.h5")
    card = json.loads((mil_ckpt / "card.json").read_text())
    head = build_mil(card["mil"]["abmil"])
    head.load_state_dict(
        {k[5:]: v for k, v in load_file(str(mil_ckpt / "model.safetensors")).items() if k.startswith("head.")}
    )
    head.eval()
    with torch.no_grad():
        _, attn = head(torch.from_numpy(data["features"]))
    attn = attn[0].numpy()
    size0 = int(data["attrs"]["size0"])
    png = write_heatmap(slide_path, data["coords"], size0, attn, out_dir / "slide_attention.png")
    tiles_csv = write_tile_scores(
        out_dir / "slide_tile_scores.csv",
        data["coords"],
        size0,
        {"attention": attn, "attention_rank": rank_normalize(attn)},
    )
    return {"slide_tiles_embedded": int(len(attn)), "slide_heatmap": str(png), "slide_tile_scores": str(tiles_csv)}


def _record(path, mpp):
    return SlideRecord(str(path), mpp)
