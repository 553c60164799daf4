"""ABMIL and the mean-pool baseline (pure torch), heatmaps, tile-score CSVs, labels CSV errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.errors import ConfigError, DataError
from domainfm.pathology.heatmap import heatmap_image, rank_normalize, write_heatmap, write_tile_scores
from domainfm.pathology.mil import GatedABMIL, MeanPoolMIL, build_mil, classification_metrics, predict_bags, train_mil
from domainfm.pathology.mil_task import match_labels, read_labels, require_labels
from domainfm.pathology.synthetic import synthetic_he_image, write_pyramidal_tiff


def test_abmil_attention_is_a_masked_softmax():
    torch.manual_seed(0)
    model = GatedABMIL(16, 3, hidden_dim=32, attn_dim=16).eval()
    feats = torch.randn(2, 7, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7], dtype=torch.bool)
    logits, attn = model(feats, mask)
    assert logits.shape == (2, 3) and attn.shape == (2, 7)
    assert torch.allclose(attn.sum(1), torch.ones(2)) and (attn[0, 4:] == 0).all()
    # padding does not change a bag's output
    single, _ = model(feats[0, :4])
    assert torch.allclose(single, logits[:1], atol=1e-6)
    # as a core head on a batch of tile features: one bag -> slide logits
    assert model({"pooled": feats[1]}).shape == (1, 3)
    clone = build_mil(model.config)
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone.eval()(feats[1])[0], model(feats[1])[0])
    mean_logits, w = MeanPoolMIL(16, 3).eval()(feats, mask)
    assert mean_logits.shape == (2, 3) and torch.allclose(w[0, :4], torch.full((4,), 0.25))


def test_abmil_finds_a_rare_key_instance_where_mean_pool_struggles():
    g = torch.Generator().manual_seed(0)

    def bags(n):
        out, ys = [], []
        for i in range(n):
            bag = torch.randn(40, 8, generator=g)
            y = i % 2
            if y:
                bag[int(torch.randint(0, 40, (1,), generator=g)), :] += 6.0  # one positive tile
            out.append(bag)
            ys.append(y)
        return out, ys

    train_x, train_y = bags(40)
    test_x, test_y = bags(40)
    scores = {}
    for name, model in (("abmil", GatedABMIL(8, 2, 32, 16, dropout=0.0)), ("mean", MeanPoolMIL(8, 2, 32, dropout=0.0))):
        hist = train_mil(model, train_x, train_y, epochs=10, lr=3e-3, seed=0)
        assert hist[-1] < hist[0]
        probs, attns = predict_bags(model, test_x)
        scores[name] = classification_metrics(test_y, probs)
        if name == "abmil":  # attention points at the key instance
            hits = [int(a.argmax()) == int(x.sum(1).argmax()) for a, x, y in zip(attns, test_x, test_y) if y]
            assert np.mean(hits) > 0.8
    assert scores["abmil"]["accuracy"] >= 0.9
    assert scores["abmil"]["accuracy"] > scores["mean"]["accuracy"]
    assert classification_metrics([0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))["auc"] == 1.0


def test_heatmap_png_and_tile_scores_csv(tmp_path):
    rgb = synthetic_he_image(512, 768, seed=1)
    slide = write_pyramidal_tiff(tmp_path / "h.tif", rgb, mpp=0.5)
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    scores = np.array([0.1, 5.0, 0.3])
    assert rank_normalize(scores).tolist() == [0.0, 1.0, 0.5]
    png = write_heatmap(slide, coords, 256, scores, tmp_path / "out" / "h.png", thumbnail_size=384)
    img = np.asarray(Image.open(png))
    assert img.shape == (256, 384, 3)  # the thumbnail's size (768x512 slide, longest side 384)
    thumb = np.asarray(Image.fromarray(rgb).resize((384, 256), Image.BILINEAR)).astype(int)
    assert np.abs(img[200:, :100].astype(int) - thumb[200:, :100]).mean() < 4  # no tile there: unchanged
    red, blue = img[10:100, 140:240].reshape(-1, 3).mean(0), img[10:100, 10:100].reshape(-1, 3).mean(0)
    assert red[0] > red[2] and blue[2] > blue[0]  # jet: top score red, lowest blue
    csv_path = write_tile_scores(tmp_path / "h.tiles.csv", coords, 256, {"attention": scores})
    rows = list(csv.DictReader(open(csv_path)))
    assert [(int(r["x"]), int(r["y"]), float(r["attention"])) for r in rows] == [
        (0, 0, 0.1),
        (256, 0, 5.0),
        (512, 256, 0.3),
    ]
    assert heatmap_image(Image.fromarray(rgb), (768, 512), coords, 256, scores, normalize="none").size == (768, 512)


def test_labels_csv_naming_a_missing_slide(tmp_path):
    feats = tmp_path / "features"
    feats.mkdir()
    import h5py

    for name in ("a.svs", "b.svs"):
        with h5py.File(feats / f"{name}.h5", "w") as f:
            f["features"], f["coords"] = np.zeros((2, 4), np.float32), np.zeros((2, 2), np.int64)
            f.attrs["complete"] = True
    labels = tmp_path / "slides.csv"
    labels.write_text("slide,label\na.svs,0\nb,1\nmissing-slide.svs,1\n")
    rows = read_labels(labels)
    assert [r["line"] for r in rows] == [2, 3, 4]
    with pytest.raises(DataError) as exc:
        match_labels(rows, feats, labels)
    msg = str(exc.value)
    assert "slides.csv" in msg and "missing-slide.svs" in msg and "line 4" in msg and "\n" not in msg
    assert [r["features"].name for r in match_labels(rows[:2], feats, labels)] == ["a.svs.h5", "b.svs.h5"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,y\na,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: labels CSV needs columns 'slide' and 'label'"):
        read_labels(bad)
    with pytest.raises(ConfigError, match='pass labels="slides.csv"'):
        require_labels(None)
