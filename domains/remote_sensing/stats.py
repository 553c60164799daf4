"""Per-band normalisation statistics, computed streaming over sampled chips (never a whole scene).

Example:
    >>> import numpy as np
    >>> acc = BandStats(["B02", "B03"])
    >>> acc.update(np.ones((2, 4, 4), "float32"), np.ones((4, 4), bool))
    >>> acc.result()["B02"]
    [1.0, 1e-06]
"""

from __future__ import annotations

import math

import numpy as np

from domainfm.errors import DataError

EPS_STD = 1e-6


class BandStats:
    """Running per-band mean/std over valid pixels (float64 sums, so millions of pixels are fine)."""

    def __init__(self, band_names: list[str]):
        self.band_names = list(band_names)
        n = len(self.band_names)
        self.count = 0
        self.sum = np.zeros(n, np.float64)
        self.sumsq = np.zeros(n, np.float64)
        self._shift: np.ndarray | None = None  # shifted sums keep precision for large values

    def update(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Add a chip ``C x h x w`` (only pixels where ``valid``)."""
        if not valid.any():
            return
        px = data[:, valid].astype(np.float64)  # C x n
        if self._shift is None:
            self._shift = px.mean(axis=1)
        px -= self._shift[:, None]
        self.count += px.shape[1]
        self.sum += px.sum(axis=1)
        self.sumsq += (px * px).sum(axis=1)

    def result(self) -> dict[str, list[float]]:
        """``{band: [mean, std]}``; std is floored at 1e-6 (a constant band is not divided by 0)."""
        if self.count == 0:
            raise DataError(None, "no valid pixels to compute band statistics from (all chips nodata?)")
        m = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - m * m, 0.0)
        mean = m + (self._shift if self._shift is not None else 0.0)
        return {b: [float(mean[i]), float(max(math.sqrt(var[i]), EPS_STD))] for i, b in enumerate(self.band_names)}


def normalize(data: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per band; invalid pixels become 0 (the band mean)."""
    out = (data - mean[:, None, None].astype(np.float32)) / std[:, None, None].astype(np.float32)
    out[:, ~valid] = 0.0
    return out


def stats_arrays(
    stats: dict[str, list[float]], band_names: list[str], where: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std arrays in ``band_names`` order from ``{band: [mean, std]}``."""
    missing = [b for b in band_names if b not in stats]
    if missing:
        raise DataError(
            None, f"no normalisation statistics for band(s) {', '.join(missing)}{where}; available: {', '.join(stats)}"
        )
    mean = np.array([stats[b][0] for b in band_names], np.float32)
    std = np.array([stats[b][1] for b in band_names], np.float32)
    return mean, std
