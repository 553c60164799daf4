"""Write an array held in a notebook as a georeferenced GeoTIFF from a CRS and bounds.

Example:
    >>> import numpy as np, tempfile, rasterio
    >>> path = tempfile.mkdtemp() + "/ndvi.tif"
    >>> _ = array_to_geotiff(path, np.zeros((101, 100), "float32"), "EPSG:32633",
    ...                      (500000.0, 5100000.0, 501000.0, 5101010.0))
    >>> with rasterio.open(path) as src:
    ...     src.crs.to_epsg(), src.res, (src.height, src.width)
    (32633, (10.0, 10.0), (101, 100))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_bounds

from domainfm.errors import DataError

from .io import Grid, write_geotiff


def grid_from_bounds(crs, bounds: Sequence[float], width: int, height: int) -> Grid:
    """The grid of a ``width x height`` raster covering ``bounds`` = ``(left, bottom, right, top)`` in ``crs``."""
    left, bottom, right, top = (float(v) for v in bounds)
    if not (right > left and top > bottom):
        raise DataError(
            None, f"bounds must be (left, bottom, right, top) with right > left and top > bottom, got {bounds}"
        )
    return Grid(CRS.from_user_input(crs), from_bounds(left, bottom, right, top, width, height), int(width), int(height))


def array_to_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs,
    bounds: Sequence[float],
    nodata=None,
    band_names: Iterable[str] | None = None,
) -> Path:
    """Write ``array`` (``H x W``, ``C x H x W`` or ``H x W x 1``) as a GeoTIFF covering ``bounds`` in ``crs``
    (e.g. ``"EPSG:32633"``); returns the path."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1 and arr.shape[0] != 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise DataError(path, f"expected H x W or C x H x W, got shape {arr.shape}")
    grid = grid_from_bounds(crs, bounds, arr.shape[-1], arr.shape[-2])
    return write_geotiff(path, arr, grid, nodata=nodata, band_names=band_names)
