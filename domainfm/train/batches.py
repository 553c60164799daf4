"""The batches of a training run: in order, epoch by epoch, checked, and moved to the device.

The order is a pure function of ``(seed, epoch)`` (:func:`domainfm.data.sampling.epoch_batches`), so a run
resumed in the middle of an epoch skips the batches already seen and continues exactly.

Example:
    >>> batch_size({"views": [torch.zeros(3, 1, 4, 4)]}), to_device({"image": torch.ones(1), "meta": [{}]}, "cpu")
    (3, {'image': tensor([1.]), 'meta': [{}]})
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from domainfm.data.sampling import epoch_batches, set_epoch
from domainfm.errors import DataError
from domainfm.train.distributed import DistContext


class _ListBatchSampler:
    """A batch sampler over precomputed lists of indices (one epoch's, maybe with its first batches skipped)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors (and the tensors of its ``views`` list) on ``device``; the rest as is."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "views":
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


def check_finite(batch: dict) -> None:
    """A NaN/inf input is named by its file before it can poison the weights."""
    for key in ("image", "views"):
        tensors = batch.get(key)
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else (tensors or [])
        for t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = (~torch.isfinite(t.flatten(1))).sum(1)
                i = int(bad.argmax())
                path = (batch.get("meta") or [{}] * t.shape[0])[i].get("path")
                raise DataError(
                    path,
                    f"input has {int(bad[i])} NaN/inf values after preprocessing "
                    f"(fix or exclude this file, or add nodata handling in the domain options)",
                )


def batch_size(batch: dict) -> int:
    """Samples in the batch: the first dimension of its ``image``, else of its first view."""
    return int(batch["image"].shape[0]) if "image" in batch else int(batch["views"][0].shape[0])


class RunBatches:
    """The micro-batches of the run in order: epoch by epoch (reshuffled per epoch from the seed), resuming
    in the middle of an epoch by skipping the batches already seen."""

    def __init__(self, dataset, tcfg, ctx: DistContext, device, collate_fn, num_workers: int, per_epoch: int):
        self.dataset, self.tcfg, self.ctx, self.device = dataset, tcfg, ctx, device
        self.collate_fn, self.num_workers, self.per_epoch = collate_fn, num_workers, per_epoch
        self.epoch = -1
        self.iterator = None

    def next(self, micro: int) -> dict:
        """The batch of micro-step ``micro`` (counted from the start of the run)."""
        want_epoch, skip = divmod(micro, self.per_epoch)
        if want_epoch != self.epoch or self.iterator is None:
            self.epoch = want_epoch
            self.iterator = iter(self._loader(skip))
        batch = next(self.iterator)
        if (micro + 1) % self.per_epoch == 0:
            self.iterator = None
        return batch

    def _loader(self, skip: int) -> DataLoader:
        tcfg, ctx = self.tcfg, self.ctx
        set_epoch(self.dataset, self.epoch)
        batches = epoch_batches(self.dataset, self.epoch, tcfg.batch_size, tcfg.seed, ctx.rank, ctx.world_size)
        return DataLoader(
            self.dataset,
            batch_sampler=_ListBatchSampler(batches[skip:]),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(tcfg.seed * 7919 + self.epoch),
        )
