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

    # 1-2. slides and the MPP check
    synth_dir = out_dir / "generated_slides"
    n_synth = 6 if quick else 10
    labels_rows = []
    for i in range(n_synth):
        tumor = bool(i % 2)
        write_synthetic_slide(
            synth_dir / f"gen{i:02d}.tif", (768, 768) if quick else (1024, 1024), mpp=0.5, seed=i, tumor=tumor
        )
        labels_rows.append((f"gen{i:02d}.tif", "tumor" if tumor else "normal"))
    labels_csv = out_dir / "generated_labels.csv"
    labels_csv.write_text("slide,label\n" + "".join(f"{s},{lab}\n" for s, lab in labels_rows))
    if real:
        slide_path = (SHARED / REAL_SLIDE).resolve()
        if slide_mpp(open_slide(slide_path), slide_path) is None:
            fig["mpp_check"] = f"{slide_path}: no microns-per-pixel in the slide; {ASSUMED_MPP} µm/px is assumed"
        manifest = out_dir / "slides.csv"
        manifest.write_text(f"slide,mpp\n{slide_path},{ASSUMED_MPP}\n")
        fig["assumed_mpp"] = ASSUMED_MPP
        pre_data = manifest
    else:
        slide_path = synth_dir / "gen01.tif"
        pre_data = synth_dir
    # 3. pretraining on tissue tiles
    steps, batch = (15, 16) if quick else (60, 32)
    cfg = {
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
    ckpt = domainfm.pretrain(cfg)
    model = domainfm.load(ckpt)
    first, last = _last_loss(out_dir / "pretrain")
    grids = sorted((out_dir / "pretrain" / "tiles").glob("*.tiles.csv"))
    n_tiles = sum(sum(1 for _ in open(g)) - 2 for g in grids)
    fig.update(
        {
            "slide": str(slide_path),
            "pretrain_slides": len(grids),
            "pretrain_tiles": n_tiles,
            "pretrain_steps": steps,
            "pretrain_loss_first": first,
            "pretrain_loss_last": last,
            "checkpoint": str(ckpt),
        }
    )

    # 4. tile probe: tissue vs no-tissue, pretrained vs random init
    tile_root = out_dir / "labelled_tiles"
    if real:
        for p in sorted((SHARED / "tiles").glob("*.png")):
            lab = _tile_label(p.name)
            if lab:
                (tile_root / lab).mkdir(parents=True, exist_ok=True)
                shutil.copy(p, tile_root / lab / p.name)
    else:
        _synthetic_tiles(tile_root)
    pre = model.card["preprocessing"]
    tiles = TileFolderDataset(tile_root, "all", transform=TileTransform(64, pre["mean"], pre["std"]))
    x = torch.stack([tiles[i]["image"] for i in range(len(tiles))])
    y = np.array([tiles[i]["label"] for i in range(len(tiles))])
    torch.manual_seed(0)
    random_encoder = build_encoder(**model.encoder.config).eval()
    with torch.no_grad():
        f_pre = model.embed(x).numpy()
        f_rand = random_encoder.embed(x).numpy()
    fig["probe_tiles"] = {c: int((y == i).sum()) for i, c in enumerate(tiles.classes)}
    fig["probe_balanced_accuracy_pretrained"] = round(_probe(f_pre, y), 3)
    fig["probe_balanced_accuracy_random_init"] = round(_probe(f_rand, y), 3)
    fig["probe_balanced_accuracy_mean_rgb"] = round(_probe(x.mean((2, 3)).numpy(), y), 3)  # colour-only baseline

    # 5. slide features + MIL on generated slides (labels known by construction)
    feats = out_dir / "features"
    embed_slides(model, synth_dir, feats, batch_size=128, verbose=False)
    mil_ckpt = run_mil(
        feats,
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

    # 6. the trained ABMIL over the real slide (or a generated one): heatmap + tile scores
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
    png = write_heatmap(slide_path, data["coords"], int(data["attrs"]["size0"]), attn, out_dir / "slide_attention.png")
    tiles_csv = write_tile_scores(
        out_dir / "slide_tile_scores.csv",
        data["coords"],
        int(data["attrs"]["size0"]),
        {"attention": attn, "attention_rank": rank_normalize(attn)},
    )
    # (the slide's class probability under a head trained on generated slides means nothing; only the map is shown)
    fig.update({"slide_tiles_embedded": int(len(attn)), "slide_heatmap": str(png), "slide_tile_scores": str(tiles_csv)})
    fig["seconds"] = round(time.time() - t0, 1)
    torch.set_num_threads(threads)
    (out_dir / "figures.json").write_text(json.dumps(fig, indent=2))
    print("pathology demo:")
    for k, v in fig.items():
        print(f"  {k}: {v}")
    return fig


def _record(path, mpp):
    return SlideRecord(str(path), mpp)
