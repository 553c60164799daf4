"""Stain tools: HED colour jitter (augmentation) and Macenko normalization.

HED jitter (Tellez et al. 2018) moves a tile to haematoxylin-eosin-DAB space with scikit-image's
``rgb2hed``, scales and shifts each stain channel by a random amount, and goes back with
``hed2rgb``. All randomness comes from the ``torch.Generator`` passed in, so augmentation is
reproducible per item (see :func:`domainfm.data.rng.item_generator`).

Macenko normalization (Macenko et al. 2009) estimates a tile's (or slide's) two stain vectors from
optical densities and re-renders it with reference stain vectors and concentrations.

Example:
    >>> import torch
    >>> x = torch.rand(3, 16, 16)
    >>> y = hed_jitter(x, torch.Generator().manual_seed(0), sigma=0.05)
    >>> y.shape == x.shape and bool((y >= 0).all() and (y <= 1).all())
    True
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed

#: Reference H&E stain vectors (columns: haematoxylin, eosin) and 99th-percentile concentrations,
#: the values used by Macenko-normalization reference implementations.
HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MAX_C_REF = np.array([1.9705, 1.0308])


def hed_jitter(
    image: torch.Tensor, generator: torch.Generator, sigma: float = 0.05, bias: float | None = None
) -> torch.Tensor:
    """Random HED stain jitter of an RGB tensor ``3 x H x W`` with values in ``[0, 1]``.

    Each stain channel ``s`` becomes ``s * a + b`` with ``a ~ U(1-sigma, 1+sigma)`` and
    ``b ~ U(-bias, bias)`` (``bias`` defaults to ``sigma``), drawn from ``generator``.

    Example:
        >>> import torch
        >>> x = torch.full((3, 4, 4), 0.8)
        >>> g = torch.Generator().manual_seed(1)
        >>> torch.allclose(hed_jitter(x, g, sigma=0.0), x, atol=1e-3)
        True
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"hed_jitter expects a 3 x H x W RGB tensor, got shape {tuple(image.shape)}")
    bias = sigma if bias is None else bias
    alpha = 1.0 + (torch.rand(3, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(3, generator=generator) * 2 - 1) * bias
    if sigma == 0 and bias == 0:
        return image.clone()
    rgb = image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy().astype(np.float64)
    hed = rgb2hed(rgb)
    hed = hed * alpha.numpy()[None, None, :].astype(np.float64) + beta.numpy()[None, None, :] * _HED_SCALE
    out = np.clip(hed2rgb(hed), 0.0, 1.0)
    return torch.from_numpy(out.astype(np.float32)).permute(2, 0, 1).to(image.device, image.dtype)


# Typical per-channel spread of rgb2hed values on H&E tiles; scales the additive shift so that
# ``bias`` is relative, as for the multiplicative factor.
_HED_SCALE = np.array([0.1, 0.05, 0.02])


def _optical_density(rgb: np.ndarray, io: float) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)


def macenko_stains(
    rgb: np.ndarray, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, min_pixels: int = 64
) -> tuple[np.ndarray, np.ndarray] | None:
    """Estimate the ``3 x 2`` stain matrix (H, E columns) and 99th-percentile concentrations of an
    ``H x W x 3`` uint8 RGB image; ``None`` if it holds fewer than ``min_pixels`` stained pixels.

    Example:
        >>> rgb = np.full((8, 8, 3), 255, np.uint8)
        >>> macenko_stains(rgb) is None
        True
    """
    od = _optical_density(rgb, io)
    od_hat = od[~np.any(od < beta, axis=1)]
    if len(od_hat) < min_pixels:
        return None
    _, eigvecs = np.linalg.eigh(np.cov(od_hat.T))
    plane = eigvecs[:, 1:3]
    proj = od_hat @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack([v_min, v_max], 1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], 1)
    he = he * np.sign(he.sum(0, keepdims=True) + 1e-12)  # stain vectors point to positive OD
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    max_c = np.percentile(conc, 99, axis=1)
    if not np.all(np.isfinite(he)) or np.any(max_c <= 1e-6):
        return None
    return he, max_c


class MacenkoNormalizer:
    """Re-render tiles with reference stain vectors (Macenko).

    ``fit(reference_rgb)`` sets the reference from a tile; by default the standard H&E reference
    is used. ``normalize(rgb, stains=None)`` normalizes a uint8 ``H x W x 3`` tile, using the given
    ``(stain_matrix, max_conc)`` (e.g. estimated once per slide) or estimating them on the tile;
    tiles with too little stain are returned unchanged. ``to_dict``/``from_dict`` round-trip
    through the checkpoint card.

    Example:
        >>> norm = MacenkoNormalizer()
        >>> rgb = np.random.default_rng(0).integers(60, 230, (32, 32, 3), dtype=np.uint8)
        >>> norm.normalize(rgb).shape
        (32, 32, 3)
    """

    def __init__(self, stain_matrix=None, max_conc=None, io: float = 240.0):
        self.stain_matrix = np.asarray(HE_REF if stain_matrix is None else stain_matrix, np.float64)
        self.max_conc = np.asarray(MAX_C_REF if max_conc is None else max_conc, np.float64)
        self.io = float(io)

    def fit(self, reference_rgb: np.ndarray) -> MacenkoNormalizer:
        est = macenko_stains(np.asarray(reference_rgb)[..., :3], self.io)
        if est is None:
            raise ValueError("the Macenko reference image has too few stained pixels")
        self.stain_matrix, self.max_conc = est
        return self

    def normalize(self, rgb: np.ndarray, stains: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        rgb = np.asarray(rgb)[..., :3]
        est = stains if stains is not None else macenko_stains(rgb, self.io)
        if est is None:
            return rgb.copy()
        he, max_c = est
        od = _optical_density(rgb, self.io)
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
        conc *= (self.max_conc / max_c)[:, None]
        out = self.io * np.exp(-self.stain_matrix @ conc)
        return np.clip(out.T.reshape(rgb.shape), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        return {"stain_matrix": self.stain_matrix.tolist(), "max_conc": self.max_conc.tolist(), "io": self.io}

    @classmethod
    def from_dict(cls, d: dict | None) -> MacenkoNormalizer:
        d = d or {}
        return cls(d.get("stain_matrix"), d.get("max_conc"), d.get("io", 240.0))
