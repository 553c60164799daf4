"""Sources, MONAI preprocessing recipes, caching and reproducible crops of the medical domain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from domainfm.errors import ConfigError, DataError
from domainfm.medical import MedicalDomain
from domainfm.medical.dataset import MedicalDataset
from domainfm.medical.domain import SEG_3D_BATCH
from domainfm.medical.options import MedicalOptions, normalized
from domainfm.medical.sources import discover
from domainfm.medical.synthetic import write_ct_nifti_folder, write_nifti_pair
from domainfm.registry import get_domain
from domainfm.runconfig import load_config


def _cfg(tmp_path, path, options=None, img_size=16, **extra):
    raw = {
        "domain": "medical",
        "out": str(tmp_path / "run"),
        "data": {"path": str(path), "img_size": img_size, "options": options or {}},
        **extra,
    }
    return load_config(raw)


def test_registered_through_entry_point():
    dom = get_domain("medical")
    assert isinstance(dom, MedicalDomain) and dom.name == "medical"


def test_ct_window_scaling_and_target_spacing(tmp_path):
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS on disk: Orientationd must flip x to RAS
    vol = np.full((20, 20, 10), -1000, np.int16)
    vol[:10] = 240  # top of the soft-tissue window (x index 0..9 on disk = the R side after flipping)
    vol[10:, :, :] = -160
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(p))
    opts = normalized(MedicalOptions(window="soft_tissue", target_spacing=[2.0, 2.0, 2.0]))
    ds = MedicalDataset([{"image": str(p), "id": "ct"}], opts, crop=[10, 10, 10], stage="val")
    s = ds[0]
    img = s["image"]
    assert img.shape == (1, 10, 10, 10)
    assert float(img.min()) == pytest.approx(0.0, abs=1e-5) and float(img.max()) == pytest.approx(1.0, abs=1e-5)
    # after RAS reorientation the disk's first half (value 1.0) is the second half along x
    assert float(img[0, -1].mean()) == pytest.approx(1.0, abs=1e-4)
    assert float(img[0, 0].mean()) == pytest.approx(0.0, abs=1e-4)
    np.testing.assert_allclose(s["meta"]["spacing"], [2.0, 2.0, 2.0], atol=1e-5)
    aff_out = np.asarray(s["meta"]["affine"])
    assert aff_out[0, 0] > 0  # RAS


def test_mri_percentile_zscore(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(500, 100, size=(16, 16, 16)).astype(np.float32)
    vol[:2] = 0  # background
    p = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    opts = normalized(MedicalOptions(modality="mri"))
    img = MedicalDataset([{"image": str(p)}], opts, crop=[16, 16, 16], stage="val")[0]["image"][0]
    fg = img[2:]
    assert float(fg.mean()) == pytest.approx(0.0, abs=0.05) and float(fg.std()) == pytest.approx(1.0, abs=0.05)
    assert float(img[:2].abs().max()) == 0.0


def test_sources_manifest_classes_decathlon(tmp_path):
    imgs = write_ct_nifti_folder(tmp_path / "scans", n=4, shape=(12, 12, 8))
    opts = normalized(MedicalOptions(modality="ct"))
    # CSV manifest with string labels
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        for i, p in enumerate(imgs):
            w.writerow([f"scans/{p.name}", "tumour" if i % 2 else "normal"])
    items, classes = discover(tmp_path / "m.csv", opts)
    assert classes == ["normal", "tumour"] and [it["label"] for it in items] == [0, 1, 0, 1]
    assert Path(items[0]["image"]).is_file()
    # class subfolders
    for i, p in enumerate(imgs):
        dst = tmp_path / "cls" / ("b" if i < 1 else "a") / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    items, classes = discover(tmp_path / "cls", opts)
    assert classes == ["a", "b"] and sorted(it["label"] for it in items) == [0, 0, 0, 1]
    # Decathlon datalist with masks
    for i in range(3):
        write_nifti_pair(tmp_path / "dec", f"case{i}", shape=(12, 12, 8), seed=i)
    dl = {
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": f"images/case{i}.nii.gz", "label": f"masks/case{i}.nii.gz"} for i in range(3)],
        "test": ["images/case0.nii.gz"],
    }
    (tmp_path / "dec" / "dataset.json").write_text(json.dumps(dl))
    cfg = _cfg(tmp_path, tmp_path / "dec" / "dataset.json", finetune={"task": "segmentation"})
    dom = get_domain("medical")
    train, val = dom.dataset(cfg, "train"), dom.dataset(cfg, "val")
    assert len(train) + len(val) == 3 and train.mask_classes == ["background", "lesion"] and train.classes is None
    s = train[0]
    assert s["mask"].shape == (16, 16, 16) and s["mask"].dtype == torch.long
    assert len(dom.dataset(cfg, "pretrain")) == 4 and "mask" not in dom.dataset(cfg, "pretrain")[0]
    # a missing file named in a manifest
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "scans/nothere.nii.gz"}]))
    with pytest.raises(DataError, match="nothere.nii.gz"):
        discover(tmp_path / "bad.json", opts)


def test_multisequence_folder_grouping(tmp_path):
    for subj in ("s1", "s2"):
        for seq in ("t1", "flair"):
            nib.save(
                nib.Nifti1Image(np.random.rand(10, 10, 10).astype(np.float32) + 1, np.eye(4)),
                str(tmp_path / f"{subj}_{seq}.nii.gz"),
            )
    cfg = _cfg(tmp_path, tmp_path, {"modality": "mri", "sequences": "t1,flair"}, img_size=8)
    dom = get_domain("medical")
    ds = dom.dataset(cfg, "pretrain")
    assert len(ds) == 2 and ds[0]["image"].shape == (2, 8, 8, 8)
    assert dom.encoder_kwargs(cfg)["in_chans"] == 2


def test_random_crops_reproducible_from_seed_epoch_index(tmp_path):
    for i in range(2):
        write_nifti_pair(tmp_path, f"c{i}", shape=(30, 28, 24), seed=i)
    opts = normalized(MedicalOptions(modality="ct"))
    items = [
        {"image": str(tmp_path / "images" / f"c{i}.nii.gz"), "mask": str(tmp_path / "masks" / f"c{i}.nii.gz")}
        for i in range(2)
    ]
    a = MedicalDataset(items, opts, crop=[16, 16, 16], stage="train", seed=3)
    b = MedicalDataset(items, opts, crop=[16, 16, 16], stage="train", seed=3, cache="memory")
    s1, s2 = a[1], b[1]
    assert torch.equal(s1["image"], s2["image"]) and torch.equal(s1["mask"], s2["mask"])
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], s1["image"])
    b.set_epoch(1)
    assert torch.equal(a[1]["image"], b[1]["image"])
    # label-aware crops: with pos:neg = 1:0 every crop contains foreground
    fg = MedicalDataset(
        items, normalized(MedicalOptions(modality="ct", pos_neg=[1, 0])), crop=[8, 8, 8], stage="train", seed=0
    )
    for epoch in range(4):
        fg.set_epoch(epoch)
        assert int(fg[0]["mask"].sum()) > 0


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache_does_not_decode_again(tmp_path, monkeypatch, cache):
    write_ct_nifti_folder(tmp_path / "scans", n=2, shape=(12, 12, 8))
    cfg = load_config(
        {
            "domain": "medical",
            "out": str(tmp_path / "run"),
            "data": {"path": str(tmp_path / "scans"), "img_size": 8, "cache": cache},
        }
    )
    dom = get_domain("medical")
    first = dom.dataset(cfg, "pretrain")
    x0, _ = first[0]["image"], first[1]  # the disk cache fills on first access, the memory cache at construction
    import domainfm.medical.transforms as tr

    calls = []

    def no_read(*args, **kwargs):
        calls.append(args)
        raise AssertionError("decoded again")

    monkeypatch.setattr(tr, "read_multisequence", no_read)
    if cache == "disk":
        assert len(list((tmp_path / "run" / "cache").rglob("*.pt"))) == 2
        ds = dom.dataset(cfg, "pretrain")  # a new run reads the disk cache
    else:
        ds = first
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert ds[0]["image"].shape == (1, 8, 8, 8) and ds[1]["image"].shape == (1, 8, 8, 8)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["image"], x0) and calls == []


def test_config_errors(tmp_path):
    write_ct_nifti_folder(tmp_path / "scans", n=2, shape=(12, 12, 8))
    dom = get_domain("medical")
    with pytest.raises(ConfigError, match="unknown window preset 'lungz'"):
        dom.dataset(_cfg(tmp_path, tmp_path / "scans", {"window": "lungz"}), "pretrain")
    with pytest.raises(ConfigError, match="img_size"):
        dom.dataset(_cfg(tmp_path, tmp_path / "scans", {"spatial_dims": 3}, img_size=[16, 16]), "pretrain")
    with pytest.raises(DataError, match="segmentation needs masks"):
        dom.dataset(_cfg(tmp_path, tmp_path / "scans", finetune={"task": "segmentation"}), "train")


def test_bad_scan_in_folder_named_by_dataset(tmp_path):
    write_ct_nifti_folder(tmp_path / "scans", n=2, shape=(12, 12, 8))
    vol = np.zeros((12, 12, 8), np.float32)
    vol[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "scans" / "zz_nan.nii.gz"))
    ds = get_domain("medical").dataset(_cfg(tmp_path, tmp_path / "scans"), "pretrain")
    with pytest.raises(DataError) as info:
        ds[2]
    assert "zz_nan.nii.gz" in str(info.value) and "NaN" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="zz_nan.nii.gz"):  # memory caching fails early, with the file named
        get_domain("medical").dataset(
            load_config(
                {
                    "domain": "medical",
                    "out": str(tmp_path / "r"),
                    "data": {"path": str(tmp_path / "scans"), "img_size": 16, "cache": "memory"},
                }
            ),
            "pretrain",
        )


def test_2d_xray_png_class_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    cfg = _cfg(tmp_path, tmp_path, {"spatial_dims": 2, "modality": "xray"}, img_size=32)
    dom = get_domain("medical")
    ds = dom.dataset(cfg, "train")
    s = ds[0]
    assert s["image"].shape == (1, 32, 32) and 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert ds.classes == ["normal", "pneumonia"]
    kw = dom.encoder_kwargs(cfg)
    assert kw["patch_embed"] == "2d" and kw["img_size"] == [32, 32]


def test_dataset_leaves_the_config_alone_and_settle_decides_the_3d_segmentation_batch(tmp_path):
    domain = get_domain("medical")
    example = domain.example(tmp_path).config
    cfg = load_config(example, overrides=["finetune.task=segmentation", "train.batch_size=64"])
    before = cfg.to_dict()
    for split in ("pretrain", "train", "val"):
        assert len(domain.dataset(cfg, split)) > 0
    assert cfg.to_dict() == before  # modality: auto and the default batch stay as they were
    decisions = domain.settle(cfg, "finetune")
    assert [(d.key, d.value) for d in decisions] == [("train.batch_size", SEG_3D_BATCH)]
    assert "3D segmentation" in decisions[0].why and cfg.to_dict() == before
    assert domain.settle(cfg, "pretrain") == []
    chosen = load_config(example, overrides=["finetune.task=segmentation", "train.batch_size=8"])
    assert domain.settle(chosen, "finetune") == []
    facts = domain.data_facts(cfg)  # before pretraining: the inferred modality goes into the config
    assert facts.spatial_dims == 3 and cfg.data.options["modality"] == "ct"
