"""Per-item random streams, so random crops and augmentations are reproducible and resumable.

A dataset that draws random numbers per item derives them from ``(seed, epoch, index)`` instead of
global state. The result does not depend on which DataLoader worker runs the item, nor on whether
training was interrupted and resumed, which is what makes ``--resume`` exact.

Example:
    >>> g = item_generator(seed=0, epoch=1, index=5)
    >>> float(torch.rand(1, generator=g)) == float(torch.rand(1, generator=item_generator(0, 1, 5)))
    True
"""

from __future__ import annotations

import numpy as np
import torch


def _mix(seed: int, epoch: int, index: int, salt: int = 0) -> int:
    return int(
        np.random.SeedSequence(
            [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index & 0xFFFFFFFF, salt & 0xFFFFFFFF]
        ).generate_state(1, np.uint64)[0]
        >> 1
    )


def item_generator(seed: int, epoch: int, index: int, salt: int = 0) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, epoch, index, salt)``."""
    return torch.Generator().manual_seed(_mix(seed, epoch, index, salt))


def item_numpy_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded from ``(seed, epoch, index, salt)``."""
    return np.random.default_rng(_mix(seed, epoch, index, salt))


class EpochAware:
    """Mixin for datasets with per-item randomness: the engine calls ``set_epoch`` each epoch."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
