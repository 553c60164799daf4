"""Collapse monitor: is the encoder still producing diverse embeddings?

Example:
    >>> import torch
    >>> m = collapse_metrics(torch.randn(64, 32))
    >>> 0.5 < m["embed_std"] * 32 ** 0.5 < 1.5, m["effective_rank"] > 20
    (True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def collapse_metrics(embeddings: torch.Tensor) -> dict[str, float]:
    """``embed_std``: mean per-dimension std of L2-normalized embeddings across the batch (collapse -> 0,
    healthy ~ 1/sqrt(dim)); ``effective_rank``: exp of the entropy of the normalized singular values
    (collapse -> 1, at most min(batch, dim))."""
    z = F.normalize(embeddings.float(), dim=1)
    std = z.std(dim=0).mean().item() if z.shape[0] > 1 else 0.0
    centered = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(centered)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embed_std": float(std), "effective_rank": float(torch.exp(entropy))}
