"""Write real pyramidal tiled TIFF slides (tifffile) that OpenSlide opens as ``generic-tiff``.

Used by the tests, the demo (when ``../shared/data/pathology`` is absent) and the benchmark. The
content is H&E-like: pink stroma blobs on a white background with purple nuclei; "tumour" slides
carry a region of dense, large nuclei, which is the signal MIL has to find.

Example:
    >>> rgb = synthetic_he_image(512, 512, seed=0, tumor=True)
    >>> import tempfile
    >>> path = write_pyramidal_tiff(Path(tempfile.mkdtemp()) / "slide.tif", rgb, mpp=0.5)
    >>> openslide.OpenSlide(str(path)).properties["openslide.mpp-x"]
    '0.5'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from domainfm.domain import DomainExample

from .stain import HE_REF


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None = 0.5,
    tile: int = 256,
    levels: int | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write ``rgb`` (``H x W x 3`` uint8) as a tiled pyramid, one TIFF page per level (each half the
    previous), with resolution tags in centimetres so OpenSlide reports ``openslide.mpp-x``
    (``mpp=None`` writes no resolution: a slide without MPP).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(rgb[..., :3].astype(np.uint8))
    if levels is None:
        levels = 1
        while min(rgb.shape[:2]) // (2**levels) >= tile and levels < 6:
            levels += 1
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        img = rgb
        for i in range(levels):
            d = 2**i
            kwargs = {}
            if mpp is not None:
                f = 1e4 / (mpp * d)  # pixels per centimetre
                kwargs = {"resolution": (f, f), "resolutionunit": "CENTIMETER"}
            tw.write(
                img,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if i == 0 else 1,
                **kwargs,
            )
            if i + 1 < levels:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize((max(1, w // 2), max(1, h // 2)), Image.BOX))
    return path


def synthetic_he_image(
    height: int,
    width: int,
    seed: int = 0,
    tumor: bool = False,
    blank: bool = False,
    tissue_fraction: float = 0.45,
    nuclei_per_mpx: float = 1500.0,
    stains: np.ndarray | None = None,
) -> np.ndarray:
    """An H&E-like ``H x W x 3`` uint8 image (see module doc); ``blank`` gives background only.

    Rendered with the Beer-Lambert model from haematoxylin and eosin concentration maps and the
    ``3 x 2`` stain matrix ``stains`` (default: the standard H&E reference vectors), so stain tools
    (HED jitter, Macenko) behave on it as on real H&E.
    """
    rng = np.random.default_rng(seed)
    background = 243.0 + rng.normal(0, 1.5, (height, width, 1)).astype(np.float32)
    if blank:
        return np.clip(np.repeat(background, 3, 2), 0, 255).astype(np.uint8)
    coarse = rng.random((max(2, height // 128), max(2, width // 128))).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    tissue = field > np.quantile(field, 1 - tissue_fraction) if tissue_fraction < 1 else np.ones_like(field, bool)
    conc_e = tissue * np.clip(0.55 + rng.normal(0, 0.08, (height, width)).astype(np.float32), 0.2, 1.0)
    conc_h = tissue * np.clip(0.08 + rng.normal(0, 0.03, (height, width)).astype(np.float32), 0.0, 0.3)
    yy, xx = np.nonzero(tissue)
    n = int(nuclei_per_mpx * height * width / 1e6)
    if len(yy):
        pick = rng.integers(0, len(yy), n)
        _stamp_nuclei(conc_h, yy[pick], xx[pick], rng.integers(3, 6, n), 1.3, rng)
        if tumor:
            cy, cx = yy[len(yy) // 2], xx[len(xx) // 2]
            r = max(height, width) // 6
            sel = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
            if sel.any():
                m = int(n * 2.5)
                pick = np.flatnonzero(sel)[rng.integers(0, int(sel.sum()), m)]
                _stamp_nuclei(conc_h, yy[pick], xx[pick], rng.integers(6, 10, m), 2.0, rng)
    he = np.asarray(HE_REF if stains is None else stains, np.float32)
    od = conc_h[..., None] * he[:, 0] + conc_e[..., None] * he[:, 1]
    img = background * np.exp(-od)
    return np.clip(img, 0, 255).astype(np.uint8)


def _stamp_nuclei(conc, ys, xs, radii, level, rng) -> None:
    h, w = conc.shape[:2]
    for y, x, r in zip(ys.tolist(), xs.tolist(), radii.tolist()):
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        gy, gx = np.ogrid[y0 - y : y1 - y, x0 - x : x1 - x]
        disk = (gy * gy + gx * gx) <= r * r
        conc[y0:y1, x0:x1][disk] = level * (1 + rng.normal(0, 0.1))


def write_synthetic_slide(
    path: str | Path,
    size: tuple[int, int] = (1024, 1024),
    mpp: float | None = 0.5,
    seed: int = 0,
    tumor: bool = False,
    blank: bool = False,
    tile: int = 256,
    **image_kwargs,
) -> Path:
    """Generate and write one synthetic H&E slide (``size`` is ``(width, height)``).

    Example:
        >>> import tempfile
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "s.tif", (512, 384), mpp=0.5, tumor=True)
        >>> openslide.OpenSlide(str(path)).dimensions
        (512, 384)
    """
    w, h = size
    return write_pyramidal_tiff(path, synthetic_he_image(h, w, seed, tumor, blank, **image_kwargs), mpp=mpp, tile=tile)


def _heatmap_fits_slide(source: Path, prediction: Path) -> bool:
    """The heatmap PNG has the slide's aspect ratio (it is drawn over the slide's thumbnail)."""
    with Image.open(prediction) as png:
        width, height = png.size
    slide_w, slide_h = openslide.OpenSlide(str(source)).dimensions
    return abs(width / height - slide_w / slide_h) < 0.05


def write_example(folder: str | Path) -> DomainExample:
    """Six synthetic H&E slides (pyramidal TIFF, 0.5 µm/px; odd ones with a tumour region), slide
    labels, a broken ``.svs`` and a tiny MAE + ABMIL recipe: the pathology :class:`~domainfm.domain.DomainExample`."""
    folder = Path(folder)
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        write_synthetic_slide(folder / "slides" / f"s{i}.tif", (768, 640), mpp=0.5, seed=i, tumor=bool(i % 2))
    labels = folder / "slides.csv"
    labels.write_text("slide,label\n" + "".join(f"s{i}.tif,{'tumor' if i % 2 else 'normal'}\n" for i in range(6)))
    bad = folder / "broken.svs"
    bad.write_bytes(b"this is not a slide")
    config = {
        "domain": "pathology",
        "out": str(folder / "pretrain"),
        "data": {
            "path": str(folder / "slides"),
            "img_size": 32,
            "options": {"target_mpp": 1.0, "tile_size": 64, "min_tissue": 0.4},
        },
        "model": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        "train": {"steps": 2, "batch_size": 8, "progress": False, "tensorboard": False, "warmup_steps": 1},
    }
    return DomainExample(
        config=config,
        bad_file=bad,
        task="mil",
        finetune_overrides=["data.options.mil_epochs=2", "data.options.mil_hidden=16"],
        finetune_kwargs={"labels": str(labels)},
        embed_out="features",
        predict_input=folder / "slides" / "s1.tif",
        predict_suffix=".png",
        same_geometry=_heatmap_fits_slide,
    )
