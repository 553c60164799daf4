"""Defaults derived from the data, each decision printed once and recorded in the card.

* 2D vs 3D: a data path holding only 2D images (PNG/JPEG/BMP, single DICOM files) is read as 2D
  even when ``spatial_dims`` was left at its default 3 (3D reading of such files cannot work).
* 3D crop: without ``crop_size`` and with ``data.img_size`` left at the 2D default 224, the crop is
  96^3 voxels (common practice for 3D ViT/UNETR pretraining), never larger than the largest volume
  needs at the target spacing (rounded up to a multiple of the patch size).
* A MedMNIST ``.npz`` whose images are ``N x H x W`` (or RGB ``N x H x W x 3``) is 2D too.
* An ``.npy`` of ``N x H x W`` images is 2D too; ``spatial_dims: 3`` set on an ``.npz``/``.npy`` stack of
  slices reads it as one volume.
* Modality (``modality: auto``, the default) is inferred from the headers and intensities of a sample of
  the scans (:mod:`domainfm.medical.modality`): a CT window is never applied to data that does not look like
  CT unless the config asks for it, and then a warning says so.

Example:
    >>> decide("example", "3D crop 96x96x96 (the 3D default)", quiet=True)
    '3D crop 96x96x96 (the 3D default)'
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from domainfm.decisions import decide  # noqa: F401  (re-exported for the medical domain)
from domainfm.errors import DataError

from .io import IMAGE_2D_SUFFIXES, NpzStore, is_dicom_file, is_nifti

DEFAULT_3D_CROP = 96


def _files(path: Path, limit: int = 2000) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            out.append(p)
            if len(out) >= limit:
                break
    return out


def only_2d_images(path: str | Path | None) -> bool:
    """True when the data at ``path`` (a folder or one file) holds 2D images and no volumes.

    Example:
        >>> only_2d_images(None)
        False
    """
    if path is None:
        return False
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".npz", ".npy"):
        return _npz_is_2d(path)
    if not path.exists() or path.suffix.lower() in (".csv", ".json"):
        return False
    files = _files(path)
    images = [p for p in files if p.suffix.lower() in IMAGE_2D_SUFFIXES]
    volumes = [p for p in files if is_nifti(p)]
    dicom_dirs = {p.parent for p in files if is_dicom_file(p)}
    multi_slice = any(sum(1 for p in files if p.parent == d and is_dicom_file(p)) > 1 for d in dicom_dirs)
    return bool(images) and not volumes and not multi_slice


def _npz_is_2d(path: Path) -> bool:
    """A MedMNIST ``.npz`` of ``N x H x W`` (or ``N x H x W x 3``) images, not ``N x D x H x W`` volumes."""
    try:
        store = NpzStore(path)
        split = "train" if "train" in store.splits() else (store.splits() or [None])[0]
        shape = store.images(split).shape if split else ()
    except DataError:
        return False
    return len(shape) == 3 or (len(shape) == 4 and shape[-1] in (3, 4))


def _nifti_shapes(items: list[dict]) -> list[tuple[list[int], list[float]]]:

    out = []
    for it in items[:64]:
        src = it.get("image")
        src = src[0] if isinstance(src, list) else src
        if src is not None and "::" in str(src):
            out += _npz_shape(str(src))
            continue
        if src is None or not is_nifti(src):
            continue
        try:
            hdr = nib.load(str(src)).header
        except Exception:  # unreadable files are reported by the reader, with their name
            continue
        shape = [int(s) for s in hdr.get_data_shape()[:3]]
        zooms = [float(z) for z in hdr.get_zooms()[:3]]
        if len(shape) == 3:
            out.append((shape, zooms))
    return out


def _npz_shape(src: str) -> list[tuple[list[int], list[float]]]:
    """The volume shape of ``file.npz::split[i]`` (or ``[:]``, a stack read as one volume), unit spacing."""
    file, rest = src.split("::", 1)
    split, idx = rest.rstrip("]").split("[")
    try:
        images = NpzStore(file).images(split)
    except DataError:
        return []
    shape = list(images.shape if idx == ":" else images.shape[1:])
    return [(shape, [1.0, 1.0, 1.0])] if len(shape) == 3 else []


def default_crop(items: list[dict], target_spacing: list[float] | None, patch) -> tuple[list[int], str]:
    """The 3D crop: 96^3, capped per axis by the largest volume extent at the target spacing (rounded
    up to a multiple of the patch size). Returns ``(crop, decision text)``.

    Example:
        >>> default_crop([], None, 16)
        ([96, 96, 96], '3D crop 96x96x96 voxels (the 3D default; set --crop-size to change it)')
    """
    patches = [int(patch)] * 3 if isinstance(patch, int) else [int(p) for p in patch]
    crop = [DEFAULT_3D_CROP] * 3
    shapes = _nifti_shapes(items)
    if shapes:
        extent = [0.0, 0.0, 0.0]
        for shape, zooms in shapes:
            for a in range(3):
                step = target_spacing[a] if target_spacing else zooms[a]
                extent[a] = max(extent[a], shape[a] * zooms[a] / step)
        crop = [min(DEFAULT_3D_CROP, max(p, int(math.ceil(e / p)) * p)) for e, p in zip(extent, patches)]
    capped = ", capped by the largest volume" if crop != [DEFAULT_3D_CROP] * 3 else ""
    text = f"3D crop {'x'.join(map(str, crop))} voxels (the 3D default{capped}; set --crop-size to change it)"
    return crop, text


def looks_like_ct(items: list[dict]) -> bool | None:
    """Whether the first readable NIfTI volume has CT intensities (air near -1000 HU); ``None`` when
    no NIfTI volume is there to tell.

    Example:
        >>> looks_like_ct([]) is None
        True
    """

    for it in items[:3]:
        src = it.get("image")
        src = src[0] if isinstance(src, list) else src
        if src is None or not is_nifti(src):
            continue
        try:
            arr = np.asarray(nib.load(str(src)).dataobj, dtype=np.float32)
        except Exception:
            continue
        sample = arr.reshape(-1)[:: max(1, arr.size // 200_000)]
        return bool(np.percentile(sample, 1) < -500)
    return None
