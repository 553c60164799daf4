"""Patch embeds, positional embeddings and the encoder: shapes, round trips, masking, errors."""

import pytest
import torch

from domainfm import build_encoder
from domainfm.errors import ConfigError, DataError
from domainfm.models.patch_embed import PatchEmbed2d, PatchEmbed3d, WavelengthPatchEmbed
from domainfm.models.pos_embed import resample_pos_embed, sincos_pos_embed


@pytest.mark.parametrize(
    "name,dim,depth", [("vit-tiny", 192, 12), ("vit-small", 384, 12), ("vit-base", 768, 12), ("vit-large", 1024, 24)]
)
def test_registered_sizes(name, dim, depth):
    enc = build_encoder(name, in_chans=1, img_size=16, patch_size=8)
    assert enc.embed_dim == dim and enc.depth == depth


def test_2d_tokens_and_layers():
    enc = build_encoder(
        "vit-tiny", patch_embed="2d", in_chans=3, img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3
    )
    x = torch.randn(2, 3, 32, 32)
    tokens, layers = enc(x, return_layers=[0, 2])
    assert tokens.shape == (2, 16, 48) and [t.shape for t in layers] == [(2, 16, 48)] * 2
    feats = enc.forward_features(x, layers=[1])
    assert feats["grid"] == (4, 4) and feats["pooled"].shape == (2, 48)
    assert torch.allclose(feats["pooled"], enc.embed(x), atol=1e-6)


def test_3d_anisotropic_patches():
    enc = build_encoder(
        "vit-tiny",
        patch_embed="3d",
        in_chans=2,
        img_size=(16, 32, 32),
        patch_size=(4, 8, 8),
        depth=1,
        embed_dim=32,
        num_heads=2,
    )
    assert enc(torch.randn(1, 2, 16, 32, 32)).shape == (1, 4 * 4 * 4, 32)
    assert enc.grid == (4, 4, 4)


def test_wavelength_embed_any_band_set():
    enc = build_encoder(
        "vit-tiny",
        patch_embed="wavelength",
        in_chans=None,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
    )
    s2 = enc(torch.randn(2, 4, 32, 32), wavelengths=[0.49, 0.56, 0.665, 0.842])
    rgb = enc(torch.randn(2, 3, 32, 32), wavelengths=[0.665, 0.56, 0.49])
    assert s2.shape == rgb.shape == (2, 16, 32)
    # the projection really depends on the wavelengths
    x = torch.randn(1, 2, 32, 32)
    assert not torch.allclose(enc(x, wavelengths=[0.49, 0.56]), enc(x, wavelengths=[1.6, 2.2]))
    with pytest.raises(DataError, match="2 wavelengths given for an input with 3 channels"):
        enc(torch.randn(1, 3, 32, 32), wavelengths=[0.49, 0.56])
    with pytest.raises(DataError, match="needs `wavelengths"):
        enc(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "pe,shape",
    [
        (PatchEmbed2d(2, 4, 8), (2, 2, 16, 12)),
        (PatchEmbed3d(1, (2, 4, 4), 8), (2, 1, 4, 8, 8)),
        (WavelengthPatchEmbed(4, 8), (2, 3, 8, 8)),
    ],
)
def test_patchify_round_trip(pe, shape):
    x = torch.randn(shape)
    p = pe.patchify(x)
    grid = pe.grid_size(shape)
    assert p.shape[1] == torch.tensor(grid).prod()
    assert torch.equal(pe.unpatchify(p, grid, shape[1]), x)


def test_pos_embed_interpolates_to_new_grid():
    pe = sincos_pos_embed(32, (4, 4))
    assert torch.allclose(pe.norm(dim=1), pe.norm(dim=1)[0].expand(16), atol=1e-5)
    assert resample_pos_embed(pe, (4, 4), (4, 4)) is pe
    assert resample_pos_embed(pe, (4, 4), (6, 8)).shape == (48, 32)
    assert sincos_pos_embed(48, (2, 3, 4)).shape == (24, 48)
    enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    assert enc(torch.randn(1, 1, 64, 48)).shape == (1, 48, 32)


def test_ids_keep_selects_tokens():
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(2, 1, 16, 16)
    out = enc(x, ids_keep=torch.tensor([[0, 3], [1, 2]]))
    assert out.shape == (2, 2, 32)


def test_encoder_input_errors():
    enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(DataError, match="not divisible by the patch size"):
        enc(torch.randn(1, 1, 30, 32))
    with pytest.raises(DataError, match="expects 1 input channels, got 3"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(DataError, match="4D input"):
        enc(torch.randn(1, 1, 8, 32, 32))
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown encoder 'vit-huge'"):
        build_encoder("vit-huge")


def test_config_rebuilds_identical_model():
    torch.manual_seed(0)
    enc = build_encoder(
        "vit-tiny", patch_embed="3d", in_chans=1, img_size=16, patch_size=(4, 8, 8), depth=1, embed_dim=32, num_heads=2
    )
    twin = build_encoder(**enc.config)
    twin.load_state_dict(enc.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(enc(x), twin(x))


def test_prefix_tokens_are_excluded_from_patch_tokens_and_pool_by_class_token():

    enc = build_encoder(
        "vit-tiny",
        in_chans=1,
        img_size=16,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
        class_token=True,
        num_registers=4,
    )
    x = torch.randn(2, 1, 16, 16)
    feats = enc.forward_features(x, layers=[0])
    assert feats["tokens"].shape == (2, 4, 32) and feats["prefix"].shape == (2, 5, 32)
    assert feats["layers"][0].shape == (2, 4, 32)
    assert torch.allclose(enc.embed(x), feats["cls"], atol=1e-6)
    rebuilt = build_encoder(**enc.config)
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.allclose(rebuilt.embed(x), enc.embed(x), atol=1e-6)
    avg = build_encoder(**{**enc.config, "global_pool": "avg"})
    avg.load_state_dict(enc.state_dict())
    assert torch.allclose(avg.embed(x), feats["tokens"].mean(1), atol=1e-5)


def test_token_mask_replaces_masked_patch_embeddings():

    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(2, 1, 16, 16)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 0] = True
    mask_token = torch.full((32,), 3.0)
    tokens, _ = enc.tokenize(x, token_mask=mask, mask_token=mask_token)
    plain, _ = enc.tokenize(x)
    pos = enc.pos_embed_for(enc.grid)[0]
    assert torch.allclose(tokens[:, 0], mask_token + pos[0])
    assert torch.allclose(tokens[:, 1:], plain[:, 1:])
