"""Multiple-instance learning over slide tile features: gated attention MIL (ABMIL) and a mean-pool
baseline (pure PyTorch), plus a small bag-at-a-time training loop and metrics.

ABMIL is the gated attention pooling of Ilse, Tomczak & Welling (ICML 2018): tile features ``h_k``
are weighted by ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))`` and the weighted mean is
classified. The attention weights are what the heatmaps show.

Example:
    >>> import torch
    >>> model = GatedABMIL(in_dim=64, num_classes=2)
    >>> logits, attn = model(torch.randn(100, 64))
    >>> logits.shape, attn.shape, round(float(attn.detach().sum()), 4)
    (torch.Size([1, 2]), torch.Size([1, 100]), 1.0)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _as_batch(feats: torch.Tensor, mask: torch.Tensor | None):
    if feats.ndim == 2:
        feats = feats.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if feats.ndim != 3:
        raise ValueError(f"MIL expects N x D or B x N x D features, got shape {tuple(feats.shape)}")
    if mask is None:
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    return feats, mask.bool()


class GatedABMIL(nn.Module):
    """Gated attention MIL head: ``forward(features, mask=None) -> (logits B x K, attention B x N)``.

    ``features`` is ``N x D`` (one bag) or ``B x N x D`` with a boolean ``mask`` marking real tiles.
    Called as a core head with the encoder's features dict (``model.logits(tiles)``), it treats the
    batch of tiles as one slide and returns the slide logits ``1 x K``.

    Example:
        >>> import torch
        >>> m = GatedABMIL(8, 3, hidden_dim=16, attn_dim=8)
        >>> m(torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]))[1][0, 3:].tolist()
        [0.0, 0.0]
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 128, attn_dim: int = 64, dropout: float = 0.25):
        super().__init__()
        self.config = {
            "kind": "abmil",
            "in_dim": int(in_dim),
            "num_classes": int(num_classes),
            "hidden_dim": int(hidden_dim),
            "attn_dim": int(attn_dim),
            "dropout": float(dropout),
        }
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Tanh())
        self.attn_u = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Sigmoid())
        self.attn_w = nn.Linear(attn_dim, 1)
        self.attn_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.attn_w(self.attn_drop(self.attn_v(h) * self.attn_u(h))).squeeze(-1)

    def forward(self, features: torch.Tensor | dict, mask: torch.Tensor | None = None):
        if isinstance(features, dict):  # called as a core head on a batch of tiles: one bag
            logits, _ = self.forward(features["pooled"])
            return logits
        feats, mask = _as_batch(features, mask)
        h = self.fc(feats)
        scores = self.attention_logits(h).masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=1)
        attn = torch.nan_to_num(attn, nan=0.0)  # an all-masked bag
        pooled = torch.einsum("bn,bnd->bd", attn, h)
        return self.classifier(pooled), attn


class MeanPoolMIL(nn.Module):
    """Mean-pool baseline: the mean tile feature through a small MLP. Same call as :class:`GatedABMIL`;
    its "attention" is uniform.

    Example:
        >>> import torch
        >>> MeanPoolMIL(8, 2)(torch.randn(4, 8))[0].shape
        torch.Size([1, 2])
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.config = {
            "kind": "mean",
            "in_dim": int(in_dim),
            "num_classes": int(num_classes),
            "hidden_dim": int(hidden_dim),
            "dropout": float(dropout),
        }
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None):
        feats, mask = _as_batch(features, mask)
        w = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
        pooled = torch.einsum("bn,bnd->bd", w, feats)
        return self.mlp(pooled), w


def build_mil(config: dict) -> nn.Module:
    """Rebuild a MIL head from its ``config`` dict (as stored in the card)."""
    cfg = dict(config)
    kind = cfg.pop("kind")
    return {"abmil": GatedABMIL, "mean": MeanPoolMIL}[kind](**cfg)


def train_mil(
    model: nn.Module,
    bags: list[torch.Tensor],
    labels: list[int],
    epochs: int = 20,
    lr: float = 2e-4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    max_tiles: int | None = 4096,
    class_weights: bool = True,
    num_threads: int | None = 1,
) -> list[float]:
    """Train ``model`` one bag per step with AdamW; returns the mean loss per epoch.

    Bags larger than ``max_tiles`` are subsampled each step (randomness from ``seed``). MIL heads
    are tiny, so CPU training runs single-threaded by default (``num_threads``): on a busy machine
    intra-op threads cost far more in synchronisation than they bring.

    Example:
        >>> import torch
        >>> bags = [torch.randn(10, 4) + (i % 2) for i in range(8)]
        >>> hist = train_mil(GatedABMIL(4, 2, 16, 8), bags, [i % 2 for i in range(8)], epochs=3)
        >>> len(hist)
        3
    """
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    y = torch.as_tensor(labels, dtype=torch.long)
    k = int(model.config["num_classes"])
    weight = None
    if class_weights:
        counts = torch.bincount(y, minlength=k).float()
        weight = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros_like(counts))
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(next(model.parameters()).device))
    history = []
    model.train()
    threads = torch.get_num_threads()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if num_threads and on_cpu:
        torch.set_num_threads(int(num_threads))
    try:
        _epochs(model, bags, y, epochs, max_tiles, g, opt, loss_fn, history)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return history


def _epochs(model, bags, y, epochs, max_tiles, g, opt, loss_fn, history) -> None:
    device = next(model.parameters()).device
    y = y.to(device)
    for _ in range(int(epochs)):
        total = 0.0
        for i in torch.randperm(len(bags), generator=g).tolist():
            bag = bags[i]
            if max_tiles is not None and len(bag) > max_tiles:
                bag = bag[torch.randperm(len(bag), generator=g)[:max_tiles]]
            logits, _ = model(bag.to(device))
            loss = loss_fn(logits, y[i : i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        history.append(total / max(1, len(bags)))


@torch.no_grad()
def predict_bags(model: nn.Module, bags: list[torch.Tensor]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities ``n_bags x K`` and per-bag attention weights."""
    model.eval()
    probs, attns = [], []
    for bag in bags:
        logits, attn = model(bag)
        probs.append(torch.softmax(logits, -1)[0].numpy())
        attns.append(attn[0].numpy())
    return np.stack(probs) if probs else np.zeros((0, 0)), attns


def classification_metrics(y_true, probs) -> dict:
    """Accuracy, balanced accuracy and ROC AUC (``None`` when one class is absent).

    Example:
        >>> classification_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]))["accuracy"]
        1.0
    """
    from sklearn.metrics import (  # heavy import (scikit-learn), loaded on first use
        balanced_accuracy_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if len(y_true) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "auc": None}
    pred = probs.argmax(1)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "auc": None,
    }
    try:
        if probs.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            out["auc"] = float(roc_auc_score(y_true, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    except ValueError:
        pass
    return out
