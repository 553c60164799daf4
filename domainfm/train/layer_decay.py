"""Layer-wise learning-rate decay (LLRD) for fine-tuning ViT encoders (BEiT / MAE recipe).

Layers are numbered from the input: the token maker (``patch_embed``, ``pos_embed``, ``cls_token``,
``mask_token``) is layer 0, transformer block ``i`` is layer ``i + 1`` and everything after the
blocks (final norm, head) is the last layer ``depth + 1``. Layer ``l`` gets
``lr = base_lr * layer_decay ** (depth + 1 - l)``: the head learns at ``base_lr``, early layers slower.
Biases, norm weights and position/class tokens get no weight decay.

Example:
    >>> import timm, torch
    >>> vit = timm.models.vision_transformer.VisionTransformer(
    ...     img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=2)
    >>> groups = param_groups_layer_decay(vit, base_lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    >>> opt = torch.optim.AdamW(groups)
    >>> sorted({g["lr"] for g in groups})
    [0.000125, 0.00025, 0.0005, 0.001]
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = (
    "patch_embed",
    "pos_embed",
    "cls_token",
    "mask_token",
    "reg_token",
    "wavelength",
    "channel_embed",
    "spectral",
)
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


def _count_blocks(model: nn.Module) -> int:
    depth = 0
    for name, _ in model.named_parameters():
        m = _BLOCK.search(name)
        if m:
            depth = max(depth, int(m.group(1)) + 1)
    return depth


def layer_id(name: str, depth: int) -> int:
    """Layer index of parameter ``name`` (0 = token maker, ``i + 1`` = block ``i``, ``depth + 1`` = rest)."""
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    leaf = name.split(".")
    if any(part.startswith(_EMBED_NAMES) for part in leaf):
        # only the encoder's own token maker: a head's parameter named e.g. "head.patch_embed" is rare
        return 0
    return depth + 1


def param_groups_layer_decay(
    model: nn.Module,
    base_lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay: Iterable[str] = (),
) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay for a ViT (encoder alone or encoder + head).

    Args:
        model: a ``ViTEncoder``, a timm ``VisionTransformer`` or any module whose blocks are named
            ``...blocks.<i>...``; frozen parameters (``requires_grad=False``) are left out.
        base_lr: learning rate of the last layer (head).
        weight_decay: applied to matrices only (not to biases, norms, position/class tokens).
        layer_decay: multiplicative factor per layer towards the input (1.0 disables the decay).
        no_weight_decay: extra parameter-name substrings that get no weight decay.

    Returns:
        A list of dicts ``{"params", "lr", "weight_decay", "lr_scale", "layer_id", "names"}``; the
        ``lr_scale`` lets a scheduler rescale ``lr`` per group (``g["lr"] = lr_now * g["lr_scale"]``).

    Example:
        >>> import torch
        >>> groups = param_groups_layer_decay(torch.nn.Linear(2, 2), base_lr=0.1)
        >>> [(g["lr"], g["weight_decay"]) for g in groups]
        [(0.1, 0.05), (0.1, 0.0)]
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = _count_blocks(model)
    num_layers = depth + 2
    extra = tuple(no_weight_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        no_decay = p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_NAMES + extra)
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - lid)
            groups[key] = {
                "params": [],
                "names": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "layer_id": lid,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
