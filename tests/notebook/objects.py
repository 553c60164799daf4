"""Tiny models trained on objects held in memory, shared by the tests of what they predict
(``test_predict_objects.py`` and ``tests/robustness/test_predict_object_faults.py``): a segmenter fine-tuned
from a MONAI ``Dataset`` of NIfTI dicts (``LoadImaged``), one from a TorchGeo ``RasterDataset`` with a
``RandomGeoSampler``, and a classifier and a segmenter from plain numpy arrays. Each is trained once per test
session (``functools.cache`` on the session's temporary folder)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch

import domainfm

TINY = {
    "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "train": {"steps": 1, "batch_size": 4, "warmup_steps": 1, "progress": False, "tensorboard": False},
}
FINETUNE = ["train.steps=2"]
#: the affine of the training volumes: 1.5 x 1.5 x 2 mm voxels, RAS
TRAIN_AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def write_ct(folder: Path, name: str, shape=(24, 24, 16), affine=TRAIN_AFFINE, seed: int = 0) -> tuple[Path, Path]:
    """A CT-like NIfTI volume (HU) with a bright cube, and its mask."""
    import nibabel as nib  # optional: the medical extra (the tests that call this skip without it)

    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    c = [int(rng.integers(5, s - 5)) for s in shape]
    mask[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, max(0, c[2] - 3) : c[2] + 3] = 1
    image = (rng.normal(-100.0, 20.0, shape) + 300.0 * mask).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    img, lab = folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), img)
    nib.save(nib.Nifti1Image(mask, affine), lab)
    return img, lab


def write_scene(folder: Path, name: str, origin=(500000.0, 4600000.0), size: int = 48, seed: int = 0) -> tuple:
    """A 3-band uint16 GeoTIFF in EPSG:32633 at 10 m and its 0/1 label raster (fields brighter than the rest)."""
    import rasterio  # optional: the remote-sensing extra (the tests that call this skip without it)
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    field = np.zeros((size, size), np.uint8)
    for _ in range(3):
        r, c = (int(v) for v in rng.integers(0, size - 12, 2))
        field[r : r + 12, c : c + 12] = 1
    bands = (rng.normal(1000.0, 80.0, (3, size, size)) + 900.0 * field).astype(np.uint16)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": "EPSG:32633",
        "transform": from_origin(origin[0], origin[1], 10.0, 10.0),
    }
    paths = []
    for sub, array in (("images", bands), ("labels", field[None])):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / f"{name}.tif"
        with rasterio.open(path, "w", count=len(array), dtype=array.dtype, **profile) as dst:
            dst.write(array)
        paths.append(path)
    return tuple(paths)


@functools.cache
def monai_segmenter(root: Path) -> dict:
    """``{"pretrained", "segmenter", "dataset", "folder"}``: fine-tuned from a MONAI ``Dataset`` of NIfTI dicts."""
    from monai.data import Dataset  # optional: MONAI (the tests that call this skip without it)
    from monai.transforms import LoadImaged

    folder = root / "monai"
    pairs = [write_ct(folder / "train", f"case{i}", seed=i) for i in range(4)]
    items = [{"image": str(img), "label": str(lab)} for img, lab in pairs]
    dataset = Dataset(items, LoadImaged(["image", "label"], ensure_channel_first=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = domainfm.pretrain({"out": str(folder / "pre"), **TINY}, data=dataset)
        seg = domainfm.finetune(pre, task="segmentation", data=dataset, out=folder / "seg", overrides=FINETUNE)
    return {"pretrained": pre, "segmenter": seg, "dataset": dataset, "folder": folder}


@functools.cache
def torchgeo_segmenter(root: Path) -> dict:
    """``{"segmenter", "images", "pairs", "sampler", "folder"}``: fine-tuned from a TorchGeo ``RasterDataset``
    of GeoTIFF scenes and their label rasters, sampled by a ``RandomGeoSampler``."""
    from torchgeo.datasets import RasterDataset  # optional: TorchGeo (the tests that call this skip without it)
    from torchgeo.samplers import RandomGeoSampler

    class Labels(RasterDataset):
        is_image = False

    folder = root / "torchgeo"
    write_scene(folder, "scene", seed=0)
    images = RasterDataset(paths=str(folder / "images"))
    pairs = images & Labels(paths=str(folder / "labels"))
    sampler = RandomGeoSampler(pairs, size=16, length=12, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = domainfm.pretrain({"out": str(folder / "pre"), **TINY}, data=images, sampler=sampler)
        seg = domainfm.finetune(
            pre, task="segmentation", data=pairs, sampler=sampler, out=folder / "seg", overrides=FINETUNE
        )
    return {"segmenter": seg, "images": images, "pairs": pairs, "sampler": sampler, "folder": folder}


@functools.cache
def array_models(root: Path) -> dict:
    """``{"pretrained", "classifier", "segmenter", "images"}`` trained on plain numpy arrays (no geometry)."""
    folder = root / "arrays"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 2, 16, 16)).astype(np.uint8)
    labels = np.arange(16) % 2
    masks = (images[:, 0] > 127).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = domainfm.pretrain({"out": str(folder / "pre"), **TINY}, data=images)
        clf = domainfm.finetune(
            pre, task="classification", data=images, labels=labels, out=folder / "clf", overrides=FINETUNE
        )
        seg = domainfm.finetune(
            pre, task="segmentation", data=images, labels=masks, out=folder / "seg", overrides=FINETUNE
        )
    return {"pretrained": pre, "classifier": clf, "segmenter": seg, "images": images}
