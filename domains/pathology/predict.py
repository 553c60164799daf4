"""Whole-slide prediction with a fine-tuned checkpoint, written as heatmap PNG + tile CSV + JSON.

- A MIL checkpoint (``task: mil``): slide class probabilities and the ABMIL attention heatmap.
- A tile classifier (``task: classification``): per-tile class probabilities and a heatmap of the
  probability of the positive class (the last class).

Example:
    >>> import tempfile
    >>> import domainfm
    >>> from domainfm.demo import example_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> mil, _ = example_checkpoint("pathology", folder, task="mil")   # 6 small H&E slides, encoder + ABMIL
    >>> out = domainfm.predict(mil, folder / "slides/s1.tif", folder / "out/s1.png")   # mpp=0.25: a slide without MPP
    >>> out.name, sorted(p.name for p in out.parent.iterdir())
    ('s1.png', ['s1.png', 's1.prediction.json', 's1.tiles.csv'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from domainfm.errors import CheckpointError, DataError
from domainfm.io_safety import atomic_output, check_output

from .datasets import SlideRecord, SlideTileDataset, TileTransform
from .embed import _model_device, _stack_images, transform_from_preprocessing
from .heatmap import rank_normalize, write_heatmap, write_tile_scores
from .slide import SLIDE_SUFFIXES


class NormalisedTiles(TileTransform):
    """Tiles for a model with a normalisation of its own (trained on tiles held in memory, the ``arrays``
    domain): the RGB tile, resized to the model size, as raw ``3 x S x S`` values (0..255) through ``normalise``.

    Example:
        >>> t = NormalisedTiles(8, lambda x: x / 255)
        >>> float(t(np.full((16, 16, 3), 255, np.uint8)).max())
        1.0
    """

    def __init__(self, size: int, normalise: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(size)
        self.normalise = normalise

    def normalize_into(self, rgb: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        raw = torch.from_numpy(np.ascontiguousarray(np.asarray(rgb)[..., :3])).permute(2, 0, 1).float()
        return out.copy_(self.normalise(raw))


def slide_record(slide_path, geometry: dict, card: dict) -> dict:
    """The tiling record :func:`predict_slide` reads, for a model trained on tiles held in memory (an ``arrays``
    card whose ``geometry`` is pathology): tiles of the training size at the training MPP."""
    if not str(slide_path).lower().endswith(SLIDE_SUFFIXES):
        raise DataError(
            slide_path,
            f"is not a slide the model takes; this model was trained on {geometry.get('from')}, so it predicts "
            f"on whole-slide images ({', '.join(SLIDE_SUFFIXES[:5])}...)",
        )
    size = int(min((card.get("preprocessing") or {})["size"]))
    return {"target_mpp": float(geometry["mpp"]), "tile_size": size, "img_size": size, "min_tissue": 0.5}


def predict_slide(
    model,
    slide_path,
    out_path,
    mpp: float | None = None,
    batch_size: int = 64,
    min_tissue: float | None = None,
    preprocessing: dict | None = None,
    transform: TileTransform | None = None,
) -> Path:
    """Predict one slide; write ``out_path`` (PNG heatmap; a folder if it has no ``.png`` suffix),
    ``<stem>.tiles.csv`` and ``<stem>.prediction.json``. Returns the PNG path. ``preprocessing`` and
    ``transform``: the tiling record and tile transform (default: the card's; :func:`slide_record` and
    :class:`NormalisedTiles` for a model trained on tiles held in memory)."""
    card = model.card
    task = card.get("task")
    if getattr(model, "head", None) is None or task not in ("mil", "classification"):
        raise CheckpointError(
            f"{getattr(model, 'path', None) or 'this model'}: slide prediction needs a checkpoint fine-tuned with "
            'task="mil" (or a tile classifier); this one has task '
            f"{task!r}. Use domainfm.embed(checkpoint, data) for features"
        )
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        out_path = out_path / f"{Path(slide_path).name}.png"
    stem = out_path.with_suffix("")
    outputs = [out_path, stem.with_suffix(".tiles.csv"), stem.with_suffix(".prediction.json")]
    for out in outputs:  # before reading a tile: never the slide, a writable place
        check_output(out, [slide_path])
    pre = dict(card.get("preprocessing") or {}) if preprocessing is None else preprocessing
    transform = transform or transform_from_preprocessing(pre)
    ds = SlideTileDataset(
        [SlideRecord(str(slide_path), mpp)],
        target_mpp=float(pre.get("target_mpp", 0.5)),
        tile_size=int(pre.get("tile_size", 224)),
        out_size=transform.size,
        min_tissue=float(min_tissue if min_tissue is not None else pre.get("min_tissue", 0.5)),
        coords_dir=None,
        transform=transform,
        mpp=mpp,
        thumbnail_size=int(pre.get("thumbnail_size", 1024)),
        skip_no_tissue=False,
        verbose=False,
    )
    grid = ds.grids[0]
    device = _model_device(model)
    feats, tile_logits = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_stack_images)
    with torch.no_grad():
        for x in loader:
            x = x.to(device)
            if task == "mil":
                feats.append(model.embed(x).float().cpu())
            else:
                tile_logits.append(model.logits(x).float().cpu())
    classes = card.get("classes") or [str(i) for i in range(int(card.get("num_classes") or 2))]
    result: dict = {
        "slide": str(slide_path),
        "task": task,
        "classes": classes,
        "n_tiles": len(grid),
        "mpp": grid.mpp,
        "target_mpp": grid.target_mpp,
    }
    if task == "mil":
        bag = torch.cat(feats)
        head = model.head.cpu().eval()
        with torch.no_grad():
            logits, attn = head(bag)
            inst = head.classifier(head.fc(bag))
        probs = torch.softmax(logits, -1)[0].numpy()
        attn = attn[0].numpy()
        cols = {"attention": attn, "attention_rank": rank_normalize(attn)}
        cols.update({f"tile_logit_{c}": inst[:, k].numpy() for k, c in enumerate(classes)})
        scores, norm = attn, "rank"
        result.update({"probabilities": dict(zip(classes, probs.tolist())), "prediction": classes[int(probs.argmax())]})
    else:
        p = torch.softmax(torch.cat(tile_logits), -1).numpy()
        cols = {f"p_{c}": p[:, k] for k, c in enumerate(classes)}
        scores, norm = p[:, -1], "none"
        result.update({"mean_probabilities": dict(zip(classes, p.mean(0).tolist())), "heatmap_class": classes[-1]})
    # each file under a temporary name, renamed when complete; the heatmap (the returned file) last
    with atomic_output(outputs[1], [slide_path]) as tmp:
        write_tile_scores(tmp, grid.coords, grid.size0, cols)
    with atomic_output(outputs[2], [slide_path]) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    with atomic_output(out_path, [slide_path]) as tmp:
        write_heatmap(slide_path, grid.coords, grid.size0, np.asarray(scores), tmp, normalize=norm)
    return out_path
