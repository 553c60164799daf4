"""Datasets of chips/tiles from scenes, class folders or a CSV manifest; grouped by sensor per batch.

Sources (``discover_items``):

* **scenes**: a folder of scenes (multi-band rasters, or sub-folders with one raster per band);
  chips are sampled at random or on a grid.
* **classes**: EuroSAT-style tiles in class sub-folders (``root/Forest/*.tif``); one label per tile.
* **manifest**: a CSV with ``image`` and optional ``label`` (``a;b`` for multi-label), ``mask``
  (a raster on the image's grid), ``sensor`` and ``split`` columns; paths relative to the CSV.
* several sensors: ``sensor: sentinel2,landsat8`` with sub-folders named after the sensors
  (or a ``sensor`` column); batches then hold one sensor each (:meth:`RasterChipDataset.epoch_batches`).

Example:
    >>> import tempfile
    >>> from domainfm.remote_sensing.synthetic import write_scene
    >>> folder = Path(tempfile.mkdtemp())
    >>> for k in range(2):
    ...     _ = write_scene(folder / f"scene{k}.tif", "sentinel2", ["B02", "B03"], size=(32, 32), seed=k)
    >>> items, classes, kind = discover_items(folder, ["sentinel2"])
    >>> len(items), classes, kind
    (2, [], 'scenes')
    >>> ds = RasterChipDataset(items, bands={"sentinel2": ["B02", "B03"]}, chip_size=16)
    >>> ds[0]["image"].shape
    torch.Size([2, 16, 16])
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from domainfm.data.rng import EpochAware, item_numpy_rng
from domainfm.data.sample import make_sample
from domainfm.errors import ConfigError, DataError, did_you_mean
from domainfm.inference import window_starts
from domainfm.io_safety import report_dangling

from .io import RASTER_SUFFIXES, MaskRaster, Scene, is_raster_name, open_raster, raster_values
from .sensors import _norm, get_sensor
from .stats import BandStats, normalize, stats_arrays

log = logging.getLogger("domainfm.remote_sensing")


@dataclass
class Item:
    """One scene or tile: its path, sensor, optional label / mask, and the row band it may use.

    ``region`` is a (start, stop) fraction of the scene's rows: a scene too few to split by file is
    split spatially (labels outside the region are ignored).
    """

    path: Path
    sensor: str
    label: Any = None
    mask: Path | None = None
    region: tuple[float, float] = (0.0, 1.0)
    split: str | None = None


# ---- discovery ----------------------------------------------------------------------------------
def _raster_files(folder: Path) -> list[Path]:
    report_dangling(folder, suffixes=RASTER_SUFFIXES)  # skipped entries are named, never dropped silently
    return sorted(p for p in folder.iterdir() if p.is_file() and is_raster_name(p) and not p.name.startswith("."))


def _looks_like_band_folder(folder: Path, sensor: str, sensors_file) -> bool:
    """A scene split into files: >= 2 rasters that each hold *different* bands of the sensor (named by
    file-name token or band description). Class folders of tiles hold the same bands in every file."""
    files = _raster_files(folder)
    if len(files) < 2 or len(files) > 64:
        return False
    s = get_sensor(sensor, sensors_file)
    band_of = {k: b.name for b in s.bands for k in b.keys()}
    seen: set[str] = set()
    for f in files:
        names = {band_of[t] for t in (_norm(x) for x in re.split(r"[^A-Za-z0-9]+", f.stem) if x) if t in band_of}
        if not names:
            try:
                names = {band_of[_norm(d)] for d in (open_raster(f).descriptions or ()) if d and _norm(d) in band_of}
            except DataError:
                return False
        if not names or names & seen:
            return False
        seen |= names
    return True


def _scene_items(folder: Path, sensor: str, sensors_file) -> list[Item]:
    items = [Item(f, sensor) for f in _raster_files(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _looks_like_band_folder(sub, sensor, sensors_file):
            items.append(Item(sub, sensor))
    return items


def _class_items(folder: Path, sensor: str) -> tuple[list[Item], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for k, c in enumerate(classes):
        items += [
            Item(f, sensor, label=k) for f in sorted((folder / c).rglob("*")) if f.is_file() and is_raster_name(f)
        ]
    return items, classes


def _manifest_rows(csv_path: Path) -> list[dict]:
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(csv_path, f"cannot read the manifest CSV ({exc})") from None
    if not rows or "image" not in rows[0]:
        raise DataError(csv_path, "manifest needs an 'image' column (and optional label, mask, sensor, split)")
    return rows


def _row_sensor(row: dict, line: int, sensors: list[str], csv_path: Path, sensors_file) -> str:
    """The configured sensor a manifest row names (its ``sensor`` column, an alias, or the first sensor)."""
    known = {_norm(s): s for s in sensors}
    sensor = (row.get("sensor") or "").strip() or sensors[0]
    if _norm(sensor) not in known:
        try:
            sensor = get_sensor(sensor, sensors_file).name
        except ConfigError:
            raise DataError(csv_path, f"line {line}: unknown sensor {sensor!r}") from None
    if _norm(sensor) not in known:
        raise DataError(csv_path, f"line {line}: sensor {sensor!r} is not among the configured sensors {sensors}")
    return known[_norm(sensor)]


def _index_labels(items: list[Item], raw_labels: list[list[str] | None]) -> list[str]:
    """Class names of the manifest's labels (numbers in numeric order first) set on ``items`` as indices
    (a list of indices where any row has several labels)."""
    if not any(r is not None for r in raw_labels):
        return []
    classes = sorted(
        {t for r in raw_labels if r for t in r},
        key=lambda t: (not t.lstrip("-").isdigit(), int(t) if t.lstrip("-").isdigit() else 0, t),
    )
    multi = any(r is not None and len(r) > 1 for r in raw_labels)
    index = {c: i for i, c in enumerate(classes)}
    for it, r in zip(items, raw_labels):
        if r is not None:
            it.label = [index[t] for t in r] if multi else index[r[0]]
    return classes


def _manifest_items(csv_path: Path, sensors: list[str], sep: str, sensors_file=None) -> tuple[list[Item], list[str]]:
    base = csv_path.parent
    raw_labels: list[list[str] | None] = []
    items = []
    for n, row in enumerate(_manifest_rows(csv_path), start=2):
        img = (row.get("image") or "").strip()
        if not img:
            raise DataError(csv_path, f"line {n}: empty image path")
        p = Path(img) if Path(img).is_absolute() else base / img
        sensor = _row_sensor(row, n, sensors, csv_path, sensors_file)
        mask = (row.get("mask") or "").strip()
        m = None if not mask else (Path(mask) if Path(mask).is_absolute() else base / mask)
        lab = (row.get("label") or "").strip()
        raw_labels.append([t.strip() for t in lab.split(sep) if t.strip()] if lab else None)
        items.append(Item(p, sensor, mask=m, split=(row.get("split") or "").strip().lower() or None))
    return items, _index_labels(items, raw_labels)


def discover_items(
    path: str | Path, sensors: list[str], layout: str = "auto", sensors_file=None, label_sep: str = ";"
) -> tuple[list[Item], list[str], str]:
    """Find the scenes/tiles under ``path``; returns ``(items, classes, kind)``.

    ``layout``: ``auto`` | ``scenes`` | ``classes`` | ``manifest``. With several sensors a folder
    must have one sub-folder per sensor (named like the sensor or one of its aliases).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "data path does not exist")
    if layout not in ("auto", "scenes", "classes", "manifest"):
        raise ConfigError(
            f"layout must be auto, scenes, classes or manifest, got {layout!r}"
            + did_you_mean(layout, ("auto", "scenes", "classes", "manifest"))
        )
    if path.is_file() and (layout == "manifest" or path.suffix.lower() == ".csv"):
        items, classes = _manifest_items(path, sensors, label_sep, sensors_file)
        return items, classes, "manifest"
    if path.is_file():
        if is_raster_name(path) or layout == "scenes":
            return [Item(path, sensors[0])], [], "scenes"
        raise DataError(path, "data path is neither a raster, a folder nor a .csv manifest")
    if len(sensors) > 1:
        return _sensor_folders(path, sensors, layout, sensors_file, label_sep)
    return _folder_items(path, sensors[0], layout, sensors_file)


