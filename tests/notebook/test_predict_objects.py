"""A model trained on objects held in memory predicts from whatever trained it: a segmenter fine-tuned from a
MONAI dataset of NIfTI dicts on the next NIfTI (its affine kept) and on a MetaTensor, one fine-tuned from a
TorchGeo RasterDataset on a GeoTIFF (CRS and transform kept) and on a sample dict, arrays models on arrays;
the card records the geometry; what cannot be predicted says what to call instead."""

from __future__ import annotations

import numpy as np
import pytest

import domainfm
from domainfm.errors import DataError, UnsupportedError
from tests.notebook.objects import (
    FINETUNE,
    TINY,
    TRAIN_AFFINE,
    array_models,
    monai_segmenter,
    torchgeo_segmenter,
    write_ct,
    write_scene,
)

nib = pytest.importorskip("nibabel")


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


def test_the_card_of_a_monai_run_records_a_medical_geometry(monai_run):
    model = domainfm.load(monai_run["segmenter"])
    geometry = model.card["preprocessing"]["geometry"]
    assert model.card["domain"] == "arrays" and geometry["domain"] == "medical" and geometry["kind"] == "volume"
    assert geometry["spacing"] == [1.5, 1.5, 2.0] and np.allclose(geometry["affine"], TRAIN_AFFINE)
    assert "MONAI volumes" in geometry["from"] and "geometry" in repr(model)


