"""Where scans come from: a folder of scans, class subfolders, a CSV/JSON manifest, a Decathlon
datalist, a MedMNIST ``.npz`` or a single scan. Each source becomes a list of MONAI-style item dicts
``{"image": path | [paths], "label"?: int, "mask"?: path, "id": str}``.

Example:
    >>> import tempfile
    >>> from domainfm.medical.options import MedicalOptions
    >>> from domainfm.medical.synthetic import write_ct_nifti_folder
    >>> scans = write_ct_nifti_folder(tempfile.mkdtemp(), n=2, shape=(8, 8, 6))
    >>> items, classes = discover(scans[0].parent, MedicalOptions())
    >>> [Path(it["image"]).name for it in items], classes
    (['ct_0.nii.gz', 'ct_1.nii.gz'], None)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.data.splits import holdout_split
from domainfm.errors import DataError
from domainfm.io_safety import report_dangling

from .io import IMAGE_2D_SUFFIXES, NpzStore, dicom_files, is_dicom_file, is_nifti, scan_id

IMAGE_PAIR_DIRS = (("imagesTr", "labelsTr"), ("images", "masks"), ("images", "labels"))


def _is_scan_file(p: Path) -> bool:
    return (
        p.is_file()
        and not p.name.startswith(".")
        and (is_nifti(p) or p.suffix.lower() in IMAGE_2D_SUFFIXES or is_dicom_file(p))
    )


def _scans_in(folder: Path, spatial_dims: int) -> list[str]:
    """Scans directly in ``folder``: NIfTI/PNG files, plus one DICOM series per sub-folder.

    A folder whose own files are DICOM is one series (3D) or, in 2D, a set of DICOM images.
    """
    # skipped entries (dangling links, FIFOs, folders named like scans) are counted and named, never dropped
    report_dangling(folder, suffixes=(".nii", ".nii.gz", *IMAGE_2D_SUFFIXES))
    files = sorted(p for p in folder.iterdir() if _is_scan_file(p))
    dcm = [p for p in files if is_dicom_file(p)]
    if dcm and spatial_dims == 3:
        return [str(folder)]
    scans = [str(p) for p in files]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if dicom_files(sub):
            scans.append(str(sub))
    return scans


def _group_sequences(scans: list[str], sequences: list[str], where: Path) -> list[list[str]]:
    groups: dict[str, dict[str, str]] = {}
    for s in scans:
        sid = scan_id(s)
        for seq in sequences:
            for sep in ("_", "-", "."):
                if sid.lower().endswith(f"{sep}{seq.lower()}"):
                    groups.setdefault(sid[: -len(seq) - 1], {})[seq] = s
    out = []
    for subject, found in sorted(groups.items()):
        missing = [q for q in sequences if q not in found]
        if missing:
            raise DataError(
                where, f"subject {subject!r} lacks sequence(s) {missing} (expected files <id>_<seq> for {sequences})"
            )
        out.append([found[q] for q in sequences])
    if not out:
        raise DataError(where, f"no files named <id>_<sequence> for sequences {sequences}")
    return out


def _resolve(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p))


def _labels_to_index(raw: list[Any], where: Path) -> tuple[list[int], list[str]]:
    vals = [str(v).strip() for v in raw]
    try:
        ints = [int(float(v)) for v in vals]
        classes = [str(c) for c in sorted(set(ints))]
        if sorted(set(ints)) == list(range(len(set(ints)))):
            return ints, classes
        mapping = {v: i for i, v in enumerate(sorted(set(ints)))}
        return [mapping[v] for v in ints], classes
    except ValueError:
        classes = sorted(set(vals))
        mapping = {c: i for i, c in enumerate(classes)}
        return [mapping[v] for v in vals], classes


def _record_image(rec: dict, row: int, base: Path, where: Path, opts) -> Any:
    """The image of one manifest row: its sequence columns (a list) or its image column (a path or list)."""
    if opts.sequences:
        missing = [q for q in opts.sequences if not rec.get(q)]
        if missing:
            raise DataError(where, f"row {row}: missing sequence column(s) {missing}")
        return [_resolve(base, rec[q]) for q in opts.sequences]
    value = rec.get(opts.image_key)
    if value in (None, ""):
        raise DataError(where, f"row {row}: no {opts.image_key!r} value (columns: {', '.join(rec)})")
    return [_resolve(base, v) for v in value] if isinstance(value, list) else _resolve(base, value)


def _check_listed_files(items: list[dict], where: Path) -> None:
    for item in items:
        for p in item["image"] if isinstance(item["image"], list) else [item["image"]]:
            if not Path(p).exists():
                raise DataError(p, f"listed in {where} but does not exist")
        if "mask" in item and not Path(item["mask"]).exists():
            raise DataError(item["mask"], f"mask listed in {where} does not exist")


def _from_records(records: list[dict], base: Path, where: Path, opts) -> tuple[list[dict], list[str] | None]:
    items: list[dict] = []
    raw_labels = []
    for i, rec in enumerate(records):
        image = _record_image(rec, i + 1, base, where, opts)
        item = {"image": image, "id": scan_id(image[0] if isinstance(image, list) else image)}
        if rec.get(opts.mask_key) not in (None, ""):
            item["mask"] = _resolve(base, rec[opts.mask_key])
        if rec.get(opts.label_key) not in (None, ""):
            raw_labels.append(rec[opts.label_key])
        items.append(item)
    classes = None
    if raw_labels:
        if len(raw_labels) != len(items):
            raise DataError(where, f"{len(items) - len(raw_labels)} rows have no {opts.label_key!r} value")
        idx, classes = _labels_to_index(raw_labels, where)
        for item, lab in zip(items, idx):
            item["label"] = lab
    _check_listed_files(items, where)
    return items, classes


def read_manifest(path: Path, opts) -> tuple[list[dict], list[str] | None]:
    """Items of a CSV manifest or a JSON list of records (``image``, optional ``label``/``mask``)."""
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="") as fh:
                records = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise DataError(path, f"cannot read CSV manifest ({exc})") from None
    else:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot read JSON manifest ({exc})") from None
        records = data.get("items", data) if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise DataError(path, "JSON manifest must be a list of {image, label|mask} records or a Decathlon datalist")
    if not records:
        raise DataError(path, "manifest has no rows")
    return _from_records(records, path.parent, path, opts)


def read_decathlon(path: Path, opts, section: str) -> list[dict]:
    """Items of a Medical Segmentation Decathlon ``dataset.json`` section (``training``/``validation``/``test``)."""
    data = json.loads(path.read_text())
    base = path.parent
    recs = data.get(section) or []
    records = []
    for rec in recs:
        if isinstance(rec, str):
            rec = {"image": rec}
        records.append(
            {
                opts.image_key: rec.get("image"),
                opts.mask_key: rec.get("label") if not isinstance(rec.get("label"), (int, float)) else None,
                **({opts.label_key: rec["label"]} if isinstance(rec.get("label"), (int, float)) else {}),
            }
        )
    if not records:
        return []
    items, _ = _from_records(records, base, path, opts)
    return items


def is_decathlon(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read JSON ({exc})") from None
    return isinstance(data, dict) and "training" in data


def _from_arrays(path: Path, spatial_dims: int, section: str) -> tuple[list[dict], list[str] | None]:
    """Items ``file.npz::split[i]`` of a MedMNIST ``.npz`` (or an ``.npy``: its ``train`` split); a declared
    3D read of an ``N x H x W`` stack is one volume ``file.npz::split[:]``."""
    store = NpzStore(path)
    split = {"training": "train", "validation": "val"}.get(section, section)
    if spatial_dims == 3 and is_slice_stack(store.images(split)):
        return [{"image": f"{path}::{split}[:]", "id": f"{path.stem}_{split}"}], None
    labels = store.labels(split)
    single = labels is not None and labels.shape[1] == 1
    items = []
    for i in range(len(store.images(split))):
        item = {"image": f"{path}::{split}[{i}]", "id": f"{split}_{i}"}
        if single:
            item["label"] = int(labels[i, 0])
        items.append(item)
    classes = None
    if single and "train" in store.splits():
        classes = [str(c) for c in range(int(np.max(store.labels("train"))) + 1)]
    return items, classes


def discover(path: str | Path, opts, section: str = "training") -> tuple[list[dict], list[str] | None]:
    """List the items at ``path`` and the class names (if labels come from folders or a manifest).

    ``section`` picks the Decathlon section or the ``.npz`` split (``train``/``val``/``test``).
    Raises :class:`DataError` naming ``path`` when nothing usable is there (e.g. an empty folder).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.is_file():
        return _from_file(path, opts, section)
    if not any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise DataError(path, "empty folder: no scans found")
    spatial_dims = int(opts.spatial_dims)
    for img_dir, lab_dir in IMAGE_PAIR_DIRS:
        if (path / img_dir).is_dir() and (path / lab_dir).is_dir():
            return _image_mask_pairs(path / img_dir, path / lab_dir, spatial_dims), None
    scans = _scans_in(path, spatial_dims)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and str(p) not in scans)
    if not scans and subdirs:
        if opts.sequences:
            raise DataError(path, "multi-sequence scans need a flat folder or a manifest, not class subfolders")
        return _class_subfolders(path, subdirs, spatial_dims)
    if not scans:
        raise DataError(
            path, "empty folder: no scans found (looked for .nii/.nii.gz, DICOM series folders, .dcm, .png)"
        )
    if opts.sequences:
        seqs = list(opts.sequences)
        return [{"image": g, "id": scan_id(g[0]).rsplit("_", 1)[0]} for g in _group_sequences(scans, seqs, path)], None
    return [{"image": s, "id": scan_id(s)} for s in scans], None


