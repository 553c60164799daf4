"""MONAI dictionary-transform recipes for CT, MRI, PET and X-ray, and the loader transform feeding them.

The pipeline is split in two:

* a deterministic part (load -> channel first -> orientation -> spacing -> intensity -> foreground
  crop -> pad/resize) that :mod:`domainfm.medical.dataset` caches (MONAI ``CacheDataset`` /
  ``PersistentDataset``), and
* a random part (3D crops, label-aware positive/negative crops) reseeded per item from
  ``(seed, epoch, index)`` so crops are reproducible and resumable.

Example:
    >>> from domainfm.medical.options import MedicalOptions
    >>> det, rand = build_transforms(MedicalOptions(modality="ct"), crop=[32, 32, 32], stage="pretrain")
    >>> [type(t).__name__ for t in det.transforms][:3]
    ['LoadScand', 'EnsureChannelFirstd', 'Orientationd']
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.transforms import MapTransform

from domainfm.errors import ConfigError, DataError, DomainFMError

from .io import check_mask_geometry, read_image, read_multisequence
from .options import MedicalOptions, resolve_window

ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
PET_SUV_CLIP = 20.0  # SUV-like values above this (bladder, brain at high uptake) are clipped


def find_domain_error(exc: BaseException) -> DomainFMError | None:
    """The :class:`DomainFMError` hidden in MONAI's ``RuntimeError("applying transform ...")`` chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DomainFMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def domain_errors():
    """Re-raise a :class:`DomainFMError` wrapped by MONAI as itself (one clear line, no deep traceback).

    Example:
        >>> with domain_errors():
        ...     pass
    """
    try:
        yield
    except DomainFMError:
        raise
    except Exception as exc:
        err = find_domain_error(exc)
        if err is not None:
            raise err.with_traceback(None) from None
        raise


class LoadScand(MapTransform):
    """Read ``image`` (a path or a list of sequence paths) and ``mask`` into MetaTensors.

    Checks, each raising :class:`DataError` naming the file: the scan has ``spatial_dims`` spatial
    dimensions (2D data with a 3D config and vice versa), no NaN/inf voxels, and the mask has the
    image's shape and affine.

    Example:
        >>> import tempfile
        >>> from domainfm.medical.synthetic import write_ct_nifti_folder
        >>> ct = write_ct_nifti_folder(tempfile.mkdtemp(), n=1, shape=(8, 8, 6))[0]    # 1.5 x 1.5 x 2 mm voxels
        >>> LoadScand(spatial_dims=3)({"image": str(ct)})["image"].affine.diagonal().tolist()
        [1.5, 1.5, 2.0, 1.0]
    """

    def __init__(self, keys: Sequence[str] = ("image", "mask"), spatial_dims: int = 3, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.spatial_dims = spatial_dims

    def _fix_dims(self, img, path):
        from monai.data import MetaTensor  # heavy import (MONAI), loaded on first use

        has_channel = img.meta.get("original_channel_dim") != "no_channel"
        spatial = list(
            img.shape[1:] if img.meta.get("original_channel_dim") == 0 else img.shape[:-1] if has_channel else img.shape
        )
        nd = len(spatial)
        if nd == self.spatial_dims:
            return img
        if self.spatial_dims == 2 and nd == 3 and spatial[-1] == 1 and not has_channel:
            return MetaTensor(img.as_tensor()[..., 0], affine=img.affine, meta=img.meta)
        kind = (
            "2D data where 3D is configured (spatial_dims: 3)"
            if nd < self.spatial_dims
            else "3D data where 2D is configured (spatial_dims: 2)"
        )
        raise DataError(path, f"{kind}: spatial shape {tuple(spatial)}; set data.options.spatial_dims to {nd}")

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        src = d["image"]
        paths = src if isinstance(src, (list, tuple)) else [src]
        image = read_multisequence(paths, spatial_dims=self.spatial_dims)
        image = self._fix_dims(image, paths[0])
        d["image"] = image
        d["src_path"] = str(paths[0])
        if d.get("mask") is not None and "mask" in self.keys:
            mpath = d["mask"]
            mask = read_image(mpath, spatial_dims=self.spatial_dims)
            mask = self._fix_dims(mask, mpath)
            check_mask_geometry(image, mask, paths[0], mpath)
            mask_np = mask.as_tensor()
            if not torch.equal(mask_np, mask_np.round()) or bool((mask_np < 0).any()):
                raise DataError(mpath, "mask must hold non-negative integer labels")
            d["mask"] = mask
        return d


class ToSampled(MapTransform):
    """Turn the MONAI dict into a kit sample: plain float32 ``image``, integer ``mask`` without its
    channel axis, and a JSON-friendly ``meta`` (path, id, affine, spacing, original shape)."""

    def __init__(self, keys: Sequence[str] = ("image",)):
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: dict) -> dict:
        img = data["image"]
        meta: dict[str, Any] = {"path": data.get("src_path", str(data.get("src_path"))), "id": data.get("id")}
        if hasattr(img, "affine"):
            aff = np.asarray(img.affine, dtype=np.float64)
            meta["affine"] = aff.tolist()
            meta["spacing"] = [float(v) for v in np.sqrt((aff[:-1, :-1] ** 2).sum(0))]
            if "spatial_shape" in img.meta:
                meta["original_shape"] = [int(v) for v in np.asarray(img.meta["spatial_shape"]).tolist()]
        out: dict[str, Any] = {"image": _plain(img).float().contiguous(), "meta": meta}
        if data.get("mask") is not None and isinstance(data["mask"], torch.Tensor):
            m = _plain(data["mask"])
            out["mask"] = (m[0] if m.ndim == out["image"].ndim else m).round().long().contiguous()
        if "label" in data:
            out["label"] = int(data["label"])
        return out


