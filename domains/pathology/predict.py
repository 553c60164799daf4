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
from pathlib import Path

import numpy as np
import torch

from domainfm.errors import CheckpointError
from domainfm.io_safety import atomic_output, check_output

from .datasets import SlideRecord, SlideTileDataset
from .embed import _model_device, _stack_images, transform_from_preprocessing
from .heatmap import rank_normalize, write_heatmap, write_tile_scores


def predict_slide(
    model, slide_path, out_path, mpp: float | None = None, batch_size: int = 64, min_tissue: float | None = None
) -> Path:
    """Predict one slide; write ``out_path`` (PNG heatmap; a folder if it has no ``.png`` suffix),
    ``<stem>.tiles.csv`` and ``<stem>.prediction.json``. Returns the PNG path."""
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
    pre = dict(card.get("preprocessing") or {})
    transform = transform_from_preprocessing(pre)
    ds = SlideTileDataset(
        [SlideRecord(str(slide_path), mpp)],
        float(pre.get("target_mpp", 0.5)),
        int(pre.get("tile_size", 224)),
        transform.size,
        float(min_tissue if min_tissue is not None else pre.get("min_tissue", 0.5)),
        None,
        transform,
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
