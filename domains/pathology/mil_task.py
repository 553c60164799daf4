"""Slide-level classification from extracted tile features: ABMIL vs a mean-pool baseline, with
attention heatmaps and tile-score CSVs.

Input: a folder of feature files (see :mod:`.embed`) and a labels CSV with columns ``slide,label``
(and optionally ``split`` = ``train``/``val``/``test``). Output: a checkpoint folder holding both MIL
heads (ABMIL as the checkpoint's ``head.*``, the baseline as ``mil.mean.*``, next to the encoder
weights in ``model.safetensors``, so ``domainfm.load`` rebuilds encoder + ABMIL),
``metrics.json``, ``predictions.csv`` and ``heatmaps/<slide>.png`` + ``heatmaps/<slide>.tiles.csv``.

Example:
    >>> import tempfile
    >>> import domainfm
    >>> from domainfm.demo import example_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> ckpt, _ = example_checkpoint("pathology", folder)   # 6 small H&E slides (odd ones tumour), slides.csv
    >>> from domainfm.pathology.embed import embed_slides
    >>> _ = embed_slides(domainfm.load(ckpt), folder / "slides", folder / "features", verbose=False)
    >>> out = run_mil(folder / "features", folder / "slides.csv", folder / "mil", epochs=2, hidden_dim=16,
    ...               verbose=False)
    >>> metrics = json.load(open(out / "metrics.json"))
    >>> 0.0 <= metrics["abmil"]["val"]["auc"] <= 1.0          # 2 epochs on 6 slides: any value; real runs: 20+
    True
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from domainfm.data.splits import holdout_mask
from domainfm.errors import ConfigError, DataError
from domainfm.train.checkpoint import save_checkpoint

from .embed import find_feature_files, load_slide_features, no_tissue_slides
from .heatmap import rank_normalize, write_heatmap, write_tile_scores
from .mil import GatedABMIL, MeanPoolMIL, classification_metrics, predict_bags, train_mil


def read_labels(labels_csv: str | Path) -> list[dict]:
    """Rows ``{"slide", "label", "split", "line"}`` of a labels CSV (``slide,label[,split]``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "slides.csv"
        >>> _ = path.write_text("slide,label\\na.svs,tumor\\nb.svs,normal\\n")
        >>> read_labels(path)[0]
        {'slide': 'a.svs', 'label': 'tumor', 'split': None, 'line': 2}
    """
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise DataError(labels_csv, "labels CSV does not exist (expected columns slide,label)")
    try:
        with open(labels_csv, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(labels_csv, f"cannot read the labels CSV ({exc})") from None
    if "slide" not in fields or "label" not in fields:
        raise DataError(labels_csv, f"labels CSV needs columns 'slide' and 'label' (has {', '.join(fields) or 'none'})")
    out = []
    for i, r in enumerate(rows, start=2):
        slide, label = (r.get("slide") or "").strip(), (r.get("label") or "").strip()
        if not slide or not label:
            raise DataError(labels_csv, f"line {i}: empty slide or label")
        split = (r.get("split") or "").strip().lower() or None
        if split not in (None, "train", "val", "test"):
            raise DataError(labels_csv, f"line {i}: split must be train, val or test, got {split!r}")
        out.append({"slide": slide, "label": label, "split": split, "line": i})
    if not out:
        raise DataError(labels_csv, "labels CSV has no rows")
    return out


def _sorted_classes(labels: list[str]) -> list[str]:
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def match_labels(rows: list[dict], features_dir: str | Path, labels_csv: str | Path) -> list[dict]:
    """Attach each labelled slide's feature file; a slide with no feature file is an error naming it
    (slides skipped for lack of tissue are dropped with a warning instead)."""
    files = find_feature_files(features_dir)
    empty = no_tissue_slides(features_dir)
    matched, missing, dropped = [], [], []
    for r in rows:
        key = Path(r["slide"]).name
        path = files.get(key) or files.get(Path(key).stem)
        if path is None:
            (dropped if key in empty or Path(key).stem in empty else missing).append(r)
            continue
        matched.append({**r, "features": path})
    if missing:
        names = ", ".join(f"{m['slide']!r} (line {m['line']})" for m in missing[:3])
        raise DataError(
            labels_csv,
            f"{len(missing)} labelled slide(s) not found among the slides/features of "
            f"{features_dir}: {names}{' ...' if len(missing) > 3 else ''}",
        )
    if dropped:
        warnings.warn(
            f"{labels_csv}: {len(dropped)} labelled slide(s) had no tissue and are left out: "
            + ", ".join(d["slide"] for d in dropped[:5]),
            stacklevel=2,
        )
    if not matched:
        raise DataError(labels_csv, "no labelled slide has features")
    return matched


def assign_splits(rows: list[dict], val_fraction: float, seed: int) -> list[str]:
    """Given splits, or a stratified random ``val_fraction`` split (classes with one slide stay in train)."""
    if all(r["split"] for r in rows):
        return [r["split"] for r in rows]
    held = holdout_mask(len(rows), val_fraction, seed, labels=[r["label"] for r in rows])
    return [r["split"] or ("val" if h else "train") for r, h in zip(rows, held)]


def run_mil(
    features_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 20,
    lr: float = 2e-4,
    hidden_dim: int = 128,
    val_fraction: float = 0.3,
    seed: int = 0,
    heatmaps: bool = True,
    thumbnail_size: int = 1024,
    card: dict | None = None,
    encoder_tensors: dict | None = None,
    verbose: bool = True,
) -> Path:
    """Train ABMIL and the mean-pool baseline on labelled slide features; write the checkpoint,
    metrics, predictions and heatmaps. Returns the checkpoint folder."""

    rows = match_labels(read_labels(labels_csv), features_dir, labels_csv)
    classes = _sorted_classes([r["label"] for r in rows])
    if len(classes) < 2:
        raise DataError(labels_csv, f"MIL needs at least two classes, found only {classes}")
    splits = assign_splits(rows, val_fraction, seed)
    data = [load_slide_features(r["features"]) for r in rows]
    in_dim = _feature_dim(data, features_dir)
    bags = [torch.from_numpy(d["features"]).float() for d in data]
    y = np.array([classes.index(r["label"]) for r in rows])
    if "train" not in splits:
        raise DataError(labels_csv, "no slide in the train split")
    models = {
        "abmil": GatedABMIL(in_dim, len(classes), hidden_dim=hidden_dim, attn_dim=max(8, hidden_dim // 2)),
        "mean": MeanPoolMIL(in_dim, len(classes), hidden_dim=hidden_dim),
    }
    metrics: dict = {
        "classes": classes,
        "n_slides": len(rows),
        "n_train": splits.count("train"),
        "n_val": sum(s != "train" for s in splits),
    }
    results = {
        name: _fit(model, bags, y, splits, epochs, lr, seed, metrics.setdefault(name, {}))
        for name, model in models.items()
    }
    out_dir = Path(out_dir)
    tensors = {k: v for k, v in (encoder_tensors or {}).items() if k.startswith("encoder.")}
    tensors.update({f"head.{k}": v for k, v in models["abmil"].state_dict().items()})
    tensors.update({f"mil.mean.{k}": v for k, v in models["mean"].state_dict().items()})
    card = dict(card or {})
    card.update(
        {
            "domain": "pathology",
            "task": "mil",
            "stage": "finetune",
            "ema": False,
            "lora": None,
            "num_classes": len(classes),
            "classes": classes,
            "mil": {"abmil": models["abmil"].config, "mean": models["mean"].config, "default": "abmil"},
            "metrics": metrics,
        }
    )
    ckpt = save_checkpoint(out_dir, int(epochs), tensors, card)
    (ckpt / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_predictions(ckpt / "predictions.csv", rows, splits, classes, results)
    if heatmaps:
        attentions = results["abmil"][1]
        _write_heatmaps(ckpt / "heatmaps", rows, data, bags, models["abmil"], attentions, classes, thumbnail_size)
    if verbose:
        _print_summary(metrics, list(models), ckpt)
    return ckpt


def _feature_dim(data: list[dict], features_dir) -> int:
    dims = {d["features"].shape[1] for d in data}
    if len(dims) != 1:
        raise DataError(
            features_dir,
            f"feature files have different dimensions {sorted(dims)}; embed all slides with the same checkpoint",
        )
    return dims.pop()


def _fit(model, bags, y, splits: list[str], epochs: int, lr: float, seed: int, metrics: dict) -> tuple:
    """Train one MIL model on the train bags; its per-split metrics go into ``metrics``; returns
    ``(probabilities, attentions)`` of every bag."""
    tr = [i for i, s in enumerate(splits) if s == "train"]
    torch.manual_seed(seed)
    history = train_mil(model, [bags[i] for i in tr], y[tr].tolist(), epochs=epochs, lr=lr, seed=seed)
    probs, attns = predict_bags(model, bags)
    metrics["final_train_loss"] = history[-1] if history else None
    for split in ("train", "val", "test"):
        idx = [i for i, s in enumerate(splits) if s == split]
        if idx:
            metrics[split] = classification_metrics(y[idx], probs[idx])
    return probs, attns


def _write_predictions(path: Path, rows: list[dict], splits: list[str], classes: list[str], results: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "slide",
                "label",
                "split",
                "abmil_pred",
                "mean_pred",
                *[f"abmil_p_{c}" for c in classes],
                *[f"mean_p_{c}" for c in classes],
            ]
        )
        for i, r in enumerate(rows):
            pa, pm = results["abmil"][0][i], results["mean"][0][i]
            w.writerow(
                [
                    r["slide"],
                    r["label"],
                    splits[i],
                    classes[int(pa.argmax())],
                    classes[int(pm.argmax())],
                    *[f"{p:.4f}" for p in pa],
                    *[f"{p:.4f}" for p in pm],
                ]
            )


def _write_heatmaps(hm_dir: Path, rows, data, bags, abmil, attentions, classes, thumbnail_size: int) -> None:
    """Per slide: tile scores (attention, its rank, per-tile class logits) and an attention heatmap."""
    for i, (r, d) in enumerate(zip(rows, data)):
        attn = attentions[i]
        with torch.no_grad():
            inst = abmil.classifier(abmil.fc(bags[i]))  # per-tile class logits
        name = Path(r["slide"]).name
        cols = {"attention": attn, "attention_rank": rank_normalize(attn)}
        cols.update({f"tile_logit_{c}": inst[:, k].numpy() for k, c in enumerate(classes)})
        write_tile_scores(hm_dir / f"{name}.tiles.csv", d["coords"], int(d["attrs"]["size0"]), cols)
        slide = Path(str(d["attrs"].get("slide", "")))
        if slide.is_file():
            size0 = int(d["attrs"]["size0"])
            write_heatmap(slide, d["coords"], size0, attn, hm_dir / f"{name}.png", thumbnail_size=thumbnail_size)
        else:
            warnings.warn(f"{slide}: slide file not found; heatmap skipped (tile scores CSV written)", stacklevel=2)


def _print_summary(metrics: dict, names: list[str], ckpt: Path) -> None:
    for name in names:
        m = metrics[name].get("val") or metrics[name].get("train")
        split = "val" if metrics[name].get("val") else "train"
        print(
            f"MIL {name:5s}: {split} accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, "
            f"AUC {m['auc'] if m['auc'] is None else round(m['auc'], 3)}"
        )
    print(f"MIL checkpoint: {ckpt}")


def require_labels(labels) -> Path:
    if not labels:
        raise ConfigError('task mil needs a labels CSV with columns slide,label: pass labels="slides.csv"')
    return Path(labels)
