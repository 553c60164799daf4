"""Datasets of chips/tiles from scenes, class folders or a CSV manifest; grouped by sensor per batch.

The items come from :func:`.items.discover_items` (scenes, class folders, a manifest; several sensors
in sub-folders or a ``sensor`` column) and :func:`.items.split_items`; scenes give chips sampled at random
or on a grid, tiles whole samples. With several sensors batches hold one sensor each
(:meth:`RasterChipDataset.epoch_batches`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
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

import logging
import math

import numpy as np
import torch
from rasterio.windows import Window

from domainfm.data.rng import EpochAware, item_numpy_rng
from domainfm.data.sample import make_sample
from domainfm.errors import ConfigError, DataError, did_you_mean
from domainfm.inference import window_starts

from .io import MaskRaster, Scene, raster_values
from .items import Item, _raster_files, discover_items, split_items
from .stats import BandStats, normalize, stats_arrays

# discovery and splits live in .items; imported from here as before
__all__ = ["Item", "RasterChipDataset", "_raster_files", "discover_items", "split_items"]

log = logging.getLogger("domainfm.remote_sensing")


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
        items: from :func:`discover_items` / :func:`split_items`. Arguments after ``chip_size`` are
            keyword-only.
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
        >>> from pathlib import Path
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
        *,
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
                resolution=self.resolution,
                resampling=self.resampling,
                sensors_file=self.sensors_file,
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
