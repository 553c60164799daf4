"""The bad-input campaign (issue 19, item 8): lost or corrupt output reported as success, hangs on FIFOs,
damaged checkpoints and tampered cards, values accepted silently or failing deep inside a library. Each
case ends in one line naming the file or key (exit status 2 on the CLI), with inputs and checkpoints
byte-identical."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import domainfm
import domainfm.io_safety as io_safety
import domainfm.remote_sensing.predict as rs_predict
import domainfm.weights as weights_mod
from domainfm.data.adapters import adapt
from domainfm.errors import CheckpointError, ConfigError, DataError
from domainfm.medical.io import read_image
from domainfm.medical.options import MedicalOptions, normalized
from domainfm.medical.sources import discover
from domainfm.medical.synthetic import make_phantom, write_dicom_series, write_nifti_pair
from domainfm.medical.transforms import LoadScand
from domainfm.pathology.datasets import list_slides
from domainfm.registry import get_domain
from domainfm.remote_sensing.datasets import Item, RasterChipDataset, _raster_files
from domainfm.remote_sensing.synthetic import write_mask, write_scene
from domainfm.runconfig import load_config
from domainfm.train.checkpoint import list_checkpoints
from tests.conftest import TINY_MODEL, tiny_config
from tests.remote_sensing.test_rs_predict_heads import PixelModel, _card
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

SMALL = {**TINY_MODEL, "depth": 1, "embed_dim": 32}
X = np.random.default_rng(0).integers(0, 255, (12, 1, 16, 16)).astype(np.uint8)


def _one_line(exc: BaseException, *names: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    for name in names:
        assert str(name) in text, (name, text)


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A tiny synthetic run with two checkpoints (ckpt-0000001, ckpt-0000002)."""
    out = tmp_path_factory.mktemp("campaign") / "run"
    domainfm.pretrain(tiny_config(out, model=SMALL, train={"steps": 2, "ckpt_every": 1, "keep_last": 0}))
    return out