def _sensor_folders(path: Path, sensors: list[str], layout: str, sensors_file, label_sep: str):
    """Several sensors: one sub-folder per sensor (its name or an alias), each discovered on its own."""
    items, classes, kinds = [], [], set()
    subs = {_norm(p.name): p for p in path.iterdir() if p.is_dir()}
    for s in sensors:
        sensor = get_sensor(s, sensors_file)
        names = [sensor.name, *sensor.aliases, s]
        sub = next((subs[_norm(n)] for n in names if _norm(n) in subs), None)
        if sub is None:
            raise DataError(
                path,
                f"with several sensors the folder needs one sub-folder per sensor; "
                f"none named {s!r} (found: {', '.join(sorted(p.name for p in subs.values()))})",
            )
        its, cls, kind = discover_items(sub, [s], layout, sensors_file, label_sep)
        if cls and classes and cls != classes:
            raise DataError(sub, f"class folders {cls} differ from {classes} of the other sensors")
        classes = cls or classes
        items += its
        kinds.add(kind)
    return items, classes, kinds.pop() if len(kinds) == 1 else "scenes"


def _folder_items(path: Path, sensor: str, layout: str, sensors_file) -> tuple[list[Item], list[str], str]:
    """One sensor's folder: scenes (rasters or per-band folders), else class sub-folders of tiles."""
    if layout == "classes":
        items, classes = _class_items(path, sensor)
        return items, classes, "classes"
    scene_items = _scene_items(path, sensor, sensors_file)
    if layout == "scenes" or scene_items:
        if not scene_items:
            raise DataError(path, "no raster scenes (.tif/.tiff/.jp2/.vrt files or per-band folders) found")
        return scene_items, [], "scenes"
    items, classes = _class_items(path, sensor)
    if not items:
        raise DataError(
            path,
            "no rasters found: expected scenes (.tif...), per-band scene folders, "
            "class sub-folders of tiles, or a .csv manifest",
        )
    return items, classes, "classes"


