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


def skips_weight_decay(name: str, param, extra: Iterable[str] = ()) -> bool:
    """The one no-weight-decay rule: biases, norms and other 1-D parameters, tokens and position embeddings
    (and names containing any of ``extra``).

    Example:
        >>> import torch
        >>> skips_weight_decay("blocks.0.norm1.weight", torch.ones(4))
        True
        >>> skips_weight_decay("head.weight", torch.ones(2, 4))
        False
    """
    return (
        param.ndim <= 1
        or name.endswith(".bias")
        or "token" in name
        or "pos_embed" in name
        or any(k in name for k in extra)
    )


def default_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups without layer decay: :func:`skips_weight_decay` parameters get no weight decay.

    Example:
        >>> import torch
        >>> [g["weight_decay"] for g in default_param_groups(torch.nn.Linear(2, 2), 0.05)]
        [0.05, 0.0]
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if skips_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


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
        no_decay = skips_weight_decay(name, p, extra)
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


def layer_decay_groups(objective, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups for pretraining with layer-wise LR decay over ``objective.encoder`` only.

    Encoder block ``i`` gets ``lr_scale = layer_decay ** (depth - i)``, its token maker ``layer_decay **
    (depth + 1)``; everything else (final norm, decoder, projector heads) learns at the full rate.

    Example:
        >>> import torch
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=2, embed_dim=32,
        ...                     num_heads=2)
        >>> obj = torch.nn.Module(); obj.encoder = enc; obj.decoder = torch.nn.Linear(32, 4)
        >>> sorted({round(g["lr_scale"], 3) for g in layer_decay_groups(obj, 0.05, 0.5)})
        [0.125, 0.25, 0.5, 1.0]
    """
    depth = len(objective.encoder.blocks)
    groups: dict[tuple, dict] = {}
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name[len("encoder.") :], depth) if name.startswith("encoder.") else depth + 1
        no_decay = skips_weight_decay(name, p)
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - lid)
            groups[key] = {"params": [], "lr_scale": scale, "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def pretraining_groups(objective, weight_decay: float, layer_decay: float) -> list[dict]:
    """The AdamW groups of a pretraining objective: its own ``param_groups`` when it defines them, layer-wise
    LR decay over ``objective.encoder`` when ``train.layer_decay`` < 1, else :func:`default_param_groups`."""
    if hasattr(objective, "param_groups"):
        return objective.param_groups(weight_decay)
    if float(layer_decay) < 1.0 and hasattr(objective, "encoder"):
        return layer_decay_groups(objective, weight_decay, float(layer_decay))
    return default_param_groups(objective, weight_decay)
