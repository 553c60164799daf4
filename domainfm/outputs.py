"""Results handed back to a notebook instead of files: embeddings as a DataFrame, and a prediction with
its geometry (:class:`Prediction`), read from what a domain writes.

Example:
    >>> import numpy as np
    >>> arrays = {"embeddings": np.ones((2, 3), np.float32), "paths": np.array(["a", "b"]), "labels": np.array([0, 1])}
    >>> frame = embeddings_frame(arrays)
    >>> list(frame.columns)[:3], frame.shape
    (['id', 'label', 'z0'], (2, 5))
    >>> Prediction(np.zeros((4, 4), np.uint8), {"crs": "EPSG:32633"})
    Prediction(array uint8 (4, 4), crs=EPSG:32633)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.errors import DataError
from domainfm.utils import crs_text


@dataclass
class Prediction:
    """A prediction in memory: ``array`` (classes, probabilities or a heatmap) and its ``geometry``
    (``affine`` of a volume; ``crs`` + ``transform`` of a scene; ``coords`` of slide tiles), plus
    ``extra`` (what else the domain reported, e.g. the slide-level score)."""

    array: np.ndarray
    geometry: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def _rows(self) -> list[tuple[str, Any]]:
        rows = [("array", f"{self.array.dtype} {tuple(self.array.shape)}")]
        for key, value in self.geometry.items():
            text = f"{len(value)} tiles" if key == "coords" else crs_text(value) if key == "crs" else str(value)
            rows.append((key, text if len(text) < 80 else text[:77] + "..."))
        rows.extend((k, v) for k, v in self.extra.items() if isinstance(v, (int, float, str)))
        return rows

    def __repr__(self) -> str:
        return "Prediction(" + ", ".join(f"{k}={v}" if k != "array" else f"array {v}" for k, v in self._rows()) + ")"

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
            for k, v in self._rows()
        )
        return f"<div><b>Prediction</b><table>{cells}</table></div>"


def embeddings_frame(arrays: dict[str, np.ndarray]):
    """Embeddings as a pandas DataFrame (``id``, then ``label``, ``split``, ``x``/``y`` where known, then
    ``z0..``); the dict unchanged when pandas is not installed."""
    try:
        import pandas as pd  # optional: a DataFrame view when pandas is installed
    except ImportError:
        return arrays
    z = np.asarray(arrays.get("embeddings", arrays.get("features")))
    cols: dict[str, Any] = {"id": [str(p) for p in arrays.get("paths", arrays.get("ids", range(len(z))))]}
    for key, name in (("labels", "label"), ("splits", "split"), ("split", "split"), ("slide", "slide")):
        if key in arrays and len(arrays[key]) == len(z):
            cols[name] = list(arrays[key])
    coords = arrays.get("coords")
    if coords is not None and len(coords) == len(z):
        cols["x"], cols["y"] = np.asarray(coords)[:, 0], np.asarray(coords)[:, 1]
    frame = pd.DataFrame(cols)
    flat = z.reshape(len(z), -1)
    return pd.concat([frame, pd.DataFrame(flat, columns=[f"z{i}" for i in range(flat.shape[1])])], axis=1)


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an embeddings file (``.npz``/``.h5``) or of every feature file in a folder (one per slide,
    concatenated with a ``slide`` column)."""
    path = Path(path)
    if path.is_dir():
        parts = [(p.stem, read_embeddings(p)) for p in sorted(path.iterdir()) if p.suffix in (".npz", ".h5", ".hdf5")]
        if not parts:
            raise DataError(path, "holds no embedding files")
        keys = [k for k in parts[0][1] if all(k in d for _, d in parts) and np.asarray(parts[0][1][k]).ndim >= 1]
        out = {k: np.concatenate([np.asarray(d[k]) for _, d in parts]) for k in keys}
        n = [len(d.get("embeddings", d.get("features"))) for _, d in parts]
        out["slide"] = np.repeat([s for s, _ in parts], n)
        return out
    if path.suffix in (".h5", ".hdf5"):
        import h5py  # optional heavy dependency, only for HDF5 outputs

        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f.keys() if hasattr(f[k], "shape")}
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_prediction(path: str | Path) -> Prediction:
    """What a domain's ``predict`` wrote, back in memory with its geometry (GeoTIFF: CRS + transform;
    NIfTI: affine; PNG heatmap: the tile coordinates and scores written next to it; JSON of a whole-file
    classification: the class probabilities, the class in ``extra``; ``.npz``: its first array)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        import rasterio  # optional: GeoTIFF predictions of the remote sensing domain

        with rasterio.open(path) as src:
            arr = src.read()
            geo = {
                "crs": crs_text(src.crs, short=False) if src.crs else None,
                "transform": tuple(src.transform)[:6],
                "nodata": src.nodata,
            }
        return Prediction(arr[0] if arr.shape[0] == 1 else arr, geo)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib  # optional: NIfTI predictions of the medical domain

        img = nib.load(str(path))
        return Prediction(np.asarray(img.dataobj), {"affine": np.asarray(img.affine).round(6).tolist()})
    if name.endswith(".png"):
        from PIL import Image  # optional: heatmap pictures

        arr = np.asarray(Image.open(path))
        stem = path.name[: -len(".png")]
        geo: dict = {}
        extra: dict = {}
        tiles = path.with_name(stem + ".tiles.csv")
        if not tiles.is_file() and stem.count("."):
            tiles = path.with_name(stem.rsplit(".", 1)[0] + ".tiles.csv")
        if tiles.is_file():
            with open(tiles, newline="") as f:
                rows = list(csv.DictReader(f))
            geo["coords"] = [(int(float(r.get("x", 0))), int(float(r.get("y", 0)))) for r in rows]
            extra["tiles"] = rows
        for pj in path.parent.glob("*.prediction.json"):
            extra.update(json.loads(pj.read_text()))
        return Prediction(arr, geo, extra)
    if name.endswith(".json"):  # a whole-file class prediction: probabilities, and the class in ``extra``
        record = json.loads(path.read_text())
        probs = record.get("probabilities")
        return Prediction(
            np.asarray(probs if probs is not None else []),
            {},
            {k: v for k, v in record.items() if k != "probabilities"},
        )
    if name.endswith(".npz"):
        arrays = read_embeddings(path)
        key = next(iter(arrays))
        return Prediction(arrays[key], {}, {k: v for k, v in arrays.items() if k != key})
    raise DataError(
        path, "the prediction was written in a format this reader does not know; pass out= to keep the file"
    )