def _stable_fraction(key: str, seed: int) -> float:
    h = hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
    return int(h[:8], 16) / 0xFFFFFFFF


def _given_split(items: list[Item], split: str) -> list[Item]:
    """The items a ``split`` column puts in ``split`` (``test`` falls back to the validation rows)."""
    want = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}[split]
    chosen = [it for it in items if it.split in want]
    if not chosen and split == "test":
        chosen = [it for it in items if it.split in ("val", "valid", "validation")]
    return chosen


def split_items(items: list[Item], split: str, val_fraction: float, seed: int = 0) -> list[Item]:
    """Items of ``split`` (``pretrain``: all but explicit test rows; ``train``/``val``/``test``).

    A ``split`` column wins; otherwise items are split by a stable hash of their path, and fewer
    than 4 items are split spatially (train rows on top, val/test rows at the bottom).
    """
    if split == "pretrain":
        return [it for it in items if it.split != "test"]
    if any(it.split for it in items):
        return _given_split(items, split)
    if split == "test":
        split = "val"
    if len(items) < 4:
        f = min(max(val_fraction, 0.05), 0.95)
        region = (0.0, 1.0 - f) if split == "train" else (1.0 - f, 1.0)
        return [Item(it.path, it.sensor, it.label, it.mask, region, it.split) for it in items]
    flags = [_stable_fraction(str(it.path), seed) < val_fraction for it in items]
    if not any(flags):
        flags[-1] = True
    if all(flags):
        flags[0] = False
    return [it for it, v in zip(items, flags) if v == (split == "val")]


