"""Fixed sin-cos positional embeddings for 2D and 3D token grids, resampled to new grids.

Example:
    >>> pe = sincos_pos_embed(64, (4, 4))
    >>> pe.shape
    torch.Size([16, 64])
    >>> resample_pos_embed(pe, (4, 4), (8, 8)).shape
    torch.Size([64, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Sin-cos embedding of shape ``(prod(grid), dim)`` for a 2D ``(h, w)`` or 3D ``(d, h, w)`` grid.

    The embedding dimension is split evenly across axes (padded with zeros when not divisible).
    """
    n_axes = len(grid)
    per_axis = (dim // n_axes) // 2 * 2
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = [_sincos_1d(per_axis, c) for c in coords]
    pe = torch.cat(parts, dim=1)
    if pe.shape[1] < dim:
        pe = torch.cat([pe, torch.zeros(pe.shape[0], dim - pe.shape[1], dtype=pe.dtype)], dim=1)
    return pe.float()


def resample_pos_embed(pe: torch.Tensor, old_grid: tuple[int, ...], new_grid: tuple[int, ...]) -> torch.Tensor:
    """Interpolate a ``(N, E)`` positional embedding from ``old_grid`` to ``new_grid``
    (bicubic in 2D, trilinear in 3D), as when a model sees a larger or smaller input than in training."""
    if tuple(old_grid) == tuple(new_grid):
        return pe
    dim = pe.shape[-1]
    x = pe.reshape(1, *old_grid, dim).movedim(-1, 1)
    mode = "bicubic" if len(old_grid) == 2 else "trilinear"
    x = F.interpolate(x.float(), size=tuple(new_grid), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(-1, dim).to(pe.dtype)
