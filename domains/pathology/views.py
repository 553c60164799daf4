"""Views of H&E tiles for self-supervision: same-MPP multi-crop for self-distillation, and the two-view
augmentation of contrastive pretraining (random resized crop, flips, 90-degree turns, HED stain jitter).

A tile's physical resolution (microns per pixel) carries meaning (nucleus size, gland scale), so crops
are never zoomed: global crops are the whole tile at the training MPP, local crops are smaller windows
cut at the same MPP (no resize). Tissue has no orientation, so every crop is flipped and rotated by a
multiple of 90 degrees. Colour changes are the ones staining causes: HED jitter (per-stain gain and
offset in haematoxylin-eosin-DAB space), applied on un-normalised RGB and normalised back.

Example:
    >>> import torch
    >>> f = pathology_multicrop((16, 16), (8, 8), mean=torch.zeros(3, 1, 1), std=torch.ones(3, 1, 1),
    ...                         hed_sigma=0.05, n_local=2)
    >>> [tuple(v.shape) for v in f(torch.rand(3, 16, 16), torch.Generator().manual_seed(0))]
    [(3, 16, 16), (3, 16, 16), (3, 8, 8), (3, 8, 8)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from domainfm.data.multicrop import make_multicrop

from .stain import hed_jitter


def stain_jitter(mean: torch.Tensor, std: torch.Tensor, sigma: float):
    """HED jitter on normalised tiles (``(x * std + mean)`` -> jitter -> normalise); identity when ``sigma`` is 0."""

    def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if sigma <= 0:
            return x
        rgb = (x * std + mean).clamp(0, 1)
        return (hed_jitter(rgb, g, sigma) - mean) / std

    return jitter


def pathology_multicrop(
    global_size: Sequence[int],
    local_size: Sequence[int],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    hed_sigma: float = 0.05,
    n_global: int = 2,
    n_local: int = 6,
):
    """Same-MPP multi-crop: whole-tile globals, un-resized local windows; flips, 90-degree turns, HED jitter
    (arguments after the two sizes are keyword-only)."""
    return make_multicrop(
        2,
        global_size,
        local_size,
        n_global,
        n_local,
        (1.0, 1.0),
        (1.0, 1.0),
        rot90=True,
        photometric=stain_jitter(mean, std, hed_sigma),
        same_scale=True,
    )


def multicrop_for(cfg, mean: torch.Tensor, std: torch.Tensor, img_size, local_size):
    """The pathology domain's ``multicrop`` hook (stain jitter from ``data.options.hed_sigma``)."""
    opts = cfg.options
    sigma = float(opts.hed_sigma) if opts.stain_augment else 0.0
    return pathology_multicrop(
        img_size,
        local_size,
        mean=mean,
        std=std,
        hed_sigma=sigma,
        n_global=cfg.objective.global_crops,
        n_local=cfg.objective.local_crops,
    )


def make_view_augment(
    mean: torch.Tensor, std: torch.Tensor, hed_sigma: float, crop_scale=(0.5, 1.0)
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """View augmentation on normalized ``3 x H x W`` tiles (see :meth:`PathologyDomain.augment`): a random
    resized crop keeping ``crop_scale`` of the area, a 90-degree turn, a flip and HED jitter of ``hed_sigma``.

    Example:
        >>> import torch
        >>> aug = make_view_augment(torch.zeros(3, 1, 1), torch.ones(3, 1, 1), 0.1)
        >>> aug(torch.rand(3, 16, 16), torch.Generator().manual_seed(0)).shape
        torch.Size([3, 16, 16])
    """

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = x.shape
        frac = float(crop_scale[0] + (crop_scale[1] - crop_scale[0]) * torch.rand(1, generator=g)) ** 0.5
        ch, cw = max(1, int(round(h * frac))), max(1, int(round(w * frac)))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        y = F.interpolate(
            x[None, :, y0 : y0 + ch, x0 : x0 + cw].float(), size=(h, w), mode="bilinear", align_corners=False
        )[0]
        k = int(torch.randint(0, 4, (1,), generator=g))
        if k:
            y = torch.rot90(y, k, dims=(1, 2))
        if float(torch.rand(1, generator=g)) < 0.5:
            y = y.flip(2)
        if hed_sigma > 0:
            rgb = (y * std + mean).clamp(0, 1)
            y = (hed_jitter(rgb, g, hed_sigma) - mean) / std
        return y.contiguous()

    return augment
