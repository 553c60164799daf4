"""A light segmentation decoder for 2D or 3D token grids (``spatial_dims``-parameterized).

It fuses a few intermediate layers, reshapes tokens to their grid and upsamples in conv stages
back to the input resolution (SETR-PUP style). Domains supply stronger ones (UNETR, UPerNet).

Example:
    >>> import torch
    >>> head = ProgressiveUpsampleHead(64, 3, spatial_dims=2, layers=[0, 1])
    >>> feats = {"layers": [torch.zeros(2, 16, 64)] * 2, "tokens": torch.zeros(2, 16, 64), "grid": (4, 4),
    ...          "image": torch.zeros(2, 1, 32, 32)}
    >>> head(feats).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``B x N x E`` -> ``B x E x (D x) H x W``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class ProgressiveUpsampleHead(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        spatial_dims: int = 2,
        layers: list[int] | None = None,
        channels: int = 64,
    ):
        super().__init__()
        self.layers = list(layers or [])
        self.spatial_dims = spatial_dims
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        n_in = embed_dim * max(1, len(self.layers))
        self.fuse = nn.Sequential(conv(n_in, channels, 1), norm(channels), nn.GELU())
        self.up = nn.ModuleList(
            [nn.Sequential(conv(channels, channels, 3, padding=1), norm(channels), nn.GELU()) for _ in range(2)]
        )
        self.out = conv(channels, num_classes, 1)

    def forward(self, features: dict) -> torch.Tensor:
        grid = tuple(features["grid"])
        parts = features["layers"] if self.layers else [features["tokens"]]
        x = torch.cat([tokens_to_grid(t, grid) for t in parts], dim=1)
        x = self.fuse(x)
        target = tuple(features["image"].shape[2:])
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        factor = max(t / g for t, g in zip(target, grid))
        n_up = min(len(self.up), max(0, int(math.log2(max(factor, 1)))))
        for stage in self.up[:n_up]:
            x = stage(F.interpolate(x, scale_factor=2, mode=mode, align_corners=False))
        x = F.interpolate(x, size=target, mode=mode, align_corners=False)
        return self.out(x)