def test_a_monai_trained_segmenter_predicts_on_the_next_nifti_in_its_own_geometry(monai_run, tmp_path):
    # another scan: other shape, orientation (x flipped) and origin than the training volumes
    affine = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -4.0], [0, 0, 2.0, 7.0], [0, 0, 0, 1]])
    scan, _ = write_ct(tmp_path, "next", shape=(30, 26, 14), affine=affine, seed=9)
    out = domainfm.predict(monai_run["segmenter"], scan, tmp_path / "pred.nii.gz")
    written = nib.load(out)  # written with nibabel, on the scan's grid
    assert written.shape == (30, 26, 14) and np.allclose(written.affine, affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    shown = domainfm.predict(monai_run["segmenter"], scan)  # no out: in memory, nothing left on disk
    assert shown.array.shape == (30, 26, 14) and np.allclose(shown.geometry["affine"], affine)


def test_a_monai_trained_segmenter_predicts_on_a_metatensor_and_a_monai_dict(monai_run, tmp_path):
    from monai.transforms import LoadImage  # MONAI is there: the fixture skipped otherwise

    scan, _ = write_ct(tmp_path, "other", shape=(20, 28, 18), seed=3)
    volume = LoadImage(ensure_channel_first=True)(str(scan))
    pred = domainfm.predict(monai_run["segmenter"], volume)
    assert pred.array.shape == (20, 28, 18) and np.allclose(pred.geometry["affine"], volume.affine.numpy())
    item = monai_run["dataset"][0]  # a dict of the training dataset: its image is predicted
    assert domainfm.predict(monai_run["segmenter"], item).array.shape == (24, 24, 16)


def test_the_card_of_a_torchgeo_run_records_a_remote_sensing_geometry(torchgeo_run):
    geometry = domainfm.load(torchgeo_run["segmenter"]).card["preprocessing"]["geometry"]
    assert geometry["domain"] == "remote_sensing" and geometry["kind"] == "scene"
    assert "32633" in geometry["crs"] and geometry["res"] == [10.0, 10.0] and "RasterDataset" in geometry["from"]


def test_a_torchgeo_trained_segmenter_predicts_on_a_geotiff_keeping_crs_and_transform(torchgeo_run, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    scene, _ = write_scene(tmp_path, "elsewhere", origin=(510000.0, 4610000.0), size=40, seed=5)
    out = domainfm.predict(torchgeo_run["segmenter"], scene, tmp_path / "pred.tif")
    with rasterio.open(out) as pred, rasterio.open(scene) as src:  # written with rasterio, on the scene's grid
        assert pred.crs == src.crs and pred.transform == src.transform and pred.shape == src.shape
    shown = domainfm.predict(torchgeo_run["segmenter"], scene)
    assert shown.array.shape == (40, 40) and "32633" in shown.geometry["crs"]


def test_a_torchgeo_trained_segmenter_predicts_on_a_sample_dict(torchgeo_run):
    pairs, sampler = torchgeo_run["pairs"], torchgeo_run["sampler"]
    sample = pairs[next(iter(sampler))]
    pred = domainfm.predict(torchgeo_run["segmenter"], sample)
    left, top = sample["bounds"][0].start, sample["bounds"][1].stop
    assert pred.array.shape == (16, 16) and "32633" in pred.geometry["crs"]
    assert np.allclose(pred.geometry["transform"], (10.0, 0.0, left, 0.0, -10.0, top))


def test_arrays_models_predict_on_arrays_label_maps_and_class_probabilities(root, tmp_path):
    runs = array_models(root)
    x = runs["images"]
    probs = domainfm.predict(runs["classifier"], x[:5])
    assert probs.array.shape == (5, 2) and np.allclose(probs.array.sum(1), 1, atol=1e-5)
    assert list(probs.extra["classes"]) == ["0", "1"] and probs.extra["labels"].shape == (5,)
    assert domainfm.predict(runs["classifier"], x[0]).array.shape == (2,)  # one image: no leading axis
    maps = domainfm.predict(runs["segmenter"], x[:3])
    assert maps.array.shape == (3, 16, 16) and set(np.unique(maps.array)) <= {0, 1}
    np.save(tmp_path / "x.npy", x[:4])  # a .npy file of arrays, written as .npz
    out = domainfm.predict(runs["segmenter"], tmp_path / "x.npy", tmp_path / "pred")
    assert out.name == "pred.npz" and np.load(out)["labels"].shape == (4, 16, 16)


def test_what_cannot_be_predicted_says_what_to_call_instead(root, monai_run, tmp_path):
    runs = array_models(root)
    with pytest.raises(UnsupportedError, match=r"domainfm\.embed\(checkpoint, data\).*domainfm\.finetune"):
        domainfm.predict(monai_run["pretrained"], runs["images"][:2])  # an encoder without a head
    scan, _ = write_ct(tmp_path, "scan", seed=1)
    with pytest.raises(DataError, match=r"without a file geometry.*domainfm\.predict\(model, x\)") as info:
        domainfm.predict(runs["segmenter"], scan)  # plain arrays carry no affine to write a NIfTI with
    assert "\n" not in str(info.value) and "2 x 16 x 16" in str(info.value)
    with pytest.raises(DataError, match=r"scene\.tif: is not a medical scan.*MONAI volumes"):
        domainfm.predict(monai_run["segmenter"], tmp_path / "scene.tif")


def test_a_monai_trained_classifier_returns_the_class_of_a_nifti(monai_run, tmp_path):
    from monai.data import Dataset  # MONAI is there: the fixture skipped otherwise

    loaded = [monai_run["dataset"][i]["image"] for i in range(4)]
    labelled = Dataset([{"image": image, "label": i % 2} for i, image in enumerate(loaded)])
    clf = domainfm.finetune(
        monai_run["pretrained"], task="classification", data=labelled, out=tmp_path / "clf", overrides=["train.steps=1"]
    )
    scan, _ = write_ct(tmp_path, "scan", seed=4)
    pred = domainfm.predict(clf, scan)  # whole-scan probabilities (windows averaged), the class in extra
    assert pred.array.shape == (2,) and pred.extra["prediction"] in ("0", "1")


def test_a_tile_classifier_with_an_mpp_predicts_a_slide_heatmap(tmp_path):
    pytest.importorskip("openslide")
    from torch.utils.data import Dataset

    from domainfm.pathology.synthetic import write_synthetic_slide

    class Tiles(Dataset):  # RGB tiles of 32 px at 1 µm/px, as a dataset of (image, label)
        mpp = 1.0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            rng = np.random.default_rng(i)
            return rng.integers(120, 255, (3, 32, 32)).astype(np.uint8), i % 2

    pre = domainfm.pretrain({"out": str(tmp_path / "pre"), **TINY}, data=Tiles())
    clf = domainfm.finetune(pre, task="classification", data=Tiles(), out=tmp_path / "clf", overrides=FINETUNE)
    assert domainfm.load(clf).card["preprocessing"]["geometry"] == {
        "domain": "pathology",
        "kind": "slide",
        "from": "tiles of a Tiles at 1 µm/px",
        "mpp": 1.0,
    }
    slide = write_synthetic_slide(tmp_path / "s.tif", (384, 256), mpp=0.5, seed=1, tumor=True)
    heatmap = domainfm.predict(clf, slide)
    assert heatmap.array.ndim == 3 and len(heatmap.geometry["coords"]) == heatmap.extra["n_tiles"] > 0
