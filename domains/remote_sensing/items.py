"""The items of a dataset: scenes, class-folder tiles or manifest rows found on disk, and their split.

* **scenes**: a folder of scenes (multi-band rasters, or sub-folders with one raster per band).
* **classes**: EuroSAT-style tiles in class sub-folders (``root/Forest/*.tif``); one label per tile.
* **manifest**: a CSV with ``image`` and optional ``label`` (``a;b`` for multi-label), ``mask``
  (a raster on the image's grid), ``sensor`` and ``split`` columns; paths relative to the CSV.
* several sensors: ``sensor: sentinel2,landsat8`` with sub-folders named after the sensors
  (or a ``sensor`` column).

Example:
    >>> import tempfile
    >>> from domainfm.remote_sensing.synthetic import write_scene
    >>> folder = Path(tempfile.mkdtemp())
    >>> for k in range(4):
    ...     _ = write_scene(folder / f"scene{k}.tif", "sentinel2", ["B02"], size=(16, 16), seed=k)
    >>> items, classes, kind = discover_items(folder, ["sentinel2"])
    >>> len(items), kind, len(split_items(items, "train", 0.25)) + len(split_items(items, "val", 0.25))
    (4, 'scenes', 4)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainfm.data.splits import hash_holdout
from domainfm.errors import ConfigError, DataError, did_you_mean
from domainfm.io_safety import report_dangling

from .io import RASTER_SUFFIXES, is_raster_name, open_raster
from .sensors import _norm, get_sensor


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


def _given_split(items: list[Item], split: str) -> list[Item]:
    """The items a ``split`` column puts in ``split`` (``test`` falls back to the validation rows)."""
    want = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}[split]
    chosen = [it for it in items if it.split in want]
    if not chosen and split == "test":
        chosen = [it for it in items if it.split in ("val", "valid", "validation")]
    return chosen


def split_items(items: list[Item], split: str, val_fraction: float, seed: int = 0) -> list[Item]:
    """Items of ``split`` (``pretrain``: all but explicit test rows; ``train``/``val``/``test``).

    A ``split`` column wins; otherwise items are split by a stable hash of their path
    (:func:`domainfm.data.splits.hash_holdout`), and fewer than 4 items are split spatially (train rows on
    top, val/test rows at the bottom).
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
    held = hash_holdout([str(it.path) for it in items], val_fraction, seed)
    return [it for it, v in zip(items, held) if v == (split == "val")]
