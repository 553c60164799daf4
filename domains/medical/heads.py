"""UNETR-style segmentation decoder (2D or 3D, anisotropic patches) built from MONAI's UNETR blocks.

The ViT's final tokens are the bottleneck; ``n - 1`` intermediate layers (``n = log2(patch)``
upsampling stages) are projected up by transposed convolutions into skips at 1/2^k resolution,
and the input image itself gives the full-resolution skip, as in UNETR (Hatamizadeh et al. 2022).

Example:
    >>> import torch
    >>> head = UNETRHead(embed_dim=64, num_classes=2, spatial_dims=3, patch_size=(4, 8, 8), in_chans=1, depth=4)
    >>> head.layers
    [0, 2]
    >>> feats = {"tokens": torch.zeros(1, 8 * 4 * 4, 64), "grid": (8, 4, 4), "image": torch.zeros(1, 1, 32, 32, 32),
    ...          "layers": [torch.zeros(1, 128, 64)] * 2}
    >>> head(feats).shape
    torch.Size([1, 2, 32, 32, 32])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer
from torch import nn

from domainfm.errors import ConfigError
from domainfm.heads.classification import LinearHead


def _stage_factors(patch_size: Sequence[int]) -> list[list[int]]:
    """Per upsampling stage (from the token grid up to full resolution), the factor of each dim."""
    logs = []
    for p in patch_size:
        k = int(round(math.log2(p))) if p >= 1 else -1
        if p < 1 or 2**k != p:
            raise ConfigError(f"the UNETR head needs power-of-two patch sizes, got {list(patch_size)}")
        logs.append(k)
    n = max(logs)
    return [[2 if j >= n - k else 1 for k in logs] for j in range(n)]


def unetr_layers(depth: int, n_stages: int) -> list[int]:
    """Encoder block indices feeding the skips at levels 1..n-1 (deepest first), UNETR-style.

    Example:
        >>> unetr_layers(12, 4)  # blocks 9, 6, 3 (1-based) as in UNETR
        [8, 5, 2]
    """
    return [min(depth - 1, max(0, round(depth * (n_stages - lvl) / n_stages) - 1)) for lvl in range(1, n_stages)]


class _ProjectUp(nn.Module):
    """Token grid -> skip at a finer level: a chain of transposed convs (+ residual conv blocks),
    like MONAI's ``UnetrPrUpBlock`` but with a per-stage (anisotropic) factor."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, factors: list[list[int]], norm_name):
        super().__init__()
        mods: list[nn.Module] = [
            get_conv_layer(
                spatial_dims,
                in_ch,
                out_ch,
                kernel_size=factors[0],
                stride=factors[0],
                conv_only=True,
                is_transposed=True,
            )
        ]
        for f in factors[1:]:
            mods.append(
                nn.Sequential(
                    get_conv_layer(
                        spatial_dims, out_ch, out_ch, kernel_size=f, stride=f, conv_only=True, is_transposed=True
                    ),
                    UnetResBlock(spatial_dims, out_ch, out_ch, kernel_size=3, stride=1, norm_name=norm_name),
                )
            )
        self.blocks = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class UNETRHead(nn.Module):
    """UNETR decoder over a ViT's tokens (``head(features) -> B x K x (D x) H x W``).

    Args (all but ``embed_dim`` and ``num_classes`` keyword-only):
        embed_dim: encoder width.
        num_classes: output channels (background included).
        spatial_dims: 2 or 3.
        patch_size: the encoder's patch size per dim (powers of two; anisotropic allowed).
        in_chans: image channels (for the full-resolution skip).
        depth: encoder depth (to pick the intermediate layers).
        feature_size: channels at full resolution (doubling each level down).
        layers: explicit intermediate block indices, deepest first (``n - 1`` of them).
        norm_name: MONAI norm name (``instance``, ``batch``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        spatial_dims: int,
        patch_size: Sequence[int] | int,
        in_chans: int,
        depth: int,
        feature_size: int = 16,
        layers: Sequence[int] | None = None,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
    ):
        super().__init__()
        patch = [patch_size] * spatial_dims if isinstance(patch_size, int) else list(patch_size)
        self.factors = _stage_factors(patch)
        n = len(self.factors)
        self.n_stages = n
        skip_layers = list(layers) if layers is not None else unetr_layers(depth, n)
        if len(skip_layers) != n - 1:
            raise ConfigError(f"the UNETR head needs {n - 1} intermediate layers for patch {patch}, got {skip_layers}")
        self.skip_layers = skip_layers
        self.layers = sorted(set(skip_layers))  # what the encoder returns, in block order
        ch = [feature_size * 2 ** (n - lvl) for lvl in range(n + 1)]  # channels at level 0..n
        ch[0] = embed_dim
        self.spatial_dims = spatial_dims
        self.skips = nn.ModuleList(
            [_ProjectUp(spatial_dims, embed_dim, ch[lvl], self.factors[:lvl], norm_name) for lvl in range(1, n)]
        )
        self.image_skip = UnetrBasicBlock(
            spatial_dims, in_chans, feature_size, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block
        )
        self.ups = nn.ModuleList(
            [
                UnetrUpBlock(
                    spatial_dims,
                    ch[lvl - 1],
                    ch[lvl],
                    kernel_size=3,
                    upsample_kernel_size=self.factors[lvl - 1],
                    norm_name=norm_name,
                    res_block=res_block,
                )
                for lvl in range(1, n + 1)
            ]
        )
        self.out = UnetOutBlock(spatial_dims, feature_size, num_classes)

    @staticmethod
    def _grid(tokens: torch.Tensor, grid) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, features: dict) -> torch.Tensor:
        grid = tuple(features["grid"])
        image = features["image"]
        by_index = dict(zip(self.layers, features.get("layers") or []))
        missing = [i for i in self.skip_layers if i not in by_index]
        if missing:
            raise ConfigError(f"UNETR head: the encoder did not return layers {missing} (asked {self.layers})")
        x = self._grid(features["tokens"], grid)
        for lvl in range(1, self.n_stages + 1):
            if lvl < self.n_stages:
                skip = self.skips[lvl - 1](self._grid(by_index[self.skip_layers[lvl - 1]], grid))
            else:
                skip = self.image_skip(image)
            x = self.ups[lvl - 1](x, skip)
        return self.out(x)


def build_head(task: str, encoder, num_classes: int, head_options: dict | None = None) -> nn.Module:
    """The medical head for ``task``: :class:`UNETRHead` for segmentation, the core's LayerNorm +
    linear head on pooled tokens for (multi-label) classification.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", patch_embed="3d", img_size=32, patch_size=16, in_chans=1, depth=2,
        ...                     embed_dim=64, num_heads=2)
        >>> type(build_head("segmentation", enc, 2)).__name__
        'UNETRHead'
    """
    opts = dict(head_options or {})
    if task == "segmentation":
        patch = encoder.config["patch_size"]
        return UNETRHead(
            encoder.embed_dim,
            num_classes,
            spatial_dims=encoder.spatial_dims,
            patch_size=patch,
            in_chans=encoder.config["in_chans"] or 1,
            depth=encoder.depth,
            **opts,
        )
    return LinearHead(encoder.embed_dim, num_classes, **opts)
