"""The modality-agnostic ViT encoder over tokens, and its registry of sizes.

Example:
    >>> import torch
    >>> enc = build_encoder("vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> enc(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 16, 192])
    >>> tokens, layers = enc(torch.zeros(2, 1, 32, 32), return_layers=[0, 1])
    >>> len(layers), enc.embed(torch.zeros(2, 1, 32, 32)).shape
    (2, torch.Size([2, 192]))
    >>> rebuilt = build_encoder(**enc.config)  # the config is self-describing
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from domainfm.errors import ConfigError, DataError
from domainfm.models.patch_embed import _tuple, build_patch_embed
from domainfm.models.pos_embed import resample_pos_embed, sincos_pos_embed
from domainfm.registry import get_encoder_arch, register_encoder


@register_encoder("vit-tiny")
def vit_tiny() -> dict:
    return {"embed_dim": 192, "depth": 12, "num_heads": 3}


@register_encoder("vit-small")
def vit_small() -> dict:
    return {"embed_dim": 384, "depth": 12, "num_heads": 6}


@register_encoder("vit-base")
def vit_base() -> dict:
    return {"embed_dim": 768, "depth": 12, "num_heads": 12}


@register_encoder("vit-large")
def vit_large() -> dict:
    return {"embed_dim": 1024, "depth": 24, "num_heads": 16}


class ViTEncoder(nn.Module):
    """A ViT over the tokens of any patch embed (2D, 3D, wavelength), masking-aware.

    ``forward(x, wavelengths=None, ids_keep=None, return_layers=None)`` returns the final-normed
    patch tokens ``B x N x E`` (``N`` = kept tokens when ``ids_keep`` is given), plus the raw outputs
    of the blocks listed in ``return_layers`` when asked.
    """

    def __init__(self, name: str = "vit-tiny", patch_embed: str = "2d", img_size: int | Sequence[int] = 224,
                 patch_size: int | Sequence[int] = 16, in_chans: int | None = 3, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.patch_embed = build_patch_embed(patch_embed, embed_dim, patch_size, in_chans)
        self.spatial_dims = self.patch_embed.spatial_dims
        self.img_size = _tuple(img_size, self.spatial_dims)
        bad = [s for s, p in zip(self.img_size, self.patch_embed.patch_size) if s % p]
        if bad:
            raise ConfigError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_embed.patch_size}")
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_embed.patch_size))
        self.embed_dim = embed_dim
        self.depth = depth
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid)[None], persistent=False)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                                           norm_layer=partial(nn.LayerNorm, eps=1e-6)) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.config = {"name": name, "patch_embed": patch_embed, "img_size": list(self.img_size),
                       "patch_size": list(self.patch_embed.patch_size), "in_chans": self.patch_embed.in_chans,
                       "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                       "drop_path_rate": drop_path_rate}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Positional embedding for ``grid`` (the training grid's, interpolated when it differs)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        cached = self._pos_cache.get(tuple(grid))
        if cached is None or cached.device != self.pos_embed.device:
            cached = resample_pos_embed(self.pos_embed[0], self.grid, tuple(grid))[None]
            self._pos_cache[tuple(grid)] = cached
        return cached

    def grid_size(self, shape: Sequence[int]) -> tuple[int, ...]:
        return self.patch_embed.grid_size(shape)

    def tokenize(self, x: torch.Tensor, wavelengths=None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Patch tokens with positions added, and the token grid."""
        grid = self.grid_size(x.shape)
        tokens = self.patch_embed(x, wavelengths=wavelengths)
        return tokens + self.pos_embed_for(grid).to(tokens.dtype), grid

    def forward(self, x: torch.Tensor, wavelengths=None, ids_keep: torch.Tensor | None = None,
                return_layers: Sequence[int] | None = None):
        tokens, _ = self.tokenize(x, wavelengths)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        wanted = set(return_layers or ())
        bad = [i for i in wanted if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"return_layers {sorted(bad)} out of range for an encoder of depth {self.depth}")
        layers = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                layers.append(tokens)
        tokens = self.norm(tokens)
        if return_layers is None:
            return tokens
        return tokens, layers

    def forward_features(self, x: torch.Tensor, wavelengths=None, layers: Sequence[int] | None = None) -> dict:
        """Everything a head may need: final tokens, chosen intermediate layers, grid, pooled vector."""
        tokens, inter = self.forward(x, wavelengths=wavelengths, return_layers=list(layers or []))
        return {"tokens": tokens, "layers": inter, "grid": self.grid_size(x.shape), "pooled": tokens.mean(1),
                "image": x, "wavelengths": wavelengths}

    def embed(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """One vector per image: the mean of the final patch tokens (``B x E``)."""
        return self.forward(x, wavelengths=wavelengths).mean(1)

    def check_input(self, x: torch.Tensor, path=None) -> None:
        """Raise a clear error if ``x`` does not fit this encoder (dims, channels)."""
        if x.ndim != self.spatial_dims + 2:
            raise DataError(path, f"the model takes {self.spatial_dims}D inputs (B x C x {'D x ' if self.spatial_dims == 3 else ''}H x W) "
                                  f"but got shape {tuple(x.shape)}")
        if self.patch_embed.in_chans is not None and x.shape[1] != self.patch_embed.in_chans:
            raise DataError(path, f"the model was trained on {self.patch_embed.in_chans} channels, the data has {x.shape[1]}")


def build_encoder(name: str = "vit-tiny", patch_embed: str = "2d", img_size=224, patch_size=16, in_chans: int | None = 3,
                  depth: int | None = None, embed_dim: int | None = None, num_heads: int | None = None, **kwargs) -> ViTEncoder:
    """Build a registered encoder size with a patch embed; size overrides (depth, embed_dim, heads) allowed.

    Example:
        >>> enc = build_encoder("vit-small", patch_embed="3d", img_size=(32, 64, 64), patch_size=(4, 16, 16), in_chans=1)
        >>> enc.grid
        (8, 4, 4)
    """
    arch = dict(get_encoder_arch(name)())
    for key, value in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)):
        if value is not None:
            arch[key] = value
    return ViTEncoder(name=name, patch_embed=patch_embed, img_size=img_size, patch_size=patch_size,
                      in_chans=in_chans, **arch, **kwargs)
