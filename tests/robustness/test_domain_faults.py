"""Per domain: predictions never replace their input, interrupted predicts leave nothing valid-looking,
sparse label ids round-trip, disagreeing class counts are refused, eval caps are stratified."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import rasterio

import domainfm
import domainfm.medical.io as mio
from domainfm.classmap import cap_indices
from domainfm.errors import ConfigError, DataError
from domainfm.medical.synthetic import write_nifti_pair
from domainfm.remote_sensing.predict import predict_scene
from domainfm.remote_sensing.synthetic import write_scene
from tests.remote_sensing.test_rs_predict_heads import PixelModel, _card
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

TINY = {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
FAST = {"batch_size": 2, "progress": False, "tensorboard": False, "warmup_steps": 1, "steps": 1}
SPARSE = [0, 1, 2, 3, 4, 8]


@pytest.fixture(scope="module")
def sparse_seg(tmp_path_factory):
    """A tiny medical segmentation checkpoint trained on masks holding ids {0,1,2,3,4,8}."""
    root = tmp_path_factory.mktemp("med")
    for i in range(2):
        ip, mp = write_nifti_pair(root / "data", f"c{i}", shape=(16, 16, 16), seed=i)
        m = nib.load(mp)
        arr = np.zeros(m.shape, np.uint8)
        for k, v in enumerate(SPARSE):
            arr[k * 2 : (k + 1) * 2] = v
        nib.save(nib.Nifti1Image(arr, m.affine), mp)
    cfg = {
        "domain": "medical",
        "out": str(root / "pre"),
        "data": {"path": str(root / "data"), "img_size": 16},
        "model": TINY,
        "train": FAST,
    }
    pre = domainfm.pretrain(cfg)
    seg = domainfm.finetune(pre, task="segmentation", data=root / "data", out=root / "seg", overrides=["train.steps=1"])
    return root, seg


def test_sparse_ids_map_to_contiguous_and_back(sparse_seg, tmp_path):
    root, seg = sparse_seg
    card = domainfm.load(seg).card
    assert card["num_classes"] == 6 and card["class_map"]["ids"] == SPARSE
    out = domainfm.predict(seg, root / "data" / "images" / "c0.nii.gz", tmp_path / "pred.nii.gz")
    assert set(np.unique(np.asarray(nib.load(out).dataobj)).tolist()) <= set(SPARSE)


def test_num_classes_disagreeing_with_masks_is_refused(sparse_seg, tmp_path, capsys):
    root, _ = sparse_seg
    before = digest(root / "data", root / "pre")
    code, err = run_cli(
        [
            "finetune",
            root / "pre",
            "--task",
            "segmentation",
            "--data",
            root / "data",
            "--num-classes",
            "3",
            "--out",
            tmp_path / "ft",
            "--steps",
            "1",
        ],
        capsys,
    )
    assert code == 2
    assert_one_line_error(err, "--num-classes 3", str(SPARSE))
    assert digest(root / "data", root / "pre") == before


@pytest.mark.parametrize("how", ["same_path", "hard_link", "symlink", "under_a_file", "existing_folder"])
def test_medical_predict_never_replaces_the_input(sparse_seg, tmp_path, capsys, how):
    root, seg = sparse_seg
    src = tmp_path / "scan.nii.gz"
    src.write_bytes((root / "data" / "images" / "c1.nii.gz").read_bytes())
    out = {
        "same_path": src,
        "hard_link": tmp_path / "link.nii.gz",
        "symlink": tmp_path / "sym.nii.gz",
        "under_a_file": src / "pred.nii.gz",
        "existing_folder": tmp_path / "dir.nii.gz",
    }[how]
    if how == "hard_link":
        os.link(src, out)
    if how == "symlink":
        out.symlink_to(src)
    if how == "existing_folder":
        out.mkdir()
    before = digest(src)
    code, err = run_cli(["predict", seg, "--input", src, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(out))
    assert digest(src) == before


def test_predict_refuses_an_existing_output_and_replaces_it_when_asked(sparse_seg, tmp_path, capsys):
    root, seg = sparse_seg
    scan = root / "data" / "images" / "c0.nii.gz"
    out = domainfm.predict(seg, scan, tmp_path / "pred")  # the domain names the file: pred.nii.gz
    assert out == tmp_path / "pred.nii.gz"
    out.write_bytes(b"an earlier prediction")
    for given in ("pred", "pred.nii.gz"):  # the rule reaches the file name the domain derives from out
        with pytest.raises(ConfigError, match=r"pred\.nii\.gz already exists; pass exist_ok=True to replace it"):
            domainfm.predict(seg, scan, tmp_path / given)
    code, err = run_cli(["predict", seg, "--input", scan, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(out), "pass --exist-ok to replace it")
    assert out.read_bytes() == b"an earlier prediction"
    code, _ = run_cli(["predict", seg, "--input", scan, "--out", out, "--exist-ok"], capsys)
    assert code == 0 and nib.load(out).shape == nib.load(scan).shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz"]  # replaced atomically, nothing left over


def test_interrupted_medical_predict_leaves_no_output(sparse_seg, tmp_path, monkeypatch):
    root, seg = sparse_seg

    def interrupted(img, name):
        with open(name, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(mio.nib if hasattr(mio, "nib") else nib, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        domainfm.predict(seg, root / "data" / "images" / "c0.nii.gz", tmp_path / "pred.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_medical_embed_checks_its_output_first(sparse_seg, tmp_path, capsys):
    root, _ = sparse_seg
    blocker = tmp_path / "f"
    blocker.write_text("x")
    code, err = run_cli(["embed", root / "pre", "--data", root / "data" / "images", "--out", blocker / "e.npz"], capsys)
    assert code == 2
    assert_one_line_error(err, str(blocker))


@pytest.fixture
def scene(tmp_path):
    path, _ = write_scene(tmp_path / "scene.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(70, 60))
    return path


def test_rs_predict_refuses_the_input_as_output(scene):
    before = digest(scene)
    with pytest.raises(DataError, match="input"):
        predict_scene(PixelModel(_card()), scene, scene)
    assert digest(scene) == before


def test_rs_predict_size_guard_names_the_file(scene, tmp_path):
    with pytest.raises(DataError, match="guard") as exc:
        predict_scene(PixelModel(_card()), scene, tmp_path / "p.tif", max_pixels=1000)
    assert str(scene) in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "p.tif").exists()


def test_rs_interrupted_predict_leaves_no_output(scene, tmp_path):
    class Dies(PixelModel):
        def logits(self, x, wavelengths=None):
            if self.calls:
                raise KeyboardInterrupt
            return super().logits(x, wavelengths)

    out_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(Dies(_card()), scene, out_dir / "p.tif", overlap=0.5)
    assert list(out_dir.iterdir()) == []


def test_rs_predict_writes_label_ids_and_shows_progress(scene, tmp_path, capsys):
    card = {**_card(), "class_map": {"ids": [0, 5, 9], "names": None}}
    out = predict_scene(PixelModel(card), scene, tmp_path / "p.tif", progress=True)
    with rasterio.open(out) as dst:
        assert set(np.unique(dst.read(1)).tolist()) <= {0, 5, 9, 255}


def test_eval_cap_is_a_stratified_random_sample():
    class Sorted(list):
        items = [{"label": 0}] * 80 + [{"label": 1}] * 20

    idx = cap_indices(Sorted(range(100)), 10)
    labels = [Sorted.items[i]["label"] for i in idx]
    assert len(idx) == 10 and labels.count(1) == 2 and idx != list(range(10))
