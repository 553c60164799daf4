"""Modality-agnostic tensor augmentations for contrastive views (2D and 3D), driven by a generator.

Domains supply their own (stain jitter, band dropout, HU shifts); this is the default.

Example:
    >>> import torch
    >>> aug = default_augment(spatial_dims=2)
    >>> g = torch.Generator().manual_seed(0)
    >>> aug(torch.rand(1, 32, 32), g).shape
    torch.Size([1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.4, 1.0)) -> torch.Tensor:
    """Crop a random sub-box holding ``scale`` of each axis and resize back to the input size."""
    spatial = x.shape[1:]
    frac = _u(g, *scale) ** (1.0 / len(spatial))
    sizes = [max(1, int(round(s * frac))) for s in spatial]
    starts = [int(torch.randint(0, s - c + 1, (1,), generator=g)) for s, c in zip(spatial, sizes)]
    crop = x[(slice(None), *[slice(a, a + c) for a, c in zip(starts, sizes)])]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(crop[None].float(), size=tuple(spatial), mode=mode, align_corners=False)[0]


def default_augment(
    spatial_dims: int = 2, crop_scale=(0.4, 1.0), flip: bool = True, intensity: float = 0.2, noise: float = 0.05
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Random resized crop, flips, per-channel intensity scale/shift and Gaussian noise."""

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        y = random_resized_crop(x, g, crop_scale)
        if flip:
            for axis in range(1, spatial_dims + 1):
                if float(torch.rand(1, generator=g)) < 0.5:
                    y = y.flip(axis)
        if intensity:
            c = y.shape[0]
            shape = (c,) + (1,) * spatial_dims
            scale = 1 + intensity * (2 * torch.rand(shape, generator=g) - 1)
            shift = intensity * (2 * torch.rand(shape, generator=g) - 1) * y.std().clamp_min(1e-6)
            y = y * scale + shift
        if noise:
            y = y + noise * y.std().clamp_min(1e-6) * torch.randn(y.shape, generator=g)
        return y.contiguous()

    return augment
