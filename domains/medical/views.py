"""Multi-crop views for self-distillation on medical images, with intensity changes the physics allows.

CT (HU windowed to [0, 1]): values mean tissue densities, so no brightness/contrast jitter; only a
little acquisition noise. MRI (z-scored, arbitrary units): mild per-scan gain/offset. X-ray (min-max
scaled): exposure varies between machines, so brightness/contrast jitter plus noise. Volumes get 3D
crops in voxels of the resampled grid (voxels are at the target spacing, so voxel crops are crops in mm)
and flips along every axis; X-rays get left-right flips only (up-down is not anatomical).

Example:
    >>> import torch
    >>> f = medical_multicrop("ct", 3, global_size=(16, 16, 16), local_size=(8, 8, 8), n_local=2)
    >>> [tuple(v.shape) for v in f(torch.rand(1, 16, 16, 16), torch.Generator().manual_seed(0))]
    [(1, 16, 16, 16), (1, 16, 16, 16), (1, 8, 8, 8), (1, 8, 8, 8)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from domainfm.data.multicrop import make_multicrop

#: (gain range, offset as a share of the image std, noise as a share of the image std) per modality
PHOTOMETRIC = {"ct": (0.0, 0.0, 0.02), "mri": (0.1, 0.1, 0.03), "xray": (0.25, 0.2, 0.03)}


def physics_jitter(modality: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Gain/offset/noise within what the modality's acquisition allows (see :data:`PHOTOMETRIC`).

    Example:
        >>> x = torch.rand(1, 8, 8)
        >>> y = physics_jitter("ct")(x, torch.Generator().manual_seed(0))
        >>> float((y - x).abs().max()) < 0.2  # CT: noise only, densities stay put
        True
    """
    gain, offset, noise = PHOTOMETRIC.get(modality, PHOTOMETRIC["mri"])

    def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        std = x.std().clamp_min(1e-6)
        if gain:
            x = x * (1 + gain * (2 * float(torch.rand(1, generator=g)) - 1))
        if offset:
            x = x + offset * std * (2 * float(torch.rand(1, generator=g)) - 1)
        if noise:
            x = x + noise * std * torch.randn(x.shape, generator=g)
        return x

    return jitter


def medical_multicrop(
    modality: str,
    spatial_dims: int,
    *,
    global_size: Sequence[int],
    local_size: Sequence[int],
    n_global: int = 2,
    n_local: int = 6,
    global_scale=(0.4, 1.0),
    local_scale=(0.05, 0.4),
):
    """2 global + N local crops (2D or 3D) with :func:`physics_jitter` of ``modality`` (arguments after
    ``spatial_dims`` are keyword-only)."""
    flips = (spatial_dims,) if modality == "xray" and spatial_dims == 2 else None
    return make_multicrop(
        spatial_dims,
        global_size,
        local_size,
        n_global,
        n_local,
        global_scale,
        local_scale,
        flip_axes=flips,
        photometric=physics_jitter(modality),
    )


def multicrop_for(cfg, opts, img_size: Sequence[int], local_size: Sequence[int]):
    """The medical domain's ``multicrop`` hook: ``objective.*`` counts and scales, the modality's physics."""
    o = cfg.objective
    return medical_multicrop(
        opts.modality,
        opts.spatial_dims,
        global_size=img_size,
        local_size=local_size,
        n_global=o.global_crops,
        n_local=o.local_crops,
        global_scale=tuple(o.global_crop_scale),
        local_scale=tuple(o.local_crop_scale),
    )
