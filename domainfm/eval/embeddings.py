"""Embed a labelled dataset once, cache the result as ``.npz``, probe it many times.

The cache key is a hash of the checkpoint's identity (weights file path, size and mtime, or the
encoder config + init seed for a random baseline), the data identity (path, size, mtime), the split
and the dataset length, so a rerun of ``evaluate`` on the same checkpoint and data reuses the file
and any change re-embeds.

Example:
    >>> import torch, numpy as np
    >>> from domainfm.data.sample import make_sample
    >>> ds = [make_sample(torch.ones(1, 8, 8) * i, label=i % 2) for i in range(4)]
    >>> enc = lambda x, wavelengths=None: x.flatten(1)[:, :3]
    >>> x, y = embed_dataset(enc, ds, batch_size=3)
    >>> x.shape, y.tolist()
    ((4, 3), [0, 1, 0, 1])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from domainfm.classmap import cap_indices
from domainfm.data.sample import collate_samples
from domainfm.errors import DataError
from domainfm.io_safety import write_arrays_atomic


def pooled_features(model, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
    """``B x E``: ``forward_features(...)["pooled"]`` of a ViTEncoder, else the mean of the tokens of
    ``model(x)`` (for encoders without ``forward_features``)."""
    if hasattr(model, "forward_features"):
        try:
            feats = model.forward_features(x, wavelengths=wavelengths)
        except TypeError:
            feats = model.forward_features(x)
        if isinstance(feats, dict):
            return feats["pooled"]
        return feats.mean(1) if feats.ndim == 3 else feats
    try:
        out = model(x, wavelengths=wavelengths)
    except TypeError:
        out = model(x)
    return out.mean(1) if out.ndim == 3 else out


def embed_function(model: Any) -> Callable:
    """The ``fn(x, wavelengths=None) -> B x E`` of a FoundationModel, encoder or plain callable.

    Order: ``model.embed``; ``model.forward_features(x)["pooled"]``; mean of ``model(x)`` tokens.
    """
    if hasattr(model, "embed") and callable(model.embed):
        return model.embed
    return lambda x, wavelengths=None: pooled_features(model, x, wavelengths)


def _device_of(model: Any) -> torch.device:
    mod = model if isinstance(model, torch.nn.Module) else getattr(model, "encoder", None)
    if isinstance(mod, torch.nn.Module):
        p = next(mod.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _label_of(sample: dict, source) -> int:
    if "label" not in sample:
        raise DataError(
            source,
            "samples have no 'label': evaluate's protocols need class labels "
            "(for segmentation masks use domainfm.finetune, which reports Dice/mIoU)",
        )
    lbl = torch.as_tensor(sample["label"])
    if lbl.numel() != 1:
        raise DataError(
            source,
            f"label of shape {tuple(lbl.shape)}: the probes take one class index per item "
            "(multi-label targets are not supported by evaluate)",
        )
    return int(lbl.reshape(()).item())


@torch.no_grad()
def embed_dataset(
    model: Any,
    dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    source: str | None = None,
    progress: bool = False,
    max_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``N x E`` (float32) and labels ``N`` (int64) of a labelled dataset, no grad.

    ``model`` is a loaded ``FoundationModel``, a ``ViTEncoder`` or any ``fn(x, wavelengths=None)``.
    Batches are made with :func:`domainfm.data.sample.collate_samples` and fed to the model's device.
    A model whose card does not fit the data raises the model's own one-line error.
    """
    fn = embed_function(model)
    device = _device_of(model)
    mods = [m for m in (model, getattr(model, "encoder", None)) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    keep = cap_indices(dataset, max_items)  # a cap is a stratified random sample, not the first N
    n = len(keep)
    if n == 0:
        raise DataError(source, "the dataset is empty: nothing to embed")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, keep) if n < len(dataset) else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_keep_labels,
    )
    xs, ys = [], []
    it = loader
    if progress:
        it = tqdm(loader, desc="embed", leave=False)
    try:
        for batch, labels in it:
            x = batch["image"].to(device)
            out = fn(x, wavelengths=batch.get("wavelengths"))
            xs.append(out.detach().float().cpu().numpy())
            ys.extend(labels)
    finally:
        for m, mode in zip(mods, modes):
            m.train(mode)
    labels = [_label_of({} if v is None else {"label": v}, source) for v in ys]
    return np.concatenate(xs).astype(np.float32), np.asarray(labels, dtype=np.int64)


def _collate_keep_labels(items: list[dict]):
    labels = [it.get("label") for it in items]
    slim = [{k: v for k, v in it.items() if k not in ("label", "mask")} for it in items]
    return collate_samples(slim), labels


def fingerprint_path(path: str | Path | None) -> dict:
    """A cheap identity of a file or folder: resolved path, size and mtime (folders: their files).

    Example:
        >>> fingerprint_path(None)
        {'path': None}
    """
    if path is None:
        return {"path": None}
    p = Path(path).resolve()
    if p.is_dir():
        files = []
        for root, _, names in os.walk(p):
            for name in sorted(names):
                f = Path(root) / name
                try:
                    st = f.stat()
                except OSError:
                    continue
                files.append((str(f.relative_to(p)), st.st_size, st.st_mtime_ns))
            if len(files) > 20000:
                break
        digest = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
        return {"path": str(p), "files": digest}
    if p.exists():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime": st.st_mtime_ns}
    return {"path": str(p)}


def cache_key(**parts: Any) -> str:
    """A short stable hash of JSON-able ``parts``.

    Example:
        >>> cache_key(a=1) == cache_key(a=1) != cache_key(a=2)
        True
    """
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EmbeddingCache:
    """``.npz`` files of ``(x, y)`` embeddings under ``folder``, keyed by :func:`cache_key`.

    ``folder=None`` keeps them in memory only. ``hits``/``misses`` count reuse.

    Example:
        >>> import numpy as np, tempfile
        >>> cache = EmbeddingCache(tempfile.mkdtemp())
        >>> make = lambda: (np.ones((2, 3), np.float32), np.array([0, 1]))
        >>> _ = cache.get_or_compute("k1", make); _ = cache.get_or_compute("k1", make)
        >>> cache.hits, cache.misses
        (1, 1)
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = None if folder is None else Path(folder)
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"emb-{key}.npz"

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]], meta: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.path(key)
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    x, y = z["x"], z["y"]
                self.hits += 1
                self._memory[key] = (x, y)
                return x, y
            except (OSError, KeyError, ValueError):
                pass  # a broken cache file is recomputed
        self.misses += 1
        x, y = compute()
        self._memory[key] = (x, y)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_arrays_atomic(path, {"x": x, "y": y, "meta": np.asarray(json.dumps(meta or {}, default=str))})
        return x, y
