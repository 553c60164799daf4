"""Generated, georeferenced test scenes: land-cover patches with per-class spectra, written as real
GeoTIFFs (multi-band files, per-band folders at each band's GSD, label masks, EuroSAT-style tiles).

Used by the tests, the benchmark and the demo when the real sample data is absent.

Example:
    >>> import tempfile, rasterio
    >>> d = Path(tempfile.mkdtemp())
    >>> path, labels = write_scene(d / "s.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(64, 48))
    >>> with rasterio.open(path) as src: print(src.count, src.width, src.height, src.crs.to_epsg())
    4 48 64 32633
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from domainfm.domain import DomainExample

from .sensors import get_sensor


def label_map(size: tuple[int, int], num_classes: int = 4, block: int = 8, seed: int = 0) -> np.ndarray:
    """A blocky random land-cover map ``H x W`` with ``num_classes`` classes."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.integers(0, num_classes, size=(h // block + 2, w // block + 2))
    up = np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))
    oy, ox = rng.integers(0, block, 2)
    return up[oy : oy + h, ox : ox + w].astype(np.uint8)


def class_spectra(wavelengths: list[float], num_classes: int, seed: int = 1) -> np.ndarray:
    """``K x C`` reflectances (0..0.6): smooth functions of wavelength, distinct per class."""
    rng = np.random.default_rng(seed)
    wl = np.log(np.asarray(wavelengths, np.float64))
    out = []
    for _ in range(num_classes):
        a, b, c = rng.uniform(0.05, 0.3), rng.uniform(-0.2, 0.2), rng.uniform(0.5, 3.0)
        out.append(np.clip(a + b * np.sin(c * wl + rng.uniform(0, 6)), 0.01, 0.6))
    return np.stack(out)


def render(
    labels: np.ndarray, wavelengths: list[float], seed: int = 0, noise: float = 0.01, num_classes: int | None = None
) -> np.ndarray:
    """Reflectance image ``C x H x W`` for a label map."""
    k = int(num_classes or labels.max() + 1)
    spec = class_spectra(wavelengths, k)
    rng = np.random.default_rng(seed + 17)
    img = spec[labels].transpose(2, 0, 1)
    return (img + rng.normal(0, noise, img.shape)).astype(np.float32)


def write_scene(
    path: str | Path,
    sensor: str = "sentinel2",
    bands: list[str] | None = None,
    size: tuple[int, int] = (128, 128),
    res: float | None = None,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    nodata: float | None = 0,
    descriptions: bool = True,
    dtype: str = "uint16",
    scale: float = 1e-4,
    num_classes: int = 4,
    seed: int = 0,
    nodata_rect: tuple[int, int, int, int] | None = None,
    labels: np.ndarray | None = None,
    write_scale: bool = True,
) -> tuple[Path, np.ndarray]:
    """Write a multi-band scene; returns ``(path, labels H x W)``.

    Values are reflectance / ``scale`` stored as ``dtype`` with the GeoTIFF scale tag set to
    ``scale`` (so readers get reflectance back). ``nodata_rect`` = (row0, row1, col0, col1) is
    filled with ``nodata``.
    """
    path = Path(path)
    s = get_sensor(sensor)
    sel = s.select(bands)
    res = res or min(b.gsd for b in sel)
    lab = labels if labels is not None else label_map(size, num_classes, seed=seed)
    refl = render(
        lab, [b.wavelength if b.wavelength < 100 else 1.0 + i for i, b in enumerate(sel)], seed, num_classes=num_classes
    )
    if np.issubdtype(np.dtype(dtype), np.integer):
        data = np.clip(np.round(refl / scale), 1, np.iinfo(dtype).max).astype(dtype)
    else:
        data = (refl / scale).astype(dtype)
    if nodata_rect is not None and nodata is not None:
        r0, r1, c0, c1 = nodata_rect
        data[:, r0:r1, c0:c1] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size[1],
        height=size[0],
        count=len(sel),
        dtype=dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res),
        nodata=nodata,
    ) as dst:
        dst.write(data)
        if descriptions:
            for i, b in enumerate(sel):
                dst.set_band_description(i + 1, b.name)
        if write_scale:
            dst.scales = [scale] * len(sel)
            dst.offsets = [0.0] * len(sel)
    return path, lab


def write_sparse_scene(
    path: str | Path,
    size: int,
    sensor: str = "sentinel2",
    bands: list[str] | None = None,
    patches: int = 4,
    patch: int = 256,
    crs: str = "EPSG:32633",
    res: float = 10.0,
    seed: int = 0,
) -> Path:
    """A ``size x size`` scene that is nodata (0) but for ``patches`` squares of ``patch`` px with data,
    written tiled (512 px blocks), compressed and sparse (absent blocks take no space): a scene far larger
    than memory in a few megabytes, for streaming predictions.

    Example:
        >>> import tempfile
        >>> p = write_sparse_scene(Path(tempfile.mkdtemp()) / "big.tif", 4096, bands=["B02", "B03"], patches=2)
        >>> with rasterio.open(p) as src:
        ...     src.shape, src.profile["tiled"], p.stat().st_size < 2_000_000
        ((4096, 4096), True, True)
    """
    path = Path(path)
    sel = get_sensor(sensor).select(bands or ["B02", "B03", "B04"])
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=len(sel),
        dtype="uint16",
        crs=crs,
        transform=from_origin(500000.0, 5000000.0, res, res),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
        SPARSE_OK="TRUE",
    ) as dst:
        for _ in range(patches):
            row, col = (int(v) for v in rng.integers(0, max(1, size - patch), 2))
            data = rng.integers(100, 3000, (len(sel), patch, patch)).astype("uint16")
            dst.write(data, window=rasterio.windows.Window(col, row, patch, patch))
        for i, b in enumerate(sel):
            dst.set_band_description(i + 1, b.name)
    return path


