"""Datasets: tissue tiles of whole-slide images, and folders of labelled tile images.

:class:`SlideTileDataset` keeps one LRU of OpenSlide handles per process: handles are never pickled
and are reopened lazily in each DataLoader worker, so ``num_workers > 0`` is safe.
:class:`TileFolderDataset` reads ``root/<class>/*.png`` for tile classification.

Example:
    >>> import tempfile
    >>> from domainfm.pathology.synthetic import write_synthetic_slide
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(2):                         # two small pyramidal H&E slides at 0.5 µm/px
    ...     _ = write_synthetic_slide(folder / f"slides/s{i}.tif", (256, 256), mpp=0.5, seed=i)
    >>> slides = list_slides(folder / "slides")
    >>> ds = SlideTileDataset(slides, target_mpp=1.0, tile_size=64, coords_dir=folder / "tiles", verbose=False)
    >>> ds[0]["image"].shape, ds[0]["meta"]["size0"]   # 64 px at 1 µm/px = 128 level-0 pixels at 0.5 µm/px
    (torch.Size([3, 64, 64]), 128)
    >>> for name in ("tissue", "no-tissue"):      # labelled tiles: one folder per class
    ...     (folder / "tiles_png" / name).mkdir(parents=True)
    ...     for k in range(5):
    ...         Image.new("RGB", (32, 32), (200, 80, 160) if name == "tissue" else (250, 250, 250)).save(
    ...             folder / "tiles_png" / name / f"{k}.png")
    >>> tiles = TileFolderDataset(folder / "tiles_png", split="train", out_size=32)
    >>> tiles.classes, len(tiles)
    (['no-tissue', 'tissue'], 8)
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from domainfm.data.rng import EpochAware, item_generator
from domainfm.data.sample import collate_samples, make_sample
from domainfm.data.splits import holdout_split
from domainfm.errors import DataError
from domainfm.io_safety import report_dangling

from .regions import ReaderCache
from .slide import SLIDE_SUFFIXES
from .stain import MacenkoNormalizer, hed_jitter, macenko_stains
from .tiling import NoTissueError, TileGrid, cached_tile_grid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SlideRecord:
    """One slide of a dataset: its file, an optional MPP override and an optional slide label."""

    path: str
    mpp: float | None = None
    label: str | None = None


def list_slides(source: str | Path, mpp: float | None = None) -> list[SlideRecord]:
    """Slides of a file, a folder (slide suffixes, non-recursive) or a manifest CSV.

    A manifest has a ``slide`` (or ``path``) column, and optional ``mpp`` and ``label`` columns;
    relative paths are relative to the CSV. ``mpp`` (``data.options.mpp``) applies to slides whose row
    gives none.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "slides.csv").write_text("slide,mpp,label\\na.svs,0.25,tumor\\nb.svs,0.25,normal\\n")
        >>> [(Path(r.path).name, r.mpp, r.label) for r in list_slides(folder / "slides.csv")]  # paths: next to the CSV
        [('a.svs', 0.25, 'tumor'), ('b.svs', 0.25, 'normal')]
    """
    source = Path(source)
    if not source.exists():
        raise DataError(source, "does not exist (expected a slide, a folder of slides or a manifest CSV)")
    if source.is_dir():
        report_dangling(source, suffixes=SLIDE_SUFFIXES)  # a FIFO or a folder named .svs is named, not dropped
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        if not files:
            raise DataError(source, f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in this folder")
        return [SlideRecord(str(p), mpp) for p in files]
    if source.suffix.lower() == ".csv":
        try:
            with open(source, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(source, f"cannot read the manifest CSV ({exc})") from None
        if not rows:
            raise DataError(source, "the manifest CSV has no rows")
        col = "slide" if "slide" in rows[0] else "path" if "path" in rows[0] else None
        if col is None:
            raise DataError(source, f"the manifest needs a 'slide' or 'path' column (has {', '.join(rows[0])})")
        out = []
        for i, row in enumerate(rows, start=2):
            p = Path(row[col].strip())
            p = p if p.is_absolute() else source.parent / p
            row_mpp = row.get("mpp")
            try:
                m = float(row_mpp) if row_mpp not in (None, "") else mpp
            except ValueError:
                raise DataError(source, f"line {i}: mpp {row_mpp!r} is not a number") from None
            out.append(SlideRecord(str(p), m, row.get("label") or None))
        return out
    return [SlideRecord(str(source), mpp)]


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> contiguous float ``3 x H x W`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(rgb[..., :3].transpose(2, 0, 1), dtype=np.uint8)).float().div_(255.0)


class TileTransform:
    """uint8 RGB tile -> normalized ``3 x S x S`` float tensor, with optional Macenko normalization and,
    for training, flips/rotations and HED jitter driven by a ``torch.Generator`` (all but ``size``
    keyword-only).

    Example:
        >>> t = TileTransform(size=32)
        >>> t(np.zeros((64, 64, 3), np.uint8)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        size: int,
        *,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        macenko: MacenkoNormalizer | None = None,
        train: bool = False,
        stain_sigma: float = 0.0,
    ):
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.macenko = macenko
        self.train = train
        self.stain_sigma = float(stain_sigma)

    def __call__(self, rgb: np.ndarray, generator: torch.Generator | None = None, stains=None) -> torch.Tensor:
        rgb = np.asarray(rgb)
        if rgb.shape[0] != self.size or rgb.shape[1] != self.size:
            rgb = np.array(
                Image.fromarray(rgb[..., :3]).resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0)
            )
        if self.macenko is not None:
            rgb = self.macenko.normalize(rgb, stains)
        if not (self.train and generator is not None):
            return self.normalize_into(rgb, torch.empty(3, self.size, self.size))
        x = _to_tensor(rgb)
        k = int(torch.randint(0, 4, (1,), generator=generator))
        if k:
            x = torch.rot90(x, k, dims=(1, 2))
        if bool(torch.rand(1, generator=generator) < 0.5):
            x = torch.flip(x, dims=(2,))
        if self.stain_sigma > 0:
            x = hed_jitter(x, generator, self.stain_sigma)
        return x.sub_(self.mean).div_(self.std) if x.is_contiguous() else (x - self.mean) / self.std

    def normalize_into(self, rgb: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        """Write the normalized ``3 x H x W`` float form of uint8 ``rgb`` (``H x W x 3``) into ``out``:
        ``rgb * (1 / (255 std)) - mean / std``, one conversion and two in-place passes over cache-sized data.

        Example:
            >>> TileTransform(4, mean=(0.5,) * 3, std=(0.5,) * 3).normalize_into(
            ...     np.full((4, 4, 3), 255, np.uint8), torch.empty(3, 4, 4)).unique()
            tensor([1.])
        """
        rgb = np.asarray(rgb)[..., :3]
        out.copy_(torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()).permute(2, 0, 1))
        return out.mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)

    def batch(self, rgbs, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
        """Evaluation transform of ``S x S x 3`` uint8 tiles into one ``N x 3 x S x S`` tensor (no augmentation,
        no Macenko), the tiles normalized on ``pool`` threads when given: the same numbers as tile by tile.

        Example:
            >>> TileTransform(size=8).batch([np.zeros((8, 8, 3), np.uint8)] * 2).shape
            torch.Size([2, 3, 8, 8])
        """
        out = torch.empty(len(rgbs), 3, self.size, self.size)
        if pool is not None and len(rgbs) > 1:
            list(pool.map(self.normalize_into, rgbs, out))
        else:
            for rgb, o in zip(rgbs, out):
                self.normalize_into(rgb, o)
        return out


class SlideTileDataset(Dataset, EpochAware):
    """Tissue tiles of many slides at one MPP (samples ``{"image", "meta", ["label"]}``).

    Args (all but ``slides`` keyword-only):
        slides: :class:`SlideRecord` list (see :func:`list_slides`) or paths.
        target_mpp, tile_size, min_tissue, thumbnail_size: tiling (see :mod:`.tiling`).
        out_size: model input size (tiles are resized from ``tile_size``; default ``tile_size``).
        coords_dir: where tile grids are cached (``None``: not cached).
        transform: a :class:`TileTransform` (default: normalize only).
        max_tiles_per_slide: keep at most this many tiles per slide (a fixed random subset).
        labels: optional mapping ``class name -> index`` to attach slide labels to tiles.
        max_open: open slide handles kept per worker.
        read_threads: threads per process that decode and normalize the tiles of a batch (DataLoader
            batches go through ``__getitems__``: each TIFF tile of the batch is decoded once, see
            :mod:`.regions`). Default 1: on 2 cores, and with DataLoader workers, more threads measured slower.
        skip_no_tissue: skip (and count in ``skipped``) slides without tissue instead of raising.

    Example:
        >>> import tempfile
        >>> from domainfm.pathology.synthetic import write_synthetic_slide
        >>> slide = write_synthetic_slide(Path(tempfile.mkdtemp()) / "a.tif", (256, 256), mpp=None)   # no MPP stored
        >>> ds = SlideTileDataset([slide], target_mpp=1.0, tile_size=64, mpp=0.5, verbose=False)  # so give it
        >>> len(ds) > 0, ds.skipped
        (True, [])
    """

    def __init__(
        self,
        slides: Sequence[SlideRecord | str | Path],
        *,
        target_mpp: float = 0.5,
        tile_size: int = 224,
        out_size: int | None = None,
        min_tissue: float = 0.5,
        coords_dir: str | Path | None = None,
        transform: TileTransform | None = None,
        max_tiles_per_slide: int | None = None,
        mpp: float | None = None,
        thumbnail_size: int = 1024,
        labels: dict | None = None,
        max_open: int = 8,
        seed: int = 0,
        skip_no_tissue: bool = True,
        verbose: bool = True,
        read_threads: int = 1,
    ):
        records = [s if isinstance(s, SlideRecord) else SlideRecord(str(s), mpp) for s in slides]
        if not records:
            raise DataError(None, "no slides given")
        self.out_size = int(out_size or tile_size)
        self.transform = transform or TileTransform(self.out_size)
        self.seed = int(seed)
        self.labels = labels
        self.grids: list[TileGrid] = []
        self.records: list[SlideRecord] = []
        self.skipped: list[tuple[str, str]] = []
        index = []
        for rec in records:
            try:
                grid = cached_tile_grid(
                    rec.path,
                    coords_dir,
                    target_mpp=target_mpp,
                    tile_size=tile_size,
                    min_tissue=min_tissue,
                    mpp=rec.mpp if rec.mpp is not None else mpp,
                    thumbnail_size=thumbnail_size,
                )
            except NoTissueError as exc:
                if not skip_no_tissue:
                    raise
                self.skipped.append((rec.path, exc.problem))
                continue
            sel = np.arange(len(grid))
            if max_tiles_per_slide is not None and len(grid) > max_tiles_per_slide:
                rng = np.random.default_rng([self.seed, len(self.grids)])
                sel = np.sort(rng.choice(len(grid), int(max_tiles_per_slide), replace=False))
            k = len(self.grids)
            self.grids.append(grid)
            self.records.append(rec)
            index.append(np.stack([np.full(len(sel), k), sel], 1))
        if self.skipped and verbose:
            names = ", ".join(Path(p).name for p, _ in self.skipped[:5])
            warnings.warn(
                f"skipped {len(self.skipped)} slide(s) with no tissue: {names}"
                f"{' ...' if len(self.skipped) > 5 else ''}",
                stacklevel=2,
            )
        if not self.grids:
            if len(self.skipped) == 1:  # one slide: its own reason (e.g. a plain image, not a slide scan)
                raise DataError(
                    self.skipped[0][0], self.skipped[0][1].replace("min_tissue=", "data.options.min_tissue")
                )
            raise DataError(
                Path(records[0].path).parent,
                f"no tissue tiles in any of {len(records)} slide(s) (all skipped: no tissue found); "
                "lower data.options.min_tissue or check the slides",
            )
        self.index = np.concatenate(index, 0).astype(np.int64)
        self.cache = ReaderCache(max_open)
        self._stains: dict[int, object] = {}
        self.read_threads = max(1, int(read_threads))
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # thread pools do not cross processes
        return state

    def _thread_pool(self) -> ThreadPoolExecutor | None:
        if self.read_threads < 2:
            return None
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(self.read_threads, thread_name_prefix="domainfm-tiles"))
        return self._pool[1]

    def __len__(self) -> int:
        return int(len(self.index))

    def _slide_stains(self, k: int, slide):
        """Macenko stain estimate of slide ``k`` from up to 8 of its tiles (once per worker)."""
        if k not in self._stains:
            grid = self.grids[k]
            pick = np.linspace(0, len(grid) - 1, min(8, len(grid))).astype(int)
            tiles = np.concatenate(grid.read_many(self.cache.reader(grid.path), [int(i) for i in pick]), 0)
            self._stains[k] = macenko_stains(tiles)
        return self._stains[k]

    def read_tile(self, i: int) -> np.ndarray:
        """Tile ``i`` as a uint8 RGB array of ``tile_size`` pixels (no normalization)."""
        k, j = (int(v) for v in self.index[i])
        return self.grids[k].read_many(self.cache.reader(self.grids[k].path), [j])[0]

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> list[dict]:
        """Samples ``indices`` (what a DataLoader asks for per batch): tiles grouped by slide and read
        together (:meth:`TileGrid.read_many`), then transformed; the same samples as item by item."""
        indices = [int(i) for i in indices]
        pool = self._thread_pool()
        rgbs: list[np.ndarray | None] = [None] * len(indices)
        by_slide: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            by_slide.setdefault(int(self.index[i][0]), []).append(pos)
        for k, positions in by_slide.items():
            grid = self.grids[k]
            js = [int(self.index[indices[p]][1]) for p in positions]
            tiles = grid.read_many(self.cache.reader(grid.path), js, pool)
            for p, t in zip(positions, tiles):
                rgbs[p] = t
        t = self.transform
        if not t.train and t.macenko is None and all(r.shape[:2] == (t.size, t.size) for r in rgbs):
            images = list(t.batch(rgbs, pool))  # one output tensor, tiles normalized on the pool
        else:
            images = []
            for i, rgb in zip(indices, rgbs):
                k = int(self.index[i][0])
                stains = self._slide_stains(k, None) if t.macenko is not None else None
                g = item_generator(self.seed, self.epoch, i) if t.train else None
                images.append(t(rgb, g, stains))
        return [self._sample(i, image) for i, image in zip(indices, images)]

    def _sample(self, i: int, image: torch.Tensor) -> dict:
        k, j = (int(v) for v in self.index[i])
        grid = self.grids[k]
        x, y = (int(v) for v in grid.coords[j])
        rec = self.records[k]
        label = None
        if self.labels is not None and rec.label is not None:
            label = int(self.labels[rec.label])
        return make_sample(
            image,
            path=grid.path,
            label=label,
            x=x,
            y=y,
            level=grid.level,
            size0=grid.size0,
            slide_index=k,
            tile_index=j,
        )