class ResizeIfNeededd(mt.Resized):
    """``Resized`` that passes images already at the target size through untouched (no resampling,
    no copy). Not invertible; the inference pipeline uses ``Resized`` itself."""

    def __call__(self, data, lazy=None):
        key = next((k for k in self.keys if k in data), None)
        if key is not None and tuple(data[key].shape[1:]) == tuple(self.resizer.spatial_size):
            return dict(data)
        return super().__call__(data, lazy=lazy) if lazy is not None else super().__call__(data)


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class SuvLikeScaled(mt.MapTransform):
    """PET to SUV-like units: each channel divided by its mean foreground uptake (voxels above 5% of the
    99.9th percentile, a proxy for injected dose per body weight, which files rarely carry), clipped to
    ``[0, clip]``.

    Example:
        >>> x = torch.tensor([[[0.0, 0.0], [2.0, 6.0]]])
        >>> SuvLikeScaled("image")({"image": x})["image"].tolist()
        [[[0.0, 0.0], [0.5, 1.5]]]
    """

    def __init__(self, keys, clip: float = PET_SUV_CLIP, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.clip = float(clip)

    @staticmethod
    def uptake(x: torch.Tensor) -> torch.Tensor:
        """The mean foreground uptake of each channel of ``C x ...`` (the SUV-like reference)."""
        refs = []
        for ch in _plain(x).float().reshape(x.shape[0], -1):
            top = torch.quantile(ch[:: max(1, ch.numel() // 1_000_000)], 0.999)
            fg = ch[ch > 0.05 * top]
            refs.append(fg.mean() if fg.numel() else torch.tensor(1.0))
        return torch.clamp(torch.stack(refs), min=1e-6)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key] if torch.is_tensor(d[key]) else torch.as_tensor(np.asarray(d[key]))
            x = x.float()
            ref = self.uptake(x).reshape(-1, *([1] * (x.ndim - 1)))
            d[key] = (x / ref).clamp(0.0, self.clip)
        return d


def intensity_transforms(opts: MedicalOptions, keys=("image",)) -> list:
    """The intensity recipe of ``opts.modality``: CT window -> [0, 1]; MRI percentile clip + z-score;
    PET SUV-like scaling (:class:`SuvLikeScaled`); X-ray per-image min-max to [0, 1]."""
    if opts.modality == "auto":
        raise ConfigError(
            "data.options.modality is auto: the medical domain resolves it from the data "
            "(domain.options(cfg)); building transforms directly needs ct, mri, pet or xray"
        )
    if opts.modality == "ct":
        lo, hi = resolve_window(opts)
        return [mt.ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if opts.modality == "mri":
        lo, hi = opts.percentiles
        return [
            mt.ClipIntensityPercentilesd(keys, lower=lo, upper=hi, channel_wise=True),
            mt.NormalizeIntensityd(keys, nonzero=True, channel_wise=True),
        ]
    if opts.modality == "pet":
        return [SuvLikeScaled(keys)]
    return [mt.ScaleIntensityd(keys, minv=0.0, maxv=1.0)]


def normalization_record(opts: MedicalOptions) -> dict:
    """JSON description of the intensity recipe (goes into the checkpoint card)."""
    if opts.modality == "ct":
        lo, hi = resolve_window(opts)
        return {
            "kind": "ct_window",
            "window": None if opts.window_range else opts.window,
            "min_hu": lo,
            "max_hu": hi,
            "output_range": [0.0, 1.0],
            "clip": True,
        }
    if opts.modality == "mri":
        return {
            "kind": "percentile_clip_zscore",
            "percentiles": list(opts.percentiles),
            "nonzero": True,
            "channel_wise": True,
        }
    if opts.modality == "pet":
        return {
            "kind": "suv_like",
            "reference": "mean of voxels above 5% of the 99.9th percentile",
            "clip": [0.0, PET_SUV_CLIP],
        }
    return {"kind": "minmax", "output_range": [0.0, 1.0]}


def geometry_transforms(opts: MedicalOptions, keys: Sequence[str]) -> list:
    """Channel first, orientation and spacing (invertible, so predictions can be mapped back)."""
    keys = list(keys)
    out: list = [mt.EnsureChannelFirstd(keys, allow_missing_keys=True)]
    if opts.spatial_dims == 3 and opts.orientation:
        out.append(mt.Orientationd(keys, axcodes=opts.orientation, labels=ORIENTATION_LABELS, allow_missing_keys=True))
    if opts.target_spacing:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        out.append(mt.Spacingd(keys, pixdim=list(opts.target_spacing), mode=modes, allow_missing_keys=True))
    return out


def build_transforms(
    opts: MedicalOptions, crop: Sequence[int], stage: str, with_mask: bool = False, intensity: bool = True
):
    """``(deterministic Compose, random transform or None)`` for ``stage``.

    ``stage`` is ``pretrain`` (random crops), ``train`` (random crops; positive/negative crops
    around the mask when ``with_mask``), ``val``/``test`` (centre crop, or a fixed pos/neg crop
    for masks), or ``inference`` (whole scan, no crop, output kept as MetaTensor for inversion).
    ``intensity=False`` leaves the intensities as read (a model with a normalisation of its own, e.g.
    one trained on MONAI volumes held in memory, applies it after the geometry).
    """
    keys = ["image", "mask"] if with_mask else ["image"]
    crop = list(crop)
    det: list = [LoadScand(keys, spatial_dims=opts.spatial_dims)]
    det += geometry_transforms(opts, keys)
    if opts.foreground_crop and opts.modality == "mri":
        det.append(mt.CropForegroundd(keys, source_key="image", allow_smaller=True, allow_missing_keys=True))
    det += intensity_transforms(opts) if intensity else []
    if opts.foreground_crop and opts.modality != "mri":
        det.append(mt.CropForegroundd(keys, source_key="image", allow_smaller=True, allow_missing_keys=True))
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    resize = opts.spatial_dims == 2 and opts.resize_2d
    if resize:
        cls = mt.Resized if stage == "inference" else ResizeIfNeededd  # inference keeps the invertible one
        det.append(cls(keys, spatial_size=crop, mode=modes, allow_missing_keys=True))
    elif stage != "inference":
        det.append(mt.SpatialPadd(keys, spatial_size=crop, allow_missing_keys=True))
    rand = None
    if stage == "inference":
        return mt.Compose(det), None
    det.append(mt.EnsureTyped(keys, dtype=torch.float32, allow_missing_keys=True))
    if not resize:
        if with_mask and stage in ("train", "val", "test"):
            pos, neg = opts.pos_neg
            rand = mt.RandCropByPosNegLabeld(
                keys,
                label_key="mask",
                spatial_size=crop,
                pos=pos,
                neg=neg,
                num_samples=1,
                image_key="image",
                allow_smaller=False,
            )
        elif stage in ("pretrain", "train"):
            rand = mt.RandSpatialCropd(keys, roi_size=crop, random_size=False)
        else:
            det.append(mt.CenterSpatialCropd(keys, roi_size=crop))
    det.append(ToSampled(keys))
    return mt.Compose(det), rand


def apply_random(rand, sample: dict, seed: int) -> dict:
    """Apply the random transform ``rand`` to ``sample`` with its RNG reseeded to ``seed``."""
    if rand is None:
        return sample
    rand.set_random_state(seed=int(seed) % (2**32 - 1))
    d = {"image": sample["image"]}
    if "mask" in sample:
        d["mask"] = sample["mask"][None]
    with domain_errors():
        out = rand(d)
    if isinstance(out, list):
        out = out[0]
    res = dict(sample)
    res["image"] = _plain(out["image"]).contiguous()
    if "mask" in sample:
        res["mask"] = _plain(out["mask"])[0].long().contiguous()
    return res


def fixed_crop_size(rand) -> list[int] | None:
    """The ROI of ``rand`` when it is a fixed-size ``RandSpatialCropd`` (what :func:`random_crop` does
    without MONAI's per-call MetaTensor bookkeeping), else ``None``.

    Example:
        >>> fixed_crop_size(mt.RandSpatialCropd(["image"], roi_size=[8, 8, 8], random_size=False))
        [8, 8, 8]
    """
    if type(rand) is not mt.RandSpatialCropd or rand.cropper.random_size or rand.cropper.random_center is False:
        return None
    roi = rand.cropper.roi_size
    roi = list(roi) if isinstance(roi, (list, tuple)) else None
    return [int(v) for v in roi] if roi and all(int(v) > 0 for v in roi) else None


def random_crop(sample: dict, roi: Sequence[int], rng: np.random.Generator) -> dict:
    """A ``roi``-sized crop of ``sample`` (``image`` C x spatial, optional ``mask`` spatial) at a uniform random
    position drawn from ``rng``: new contiguous tensors (never views of a cached volume), ``meta`` kept.

    Example:
        >>> out = random_crop({"image": torch.zeros(1, 10, 12)}, [4, 4], np.random.default_rng(0))
        >>> tuple(out["image"].shape)
        (1, 4, 4)
    """
    image = _plain(sample["image"])
    spatial = image.shape[1:]
    if len(roi) != len(spatial) or any(r > s for r, s in zip(roi, spatial)):
        raise DataError(
            (sample.get("meta") or {}).get("path"),
            f"crop {list(roi)} does not fit the preprocessed image {tuple(spatial)}",
        )
    starts = [int(rng.integers(0, s - r + 1)) for s, r in zip(spatial, roi)]
    region = tuple(slice(a, a + r) for a, r in zip(starts, roi))
    out = dict(sample)
    out["image"] = image[(slice(None),) + region].clone(memory_format=torch.contiguous_format)
    if isinstance(sample.get("mask"), torch.Tensor):
        out["mask"] = _plain(sample["mask"])[region].clone(memory_format=torch.contiguous_format)
    return out
