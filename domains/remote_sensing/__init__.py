"""Remote sensing domain plugin: multispectral / SAR GeoTIFF scenes from any sensor.

Readers (windowed rasterio reads, band selection by name, nodata, scale/offset, multi-resolution
scenes), a sensor table with central wavelengths, streaming band statistics, sensor-grouped
batches, UPerNet/classification heads, tiled georeferenced prediction and a demo.

Example:
    >>> from domainfm.remote_sensing import RemoteSensingDomain, get_sensor
    >>> RemoteSensingDomain.name, get_sensor("landsat8").band("red").name
    ('remote_sensing', 'B4')
"""

from . import store as _store  # noqa: F401  (registers the remote-sensing store preparer)
from .datasets import Item, RasterChipDataset, discover_items, split_items
from .domain import RemoteSensingDomain, RemoteSensingOptions
from .geotiff import array_to_geotiff, grid_from_bounds
from .heads import ClassificationHead, UPerNetHead, build_head
from .io import Grid, MaskRaster, Scene, write_geotiff
from .sensors import BUILTIN_SENSORS, Band, Sensor, get_sensor, load_sensors_file, sensor_table
from .stats import BandStats

__all__ = [
    "RemoteSensingDomain",
    "RemoteSensingOptions",
    "Scene",
    "MaskRaster",
    "Grid",
    "write_geotiff",
    "RasterChipDataset",
    "Item",
    "discover_items",
    "split_items",
    "Sensor",
    "Band",
    "get_sensor",
    "sensor_table",
    "load_sensors_file",
    "BUILTIN_SENSORS",
    "BandStats",
    "UPerNetHead",
    "ClassificationHead",
    "build_head",
    "array_to_geotiff",
    "grid_from_bounds",
]
