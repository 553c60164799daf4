"""End to end on real files: pretrain -> finetune (UNETR segmentation) -> predict, through the Python API
and the CLI; predictions must land on the input's voxel grid (shape and affine)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import domainfm
from domainfm.api import FoundationModel
from domainfm.cli import main as cli_main
from domainfm.medical.synthetic import dicom_affine_ras, make_phantom, write_dicom_series, write_nifti_pair
from domainfm.models import build_encoder
from domainfm.registry import get_domain
from domainfm.runconfig import load_config

TINY = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
FAST = {"batch_size": 2, "progress": False, "tensorboard": False, "warmup_steps": 1, "log_every": 1}
OBLIQUE = np.array([[0.0, 0.0, -2.0, 40.0], [-1.2, 0.0, 0.0, 10.0], [0.0, 1.4, 0.0, -5.0], [0, 0, 0, 1.0]])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


class ThresholdHead(nn.Module):
    """A perfect 'segmenter' for the phantom (lesions are the brightest voxels after the CT window)."""

    layers: list[int] = []

    def forward(self, features: dict) -> torch.Tensor:
        img = features["image"][:, :1]
        return torch.cat([0.7 - img, img - 0.7], dim=1) * 20


def _oracle_model(tmp_path, data, options) -> FoundationModel:
    cfg = load_config(
        {
            "domain": "medical",
            "out": str(tmp_path / "o"),
            "data": {"path": str(data), "img_size": 16, "options": options},
            "model": TINY,
        }
    )
    dom = get_domain("medical")
    enc = build_encoder("vit-tiny", **dom.encoder_kwargs(cfg), depth=1, embed_dim=16, num_heads=2)
    card = {
        "domain": "medical",
        "encoder": enc.config,
        "preprocessing": dom.preprocessing(cfg),
        "task": "segmentation",
        "num_classes": 2,
        "classes": ["background", "lesion"],
        "config": cfg.to_dict(),
    }
    return FoundationModel(enc, card, ThresholdHead()).eval()


def test_predict_inverts_orientation_and_spacing(tmp_path):
    """With an oblique-permuted affine and resampling, the prediction still overlays the source mask."""
    ip, mp = write_nifti_pair(tmp_path, "case", shape=(26, 30, 18), affine=OBLIQUE, seed=4)
    model = _oracle_model(tmp_path, tmp_path / "images", {"target_spacing": [1.0, 1.0, 1.0], "foreground_crop": True})
    out = domainfm.predict(model, ip, tmp_path / "pred.nii.gz")
    pred, src = nib.load(out), nib.load(ip)
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine)
    truth = np.asarray(nib.load(mp).dataobj) > 0
    assert _dice(np.asarray(pred.dataobj) > 0, truth) > 0.85


def test_predict_dicom_series_writes_nifti_with_series_geometry(tmp_path):
    vol, mask = make_phantom((24, 20, 12), seed=2)
    write_dicom_series(tmp_path / "series", vol, spacing=(0.9, 0.9, 2.0))
    model = _oracle_model(tmp_path, tmp_path / "series", {"target_spacing": [0.6, 0.9, 1.0]})
    out = domainfm.predict(model, tmp_path / "series", tmp_path / "seg")
    pred = nib.load(out)
    assert out.name == "seg.nii.gz" and pred.shape == (24, 20, 12)
    np.testing.assert_allclose(pred.affine, dicom_affine_ras((0.9, 0.9, 2.0)), atol=1e-5)
    assert _dice(np.asarray(pred.dataobj) > 0, mask > 0) > 0.9


def test_pretrain_finetune_predict_api_and_cli(tmp_path, capsys):
    for i in range(3):
        write_nifti_pair(tmp_path / "data", f"c{i}", shape=(20, 22, 14), affine=OBLIQUE, seed=i)
    cfg = {
        "domain": "medical",
        "out": str(tmp_path / "pre"),
        "data": {
            "path": str(tmp_path / "data"),
            "img_size": 16,
            "cache": "memory",
            "options": {"target_spacing": [2.0, 2.0, 2.0], "window": "soft_tissue"},
        },
        "model": TINY,
        "train": {"steps": 2, **FAST},
    }
    ckpt = domainfm.pretrain(cfg)
    card = json.loads((ckpt / "card.json").read_text())
    prep = card["preprocessing"]
    assert prep["target_spacing"] == [2.0, 2.0, 2.0] and prep["orientation"] == "RAS"
    assert prep["normalization"] == {
        "kind": "ct_window",
        "window": "soft_tissue",
        "min_hu": -160.0,
        "max_hu": 240.0,
        "output_range": [0.0, 1.0],
        "clip": True,
    }
    model = domainfm.load(ckpt)
    x = model.preprocess(str(tmp_path / "data" / "images" / "c0.nii.gz"))  # rebuilt from the card alone
    assert (
        x.shape == (1, 14, 12, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    )  # RAS order (x<-axis2, y<-axis0, z<-axis1), 2 mm grid

    seg = domainfm.finetune(
        ckpt,
        task="segmentation",
        out=tmp_path / "seg",
        overrides=["train.steps=2", "finetune.head_options={feature_size: 4}", f"data.val_path={tmp_path / 'data'}"],
    )
    seg_model = domainfm.load(seg)
    val = seg_model.card["val_metrics"]  # crop-level (core) and whole-scan (domain) validation
    assert {"dice", "miou", "scan_dice", "scan_hd95_mm"} <= set(val) and 0.0 <= val["scan_dice"] <= 1.0
    assert type(seg_model.head).__name__ == "UNETRHead" and seg_model.card["classes"] == ["background", "label_1"]
    src = tmp_path / "data" / "images" / "c1.nii.gz"
    out = domainfm.predict(seg_model, src, tmp_path / "api_pred.nii.gz")
    p, s = nib.load(out), nib.load(src)
    assert p.shape == s.shape
    np.testing.assert_allclose(p.affine, s.affine)
    assert set(np.unique(np.asarray(p.dataobj)).tolist()) <= {0, 1}

    # the same through the CLI (in-process), from a pretrained checkpoint to a prediction file
    with pytest.raises(SystemExit) as code:
        cli_main(
            [
                "finetune",
                str(ckpt),
                "--task",
                "segmentation",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "cli_seg"),
                "--set",
                "finetune.head_options={feature_size: 4}",
            ]
        )
    assert code.value.code == 0
    cli_pred = tmp_path / "cli_pred.nii.gz"
    with pytest.raises(SystemExit) as code:
        cli_main(
            ["predict", str(tmp_path / "cli_seg"), "--input", str(src), "--out", str(cli_pred), "--sw-overlap", "0.5"]
        )
    assert code.value.code == 0 and "prediction:" in capsys.readouterr().out
    p = nib.load(cli_pred)
    assert p.shape == s.shape
    np.testing.assert_allclose(p.affine, s.affine)

    # embeddings, one per scan
    with pytest.raises(SystemExit) as code:
        cli_main(["embed", str(ckpt), "--data", str(tmp_path / "data" / "images"), "--out", str(tmp_path / "e.npz")])
    assert code.value.code == 0
    emb = np.load(tmp_path / "e.npz")
    assert emb["embeddings"].shape == (3, 32) and list(emb["ids"]) == ["c0", "c1", "c2"]

    # a corrupt input: one line naming the file, exit status 2
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(src.read_bytes()[:200])
    with pytest.raises(SystemExit) as code:
        cli_main(["predict", str(tmp_path / "cli_seg"), "--input", str(bad), "--out", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and err.startswith("error: ") and "broken.nii.gz" in err and "\n" not in err


def test_cli_pretrain_with_option_flags(tmp_path, capsys):
    for i in range(2):
        write_nifti_pair(tmp_path / "d", f"c{i}", shape=(18, 18, 12), seed=i)
    with pytest.raises(SystemExit) as code:
        cli_main(
            [
                "pretrain",
                "--domain",
                "medical",
                "--data",
                str(tmp_path / "d" / "images"),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "run"),
                "--set",
                "data.img_size=16",
                "--set",
                "model.patch_size=8",
                "--set",
                "model.depth=1",
                "--set",
                "model.embed_dim=16",
                "--set",
                "model.num_heads=2",
                "--set",
                "train.progress=false",
                "--set",
                "train.tensorboard=false",
                "--window",
                "lung",
                "--target-spacing",
                "2,2,2",
                "--crop-size",
                "16",
            ]
        )
    assert code.value.code == 0
    card = domainfm.load(tmp_path / "run").card
    assert card["preprocessing"]["normalization"]["window"] == "lung"
    assert card["preprocessing"]["target_spacing"] == [2.0, 2.0, 2.0]
    with pytest.raises(SystemExit) as code:
        cli_main(
            [
                "pretrain",
                "--domain",
                "medical",
                "--data",
                str(tmp_path / "d" / "images"),
                "--steps",
                "1",
                "--out",
                str(tmp_path / "run2"),
                "--window",
                "lungs",
            ]
        )
    assert code.value.code == 2 and "unknown window preset 'lungs'" in capsys.readouterr().err


def test_evaluate_segmentation_dice_hd95_in_original_space(tmp_path):
    from domainfm.medical.inference import evaluate_segmentation

    for i in range(2):
        write_nifti_pair(tmp_path / "val", f"v{i}", shape=(24, 26, 16), affine=OBLIQUE, seed=10 + i)
    model = _oracle_model(tmp_path, tmp_path / "val", {"target_spacing": [1.0, 1.0, 1.0]})
    res = evaluate_segmentation(model, tmp_path / "val")
    assert res["scans"] == 2 and res["dice"] > 0.85 and 0.0 <= res["hd95_mm"] < 3.0


def test_2d_npz_pretrain_classify_and_predict_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        labels = np.arange(n) % 2
        imgs = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
        imgs[labels == 1, 8:20, 8:20] = 250  # a bright 'opacity'
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels[:, None]
    np.savez(tmp_path / "tiny_mnist.npz", **arrays)
    cfg = {
        "domain": "medical",
        "out": str(tmp_path / "pre"),
        "data": {
            "path": str(tmp_path / "tiny_mnist.npz"),
            "img_size": 28,
            "cache": "memory",
            "options": {"spatial_dims": 2, "modality": "xray"},
        },
        "model": {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2},
        "train": {"steps": 2, **FAST},
    }
    ckpt = domainfm.pretrain(cfg)
    assert domainfm.load(ckpt).encoder.config["patch_embed"] == "2d"
    clf = domainfm.finetune(ckpt, task="classification", out=tmp_path / "clf", overrides=["train.steps=2"])
    model = domainfm.load(clf)
    assert model.card["classes"] == ["0", "1"]
    png = tmp_path / "xray.png"
    Image.fromarray(arrays["test_images"][1]).resize((56, 56)).save(png)  # a different size: resized by the recipe
    out = domainfm.predict(model, png, tmp_path / "xray_pred.json")
    res = json.loads(out.read_text())
    assert res["classes"] == ["0", "1"] and abs(sum(res["probabilities"]) - 1) < 1e-5
    emb = domainfm.embed(model, tmp_path / "tiny_mnist.npz", tmp_path / "emb.h5")
    import h5py

    with h5py.File(emb) as f:
        assert f["embeddings"].shape == (40, 16) and list(f["labels"][:4]) == [0, 1, 0, 1]  # train + val + test
        splits = [s.decode() for s in f["splits"][:]]
        assert splits.count("train") == 24 and splits.count("val") == 8 and splits.count("test") == 8