def write_band_folder(
    folder: str | Path,
    sensor: str = "sentinel2",
    bands: list[str] | None = None,
    extent_m: tuple[float, float] = (1200.0, 1200.0),
    crs: str | dict = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    seed: int = 0,
    prefix: str = "T33TWM_20200601",
) -> Path:
    """A scene as one single-band file per band at the band's own GSD (``{prefix}_{band}_{gsd}m.tif``).

    ``crs`` may map band names to a CRS to make a broken scene.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = get_sensor(sensor)
    sel = s.select(bands)
    fine = min(b.gsd for b in sel)
    lab = label_map((int(extent_m[1] / fine), int(extent_m[0] / fine)), 4, block=12, seed=seed)
    for i, b in enumerate(sel):
        f = int(round(b.gsd / fine))
        h, w = int(extent_m[1] / b.gsd), int(extent_m[0] / b.gsd)
        lb = lab[::f, ::f][:h, :w]
        refl = render(lb, [b.wavelength], seed + i, num_classes=4)
        data = np.clip(np.round(refl / 1e-4), 1, 65535).astype("uint16")
        bcrs = crs.get(b.name, "EPSG:32633") if isinstance(crs, dict) else crs
        with rasterio.open(
            folder / f"{prefix}_{b.name}_{int(b.gsd)}m.tif",
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=1,
            dtype="uint16",
            crs=bcrs,
            transform=from_origin(origin[0], origin[1], b.gsd, b.gsd),
            nodata=0,
        ) as dst:
            dst.write(data)
    return folder


def write_mask(
    path: str | Path,
    labels: np.ndarray,
    like: str | Path,
    nodata: int | None = 255,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Path:
    """Write ``labels`` on the grid of raster ``like`` (``shift`` in CRS units makes it off-grid)."""
    with rasterio.open(like) as src:
        t = src.transform
        crs = src.crs
    t = rasterio.Affine(t.a, t.b, t.c + shift[0], t.d, t.e, t.f + shift[1])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=labels.shape[1],
        height=labels.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=t,
        nodata=nodata,
    ) as dst:
        dst.write(labels.astype("uint8")[None])
    return Path(path)


def write_tiles(
    root: str | Path,
    sensor: str = "sentinel2",
    bands: list[str] | None = None,
    classes: tuple[str, ...] = ("Forest", "River", "Urban"),
    per_class: int = 6,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """EuroSAT-style class folders of small tiles, each tile dominated by its class's spectrum."""
    root = Path(root)
    for k, name in enumerate(classes):
        for j in range(per_class):
            lab = np.full((size, size), k, np.uint8)
            rng = np.random.default_rng(seed * 1000 + k * 100 + j)
            r, c = rng.integers(0, size // 2, 2)
            lab[r : r + size // 4, c : c + size // 4] = (k + 1) % len(classes)
            write_scene(
                root / name / f"{name}_{j}.tif",
                sensor,
                bands,
                size=(size, size),
                labels=lab,
                num_classes=len(classes),
                seed=seed + j,
                origin=(500000.0 + 1000 * j, 5000000.0 + 1000 * k),
            )
    return root


def _same_raster_grid(source: Path, prediction: Path) -> bool:
    with rasterio.open(source) as a, rasterio.open(prediction) as b:
        return a.crs == b.crs and a.transform == b.transform and (a.width, a.height) == (b.width, b.height)


def write_example(folder: str | Path) -> DomainExample:
    """Three Sentinel-2 GeoTIFF scenes (4 bands, EPSG:32633) with land-cover masks, a broken ``.tif``
    and a tiny recipe: the remote-sensing domain's :class:`~domainfm.domain.DomainExample`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,mask"]
    for k in range(3):
        path, labels = write_scene(
            folder / f"scene{k}.tif",
            "sentinel2",
            ["B02", "B03", "B04", "B08"],
            size=(48, 40),
            seed=k,
            origin=(500000.0 + 2000 * k, 5000000.0),
        )
        write_mask(folder / f"scene{k}_mask.tif", labels, path)
        rows.append(f"scene{k}.tif,scene{k}_mask.tif")
    (folder / "seg.csv").write_text("\n".join(rows) + "\n")
    bad = folder / "broken.tif"
    bad.write_bytes(b"this is not a GeoTIFF")
    config = {
        "domain": "remote_sensing",
        "out": str(folder / "pretrain"),
        "data": {
            "path": str(folder / "seg.csv"),
            "img_size": 32,
            "options": {"sensor": "sentinel2", "bands": "B02,B03,B04,B08", "chips_per_scene": 4},
        },
        "model": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1},
    }
    return DomainExample(
        config=config,
        bad_file=bad,
        task="segmentation",
        finetune_overrides=["train.steps=2"],
        predict_input=folder / "scene0.tif",
        predict_suffix=".tif",
        same_geometry=_same_raster_grid,
    )
