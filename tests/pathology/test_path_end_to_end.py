"""Slides -> tile pretraining -> per-slide embeddings (resumable) -> MIL fine-tuning -> heatmaps,
through the Python API and the CLI, on real pyramidal TIFF slides written with tifffile."""

from __future__ import annotations

import contextlib
import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import domainfm
from domainfm.cli import main
from domainfm.errors import ConfigError
from domainfm.pathology.embed import load_slide_features
from domainfm.pathology.mil import GatedABMIL
from domainfm.pathology.synthetic import synthetic_he_image
from domainfm.pathology.tiling import cached_tile_grid


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_api_pretrain_embed_mil_predict(pretrained, slide_dir, labels_csv, tmp_path, capsys):
    card = domainfm.load(pretrained).card
    pre = card["preprocessing"]
    assert card["domain"] == "pathology" and card["encoder"]["in_chans"] == 3
    assert (pre["target_mpp"], pre["tile_size"], pre["img_size"], pre["input_mpp"]) == (1.0, 64, 32, 2.0)
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["macenko"] is None
    model = domainfm.load(pretrained)
    tile = tmp_path / "tile.png"
    Image.fromarray(synthetic_he_image(64, 64, 1, tissue_fraction=1.0)).save(tile)
    x = model.preprocess(tile)
    assert x.shape == (3, 32, 32) and model.embed(x[None]).shape == (1, 64)

    feats = tmp_path / "features"
    with _quiet():
        domainfm.embed(model, slide_dir, feats)
    files = sorted(p.name for p in feats.glob("*.h5"))
    assert files == [f"s{i}.tif.h5" for i in range(6)]
    index = {r["slide"].split("/")[-1]: r["status"] for r in csv.DictReader(open(feats / "index.csv"))}
    assert index["blank.tif"] == "no_tissue" and index["s0.tif"] == "done"
    f0 = load_slide_features(feats / "s0.tif.h5")
    grid = cached_tile_grid(slide_dir / "s0.tif", tmp_path / "grid", target_mpp=1.0, tile_size=64, min_tissue=0.4)
    np.testing.assert_array_equal(f0["coords"], grid.coords)
    assert f0["features"].shape == (len(grid), 64) and np.isfinite(f0["features"]).all()
    assert f0["attrs"]["size0"] == 128 and f0["attrs"]["mpp"] == 0.5
    # the embedding is the model's embedding of that tile
    from domainfm.pathology.embed import transform_from_preprocessing
    from domainfm.pathology.slide import open_slide

    t = transform_from_preprocessing(pre)(np.asarray(grid.read(open_slide(slide_dir / "s0.tif"), 2)))
    np.testing.assert_allclose(model.embed(t[None])[0].numpy(), f0["features"][2], atol=1e-4)

    # resumable: a rerun with exist_ok="resume" skips finished slides; a removed file is redone alone
    stamps = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.h5")}
    (feats / "s3.tif.h5").unlink()
    with pytest.raises(ConfigError, match='already exists; pass exist_ok=True to replace it, exist_ok="resume"'):
        domainfm.embed(model, slide_dir, feats)  # a rerun by mistake touches nothing
    assert not (feats / "s3.tif.h5").exists()
    with _quiet():
        domainfm.embed(model, slide_dir, feats, exist_ok="resume")
    after = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.h5")}
    assert all(after[n] == stamps[n] for n in stamps if n != "s3.tif.h5") and "s3.tif.h5" in after
    with _quiet():  # exist_ok=True: every slide embedded again, each file replaced atomically
        domainfm.embed(model, slide_dir, feats, exist_ok=True)
    again = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.h5")}
    assert all(again[n] != after[n] for n in after) and not list(feats.glob(".tmp-*"))
    # without out: the embeddings come back, and no (deleted) temporary folder is named
    capsys.readouterr()
    frame = domainfm.embed(model, slide_dir)
    assert len(frame) == sum(len(load_slide_features(p)["coords"]) for p in feats.glob("*.h5"))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("embedded")]
    assert said and "/" not in said[0] and " into " not in said[0], said

    with _quiet():
        mil = domainfm.finetune(
            pretrained,
            task="mil",
            data=feats,
            labels=labels_csv,
            out=tmp_path / "mil",
            overrides=["data.options.mil_epochs=3", "data.options.mil_hidden=16"],
        )
    metrics = json.loads((mil / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "tumor"] and metrics["n_slides"] == 6
    assert {"abmil", "mean"} <= set(metrics) and metrics["abmil"]["train"]["n"] == metrics["n_train"]
    assert len(list(csv.DictReader(open(mil / "predictions.csv")))) == 6
    for i in range(6):
        assert (mil / "heatmaps" / f"s{i}.tif.png").is_file()
    scores = list(csv.DictReader(open(mil / "heatmaps" / "s1.tif.tiles.csv")))
    assert len(scores) == len(load_slide_features(feats / "s1.tif.h5")["coords"])
    assert sum(float(r["attention"]) for r in scores) == pytest.approx(1.0, abs=1e-3)

    loaded = domainfm.load(mil)
    assert isinstance(loaded.head, GatedABMIL) and loaded.card["task"] == "mil"
    bag = torch.from_numpy(load_slide_features(feats / "s1.tif.h5")["features"])
    assert loaded.head(bag)[0].shape == (1, 2)
    with _quiet():
        png = domainfm.predict(loaded, slide_dir / "s1.tif", tmp_path / "pred" / "s1.png")
    result = json.loads((tmp_path / "pred" / "s1.prediction.json").read_text())
    assert png.is_file() and result["prediction"] in ("normal", "tumor")
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_cli_pretrain_embed_finetune_and_errors(slide_dir, labels_csv, tmp_path, capsys, shared_file):
    out = tmp_path / "run"
    tiny = [
        "--set",
        "data.img_size=32",
        "--set",
        "model.patch_size=8",
        "--set",
        "model.depth=2",
        "--set",
        "model.embed_dim=64",
        "--set",
        "model.num_heads=2",
        "--set",
        "train.progress=false",
        "--set",
        "train.tensorboard=false",
    ]
    with _quiet(), pytest.raises(SystemExit) as exc:
        main(
            [
                "pretrain",
                "--domain",
                "pathology",
                "--data",
                str(slide_dir),
                "--out",
                str(out),
                "--steps",
                "1",
                "--batch-size",
                "8",
                *tiny,
                "--target-mpp",
                "1.0",
                "--tile-size",
                "64",
                "--min-tissue",
                "0.4",
            ]
        )
    assert exc.value.code == 0
    assert json.loads(open(out / "latest.json").read())["step"] == 1
    assert (out / "tiles" / "s0.tif.tiles.csv").is_file()  # tile grids saved per slide under the run

    feats = tmp_path / "feats"
    with _quiet(), pytest.raises(SystemExit) as exc:
        main(["embed", str(out), "--data", str(slide_dir), "--out", str(feats)])
    assert exc.value.code == 0 and len(list(feats.glob("*.h5"))) == 6
    assert "1 skipped with no tissue" in capsys.readouterr().out

    with _quiet(), pytest.raises(SystemExit) as exc:
        main(
            [
                "finetune",
                str(out),
                "--task",
                "mil",
                "--data",
                str(feats),
                "--labels",
                str(labels_csv),
                "--out",
                str(tmp_path / "mil"),
                "--mil-epochs",
                "2",
                "--mil-hidden",
                "16",
            ]
        )
    assert exc.value.code == 0 and (tmp_path / "mil" / "metrics.json").is_file()

    # bad inputs: one line on stderr naming the file, exit status 2
    missing = tmp_path / "missing.csv"
    missing.write_text("slide,label\ns0.tif,normal\ns1.tif,tumor\nnot-there.svs,tumor\n")
    broken = shared_file("broken.svs")
    tcga = shared_file("tcga-cr-7395-01a-01-ts1.svs")
    cases = [
        (
            [
                "finetune",
                str(out),
                "--task",
                "mil",
                "--data",
                str(feats),
                "--labels",
                str(missing),
                "--out",
                str(tmp_path / "mil2"),
            ],
            ["missing.csv", "not-there.svs"],
        ),
        (["embed", str(out), "--data", str(broken), "--out", str(tmp_path / "e1")], ["broken.svs", "unreadable"]),
        (["embed", str(out), "--data", str(tcga), "--out", str(tmp_path / "e2")], ["tcga-cr-7395", "--mpp"]),
    ]
    for argv, words in cases:
        capsys.readouterr()
        with _quiet(), pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.count("\n") == 0 and err.startswith("error: ")
        assert all(w in err for w in words), err


def test_tile_classification_from_labelled_tile_folder(pretrained, tmp_path):
    for cls, blank in (("no-tissue", True), ("tissue", False)):
        (tmp_path / "tiles" / cls).mkdir(parents=True)
        for i in range(6):
            rgb = synthetic_he_image(48, 48, seed=i, blank=blank, tissue_fraction=1.0)
            Image.fromarray(rgb).save(tmp_path / "tiles" / cls / f"{i}.png")
    with _quiet():
        ckpt = domainfm.finetune(
            pretrained,
            task="classification",
            data=tmp_path / "tiles",
            out=tmp_path / "cls",
            overrides=["train.steps=2", "train.batch_size=4", "data.val_fraction=0.34"],
        )
    model = domainfm.load(ckpt)
    assert model.card["classes"] == ["no-tissue", "tissue"]
    x = model.preprocess(tmp_path / "tiles" / "tissue" / "0.png")
    assert model.logits(x[None]).shape == (1, 2)
    assert set(json.loads((tmp_path / "cls" / "val_metrics.json").read_text())) >= {"accuracy", "balanced_accuracy"}
    # a folder of tiles embeds into one file (embeddings, labels, paths)
    out = domainfm.embed(domainfm.load(pretrained), tmp_path / "tiles", tmp_path / "emb")
    arrays = np.load(out)
    assert out.name == "embeddings.npz" and arrays["embeddings"].shape == (12, 64)
    assert sorted(arrays["labels"].tolist()) == [0] * 6 + [1] * 6
