"""scripts/rs_slovenia_ssl.py --quick: per-date GeoTIFFs, dino + mae pretraining and the block-bootstrap table."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from domainfm.demo import sample_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rs_slovenia_ssl.py"
SLOVENIA = sample_data("remote_sensing", "eolearn_slovenia")


def _load_script():
    spec = importlib.util.spec_from_file_location("rs_slovenia_ssl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(SLOVENIA is None, reason="eolearn_slovenia sample absent (set DOMAINFM_DATA to the shared data)")
def test_quick_run_writes_dates_pretrains_and_reports_gains(tmp_path):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in SLOVENIA.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = _load_script().main(["--quick", "--data", str(SLOVENIA), "--out", str(tmp_path), "--threads", "1"])
    assert rc == 0
    # one georeferenced single-band NDVI GeoTIFF per date; cloudy pixels are the file's nodata
    tifs = sorted((tmp_path / "data" / "dates").glob("ndvi_*.tif"))
    assert len(tifs) == 4
    masks = {m: np.load(SLOVENIA / "mask" / f"{m}.npy")[..., 0] for m in ("IS_DATA", "CLM")}
    valid = (masks["IS_DATA"] > 0) & (masks["CLM"] == 0)
    dates = [t[:10].replace("-", "") for t in json.loads((SLOVENIA / "timestamps.json").read_text())]
    cloudy_seen = 0
    for tif in tifs:
        with rasterio.open(tif) as src:
            assert (src.count, src.crs.to_epsg(), src.res, src.descriptions) == (1, 32633, (10.0, 10.0), ("NDVI",))
            nodata = src.read_masks(1) == 0
        k = dates.index(tif.stem.split("_")[1])
        assert np.array_equal(nodata, ~valid[k])
        cloudy_seen += int(nodata.any())
    assert cloudy_seen == 2
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["pretrain_budget"]) == {"dino", "mae"}
    assert all(b["cpu_s"] > 0 for b in res["pretrain_budget"].values())
    rows = {r["encoder"]: r for r in res["results"]}
    assert set(rows) == {"random", "dino", "mae", "ndvi_only", "supervised"}
    assert res["supervised"]["arch"] == "monai-unet" and set(rows["dino"]["vs_supervised"]) >= {"miou"}
    for name, r in rows.items():
        for metric in ("miou", "pixel_accuracy"):
            st = r[metric]
            assert 0.0 <= st["ci_low"] <= st["ci_high"] <= 1.0 and 0.0 <= st["mean"] <= 1.0
            # gains are paired with the random-init encoder (its own row and the supervised one have none)
            assert ("gain" in st) == (name not in ("random", "supervised"))
            if name not in ("random", "supervised"):
                assert st["gain_low"] <= st["gain_high"] and math.isfinite(st["gain"])
    assert "| dino |" in (tmp_path / "results.md").read_text()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in SLOVENIA.rglob("*")) == before  # shared data untouched
