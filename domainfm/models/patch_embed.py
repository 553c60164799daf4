"""Token makers: fixed-channel 2D, anisotropic 3D, and wavelength-conditioned (channel-adaptive).

Each patch embed maps an image batch to tokens ``B x N x E`` and knows how to cut the same image
into per-patch pixel vectors (``patchify``), which the MAE objective reconstructs.

Example:
    >>> import torch
    >>> pe = PatchEmbed2d(in_chans=3, patch_size=8, embed_dim=32)
    >>> pe(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 16, 32])
    >>> pe3 = PatchEmbed3d(in_chans=1, patch_size=(4, 8, 8), embed_dim=32)
    >>> pe3(torch.zeros(1, 1, 16, 32, 32)).shape
    torch.Size([1, 64, 32])
    >>> pw = WavelengthPatchEmbed(patch_size=8, embed_dim=32)
    >>> pw(torch.zeros(2, 4, 32, 32), wavelengths=[0.49, 0.56, 0.665, 0.842]).shape
    torch.Size([2, 16, 32])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainfm.errors import DataError
from domainfm.registry import get_patch_embed, register_patch_embed


def _tuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values, got {value}")
        return tuple(int(v) for v in value)
    return (int(value),) * n


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``tokens`` (``B x N x E``) at the indices ``ids`` (``B x K``): ``B x K x E``.

    Example:
        >>> gather_tokens(torch.arange(6.0).reshape(1, 3, 2), torch.tensor([[2, 0]])).tolist()
        [[[4.0, 5.0], [0.0, 1.0]]]
    """
    return torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))


