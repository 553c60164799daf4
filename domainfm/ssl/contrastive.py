"""Contrastive pretraining: two augmented views, InfoNCE against a momentum encoder (MoCo v3 style).

The views come from the domain's augmentation (``Domain.augment``), so the objective itself knows
nothing about modalities.

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> moco = Contrastive(enc, proj_dim=32, hidden_dim=64)
    >>> out = moco({"views": [torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)]})
    >>> bool(out["loss"] > 0)
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from domainfm.ramps import cosine_ramp


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=False))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


@torch.no_grad()
def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """All-gather along the batch when running distributed (no gradient), identity otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other samples (on all ranks) as negatives; scaled by ``2 * T`` as in MoCo v3."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    k_all = gather_across_ranks(k)
    logits = q @ k_all.t() / temperature
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


@dataclass
class ContrastiveOptions:
    """``objective.*`` of ``contrastive`` (and of the objectives combining it): projector and InfoNCE."""

    proj_dim: int = 256
    proj_hidden_dim: int = 1024
    temperature: float = 0.2
    momentum: float = 0.99


class Contrastive(nn.Module):
    """MoCo v3: encoder + projector + predictor against a momentum encoder + projector."""

    min_batch = 2  # the other samples of the batch are the negatives (read by the training engine)

    def __init__(
        self,
        encoder: nn.Module,
        proj_dim: int = 256,
        hidden_dim: int = 1024,
        temperature: float = 0.2,
        momentum: float = 0.99,
    ):
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        self.base_momentum = momentum
        self.momentum = momentum
        self.projector = mlp(encoder.embed_dim, hidden_dim, proj_dim, layers=3)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim, layers=2, last_bn=False)
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_encoder.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)

    def contrastive_loss(self, views: list[torch.Tensor], wavelengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = views[0], views[1]
        e1 = self.encoder.embed(v1, wavelengths=wavelengths)
        e2 = self.encoder.embed(v2, wavelengths=wavelengths)
        q1, q2 = self.predictor(self.projector(e1)), self.predictor(self.projector(e2))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder.embed(v1, wavelengths=wavelengths))
            k2 = self.momentum_projector(self.momentum_encoder.embed(v2, wavelengths=wavelengths))
        loss = info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature)
        return loss, e1.detach()

    def forward(self, batch: dict) -> dict:
        views = batch.get("views")
        if not views or len(views) < 2:
            raise ValueError("contrastive pretraining needs batch['views'] with two augmented views")
        loss, emb = self.contrastive_loss(views, batch.get("wavelengths"))
        return {"loss": loss, "contrastive_loss": loss.detach(), "embeddings": emb}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Momentum update with a cosine schedule from ``momentum`` to 1 (as in MoCo v3)."""
        self.momentum = cosine_ramp(step, total_steps, self.base_momentum, 1.0)
        for online, target in ((self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)):
            for p, q in zip(online.parameters(), target.parameters()):
                q.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)
