"""Wrap a dataset so each sample also carries two augmented views (for contrastive objectives).

The views' randomness comes from ``(seed, epoch, index)`` so it is the same whatever worker runs
it and after a resume.

Example:
    >>> import torch
    >>> from domainfm.data.augment import default_augment
    >>> base = [{"image": torch.rand(1, 16, 16), "meta": {}}]
    >>> ds = ViewsDataset(base, default_augment(2), seed=0)
    >>> [v.shape for v in ds[0]["views"]]
    [torch.Size([1, 16, 16]), torch.Size([1, 16, 16])]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from domainfm.data.rng import item_generator
from domainfm.data.sampling import set_epoch


class DatasetWrapper(Dataset):
    """A dataset that adds something to each sample of ``dataset`` and otherwise looks like it: its
    length, its per-epoch randomness (``set_epoch``) and its extras (``epoch_batches``, ``classes``,
    ``stats``...). Dunder names are not passed through, so a batched ``__getitems__`` of the wrapped
    dataset never bypasses the wrapper's ``__getitem__``.
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch(self.dataset, epoch)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ViewsDataset(DatasetWrapper):
    def __init__(
        self, dataset, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n_views: int = 2, seed: int = 0
    ):
        super().__init__(dataset, seed)
        self.augment, self.n_views = augment, n_views

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        g = item_generator(self.seed, self.epoch, index, salt=17)
        sample["views"] = [self.augment(sample["image"], g) for _ in range(self.n_views)]
        return sample
