"""Predicting with a model trained on objects held in memory: an input of another kind than the training data
(a GeoTIFF for a model of MONAI volumes, a NIfTI for a TorchGeo model, a file for a model of plain arrays, an
object without its geometry) is one line naming the input and the training data, writes nothing and leaves
the input as it was; an encoder without a head says what to call instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import domainfm
from domainfm.errors import ConfigError, DataError
from tests.notebook.objects import array_models, monai_segmenter, torchgeo_segmenter, write_ct, write_scene
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

pytest.importorskip("nibabel")
pytest.importorskip("rasterio")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "objects"


@pytest.fixture(scope="module")
def monai_run(root):
    pytest.importorskip("monai")
    return monai_segmenter(root)


@pytest.fixture(scope="module")
def torchgeo_run(root):
    pytest.importorskip("torchgeo")
    return torchgeo_segmenter(root)


@pytest.fixture
def files(tmp_path):
    scan, _ = write_ct(tmp_path / "ct", "scan", seed=2)
    scene, _ = write_scene(tmp_path / "geo", "scene", size=32, seed=2)
    return scan, scene


def test_a_geotiff_for_a_model_of_monai_volumes_is_one_line_naming_both(monai_run, files, tmp_path, capsys):
    scan, scene = files
    before = digest(scene)
    code, err = run_cli(["predict", monai_run["segmenter"], "--input", scene, "--out", tmp_path / "p.nii.gz"], capsys)
    assert code == 2
    assert_one_line_error(err, "scene.tif", "MONAI volumes", ".nii.gz")
    assert digest(scene) == before and not (tmp_path / "p.nii.gz").exists()


def test_a_nifti_for_a_torchgeo_model_is_one_line_naming_both(torchgeo_run, files, tmp_path, capsys):
    scan, _ = files
    code, err = run_cli(["predict", torchgeo_run["segmenter"], "--input", scan, "--out", tmp_path / "p.tif"], capsys)
    assert code == 2
    assert_one_line_error(err, "scan.nii.gz", "TorchGeo RasterDataset", "GeoTIFF")
    assert not (tmp_path / "p.tif").exists()


def test_a_file_for_a_model_of_plain_arrays_is_one_line_saying_what_it_takes(root, files, tmp_path, capsys):
    scan, _ = files
    code, err = run_cli(["predict", array_models(root)["segmenter"], "--input", scan, "--out", tmp_path / "p"], capsys)
    assert code == 2
    assert_one_line_error(err, "scan.nii.gz", "without a file geometry", ".npy/.npz", "2 x 16 x 16")


def test_an_encoder_without_a_head_says_embed_or_finetune_in_cli_words(monai_run, files, tmp_path, capsys):
    scan, _ = files
    code, err = run_cli(["predict", monai_run["pretrained"], "--input", scan, "--out", tmp_path / "p.nii.gz"], capsys)
    assert code == 2
    assert_one_line_error(err, "domainfm embed CHECKPOINT", "domainfm finetune CHECKPOINT --task")


def test_a_npy_file_predicts_to_npz_from_the_cli_and_is_left_as_it_was(root, tmp_path, capsys):
    runs = array_models(root)
    np.save(tmp_path / "x.npy", runs["images"][:3])
    before = digest(tmp_path / "x.npy")
    code = run_cli(["predict", runs["classifier"], "--input", tmp_path / "x.npy", "--out", tmp_path / "p.npz"], capsys)
    assert code[0] == 0 and np.load(tmp_path / "p.npz")["probabilities"].shape == (3, 2)
    assert digest(tmp_path / "x.npy") == before
    code, err = run_cli(
        ["predict", runs["classifier"], "--input", tmp_path / "x.npy", "--out", tmp_path / "p.npz"], capsys
    )
    assert code == 2 and assert_one_line_error(err, "p.npz", "--exist-ok")


def test_objects_of_the_wrong_kind_are_one_line_naming_the_training_data(monai_run, torchgeo_run):
    from monai.data import MetaTensor  # MONAI is there: the fixture skipped otherwise

    volume = MetaTensor(torch.rand(1, 16, 16, 16))
    with pytest.raises(DataError, match=r"dict with keys \['image'\].*TorchGeo RasterDataset.*crs and bounds") as a:
        domainfm.predict(torchgeo_run["segmenter"], {"image": torch.rand(3, 16, 16)})  # no crs, no bounds
    with pytest.raises(DataError, match=r"MetaTensor.*TorchGeo RasterDataset") as b:
        domainfm.predict(torchgeo_run["segmenter"], volume)
    with pytest.raises(DataError, match=r"\(1, 16, 16\).*MONAI volumes.*MetaTensor C x D x H x W") as c:
        domainfm.predict(monai_run["segmenter"], MetaTensor(torch.rand(1, 16, 16)))  # 2D for a 3D model
    for info in (a, b, c):
        assert "\n" not in str(info.value)


def test_arrays_of_the_wrong_shape_and_options_not_taken_are_one_line(root):
    runs = array_models(root)
    with pytest.raises(DataError, match=r"expected one image of 2 x 16 x 16"):
        domainfm.predict(runs["classifier"], np.zeros((2, 5, 16, 16)))
    with pytest.raises(ConfigError, match=r"sensor.*batch_size, overlap, probabilities"):
        domainfm.predict(runs["classifier"], runs["images"][:2], sensor="sentinel2")
