"""``data.options`` of the remote-sensing domain, typed and checked (each is also a CLI flag), and the
two readings of the config every step shares: the configured sensors and the (square) chip size.

Example:
    >>> RemoteSensingOptions(chip_size=64, sensor="sentinel2").chips_per_scene
    16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domainfm.errors import ConfigError

from .sensors import parse_band_list


@dataclass
class RemoteSensingOptions:
    """``data.options`` of the remote-sensing domain (each is also a CLI flag: ``--chip-size 64``).

    Attributes:
        sensor: sensor name, or several (``"sentinel2,landsat8"``: one sub-folder or manifest
            ``sensor`` value per sensor; batches hold one sensor each). Unset: read from the band
            descriptions of the first raster (an error when they do not identify the bands).
        bands: band names (``"B02,B03,B04,B08"`` or a list); with several sensors a mapping
            ``{sensor: [bands]}``; empty = all of the sensor's bands.
        sensors_file: YAML with user-defined sensors (see :mod:`.sensors`).
        layout: ``auto`` | ``scenes`` | ``classes`` (EuroSAT-style folders) | ``manifest`` (CSV).
        chip_size: chip side in pixels of the scene grid (default ``data.img_size``); chips are
            resampled to ``data.img_size`` when they differ.
        chips_per_scene: random chips per scene per epoch.
        sampling: ``auto`` (``whole`` for labelled tiles, else ``random``) | ``random`` | ``grid`` | ``whole``.
        grid_overlap: overlap in pixels between grid chips.
        resolution: target pixel size (CRS units) for multi-resolution scenes; default the finest band.
        resampling: ``bilinear`` | ``nearest`` | ``cubic`` | ``average`` for bands read off-grid.
        min_valid: chips with a smaller valid-pixel fraction are skipped (all-nodata always are).
        stats: ``auto`` (computed from sampled chips of your data) | ``none`` | a JSON file |
            ``{sensor: {band: [mean, std]}}``.
        stats_chips: chips per sensor used to compute ``auto`` statistics.
        label_sep: separator of several labels in a manifest's ``label`` column (multi-label).
        ignore_index: mask value ignored by the loss (mask nodata, pixels outside the split region).
        predict_overlap: tile overlap fraction in :meth:`RemoteSensingDomain.predict`.
        predict_batch_size: tiles per forward pass in predict.
        probabilities: predict writes class probabilities (float32, one band per class) instead of classes.
        classes: names of the mask classes (segmentation; index order), e.g. ``forest,water,urban``.
        max_pixels: predict refuses scenes larger than this (default 2e9 pixels); raise it on purpose.
    """

    sensor: str | list[str] | None = None
    bands: list[str] | dict[str, Any] | str | None = None
    sensors_file: str | None = None
    layout: str = "auto"
    chip_size: int | None = None
    chips_per_scene: int = 16
    sampling: str = "auto"
    grid_overlap: int = 0
    resolution: float | None = None
    resampling: str = "bilinear"
    min_valid: float = 0.0
    stats: str | dict[str, Any] | None = "auto"
    stats_chips: int = 32
    label_sep: str = ";"
    ignore_index: int = -1
    predict_overlap: float = 0.25
    predict_batch_size: int = 8
    probabilities: bool = False
    classes: list[str] | str | None = None
    max_pixels: int | None = None

    def __post_init__(self):
        checks = (
            (self.chip_size is None or self.chip_size >= 1, "chip_size", "a positive number of pixels"),
            (self.chips_per_scene >= 1, "chips_per_scene", ">= 1"),
            (self.grid_overlap >= 0, "grid_overlap", ">= 0 pixels"),
            (0.0 <= self.min_valid <= 1.0, "min_valid", "a fraction in [0, 1]"),
            (self.stats_chips >= 1, "stats_chips", ">= 1"),
            (0.0 <= self.predict_overlap < 1.0, "predict_overlap", "a fraction in [0, 1)"),
            (self.predict_batch_size >= 1, "predict_batch_size", ">= 1"),
            (self.resolution is None or self.resolution > 0, "resolution", "a positive pixel size"),
        )
        for ok, key, what in checks:
            if not ok:
                raise ConfigError(f"data.options.{key} must be {what}, got {getattr(self, key)!r}")


def sensor_list(opts: RemoteSensingOptions) -> list[str]:
    """The configured sensor names (``"sentinel2,landsat8"`` or a list); an empty setting is refused."""
    names = parse_band_list(opts.sensor) if isinstance(opts.sensor, (str, list)) else []
    if not names:
        raise ConfigError("data.options.sensor is empty; name a sensor (e.g. sentinel2, landsat8, naip)")
    return names


def img_size(cfg) -> int:
    """``data.img_size`` as one side: remote-sensing chips are square."""
    size = cfg.data.img_size
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConfigError(f"data.img_size {size}: remote sensing chips are square; give one integer")
        size = size[0]
    return int(size)
