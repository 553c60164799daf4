"""Schedules of the trainer: learning rate as linear warmup then cosine decay, a pure function of the step.

Being stateless, it needs no saving: a resumed run gets the same rate at the same step. The ramps it is
made of (:func:`cosine_ramp`, :func:`linear_ramp`) are the ones the objectives use for teacher momentum
and temperature; they are defined in :mod:`domainfm.ramps` (below ``ssl`` in the layers) and offered
here with the learning rate.

Example:
    >>> lr_at(0, base_lr=1.0, total_steps=100, warmup_steps=10)
    0.1
    >>> round(lr_at(55, base_lr=1.0, total_steps=100, warmup_steps=10), 3)
    0.5
    >>> lr_at(55, 1.0, 100, 10) == cosine_ramp(55, 100, 1.0, 0.0, warmup=10)
    True
"""

from __future__ import annotations

from domainfm.ramps import cosine_ramp, linear_ramp

__all__ = ["cosine_ramp", "linear_ramp", "lr_at"]


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): ``base_lr * (step + 1) / warmup_steps`` during
    warmup, then cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``.

    Example:
        >>> lr_at(99, 1e-3, 100, 10, min_lr=1e-5) > 1e-5, lr_at(100, 1e-3, 100, 10, min_lr=1e-5)
        (True, 1e-05)
    """
    return cosine_ramp(step, total_steps, base_lr, min_lr, warmup=warmup_steps)