class _PatchEmbedBase(nn.Module):
    spatial_dims = 2
    kind = "2d"

    def grid_size(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid for an input of shape ``B x C x (D x) H x W``; raises if not divisible."""
        spatial = tuple(shape[-self.spatial_dims :])
        if len(shape) != self.spatial_dims + 2:
            raise DataError(
                None,
                f"a {self.kind} patch embed expects {self.spatial_dims + 2}D input "
                f"(B x C x {'D x ' if self.spatial_dims == 3 else ''}H x W), got shape {tuple(shape)}",
            )
        bad = [s for s, p in zip(spatial, self.patch_size) if s % p]
        if bad:
            raise DataError(None, f"input size {spatial} is not divisible by the patch size {self.patch_size}")
        return tuple(s // p for s, p in zip(spatial, self.patch_size))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x (D x) H x W`` -> ``B x N x (C * prod(patch))`` with channel as the slowest axis."""
        grid = self.grid_size(x.shape)
        b, c = x.shape[:2]
        if self.spatial_dims == 2:
            (gh, gw), (ph, pw) = grid, self.patch_size
            x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        else:
            (gd, gh, gw), (pd, ph, pw) = grid, self.patch_size
            x = x.reshape(b, c, gd, pd, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, math.prod(grid), -1)

    def forward_kept(self, x: torch.Tensor, ids_keep: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """Tokens of the patches ``ids_keep`` (``B x K`` indices into the ``N`` patches) only: ``forward(x)``
        gathered at ``ids_keep``. Embeds with a per-patch linear kernel override it to embed only those patches.

        Example:
            >>> pe = PatchEmbed2d(in_chans=1, patch_size=4, embed_dim=8)
            >>> x, keep = torch.rand(2, 1, 8, 8), torch.tensor([[0, 3], [2, 1]])
            >>> torch.allclose(pe.forward_kept(x, keep), gather_tokens(pe(x), keep), atol=1e-6)
            True
        """
        return gather_tokens(self(x, wavelengths=wavelengths), ids_keep)

    def _linear_kept(self, x: torch.Tensor, ids_keep: torch.Tensor, kernel: torch.Tensor, bias) -> torch.Tensor:
        # a non-overlapping conv is a linear map of each patch's pixels (kernel E x C x patch, flattened in
        # patchify's channel-slowest order), so only the kept patches need the matmul
        patches = gather_tokens(self.patchify(x), ids_keep)
        kernel = kernel.reshape(kernel.shape[0], -1).to(patches.dtype)
        return F.linear(patches, kernel, None if bias is None else bias.to(patches.dtype))

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, ...], channels: int) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        b = patches.shape[0]
        if self.spatial_dims == 2:
            (gh, gw), (ph, pw) = grid, self.patch_size
            x = patches.reshape(b, gh, gw, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
            return x.reshape(b, channels, gh * ph, gw * pw)
        (gd, gh, gw), (pd, ph, pw) = grid, self.patch_size
        x = patches.reshape(b, gd, gh, gw, channels, pd, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, channels, gd * pd, gh * ph, gw * pw)


class PatchEmbedConv(_PatchEmbedBase):
    """Non-overlapping patches of a fixed-channel image, ``spatial_dims``-parameterized (2 or 3).

    In 3D the patch may be anisotropic, e.g. ``(4, 16, 16)`` for thick-slice CT.
    """

    def __init__(self, spatial_dims: int, in_chans: int, patch_size: int | Sequence[int], embed_dim: int):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.kind = "2d" if spatial_dims == 2 else "3d"
        self.in_chans = int(in_chans)
        self.patch_size = _tuple(patch_size, spatial_dims)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(self.in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        w = self.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        self.grid_size(x.shape)
        if x.shape[1] != self.in_chans:
            raise DataError(None, f"the model expects {self.in_chans} input channels, got {x.shape[1]}")
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_kept(self, x: torch.Tensor, ids_keep: torch.Tensor, wavelengths=None) -> torch.Tensor:
        self.grid_size(x.shape)
        if x.shape[1] != self.in_chans:
            raise DataError(None, f"the model expects {self.in_chans} input channels, got {x.shape[1]}")
        return self._linear_kept(x, ids_keep, self.proj.weight, self.proj.bias)

    def pixel_dim(self, channels: int) -> int:
        return channels * math.prod(self.patch_size)


class PatchEmbed2d(PatchEmbedConv):
    """``patch_size`` x ``patch_size`` patches of a ``C x H x W`` image."""

    def __init__(self, in_chans: int = 3, patch_size: int | Sequence[int] = 16, embed_dim: int = 768):
        super().__init__(2, in_chans, patch_size, embed_dim)


class PatchEmbed3d(PatchEmbedConv):
    """``(pd, ph, pw)`` patches of a ``C x D x H x W`` volume."""

    def __init__(self, in_chans: int = 1, patch_size: int | Sequence[int] = 16, embed_dim: int = 768):
        super().__init__(3, in_chans, patch_size, embed_dim)


def wavelength_features(wavelengths: torch.Tensor, dim: int) -> torch.Tensor:
    """Fourier features of central wavelengths (µm), log-scaled so 0.4–15 µm spread evenly."""
    x = torch.log(wavelengths.float().clamp_min(1e-3))[:, None]
    freqs = torch.exp(torch.linspace(0.0, math.log(100.0), dim // 2, device=x.device))[None]
    return torch.cat([torch.sin(x * freqs), torch.cos(x * freqs)], dim=1)


class WavelengthHyperNet(nn.Module):
    """Maps each band's central wavelength to a weight vector of size ``out_dim`` (DOFA-style)."""

    def __init__(self, out_dim: int, hidden_dim: int = 128, feat_dim: int = 64):
        super().__init__()
        self.feat_dim = feat_dim
        self.mlp = nn.Sequential(
            nn.Linear(feat_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU()
        )
        # A light transformer layer lets each band's weights depend on the whole band set.
        self.mix = nn.TransformerEncoderLayer(
            hidden_dim, nhead=4, dim_feedforward=2 * hidden_dim, batch_first=True, dropout=0.0
        )
        self.out = nn.Linear(hidden_dim, out_dim)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, wavelengths: torch.Tensor) -> torch.Tensor:
        h = self.mlp(wavelength_features(wavelengths, self.feat_dim))
        h = self.mix(h[None])[0]
        return self.out(h)


def as_wavelength_tensor(wavelengths, channels: int, device) -> torch.Tensor:
    if wavelengths is None:
        raise DataError(None, "a wavelength patch embed needs `wavelengths=[...]` (µm, one per channel)")
    wl = torch.as_tensor(wavelengths, dtype=torch.float32, device=device).reshape(-1)
    if wl.numel() != channels:
        raise DataError(None, f"{wl.numel()} wavelengths given for an input with {channels} channels")
    if not bool(torch.isfinite(wl).all()) or bool((wl <= 0).any()):
        raise DataError(None, f"wavelengths must be positive micrometres, got {wl.tolist()}")
    return wl


class WavelengthPatchEmbed(_PatchEmbedBase):
    """Channel-adaptive 2D patch embed: the projection for each band is generated from its wavelength.

    One model takes any number of bands in any order (Sentinel-2, Landsat, RGB...). Called as
    ``embed(x, wavelengths=[0.49, 0.56, ...])`` with wavelengths in micrometres.

    With ``table_size > 0`` the embed also holds a table of per-wavelength kernels (``table_wavelengths``,
    ``table_kernels``: imported weights, e.g. an RGB model's kernels at 0.49/0.56/0.665 µm). A band's kernel
    is then the table's kernel, interpolated linearly in log-wavelength between table entries and taken from
    the nearest entry outside their range, plus the generated kernel as a residual. Imports zero the
    generator's last layer, so on the table's own bands the embed reproduces the source model exactly.

    Example:
        >>> pw = WavelengthPatchEmbed(patch_size=4, embed_dim=8, table_size=2)
        >>> _ = pw.table_wavelengths.copy_(torch.tensor([0.5, 0.6]))
        >>> pw.table_kernel([0.5, 0.55]).shape
        torch.Size([2, 8, 4, 4])
    """

    kind = "wavelength"
    spatial_dims = 2

    def __init__(
        self,
        patch_size: int | Sequence[int] = 16,
        embed_dim: int = 768,
        hidden_dim: int = 128,
        in_chans=None,
        table_size: int = 0,
    ):
        super().__init__()
        self.in_chans = None
        self.patch_size = _tuple(patch_size, 2)
        self.embed_dim = embed_dim
        self.weight_gen = WavelengthHyperNet(embed_dim * math.prod(self.patch_size), hidden_dim)
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        self.table_size = int(table_size)
        if self.table_size:
            self.register_buffer("table_wavelengths", torch.linspace(0.4, 1.0, self.table_size))
            self.table_kernels = nn.Parameter(torch.zeros(self.table_size, embed_dim, *self.patch_size))

    def table_kernel(self, wavelengths) -> torch.Tensor:
        """``C x E x ph x pw`` kernels from the table for the given wavelengths (see the class doc)."""
        wl = torch.as_tensor(wavelengths, dtype=torch.float32, device=self.table_kernels.device).reshape(-1)
        nodes, order = torch.sort(torch.log(self.table_wavelengths.float()))
        kernels = self.table_kernels[order]
        x = torch.log(wl).clamp(nodes[0], nodes[-1])
        hi = (
            torch.searchsorted(nodes, x).clamp(1, max(len(nodes) - 1, 1))
            if len(nodes) > 1
            else torch.zeros_like(x, dtype=torch.long)
        )
        lo = (hi - 1).clamp_min(0)
        span = (nodes[hi] - nodes[lo]).clamp_min(1e-12)
        t = ((x - nodes[lo]) / span).clamp(0, 1) if len(nodes) > 1 else torch.zeros_like(x)
        t = t.reshape(-1, 1, 1, 1).to(kernels.dtype)
        return kernels[lo] * (1 - t) + kernels[hi] * t

    def weights(self, wavelengths, channels: int, device) -> torch.Tensor:
        wl = as_wavelength_tensor(wavelengths, channels, device)
        w = self.weight_gen(wl)  # C x (E * ph * pw)
        w = w.reshape(channels, self.embed_dim, *self.patch_size) * (1.0 / math.sqrt(channels))
        if self.table_size:
            w = w + self.table_kernel(wl)
        return w.transpose(0, 1)

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        self.grid_size(x.shape)
        w = self.weights(wavelengths, x.shape[1], x.device).to(x.dtype)
        out = F.conv2d(x, w, self.bias.to(x.dtype), stride=self.patch_size)
        return out.flatten(2).transpose(1, 2)

    def forward_kept(self, x: torch.Tensor, ids_keep: torch.Tensor, wavelengths=None) -> torch.Tensor:
        self.grid_size(x.shape)
        w = self.weights(wavelengths, x.shape[1], x.device)
        return self._linear_kept(x, ids_keep, w, self.bias)

    def pixel_dim(self, channels: int) -> int:
        return channels * math.prod(self.patch_size)


class PixelHead(nn.Module):
    """Linear map from decoder tokens to patch pixels for fixed-channel embeds (MAE prediction head)."""

    def __init__(self, dim: int, pixel_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, pixel_dim)

    def forward(self, tokens: torch.Tensor, wavelengths=None, channels: int | None = None) -> torch.Tensor:
        return self.proj(tokens)


class WavelengthPixelHead(nn.Module):
    """Per-band pixel predictions whose weights are generated from each band's wavelength,
    so MAE works for any band set."""

    def __init__(self, dim: int, patch_size: tuple[int, ...], hidden_dim: int = 128):
        super().__init__()
        self.dim = dim
        self.n_pix = math.prod(patch_size)
        self.weight_gen = WavelengthHyperNet(dim * self.n_pix + self.n_pix, hidden_dim)

    def forward(self, tokens: torch.Tensor, wavelengths=None, channels: int | None = None) -> torch.Tensor:
        wl = as_wavelength_tensor(wavelengths, channels, tokens.device)
        gen = self.weight_gen(wl)  # C x (dim*P + P)
        w = gen[:, : self.dim * self.n_pix].reshape(len(wl), self.dim, self.n_pix).to(tokens.dtype)
        b = gen[:, self.dim * self.n_pix :].to(tokens.dtype)  # C x P
        out = torch.einsum("bnd,cdp->bncp", tokens, w) + b
        return out.reshape(tokens.shape[0], tokens.shape[1], -1)


@register_patch_embed("2d")
def _conv_2d(embed_dim: int, patch_size, in_chans: int | None = None, **_) -> _PatchEmbedBase:
    return PatchEmbed2d(in_chans or 3, patch_size, embed_dim)


@register_patch_embed("3d", spatial_dims=3)
def _conv_3d(embed_dim: int, patch_size, in_chans: int | None = None, **_) -> _PatchEmbedBase:
    return PatchEmbed3d(in_chans or 1, patch_size, embed_dim)


@register_patch_embed("wavelength")
def _wavelength(
    embed_dim: int, patch_size, in_chans: int | None = None, wavelength_table: int = 0, **_
) -> _PatchEmbedBase:
    return WavelengthPatchEmbed(patch_size, embed_dim, table_size=wavelength_table)


def build_patch_embed(
    kind: str, embed_dim: int, patch_size, in_chans: int | None = None, wavelength_table: int = 0
) -> _PatchEmbedBase:
    """Build a registered patch embed: ``"2d"``, ``"3d"``, ``"wavelength"`` or one a plugin registered
    with :func:`domainfm.registry.register_patch_embed` (``wavelength_table``: number of per-wavelength
    kernels of the wavelength embed, see :class:`WavelengthPatchEmbed`; other embeds ignore it).

    Example:
        >>> build_patch_embed("3d", 32, (4, 8, 8), in_chans=1).grid_size((1, 1, 16, 32, 32))
        (4, 4, 4)
    """
    return get_patch_embed(kind)(embed_dim, patch_size, in_chans, wavelength_table=wavelength_table)


def build_pixel_head(patch_embed: _PatchEmbedBase, dim: int, channels: int | None) -> nn.Module:
    """The MAE prediction head that matches a patch embed."""
    if patch_embed.kind == "wavelength":
        return WavelengthPixelHead(dim, patch_embed.patch_size)
    return PixelHead(dim, patch_embed.pixel_dim(channels or patch_embed.in_chans))
