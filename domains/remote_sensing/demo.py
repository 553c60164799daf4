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
from rasterio.transform import from_origin

import domainfm
from domainfm.demo import sample_data
from domainfm.eval.metrics import segmentation_metrics

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


def write_slovenia(src: Path, out: Path, n_dates: int = 12) -> dict:
    """Write the eo-learn patch as GeoTIFFs + a sensors YAML + a manifest; returns what the run needs."""
    ndvi = np.load(src / "data" / "NDVI.npy")[..., 0].astype(np.float32)  # T x H x W
    clm = np.load(src / "mask" / "CLM.npy")[..., 0]
    isd = np.load(src / "mask" / "IS_DATA.npy")[..., 0]
    lulc = np.load(src / "mask_timeless" / "LULC.npy")[..., 0].astype(np.int64)
    dem = np.load(src / "data_timeless" / "DEM.npy")[..., 0].astype(np.float32)
    dates = [t[:10] for t in json.loads((src / "timestamps.json").read_text())]
    bbox = json.loads((src / "bbox.geojson").read_text())
    crs = "EPSG:" + bbox["crs"]["properties"]["name"].split(":")[-1]
    xs = [p[0] for p in bbox["coordinates"][0]]
    ys = [p[1] for p in bbox["coordinates"][0]]
    h, w = lulc.shape
    transform = from_origin(min(xs), max(ys), 10.0, 10.0)
    scene = out / "slovenia_patch"
    scene.mkdir(parents=True, exist_ok=True)
    valid = (isd > 0) & (clm == 0)
    nod = -999.0
    ts = np.where(valid, ndvi, nod).astype(np.float32)
    names = [f"NDVI_{d.replace('-', '')}" + (f"_{k}" if dates.count(d) > 1 else "") for k, d in enumerate(dates)]
    prof = dict(driver="GTiff", width=w, height=h, crs=crs, transform=transform, compress="deflate")
    with rasterio.open(
        scene / "ndvi_timeseries.tif", "w", count=len(dates), dtype="float32", nodata=nod, **prof
    ) as dst:
        dst.write(ts)
        for i, n in enumerate(names):
            dst.set_band_description(i + 1, n)
    with rasterio.open(scene / "dem.tif", "w", count=1, dtype="float32", nodata=None, **prof) as dst:
        dst.write(dem[None])
        dst.set_band_description(1, "DEM")
    present = [c for c in sorted(np.unique(lulc)) if c != 0]
    remap = np.full(int(lulc.max()) + 1, 255, np.int64)
    for k, c in enumerate(present):
        remap[c] = k
    with rasterio.open(out / "lulc.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as dst:
        dst.write(remap[lulc].astype(np.uint8)[None])
    # fully clear dates, evenly spread over the series
    clear = [k for k in range(len(dates)) if valid[k].all()]
    pick = [clear[int(round(i))] for i in np.linspace(0, len(clear) - 1, min(n_dates, len(clear)))]
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
        "classes": [LULC_NAMES.get(int(c), str(c)) for c in present],
        "source": "eolearn_slovenia (real Sentinel-2 NDVI + DEM, EPSG:32633)",
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
        "pixel_accuracy": float((gt == pred).mean()) if gt.size else 0.0,
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
