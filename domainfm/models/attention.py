"""Self-attention that picks its kernel by device and precision: timm's ``Attention`` with one change.

On the CPU under bf16 autocast, PyTorch's fused ``scaled_dot_product_attention`` (the flash kernel for CPU) is
2 to 6x slower than the explicit ``softmax(q k^T) v`` for ViT shapes (forward + backward, 16 to 256 tokens, head
width 32 to 64, 2 threads, torch 2.14): a bf16 MAE step spent a quarter of its time in its backward. There the
explicit path runs; everywhere else (fp32 on the CPU, any CUDA) the fused kernel does, as in timm.

Example:
    >>> import torch
    >>> attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    >>> x = torch.randn(2, 5, 32)
    >>> ref = attn(x)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     fast = attn(x)
    >>> fast.dtype, torch.allclose(fast.float(), ref, atol=0.05)
    (torch.bfloat16, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention as TimmAttention


def explicit_is_faster(q: torch.Tensor) -> bool:
    """True where the explicit attention beats the fused kernel: CPU tensors under bf16 autocast."""
    return q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, scale=None) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v)`` (``B x H x N x D``, no mask) by the faster kernel for the inputs.

    Example:
        >>> q, k, v = (torch.randn(2, 3, 4, 8) for _ in range(3))
        >>> torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)
        True
    """
    if not explicit_is_faster(q):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    weights = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    if dropout_p:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


class Attention(TimmAttention):
    """timm's ``Attention`` (same parameters and state-dict keys) with :func:`attention` as its kernel when it
    takes no mask and no gate; anything else goes to timm's own forward."""

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal or self.gate is not None or not explicit_is_faster(x):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(self.q_norm(q), self.k_norm(k), v, self.attn_drop.p if self.training else 0.0, self.scale)
        return self.proj_drop(self.proj(self.norm(o.transpose(1, 2).reshape(b, n, self.attn_dim))))
