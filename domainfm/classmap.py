"""Labels are what the data says: a class map between the label ids found in the data and the
contiguous indices a head is trained on, and the checks of ``--num-classes`` / ``--classes``.

Sparse ids such as ``{0, 1, 2, 3, 4, 8}`` become indices ``0..5`` for training; predictions are
mapped back to ``{0, 1, 2, 3, 4, 8}`` when written, so a prediction never holds an id the training
labels did not. Negative mask values (unlabelled, ``ignore_index``) stay negative. The map is
recorded in the checkpoint card (``card["class_map"]``).

Example:
    >>> import torch
    >>> cm = ClassMap([0, 1, 2, 3, 4, 8])
    >>> cm.num_classes, cm.to_index(torch.tensor([0, 8, -1, 4])).tolist()
    (6, [0, 5, -1, 4])
    >>> cm.to_ids(torch.tensor([5, 0])).tolist()
    [8, 0]
    >>> ClassMap.from_dict(cm.to_dict()).ids
    [0, 1, 2, 3, 4, 8]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from domainfm.contract import dataset_attribute, dataset_method
from domainfm.errors import ConfigError, DataError

log = logging.getLogger("domainfm")


@dataclass
class ClassMap:
    """Original label ids (sorted) <-> contiguous indices, with optional names (one per id)."""

    ids: list[int]
    names: list[str] | None = None
    _lut: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.ids = [int(i) for i in self.ids]
        if sorted(set(self.ids)) != self.ids:
            raise ValueError(f"class ids must be sorted and unique, got {self.ids}")
        if self.names is not None and len(self.names) != len(self.ids):
            raise ValueError(f"{len(self.names)} names for {len(self.ids)} class ids")

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    @property
    def is_identity(self) -> bool:
        """True when the ids are already ``0..n-1`` (nothing to map)."""
        return self.ids == list(range(len(self.ids)))

    def _index_lut(self) -> torch.Tensor:
        if self._lut is None:
            lut = torch.full((max(self.ids) + 1,), -1, dtype=torch.long)
            lut[torch.tensor(self.ids)] = torch.arange(len(self.ids))
            self._lut = lut
        return self._lut

    def to_index(self, values: torch.Tensor | np.ndarray, where: Any = None, strict: bool = True) -> torch.Tensor:
        """Original ids -> training indices; negative values (ignored pixels) stay -1. An id outside
        the map is a :class:`DataError` naming ``where`` (``strict``) or -1, ignored (not ``strict``)."""
        t = torch.as_tensor(values).long()
        if self.is_identity:
            bad = t >= self.num_classes
        else:
            lut = self._index_lut()
            inside = (t >= 0) & (t < len(lut))
            mapped = torch.where(inside, lut[t.clamp(0, len(lut) - 1)], torch.full_like(t, -1))
            bad = (t >= 0) & (mapped < 0)
            t = torch.where(t < 0, torch.full_like(t, -1), mapped)
        if not strict:
            return torch.where(bad, torch.full_like(t, -1), t)
        if bool(bad.any()):
            raise DataError(
                where,
                f"label value {int(torch.as_tensor(values)[bad].flatten()[0])} is not one of the "
                f"training classes {self.ids}",
            )
        return t

    def to_ids(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Training indices -> original ids (numpy in, numpy out)."""
        if isinstance(indices, np.ndarray):
            return np.asarray(self.ids, dtype=np.int64)[indices.astype(np.int64)]
        return torch.tensor(self.ids, dtype=torch.long)[torch.as_tensor(indices).long()]

    def to_dict(self) -> dict:
        return {"ids": list(self.ids), "names": list(self.names) if self.names else None}

    @classmethod
    def from_dict(cls, data: dict | None) -> ClassMap | None:
        if not data or not data.get("ids"):
            return None
        return cls(list(data["ids"]), data.get("names"))

    @classmethod
    def from_card(cls, card: dict) -> ClassMap | None:
        """The map recorded in a checkpoint card (``None`` for cards written before class maps)."""
        return cls.from_dict((card or {}).get("class_map"))


def output_dtype(ids: Sequence[int], nodata: int | None = None) -> np.dtype:
    """The smallest unsigned integer type holding every id (and ``nodata``).

    Example:
        >>> output_dtype([0, 1, 300]), output_dtype([0, 8], nodata=255)
        (dtype('uint16'), dtype('uint8'))
    """
    top = max(list(ids) + ([nodata] if nodata is not None else []))
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)


def _values_of(dataset, task: str) -> list[int]:
    """Label ids present in a dataset: ``dataset.label_values()`` when it has one (domains scan
    their label files whole), else a pass over its samples."""
    own = dataset_method(dataset, "label_values")
    ignore = dataset_attribute(dataset, "ignore_index")
    if own is not None:
        return sorted({int(v) for v in own()} - {ignore})
    found: set[int] = set()
    for i in range(len(dataset)):
        s = dataset[i]
        if task == "segmentation":
            found.update(int(v) for v in torch.unique(torch.as_tensor(s["mask"])).tolist())
        else:
            found.add(int(s["label"]))
    return sorted(found - {ignore})


