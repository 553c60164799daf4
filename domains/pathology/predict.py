"""Whole-slide prediction with a fine-tuned checkpoint, written as heatmap PNG (or a pyramidal TIFF at tile
resolution) + tile CSV + JSON.

- A MIL checkpoint (``task: mil``): slide class probabilities and the ABMIL attention heatmap.
- A tile classifier (``task: classification``): per-tile class probabilities and a heatmap of the
  probability of the positive class (the last class).

Slides of any size stream: tissue tiles are read in batches through OpenSlide (or raw TIFF tiles) from the
pyramid level of the tile size, and each batch leaves one small vector per tile (the tile's class logits, or
for MIL its feature vector, which attention pooling needs for the whole slide: ``tiles x embed_dim`` float32,
about 150 MB for 50 000 tissue tiles of 768 features), never the pixels. A ``.tif``/``.tiff`` output is the
heatmap of every score at one pixel per tile, written strip by strip (:func:`.heatmap.write_heatmap_tiff`).
With ``resume=True`` the scoring pass keeps its vectors in ``.partial-<name>.scores.npy`` and a JSON
sidecar of the tiles done, so an interrupted predict continues from its last batch.

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

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError
from domainfm.io_safety import atomic_output, check_output, os_error_text

from .datasets import SlideRecord, SlideTileDataset, TileTransform
from .embed import _model_device, transform_from_preprocessing
from .heatmap import rank_normalize, write_heatmap, write_heatmap_tiff, write_tile_scores
from .slide import SLIDE_SUFFIXES
from .tiling import TileGrid

log = logging.getLogger("domainfm.pathology")

#: Heatmap suffixes: a PNG over the slide's thumbnail, or a tiled pyramidal TIFF at tile resolution.
HEATMAP_SUFFIXES = (".png", ".tif", ".tiff")


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
    progress: bool | None = None,
    resume: bool = False,
) -> Path:
    """Predict one slide; write ``out_path`` (the heatmap: a PNG over the slide's thumbnail, or with a
    ``.tif``/``.tiff`` suffix every tile score as a tiled pyramidal TIFF at tile resolution, see
    :func:`.heatmap.write_heatmap_tiff`; a folder if it has neither suffix or is named as the slide file:
    ``<folder>/<slide>.png``),
    ``<stem>.tiles.csv`` and ``<stem>.prediction.json``. Returns the heatmap path. ``preprocessing`` and
    ``transform``: the tiling record and tile transform (default: the card's; :func:`slide_record` and
    :class:`NormalisedTiles` for a model trained on tiles held in memory).

    Tiles stream in batches of ``batch_size`` (memory holds a batch of pixels and one vector per tile); progress
    (tiles done / total, ETA) goes to stderr, by default once a slide has taken 5 s. ``resume=True``: an
    interrupted predict keeps the vectors scored so far (``.partial-<name>.scores.npy`` and its ``.json``
    sidecar next to ``out_path``) and the next ``resume=True`` predict of the same slide, model and settings
    continues from there; without it an interrupted predict leaves nothing."""
    card = model.card
    task = card.get("task")
    if getattr(model, "head", None) is None or task not in ("mil", "classification"):
        raise CheckpointError(
            f"{getattr(model, 'path', None) or 'this model'}: slide prediction needs a checkpoint fine-tuned with "
            'task="mil" (or a tile classifier); this one has task '
            f"{task!r}. Use domainfm.embed(checkpoint, data) for features"
        )
    out_path = Path(out_path)
    if out_path.suffix.lower() not in HEATMAP_SUFFIXES or out_path.name == Path(slide_path).name:
        out_path = out_path / f"{Path(slide_path).name}.png"  # a folder (named like the slide: as domainfm.predict's)
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
    scores = _TileScores(out_path, grid, model, task, transform.size, resume)
    try:
        vectors = scores.run(ds, batch_size, progress)
        result, cols, heat, norm = _summaries(model, task, vectors, grid, slide_path)
        _write_outputs(outputs, slide_path, grid, result, cols, heat, norm)
        scores.close(done=True)
    except OSError as exc:  # disk full, permissions: nothing carries the output's name
        scores.close(done=False)
        raise DataError(out_path, f"cannot write: {os_error_text(exc)}; the output was not written") from None
    except BaseException:
        scores.close(done=False)
        raise
    return out_path


def _summaries(model, task: str, vectors: np.ndarray, grid: TileGrid, slide_path) -> tuple:
    """``(result JSON, CSV columns, heatmap scores, their normalisation)`` from the per-tile vectors (MIL: the
    features pooled by the head; a tile classifier: its logits)."""
    card = model.card
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
        bag = torch.from_numpy(np.ascontiguousarray(vectors))
        head = model.head.cpu().eval()
        with torch.no_grad():
            logits, attn = head(bag)
            inst = head.classifier(head.fc(bag))
        probs = torch.softmax(logits, -1)[0].numpy()
        attn = attn[0].numpy()
        cols = {"attention": attn, "attention_rank": rank_normalize(attn)}
        cols.update({f"tile_logit_{c}": inst[:, k].numpy() for k, c in enumerate(classes)})
        result.update({"probabilities": dict(zip(classes, probs.tolist())), "prediction": classes[int(probs.argmax())]})
        return result, cols, attn, "rank"
    p = torch.softmax(torch.from_numpy(np.ascontiguousarray(vectors)), -1).numpy()
    cols = {f"p_{c}": p[:, k] for k, c in enumerate(classes)}
    result.update({"mean_probabilities": dict(zip(classes, p.mean(0).tolist())), "heatmap_class": classes[-1]})
    return result, cols, p[:, -1], "none"


def _write_outputs(outputs: list[Path], slide_path, grid: TileGrid, result: dict, cols: dict, heat, norm: str) -> None:
    """Each file under a temporary name, renamed when complete; the heatmap (the returned file) last."""
    out_path = outputs[0]
    with atomic_output(outputs[1], [slide_path]) as tmp:
        write_tile_scores(tmp, grid.coords, grid.size0, cols)
    with atomic_output(outputs[2], [slide_path]) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    if out_path.suffix.lower() == ".png":
        with atomic_output(out_path, [slide_path]) as tmp:
            write_heatmap(slide_path, grid.coords, grid.size0, np.asarray(heat), tmp, normalize=norm)
        return
    meta = {"slide": str(slide_path), "task": result["task"], "classes": result["classes"]}
    meta.update({"target_mpp": grid.target_mpp, "tile_size": grid.tile_size, "n_tiles": len(grid)})
    with atomic_output(out_path, [slide_path]) as tmp:
        write_heatmap_tiff(tmp, grid.coords, grid.size0, cols, grid.slide_size, grid.mpp, meta)


def _fingerprint(model) -> str:
    """A short hash of a model's first and last parameters (a resumed predict must use the same weights)."""
    params = list(model.parameters())
    digest = hashlib.sha1()
    for p in params[:1] + params[-1:]:
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class _TileScores:
    """The scoring pass: one vector per tissue tile, batch by batch, into an array (with ``resume``: a ``.npy``
    memory map next to the output and a JSON sidecar of the tiles done, kept when interrupted)."""

    def __init__(self, out_path: Path, grid: TileGrid, model, task: str, size: int, resume: bool):
        self.model, self.task, self.grid, self.resume = model, task, grid, resume
        self.path = out_path.with_name(f".partial-{out_path.name}.scores.npy")
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.size = size
        self.values: np.ndarray | None = None
        self.done = 0  # tiles [0, done) hold their vector

    def _key(self) -> dict:
        src = Path(self.grid.path)
        stat = src.stat()
        coords = hashlib.sha1(np.ascontiguousarray(self.grid.coords, np.int64).tobytes()).hexdigest()
        return {"slide": str(src.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "tiles": len(self.grid), "coords": coords, "level": self.grid.level, "read_size": self.grid.read_size,
                "size": self.size, "task": self.task, "model": _fingerprint(self.model)}  # fmt: skip

    def _reopen(self) -> None:
        """Continue a partial pass whose sidecar matches this predict; anything else starts afresh."""
        if not (self.sidecar.is_file() and self.path.is_file()):
            return
        try:
            record = json.loads(self.sidecar.read_text())
            values = np.load(self.path, mmap_mode="r+")
        except (OSError, ValueError):
            record, values = {}, None
        if record.get("key") != self._key() or values is None or len(values) != len(self.grid):
            log.warning("%s: the partial scores are of another slide, model or settings; starting afresh", self.path)
            return
        self.values, self.done = values, int(record["tiles_done"])
        log.warning("%s: resuming at tile %d of %d", self.grid.path, self.done, len(self.grid))

    def _open(self, dim: int, dtype) -> None:
        n = len(self.grid)
        if self.resume:
            self.values = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=(n, dim))
        else:
            self.values = np.empty((n, dim), dtype)

    def _vectors(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = self.model.embed(x) if self.task == "mil" else self.model.logits(x)
        return out.float().cpu().numpy()

    def run(self, ds: SlideTileDataset, batch_size: int, progress: bool | None) -> np.ndarray:
        """Every tile from the first one not yet scored; returns the ``tiles x dim`` vectors."""
        if self.resume:
            self._reopen()
        n = len(ds)
        device = _model_device(self.model)
        meter = progress_bar(total=n, initial=self.done, desc=f"predict {Path(self.grid.path).name}", unit="tile",
                             disable=progress is False, delay=0 if progress else 5, leave=True)  # fmt: skip
        try:
            for i in range(self.done, n, batch_size):
                batch = ds.__getitems__(list(range(i, min(i + batch_size, n))))
                v = self._vectors(torch.stack([s["image"] for s in batch]).to(device))
                if self.values is None:
                    self._open(v.shape[1], v.dtype)
                self.values[i : i + len(v)] = v
                self.done = i + len(v)
                meter.update(len(v))
        finally:
            finish_progress(meter, file=sys.stderr)
        return self.values

    def close(self, done: bool) -> None:
        """After success or failure: nothing is left, except the partial scores of an interrupted resumable pass."""
        values, self.values = self.values, None
        keep = self.resume and not done and values is not None and self.done > 0
        if isinstance(values, np.memmap):
            values.flush()
        del values
        if keep:
            part = self.sidecar.with_name(self.sidecar.name + ".tmp")
            part.write_text(json.dumps({"key": self._key(), "tiles_done": self.done}))
            os.replace(part, self.sidecar)
            log.warning("%s: interrupted at tile %d of %d; predict again with resume=True to continue",
                        self.grid.path, self.done, len(self.grid))  # fmt: skip
            return
        if self.resume:
            for path in (self.path, self.sidecar):
                if path.exists():
                    path.unlink()
