"""Heads (with fake feature dicts) and tiled, blended, georeferenced prediction (with a fake model)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from domainfm.errors import CheckpointError, DataError
from domainfm.remote_sensing.heads import ClassificationHead, UPerNetHead, build_head, pick_layers
from domainfm.remote_sensing.io import Scene, write_geotiff
from domainfm.remote_sensing.predict import predict_scene
from domainfm.remote_sensing.sensors import get_sensor, sensor_to_dict
from domainfm.remote_sensing.synthetic import write_scene


def test_upernet_head_shapes_and_gradients():
    head = build_head("segmentation", 64, 2, 5)
    assert head.layers == [0, 1] and pick_layers(12) == [2, 5, 8, 11]
    feats = {
        "layers": [torch.randn(2, 16, 64, requires_grad=True) for _ in head.layers],
        "grid": (4, 4),
        "image": torch.zeros(2, 3, 32, 32),
    }
    out = head(feats)
    assert out.shape == (2, 5, 32, 32)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats["layers"])
    deep = UPerNetHead(32, 3, layers=[2, 5, 8, 11], channels=16)
    feats = {"layers": [torch.randn(1, 36, 32) for _ in range(4)], "grid": (6, 6), "image": torch.zeros(1, 2, 48, 48)}
    assert deep(feats).shape == (1, 3, 48, 48)
    with pytest.raises(Exception, match="indices must be in 0..1"):
        build_head("segmentation", 64, 2, 3, {"layers": [0, 4]})


def test_classification_head_single_and_multilabel():
    head = build_head("multilabel", 64, 2, 4, {"hidden": 32})
    assert isinstance(head, ClassificationHead)
    logits = head({"pooled": torch.randn(3, 64), "tokens": torch.randn(3, 16, 64)})
    assert logits.shape == (3, 4)
    assert build_head("classification", 64, 2, 7)({"tokens": torch.randn(2, 4, 64)}).shape == (2, 7)


class _FakeEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))


class PixelModel(nn.Module):
    """A translation-equivariant "segmenter" (1x1 conv): blended tiles must equal the direct result."""

    def __init__(self, card, in_ch=4, k=3):
        super().__init__()
        self.encoder = _FakeEncoder()
        self.head = nn.Conv2d(in_ch, k, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.head.weight)
        self.card = card
        self.calls = []

    def logits(self, x, wavelengths=None):
        self.calls.append((tuple(x.shape), list(wavelengths)))
        return self.head(x)


def _card(sensor="sentinel2", bands=("B02", "B03", "B04", "B08"), chip=32, stats=None, task="segmentation"):
    s = get_sensor(sensor)
    sel = [s.band(b) for b in bands]
    return {
        "domain": "remote_sensing",
        "task": task,
        "preprocessing": {
            "sensors": {s.name: sensor_to_dict(s, sel)},
            "bands": {s.name: list(bands)},
            "stats": stats,
            "img_size": chip,
            "chip_size": chip,
            "resolution": None,
            "resampling": "bilinear",
            "predict_overlap": 0.25,
        },
    }


def test_predict_blends_tiles_and_keeps_grid(tmp_path):
    path, _ = write_scene(
        tmp_path / "scene.tif",
        "sentinel2",
        ["B02", "B03", "B04", "B08"],
        size=(100, 70),
        nodata_rect=(0, 12, 0, 20),
        crs="EPSG:32632",
        origin=(400010.0, 5100020.0),
    )
    model = PixelModel(_card())
    out = predict_scene(model, path, tmp_path / "prob.tif", probabilities=True)
    scene = Scene(path, "sentinel2", ["B02", "B03", "B04", "B08"])
    data, valid = scene.read_all()
    with torch.no_grad():
        expect = torch.softmax(model.head(torch.from_numpy(data)[None]), 1)[0].numpy()
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        assert dst.count == 3 and dst.dtypes[0] == "float32"
        prob = dst.read()
    assert np.isnan(prob[:, :12, :20]).all() and not np.isnan(prob[:, 12:]).any()
    np.testing.assert_allclose(prob[:, valid], expect[:, valid], atol=1e-5)
    # several tiles per row and column were used, with the model's wavelengths
    # 100 x 70 px, 32 px tiles with 8 px overlap: 4 tile rows x 3 tile columns, one batch per row
    assert sum(c[0][0] for c in model.calls) == 12 and model.calls[0][1] == pytest.approx([0.49, 0.56, 0.665, 0.842])
    cls = predict_scene(model, path, tmp_path / "cls.tif")
    with rasterio.open(cls) as dst:
        c = dst.read(1)
        assert dst.nodata == 255 and dst.transform == scene.grid.transform
    assert (c[:12, :20] == 255).all()
    np.testing.assert_array_equal(c[valid], expect.argmax(0)[valid])


def test_predict_small_scene_classification_model_and_errors(tmp_path):
    path, _ = write_scene(tmp_path / "tiny.tif", "naip", size=(20, 24), res=0.6)

    class TileClassifier(PixelModel):
        def logits(self, x, wavelengths=None):
            return self.head(x).mean((2, 3))

    model = TileClassifier(_card("naip", ("R", "G", "B", "N"), chip=32, task="classification"))
    out = predict_scene(model, path, tmp_path / "tiny_pred.tif")
    with rasterio.open(out) as dst, rasterio.open(path) as src:
        assert dst.shape == (20, 24) and dst.transform == src.transform
        assert len(np.unique(dst.read(1))) == 1  # one tile, one class
    nohead = PixelModel(_card())
    nohead.head = None
    with pytest.raises(CheckpointError, match="fine-tuned"):
        predict_scene(nohead, path, tmp_path / "x.tif")
    with pytest.raises(DataError, match="tiny.tif.*descriptions"):
        predict_scene(PixelModel(_card()), path, tmp_path / "x.tif")  # a NAIP file for a Sentinel-2 model


def test_write_geotiff_roundtrip(tmp_path):
    path, _ = write_scene(tmp_path / "g.tif", "naip", size=(300, 260), res=1.0)
    scene = Scene(path, "naip")
    out = write_geotiff(
        tmp_path / "o.tif", np.arange(300 * 260, dtype="int32").reshape(300, 260), scene.grid, band_names=["value"]
    )
    with rasterio.open(out) as dst:
        assert dst.transform == scene.grid.transform and dst.crs == scene.grid.crs and dst.descriptions == ("value",)
        assert dst.read(1)[299, 259] == 300 * 260 - 1
    with pytest.raises(DataError, match="does not fit the grid"):
        write_geotiff(tmp_path / "bad.tif", np.zeros((10, 10)), scene.grid)
