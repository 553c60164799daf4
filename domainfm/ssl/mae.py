"""Masked autoencoding (MAE) for any patch embed: 2D, 3D or wavelength-conditioned.

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> mae = MAE(enc, mask_ratio=0.75, decoder_dim=64, decoder_depth=1, decoder_heads=2)
    >>> out = mae({"image": torch.rand(2, 1, 32, 32)})
    >>> out["loss"].ndim, out["mask"].shape
    (0, torch.Size([2, 16]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.tensor import DTensor

from domainfm.errors import ConfigError
from domainfm.models.attention import Attention, attention
from domainfm.models.encoder import ViTEncoder
from domainfm.models.patch_embed import build_pixel_head, gather_tokens
from domainfm.models.pos_embed import sincos_pos_embed


@dataclass
class MAEOptions:
    """``objective.*`` of ``mae`` (and of the objectives combining it): masking and the light decoder.

    Example:
        >>> MAEOptions(mask_ratio=1.0).check()
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: objective.mask_ratio must be in [0, 1), got 1.0
    """

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4

    def check(self) -> None:
        """Values out of range, as one line naming the key (called when a config is read)."""
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"objective.mask_ratio must be in [0, 1), got {self.mask_ratio}")


def random_masking(
    batch: int, n_tokens: int, mask_ratio: float, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by shuffling (as in MAE).

    Returns ``ids_keep`` (B x K), ``mask`` (B x N, 1 = masked) and ``ids_restore`` (B x N).
    """
    n_keep = max(1, int(round(n_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n_tokens, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n_tokens, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def block_at(block: Block, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``block(x)`` at the tokens ``ids`` (``B x M``) only, i.e. ``gather_tokens(block(x), ids)``.

    Every token is a key and a value, but only the chosen ones are queries, so the query projection,
    output projection and MLP of the other tokens are never computed. MAE's last decoder block needs
    only the masked tokens (the loss reads nothing else), which saves a quarter of that block at 75% masking.

    Example:
        >>> blk = Block(16, 2, qkv_bias=True).eval()
        >>> x, ids = torch.randn(2, 5, 16), torch.tensor([[0, 4], [3, 1]])
        >>> torch.allclose(block_at(blk, x, ids), gather_tokens(blk(x), ids), atol=1e-5)
        True
    """
    attn = block.attn
    if getattr(attn, "gate", None) is not None or not hasattr(attn, "attn_dim"):  # a layout this does not know
        return gather_tokens(block(x), ids)
    if isinstance(attn.qkv.weight, DTensor):  # sharded (FSDP2): only block.forward gathers the weights
        return gather_tokens(block(x), ids)
    b, n, _ = x.shape
    m, d, heads = ids.shape[1], attn.attn_dim, attn.num_heads
    h = block.norm1(x)
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(gather_tokens(h, ids), w[:d], None if bias is None else bias[:d])
    kv = F.linear(h, w[d:], None if bias is None else bias[d:])
    q = attn.q_norm(q.reshape(b, m, heads, d // heads).transpose(1, 2))
    k, v = kv.reshape(b, n, 2, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    drop = attn.attn_drop.p if block.training else 0.0
    o = attention(q, attn.k_norm(k), v, dropout_p=drop, scale=attn.scale)
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(b, m, d))))
    y = gather_tokens(x, ids) + block.drop_path1(block.ls1(o))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


class MAE(nn.Module):
    """Masked autoencoder: encode visible tokens, decode all with a light ViT, predict masked pixels.

    The loss is the mean squared error on masked patches; with ``norm_pix_loss`` the targets are
    normalized per patch and per channel (which works for CT intensities and reflectances alike).
    Only the masked patches are predicted: the output's ``pred`` (``B x N x (C*P)``, detached) holds
    them and zeros at the visible patches.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.decoder_dim = decoder_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(
                    decoder_dim,
                    decoder_heads,
                    4.0,
                    qkv_bias=True,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                    attn_layer=Attention,
                )
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pixel_head = build_pixel_head(encoder.patch_embed, decoder_dim, encoder.patch_embed.in_chans)
        self._pos: dict[tuple, torch.Tensor] = {}

    def decoder_pos(self, grid: tuple[int, ...], device) -> torch.Tensor:
        key = (tuple(grid), str(device))
        if key not in self._pos:
            self._pos[key] = sincos_pos_embed(self.decoder_dim, grid)[None].to(device)
        return self._pos[key]

    def targets(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch pixel targets ``B x N x (C*P)``, normalized per patch and channel if configured
        (``B x M x (C*P)`` for the patches ``ids``, ``B x M``, only)."""
        patches = self.encoder.patch_embed.patchify(x)
        if ids is not None:
            patches = gather_tokens(patches, ids)
        if not self.norm_pix_loss:
            return patches
        b, n, _ = patches.shape
        p = patches.reshape(b, n, x.shape[1], patches.shape[-1] // x.shape[1])
        mean, var = p.mean(-1, keepdim=True), p.var(-1, keepdim=True)
        return ((p - mean) / (var + 1e-6).sqrt()).reshape(patches.shape)

    def forward(self, batch: dict, image: torch.Tensor | None = None) -> dict:
        x = batch["image"] if image is None else image
        wavelengths = batch.get("wavelengths")
        grid = self.encoder.grid_size(x.shape)
        n = math.prod(grid)
        ids_keep, mask, ids_restore = random_masking(x.shape[0], n, self.mask_ratio, x.device)
        latent = self.encoder(x, wavelengths=wavelengths, ids_keep=ids_keep)
        d = self.decoder_embed(latent)
        fill = self.mask_token.to(d.dtype).expand(d.shape[0], n - d.shape[1], -1)
        d = torch.cat([d, fill], dim=1)
        d = gather_tokens(d, ids_restore)
        d = d + self.decoder_pos(grid, d.device).to(d.dtype)
        # the loss reads the masked patches only: the last decoder block, the pixel head and the targets
        # are computed for them alone (ids_masked: where the masked tokens sit, B x M)
        ids_masked = torch.argsort(ids_restore, dim=1)[:, ids_keep.shape[1] :]
        for block in self.decoder_blocks[:-1]:
            d = block(d)
        if len(self.decoder_blocks):
            d = block_at(self.decoder_blocks[-1], d, ids_masked)
        else:
            d = gather_tokens(d, ids_masked)
        pred_masked = self.pixel_head(self.decoder_norm(d), wavelengths=wavelengths, channels=x.shape[1])
        target = self.targets(x, ids_masked)
        per_patch = ((pred_masked.float() - target.float()) ** 2).mean(-1)
        loss = per_patch.sum() / max(per_patch.numel(), 1)
        pred = pred_masked.new_zeros(x.shape[0], n, pred_masked.shape[-1])
        pred.scatter_(1, ids_masked[..., None].expand(-1, -1, pred.shape[-1]), pred_masked.detach())
        return {
            "loss": loss,
            "mae_loss": loss.detach(),
            "pred": pred,
            "mask": mask,
            "embeddings": latent.mean(1).detach(),
        }

    @torch.no_grad()
    def reconstruct(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masked_input, reconstruction, original)`` images for a picture of what MAE learned.

        The reconstruction pastes predicted patches (de-normalized with each patch's own statistics
        when ``norm_pix_loss``) over the visible ones.
        """
        x = batch["image"]
        out = self.forward(batch)
        pe = self.encoder.patch_embed
        grid = pe.grid_size(x.shape)
        b, c = x.shape[:2]
        patches = pe.patchify(x).reshape(b, -1, c, math.prod(pe.patch_size))
        pred = out["pred"].float().reshape(b, -1, c, math.prod(pe.patch_size))
        if self.norm_pix_loss:
            mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        m = out["mask"][..., None, None]
        recon = patches * (1 - m) + pred * m
        masked = patches * (1 - m)
        to_img = lambda p: pe.unpatchify(p.reshape(b, p.shape[1], -1), grid, c)  # noqa: E731
        return to_img(masked), to_img(recon), x