class TileFolderDataset(Dataset, EpochAware):
    """Labelled tiles from ``root/<class name>/*.png`` (or unlabelled from a flat folder).

    ``split`` ``"train"``/``"val"`` draws a fixed, per-class ``val_fraction`` of files (seeded);
    ``"pretrain"`` and ``"all"`` use every file; ``"test"`` uses the validation part. Arguments after
    ``root`` and ``split`` are keyword-only.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("tissue", (200, 80, 160)), ("no-tissue", (250, 250, 250))):
        ...     (root / name).mkdir()
        ...     for k in range(5):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{k}.png")
        >>> ds = TileFolderDataset(root, split="train", out_size=32)
        >>> ds.classes, ds[0]["label"], ds[0]["image"].shape
        (['no-tissue', 'tissue'], 0, torch.Size([3, 32, 32]))
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        *,
        out_size: int = 224,
        transform: TileTransform | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        classes: Sequence[str] | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DataError(root, "is not a folder of tiles")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files: list[tuple[Path, int | None]] = []
        if subdirs:
            self.classes = list(classes) if classes is not None else [d.name for d in subdirs]
            for d in subdirs:
                if d.name not in self.classes:
                    raise DataError(d, f"class folder {d.name!r} is not among the model's classes {self.classes}")
                found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                files += [(p, self.classes.index(d.name)) for p in found]
        else:
            self.classes = []
            files = [(p, None) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(root, f"no tile images ({', '.join(IMAGE_SUFFIXES)}) found in it or its class subfolders")
        if split in ("train", "val", "test") and subdirs:
            files = holdout_split(files, split, val_fraction, seed, labels=[lab for _, lab in files])
        self.files = files
        self.root = root
        self.seed = int(seed)
        self.transform = transform or TileTransform(out_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path, label = self.files[i]
        try:
            with Image.open(path) as im:
                if im.mode in ("RGBA", "LA", "P"):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise DataError(path, f"cannot read the tile image ({exc})") from None
        g = item_generator(self.seed, self.epoch, i) if self.transform.train else None
        return make_sample(self.transform(rgb, g), path=str(path), label=label)


def is_tile_folder(path: str | Path) -> bool:
    """True if ``path`` is a folder of tile images (flat or in class subfolders) rather than slides."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any(
        p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and p.suffix.lower() not in (".tif", ".tiff")
        for p in path.iterdir()
    ):
        return False
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    pool = [q for d in subdirs for q in d.iterdir()] if subdirs else list(path.iterdir())
    pngs = [p for p in pool if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
    return len(pngs) > 0


def make_loader(
    ds: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = False, collate: Callable | None = None
) -> torch.utils.data.DataLoader:
    """A DataLoader over sample dicts (persistent workers when ``num_workers > 0``)."""
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate or collate_samples,
        persistent_workers=num_workers > 0,
    )
