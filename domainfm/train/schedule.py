"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the step.

Being stateless, it needs no saving: a resumed run gets the same rate at the same step.

Example:
    >>> lr_at(0, base_lr=1.0, total_steps=100, warmup_steps=10)
    0.1
    >>> round(lr_at(55, base_lr=1.0, total_steps=100, warmup_steps=10), 3)
    0.5
"""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
