"""Training reads a prepared store: :func:`open_store` gives a ``torch`` Dataset of random crops.

Each crop is a slice of a zarr array, so only the chunks it covers are read, never a whole volume or
slide. Open item groups are kept in a small LRU (``max_open``), so memory does not grow with the archive.
Sample ``i`` is drawn from ``(seed, epoch, i)`` (the kit's per-item streams), so it is the same whichever
DataLoader worker or rank reads it; the engine's epoch-seeded permutation shards indices across ranks
(:meth:`StoreDataset.epoch_batches`), and :meth:`StoreDataset.stream` gives an ``IterableDataset``
that shards them across DataLoader workers and DDP ranks itself, without duplicates.

Example:
    >>> shard_indices(10, epoch=0, seed=0, rank=0, world_size=2, worker=0, num_workers=1)[:2] == \\
    ...     shard_indices(10, 0, 0, 0, 2, 0, 1)[:2]
    True
    >>> a = shard_indices(10, 0, 0, 0, 2, 0, 2) + shard_indices(10, 0, 0, 0, 2, 1, 2)
    >>> b = shard_indices(10, 0, 0, 1, 2, 0, 2) + shard_indices(10, 0, 0, 1, 2, 1, 2)
    >>> len(a) + len(b), set(a) & set(b)
    (10, set())
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from domainfm.data.rng import EpochAware, item_numpy_rng
from domainfm.data.sampling import default_epoch_batches
from domainfm.data.splits import holdout_split

from .layout import ITEMS, StoreError, read_manifest
from .spec import get_store_spec

SPLITS = ("pretrain", "train", "val", "test", "all")


def open_item_group(folder: str | Path):
    """Open one item's zarr group read-only (tests wrap this to count chunk reads)."""
    import zarr  # optional heavy dependency: the `store` extra

    return zarr.open_group(str(folder), mode="r")


def shard_indices(
    n: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
) -> list[int]:
    """The indices of ``range(n)`` one (rank, worker) reads in ``epoch``: an epoch-seeded permutation cut
    into equal rank shares (the remainder dropped, so ranks stay in step), each dealt round-robin to the
    rank's DataLoader workers. Together the shares hold each index at most once."""
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    order = torch.randperm(int(n), generator=g).tolist()
    per_rank = n // max(1, world_size)
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    return mine[worker :: max(1, num_workers)]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _crop_of(crop, default) -> list[int] | int | None:
    if crop is None:
        return default
    if isinstance(crop, (int, np.integer)):
        return int(crop)
    return [int(c) for c in crop]


class StoreDataset(EpochAware, Dataset):
    """Random crops of a prepared store, shaped like the domain's own samples (``image`` float32
    ``C x H x W`` or ``C x D x H x W``, ``meta`` with the source path, item key and geometry).

    Args:
        path: the store folder.  split: ``pretrain``/``all`` (every item) or ``train``/``val``/``test``
            (a held-out share of the items, ``val_fraction``, by the kit's split policy).
        crop: crop size (an int, or one per spatial axis); ``None``: the domain's default recorded at prepare.
        seed: base of the per-sample random streams.  max_open: item groups kept open (LRU).
        domain: the domain the store must hold (a store of another domain is refused in one line).
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "pretrain",
        crop: int | Sequence[int] | None = None,
        seed: int = 0,
        max_open: int = 8,
        val_fraction: float = 0.1,
        domain: str | None = None,
    ):
        if split not in SPLITS:
            raise StoreError(path, f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.path = Path(path)
        manifest = read_manifest(self.path, domain)
        self.domain = manifest["domain"]
        items = holdout_split(list(manifest["items"]), split, val_fraction, seed)
        if not items:
            raise StoreError(self.path, f"holds no items for split {split!r}; prepare some sources first")
        self.keys = [str(r["key"]) for r in items]
        self.records = items
        counts = np.array([max(0, int(r.get("samples", 1))) for r in items], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.info = {"settings": manifest["settings"], "summary": manifest.get("summary") or {}}
        self.crop = _crop_of(crop, manifest["settings"].get("crop"))
        self.split, self.seed, self.epoch = split, int(seed), 0
        self.max_open = max(1, int(max_open))
        self._open: OrderedDict[str, object] = OrderedDict()
        get_store_spec(self.domain)  # the plugin is loadable here (and so in each worker)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # zarr handles are reopened in each worker
        return state

    def __repr__(self) -> str:
        return (
            f"StoreDataset({self.path}, domain={self.domain}, split={self.split}, items={len(self.keys)}, "
            f"samples={len(self)}, crop={self.crop})"
        )

    def locate(self, index: int) -> tuple[int, int]:
        """``(item position, sample within the item)`` of sample ``index``.

        Example:
            >>> ds = StoreDataset.__new__(StoreDataset); ds.starts = np.array([0, 1, 4])
            >>> ds.locate(0), ds.locate(3)
            ((0, 0), (1, 2))
        """
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return k, int(index - self.starts[k])

    def arrays(self, k: int):
        """The zarr group of item ``k`` (opened once, kept in the LRU of ``max_open`` groups)."""
        key = self.keys[k]
        group = self._open.pop(key, None)
        if group is None:
            folder = self.path / ITEMS / key
            if not (folder / "zarr.json").is_file():
                raise StoreError(folder, "is listed in the manifest but missing; prepare the store again")
            group = open_item_group(folder)
        self._open[key] = group
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return group

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        k, j = self.locate(index)
        rng = item_numpy_rng(self.seed, self.epoch, index)
        spec = get_store_spec(self.domain)
        sample = spec.read_sample(self.arrays(k), self.records[k], j, self.crop, rng, self.info)
        sample.setdefault("meta", {}).update({"store": str(self.path), "key": self.keys[k]})
        return sample

    def epoch_batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        """The engine's batches: an epoch-seeded permutation split by rank (no sample on two ranks)."""
        return default_epoch_batches(len(self), epoch, batch_size, seed, rank, world_size)

    def stream(self) -> StoreStream:
        """This dataset as an ``IterableDataset`` sharded over DataLoader workers and DDP ranks."""
        return StoreStream(self)


class StoreStream(IterableDataset):
    """Iterates the share of an epoch of a :class:`StoreDataset` that this rank and DataLoader worker
    owns (:func:`shard_indices`); call :meth:`set_epoch` each epoch for a new permutation."""

    def __init__(self, dataset: StoreDataset):
        self.dataset = dataset
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def indices(self) -> list[int]:
        rank, world = _rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return shard_indices(len(self.dataset), self.epoch, self.dataset.seed, rank, world, worker, workers)

    def __iter__(self) -> Iterator[dict]:
        for i in self.indices():
            yield self.dataset[i]


def open_store(
    path: str | Path,
    split: str = "pretrain",
    crop: int | Sequence[int] | None = None,
    *,
    seed: int = 0,
    max_open: int = 8,
    val_fraction: float = 0.1,
    domain: str | None = None,
) -> StoreDataset:
    """A :class:`StoreDataset` of random crops of the store at ``path`` (``domainfm.pretrain(cfg,
    data=open_store(path))`` trains on it).

    Example:
        >>> open_store("no/such/store")
        Traceback (most recent call last):
        ...
        domainfm.store.layout.StoreError: no/such/store: does not exist; prepare one with domainfm prepare ...
    """
    return StoreDataset(path, split, crop, seed=seed, max_open=max_open, val_fraction=val_fraction, domain=domain)