def _from_file(path: Path, opts, section: str) -> tuple[list[dict], list[str] | None]:
    """Items of a file: an ``.npz``/``.npy``, a Decathlon datalist, a CSV/JSON manifest or one scan."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return _from_arrays(path, int(opts.spatial_dims), section)
    if suffix == ".json" and is_decathlon(path):
        items = read_decathlon(path, opts, section)
        if not items:
            raise DataError(path, f"Decathlon datalist has no {section!r} entries")
        return items, None
    if suffix in (".csv", ".json"):
        return read_manifest(path, opts)
    if _is_scan_file(path):
        return [{"image": str(path), "id": scan_id(path)}], None
    raise DataError(path, "not a scan, a manifest (.csv/.json), a MedMNIST .npz or an .npy of images")


def _image_mask_pairs(img_dir: Path, lab_dir: Path, spatial_dims: int) -> list[dict]:
    """Segmentation pairs of ``imagesTr``/``labelsTr`` (or ``images``/``masks``) matched by scan id."""
    masks = {scan_id(m): m for m in _scans_in(lab_dir, spatial_dims)}
    items = []
    for im in _scans_in(img_dir, spatial_dims):
        sid = scan_id(im)
        if sid not in masks:
            raise DataError(im, f"no mask named {sid}* in {lab_dir}")
        items.append({"image": im, "mask": masks[sid], "id": sid})
    if not items:
        raise DataError(img_dir, "empty folder: no scans found")
    return items


def _class_subfolders(path: Path, subdirs: list[Path], spatial_dims: int) -> tuple[list[dict], list[str]]:
    """Labelled items of class sub-folders (the class names are the folder names that hold scans)."""
    items, classes = [], []
    for sub in subdirs:
        sub_scans = _scans_in(sub, spatial_dims)
        if not sub_scans:
            continue
        classes.append(sub.name)
        for s in sub_scans:
            items.append({"image": s, "label": len(classes) - 1, "id": f"{sub.name}/{scan_id(s)}"})
    if not items:
        raise DataError(path, "empty folder: no scans found in its class subfolders")
    return items, classes


def is_slice_stack(images: np.ndarray) -> bool:
    """True for ``N x H x W`` grey images (2D items, or one volume when declared 3D), not RGB or volumes.

    Example:
        >>> is_slice_stack(np.zeros((4, 28, 28))), is_slice_stack(np.zeros((4, 28, 28, 3)))
        (True, False)
    """
    return images.ndim == 3


def holdout(items: list[dict], split: str, fraction: float, seed: int) -> list[dict]:
    """Deterministic train/val split of ``items`` (val gets ``fraction``, at least one item when >= 2).

    Example:
        >>> len(holdout([{"id": i} for i in range(10)], "val", 0.2, 0))
        2
    """
    return holdout_split(items, split, fraction, seed)
