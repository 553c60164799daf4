"""The Sample schema every domain reader produces, and its checks.

A sample is a plain ``dict`` (MONAI-style, so dictionary transforms compose on it):

``image``
    float32 tensor ``C x H x W`` (2D) or ``C x D x H x W`` (3D). Required, finite.
``label``
    optional int class index (or a float multi-hot vector for multi-label tasks).
``mask``
    optional integer tensor ``H x W`` / ``D x H x W`` on the image grid (segmentation target).
``wavelengths``
    optional list of central wavelengths in micrometres, one per channel (channel-adaptive models).
``meta``
    dict of anything JSON-friendly: ``path`` (the source file), affine, CRS, coordinates, ...

Example:
    >>> import torch
    >>> s = make_sample(torch.zeros(1, 8, 8), path="a.png", label=1)
    >>> check_sample(s, spatial_dims=2)["image"].shape
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

from typing import Any

import torch

from domainfm.errors import DataError


def make_sample(
    image: torch.Tensor,
    path: str | None = None,
    label: Any = None,
    mask: Any = None,
    wavelengths: list[float] | None = None,
    **meta: Any,
) -> dict:
    """Build a sample dict; ``meta`` gets ``path`` plus any keyword given."""
    sample: dict[str, Any] = {"image": image, "meta": {"path": path, **meta}}
    if label is not None:
        sample["label"] = label
    if mask is not None:
        sample["mask"] = mask
    if wavelengths is not None:
        sample["wavelengths"] = [float(w) for w in wavelengths]
    return sample


def check_sample(sample: dict, spatial_dims: int | None = None, channels: int | None = None) -> dict:
    """Validate a sample and return it; raise :class:`DataError` naming the source file otherwise.

    Checks: image is a floating tensor with the expected number of spatial dims and channels, has no
    NaN/inf, and the mask (if any) lies on the image grid.
    """
    path = (sample.get("meta") or {}).get("path")
    image = sample.get("image")
    if not isinstance(image, torch.Tensor):
        raise DataError(path, f"sample image must be a torch.Tensor, got {type(image).__name__}")
    if spatial_dims is not None and image.ndim != spatial_dims + 1:
        got = image.ndim - 1
        raise DataError(
            path,
            f"expected a {spatial_dims}D image (C x {'D x ' if spatial_dims == 3 else ''}H x W) "
            f"but got {got} spatial dims, shape {tuple(image.shape)}; "
            f"is this {'2D data with a 3D config' if got < spatial_dims else '3D data with a 2D config'}?",
        )
    if channels is not None and image.shape[0] != channels:
        raise DataError(
            path, f"expected {channels} channels but the image has {image.shape[0]} (shape {tuple(image.shape)})"
        )
    if not torch.is_floating_point(image):
        raise DataError(path, f"image must be floating point after preprocessing, got {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        n_bad = int((~torch.isfinite(image)).sum())
        raise DataError(path, f"image has {n_bad} NaN/inf values out of {image.numel()}")
    mask = sample.get("mask")
    if isinstance(mask, torch.Tensor) and tuple(mask.shape[-(image.ndim - 1) :]) != tuple(image.shape[1:]):
        raise DataError(path, f"mask shape {tuple(mask.shape)} is not on the image grid {tuple(image.shape[1:])}")
    wl = sample.get("wavelengths")
    if wl is not None and len(wl) != image.shape[0]:
        raise DataError(path, f"{len(wl)} wavelengths given for an image with {image.shape[0]} channels")
    return sample


def collate_samples(batch: list[dict]) -> dict:
    """Stack a list of samples into a batch dict.

    ``image``/``mask``/``views`` are stacked, ``label`` becomes a tensor, ``meta`` a list.
    Samples in one batch must share shape and (if given) wavelengths; a batch mixing band sets is
    an error (use a sampler that groups by sensor).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    shapes = {tuple(s["image"].shape) for s in batch}
    if len(shapes) > 1:
        paths = [s.get("meta", {}).get("path") for s in batch]
        raise DataError(
            None,
            f"samples in one batch have different shapes {sorted(shapes)} (files {paths}); "
            "crop or resize them to one size in the domain transforms",
        )
    out["image"] = torch.stack([s["image"] for s in batch])
    if "views" in batch[0]:
        out["views"] = [torch.stack([s["views"][i] for s in batch]) for i in range(len(batch[0]["views"]))]
    if "label" in batch[0]:
        labels = [s["label"] for s in batch]
        out["label"] = torch.stack([torch.as_tensor(lbl) for lbl in labels])
    if "mask" in batch[0]:
        out["mask"] = torch.stack([torch.as_tensor(s["mask"]) for s in batch]).long()
    if "wavelengths" in batch[0]:
        wls = {tuple(s["wavelengths"]) for s in batch}
        if len(wls) > 1:
            raise DataError(None, f"one batch mixes band sets {sorted(wls)}; group samples by sensor")
        out["wavelengths"] = list(batch[0]["wavelengths"])
    out["meta"] = [s.get("meta", {}) for s in batch]
    return out
