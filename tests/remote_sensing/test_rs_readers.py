"""Readers, sensor table and bad-input errors of the remote-sensing domain, on real GeoTIFFs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from domainfm.errors import ConfigError, DataError, DomainFMError
from domainfm.remote_sensing import io as rsio
from domainfm.remote_sensing.datasets import Item, RasterChipDataset, discover_items, split_items
from domainfm.remote_sensing.io import MaskRaster, Scene
from domainfm.remote_sensing.sensors import get_sensor, load_sensors_file, parse_band_list
from domainfm.remote_sensing.synthetic import write_band_folder, write_mask, write_scene, write_tiles


def test_sensor_table_wavelengths_aliases_and_user_yaml(tmp_path):
    s2 = get_sensor("sentinel2")
    assert s2.name == "sentinel2_l2a" and "B10" not in s2.band_names and len(s2.bands) == 12
    assert "B10" in get_sensor("sentinel2_l1c").band_names
    assert [b.name for b in s2.select("B02, b8 ,red")] == ["B02", "B08", "B04"]
    assert s2.band("B8A").wavelength == pytest.approx(0.865) and s2.band("B05").gsd == 20
    l8 = get_sensor("landsat8")
    assert l8.band("SR_B5").wavelength == pytest.approx(0.865) and l8.band("B10").wavelength > 10
    s1 = get_sensor("sentinel1")
    assert s1.band("VV").wavelength == s1.band("VH").wavelength  # physical C-band
    assert s1.band("VV").model_wavelength != s1.band("VH").model_wavelength  # distinguishable by the embed
    assert get_sensor("naip").band_names == ["R", "G", "B", "N"]
    assert parse_band_list("B02,B03") == ["B02", "B03"]
    with pytest.raises(ConfigError, match="unknown band 'B13'.*B01"):
        s2.band("B13")
    with pytest.raises(ConfigError, match="unknown sensor 'spot7'"):
        get_sensor("spot7")
    yml = tmp_path / "sensors.yaml"
    yml.write_text(
        "sensors:\n  planetscope:\n    gsd: 3\n    bands:\n"
        "      - {name: blue, wavelength: 0.49, aliases: [B1]}\n"
        "      - {name: nir, wavelength: 0.865, scale: 0.0001}\n"
    )
    ps = get_sensor("planetscope", yml)
    assert ps.band("b1").name == "blue" and ps.band("nir").scale == 1e-4 and ps.band("nir").gsd == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("sensors:\n  x:\n    bands:\n      - {name: a}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*wavelength"):
        load_sensors_file(bad)


def test_band_selection_by_description_scale_and_nodata(tmp_path):
    path, lab = write_scene(
        tmp_path / "s2.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(40, 30), nodata_rect=(0, 5, 0, 30)
    )
    with rasterio.open(path) as src:
        raw = src.read().astype(np.float64)
    scene = Scene(path, "sentinel2", "B08,B02")  # order differs from the file's
    assert scene.band_names == ["B08", "B02"] and scene.wavelengths == pytest.approx([0.842, 0.49])
    data, valid = scene.read(Window(0, 0, 30, 40))
    assert data.shape == (2, 40, 30) and data.dtype == np.float32
    assert not valid[:5].any() and valid[5:].all()
    np.testing.assert_allclose(data[0, 5:], raw[3, 5:] * 1e-4, rtol=1e-5)  # scale tag applied
    np.testing.assert_allclose(data[1, 5:], raw[0, 5:] * 1e-4, rtol=1e-5)
    assert (data[:, :5] == 0).all()
    # a window past the edge: outside pixels are invalid, inside ones match
    d2, v2 = scene.read(Window(20, 30, 16, 16))
    assert d2.shape == (2, 16, 16) and v2[:10, :10].all() and not v2[10:].any() and not v2[:, 10:].any()
    np.testing.assert_allclose(d2[0, :10, :10], data[0, 30:40, 20:30])


def test_description_mismatch_and_too_few_bands(tmp_path):
    path, _ = write_scene(tmp_path / "rgb.tif", "sentinel2", ["B02", "B03", "B04"], size=(16, 16))
    with pytest.raises(DataError) as e:
        Scene(path, "sentinel2", ["B02", "B08"])
    msg = str(e.value)
    assert str(path) in msg and "B08" in msg and "descriptions" in msg and "\n" not in msg
    nodesc, _ = write_scene(
        tmp_path / "nodesc.tif", "sentinel2", ["B02", "B03", "B04"], size=(16, 16), descriptions=False
    )
    with pytest.raises(DataError, match=r"nodesc\.tif: has 3 band\(s\) but 4 are configured"):
        Scene(nodesc, "sentinel2", "B02,B03,B04,B08")
    # without descriptions a file with exactly the requested bands is taken in order
    assert Scene(nodesc, "sentinel2", "B02,B03,B04").band_names == ["B02", "B03", "B04"]
    with pytest.raises(ConfigError, match="unknown band 'B99'"):
        Scene(path, "sentinel2", "B02,B99")


def test_not_a_raster_is_one_line_error(tmp_path):
    fake = tmp_path / "scene.tif"
    fake.write_text("this is not a GeoTIFF")
    with pytest.raises(DataError) as e:
        Scene(fake, "sentinel2", "B02")
    assert str(fake) in str(e.value) and "not a raster" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, DomainFMError)


def test_multiresolution_folder_resampled_to_finest_grid(tmp_path):
    folder = write_band_folder(tmp_path / "S2_scene", "sentinel2", ["B02", "B05", "B01"], extent_m=(1200, 1200))
    scene = Scene(folder, "sentinel2", ["B02", "B05", "B01"], resampling="nearest")
    assert (scene.width, scene.height) == (120, 120) and scene.grid.res == (10.0, 10.0)
    with (
        rasterio.open(folder / "T33TWM_20200601_B05_20m.tif") as s20,
        rasterio.open(folder / "T33TWM_20200601_B01_60m.tif") as s60,
    ):
        b05, b01 = s20.read(1).astype(np.float32), s60.read(1).astype(np.float32)
    data, valid = scene.read(Window(20, 40, 32, 32))
    assert valid.all()
    rows, cols = np.arange(40, 72), np.arange(20, 52)
    np.testing.assert_array_equal(data[1], b05[np.ix_(rows // 2, cols // 2)])
    np.testing.assert_array_equal(data[2], b01[np.ix_(rows // 6, cols // 6)])
    # an explicit coarser target resolution
    coarse = Scene(folder, "sentinel2", ["B02", "B05"], resolution=20)
    assert (coarse.width, coarse.height) == (60, 60)


def test_scene_files_in_different_crs(tmp_path):
    folder = write_band_folder(tmp_path / "mixed", "sentinel2", ["B02", "B03"], crs={"B03": "EPSG:32634"})
    with pytest.raises(DataError) as e:
        Scene(folder, "sentinel2", ["B02", "B03"])
    assert "B03" in str(e.value) and "EPSG:32634" in str(e.value) and "share a CRS" in str(e.value)


def test_mask_must_be_on_image_grid(tmp_path):
    path, lab = write_scene(tmp_path / "img.tif", "naip", size=(32, 32), res=1.0)
    good = write_mask(tmp_path / "mask.tif", lab, path)
    scene = Scene(path, "naip")
    m = MaskRaster(good, scene.grid).read(Window(0, 0, 32, 32))
    np.testing.assert_array_equal(m, lab)
    shifted = write_mask(tmp_path / "shifted.tif", lab, path, shift=(5.0, 0.0))
    with pytest.raises(DataError) as e:
        MaskRaster(shifted, scene.grid, image=path)
    assert str(shifted) in str(e.value) and "not on the image's grid" in str(e.value)
    small = write_mask(tmp_path / "small.tif", lab[:20], path)
    with pytest.raises(DataError, match="small.tif: mask is not on the image's grid"):
        MaskRaster(small, scene.grid)


def test_nodata_chips_skipped_and_counted(tmp_path, caplog):
    # left 3/4 of the scene is nodata: random chips there are skipped, with a count in the log
    path, _ = write_scene(tmp_path / "half.tif", "naip", size=(64, 64), res=1.0, nodata_rect=(0, 64, 0, 48))
    ds = RasterChipDataset([Item(path, "naip")], {"naip": []}, chip_size=16, chips_per_scene=12, seed=3)
    with caplog.at_level(logging.WARNING, logger="domainfm.remote_sensing"):
        samples = [ds[i] for i in range(len(ds))]
    assert all(s["meta"]["valid_fraction"] > 0 for s in samples)
    assert ds.skipped > 0
    assert any("skipped" in r.getMessage() and "half.tif" in r.getMessage() for r in caplog.records)
    empty, _ = write_scene(tmp_path / "empty.tif", "naip", size=(32, 32), res=1.0, nodata_rect=(0, 32, 0, 32))
    ds2 = RasterChipDataset([Item(empty, "naip")], {"naip": []}, chip_size=16, chips_per_scene=2, max_tries=4)
    with pytest.raises(DataError, match="empty.tif: no chip with valid data"):
        ds2[0]


def test_windowed_reads_only(tmp_path, monkeypatch):
    path, _ = write_scene(tmp_path / "big.tif", "naip", size=(256, 256), res=1.0)
    seen = []
    orig = rsio._read_window

    def spy(src, indexes, fwin, out_hw, resampling):
        seen.append((fwin.width, fwin.height))
        return orig(src, indexes, fwin, out_hw, resampling)

    monkeypatch.setattr(rsio, "_read_window", spy)
    ds = RasterChipDataset([Item(path, "naip")], {"naip": []}, chip_size=32, chips_per_scene=8)
    for i in range(len(ds)):
        ds[i]
    stats = ds.compute_stats(max_chips=8)
    assert seen and max(max(s) for s in seen) <= 32
    assert set(stats["naip"]) == {"R", "G", "B", "N"}


def test_streaming_stats_match_numpy(tmp_path):
    path, _ = write_scene(tmp_path / "s.tif", "sentinel2", ["B02", "B04"], size=(64, 64), nodata_rect=(0, 8, 0, 64))
    ds = RasterChipDataset(
        [Item(path, "sentinel2_l2a")], {"sentinel2_l2a": ["B02", "B04"]}, chip_size=16, sampling="grid"
    )
    assert len(ds) == 16
    st = ds.compute_stats(max_chips=100)["sentinel2_l2a"]
    with rasterio.open(path) as src:
        raw = src.read().astype(np.float64) * 1e-4
    px = raw[:, 8:, :]
    assert st["B02"][0] == pytest.approx(px[0].mean(), rel=1e-5)
    assert st["B04"][1] == pytest.approx(px[1].std(), rel=1e-4)
    ds.stats = {"sentinel2_l2a": st}
    x = ds[15]["image"]  # bottom-right chip, all valid
    assert abs(float(x.mean())) < 3 and x.shape == (2, 16, 16)


def test_sources_tiles_manifest_and_splits(tmp_path):
    root = write_tiles(tmp_path / "eurosat", "sentinel2", ["B02", "B03", "B04", "B08"], per_class=4, size=16)
    items, classes, kind = discover_items(root, ["sentinel2_l2a"])
    assert kind == "classes" and classes == ["Forest", "River", "Urban"] and len(items) == 12
    assert sorted({it.label for it in items}) == [0, 1, 2]
    tr, va = split_items(items, "train", 0.25), split_items(items, "val", 0.25)
    assert len(tr) + len(va) == 12 and not {str(i.path) for i in tr} & {str(i.path) for i in va}
    # multi-label manifest with relative paths
    csv = tmp_path / "eurosat" / "labels.csv"
    rows = ["image,label"] + [
        f"{it.path.relative_to(root)},{'Forest;River' if k % 2 else 'Urban'}" for k, it in enumerate(items)
    ]
    csv.write_text("\n".join(rows) + "\n")
    mitems, mclasses, mkind = discover_items(csv, ["sentinel2_l2a"])
    assert mkind == "manifest" and mclasses == ["Forest", "River", "Urban"] and mitems[1].label == [0, 1]
    ds = RasterChipDataset(
        mitems,
        {"sentinel2_l2a": ["B02", "B03", "B04", "B08"]},
        chip_size=8,
        img_size=8,
        sampling="whole",
        classes=mclasses,
        multilabel=True,
    )
    s = ds[1]
    assert s["image"].shape == (4, 8, 8) and s["label"].tolist() == [1.0, 1.0, 0.0]
    # a manifest pointing at a non-raster
    (tmp_path / "notes.tif").write_text("nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nnotes.tif,a\n")
    its, cls, _ = discover_items(bad, ["naip"])
    with pytest.raises(DataError, match="notes.tif: not a raster"):
        RasterChipDataset(its, {"naip": []}, 8, sampling="whole", classes=cls)


def test_spatial_split_ignores_labels_outside_region(tmp_path):
    path, lab = write_scene(tmp_path / "one.tif", "naip", size=(40, 40), res=1.0)
    mask = write_mask(tmp_path / "one_mask.tif", lab, path)
    items = [Item(path, "naip", mask=mask)]
    val = split_items(items, "val", 0.25)
    assert val[0].region == (0.75, 1.0)
    ds = RasterChipDataset(val, {"naip": []}, chip_size=16, chips_per_scene=4, ignore_index=-1)
    for i in range(len(ds)):
        s = ds[i]
        r0 = s["meta"]["window"][1]
        rows = np.arange(r0, r0 + 16)
        m = s["mask"].numpy()
        assert (m[rows < 30] == -1).all()
        np.testing.assert_array_equal(m[rows >= 30], lab[rows[rows >= 30]][:, s["meta"]["window"][0] :][:, :16])


def test_sensor_grouped_batches(tmp_path):
    a, _ = write_scene(tmp_path / "s2" / "a.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(32, 32))
    b, _ = write_scene(
        tmp_path / "landsat8" / "b.tif", "landsat8", ["B2", "B3", "B4", "B5", "B6"], size=(32, 32), res=30
    )
    items, _, _ = discover_items(tmp_path, ["sentinel2", "landsat8"])
    assert sorted(it.sensor for it in items) == ["landsat8", "sentinel2"]
    ds = RasterChipDataset(
        items,
        {"sentinel2": ["B02", "B03", "B04", "B08"], "landsat8": ["B2", "B3", "B4", "B5", "B6"]},
        chip_size=16,
        chips_per_scene=10,
    )
    from domainfm.data.sample import collate_samples

    batches = ds.epoch_batches(epoch=0, batch_size=4, seed=0)
    assert len(batches) == 4 and batches != ds.epoch_batches(epoch=1, batch_size=4, seed=0)
    assert batches == ds.epoch_batches(epoch=0, batch_size=4, seed=0)
    chans = set()
    for bt in batches:
        assert len({ds.sensor_of(i) for i in bt}) == 1
        batch = collate_samples([ds[i] for i in bt])
        chans.add(batch["image"].shape[1])
        assert len(batch["wavelengths"]) == batch["image"].shape[1]
    assert chans == {4, 5}


def test_demo_writes_real_slovenia_patch_as_geotiff(tmp_path):
    from pathlib import Path

    from domainfm.remote_sensing.demo import write_slovenia

    src = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "remote_sensing" / "eolearn_slovenia"
    if not src.is_dir():
        pytest.skip("eolearn_slovenia sample: ../shared/data absent")
    info = write_slovenia(src, tmp_path)
    lulc = np.load(src / "mask_timeless" / "LULC.npy")[..., 0]
    with rasterio.open(info["labels"]) as m:
        assert m.crs.to_epsg() == 32633 and m.res == (10.0, 10.0) and m.shape == lulc.shape
        assert m.transform.c == pytest.approx(465181.0522, abs=1e-3) and m.transform.f == pytest.approx(
            5080254.6335, abs=1e-3
        )
        lab = m.read(1)
    assert (lab[lulc == 0] == 255).all() and lab[lulc != 0].max() == len(info["classes"]) - 1
    # the user sensor from YAML: NDVI dates from the time-series file's descriptions, DEM from dem.tif
    scene = Scene(info["scene"], info["sensor"], info["bands"], sensors_file=info["sensors_file"])
    assert len(scene.band_names) == 13 and scene.band_names[-1] == "DEM" and scene.wavelengths[-1] == 1000.0
    data, valid = scene.read(Window(0, 0, 32, 32))
    dem = np.load(src / "data_timeless" / "DEM.npy")[..., 0]
    assert valid.all() and np.allclose(data[-1], dem[:32, :32])
    assert -0.2 <= data[:-1].min() and data[:-1].max() <= 1.0
    items, _, kind = discover_items(info["manifest"], [info["sensor"]], sensors_file=info["sensors_file"])
    assert kind == "manifest" and items[0].path.is_dir() and items[0].mask == info["labels"]


def test_shipped_configs_validate():
    from pathlib import Path

    import yaml

    from domainfm.runconfig import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "remote_sensing"
    for name in ("sentinel2_mae.yaml", "mixed_sensors_mae.yaml"):
        cfg = load_config(root / name, check_paths=False)
        assert cfg.domain == "remote_sensing" and cfg.model.patch_embed == "wavelength"
    mixed = load_config(root / "mixed_sensors_mae.yaml", check_paths=False).options
    assert mixed.sensor == ["sentinel2", "landsat8", "naip"] and mixed.bands["naip"] == ["R", "G", "B", "N"]
    for name in ("segmentation_finetune.yaml", "eurosat_classification.yaml"):
        raw = yaml.safe_load((root / name).read_text())
        cfg = load_config({"domain": "remote_sensing", **raw}, check_paths=False)
        assert cfg.finetune.task in ("segmentation", "classification")
    planet = load_sensors_file(root / "sensors_example.yaml")["planetscope_sd"]
    assert planet.band("B8").name == "nir" and len(planet.bands) == 8


def test_manifest_sensor_column_resolves_aliases(tmp_path):
    write_scene(tmp_path / "a.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(16, 16))
    write_scene(tmp_path / "b.tif", "landsat8", ["B2", "B3", "B4"], size=(16, 16), res=30)
    (tmp_path / "m.csv").write_text("image,sensor,split\na.tif,S2,train\nb.tif,landsat,val\n")
    items, _, _ = discover_items(tmp_path / "m.csv", ["sentinel2_l2a", "landsat8"])
    assert [it.sensor for it in items] == ["sentinel2_l2a", "landsat8"]
    assert [it.path.name for it in split_items(items, "val", 0.5)] == ["b.tif"]
    (tmp_path / "bad.csv").write_text("image,sensor\na.tif,naip\n")
    with pytest.raises(DataError, match=r"bad.csv: line 2: sensor 'naip' is not among the configured sensors"):
        discover_items(tmp_path / "bad.csv", ["sentinel2_l2a", "landsat8"])


def test_a_scene_without_valid_pixels_is_read_once_whole_then_left_out_of_sampling(tmp_path, caplog):
    clear, _ = write_scene(tmp_path / "clear.tif", "naip", size=(32, 32))
    cloudy, _ = write_scene(tmp_path / "cloudy.tif", "naip", size=(32, 32))
    with rasterio.open(cloudy, "r+") as dst:  # every pixel nodata, as on a fully clouded date
        dst.write(np.zeros((dst.count, 32, 32), dtype=dst.dtypes[0]))
    before = cloudy.read_bytes()
    ds = RasterChipDataset([Item(cloudy, "naip"), Item(clear, "naip")], {"naip": []}, 16, chips_per_scene=2)
    with caplog.at_level(logging.WARNING, logger="domainfm.remote_sensing"):
        first = ds[0]  # a sample of the cloudy scene: its tries fail, the clear scene serves it
    assert first["meta"]["path"] == str(clear) and ds.empty_scenes == {0}
    assert sum("holds no valid pixel" in r.getMessage() and str(cloudy) in r.getMessage() for r in caplog.records) == 1
    skipped = ds.skipped
    assert ds[1]["meta"]["path"] == str(clear) and ds.skipped == skipped  # no more reads of the empty scene
    assert cloudy.read_bytes() == before
