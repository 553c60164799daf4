"""Scenes for a model trained on a TorchGeo dataset held in memory: the input as a scene path (a raster as
is, a TorchGeo sample dict written to a temporary GeoTIFF on its grid) and the preprocessing record
:func:`.predict.predict_scene` reads for it (the training bands and resolution, no band statistics).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rasterio.crs import CRS

from domainfm.errors import DataError

from .geotiff import array_to_geotiff
from .io import crs_equal, is_raster_name, open_raster
from .sensors import Band, Sensor, sensor_to_dict


def _sample_bounds(bounds) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a TorchGeo sample's ``bounds``: x, y (and time) slices since TorchGeo
    0.8, a ``BoundingBox`` (``minx``...) before."""
    if hasattr(bounds, "minx"):
        return float(bounds.minx), float(bounds.miny), float(bounds.maxx), float(bounds.maxy)
    if isinstance(bounds, (tuple, list)) and len(bounds) >= 2 and all(isinstance(b, slice) for b in bounds[:2]):
        x, y = bounds[0], bounds[1]
        return float(x.start), float(y.start), float(x.stop), float(y.stop)
    raise DataError(None, f"cannot read the sample's bounds {bounds!r}: give TorchGeo's (x, y slices or a BoundingBox)")


@contextlib.contextmanager
def scene_input(input, geometry: dict) -> Iterator[Path]:
    """A scene path for ``input``, for a model trained on ``geometry["from"]``'s data (a TorchGeo dataset held
    in memory): a raster file or folder as is; a TorchGeo sample dict (``image`` ``C x H x W``, ``crs``,
    ``bounds``) written to a temporary GeoTIFF on its grid, so it is read, predicted and written back like a
    file. Anything else is a one-line :class:`DataError` naming the input and the training data."""
    trained = f"this model was trained on {geometry.get('from') or 'a TorchGeo dataset'}"
    if isinstance(input, (str, Path)):
        path = Path(input)
        if not (path.is_dir() or is_raster_name(path)):
            raise DataError(
                path,
                f"is not a raster scene the model takes; {trained}, so it predicts on GeoTIFF scenes "
                "(.tif, .tiff, .jp2, .vrt) and TorchGeo sample dicts (image, crs, bounds)",
            )
        yield path
        return
    image = input.get("image") if isinstance(input, dict) else None
    if image is None or input.get("crs") is None or input.get("bounds") is None or np.ndim(image) != 3:
        what = f"a dict with keys {sorted(map(str, input))}" if isinstance(input, dict) else f"a {type(input).__name__}"
        raise DataError(
            None,
            f"cannot predict on {what}: {trained}; give a GeoTIFF, or a TorchGeo sample dict with image "
            "(C x H x W), crs and bounds",
        )
    pixels = torch.as_tensor(image).detach().cpu().as_subclass(torch.Tensor).float().numpy()
    crs = input["crs"].to_wkt() if hasattr(input["crs"], "to_wkt") else input["crs"]
    with tempfile.TemporaryDirectory(prefix="domainfm-scene-") as tmp:
        yield array_to_geotiff(
            Path(tmp) / "sample.tif",
            pixels,
            crs,
            _sample_bounds(input["bounds"]),
            band_names=geometry.get("band_names"),
        )


def _band_names(path: Path, geometry: dict, channels: int) -> list[str]:
    """The training bands' names; without them, the file's own band descriptions (or ``band1``...), which
    TorchGeo would have read in file order."""
    if geometry.get("band_names"):
        return [str(b) for b in geometry["band_names"]]
    if path.is_dir():
        raise DataError(path, "is a folder of band files, and the training dataset named no bands; give one raster")
    src = open_raster(path)
    if src.count != channels:
        raise DataError(path, f"has {src.count} band(s); this model was trained on {channels} ({geometry.get('from')})")
    descriptions = list(src.descriptions or ())
    if all(descriptions) and len(set(descriptions)) == len(descriptions):
        return [str(d) for d in descriptions]
    return [f"band{i + 1}" for i in range(channels)]


def scene_record(path: str | Path, geometry: dict, card: dict) -> dict:
    """The preprocessing record :func:`.predict.predict_scene` reads, for a model trained on a TorchGeo dataset held in
    memory (an ``arrays`` card whose ``geometry`` is remote sensing): the training bands (by the dataset's band
    names, else in file order), read at the training resolution when the scene shares the training CRS, in
    chips of the training size; no band statistics (the model's own normalisation goes to ``normalise``).

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_scene
        >>> path, _ = write_scene(Path(tempfile.mkdtemp()) / "s.tif", "sentinel2", ["B02", "B03"], size=(16, 16))
        >>> g = {"domain": "remote_sensing", "crs": "EPSG:32633", "res": [10.0, 10.0], "band_names": ["B02", "B03"]}
        >>> rec = scene_record(path, g, {"preprocessing": {"channels": 2, "size": [8, 8]}})
        >>> rec["bands"], rec["chip_size"], rec["resolution"]
        ({'training_bands': ['B02', 'B03']}, 8, 10.0)
    """
    path = Path(path)
    pre = card.get("preprocessing") or {}
    names = _band_names(path, geometry, int(pre["channels"]))
    res = geometry.get("res")
    gsd = float(res[0] if isinstance(res, (list, tuple)) else res) if res else 0.0
    wavelengths = geometry.get("wavelengths") or [0.0] * len(names)
    sensor = Sensor(
        "training_bands",
        tuple(Band(n, float(w), gsd) for n, w in zip(names, wavelengths)),
        f"the bands of {geometry.get('from')}",
    )
    first = path if path.is_file() else next(p for p in sorted(path.iterdir()) if is_raster_name(p))
    same_crs = geometry.get("crs") is not None and crs_equal(
        open_raster(first).crs, CRS.from_user_input(geometry["crs"])
    )
    size = int(min(pre["size"]))
    return {
        "sensors": {sensor.name: sensor_to_dict(sensor)},
        "bands": {sensor.name: names},
        "stats": None,
        "img_size": size,
        "chip_size": size,
        "resolution": gsd if same_crs and gsd > 0 else None,
        "resampling": "bilinear",
        "predict_overlap": 0.25,
    }
