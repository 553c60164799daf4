"""Degenerate inputs refused with the reason, and defaults derived from the data (printed, in the card)."""

from __future__ import annotations

import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import domainfm
from domainfm.train.checkpoint import load_card
from tests.conftest import tiny_config
from tests.robustness.conftest import assert_one_line_error, digest, run_cli

TINY = {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
FAST = {"batch_size": 2, "progress": False, "tensorboard": False, "warmup_steps": 1, "steps": 1}


def _pngs(folder, n=4, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"x{i}.png")
    return folder


def _huge_png_header(path, width=40000, height=40000):
    """A PNG whose header says 40000 x 40000 (the pixel data is a stub: readers must refuse on size)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_png_folder_is_read_in_2d_without_flags(tmp_path, capsys):
    data = _pngs(tmp_path / "xr")
    code, err = run_cli(
        [
            "pretrain",
            "--domain",
            "medical",
            "--data",
            data,
            "--out",
            tmp_path / "run",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--set",
            "data.img_size=32",
            "--set",
            "model.patch_size=8",
            "--set",
            "model.depth=1",
            "--set",
            "train.progress=false",
        ],
        capsys,
    )
    assert code == 0, err
    assert "2D images only" in err
    card = load_card(tmp_path / "run")
    assert card["preprocessing"]["spatial_dims"] == 2 and card["preprocessing"]["decisions"]


@pytest.mark.parametrize("kind", ["tiny", "huge"])
def test_images_too_small_or_too_large_are_refused(tmp_path, capsys, kind):
    data = _pngs(tmp_path / "xr", n=3)
    bad = data / "bad.png"
    if kind == "tiny":
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(bad)
    else:
        _huge_png_header(bad)
    before = digest(data)
    code, err = run_cli(
        [
            "pretrain",
            "--domain",
            "medical",
            "--data",
            data,
            "--out",
            tmp_path / "run",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--set",
            "data.img_size=32",
            "--set",
            "model.patch_size=8",
            "--set",
            "model.depth=1",
            "--set",
            "train.progress=false",
        ],
        capsys,
    )
    assert code == 2
    assert_one_line_error(err, str(bad), "patch" if kind == "tiny" else "guard")
    assert digest(data) == before


def test_contrastive_batch_of_one_is_refused(tmp_path, capsys):
    cfg = tiny_config(
        tmp_path / "run", objective={"name": "contrastive"}, data={"img_size": 32, "options": {"num_samples": 1}}
    )
    with pytest.raises(domainfm.errors.DataError, match="needs >= 2 per batch"):
        domainfm.pretrain(cfg)


def test_dangling_symlinks_are_counted(tmp_path, caplog):
    from domainfm.medical.options import MedicalOptions, normalized
    from domainfm.medical.sources import discover

    data = _pngs(tmp_path / "xr", n=2)
    (data / "gone.png").symlink_to(tmp_path / "missing.png")
    items, _ = discover(data, normalized(MedicalOptions(spatial_dims=2)))
    assert len(items) == 2 and "1 dangling symlink" in caplog.text and "gone.png" in caplog.text


def test_3d_defaults_crop_inferred_mri_and_non_ct_warning_when_ct_is_asked(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):  # MRI-like intensities: no air at -1000
        (tmp_path / "mri").mkdir(exist_ok=True)
        nib.save(
            nib.Nifti1Image(rng.uniform(0, 800, (40, 36, 20)).astype(np.float32), np.eye(4)),
            tmp_path / "mri" / f"s{i}.nii.gz",
        )
    cfg = {
        "domain": "medical",
        "out": str(tmp_path / "run"),
        "data": {"path": str(tmp_path / "mri")},
        "model": TINY,
        "train": FAST,
    }
    domainfm.pretrain(cfg)
    err = capsys.readouterr().err
    pre = load_card(tmp_path / "run")["preprocessing"]
    assert pre["crop_size"] == [40, 40, 24]  # 96^3 capped by the volumes, in patch multiples
    assert pre["modality"] == "mri" and pre["normalization"]["kind"] == "percentile_clip_zscore"  # inferred
    assert any("modality mri" in d for d in pre["decisions"]) and "modality mri" in err
    cfg["data"]["options"] = {"modality": "ct"}  # asked for: the CT window, with a warning
    domainfm.pretrain(cfg, exist_ok="overwrite")
    pre = load_card(tmp_path / "run")["preprocessing"]
    assert pre["normalization"]["kind"] == "ct_window"
    assert (
        any("do not look like CT" in d for d in pre["decisions"]) and "do not look like CT" in capsys.readouterr().err
    )
