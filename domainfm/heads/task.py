"""Encoder + head as one trainable module with a task loss (what the engine fine-tunes).

Tasks: ``classification`` (cross-entropy), ``multilabel`` (BCE), ``segmentation`` (cross-entropy +
soft Dice).

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> from domainfm.heads.classification import LinearHead
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> model = TaskModel(enc, LinearHead(enc.embed_dim, 4), "classification")
    >>> out = model({"image": torch.rand(2, 1, 32, 32), "label": torch.tensor([0, 3])})
    >>> sorted(out)
    ['accuracy', 'embeddings', 'logits', 'loss']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainfm.errors import ConfigError, unknown_choice
from domainfm.train.layer_decay import default_param_groups, param_groups_layer_decay

TASKS = ("classification", "multilabel", "segmentation")


IGNORE_INDEX = -1  # mask value of unlabelled pixels (nodata, outside a split region): no loss, no metric


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over foreground classes (class 0 is background); pixels < 0 are ignored."""
    valid = (target >= 0).unsqueeze(1).float()
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp_min(0).long(), logits.shape[1]).movedim(-1, 1).float() * valid
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[:, 1:].mean() if logits.shape[1] > 1 else 1 - dice.mean()


class TaskModel(nn.Module):
    """``logits = head(encoder.forward_features(x, layers=head.layers))`` with the task's loss.

    Segmentation masks may mark unlabelled pixels with ``ignore_index`` (-1): they add no loss.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        task: str,
        class_weights: torch.Tensor | None = None,
        layer_decay: float = 1.0,
    ):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(unknown_choice("task", task, TASKS))
        self.encoder, self.head, self.task = encoder, head, task
        self.layer_decay = layer_decay
        self.register_buffer("class_weights", class_weights, persistent=False)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: layer-wise LR decay over the encoder (``layer_decay`` per block towards the
        input), the head at the full rate; no weight decay on biases, norms and tokens."""
        groups = param_groups_layer_decay(
            self.encoder, base_lr=1.0, weight_decay=weight_decay, layer_decay=self.layer_decay
        )
        for g in groups:
            g.pop("names", None)
        return groups + default_param_groups(self.head, weight_decay)

    def logits(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        feats = self.encoder.forward_features(x, wavelengths=wavelengths, layers=getattr(self.head, "layers", None))
        return self.head(feats)

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        feats = self.encoder.forward_features(
            x, wavelengths=batch.get("wavelengths"), layers=getattr(self.head, "layers", None)
        )
        logits = self.head(feats)
        out = {"logits": logits, "embeddings": feats["pooled"].detach()}
        if self.task == "classification":
            y = batch["label"].long().reshape(-1)
            out["loss"] = F.cross_entropy(logits.float(), y, weight=self.class_weights)
            out["accuracy"] = (logits.argmax(1) == y).float().mean().detach()
        elif self.task == "multilabel":
            y = batch["label"].float()
            out["loss"] = F.binary_cross_entropy_with_logits(logits.float(), y)
            out["accuracy"] = ((logits > 0).float() == y).float().mean().detach()
        else:
            y = batch["mask"].long()
            if y.ndim == logits.ndim:  # B x 1 x ... masks
                y = y[:, 0]
            valid = y >= 0
            out["loss"] = F.cross_entropy(
                logits.float(), y, weight=self.class_weights, ignore_index=self.ignore_index
            ) + soft_dice_loss(logits, y)
            out["accuracy"] = ((logits.argmax(1) == y) & valid).sum().float().div(valid.sum().clamp_min(1)).detach()
        return out
