"""Training reads a prepared store: :func:`open_store` gives a ``torch`` Dataset of random crops.

Each crop is a slice of a zarr array, so only the chunks it covers are read, never a whole volume or
slide: the chunk files are read and decoded in the calling thread (:mod:`domainfm.store.chunks`), not
through zarr's event loop. Open item groups are kept in a small LRU (``max_open``) and decoded chunks in a
cache bounded in bytes (``cache_mb``), so memory does not grow with the archive.
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

from .chunks import ChunkCache, StoredGroup
from .layout import ITEMS, StoreError, read_manifest
from .spec import get_store_spec

SPLITS = ("pretrain", "train", "val", "test", "all")
#: decoded chunks kept per dataset (per DataLoader worker), in MB
CACHE_MB = 64


def store_record(path: Path, manifest: dict, n_items: int | None = None) -> dict:
    """What a run that read the store records of it (``card.data["store"]``): the path, format, domain, item
    and sample counts, how many sources it was prepared from, when, and the software that prepared it.

    Example:
        >>> m = {"format": "domainfm-store", "domain": "medical", "items": [{"path": "a"}], "samples": 1,
        ...      "software": {"domainfm": "1.0"}, "updated": "t", "created": "t"}
        >>> r = store_record(Path("s"), m); r["sources"], r["software"]["domainfm"], r["complete"]
        (1, '1.0', True)
    """
    items = manifest.get("items") or []
    return {
        "path": str(path),
        "format": manifest.get("format"),
        "format_version": manifest.get("format_version"),
        "domain": manifest.get("domain"),
        "items": len(items) if n_items is None else int(n_items),
        "sources": len({str(r.get("path")) for r in items if isinstance(r, dict)}),
        "samples": int(manifest.get("samples") or sum(int(r.get("samples", 1)) for r in items)),
        "complete": bool(manifest.get("complete", not manifest.get("failed"))),
        "source": manifest.get("source"),
        "compression": (manifest.get("compression") or {}).get("name"),
        "created": manifest.get("created"),
        "updated": manifest.get("updated"),
        "software": dict(manifest.get("software") or {}),
    }


def open_item_group(folder: str | Path, cache: ChunkCache) -> StoredGroup:
    """One item's arrays, read-only, decoded chunks kept in ``cache``."""
    return StoredGroup(folder, cache)


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
        cache_mb: decoded chunks kept (LRU, in MB, per process; 0: none), so crops that fall on chunks
            read before decode nothing; memory stays within it whatever the archive's size.
        domain: the domain the store must hold (a store of another domain is refused in one line).
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "pretrain",
        crop: int | Sequence[int] | None = None,
        seed: int = 0,
        max_open: int = 256,
        val_fraction: float = 0.1,
        domain: str | None = None,
        cache_mb: float = CACHE_MB,
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
        self.store = store_record(self.path, manifest, len(items))  # the card's data.store (domainfm.contract)
        self.crop = _crop_of(crop, manifest["settings"].get("crop"))
        self.split, self.seed, self.epoch = split, int(seed), 0
        self.max_open = max(1, int(max_open))
        self.cache_mb = float(cache_mb)
        self._open: OrderedDict[str, StoredGroup] = OrderedDict()
        self._cache = ChunkCache(int(self.cache_mb * 2**20))
        get_store_spec(self.domain)  # the plugin is loadable here (and so in each worker)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # groups are reopened, chunks decoded again, in each worker
        state["_cache"] = ChunkCache(int(self.cache_mb * 2**20))
        return state

    def _shared(self, key: str):
        """``key`` of the item records when every item has the same one (else ``None``)."""
        values = [r.get(key) for r in self.records]
        return values[0] if values and values[0] is not None and all(v == values[0] for v in values) else None

    @property
    def wavelengths(self) -> list[float] | None:
        """Central wavelength per channel (µm) when every item has the same bands (remote sensing)."""
        return self._shared("wavelengths")

    @property
    def band_names(self) -> list[str] | None:
        return self._shared("bands")

    @property
    def spacing(self) -> list[float] | None:
        """Voxel spacing (mm) shared by the items (medical)."""
        return self._shared("spacing")

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the stored tiles (pathology)."""
        return self.info["settings"].get("target_mpp")

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
        """The arrays of item ``k`` (opened once, kept in the LRU of ``max_open`` groups)."""
        key = self.keys[k]
        group = self._open.pop(key, None)
        if group is None:
            folder = self.path / ITEMS / key
            if not (folder / "zarr.json").is_file():
                raise StoreError(folder, "is listed in the manifest but missing; prepare the store again")
            group = open_item_group(folder, self._cache)
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
    max_open: int = 256,
    val_fraction: float = 0.1,
    domain: str | None = None,
    cache_mb: float = CACHE_MB,
) -> StoreDataset:
    """A :class:`StoreDataset` of random crops of the store at ``path`` (``domainfm.pretrain(cfg,
    data=open_store(path))`` trains on it).

    Example:
        >>> open_store("no/such/store")
        Traceback (most recent call last):
        ...
        domainfm.store.layout.StoreError: no/such/store: does not exist; prepare one with domainfm prepare ...
    """
    return StoreDataset(
        path, split, crop, seed=seed, max_open=max_open, val_fraction=val_fraction, domain=domain, cache_mb=cache_mb
    )
