"""Multi-crop views for self-distillation on multispectral scenes: band-preserving crops.

Every crop keeps all bands in order (the wavelength patch embed reads them by wavelength) and no
band is rescaled on its own: a per-band gain would change the spectral signature that tells
vegetation from water. Scenes have no up or down, so crops are flipped and turned by multiples of
90 degrees; a little sensor noise is the only radiometric change (chips are band-standardised, so
noise of 2% of a band's spread is well inside real radiometric uncertainty).

Example:
    >>> import torch
    >>> f = spectral_multicrop((16, 16), (8, 8), n_local=1)
    >>> [tuple(v.shape) for v in f(torch.rand(5, 16, 16), torch.Generator().manual_seed(0))]
    [(5, 16, 16), (5, 16, 16), (5, 8, 8)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from domainfm.data.multicrop import make_multicrop


def sensor_noise(level: float = 0.02):
    """Additive Gaussian noise, ``level`` x each band's standard deviation (band ratios kept on average)."""

    def noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        std = x.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, *([1] * (x.ndim - 1)))
        return x + level * std * torch.randn(x.shape, generator=g)

    return noise


def spectral_multicrop(
    global_size: Sequence[int],
    local_size: Sequence[int],
    n_global: int = 2,
    n_local: int = 6,
    global_scale=(0.32, 1.0),
    local_scale=(0.05, 0.32),
    noise: float = 0.02,
):
    """Band-preserving multi-crop with flips, 90-degree turns and sensor noise."""
    return make_multicrop(
        2,
        global_size,
        local_size,
        n_global,
        n_local,
        global_scale,
        local_scale,
        rot90=True,
        photometric=sensor_noise(noise),
    )


def multicrop_for(cfg, img_size, local_size):
    """The remote-sensing domain's ``multicrop`` hook (counts and scales from ``objective.*``)."""
    o = cfg.objective
    return spectral_multicrop(
        img_size, local_size, o.global_crops, o.local_crops, tuple(o.global_crop_scale), tuple(o.local_crop_scale)
    )
