"""Collapse monitor: is the encoder (and a self-distillation teacher) still producing diverse outputs?

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


@torch.no_grad()
def teacher_collapse_metrics(mean_probs: torch.Tensor, mean_entropy: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """Collapse signs of a self-distillation teacher from its prototype distribution over a batch.

    ``mean_probs``: the batch-mean teacher distribution (``K``); ``mean_entropy``: the mean of the
    per-sample entropies. Returns (nats) ``teacher_entropy`` (per sample; ``log K`` when every output
    is uniform), ``teacher_kl_uniform`` (KL of the batch-mean distribution to uniform; ``log K`` when
    every sample picks one prototype) and ``teacher_mi`` = H(mean) - mean H, the information the
    assignment carries about the input: ~0 for both kinds of collapse.

    Example:
        >>> import torch
        >>> p = torch.softmax(torch.randn(256, 64) * 5, dim=1)
        >>> h = -(p * p.log()).sum(1).mean()
        >>> healthy = teacher_collapse_metrics(p.mean(0), h)
        >>> same = torch.softmax(torch.randn(1, 64) * 5, dim=1).expand(256, -1)
        >>> collapsed = teacher_collapse_metrics(same.mean(0), -(same * same.log()).sum(1).mean())
        >>> bool(healthy["teacher_mi"] > 1.0), bool(collapsed["teacher_mi"].abs() < 1e-4)
        (True, True)
    """
    p = mean_probs.float().clamp_min(1e-12)
    h_mean = -(p * p.log()).sum()
    log_k = torch.log(torch.tensor(float(p.numel()), device=p.device))
    ent = torch.as_tensor(mean_entropy, dtype=torch.float32, device=p.device)
    return {"teacher_entropy": ent, "teacher_kl_uniform": log_k - h_mean, "teacher_mi": (h_mean - ent).clamp_min(0.0)}