# ---- the dataset ----------------------------------------------------------------------------------
def _no_valid_data(items: list[Item]) -> str:
    """The one line for data in which no scene has a valid pixel, naming the scenes."""
    names = ", ".join(str(it.path) for it in items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
    return f"no scene has valid data (all nodata or cloud): {names}"


def _check_named_ids(by_mask: dict[str, set[int]], found: list[int], names: list[str]) -> None:
    """The mask ids (background 0 always a class) are no more than the class names given, one per id in id
    order; a mask holding an id past the names is refused, naming it and the ids.

    Example:
        >>> _check_named_ids({"a.tif": {0, 1}, "b.tif": {0, 7}}, [0, 1, 7], ["bg", "forest"])
        Traceback (most recent call last):
        ...
        domainfm.errors.DataError: b.tif: holds label ids [7] past the 2 classes data.options.classes names ...
    """
    ids = sorted(set(found) | {0})
    unnamed = ids[len(names) :]
    if not unnamed:
        return
    path = next(p for p, values in by_mask.items() if values & set(unnamed))
    held = sorted(by_mask[path] & set(unnamed))
    named = ", ".join(f"{i}: {n}" for i, n in zip(ids, names))
    raise DataError(
        path,
        f"holds label ids {held} past the {len(names)} classes data.options.classes names ({named}; the masks "
        f"hold ids {ids}); give one class name per id, or fix the mask",
    )


class RasterChipDataset(torch.utils.data.Dataset, EpochAware):
    """Chips (or whole tiles) of rasters as samples: normalised image, wavelengths, label/mask, meta.

    Args:
        items: from :func:`discover_items` / :func:`split_items`.
        bands: ``{sensor name: [band names]}`` (empty list: all of the sensor's bands).
        chip_size: chip side in reference-grid pixels; ``img_size`` (default: the same) is the side
            of the returned image (chips are resampled on read when they differ).
        sampling: ``random`` (``chips_per_scene`` chips per scene and epoch), ``grid`` (every
            non-overlapping chip, ``grid_overlap`` px overlap) or ``whole`` (one sample per tile).
        stats: ``{sensor: {band: [mean, std]}}``; ``None`` leaves values unnormalised.
        min_valid: chips with fewer valid pixels than this fraction are skipped (counted, logged);
            all-nodata chips are always skipped.

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_scene
        >>> path, _ = write_scene(Path(tempfile.mkdtemp()) / "a.tif", "naip", size=(32, 32))
        >>> ds = RasterChipDataset([Item(path, "naip")], {"naip": []}, 16)
        >>> s = ds[0]; s["wavelengths"]
        [0.635, 0.555, 0.465, 0.845]
    """

    def __init__(
        self,
        items: list[Item],
        bands: dict[str, list[str]],
        chip_size: int,
        img_size: int | None = None,
        sampling: str = "random",
        chips_per_scene: int = 16,
        grid_overlap: int = 0,
        stats: dict | None = None,
        seed: int = 0,
        min_valid: float = 0.0,
        classes: list[str] | None = None,
        multilabel: bool = False,
        ignore_index: int = -1,
        resolution: float | None = None,
        resampling: str = "bilinear",
        sensors_file: str | None = None,
        max_tries: int = 16,
    ):
        if not items:
            raise DataError(None, "no scenes or tiles to sample from")
        if sampling not in ("random", "grid", "whole"):
            raise ConfigError(
                f"sampling must be random, grid or whole, got {sampling!r}"
                + did_you_mean(sampling, ("random", "grid", "whole"))
            )
        self.items = items
        self.bands = bands
        self.chip_size = int(chip_size)
        self.img_size = int(img_size or chip_size)
        self.sampling = sampling
        self.chips_per_scene = int(chips_per_scene)
        self.grid_overlap = int(grid_overlap)
        self.stats = stats
        self.seed = int(seed)
        self.epoch = 0
        self.min_valid = float(min_valid)
        self.classes = list(classes or [])
        self.mask_classes: list[str] | None = None  # segmentation class names by id order (data.options.classes)
        self.multilabel = multilabel
        self.ignore_index = ignore_index
        self.resolution = resolution
        self.resampling = resampling
        self.sensors_file = sensors_file
        self.max_tries = max_tries
        self.skipped = 0
        self._scenes: dict[int, Scene] = {}
        self._masks: dict[int, MaskRaster] = {}
        self._grid: list[tuple[int, int, int]] = []
        self._skip_logged: set[int] = set()
        self._last_valid: np.ndarray | None = None
        self._looked_empty: set[int] = set()  # scenes checked whole after max_tries empty chips
        self.empty_scenes: set[int] = set()  # of those, the ones with no valid pixel: random sampling skips them
        # open the first item now so that band/sensor mistakes surface at once
        self.scene(0)
        if sampling == "grid":
            step = max(1, self.chip_size - self.grid_overlap)
            for k, _it in enumerate(items):
                self._check_empty(k)  # a scene without a valid pixel is left out (one warning), never read chip by chip
                if k in self.empty_scenes:
                    continue
                sc = self.scene(k)
                r0, r1 = self._row_range(k)
                rows = window_starts(sc.height, self.chip_size, step, r0, r1)
                cols = window_starts(sc.width, self.chip_size, step)
                self._grid += [(k, r, c) for r in rows for c in cols]
            if not self._grid:
                raise DataError(None, _no_valid_data(items))

    # -- structure
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def scene(self, k: int) -> Scene:
        """The (lazily opened) :class:`Scene` of item ``k``."""
        sc = self._scenes.get(k)
        if sc is None:
            it = self.items[k]
            sc = Scene(
                it.path,
                it.sensor,
                self.bands.get(it.sensor) or None,
                self.resolution,
                self.resampling,
                self.sensors_file,
            )
            self._scenes[k] = sc
        return sc

    def label_values(self) -> list[int]:
        """Every label id of the data, from the label rasters themselves (read block by block, nodata left
        out) or the items' class labels, not from sampled chips: the class map built from it holds a class
        that only a few pixels carry (:func:`domainfm.classmap.resolve_classes`)."""
        masks = list(dict.fromkeys(str(it.mask) for it in self.items if it.mask is not None))
        if masks:
            by_mask = {path: set(raster_values(path)) for path in masks}
            found = sorted(set().union(*by_mask.values()))
            if self.mask_classes:  # unlabelled pixels (ignore_index, negative ids) need no name
                by_id = {p: {v for v in values if v >= 0 and v != self.ignore_index} for p, values in by_mask.items()}
                _check_named_ids(by_id, sorted(set().union(*by_id.values())), self.mask_classes)
            return found
        found: set[int] = set()
        for it in self.items:
            if it.label is not None:
                found.update(int(v) for v in (it.label if isinstance(it.label, list) else [it.label]))
        return sorted(found)

    def mask_raster(self, k: int) -> MaskRaster | None:
        it = self.items[k]
        if it.mask is None:
            return None
        m = self._masks.get(k)
        if m is None:
            m = MaskRaster(it.mask, self.scene(k).grid, self.ignore_index, image=it.path)
            self._masks[k] = m
        return m

    def __len__(self) -> int:
        if self.sampling == "grid":
            return len(self._grid)
        if self.sampling == "whole":
            return len(self.items)
        return len(self.items) * self.chips_per_scene

    def item_of(self, i: int) -> int:
        """The item (scene/tile) index sample ``i`` is drawn from."""
        if self.sampling == "grid":
            return self._grid[i][0]
        if self.sampling == "whole":
            return i
        return i // self.chips_per_scene

    def sensor_of(self, i: int) -> str:
        return self.items[self.item_of(i)].sensor

    def _row_range(self, k: int) -> tuple[int, int]:
        sc = self.scene(k)
        r0, r1 = self.items[k].region
        return int(math.floor(r0 * sc.height)), int(math.ceil(r1 * sc.height))

    # -- batching: one sensor (band set) per batch
    def epoch_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = True
    ) -> list[list[int]]:
        """Shuffled batches in which every sample comes from one sensor (collate needs one band set).

        Deterministic in ``(seed, epoch)``; batches are dealt round-robin to ranks.
        """
        g = np.random.default_rng([seed, epoch, 7919])
        groups: dict[str, list[int]] = {}
        for i in range(len(self)):
            groups.setdefault(self.sensor_of(i), []).append(i)
        batches = []
        for name in sorted(groups):
            idx = np.array(groups[name])
            g.shuffle(idx)
            cut = [idx[j : j + batch_size].tolist() for j in range(0, len(idx), batch_size)]
            if drop_last and len(cut) > 1 and len(cut[-1]) < batch_size:
                cut = cut[:-1]
            batches += cut
        order = g.permutation(len(batches))
        batches = [batches[j] for j in order]
        if world_size > 1:
            n = len(batches) // world_size
            batches = batches[rank::world_size][:n]
        return batches

    # -- reading
    def _window_for(self, k: int, rng: np.random.Generator) -> Window:
        sc = self.scene(k)
        c = self.chip_size
        r0, r1 = self._row_range(k)
        if r1 - r0 >= c:  # chips fit inside this split's rows: no pixel of the other split is read
            lo, hi = r0, min(r1 - c, sc.height - c)
        else:  # a region thinner than a chip: chips overlap the other split, whose labels are masked out
            lo = max(0, min(r0 - c // 2, sc.height - c))
            hi = max(lo, min(r1 - c // 2, sc.height - c))
        row = int(rng.integers(lo, hi + 1)) if sc.height > c else 0
        col = int(rng.integers(0, sc.width - c + 1)) if sc.width > c else 0
        return Window(col, row, c, c)

    def _read(self, k: int, window: Window | None) -> dict | None:
        sc = self.scene(k)
        out = (self.img_size, self.img_size)
        if window is None:  # whole tile, resampled to img_size
            window = Window(0, 0, sc.width, sc.height)
        data, valid = sc.read(window, out_size=None if (window.height, window.width) == out else out)
        self._last_valid = valid
        frac = float(valid.mean())
        if frac <= 0.0 or frac < self.min_valid:
            self._note_skip(k, frac)
            return None
        if self.stats is not None:
            mean, std = stats_arrays(self.stats.get(sc.sensor.name, {}), sc.band_names, f" of sensor {sc.sensor.name}")
            data = normalize(data, valid, mean, std)
        it = self.items[k]
        meta = dict(
            sensor=sc.sensor.name,
            bands=sc.band_names,
            window=[int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
            crs=sc.grid.crs.to_wkt() if sc.grid.crs else None,
            transform=list(sc.grid.transform)[:6],
            valid_fraction=frac,
        )
        sample = make_sample(
            torch.from_numpy(np.ascontiguousarray(data)), path=str(it.path), wavelengths=sc.wavelengths, **meta
        )
        if it.label is not None:
            if self.multilabel:
                vec = torch.zeros(max(self.num_classes, 1), dtype=torch.float32)
                vec[torch.as_tensor(it.label if isinstance(it.label, list) else [it.label])] = 1.0
                sample["label"] = vec
            else:
                sample["label"] = int(it.label[0] if isinstance(it.label, list) else it.label)
        mr = self.mask_raster(k)
        if mr is not None:
            m = mr.read(window, out_size=out)
            vm = valid if valid.shape == m.shape else np.ones_like(m, bool)
            m[~vm] = self.ignore_index
            r0, r1 = self._row_range(k)
            if (r0, r1) != (0, sc.height):  # spatial split: labels outside the region are ignored
                rows = np.arange(int(window.row_off), int(window.row_off) + int(window.height))
                rows = (
                    np.round(np.linspace(rows[0], rows[-1], m.shape[0])).astype(int)
                    if len(rows) != m.shape[0]
                    else rows
                )
                m[(rows < r0) | (rows >= r1)] = self.ignore_index
            sample["mask"] = torch.from_numpy(m)
        return sample

    def _check_empty(self, k: int, side: int = 256) -> None:
        """After ``max_tries`` chips of scene ``k`` without data, read it whole at most ``side`` px a side,
        once; a scene with no valid pixel (all nodata or cloud) is left out of random sampling, with a warning."""
        if k in self._looked_empty:
            return
        self._looked_empty.add(k)
        sc = self.scene(k)
        scale = max(sc.height, sc.width) / side
        out = (max(1, round(sc.height / scale)), max(1, round(sc.width / scale))) if scale > 1 else None
        _, valid = sc.read(Window(0, 0, sc.width, sc.height), out_size=out)
        if not valid.any():
            self.empty_scenes.add(k)
            log.warning("%s holds no valid pixel (all nodata or cloud): left out of chip sampling", self.items[k].path)

    def _note_skip(self, k: int, frac: float) -> None:
        self.skipped += 1
        n = self.skipped
        if k not in self._skip_logged or (n & (n - 1)) == 0:
            self._skip_logged.add(k)
            log.warning(
                "skipped %d chip(s) with no/too little valid data so far (last: %s, %.0f%% valid)",
                n,
                self.items[k].path,
                100 * frac,
            )

    def __getitem__(self, i: int) -> dict:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        rng = item_numpy_rng(self.seed, self.epoch, i)
        if self.sampling == "grid":
            return self._grid_sample(i)
        if self.sampling == "whole":
            for t in range(len(self.items)):
                k = (i + t) % len(self.items)
                if k in self.empty_scenes:
                    continue
                s = self._read(k, None)
                if s is not None:
                    return s
                self._check_empty(k)
            raise DataError(self.items[0].path, "every tile is nodata (all nodata or cloud, or under min_valid)")
        k0 = self.item_of(i)
        order = [k0] + [k for k in range(len(self.items)) if k != k0 and self.items[k].sensor == self.items[k0].sensor]
        for k in order:
            if k in self.empty_scenes:
                continue
            for _ in range(self.max_tries):
                s = self._read(k, self._window_for(k, rng))
                if s is not None:
                    return s
            self._check_empty(k)
        raise DataError(
            self.items[k0].path,
            f"no chip with valid data found in {self.max_tries} random tries per scene; is the scene all nodata?",
        )

    def _grid_sample(self, i: int) -> dict:
        """Grid chip ``i``, or the next one with valid data (scenes without any were left out of the grid)."""
        n = len(self._grid)
        for t in range(n):
            k, r, c = self._grid[(i + t) % n]
            s = self._read(k, Window(c, r, self.chip_size, self.chip_size))
            if s is not None:
                return s
        raise DataError(None, _no_valid_data(self.items) + " (or under min_valid)")

    # -- statistics
    def compute_stats(self, max_chips: int = 64, seed: int = 0) -> dict[str, dict[str, list[float]]]:
        """Per-sensor, per-band mean/std over up to ``max_chips`` sampled chips per sensor (streaming).

        Reads chips through the same windowed path as training (never a whole scene).
        """
        saved, self.stats = self.stats, None
        skipped0 = self.skipped
        try:
            by_sensor: dict[str, list[int]] = {}
            for i in range(len(self)):
                by_sensor.setdefault(self.sensor_of(i), []).append(i)
            out = {}
            g = np.random.default_rng([seed, 104729])
            for sensor, idx in by_sensor.items():
                pick = idx if len(idx) <= max_chips else sorted(g.choice(idx, max_chips, replace=False).tolist())
                acc = None
                for i in pick:
                    s = self[i]
                    img = s["image"].numpy()
                    valid = self._last_valid
                    if acc is None:
                        acc = BandStats(s["meta"]["bands"])
                    acc.update(img, valid)
                out[sensor] = acc.result()
        finally:
            self.stats = saved
        if self.skipped > skipped0:
            log.warning("band statistics: skipped %d all-nodata / low-valid chip(s)", self.skipped - skipped0)
        return out
