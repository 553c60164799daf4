"""The medical Dataset: MONAI-cached deterministic preprocessing + per-item seeded random crops.

Example:
    >>> import tempfile
    >>> from domainfm.medical.options import MedicalOptions
    >>> from domainfm.medical.synthetic import write_ct_nifti_folder
    >>> ct = write_ct_nifti_folder(tempfile.mkdtemp(), n=1, shape=(20, 20, 12))[0]
    >>> ds = MedicalDataset([{"image": str(ct), "id": "ct_0"}], MedicalOptions(modality="ct"), crop=[16, 16, 16])
    >>> ds[0]["image"].shape
    torch.Size([1, 16, 16, 16])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from monai import data as mdata

from domainfm.data.rng import EpochAware, item_numpy_rng
from domainfm.data.sample import check_sample
from domainfm.errors import DataError

from .io import read_image
from .modality import infer_modality
from .options import MedicalOptions
from .transforms import apply_random, build_transforms, domain_errors, fixed_crop_size, random_crop


def _hash_item(item: dict) -> bytes:
    return hashlib.md5(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest().encode()


class MedicalDataset(EpochAware, torch.utils.data.Dataset):
    """Samples (``image`` C x (D x) H x W in [0, 1] or z-scores, optional ``label``/``mask``) from items.

    Args (all but ``items`` and ``opts`` keyword-only):
        items: MONAI-style dicts ``{"image": path | [paths], "label"?, "mask"?, "id"}``.
        opts: :class:`MedicalOptions` (normalized); ``modality: auto`` is inferred from ``items``
            (:func:`~domainfm.medical.modality.infer_modality`).
        crop: model input size (spatial).
        stage: ``pretrain``/``train``/``val``/``test`` (see :func:`build_transforms`).
        cache: ``none``, ``memory`` (MONAI ``CacheDataset``) or ``disk`` (MONAI ``PersistentDataset``).
        cache_dir: folder for the disk cache.
        seed: base seed of the per-item crop randomness (with the epoch and the index).
        classes: class names when labels are present.
        num_workers: threads used to fill the memory cache.
    """

    def __init__(
        self,
        items: Sequence[dict],
        opts: MedicalOptions,
        *,
        crop: Sequence[int],
        stage: str = "pretrain",
        cache: str = "none",
        cache_dir: str | Path | None = None,
        seed: int = 0,
        classes: list[str] | None = None,
        num_workers: int = 0,
    ):
        if not items:
            raise DataError(None, "no scans to build a dataset from")
        self.items = [dict(it) for it in items]
        if opts.modality == "auto":
            modality, _ = infer_modality(self.items, opts.spatial_dims, "the dataset's scans", opts.image_key)
            opts = dataclasses.replace(opts, modality=modality)
        self.opts = opts
        self.crop = list(crop)
        self.stage = stage
        self.seed = int(seed)
        self.epoch = 0
        self.classes = classes
        self.mask_classes: list[str] | None = None  # segmentation label names (set by the domain)
        self.with_mask = "mask" in self.items[0]
        self.cache = cache
        self.det, self.rand = build_transforms(opts, self.crop, stage, with_mask=self.with_mask)
        self._fast_crop = fixed_crop_size(self.rand)
        self._checked: set[int] = set()  # cached volumes already validated (memory cache, this process)
        with domain_errors():
            if cache == "memory":
                self.base = mdata.CacheDataset(
                    self.items,
                    transform=self.det,
                    cache_rate=1.0,
                    copy_cache=False,
                    num_workers=max(1, num_workers) if num_workers else None,
                    progress=False,
                )
            elif cache == "disk":
                cache_dir = Path(cache_dir or "cache/medical")
                cache_dir.mkdir(parents=True, exist_ok=True)
                self.base = mdata.PersistentDataset(
                    self.items, transform=self.det, cache_dir=cache_dir, hash_func=_hash_item
                )
            else:
                self.base = mdata.Dataset(self.items, transform=self.det)

    @property
    def num_classes(self) -> int | None:
        """Number of classes (from ``classes``) or, for masks, the largest label + 1 over the data."""
        if self.classes:
            return len(self.classes)
        if self.with_mask:
            top = 0
            for it in self.items:
                top = max(top, int(read_image(it["mask"], spatial_dims=self.opts.spatial_dims).max()))
            return top + 1
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        with domain_errors():
            sample = self.base[index]
        if self.rand is not None:
            epoch = 0 if self.stage in ("val", "test") else self.epoch
            rng = item_numpy_rng(self.seed, epoch, int(index))
            if self._fast_crop is not None:  # a fixed-size random crop: plain slicing, a copy, no MetaTensor
                if self.cache != "memory":
                    return check_sample(random_crop(sample, self._fast_crop, rng), spatial_dims=self.opts.spatial_dims)
                if int(index) not in self._checked:  # a cached volume is validated once; its crops are then valid too
                    check_sample(sample, spatial_dims=self.opts.spatial_dims)
                    self._checked.add(int(index))
                return random_crop(sample, self._fast_crop, rng)
            sample = apply_random(self.rand, sample, int(rng.integers(0, 2**31 - 1)))
        sample = dict(sample)
        if self.cache == "memory":  # never hand out (views of) the cached tensors themselves
            for key in ("image", "mask"):
                if key in sample and isinstance(sample[key], torch.Tensor):
                    sample[key] = sample[key].clone()
        return check_sample(sample, spatial_dims=self.opts.spatial_dims)
