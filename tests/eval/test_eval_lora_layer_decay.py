"""LoRA adapters, layer-wise LR decay and the fine-tuning protocol on tiny encoders."""

from __future__ import annotations

import pytest
import timm
import torch

from domainfm.eval.finetune import PooledClassifier, finetune_classifier
from domainfm.models import build_encoder
from domainfm.models.lora import LoRALinear, apply_lora, lora_parameter_count, lora_parameters, merge_lora
from domainfm.train.layer_decay import param_groups_layer_decay


def _tiny(depth=2, dim=64):
    torch.manual_seed(0)
    return build_encoder(
        "vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=depth, embed_dim=dim, num_heads=2
    )


def test_layer_decay_groups_on_vit_encoder_with_head():
    model = PooledClassifier(_tiny(depth=3), 4)
    groups = param_groups_layer_decay(model, base_lr=1.0, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    # patch_embed = layer 0, block i = layer i + 1, head/fc_norm/final norm = last layer (depth + 1 = 4)
    assert by_name["encoder.patch_embed.proj.weight"]["layer_id"] == 0
    assert by_name["encoder.patch_embed.proj.weight"]["lr"] == pytest.approx(0.5**4)
    for i in range(3):
        assert by_name[f"encoder.blocks.{i}.attn.qkv.weight"]["layer_id"] == i + 1
        assert by_name[f"encoder.blocks.{i}.attn.qkv.weight"]["lr"] == pytest.approx(0.5 ** (3 - i))
    assert by_name["head.weight"]["lr"] == 1.0 and by_name["encoder.norm.weight"]["layer_id"] == 4
    # no weight decay on biases and norms, decay on matrices
    assert by_name["encoder.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_params  # every parameter once
    torch.optim.AdamW(groups)  # accepted by the optimizer


def test_layer_decay_on_timm_vit_tokens_are_layer0_without_decay():
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3
    )
    groups = param_groups_layer_decay(vit, base_lr=1e-3, weight_decay=0.1, layer_decay=0.75)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["cls_token"]["layer_id"] == 0 and by_name["pos_embed"]["weight_decay"] == 0.0
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_layer_decay(vit, 1e-3, layer_decay=0.0)


def test_lora_trains_under_5_percent_starts_identical_and_merges_exactly():
    torch.manual_seed(0)
    enc = build_encoder("vit-tiny", patch_embed="2d", in_chans=1, img_size=32, patch_size=8, depth=3)  # 192-d
    x = torch.randn(2, 1, 32, 32)
    enc.eval()
    before = enc(x)
    apply_lora(enc, rank=8, alpha=16)
    assert sum(isinstance(m, LoRALinear) for m in enc.modules()) == 6  # qkv + proj in 3 blocks
    trainable, total = lora_parameter_count(enc)
    assert trainable / total < 0.05
    assert trainable == sum(p.numel() for p in lora_parameters(enc)) == 3 * 8 * ((192 + 576) + (192 + 192))
    assert torch.allclose(enc(x), before, atol=1e-6)  # B = 0 at init
    # one optimisation step changes only the adapters
    base_w = enc.blocks[0].attn.qkv.base.weight.clone()
    mlp_w = enc.blocks[0].mlp.fc1.weight.clone()
    opt = torch.optim.Adam([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    enc.train()
    for _ in range(3):
        opt.zero_grad()
        enc(x)[..., 0].sum().backward()
        opt.step()
    assert torch.equal(enc.blocks[0].attn.qkv.base.weight, base_w) and torch.equal(enc.blocks[0].mlp.fc1.weight, mlp_w)
    assert enc.blocks[0].attn.qkv.lora_b.abs().sum() > 0
    enc.eval()
    adapted = enc(x)
    assert not torch.allclose(adapted, before, atol=1e-5)
    merge_lora(enc)
    assert not any(isinstance(m, LoRALinear) for m in enc.modules())
    assert torch.allclose(enc(x), adapted, atol=1e-5)


def test_lora_without_attention_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no attention linear layer"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), rank=2)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetune_protocol_learns_a_separable_task(mode):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 32, 32) * 0.3
    y = torch.arange(64) % 2
    x[y == 1, :, :16] += 1.5  # class 1: bright top half
    enc = _tiny()
    scores, info = finetune_classifier(
        enc, x[:48], y[:48], x[48:], num_classes=2, mode=mode, steps=40, seed=0, lora_rank=2
    )
    assert scores.shape == (16, 2)
    assert (scores.argmax(1) == y[48:].numpy()).mean() >= 0.9
    if mode == "lora":
        assert info["encoder_trainable_fraction"] < 0.05
    else:
        assert info["encoder_trainable_fraction"] == 1.0
    # the caller's encoder is untouched (the protocol trains a copy)
    assert not any(isinstance(m, LoRALinear) for m in enc.modules())
