"""Deterministic, shardable, resumable batches of indices.

The engine asks for the batches of an epoch (a pure function of seed, epoch, rank, world size) and
skips the ones a resumed run has already consumed. A dataset can define
``epoch_batches(epoch, batch_size, seed, rank, world_size)`` to group samples itself (e.g. one sensor
per batch); otherwise :func:`default_epoch_batches` shuffles.

Example:
    >>> default_epoch_batches(10, epoch=0, batch_size=4, seed=0)[:1] == default_epoch_batches(10, 0, 4, 0)[:1]
    True
    >>> len(default_epoch_batches(10, 0, 4, 0, rank=0, world_size=2))
    1
"""

from __future__ import annotations

import torch

from domainfm.contract import dataset_method


def default_epoch_batches(
    n: int,
    epoch: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
) -> list[list[int]]:
    """Shuffle ``range(n)`` with ``(seed, epoch)``, shard it across ranks, cut it into batches."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    per_rank = n // world_size if world_size > 1 else n
    order = order[rank * per_rank : (rank + 1) * per_rank] if world_size > 1 else order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


def epoch_batches(
    dataset, epoch: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """The dataset's own grouping if it has one, else :func:`default_epoch_batches`."""
    own = dataset_method(dataset, "epoch_batches")
    if own is not None:
        return own(epoch=epoch, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
    return default_epoch_batches(len(dataset), epoch, batch_size, seed, rank, world_size)


def set_epoch(dataset, epoch: int) -> None:
    """Tell a dataset (and datasets it wraps) which epoch it is, for per-item randomness."""
    fn = dataset_method(dataset, "set_epoch")
    if fn is not None:
        fn(epoch)