def resolve_classes(
    dataset, task: str, num_classes: int | None = None, names: Sequence[str] | None = None, where: Any = None
) -> tuple[int, list[str] | None, ClassMap | None]:
    """Classes of a labelled dataset: ``(num_classes, class names, class map)``.

    Classification labels are already indices into ``dataset.classes``; segmentation masks hold ids
    (negative = unlabelled), mapped to contiguous indices by the returned :class:`ClassMap`.
    ``num_classes`` (``finetune.num_classes``) and ``names`` (``data.options.classes``, or names the data
    declares) are checked against the labels; a disagreement is a :class:`ConfigError` that shows both.
    ``where`` names the data in messages (data held in memory has no path: "the training data").

    Example:
        >>> import torch
        >>> ds = [{"mask": torch.tensor([[0, 1], [8, -1]])}, {"mask": torch.tensor([[4, 0], [2, 3]])}]
        >>> n, names, cm = resolve_classes(ds, "segmentation")
        >>> n, cm.ids, names
        (6, [0, 1, 2, 3, 4, 8], ['background', 'label_1', 'label_2', 'label_3', 'label_4', 'label_8'])
    """
    where = where if where is not None else "the training data"
    if task == "multilabel":
        return _multilabel_classes(dataset, num_classes, where)
    values = _values_of(dataset, task)
    if task != "segmentation":
        return _label_classes(dataset, values, num_classes, names, where)
    found = [v for v in values if v >= 0]
    if not found:
        raise DataError(where, "no mask values found (all unlabelled)")
    return _mask_classes(dataset, found, num_classes, names, where)


#: classification labels with more than this many absent ids below their maximum are mapped like mask ids
SPARSE_LABEL_GAP = 16


def _multilabel_classes(dataset, num_classes: int | None, where) -> tuple[int, list[str] | None, None]:
    n = int(torch.as_tensor(dataset[0]["label"]).numel())
    if num_classes and num_classes != n:
        raise ConfigError(f"finetune.num_classes={num_classes} but the multi-label vectors of {where} have {n} entries")
    return n, list(dataset_attribute(dataset, "classes") or []) or None, None


def _label_classes(
    dataset, found: list[int], num_classes, names, where
) -> tuple[int, list[str] | None, ClassMap | None]:
    """Classification: labels index the declared class names, or are ids ``0..max``; sparse ids (more than
    :data:`SPARSE_LABEL_GAP` absent below the largest) get a :class:`ClassMap`, never a head of absent classes."""
    negative = [v for v in found if v < 0]
    if negative:
        raise DataError(where, f"negative class labels {negative[:5]}: classification labels are class ids >= 0")
    if not found:
        raise DataError(where, "no labels found (all unlabelled)")
    declared = (list(names) if names else None) or list(dataset_attribute(dataset, "classes") or []) or None
    if declared is None and max(found) + 1 - len(found) > SPARSE_LABEL_GAP:
        return _sparse_label_classes(found, num_classes, where)
    ids = list(range(len(declared))) if declared else list(range(max(found) + 1))
    if max(found) >= len(ids):
        raise ConfigError(f"{where}: labels {found} do not fit the classes {declared}")
    if num_classes and num_classes != len(ids):
        raise ConfigError(
            f"finetune.num_classes={num_classes} disagrees with the labels of {where}: "
            f"{len(ids)} classes {declared or ids}; drop finetune.num_classes or fix the labels"
        )
    missing = [declared[i] if declared else i for i in ids if i not in found]
    if missing:
        log.warning("%s: classes %s have no training sample", where, missing)
    return len(ids), declared, None


def _sparse_label_classes(found: list[int], num_classes, where) -> tuple[int, list[str], ClassMap]:
    log.warning("%s: label ids %s are sparse: mapped to %d classes", where, found[:8], len(found))
    if num_classes and num_classes != len(found):
        raise ConfigError(f"finetune.num_classes={num_classes} disagrees with the {len(found)} label ids of {where}")
    return len(found), [str(v) for v in found], ClassMap(found, [str(v) for v in found])


def _mask_classes(dataset, found: list[int], num_classes, names, where) -> tuple[int, list[str], ClassMap]:
    """Segmentation: the ids found in the masks, or ``0..n-1`` when ``finetune.num_classes`` covers them all."""
    declared = list(names) if names else None
    by_id = dataset_attribute(dataset, "class_names_by_id") or {}
    if num_classes:
        if max(found) >= num_classes:
            raise ConfigError(
                f"finetune.num_classes={num_classes} disagrees with the masks of {where}: they hold label ids "
                f"{found} (expected ids in 0..{num_classes - 1}); drop finetune.num_classes to use "
                f"{len(found)} classes mapped from these ids"
            )
        ids = list(range(num_classes))
    else:
        ids = sorted(set(found) | {0})  # background is always a class
    if declared is not None and not by_id:  # names by id (e.g. a Decathlon ``labels`` map) name the ids directly
        if len(declared) != len(ids):
            raise ConfigError(
                f"data.options.classes names {len(declared)} classes {declared} but the masks of {where} hold "
                f"{len(ids)} label ids {ids}; give one name per id"
            )
        out_names = declared
    else:
        out_names = [by_id.get(i) or by_id.get(str(i)) or ("background" if i == 0 else f"label_{i}") for i in ids]
    return len(ids), out_names, ClassMap(ids, out_names)


