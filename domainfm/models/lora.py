"""LoRA: low-rank adapters on the attention projections of a ViT encoder.

``apply_lora`` wraps the ``qkv`` and ``proj`` linear layers of every attention module (timm
``Attention`` and anything shaped like it) with :class:`LoRALinear` (``W x + (alpha / r) B A x``,
``B`` initialised to zero so the wrapped model starts identical) and freezes every other weight of
the encoder. ``merge_lora`` folds the adapters back into plain ``nn.Linear`` layers for inference.

Example:
    >>> import timm, torch
    >>> vit = timm.models.vision_transformer.VisionTransformer(
    ...     img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> before = vit(x)
    >>> _ = apply_lora(vit, rank=4, alpha=8)
    >>> torch.allclose(vit(x), before)  # B = 0 at start
    True
    >>> lora_parameter_count(vit)[0] < 0.05 * lora_parameter_count(vit)[1]
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(dropout(x)))`` with a frozen ``base`` linear layer.

    Example:
        >>> layer = LoRALinear(torch.nn.Linear(8, 4), rank=2, alpha=4)
        >>> layer(torch.ones(1, 8)).shape
        torch.Size([1, 4])
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.rank
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some code reads .weight (e.g. dtype/device checks)
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``scale * B @ A`` (out x in)."""
        return self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + self.scale * nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_a), self.lora_b)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` equal to this layer (adapters folded in)."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def _is_attention(module: nn.Module) -> bool:
    return type(module).__name__.endswith("Attention") or hasattr(module, "qkv")


def apply_lora(
    encoder: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Iterable[str] = ("qkv", "proj"),
    dropout: float = 0.0,
    freeze: bool = True,
) -> nn.Module:
    """Wrap the ``targets`` linear layers of every attention module with :class:`LoRALinear`.

    Args:
        encoder: a ViT encoder (``domainfm`` ``ViTEncoder`` or timm ``VisionTransformer``); changed in place.
        rank, alpha: LoRA rank ``r`` and scaling ``alpha`` (update scaled by ``alpha / r``).
        targets: attribute names of the linear layers to adapt inside attention modules.
        dropout: dropout on the adapter input.
        freeze: freeze every non-LoRA parameter of ``encoder`` (a head outside it stays trainable).

    Returns:
        ``encoder`` (same object). Raises ``ValueError`` when no target layer is found.

    Example:
        >>> import timm
        >>> vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=4,
        ...     embed_dim=64, depth=2, num_heads=2, num_classes=0)
        >>> sum(isinstance(m, LoRALinear) for m in apply_lora(vit, rank=2).modules())
        4
    """
    targets = tuple(targets)
    if freeze:
        for p in encoder.parameters():
            p.requires_grad_(False)
    wrapped = 0
    for module in list(encoder.modules()):
        if not _is_attention(module):
            continue
        for name in targets:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank=rank, alpha=alpha, dropout=dropout))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"apply_lora: no attention linear layer named {targets} found in {type(encoder).__name__}")
    return encoder


def merge_lora(encoder: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by the equivalent plain ``nn.Linear`` (in place).

    The merged weights are left with the ``requires_grad`` flag of the base layer.

    Example:
        >>> import timm, torch
        >>> vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=4,
        ...     embed_dim=64, depth=2, num_heads=2, num_classes=0)
        >>> vit = merge_lora(apply_lora(vit, rank=2))
        >>> any(isinstance(m, LoRALinear) for m in vit.modules())
        False
    """
    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return encoder


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_a``/``lora_b``) of ``module``."""
    return [p for n, p in module.named_parameters() if n.endswith(("lora_a", "lora_b"))]


def lora_parameter_count(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module``.

    Example:
        >>> lora_parameter_count(torch.nn.Linear(2, 2))
        (6, 6)
    """
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total
