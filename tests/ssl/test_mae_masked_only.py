"""MAE computes only what its loss reads (kept patches embedded, masked patches decoded last), with the
same loss, gradients and masked predictions as the full computation."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.vision_transformer import Block

from domainfm.models import build_encoder
from domainfm.models.patch_embed import gather_tokens
from domainfm.ssl.mae import MAE, block_at, random_masking


def _full_forward(mae: MAE, x: torch.Tensor, wavelengths=None):
    """The reference: every patch embedded, decoded and predicted, loss averaged over the masked ones."""
    enc = mae.encoder
    grid = enc.grid_size(x.shape)
    n = len(enc.pos_embed[0])
    ids_keep, mask, ids_restore = random_masking(x.shape[0], n, mae.mask_ratio, x.device)
    tokens, _ = enc.tokenize(x, wavelengths)
    tokens = gather_tokens(tokens, ids_keep)
    for blk in enc.blocks:
        tokens = blk(tokens)
    latent = enc.norm(tokens)
    d = mae.decoder_embed(latent)
    d = torch.cat([d, mae.mask_token.expand(d.shape[0], n - d.shape[1], -1)], dim=1)
    d = gather_tokens(d, ids_restore) + mae.decoder_pos(grid, d.device)
    for blk in mae.decoder_blocks:
        d = blk(d)
    pred = mae.pixel_head(mae.decoder_norm(d), wavelengths=wavelengths, channels=x.shape[1])
    per_patch = ((pred - mae.targets(x)) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


@pytest.mark.parametrize(
    "kind,shape,wavelengths",
    [("2d", (2, 3, 16, 16), None), ("3d", (2, 1, 16, 16, 16), None), ("wavelength", (2, 2, 16, 16), [0.49, 0.83])],
)
def test_mae_matches_the_full_computation(kind, shape, wavelengths):
    torch.manual_seed(0)
    enc = build_encoder(
        "vit-tiny", patch_embed=kind, in_chans=shape[1], img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2
    )
    mae = MAE(enc, mask_ratio=0.75, decoder_dim=32, decoder_depth=2, decoder_heads=2)
    x = torch.rand(shape)
    batch = {"image": x} if wavelengths is None else {"image": x, "wavelengths": wavelengths}
    torch.manual_seed(1)
    out = mae(batch)
    grads = torch.autograd.grad(out["loss"], list(mae.parameters()), allow_unused=True)
    torch.manual_seed(1)
    ref_loss, ref_pred, ref_mask = _full_forward(mae, x, wavelengths)
    ref_grads = torch.autograd.grad(ref_loss, list(mae.parameters()), allow_unused=True)
    assert torch.equal(out["mask"], ref_mask)
    assert torch.allclose(out["loss"], ref_loss, rtol=1e-4, atol=1e-6)
    m = ref_mask.bool()
    assert torch.allclose(out["pred"][m], ref_pred[m].detach(), rtol=1e-4, atol=1e-6)
    assert not out["pred"][~m].any()  # visible patches are not predicted
    for (name, _), g, r in zip(mae.named_parameters(), grads, ref_grads):
        assert (g is None) == (r is None) or float(r.abs().max()) == 0.0, name
        if g is not None and r is not None:
            assert torch.allclose(g, r, rtol=1e-4, atol=1e-6), name


def test_block_at_equals_the_block_at_those_tokens():
    torch.manual_seed(0)
    blk = Block(32, 4, qkv_bias=True)
    x = torch.randn(3, 10, 32)
    ids = torch.stack([torch.randperm(10)[:6] for _ in range(3)])
    assert torch.allclose(block_at(blk, x, ids), gather_tokens(blk(x), ids), atol=1e-5)


def test_kept_patch_embedding_equals_the_full_embedding_gathered():
    torch.manual_seed(0)
    ids = torch.tensor([[0, 5, 9], [15, 2, 7]])
    for kind, shape, wl in (("2d", (2, 3, 16, 16), None), ("wavelength", (2, 2, 16, 16), [0.49, 0.83])):
        pe = build_encoder(
            "vit-tiny",
            patch_embed=kind,
            in_chans=shape[1],
            img_size=16,
            patch_size=4,
            depth=1,
            embed_dim=32,
            num_heads=2,
        ).patch_embed
        x = torch.rand(shape)
        kept = pe.forward_kept(x, ids, wavelengths=wl)
        assert torch.allclose(kept, gather_tokens(pe(x, wavelengths=wl), ids), atol=1e-6)
    pe3 = build_encoder(
        "vit-tiny",
        patch_embed="3d",
        in_chans=1,
        img_size=(8, 16, 16),
        patch_size=(2, 4, 4),
        depth=1,
        embed_dim=32,
        num_heads=2,
    ).patch_embed
    x = torch.rand(2, 1, 8, 16, 16)
    assert torch.allclose(pe3.forward_kept(x, ids), gather_tokens(pe3(x), ids), atol=1e-6)


@pytest.mark.parametrize("mask_ratio,decoder_depth", [(0.0, 1), (0.75, 0)])
def test_no_masked_patch_or_no_decoder_block_still_trains(mask_ratio, decoder_depth):
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    mae = MAE(enc, mask_ratio=mask_ratio, decoder_dim=32, decoder_depth=decoder_depth, decoder_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statistics of zero masked patches
        out = mae({"image": torch.rand(2, 1, 16, 16)})
    out["loss"].backward()
    assert out["pred"].shape == (2, 4, 64)
    assert (float(out["loss"]) == 0.0) == (mask_ratio == 0.0)
