"""The UNETR-style head on fake feature dicts and on real tiny encoders (2D, 3D, anisotropic)."""

from __future__ import annotations

import pytest
import torch

from domainfm.errors import ConfigError
from domainfm.medical.heads import UNETRHead, build_head, unetr_layers
from domainfm.models import build_encoder


def test_unetr_layer_choice_matches_paper():
    assert unetr_layers(12, 4) == [8, 5, 2]  # z9, z6, z3 of UNETR
    assert unetr_layers(2, 3) == [0, 0]


def test_unetr_fake_features_3d_anisotropic():
    head = UNETRHead(
        embed_dim=32, num_classes=3, spatial_dims=3, patch_size=(2, 8, 8), in_chans=2, depth=6, feature_size=4
    )
    assert head.layers == [1, 3] and head.skip_layers == [3, 1]
    grid = (8, 4, 4)
    n = 8 * 4 * 4
    feats = {
        "tokens": torch.randn(2, n, 32),
        "grid": grid,
        "image": torch.randn(2, 2, 16, 32, 32),
        "layers": [torch.randn(2, n, 32), torch.randn(2, n, 32)],
    }
    out = head(feats)
    assert out.shape == (2, 3, 16, 32, 32)
    out.square().mean().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_unetr_fake_features_2d():
    head = UNETRHead(embed_dim=16, num_classes=2, spatial_dims=2, patch_size=4, in_chans=1, depth=2, feature_size=4)
    feats = {
        "tokens": torch.randn(1, 64, 16),
        "grid": (8, 8),
        "image": torch.randn(1, 1, 32, 32),
        "layers": [torch.randn(1, 64, 16)],
    }
    assert head(feats).shape == (1, 2, 32, 32)


def test_unetr_rejects_non_power_of_two_and_missing_layers():
    with pytest.raises(ConfigError, match="power-of-two"):
        UNETRHead(16, 2, spatial_dims=3, patch_size=(6, 8, 8), in_chans=1, depth=4)
    head = UNETRHead(16, 2, spatial_dims=2, patch_size=4, in_chans=1, depth=2, feature_size=4)
    with pytest.raises(ConfigError, match="did not return layers"):
        head({"tokens": torch.randn(1, 4, 16), "grid": (2, 2), "image": torch.randn(1, 1, 8, 8), "layers": []})


def test_build_head_on_real_encoder_3d():
    enc = build_encoder(
        "vit-tiny", patch_embed="3d", img_size=16, patch_size=8, in_chans=1, depth=2, embed_dim=32, num_heads=2
    )
    seg = build_head("segmentation", enc, 2, {"feature_size": 4})
    x = torch.randn(2, 1, 16, 16, 16)
    out = seg(enc.forward_features(x, layers=seg.layers))
    assert out.shape == (2, 2, 16, 16, 16)
    cls = build_head("classification", enc, 5)
    assert cls(enc.forward_features(x)).shape == (2, 5)