@pytest.fixture
def run(run2, tmp_path):
    """A private copy of :func:`run2` a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(run2, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def arrays_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    cfg = {"out": str(folder / "run"), "model": SMALL, "train": {"steps": 1, "batch_size": 4, "progress": False}}
    ckpt = domainfm.pretrain({**cfg, "train": {**cfg["train"], "tensorboard": False}}, data=X)
    np.save(folder / "x.npy", X)
    return ckpt, folder / "x.npy"


# ---- lost or corrupt output reported as success ---------------------------------------------------------


def test_rs_predict_meeting_a_full_disk_midway_keeps_the_earlier_output(tmp_path, monkeypatch):
    scene, _ = write_scene(tmp_path / "scene.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(70, 60))
    out = tmp_path / "pred.tif"
    out.write_bytes(b"an earlier prediction")
    real, calls = rs_predict._write_rows, {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(rs_predict, "_write_rows", full_disk)
    before = digest(scene)
    with pytest.raises(DataError) as exc:
        rs_predict.predict_scene(PixelModel(_card()), scene, out, overlap=0.5)
    _one_line(exc.value, str(out), "disk full")
    assert out.read_bytes() == b"an earlier prediction" and digest(scene) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif", "scene.tif"]  # no temporary file left


def test_import_weights_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = tmp_path / "vit.safetensors"
    save_file(_timm_state(), str(src))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights_mod, "save_file", full)
    before = digest(src)
    code, err = run_cli(["import-weights", src, "--domain", "synthetic", "--out", tmp_path / "imp"], capsys)
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "imp"), "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.safetensors"] and digest(src) == before


def test_embed_onto_a_full_disk_is_one_line(arrays_ckpt, tmp_path, capsys, monkeypatch):
    ckpt, x = arrays_ckpt

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_safety.np, "savez", full)
    code, err = run_cli(["embed", ckpt, "--data", x, "--out", tmp_path / "e.npz"], capsys)
    assert code == 2
    assert_one_line_error(err, "e.npz", "disk full")
    assert list(tmp_path.iterdir()) == []


def _timm_state(nan: bool = False) -> dict:
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, num_heads=1, depth=1
    )
    state = {k: v.detach().contiguous().clone() for k, v in vit.state_dict().items()}
    if nan:
        state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    return state


# ---- hangs: FIFOs as the input or in the data -----------------------------------------------------------


@pytest.mark.parametrize("domain, name", [("medical", "scan.nii.gz"), ("pathology", "slide.svs"), ("medical", "x.png")])
def test_a_fifo_given_as_the_data_is_refused_before_it_is_read(tmp_path, capsys, domain, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    code, err = run_cli(["pretrain", "--domain", domain, "--data", fifo, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_line_error(err, str(fifo), "FIFO")
    assert not (tmp_path / "run").exists()


def test_a_fifo_given_to_embed_or_predict_is_refused(arrays_ckpt, tmp_path, capsys):
    ckpt, _ = arrays_ckpt
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    code, err = run_cli(["embed", ckpt, "--data", fifo, "--out", tmp_path / "e.npz"], capsys)
    assert code == 2
    assert_one_line_error(err, str(fifo), "FIFO")
    scene = tmp_path / "scene.tif"
    os.mkfifo(scene)
    with pytest.raises(DataError) as exc:
        rs_predict.predict_scene(PixelModel(_card()), scene, tmp_path / "p.tif")
    _one_line(exc.value, str(scene), "FIFO")


def test_fifos_folders_and_dangling_links_in_a_data_folder_are_named(tmp_path, caplog):
    med = tmp_path / "xr"
    med.mkdir()
    for i in range(2):
        Image.fromarray((np.arange(256).reshape(16, 16) + i).astype(np.uint8)).save(med / f"a{i}.png")
    os.mkfifo(med / "pipe.png")
    (med / "folder.png").mkdir()
    (med / "gone.png").symlink_to(tmp_path / "missing.png")
    items, _ = discover(med, normalized(MedicalOptions(spatial_dims=2)))
    assert len(items) == 2
    for name in ("pipe.png", "folder.png", "gone.png"):
        assert name in caplog.text
    rs = tmp_path / "rs"
    rs.mkdir()
    os.mkfifo(rs / "pipe.tif")
    caplog.clear()
    assert _raster_files(rs) == [] and "pipe.tif" in caplog.text
    slides = tmp_path / "slides"
    slides.mkdir()
    os.mkfifo(slides / "pipe.svs")
    caplog.clear()
    with pytest.raises(DataError):
        list_slides(slides)
    assert "pipe.svs" in caplog.text and "FIFO" in caplog.text


# ---- damaged checkpoints ----------------------------------------------------------------------------


def _flip_a_bit(ckpt) -> None:
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 1
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit_flip", "dangling_newest", "bad_latest", "latest_missing"])
def test_a_damaged_newest_checkpoint_is_named_with_its_fallback(run, caplog, damage):
    first, newest = list_checkpoints(run)
    expected, damaged = first, newest.name
    if damage == "bit_flip":
        _flip_a_bit(newest)
    elif damage == "dangling_newest":
        (run / "ckpt-0000003").symlink_to(run / "gone")
        expected, damaged = newest, "ckpt-0000003"
    elif damage == "bad_latest":
        (run / "latest.json").write_text("{")
        expected, damaged = newest, "latest.json"
    else:
        (run / "latest.json").write_text(json.dumps({"checkpoint": "ckpt-0000009"}))
        expected, damaged = newest, "ckpt-0000009"
    intact = digest(first)
    with caplog.at_level(logging.WARNING):
        assert domainfm.load(run).path == expected
    line = next(r.getMessage() for r in caplog.records if damaged in r.getMessage())
    assert "damaged" in line or "missing" in line
    assert str(expected) in line or "newest intact" in line
    assert digest(first) == intact


def test_a_bit_flip_is_named_when_loaded_directly_and_on_resume(run, caplog):
    first, newest = list_checkpoints(run)
    _flip_a_bit(newest)
    with pytest.raises(CheckpointError) as exc:
        domainfm.load(newest)
    _one_line(exc.value, str(newest), "sha256")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["steps"], cfg["out"] = 3, str(run)
    with caplog.at_level(logging.WARNING):
        assert domainfm.pretrain(cfg, resume=True).name == "ckpt-0000003"
    assert f"checkpoint {newest} is damaged" in caplog.text and f"falling back to {first}" in caplog.text


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(domain="bogus"), "domain"),
        (lambda c: c.pop("encoder"), "encoder section"),
        (lambda c: c["encoder"].update(depth=10**12), "encoder.depth"),
        (lambda c: c["encoder"].update(num_heads=-2), "encoder.num_heads"),
        (lambda c: c["encoder"].update(patch_size=[0, 0]), "encoder.patch_size"),
    ],
)
def test_a_tampered_card_is_one_line_for_info_and_load(run, capsys, edit, key):
    ckpt = list_checkpoints(run)[-1]
    card = json.loads((ckpt / "card.json").read_text())
    edit(card)
    (ckpt / "card.json").write_text(json.dumps(card))
    code, err = run_cli(["info", ckpt], capsys)
    assert code == 2
    assert_one_line_error(err, "card.json", key)
    with pytest.raises(CheckpointError) as exc:
        domainfm.load(ckpt)
    _one_line(exc.value, "card.json", key)


@pytest.mark.parametrize("key, value, words", [("embed_dim", 48, "32 wide"), ("in_chans", 3, "1 channel")])
def test_a_card_disagreeing_with_its_weights_says_so_in_card_words(run, key, value, words):
    ckpt = list_checkpoints(run)[-1]
    card = json.loads((ckpt / "card.json").read_text())
    card["encoder"][key] = value
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError) as exc:
        domainfm.load(ckpt)
    _one_line(exc.value, f"encoder.{key}", words)


# ---- values refused in one line (they failed deep inside a library, or were accepted silently) ----------


@pytest.mark.parametrize(
    "override, names",
    [
        ("model.depth=0", ["model.depth"]),
        ("model.embed_dim=-32", ["model.embed_dim"]),
        ("model.patch_size=[8,8,8]", ["model.patch_size"]),
        ("data.img_size=100000", ["data.img_size"]),
    ],
)
def test_bad_model_shapes_are_one_line_and_write_nothing(tmp_path, capsys, override, names):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", train={"steps": 1})))
    code, err = run_cli(["pretrain", cfg, "--set", override], capsys)
    assert code == 2
    assert_one_line_error(err, *names)
    assert not list_checkpoints(tmp_path / "run")


def test_config_given_twice_or_with_duplicate_keys_and_resume_with_init(tmp_path, capsys, run2):
    cfg = tmp_path / "cfg.yaml"
    text = yaml.safe_dump(tiny_config(tmp_path / "run", train={"steps": 1}))
    cfg.write_text(text + "domain: synthetic\n")
    code, err = run_cli(["pretrain", cfg], capsys)
    assert code == 2
    assert_one_line_error(err, str(cfg), "'domain' is given twice")
    cfg.write_text(text)
    code, err = run_cli(["pretrain", cfg, "--config", cfg], capsys)
    assert code == 2
    assert_one_line_error(err, "config twice")
    code, err = run_cli(["pretrain", "--config", cfg, "--resume", "--init", run2], capsys)
    assert code == 2
    assert_one_line_error(err, "--resume", "--init")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--n-boot", "-5"], ["--n-boot"]),
        (["--test-split", "bogus"], ["--test-split", "'bogus'", "test, val"]),
        (["--k", "0"], ["--k"]),
        (["--lora-rank", "-1"], ["--lora-rank"]),
    ],
)
def test_bad_evaluate_flags_are_refused_before_any_work(run2, capsys, flags, names):
    code, err = run_cli(["evaluate", run2, *flags], capsys)
    assert code == 2
    assert_one_line_error(err, *names)


def test_negative_lora_rank_is_one_line(run2, tmp_path):
    with pytest.raises(ConfigError) as exc:
        domainfm.finetune(run2, task="classification", out=tmp_path / "ft", overrides=["finetune.lora_rank=-1"])
    _one_line(exc.value, "finetune.lora_rank")
    assert not list_checkpoints(tmp_path / "ft")


@pytest.mark.parametrize("where", ["txt", "inside_checkpoint"])
def test_embed_outputs_that_are_no_embeddings_file_are_refused(arrays_ckpt, tmp_path, capsys, where):
    ckpt, x = arrays_ckpt
    out = tmp_path / "x.txt" if where == "txt" else ckpt / "e.npz"
    before = digest(ckpt, x)
    code, err = run_cli(["embed", ckpt, "--data", x, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(out))
    assert not out.exists() and digest(ckpt, x) == before


def test_outputs_named_like_a_checkpoint_file_are_refused(tmp_path):
    for name in ("model.safetensors", "card.json"):
        with pytest.raises(DataError) as exc:
            io_safety.check_output(tmp_path / name)
        _one_line(exc.value, name, "checkpoint")


def test_import_weights_refuses_nan_weights_and_patch_depth_zero(tmp_path, capsys):
    src = tmp_path / "vit.safetensors"
    save_file(_timm_state(nan=True), str(src))
    code, err = run_cli(["import-weights", src, "--domain", "synthetic", "--out", tmp_path / "imp"], capsys)
    assert code == 2
    assert_one_line_error(err, str(src), "NaN", "blocks.0.mlp.fc1.weight")
    code, err = run_cli(
        ["import-weights", src, "--domain", "medical", "--out", tmp_path / "imp", "--patch-depth", "0"], capsys
    )
    assert code == 2
    assert_one_line_error(err, "patch")
    assert not (tmp_path / "imp").exists()


def test_model_embed_refuses_raw_integer_tensors_and_nan_input(arrays_ckpt):
    model = domainfm.load(arrays_ckpt[0])
    with pytest.raises(DataError) as exc:
        model.embed(torch.from_numpy(X[:2]))
    _one_line(exc.value, "torch.uint8", "numpy array")
    with pytest.raises(DataError) as exc:
        model.embed(np.full((2, 1, 16, 16), np.nan, np.float32))
    _one_line(exc.value, "NaN")
    assert torch.isfinite(model.embed(X[:2])).all()  # numpy in: the card's preprocessing, finite embeddings


# ---- data held in memory: labels and arrays that are no class ids or images (issue 19 item 8, part 2) ------


@pytest.mark.parametrize(
    "data, labels, names",
    [
        (X, np.array(list("abababababab")), ["labels=", "text", "'a', 'b'", "integer class id"]),
        (X, np.array([0, 1, np.nan] * 4), ["labels=", "NaN", "label 2", "integer class id"]),
        (X, np.zeros((12, 5, 5)), ["labels=", "(12, 5, 5)", "not a mask of the images' 16 x 16"]),
        (np.empty((12, 1, 16, 16), object), [0, 1] * 6, ["data=", "Python objects", "N x C x H x W"]),
        (None, None, ["data=", "None", "N x C x H x W"]),
    ],
)
def test_labels_and_arrays_held_in_memory_are_refused_naming_the_argument(arrays_ckpt, data, labels, names):
    with pytest.raises(DataError) as exc:
        domainfm.embed(arrays_ckpt[0], data, labels=labels)
    _one_line(exc.value, *names)


def test_an_array_read_with_a_small_last_axis_suggests_channels_last():
    for shape, read in [((4, 32, 3), "4 images of 32 x 3"), ((4, 8, 8, 3), "8 channels of 8 x 3")]:
        with pytest.warns(UserWarning, match="channels_last=True") as record:
            ds = adapt(np.random.default_rng(0).uniform(0, 1, shape))
        assert read in str(record[0].message)
        assert ds.profile["channels"] == (1 if len(shape) == 3 else 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read channels last as told: no warning
        assert adapt(np.zeros((4, 8, 8, 3)), channels_last=True).profile["channels"] == 3
    with pytest.raises(DataError) as exc:
        adapt(np.zeros((4, 32, 3)), channels_last=True)
    _one_line(exc.value, "channels_last=True", "(4, 32, 3)", "x[None]")


def test_val_data_of_another_channel_count_is_named_before_training(arrays_ckpt, tmp_path):
    ckpt, _ = arrays_ckpt
    for val, val_labels, names in [
        (np.zeros((4, 3, 16, 16), np.uint8), [0, 1, 0, 1], ["val_data", "expects 1 input channels, got 3"]),
        (X[:4], ["a", "b", "a", "b"], ["val_labels=", "text"]),
        (X[:4], None, ["val_data", "val_labels="]),
    ]:
        with pytest.raises(DataError) as exc:
            domainfm.finetune(
                ckpt,
                task="classification",
                data=X,
                labels=[0, 1] * 6,
                val_data=val,
                val_labels=val_labels,
                out=tmp_path / "ft",
                overrides=["train.steps=1"],
            )
        _one_line(exc.value, *names)
        assert not list_checkpoints(tmp_path / "ft")  # refused before any training


def test_finetuning_on_data_with_a_geometry_records_it_in_the_card(arrays_ckpt, tmp_path):
    class Images(torch.utils.data.Dataset):  # a dataset carrying its pixel spacing (as MONAI data does)
        spacing = [0.8, 0.8]

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.from_numpy(X[i]).float(), i % 2

    assert "geometry" not in domainfm.load(arrays_ckpt[0]).card["preprocessing"]
    ft = domainfm.finetune(
        arrays_ckpt[0], task="classification", data=Images(), out=tmp_path / "ft", overrides=["train.steps=1"]
    )
    geometry = domainfm.load(ft).card["preprocessing"]["geometry"]
    assert geometry["domain"] == "medical" and geometry["spacing"] == [0.8, 0.8]


# ---- files the domains refuse, naming the file (issue 19 item 8, part 2) ---------------------------------


def test_a_5d_nifti_in_a_data_folder_is_named_with_the_dimensionalities_read(tmp_path):
    five = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 1, 2), np.float32), np.eye(4)), str(five))
    with pytest.raises(DataError) as exc:
        LoadScand(spatial_dims=3)({"image": str(five)})
    _one_line(exc.value, str(five), "5D", "(8, 8, 8, 1, 2)", "2D", "3D", "4D")
    unit = tmp_path / "unit.nii.gz"  # trailing unit axes: one volume
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 1, 1), np.float32), np.eye(4)), str(unit))
    assert tuple(read_image(unit).shape) == (8, 8, 8)


def test_mask_ids_outside_the_named_classes_name_the_mask(tmp_path):
    for i in range(3):
        _, mask = write_nifti_pair(tmp_path / "dec", f"case{i}", shape=(12, 12, 8), seed=i)
        m = nib.load(mask)
        data = np.asarray(m.dataobj).copy()
        data[0, 0, 0] = 5
        nib.save(nib.Nifti1Image(data, m.affine), str(mask))
    dl = {
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": f"images/case{i}.nii.gz", "label": f"masks/case{i}.nii.gz"} for i in range(3)],
    }
    (tmp_path / "dec" / "dataset.json").write_text(json.dumps(dl))
    cfg = load_config(
        {
            "domain": "medical",
            "out": str(tmp_path / "run"),
            "finetune": {"task": "segmentation"},
            "data": {"path": str(tmp_path / "dec" / "dataset.json"), "img_size": 16},
        }
    )
    with pytest.raises(DataError) as exc:
        get_domain("medical").dataset(cfg, "train").label_values()
    _one_line(exc.value, "masks/case", "[5]", "dataset.json", "0: background, 1: lesion")
    bands = ["B02", "B03", "B04", "B08"]
    path, labels = write_scene(tmp_path / "s.tif", "sentinel2", bands, size=(32, 32), num_classes=3)
    labels = labels.copy()
    labels[:4, :4] = 7
    mask = write_mask(tmp_path / "s_mask.tif", labels, path)
    ds = RasterChipDataset([Item(path, "sentinel2", mask=mask)], {"sentinel2": bands}, 16)
    ds.mask_classes = ["a", "b", "c"]  # data.options.classes=a,b,c
    with pytest.raises(DataError) as exc:
        ds.label_values()
    _one_line(exc.value, str(mask), "[7]", "data.options.classes", "0: a, 1: b, 2: c")


def test_an_all_nodata_scene_beside_good_ones_is_left_out_once(tmp_path, caplog):
    bands = ["B02", "B03", "B04", "B08"]
    good, _ = write_scene(tmp_path / "good.tif", "sentinel2", bands, size=(32, 32))
    empty, _ = write_scene(tmp_path / "empty.tif", "sentinel2", bands, size=(256, 256), nodata_rect=(0, 256, 0, 256))
    items = [Item(empty, "sentinel2"), Item(good, "sentinel2")]
    with caplog.at_level(logging.WARNING):
        grid = RasterChipDataset(items, {"sentinel2": bands}, 16, sampling="grid")
        assert len(grid) == 4 and all(grid[i]["meta"]["path"] == str(good) for i in range(len(grid)))
        chips = RasterChipDataset(items, {"sentinel2": bands}, 16, chips_per_scene=8)
        assert all(chips[i]["meta"]["path"] == str(good) for i in range(len(chips)))
    left_out = [r for r in caplog.records if "empty.tif holds no valid pixel" in r.getMessage()]
    assert len(left_out) == 2  # once per dataset, naming it
    assert sum("skipped" in r.getMessage() for r in caplog.records) <= 5  # bounded: 1, 2, 4, 8, 16 chips
    for sampling in ("grid", "random"):
        with pytest.raises(DataError) as exc:
            RasterChipDataset([Item(empty, "sentinel2")], {"sentinel2": bands}, 16, sampling=sampling)[0]
        _one_line(exc.value, "empty.tif", "nodata")


def test_a_truncated_dicom_slice_is_named_not_a_mix_of_series(tmp_path):
    vol, _ = make_phantom((12, 12, 8))
    write_dicom_series(tmp_path / "series", vol)
    cut = sorted((tmp_path / "series").iterdir())[3]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "series")
    _one_line(exc.value, str(cut), "truncated")
    assert "mixes" not in str(exc.value)


def test_a_plain_tiff_without_tissue_says_it_is_no_slide(tmp_path, capsys):
    plain = tmp_path / "plain.tif"
    Image.fromarray(np.full((512, 512, 3), 240, np.uint8)).save(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, err = run_cli(
            [
                "pretrain",
                "--domain",
                "pathology",
                "--data",
                plain,
                "--out",
                tmp_path / "run",
                "--steps",
                "1",
                "--mpp",
                "0.5",
            ],
            capsys,
        )
    assert code == 2
    assert_one_line_error(err, str(plain), "not a whole-slide scan", "no tissue", "0.5 µm/px")


def test_an_empty_weights_file_says_it_is_empty(tmp_path, capsys):
    for name, write in [
        ("zero.pth", lambda p: p.write_bytes(b"")),
        ("none.safetensors", lambda p: save_file({}, str(p))),
        ("nested.pth", lambda p: torch.save({"model": {}}, p)),
    ]:
        src = tmp_path / name
        write(src)
        code, err = run_cli(["import-weights", src, "--domain", "synthetic", "--out", tmp_path / "imp"], capsys)
        assert code == 2
        assert_one_line_error(err, str(src), "empty")
    assert not (tmp_path / "imp").exists()
