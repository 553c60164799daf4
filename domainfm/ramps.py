"""Ramps from one value to another over steps: the shapes every schedule of the kit is made of.

The learning rate (:func:`domainfm.train.schedule.lr_at`: linear warmup, then cosine), the momentum of
a teacher or momentum encoder (cosine up to 1) and DINO's teacher temperature (linear warmup) are all
:func:`cosine_ramp` or :func:`linear_ramp`. Pure functions of the step, so a resumed run gets the same
value at the same step with nothing saved. They live in the lowest layer because the objectives
(``ssl``) use them as well as the trainer (``train``).

Example:
    >>> cosine_ramp(0, 100, 0.996, 1.0), cosine_ramp(100, 100, 0.996, 1.0)
    (0.996, 1.0)
    >>> linear_ramp(5, 10, 0.04, 0.07) == 0.04 + (0.07 - 0.04) * 5 / 10
    True
"""

from __future__ import annotations

import math


def cosine_ramp(step: float, total: int, start: float, end: float, warmup: int = 0) -> float:
    """``start`` at step ``warmup`` to ``end`` at step ``total`` along a half cosine; ``end`` after ``total``.

    With ``warmup > 0`` the first ``warmup`` steps rise linearly to ``start`` (``start * (step + 1) /
    warmup``: 0-based steps, the first one already above zero), the learning-rate convention.

    Example:
        >>> [round(cosine_ramp(s, 10, 1.0, 0.0, warmup=2), 3) for s in (0, 1, 2, 6, 10, 12)]
        [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
        >>> cosine_ramp(3, 3, 0.99, 1.0)  # a momentum schedule at its last step
        1.0
    """
    if warmup > 0 and step < warmup:
        return start * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2


def linear_ramp(step: float, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at step ``total`` along a straight line; ``end`` from ``total`` on
    (and at once when ``total <= 0``).

    Example:
        >>> [linear_ramp(s, 4, 0.0, 1.0) for s in (0, 2, 4, 9)], linear_ramp(0, 0, 0.04, 0.07)
        ([0.0, 0.5, 1.0, 1.0], 0.07)
    """
    if total <= 0 or step >= total:
        return end
    return start + (end - start) * step / total
