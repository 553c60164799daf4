"""End-to-end demo: real Sentinel-2 NDVI time series + DEM over Slovenia -> GeoTIFFs -> MAE
pretraining -> land-cover segmentation, compared with the same fine-tuning from a random encoder.

Data: ``../shared/data/remote_sensing/eolearn_slovenia`` (eo-learn example patch, MIT). The arrays
are written as GeoTIFFs in the patch's CRS (EPSG:32633, 10 m pixels, origin from ``bbox.geojson``):
``ndvi_timeseries.tif`` (68 dates, cloudy pixels = nodata, band descriptions = dates), ``dem.tif``
and ``lulc.tif`` (classes remapped to 0..4, 255 = no data). The NDVI dates and the DEM are not
spectral bands, so the demo declares a user sensor in ``sensors.yaml`` with pseudo-wavelengths for
them, which is also how any new sensor is added. Without the shared data the demo writes a
synthetic 4-band Sentinel-2 scene and mask and does the same.

Metrics are computed on the bottom 30 % of the rows, which fine-tuning never saw labels of, from
the GeoTIFF that ``predict`` wrote (tiled, blended inference over the whole scene).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

import domainfm
from domainfm.demo import sample_data
from domainfm.eval.metrics import pixel_accuracy, segmentation_metrics

from .io import Grid, write_geotiff
from .synthetic import write_mask, write_scene

log = logging.getLogger("domainfm.remote_sensing")

LULC_NAMES = {
    1: "cultivated_land",
    2: "forest",
    3: "grassland",
    4: "shrubland",
    5: "water",
    6: "wetlands",
    7: "tundra",
    8: "artificial_surface",
    9: "bareland",
    10: "snow_and_ice",
}
VAL_FRACTION = 0.3


def shared_data_dir() -> Path:
    """The eo-learn Slovenia sample (:func:`domainfm.demo.sample_data`); a path that does not exist if absent."""
    return sample_data("remote_sensing", "eolearn_slovenia") or Path("shared-data-absent")


def load_slovenia(src: Path) -> dict:
    """The eo-learn patch as arrays: ``ndvi`` and ``valid`` (T x H x W; valid = data and no cloud),
    ``lulc`` and ``dem`` (H x W), ``dates`` (YYYY-MM-DD), unique per-date band ``names`` and the ``grid``
    (EPSG:32633, 10 m pixels, origin from ``bbox.geojson``)."""
    ndvi = np.load(src / "data" / "NDVI.npy")[..., 0].astype(np.float32)  # T x H x W
    clm = np.load(src / "mask" / "CLM.npy")[..., 0]
    isd = np.load(src / "mask" / "IS_DATA.npy")[..., 0]
    lulc = np.load(src / "mask_timeless" / "LULC.npy")[..., 0].astype(np.int64)
    dem = np.load(src / "data_timeless" / "DEM.npy")[..., 0].astype(np.float32)
    dates = [t[:10] for t in json.loads((src / "timestamps.json").read_text())]
    bbox = json.loads((src / "bbox.geojson").read_text())
    crs = CRS.from_user_input("EPSG:" + bbox["crs"]["properties"]["name"].split(":")[-1])
    xs = [p[0] for p in bbox["coordinates"][0]]
    ys = [p[1] for p in bbox["coordinates"][0]]
    h, w = lulc.shape
    names = [f"NDVI_{d.replace('-', '')}" + (f"_{k}" if dates.count(d) > 1 else "") for k, d in enumerate(dates)]
    return {
        "ndvi": ndvi,
        "valid": (isd > 0) & (clm == 0),
        "lulc": lulc,
        "dem": dem,
        "dates": dates,
        "names": names,
        "grid": Grid(crs, from_origin(min(xs), max(ys), 10.0, 10.0), w, h),
    }


def clear_dates(valid: np.ndarray, n: int) -> list[int]:
    """Indices of up to ``n`` fully clear dates (``valid``: T x H x W), evenly spread over the series.

    Example:
        >>> valid = np.ones((6, 2, 2), bool); valid[1, 0, 0] = False
        >>> clear_dates(valid, 3)
        [0, 3, 5]
    """
    clear = [k for k in range(valid.shape[0]) if valid[k].all()]
    return [clear[int(round(i))] for i in np.linspace(0, len(clear) - 1, min(n, len(clear)))] if clear else []


def write_lulc(path: Path, lulc: np.ndarray, grid: Grid) -> list[str]:
    """LULC ids 1..10 written as classes 0..K-1 of the ids present (0 = no data -> 255); the class names.

    Example:
        >>> import tempfile
        >>> from rasterio.transform import from_origin
        >>> grid = Grid(CRS.from_epsg(32633), from_origin(465181.0, 5080254.0, 10.0, 10.0), 3, 1)
        >>> path = Path(tempfile.mkdtemp()) / "lulc.tif"
        >>> write_lulc(path, np.array([[0, 2, 8]]), grid)
        ['forest', 'artificial_surface']
        >>> rasterio.open(path).read(1).tolist()
        [[255, 0, 1]]
    """
    present = [c for c in sorted(np.unique(lulc)) if c != 0]
    remap = np.full(int(lulc.max()) + 1, 255, np.int64)
    for k, c in enumerate(present):
        remap[c] = k
    write_geotiff(path, remap[lulc].astype(np.uint8), grid, nodata=255)
    return [LULC_NAMES.get(int(c), str(c)) for c in present]


def write_slovenia(src: Path, out: Path, n_dates: int = 12) -> dict:
    """Write the eo-learn patch as GeoTIFFs + a sensors YAML + a manifest; returns what the run needs."""
    a = load_slovenia(src)
    grid, names = a["grid"], a["names"]
    scene = out / "slovenia_patch"
    nod = -999.0
    ts = np.where(a["valid"], a["ndvi"], nod).astype(np.float32)
    write_geotiff(scene / "ndvi_timeseries.tif", ts, grid, nodata=nod, band_names=names)
    write_geotiff(scene / "dem.tif", a["dem"][None], grid, band_names=["DEM"])
    classes = write_lulc(out / "lulc.tif", a["lulc"], grid)
    pick = clear_dates(a["valid"], n_dates)
    sensor = {
        "sensors": {
            "slovenia_ndvi_dem": {
                "description": "Sentinel-2 NDVI per date (pseudo-wavelengths 20*1.03^k um) + DEM (pseudo 1000 um)",
                "gsd": 10,
                "bands": [{"name": n, "wavelength": round(20.0 * 1.03**k, 4)} for k, n in enumerate(names)]
                + [{"name": "DEM", "wavelength": 1000.0, "aliases": ["elevation"]}],
            }
        }
    }

    (out / "sensors.yaml").write_text(yaml.safe_dump(sensor, sort_keys=False))
    (out / "lulc_manifest.csv").write_text("image,mask\nslovenia_patch,lulc.tif\n")
    return {
        "manifest": out / "lulc_manifest.csv",
        "scene": scene,
        "labels": out / "lulc.tif",
        "sensor": "slovenia_ndvi_dem",
        "sensors_file": str(out / "sensors.yaml"),
        "bands": [names[k] for k in pick] + ["DEM"],
        "classes": classes,
        "source": "eolearn_slovenia (real Sentinel-2 NDVI + DEM, EPSG:32633)",
    }


#: the one-band NDVI product of :func:`write_slovenia_dates` (NDVI is computed from red 0.665 um and NIR
#: 0.842 um; its pseudo-wavelength for the wavelength patch embed is their midpoint)
NDVI_SENSOR = {
    "description": "Sentinel-2 NDVI, one band per acquisition (pseudo-wavelength 0.75 um)",
    "gsd": 10,
    "bands": [{"name": "NDVI", "wavelength": 0.75, "aliases": ["ndvi_s2"]}],
}


def write_slovenia_dates(src: Path, out: Path, dates: list[int] | None = None) -> dict:
    """One georeferenced single-band GeoTIFF per acquisition date (band description ``NDVI``; cloudy and
    no-data pixels are the file's nodata, -999) in ``out/dates``, ``out/lulc.tif`` as in
    :func:`write_slovenia` and ``out/sensors.yaml`` declaring the one-band sensor ``sentinel2_ndvi``.

    ``dates`` selects dates by index (default: all). Returns the paths, the per-date valid fractions,
    the class names and the sensor/sensors file to pretrain with.
    """
    a = load_slovenia(src)
    grid = a["grid"]
    picked = list(range(len(a["dates"]))) if dates is None else list(dates)
    nod = -999.0
    paths = []
    for k in picked:
        name = a["names"][k].replace("NDVI_", "ndvi_") + ".tif"
        band = np.where(a["valid"][k], a["ndvi"][k], nod).astype(np.float32)
        paths.append(write_geotiff(out / "dates" / name, band, grid, nodata=nod, band_names=["NDVI"]))
    classes = write_lulc(out / "lulc.tif", a["lulc"], grid)
    (out / "sensors.yaml").write_text(yaml.safe_dump({"sensors": {"sentinel2_ndvi": NDVI_SENSOR}}, sort_keys=False))
    return {
        "folder": out / "dates",
        "paths": paths,
        "dates": [a["dates"][k] for k in picked],
        "indices": picked,
        "valid_fraction": [float(a["valid"][k].mean()) for k in picked],
        "labels": out / "lulc.tif",
        "classes": classes,
        "sensor": "sentinel2_ndvi",
        "sensors_file": str(out / "sensors.yaml"),
    }


def write_generated(out: Path) -> dict:
    """Fallback: a generated 4-band Sentinel-2 scene (160 x 160 px) with a 4-class mask."""
    path, lab = write_scene(
        out / "generated_s2.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(160, 160), num_classes=4, seed=3
    )
    write_mask(out / "generated_mask.tif", lab, path)
    (out / "manifest.csv").write_text("image,mask\ngenerated_s2.tif,generated_mask.tif\n")
    return {
        "manifest": out / "manifest.csv",
        "scene": path,
        "labels": out / "generated_mask.tif",
        "sensor": "sentinel2",
        "sensors_file": None,
        "bands": ["B02", "B03", "B04", "B08"],
        "classes": ["c0", "c1", "c2", "c3"],
        "source": "generated scene (shared data absent)",
    }


def _region_metrics(pred_path: Path, label_path: Path, row0: int, k: int) -> dict:
    with rasterio.open(pred_path) as p, rasterio.open(label_path) as g:
        pred, gt = p.read(1).astype(np.int64), g.read(1).astype(np.int64)
    pred, gt = pred[row0:], gt[row0:]
    ok = (gt != 255) & (pred != 255)
    gt, pred = gt[ok], pred[ok]
    m = {
        "pixel_accuracy": pixel_accuracy(gt, pred) if gt.size else 0.0,
        **segmentation_metrics(gt, pred, k, ignore_background=False),
    }
    m["majority_class_accuracy"] = float(np.bincount(gt, minlength=k).max() / max(1, gt.size))
    return m


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Write the data, pretrain, fine-tune (pretrained vs random init), predict, score; print + return figures."""

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    src = shared_data_dir()
    info = write_slovenia(src, data_dir) if src.is_dir() else write_generated(data_dir)
    pre_steps, ft_steps = (40, 40) if quick else (300, 150)
    depth = 2 if quick else 4
    base = {
        "domain": "remote_sensing",
        "data": {
            "path": str(info["manifest"]),
            "img_size": 32,
            "val_fraction": VAL_FRACTION,
            "options": {
                "sensor": info["sensor"],
                "bands": info["bands"],
                "sensors_file": info["sensors_file"],
                "chips_per_scene": 64,
                "classes": info["classes"],
                "stats_chips": 32,
            },
        },
        "model": {"name": "vit-tiny", "patch_size": 8, "depth": depth, "embed_dim": 64, "num_heads": 2},
        "objective": {"name": "mae", "mask_ratio": 0.6, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2},
        "train": {
            "steps": pre_steps,
            "batch_size": 16,
            "lr": 1e-3,
            "warmup_steps": 10,
            "progress": False,
            "tensorboard": False,
            "log_every": 1000,
            "ckpt_every": 100000,
            "seed": 0,
        },
    }
    pre = domainfm.pretrain({**base, "out": str(out_dir / "pretrain")})
    t_pre = time.perf_counter() - t0
    rnd = domainfm.pretrain(
        {
            **base,
            "out": str(out_dir / "random_init"),
            "train": {**base["train"], "steps": 1, "lr": 0.0, "warmup_steps": 0},
        }
    )
    ft_over = [f"train.steps={ft_steps}", "train.lr=0.001", "train.warmup_steps=10", "train.batch_size=16"]
    figures: dict = {
        "data": info["source"],
        "bands": info["bands"],
        "classes": info["classes"],
        "pretrain_steps": pre_steps,
        "finetune_steps": ft_steps,
        "eval_region": f"bottom {int(VAL_FRACTION * 100)}% of rows (labels unseen in fine-tuning)",
    }
    with rasterio.open(info["labels"]) as g:
        height = g.height
    row0 = int(np.floor((1 - VAL_FRACTION) * height))
    for name, ckpt in (("pretrained", pre), ("random_init", rnd)):
        ft = domainfm.finetune(ckpt, task="segmentation", overrides=ft_over, out=str(out_dir / f"finetune_{name}"))
        pred = domainfm.predict(ft, info["scene"], out_dir / f"lulc_pred_{name}.tif")
        figures[name] = _region_metrics(pred, info["labels"], row0, len(info["classes"]))
        figures[f"{name}_prediction"] = str(pred)
    figures["miou_gain"] = figures["pretrained"]["miou"] - figures["random_init"]["miou"]
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["pretrain_seconds"] = round(t_pre, 1)
    p, r = figures["pretrained"], figures["random_init"]
    print(f"remote_sensing demo on {info['source']}")
    print(f"  LULC segmentation, held-out rows: pretrained  pixel acc {p['pixel_accuracy']:.3f}  mIoU {p['miou']:.3f}")
    print(f"                                    random init pixel acc {r['pixel_accuracy']:.3f}  mIoU {r['miou']:.3f}")
    print(
        f"  majority-class pixel acc {p['majority_class_accuracy']:.3f}; "
        f"predictions: {figures['pretrained_prediction']}"
    )
    print(f"  {figures['seconds']} s in all")
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2))
    return figures
