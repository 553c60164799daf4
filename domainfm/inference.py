"""Inference mechanisms every domain shares: window grids, blending weights, batching by band set,
and the embedding writer.

Example:
    >>> window_starts(10, 4, 3)
    [0, 3, 6]
    >>> window_starts(3, 4, 2)
    [0]
    >>> w = gaussian_importance((5, 5)); w.shape, float(w.max()), bool(w[2, 2] > w[0, 0])
    ((5, 5), 1.0, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from domainfm.data.sample import collate_samples
from domainfm.errors import DataError
from domainfm.io_safety import write_arrays_atomic


def window_starts(size: int, window: int, step: int, lo: int = 0, hi: int | None = None) -> list[int]:
    """Starts of windows of length ``window`` every ``step`` covering ``[lo, hi)`` (default the whole
    ``size``); the last window is aligned to the end so nothing is left out. A range shorter than a
    window gives one start (the window then reaches past ``hi`` or is padded by the caller)."""
    hi = size if hi is None else min(hi, size)
    lo = max(0, min(lo, size - window))
    if hi - lo <= window:
        return [lo]
    starts = list(range(lo, hi - window + 1, max(1, step)))
    if starts[-1] != hi - window:
        starts.append(hi - window)
    return starts


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Gaussian blending weights over a window (as MONAI's ``compute_importance_map(mode="gaussian")``),
    peak 1, floored so window edges still count."""
    weights = np.ones((), np.float64)
    for w in window:
        r = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        weights = np.multiply.outer(weights, np.exp(-0.5 * (r / (sigma_scale * w)) ** 2))
    weights = weights / weights.max()
    return np.maximum(weights, floor).astype(np.float32)


def batches_by_band_set(dataset, batch_size: int) -> Iterator[dict]:
    """Consecutive batches of samples; a change of band set (wavelengths) starts a new batch."""
    batch, key = [], None
    for i in range(len(dataset)):
        sample = dataset[i]
        k = tuple(sample.get("wavelengths") or ())
        if batch and (k != key or len(batch) == batch_size):
            yield collate_samples(batch)
            batch = []
        batch.append(sample)
        key = k
    if batch:
        yield collate_samples(batch)


@torch.no_grad()
def embed_samples(model, dataset, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Embeddings (``N x E``), labels (when every sample has one) and source paths of a dataset.

    ``model`` is anything with ``embed(x, wavelengths=None)`` and parameters (a FoundationModel).
    """
    feats, labels, paths = [], [], []
    device = next(model.parameters()).device
    for batch in batches_by_band_set(dataset, batch_size):
        x = batch["image"].to(device)
        feats.append(model.embed(x, wavelengths=batch.get("wavelengths")).float().cpu().numpy())
        if "label" in batch:
            labels.append(batch["label"].numpy())
        paths.extend(str(m.get("path")) for m in batch["meta"])
    dim = int(getattr(getattr(model, "encoder", model), "embed_dim", 0))
    out = {"embeddings": np.concatenate(feats) if feats else np.zeros((0, dim), np.float32), "paths": np.asarray(paths)}
    if labels:
        out["labels"] = np.concatenate(labels)
        if len(out["labels"]) != len(out["embeddings"]):
            raise DataError(
                None,
                f"only {len(out['labels'])} of {len(out['embeddings'])} samples have labels; label all samples or none",
            )
    return out


def write_embeddings(model, dataset, out: str | Path, batch_size: int = 32) -> Path:
    """One embedding per sample of ``dataset`` into ``.npz`` (or ``.h5``), written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_arrays_atomic(out, embed_samples(model, dataset, batch_size))
