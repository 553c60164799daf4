"""Which items a split holds, and what a task keeps of them.

A split comes from the data's own division when it has one (``data.val_path``, a Decathlon datalist's
``validation`` section, the ``train``/``val``/``test`` arrays of a MedMNIST ``.npz``), else from a held-out
share of the training items (``data.val_fraction``, seeded). Segmentation keeps the masks, classification the
labels, pretraining and embedding neither; the label ids of segmentation masks are read from the masks
themselves and checked against a Decathlon ``labels`` map.

Example:
    >>> task_items([{"image": "a.nii.gz", "mask": "m.nii.gz", "label": 1}], None, "pretrain", "segmentation", ".")
    ([{'image': 'a.nii.gz'}], None)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from domainfm.errors import ConfigError, DataError

from .io import NpzStore, read_image
from .options import MedicalOptions
from .sources import discover, holdout, is_decathlon

#: the section of a MedMNIST ``.npz`` each split reads
_NPZ_SPLIT = {"pretrain": "train", "train": "train", "val": "val", "test": "test", "embed": "test"}


def split_items(cfg, opts: MedicalOptions, split: str) -> tuple[list[dict], list[str] | None]:
    """Item dicts and class names of ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``) of
    ``cfg.data.path`` read with ``opts``."""
    if cfg.data.path is None:
        raise ConfigError("data.path is required for the medical domain (a folder, a manifest, a .npz or a scan)")
    path = Path(cfg.data.path)
    if split in ("val", "test") and cfg.data.val_path:
        return discover(cfg.data.val_path, opts, "validation" if split == "val" else "test")
    if path.suffix.lower() in (".npz", ".npy"):
        return _array_items(path, opts, split, cfg)
    if path.is_file() and is_decathlon(path):
        return _decathlon_items(path, opts, split, cfg)
    items, classes = discover(path, opts, "training")
    if split in ("train", "val", "test"):
        items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
    return items, classes


def _array_items(path: Path, opts: MedicalOptions, split: str, cfg) -> tuple[list[dict], list[str] | None]:
    """Items of an ``.npz``/``.npy``: its own split, or a held-out share of ``train`` when it has none."""
    wanted = _NPZ_SPLIT.get(split, "train")
    if wanted in NpzStore(path).splits():
        return discover(path, opts, wanted)
    items, classes = discover(path, opts, "train")
    if split in ("train", "val", "test"):
        items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
    return items, classes


def _decathlon_items(path: Path, opts: MedicalOptions, split: str, cfg) -> tuple[list[dict], list[str] | None]:
    """Items of a Decathlon ``dataset.json``: its ``validation`` section (else a held-out share of ``training``),
    its ``test`` scans added to pretraining, class names from its ``labels`` map."""
    data = json.loads(path.read_text())
    if split in ("val", "test") and data.get("validation"):
        return discover(path, opts, "validation")
    items, classes = discover(path, opts, "training")
    if split == "pretrain" and data.get("test"):
        items = items + discover(path, opts, "test")[0]
    if not data.get("validation"):
        items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
    labels = data.get("labels")
    if isinstance(labels, dict) and labels:
        classes = [labels[k] for k in sorted(labels, key=lambda k: int(k))]
    return items, classes


def task_items(items: list[dict], classes, split: str, task: str, where) -> tuple[list[dict], list[str] | None]:
    """The items with what ``task`` needs (masks or labels; neither to pretrain or embed), checked; ``where``
    names the data in the error when they lack it."""
    if split in ("pretrain", "embed"):
        return [{k: v for k, v in it.items() if k not in ("mask", "label")} for it in items], None
    if task == "segmentation":
        if not all("mask" in it for it in items):
            raise DataError(
                where,
                "segmentation needs masks: a 'mask' column in the manifest, "
                "imagesTr/labelsTr (or images/masks) folders, or Decathlon 'label' entries",
            )
        return [{k: v for k, v in it.items() if k != "label"} for it in items], classes
    if not all("label" in it for it in items):
        raise DataError(
            where,
            f"{task} needs labels: class subfolders, a 'label' column in the manifest, "
            "or a MedMNIST .npz with *_labels",
        )
    return [{k: v for k, v in it.items() if k != "mask"} for it in items], classes


def label_names(cfg) -> dict[str, str]:
    """Segmentation label names by mask id, from a Decathlon ``labels`` map (``{}`` for other data)."""
    path = Path(cfg.data.path)
    if path.is_file() and path.suffix.lower() == ".json" and is_decathlon(path):
        labels = json.loads(path.read_text()).get("labels")
        if isinstance(labels, dict):
            return {str(k): str(v) for k, v in labels.items()}
    return {}


def mask_values(
    items: list[dict], spatial_dims: int, names_by_id: dict | None = None, named_in: str = "dataset.json"
) -> list[int]:
    """The label ids present in the masks of ``items`` (each mask read whole, once). With ``names_by_id`` (a
    Decathlon ``labels`` map, from ``named_in``) a mask holding an id it does not name is refused, naming the
    mask file and the ids.

    Example:
        >>> mask_values([], 3)
        []
    """
    found: set[int] = set()
    for it in items:
        if "mask" in it:
            arr = read_image(it["mask"], spatial_dims=spatial_dims).as_tensor()
            ids = {int(v) for v in torch.unique(arr.round().long()).tolist()}
            _check_named(ids, names_by_id, it["mask"], named_in)
            found.update(ids)
    return sorted(found)


def _check_named(ids: set[int], names_by_id: dict | None, mask: str, named_in: str) -> None:
    """Every id >= 0 of a mask is named by a labels map ``{"0": "background", ...}`` (when one is given).

    Example:
        >>> _check_named({0, 5}, {"0": "background", "1": "tumour"}, "m.nii.gz", "dataset.json")
        Traceback (most recent call last):
        ...
        domainfm.errors.DataError: m.nii.gz: holds label ids [5] that the labels of dataset.json do not name ...
    """
    keys = [str(k) for k in (names_by_id or {})]
    if not keys or not all(k.lstrip("-").isdigit() for k in keys):  # no map, or one by name (nnU-Net v2)
        return
    unnamed = sorted(v for v in ids if v >= 0 and str(v) not in keys)
    if unnamed:
        named = ", ".join(f"{k}: {names_by_id[k]}" for k in sorted(keys, key=int))
        raise DataError(
            mask,
            f"holds label ids {unnamed} that the labels of {named_in} do not name ({named}); "
            "fix the mask or name every id in the labels map",
        )
