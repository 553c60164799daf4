"""AdamW parameter groups: which parameters get weight decay."""

from __future__ import annotations

from domainfm.models import build_encoder
from domainfm.train.layer_decay import default_param_groups


def test_learned_positions_tokens_norms_and_biases_get_no_weight_decay():
    enc = build_encoder(
        "vit-tiny",
        in_chans=1,
        img_size=16,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
        class_token=True,
        num_registers=1,
        pos_embed_type="learned",
    )
    decay, no_decay = default_param_groups(enc, 0.05)
    names = {id(p): n for n, p in enc.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "reg_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= skipped
    assert {names[id(p)] for p in decay["params"]} >= {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight"}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
