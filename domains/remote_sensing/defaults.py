"""Bands from the file when no sensor is declared: the band descriptions of the first raster name
the sensor and its bands; a file whose bands nothing identifies is a one-line error, never an
assumed sensor.

Example:
    >>> import tempfile, numpy as np, rasterio
    >>> from rasterio.transform import from_origin
    >>> p = tempfile.mkdtemp() + "/s.tif"
    >>> with rasterio.open(p, "w", driver="GTiff", width=4, height=4, count=2, dtype="uint16",
    ...                    transform=from_origin(0, 4, 1, 1)) as dst:
    ...     dst.write(np.zeros((2, 4, 4), "uint16"))
    ...     dst.set_band_description(1, "B04"); dst.set_band_description(2, "B08")
    >>> infer_sensor(p)[:2]
    ('sentinel2_l2a', ['B04', 'B08'])
"""

from __future__ import annotations

from pathlib import Path

from domainfm.errors import ConfigError, DataError

from .io import is_raster_name, open_raster
from .sensors import BUILTIN_SENSORS, _norm


def _first_raster(path: Path) -> Path | None:
    if path.is_file():
        return path if is_raster_name(path) else None
    for p in sorted(path.rglob("*")):
        if p.is_file() and is_raster_name(p) and not p.name.startswith("."):
            return p
    return None


def infer_sensor(path: str | Path) -> tuple[str, list[str], str]:
    """``(sensor, band names, decision text)`` read from the band descriptions of the first raster
    under ``path``; :class:`DataError` naming the file when they do not identify the bands."""
    path = Path(path)
    first = _first_raster(path) if path.exists() else None
    if first is None:
        raise DataError(
            path,
            "empty: no rasters found (.tif/.tiff/.jp2/.vrt) to read the bands from; "
            "give scenes, or declare data.options.sensor (e.g. sentinel2, landsat8, naip) and data.options.bands",
        )
    src = open_raster(first)
    descriptions = [d or "" for d in (src.descriptions or ())]
    known = ", ".join(sorted(BUILTIN_SENSORS))
    if not any(descriptions):
        raise DataError(
            first,
            f"has {src.count} band(s) without descriptions and data.options.sensor is not set, "
            f"so nothing identifies the bands; declare data.options.sensor ({known}) and data.options.bands "
            "in file order",
        )
    # among the sensors that name every band: most exact band names, then the fewest bands
    # ("B02" is Sentinel-2's name and a Landsat alias; Sentinel-2 L2A before L1C, which adds B10)
    matches = []
    for name, sensor in BUILTIN_SENSORS.items():
        bands = [next((b.name for b in sensor.bands if _norm(d) in b.keys()), None) for d in descriptions]
        if all(bands):
            exact = sum(d.lower() == b.lower() for d, b in zip(descriptions, bands))
            matches.append((-exact, len(sensor.bands), len(name), name, bands))
    if matches:
        name, bands = min(matches)[3:]
        text = (
            f"no sensor declared: {first.name} describes its {len(bands)} bands as {', '.join(bands)}, "
            f"read as sensor {name} (set data.options.sensor to override)"
        )
        return name, bands, text
    raise DataError(
        first,
        f"band descriptions {descriptions} match no known sensor and data.options.sensor is not "
        f"set; declare data.options.sensor ({known}) or a sensors file (data.options.sensors_file)",
    )


def sensor_from_band_names(bands: list[str]) -> tuple[str, list[str], str]:
    """``(sensor, band names, decision text)`` for declared band names without a declared sensor: the
    built-in sensor that names every band (most exact names, then the fewest bands), as for files.

    Example:
        >>> sensor_from_band_names(["B04", "B03", "B02", "B8A"])[:2]
        ('sentinel2_l2a', ['B04', 'B03', 'B02', 'B8A'])
    """
    matches = []
    for name, sensor in BUILTIN_SENSORS.items():
        found = [next((b.name for b in sensor.bands if _norm(d) in b.keys()), None) for d in bands]
        if all(found):
            exact = sum(d.lower() == b.lower() for d, b in zip(bands, found))
            matches.append((-exact, len(sensor.bands), len(name), name, found))
    if not matches:
        raise ConfigError(
            f"data.options.bands {bands} are not all bands of one known sensor and data.options.sensor "
            f"is not set; declare data.options.sensor ({', '.join(sorted(BUILTIN_SENSORS))})"
        )
    name, found = min(matches)[3:]
    return (
        name,
        found,
        f"no sensor declared: bands {', '.join(bands)} read as sensor {name} (set data.options.sensor to override)",
    )
