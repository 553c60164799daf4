"""Tissue detection on a slide thumbnail: Otsu on HSV saturation, then morphology (scikit-image).

Example:
    >>> import numpy as np
    >>> rgb = np.full((64, 64, 3), 245, np.uint8); rgb[16:48, 16:48] = (180, 80, 160)
    >>> mask = tissue_mask(rgb)
    >>> bool(mask[32, 32]), bool(mask[2, 2])
    (True, False)
"""

from __future__ import annotations

import inspect

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology


def tissue_mask(
    rgb: np.ndarray,
    min_saturation: float = 0.05,
    max_value_white: float = 0.92,
    closing_radius: int = 2,
    min_object_fraction: float = 0.0005,
) -> np.ndarray:
    """Boolean tissue mask of an ``H x W x 3`` uint8 RGB thumbnail.

    Otsu's threshold on the saturation channel (never below ``min_saturation``, so a blank slide
    yields an empty mask instead of thresholding noise), excluding near-white pixels, then a binary
    closing, removal of small objects and filling of small holes.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask expects an H x W x 3 RGB array, got shape {rgb.shape}")
    hsv = color.rgb2hsv(rgb[..., :3])
    sat, val = hsv[..., 1], hsv[..., 2]
    try:
        thr = float(filters.threshold_otsu(sat)) if float(sat.max()) > float(sat.min()) else 1.0
    except ValueError:
        thr = 1.0
    mask = (sat > max(thr, min_saturation)) & (val > 0.05)
    mask &= ~((val > max_value_white) & (sat < min_saturation * 2))
    if not mask.any():
        return mask
    if closing_radius > 0:
        mask = ndimage.binary_closing(mask, morphology.disk(closing_radius), border_value=0) | mask
    min_size = max(4, int(min_object_fraction * mask.size))
    mask = _remove_small(mask, min_size, holes=False)
    mask = _remove_small(mask, min_size * 4, holes=True)
    return mask


def _remove_small(mask: np.ndarray, size: int, holes: bool) -> np.ndarray:
    """scikit-image's remove_small_objects / remove_small_holes across its 0.2x API change."""
    fn = morphology.remove_small_holes if holes else morphology.remove_small_objects
    if "max_size" in inspect.signature(fn).parameters:
        return fn(mask, max_size=size)
    return fn(mask, size) if holes else fn(mask, min_size=size)


def box_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of ``mask`` inside each box ``(x0, y0, x1, y1)`` (mask pixel coordinates), via an
    integral image; boxes are clipped to the mask and empty boxes give 0.

    Example:
        >>> m = np.zeros((4, 4), bool); m[:2, :2] = True
        >>> box_fractions(m, np.array([[0, 0, 2, 2], [0, 0, 4, 4]])).tolist()
        [1.0, 0.25]
    """
    h, w = mask.shape
    ii = np.zeros((h + 1, w + 1), np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), 0), 1)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, w).astype(int)
    y0 = np.clip(np.floor(b[:, 1]), 0, h).astype(int)
    x1 = np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y1 = np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    area = (x1 - x0) * (y1 - y0)
    total = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)
