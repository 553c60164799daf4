"""Pretrain -> fine-tune (segmentation, classification) -> predict through the API and the CLI, on real
GeoTIFFs written here; outputs must sit on the input's grid (CRS, transform, size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

import domainfm
from domainfm.cli import main as cli_main
from domainfm.cli import run as cli_run
from domainfm.errors import DataError
from domainfm.remote_sensing.synthetic import write_mask, write_scene, write_tiles

BANDS = ["B02", "B03", "B04", "B08"]
TINY = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
FAST = {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("rs_scenes")
    rows = ["image,mask"]
    for k in range(4):
        p, lab = write_scene(
            d / f"scene{k}.tif",
            "sentinel2",
            BANDS,
            size=(48, 40),
            seed=k,
            crs="EPSG:32633",
            origin=(500000.0 + 2000 * k, 5000000.0),
            nodata_rect=(0, 4, 0, 6) if k == 0 else None,
        )
        write_mask(d / f"scene{k}_mask.tif", lab, p)
        rows.append(f"scene{k}.tif,scene{k}_mask.tif")
    (d / "seg.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def pretrained(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("rs_pre")
    cfg = {
        "domain": "remote_sensing",
        "out": str(out / "run"),
        "data": {
            "path": str(scenes / "seg.csv"),
            "img_size": 32,
            "options": {"sensor": "sentinel2", "bands": "B02,B03,B04,B08", "chips_per_scene": 4},
        },
        "model": TINY,
        "train": FAST,
    }
    return domainfm.pretrain(cfg)


def test_pretrain_card_records_bands_wavelengths_and_stats(pretrained, scenes):
    card = json.loads((pretrained / "card.json").read_text())
    assert card["encoder"]["patch_embed"] == "wavelength"
    pre = card["preprocessing"]
    assert pre["bands"] == {"sentinel2_l2a": BANDS} and pre["wavelengths"] == pytest.approx([0.49, 0.56, 0.665, 0.842])
    stats = pre["stats"]["sentinel2_l2a"]
    with rasterio.open(scenes / "scene1.tif") as src:
        b02 = src.read(1) * 1e-4
    assert 0.2 * b02.mean() < stats["B02"][0] < 5 * b02.mean() and stats["B02"][1] > 0
    model = domainfm.load(pretrained)
    x = model.preprocess(scenes / "scene2.tif")  # whole small scene, normalised with the card's stats
    assert x.shape == (4, 48, 40) and abs(float(x.mean())) < 1.5
    assert model.embed(x[None, :, :32, :32]).shape == (1, 64)


def test_finetune_segmentation_band_subset_and_predict_cli(pretrained, scenes, tmp_path, capsys):
    out = tmp_path / "seg"
    rc = cli_run(
        [
            "finetune",
            str(pretrained),
            "--task",
            "segmentation",
            "--bands",
            "B02,B04,B08",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    ckpt = Path(capsys.readouterr().out.strip().splitlines()[-1].split("checkpoint: ")[1])
    model = domainfm.load(ckpt)
    assert type(model.head).__name__ == "UPerNetHead" and model.card["task"] == "segmentation"
    assert model.card["config"]["data"]["options"]["bands"] == ["B02", "B04", "B08"]
    # the band subset needs no new patch embed: same encoder weights shape, 3 channels in
    assert model.encoder.patch_embed.kind == "wavelength"
    pred = tmp_path / "pred.tif"
    assert cli_run(["predict", str(ckpt), "--input", str(scenes / "scene0.tif"), "--out", str(pred)]) == 0
    with rasterio.open(scenes / "scene0.tif") as src, rasterio.open(pred) as dst:
        assert (
            dst.crs == src.crs and dst.transform == src.transform and (dst.width, dst.height) == (src.width, src.height)
        )
        p = dst.read(1)
    assert (p[:4, :6] == 255).all() and set(np.unique(p[4:])) <= {0, 1, 2, 3}
    # API predict with class probabilities
    prob = domainfm.predict(model, scenes / "scene3.tif", tmp_path / "prob.tif", probabilities=True)
    with rasterio.open(prob) as dst:
        arr = dst.read()
        assert dst.count == model.card["num_classes"]
    np.testing.assert_allclose(arr.sum(0), 1.0, atol=1e-4)


def test_finetune_classification_on_tiles_api(pretrained, tmp_path):
    tiles = write_tiles(tmp_path / "eurosat", "sentinel2", BANDS, per_class=4, size=32)
    ckpt = domainfm.finetune(
        pretrained,
        task="classification",
        data=tiles,
        out=tmp_path / "cls",
        overrides=["train.steps=2", "train.batch_size=4"],
    )
    model = domainfm.load(ckpt)
    assert model.card["classes"] == ["Forest", "River", "Urban"] and model.card["num_classes"] == 3
    x = model.preprocess(tiles / "River" / "River_0.tif")[None]
    assert model.logits(x).shape == (1, 3)
    # a scene map from a classifier: tiles painted with their class, on the input grid
    pred = domainfm.predict(model, tiles / "Urban" / "Urban_1.tif", tmp_path / "urban.tif")
    with rasterio.open(pred) as dst, rasterio.open(tiles / "Urban" / "Urban_1.tif") as src:
        assert dst.transform == src.transform and dst.crs == src.crs and dst.shape == src.shape


def test_multilabel_manifest_and_embed_cli(pretrained, tmp_path, capsys):
    tiles = write_tiles(tmp_path / "t", "sentinel2", BANDS, classes=("a", "b", "c"), per_class=3, size=32)
    rows = ["image,label"] + [f"{c}/{c}_{j}.tif,{c};{'abc'[('abc'.index(c) + 1) % 3]}" for c in "abc" for j in range(3)]
    (tiles / "ml.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match='use task="multilabel"'):
        domainfm.finetune(
            pretrained, task="classification", data=tiles / "ml.csv", out=tmp_path / "x", overrides=["train.steps=1"]
        )
    ckpt = domainfm.finetune(
        pretrained,
        task="multilabel",
        data=tiles / "ml.csv",
        out=tmp_path / "ml",
        overrides=["train.steps=2", "train.batch_size=4"],
    )
    model = domainfm.load(ckpt)
    assert model.card["task"] == "multilabel" and model.card["num_classes"] == 3
    out = tmp_path / "emb.npz"
    assert cli_run(["embed", str(pretrained), "--data", str(tiles), "--out", str(out)]) == 0
    z = np.load(out)
    assert z["embeddings"].shape == (9, 64) and sorted(set(z["labels"].tolist())) == [0, 1, 2]


def test_mixed_sensor_pretraining(tmp_path):
    for k in range(2):
        write_scene(tmp_path / "data" / "sentinel2" / f"s2_{k}.tif", "sentinel2", BANDS, size=(40, 40), seed=k)
        write_scene(
            tmp_path / "data" / "landsat8" / f"l8_{k}.tif",
            "landsat8",
            ["B2", "B3", "B4", "B5", "B6", "B7"],
            size=(40, 40),
            res=30,
            seed=k,
        )
        write_scene(tmp_path / "data" / "naip" / f"naip_{k}.tif", "naip", size=(40, 40), res=1.0, seed=k)
    cfg = {
        "domain": "remote_sensing",
        "out": str(tmp_path / "run"),
        "data": {
            "path": str(tmp_path / "data"),
            "img_size": 32,
            "options": {
                "sensor": "sentinel2,landsat8,naip",
                "chips_per_scene": 4,
                "bands": {"sentinel2": BANDS, "landsat8": ["B2", "B3", "B4", "B5", "B6", "B7"]},
            },
        },
        "model": TINY,
        "train": {**FAST, "steps": 4},
    }
    ckpt = domainfm.pretrain(cfg)
    card = json.loads((ckpt / "card.json").read_text())
    assert set(card["preprocessing"]["stats"]) == {"sentinel2_l2a", "landsat8", "naip"}
    assert card["preprocessing"]["bands"]["naip"] == ["R", "G", "B", "N"]
    model = domainfm.load(ckpt)
    for sensor, path, n in (("landsat8", "landsat8/l8_0.tif", 6), ("naip", "naip/naip_1.tif", 4)):
        x = model.preprocess(tmp_path / "data" / path, sensor=sensor)
        wl = [b["embed_wavelength"] or b["wavelength"] for b in card["preprocessing"]["sensors"][sensor]["bands"]]
        assert x.shape[0] == n and model.embed(x[None, :, :32, :32], wavelengths=wl).shape == (1, 64)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    write_scene(tmp_path / "d" / "rgb.tif", "sentinel2", ["B02", "B03", "B04"], size=(40, 40))
    with pytest.raises(SystemExit) as e:
        cli_main(
            [
                "pretrain",
                "--domain",
                "remote_sensing",
                "--data",
                str(tmp_path / "d"),
                "--sensor",
                "sentinel2",
                "--bands",
                "B02,B03,B04,B08",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rgb.tif" in err and "B08" in err and err.startswith("error:")
    with pytest.raises(SystemExit):
        cli_main(
            [
                "pretrain",
                "--domain",
                "remote_sensing",
                "--data",
                str(tmp_path / "d"),
                "--bands",
                "B02,B77",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert "no sensor declared" in err  # the data-derived sensor is printed, then the one-line error
    err = err.splitlines()[-1]
    assert "unknown band 'B77'" in err and err.startswith("error:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no rasters found"):
        domainfm.pretrain(
            {"domain": "remote_sensing", "out": str(tmp_path / "r2"), "data": {"path": str(tmp_path / "empty")}}
        )