class MappedLabels(torch.utils.data.Dataset):
    """A view of a dataset whose masks (or labels) are mapped to training indices by a :class:`ClassMap`;
    everything else (``set_epoch``, ``epoch_batches``, attributes) is the wrapped dataset's.

    Example:
        >>> import torch
        >>> ds = MappedLabels([{"mask": torch.tensor([0, 8])}], ClassMap([0, 8]), "segmentation")
        >>> ds[0]["mask"].tolist()
        [0, 1]
    """

    def __init__(self, dataset, class_map: ClassMap, task: str, strict: bool = True):
        self.dataset, self.class_map, self.task, self.strict = dataset, class_map, task, strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.dataset[i])
        key = "mask" if self.task == "segmentation" else "label"
        if key in s:
            where = (s.get("meta") or {}).get("path") if isinstance(s.get("meta"), dict) else None
            s[key] = self.class_map.to_index(s[key], where, self.strict)
        return s

    def __getattr__(self, name: str):
        if name in ("dataset", "class_map", "task", "strict"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def map_labels(dataset, class_map: ClassMap | None, task: str, strict: bool = True):
    """``dataset`` with labels mapped to training indices (unchanged when the map is the identity);
    with ``strict=False`` (validation data) ids unknown to the map are ignored instead of refused.

    Example:
        >>> map_labels([1, 2], None, "segmentation")
        [1, 2]
    """
    if dataset is None or class_map is None or class_map.is_identity:
        return dataset
    return MappedLabels(dataset, class_map, task, strict)


def stratified_indices(labels: Iterable[Any], n: int, seed: int = 0) -> list[int]:
    """``n`` indices drawn at random, stratified by label (each class keeps its share, at least one
    per class while ``n`` allows), in increasing order: the evaluation cap (``max_train``/``max_test``).

    Example:
        >>> labels = [0] * 90 + [1] * 10
        >>> idx = stratified_indices(labels, 20, seed=0)
        >>> len(idx), sum(labels[i] for i in idx)
        (20, 2)
    """
    labels = [tuple(np.asarray(v).reshape(-1).tolist()) if np.ndim(v) else v for v in labels]
    total = len(labels)
    if n >= total:
        return list(range(total))
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    keys = sorted(groups, key=lambda k: str(k))
    share = {k: len(groups[k]) * n / total for k in keys}
    take = {k: min(len(groups[k]), max(1 if n >= len(keys) else 0, int(np.floor(share[k])))) for k in keys}
    # distribute what is left by the largest remainders
    left = n - sum(take.values())
    order = sorted(keys, key=lambda k: -(share[k] - np.floor(share[k])))
    while left > 0:
        progressed = False
        for k in order:
            if left and take[k] < len(groups[k]):
                take[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    while left < 0:  # the one-per-class floor overshot: trim the largest groups
        k = max(keys, key=lambda q: take[q])
        take[k] -= 1
        left += 1
    chosen: list[int] = []
    for k in keys:
        chosen += rng.choice(groups[k], size=take[k], replace=False).tolist()
    return sorted(chosen)


def cheap_labels(dataset) -> list | None:
    """Labels of a dataset read without loading its images (``items`` dicts or objects with a
    ``label``, or ``files`` of ``(path, label)``), or ``None`` when it does not say."""
    items = dataset_attribute(dataset, "items")
    if isinstance(items, (list, tuple)) and len(items) == len(dataset):
        labels = [it.get("label") if isinstance(it, dict) else getattr(it, "label", None) for it in items]
        if all(lab is not None for lab in labels):
            return [tuple(lab) if isinstance(lab, list) else lab for lab in labels]
    files = dataset_attribute(dataset, "files")
    if isinstance(files, (list, tuple)) and len(files) == len(dataset) and files and isinstance(files[0], tuple):
        return [f[1] for f in files]
    return None


def cap_indices(dataset, max_items: int | None, seed: int = 0) -> list[int]:
    """The items an evaluation cap keeps: all of them, or ``max_items`` drawn at random, stratified
    by label when the dataset's labels are known cheaply (never simply the first N: sorted data would
    give a single class).

    Example:
        >>> class D(list):
        ...     items = [{"label": 0}] * 50 + [{"label": 1}] * 50
        >>> idx = cap_indices(D(range(100)), 10)
        >>> len(idx), sum(i >= 50 for i in idx)
        (10, 5)
    """
    n = len(dataset)
    if max_items is None or max_items >= n:
        return list(range(n))
    labels = cheap_labels(dataset)
    if labels is not None:
        return stratified_indices(labels, int(max_items), seed)
    return sorted(np.random.default_rng(seed).choice(n, size=int(max_items), replace=False).tolist())
