"""A slide larger than memory streams through predict: a sparse 40000 x 40000 px pyramidal TIFF (4.8 GB as RGB, a
few MB on disk) predicted by a MIL model in a child process whose peak RSS is read from the OS (no timing), into a
pyramidal TIFF heatmap at tile resolution; an interrupted resumable predict continues from the tiles it scored."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from benchmarks.slide_predict_memory import run_predict, write_sparse_slide
from domainfm.pathology.predict import predict_slide
from domainfm.pathology.synthetic import write_synthetic_slide

SIZE = 40000
PEAK_GB = 1.5  # the child imports torch (~0.8 GB); the slide alone would be 4.8 GB as RGB


def test_sparse_slide_larger_than_memory_streams_into_a_pyramidal_tiff(tmp_path):
    slide = write_sparse_slide(tmp_path / "big.tif", SIZE, patches=6)
    assert slide.stat().st_size < 20_000_000
    out = tmp_path / "heat.tif"
    figures = run_predict(slide, out, task="mil")
    peak_gb = figures["maxrss_kb"] * 1024 / 1e9  # the child's own peak
    assert peak_gb < PEAK_GB, f"peak RSS {peak_gb:.2f} GB"
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        meta = json.loads(page.description)
        heat = page.asarray()
        assert page.is_tiled and page.tilewidth == 256 and page.compression != 1
        assert len(page.pages) >= 1  # SubIFDs: the smaller levels
        xres = page.tags["XResolution"].value
        level1 = tf.series[0].levels[1].asarray()
    size0 = meta["size0"]
    assert size0 == 128 and meta["slide_size"] == [SIZE, SIZE] and meta["mpp"] == 0.5
    assert meta["channels"][:2] == ["attention", "attention_rank"] and meta["task"] == "mil"
    assert heat.shape == (SIZE // size0, SIZE // size0, len(meta["channels"]))
    assert xres[0] / xres[1] == pytest.approx(1e4 / (0.5 * size0))  # pixels per cm: the heatmap's own pixel size
    rows = list(csv.DictReader(open(tmp_path / "heat.tiles.csv")))
    assert len(rows) == meta["n_tiles"] == int(np.isfinite(heat[..., 0]).sum()) > 0
    r = rows[0]
    assert heat[int(r["y"]) // size0, int(r["x"]) // size0, 0] == pytest.approx(float(r["attention"]), rel=1e-5)
    assert level1.shape[:2] == (-(-heat.shape[0] // 2), -(-heat.shape[1] // 2))
    assert json.loads((tmp_path / "heat.prediction.json").read_text())["n_tiles"] == len(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.tif",
        "heat.prediction.json",
        "heat.tif",
        "heat.tiles.csv",
    ]  # nothing temporary left


class TileModel(nn.Module):
    """A tiny tile classifier with a pathology card; records the batches it scores."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Conv2d(3, 4, 8, stride=8)
        self.head = nn.Linear(4, 2)
        pre = {"target_mpp": 1.0, "tile_size": 64, "img_size": 32, "min_tissue": 0.3}
        self.card = {"task": "classification", "classes": ["a", "b"], "preprocessing": pre}
        self.calls: list[int] = []
        self.stop_at = stop_at

    def logits(self, x):
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(len(x))
        return self.head(self.encoder(x).mean((2, 3)))


def test_resumable_slide_predict_continues_after_an_interruption(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.tif", (768, 640), mpp=0.5, seed=1)
    full = TileModel()
    whole = predict_slide(full, slide, tmp_path / "whole" / "heat.tif", batch_size=4, progress=False)
    assert len(full.calls) >= 3
    out = tmp_path / "out" / "heat.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_slide(TileModel(stop_at=2), slide, out, batch_size=4, progress=False, resume=True)
    partial = sorted(p.name for p in out.parent.iterdir())
    assert partial == [".partial-heat.tif.scores.npy", ".partial-heat.tif.scores.npy.json"]
    model = TileModel()
    predict_slide(model, slide, out, batch_size=4, progress=False, resume=True)
    assert sum(model.calls) == sum(full.calls) - 8  # the 2 batches scored before the interruption are not redone
    assert (out.parent / "heat.tiles.csv").read_text() == (whole.parent / "heat.tiles.csv").read_text()
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(whole))
    assert sorted(p.name for p in out.parent.iterdir()) == ["heat.prediction.json", "heat.tif", "heat.tiles.csv"]
    # without resume an interrupted predict leaves nothing
    with pytest.raises(KeyboardInterrupt):
        predict_slide(TileModel(stop_at=1), slide, tmp_path / "p2" / "s.png", batch_size=4, progress=False)
    assert not list((tmp_path / "p2").iterdir())


def test_png_heatmap_is_unchanged_by_the_streaming_pass(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.tif", (512, 512), mpp=0.5, seed=3)
    png = predict_slide(TileModel(), slide, tmp_path / "pred", batch_size=5, progress=False)
    assert png.name == "s.tif.png" and png.is_file()
    # an output named as the slide file is a folder, as domainfm.predict without out= gives
    assert predict_slide(TileModel(), slide, tmp_path / "p2" / "s.tif", progress=False).name == "s.tif.png"
    probs = [float(r["p_b"]) for r in csv.DictReader(open(tmp_path / "pred" / "s.tiles.csv"))]
    model = TileModel()
    with torch.no_grad():  # every tile at once, as the batches would give
        from domainfm.pathology.datasets import SlideTileDataset
        from domainfm.pathology.embed import transform_from_preprocessing

        pre = model.card["preprocessing"]
        ds = SlideTileDataset([slide], target_mpp=1.0, tile_size=64, out_size=32, min_tissue=0.3,
                              transform=transform_from_preprocessing(pre), verbose=False)  # fmt: skip
        x = torch.stack([s["image"] for s in ds.__getitems__(list(range(len(ds))))])
        expected = torch.softmax(model.logits(x), -1)[:, 1].numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
