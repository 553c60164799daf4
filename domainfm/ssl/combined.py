"""MAE with contrastive or self-distillation at once, on one shared encoder, with loss weights; the options
of ``mae+contrastive`` and ``mae+dino`` (those of their parts and the weights).

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> obj = MAEContrastive(enc, mae_kwargs={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    ...                      contrastive_kwargs={"proj_dim": 16, "hidden_dim": 32})
    >>> views = [torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)]
    >>> sorted(k for k in obj({"image": views[0], "views": views}) if k.endswith("loss"))
    ['contrastive_loss', 'loss', 'mae_loss']
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from domainfm.ssl.contrastive import Contrastive, ContrastiveOptions
from domainfm.ssl.dino import DINOOptions
from domainfm.ssl.mae import MAE, MAEOptions


@dataclass
class MAEContrastiveOptions(MAEOptions, ContrastiveOptions):
    """``objective.*`` of ``mae+contrastive``: those of both parts and their loss weights."""

    mae_weight: float = 1.0
    contrastive_weight: float = 1.0


@dataclass
class MAEDINOOptions(MAEOptions, DINOOptions):
    """``objective.*`` of ``mae+dino``: those of both parts and the MAE loss weight (``dino_weight`` is DINO's)."""

    mae_weight: float = 1.0


class MAEContrastive(nn.Module):
    """``loss = mae_weight * MAE(view 1) + contrastive_weight * InfoNCE(view 1, view 2)``."""

    min_batch = 2  # the other samples of the batch are the negatives (read by the training engine)

    def __init__(
        self,
        encoder: nn.Module,
        mae_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        mae_kwargs: dict | None = None,
        contrastive_kwargs: dict | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.mae = MAE(encoder, **(mae_kwargs or {}))
        self.contrastive = Contrastive(encoder, **(contrastive_kwargs or {}))
        self.mae_weight, self.contrastive_weight = mae_weight, contrastive_weight

    def forward(self, batch: dict) -> dict:
        views = batch["views"]
        mae_out = self.mae(batch, image=views[0])
        ctr_loss, emb = self.contrastive.contrastive_loss(views, batch.get("wavelengths"))
        loss = self.mae_weight * mae_out["loss"] + self.contrastive_weight * ctr_loss
        return {
            "loss": loss,
            "mae_loss": mae_out["loss"].detach(),
            "contrastive_loss": ctr_loss.detach(),
            "embeddings": emb,
        }

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.contrastive.on_step_end(step, total_steps)

    def reconstruct(self, batch: dict):
        return self.mae.reconstruct(batch)
