"""Classification heads over pooled tokens.

Example:
    >>> import torch
    >>> head = LinearHead(64, 3)
    >>> head({"pooled": torch.zeros(2, 64)}).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """LayerNorm + linear (or a small MLP) on the mean of the final tokens."""

    layers: list[int] = []

    def __init__(self, embed_dim: int, num_classes: int, hidden_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        if hidden_dim:
            self.fc = nn.Sequential(
                nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
            )
        else:
            self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def forward(self, features: dict) -> torch.Tensor:
        return self.fc(self.norm(features["pooled"]))
