"""The fixed-size random crop by plain slicing: right region, image and mask aligned, never a view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt

from domainfm.errors import DataError
from domainfm.medical.transforms import fixed_crop_size, random_crop


def test_fixed_crop_size_only_for_fixed_random_spatial_crops():
    assert fixed_crop_size(mt.RandSpatialCropd(["image"], roi_size=[4, 5, 6], random_size=False)) == [4, 5, 6]
    assert fixed_crop_size(mt.RandSpatialCropd(["image"], roi_size=[4, 5, 6], random_size=True)) is None
    assert fixed_crop_size(mt.RandSpatialCropd(["image"], roi_size=[4, -1, 6], random_size=False)) is None
    assert fixed_crop_size(None) is None


def test_random_crop_region_alignment_and_coverage():
    image = torch.arange(2 * 6 * 7 * 5, dtype=torch.float32).reshape(2, 6, 7, 5)
    mask = torch.arange(6 * 7 * 5).reshape(6, 7, 5)
    sample = {"image": image, "mask": mask, "meta": {"path": "ct.nii.gz"}}
    starts = set()
    for seed in range(200):
        out = random_crop(sample, [3, 4, 5], np.random.default_rng(seed))
        a, b, c = (int(v) for v in torch.nonzero(mask == out["mask"][0, 0, 0])[0])
        assert torch.equal(out["image"], image[:, a : a + 3, b : b + 4, c : c + 5])
        assert torch.equal(out["mask"], mask[a : a + 3, b : b + 4, c : c + 5]) and out["meta"] is sample["meta"]
        assert out["image"].is_contiguous()
        assert out["image"].untyped_storage().data_ptr() != image.untyped_storage().data_ptr()
        starts.add((a, b, c))
    assert starts == {(a, b, 0) for a in range(4) for b in range(4)}  # every valid position, nothing outside
    full = random_crop({"image": image}, [6, 7, 5], np.random.default_rng(0))["image"]
    full.zero_()
    assert image.sum() > 0  # a full-size crop is a copy too: the cached volume is never handed out
    with pytest.raises(DataError, match="ct.nii.gz: crop"):
        random_crop(sample, [7, 4, 5], np.random.default_rng(0))
