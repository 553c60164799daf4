"""``domainfm export`` and predicting with an exported file under faults: a missing or damaged checkpoint, an
unknown format, an output that exists or is the checkpoint's own file, an input the card does not accept, and
the ``export`` extra not installed. Each is one ``error:`` line naming what is wrong; nothing is overwritten."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

import domainfm
from domainfm.demo import example_checkpoint
from tests.conftest import tiny_config
from tests.robustness.conftest import assert_one_line_error, digest, run_cli


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny synthetic encoder checkpoint (seconds)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return domainfm.pretrain(tiny_config(tmp_path_factory.mktemp("enc") / "run", train={"steps": 2}))


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    code, err = run_cli(["export", tmp_path / "nope", "--out", tmp_path / "m.onnx"], capsys)
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "nope"))
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_damaged_checkpoint(encoder, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(encoder, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    code, err = run_cli(["export", broken, "--out", tmp_path / "m.pt2"], capsys)
    assert code == 2
    assert_one_line_error(err, "model.safetensors")
    assert not (tmp_path / "m.pt2").exists()


def test_unknown_format(encoder, tmp_path, capsys):
    code, err = run_cli(["export", encoder, "--format", "tflite", "--out", tmp_path / "m.tflite"], capsys)
    assert code == 2
    assert_one_line_error(err, "tflite", "onnx", "pt2")
    code, err = run_cli(["export", encoder, "--out", tmp_path / "m.bin"], capsys)
    assert code == 2
    assert_one_line_error(err, "m.bin", ".onnx", ".pt2")


def test_an_existing_output_without_exist_ok_is_kept(encoder, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    out.write_bytes(b"someone's file")
    code, err = run_cli(["export", encoder, "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, str(out), "--exist-ok")
    assert out.read_bytes() == b"someone's file"


def test_the_checkpoints_own_file_is_refused(encoder, tmp_path, capsys):
    before = digest(encoder)
    for out, fmt in ((encoder / "model.safetensors", "onnx"), (encoder, "pt2"), (encoder / "model.pt2", "pt2")):
        code, err = run_cli(["export", encoder, "--format", fmt, "--out", out, "--exist-ok"], capsys)
        assert code == 2
        assert_one_line_error(err, str(out), "checkpoint")
    assert digest(encoder) == before


def test_predict_with_an_exported_file_refuses_a_wrong_channel_count(tmp_path, capsys):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        seg, example = example_checkpoint("medical", tmp_path / "med", task="segmentation")
        exported = domainfm.export(seg, tmp_path / "seg.pt2")
    scan = nib.load(example.predict_input)
    two = tmp_path / "two_channels.nii.gz"
    volume = np.asarray(scan.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.stack([volume, volume], -1), scan.affine), two)
    code, err = run_cli(["predict", exported, "--input", two, "--out", tmp_path / "pred.nii.gz"], capsys)
    assert code == 2
    assert_one_line_error(err, "seg.pt2", "1 channel", "has 2")
    assert not (tmp_path / "pred.nii.gz").exists()


@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])
def test_without_the_export_extra_one_line_says_how_to_install_it(encoder, tmp_path, capsys, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    code, err = run_cli(["export", encoder, "--out", tmp_path / "m.onnx"], capsys)
    assert code == 2
    assert_one_line_error(err, package, "pip install 'domainfm[export]'")
    assert not (tmp_path / "m.onnx").exists()
