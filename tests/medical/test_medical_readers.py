"""Readers and bad-input errors of the medical domain, on real NIfTI/DICOM/PNG files written in tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from domainfm.errors import ConfigError, DataError, DomainFMError
from domainfm.medical.io import read_image, read_multisequence, read_nifti, write_nifti
from domainfm.medical.options import MedicalOptions, normalized, resolve_window
from domainfm.medical.synthetic import dicom_affine_ras, make_phantom, write_dicom_series
from domainfm.medical.transforms import LoadScand, domain_errors

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"  # repo root/../shared


def _one_line(exc: BaseException, name: str) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    assert name in msg, f"{name!r} not in {msg!r}"
    return msg


def test_nifti_roundtrip_keeps_affine(tmp_path):
    aff = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.2, 0, 3], [0, 0, 0, 1]])
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    p = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(p))
    img = read_nifti(p)
    assert tuple(img.shape) == (5, 6, 7)
    np.testing.assert_allclose(img.affine.numpy(), aff)
    np.testing.assert_array_equal(img.numpy(), vol)
    out = write_nifti(img.numpy().astype(np.int16), img.affine.numpy(), tmp_path / "b.nii.gz", like=p)
    np.testing.assert_allclose(nib.load(out).affine, aff)


def test_dicom_series_sorted_by_position_with_ras_affine(tmp_path):
    vol, _ = make_phantom((20, 18, 9), seed=1)
    vol = np.clip(np.round(vol), -1024, 3000)
    write_dicom_series(tmp_path / "series", vol, spacing=(0.8, 0.7, 2.5), shuffle=True)
    img = read_image(tmp_path / "series")
    assert tuple(img.shape) == (20, 18, 9)
    np.testing.assert_allclose(img.numpy(), vol, atol=1e-3)  # HU restored by RescaleIntercept, slices ordered
    np.testing.assert_allclose(img.affine.numpy(), dicom_affine_ras((0.8, 0.7, 2.5)), atol=1e-6)


def test_dicom_missing_slice_is_named(tmp_path):
    vol, _ = make_phantom((12, 12, 8))
    write_dicom_series(tmp_path / "gap", vol, skip=[3])
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "gap")
    msg = _one_line(info.value, "gap")
    assert "missing slices" in msg and "5.00 mm" in msg


def test_dicom_duplicated_slice_is_named(tmp_path):
    vol, _ = make_phantom((12, 12, 8))
    write_dicom_series(tmp_path / "dup", vol, duplicate=[5])
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "dup")
    msg = _one_line(info.value, ".dcm")
    assert "duplicated slice" in msg and str(tmp_path / "dup") in msg


def test_truncated_and_corrupt_nifti(tmp_path):
    vol = np.random.rand(16, 16, 16).astype(np.float32)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(good))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    for p in (trunc, junk):
        with pytest.raises(DataError) as info:
            read_image(p)
        assert "corrupt or truncated" in _one_line(info.value, p.name)


def test_nan_voxels_rejected(tmp_path):
    vol = np.zeros((8, 8, 8), np.float32)
    vol[2, 3, 4] = np.nan
    vol[1, 1, 1] = np.inf
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    with pytest.raises(DataError) as info:
        read_image(p)
    assert "2 NaN/inf voxels" in _one_line(info.value, "nan.nii.gz")


def test_2d_vs_3d_mismatch(tmp_path):
    from PIL import Image

    png = tmp_path / "xray.png"
    Image.fromarray((np.random.rand(20, 24) * 255).astype(np.uint8)).save(png)
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(vol))
    with pytest.raises(DataError) as info:
        LoadScand(spatial_dims=3)({"image": str(png)})
    assert "2D data where 3D is configured" in _one_line(info.value, "xray.png")
    with pytest.raises(DataError) as info:
        LoadScand(spatial_dims=2)({"image": str(vol)})
    assert "3D data where 2D is configured" in _one_line(info.value, "vol.nii.gz")
    img = LoadScand(spatial_dims=2)({"image": str(png)})["image"]
    assert tuple(img.shape) == (20, 24)


def test_mask_shape_and_affine_mismatch(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 6), np.float32), aff), str(img))
    bad_shape = tmp_path / "mask_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 5), np.uint8), aff), str(bad_shape))
    bad_aff = tmp_path / "mask_affine.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 6), np.uint8), np.diag([1.0, 1.0, 3.0, 1.0])), str(bad_aff))
    load = LoadScand(("image", "mask"), spatial_dims=3)
    with pytest.raises(DataError) as info:
        load({"image": str(img), "mask": str(bad_shape)})
    assert "mask shape (10, 10, 5) differs" in _one_line(info.value, "mask_shape.nii.gz")
    with pytest.raises(DataError) as info:
        load({"image": str(img), "mask": str(bad_aff)})
    assert "affine differs" in _one_line(info.value, "mask_affine.nii.gz")


def test_empty_folder_and_missing_file(tmp_path):
    from domainfm.medical.sources import discover

    (tmp_path / "empty").mkdir()
    opts = normalized(MedicalOptions(modality="ct"))
    with pytest.raises(DataError) as info:
        discover(tmp_path / "empty", opts)
    assert "empty folder" in _one_line(info.value, "empty")
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "nope.nii.gz")
    _one_line(info.value, "nope.nii.gz")


def test_window_presets_and_unknown_preset():
    assert resolve_window(MedicalOptions(window="soft_tissue")) == (-160.0, 240.0)
    assert resolve_window(MedicalOptions(window="bone")) == (-500.0, 1300.0)
    assert resolve_window(MedicalOptions(window="brain")) == (0.0, 80.0)
    assert resolve_window(MedicalOptions(window_range="-1000,400")) == (-1000.0, 400.0)
    with pytest.raises(ConfigError) as info:
        normalized(MedicalOptions(window="liverish"))
    assert "unknown window preset 'liverish'" in _one_line(info.value, "data.options.window")


def test_multisequence_stacks_channels(tmp_path):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    paths = []
    for k, seq in enumerate(("t1", "t2")):
        p = tmp_path / f"subj_{seq}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((6, 7, 8), k + 1, np.float32), aff), str(p))
        paths.append(p)
    img = read_multisequence(paths)
    assert tuple(img.shape) == (2, 6, 7, 8) and float(img[1].mean()) == 2.0
    other = tmp_path / "subj_flair.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), np.diag([2.0, 1, 1, 1])), str(other))
    with pytest.raises(DataError) as info:
        read_multisequence(paths + [other])
    _one_line(info.value, "subj_flair.nii.gz")


def test_domain_errors_unwraps_monai_runtime_error(tmp_path):
    from monai.transforms import Compose

    p = tmp_path / "x.nii.gz"
    p.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DomainFMError) as info:
        with domain_errors():
            Compose([LoadScand(spatial_dims=3)])({"image": str(p)})
    assert type(info.value) is DataError
    _one_line(info.value, "x.nii.gz")


def test_pneumoniamnist_npz_reader():
    path = SHARED / "medical" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip("pneumoniamnist.npz: ../shared/data absent")
    from domainfm.medical.sources import discover

    items, classes = discover(path, normalized(MedicalOptions(spatial_dims=2, modality="xray")), "test")
    assert len(items) == 468 and classes == ["0", "1"]
    img = read_image(items[0]["image"])
    assert tuple(img.shape) == (28, 28) and img.dtype == torch.float32 and float(img.max()) <= 255


def test_single_dicom_image_2d_and_single_slice_series_in_3d(tmp_path):
    img = np.zeros((30, 20, 1), np.float32)
    img[5:10, 2:4, 0] = 300
    paths = write_dicom_series(tmp_path / "one", img, spacing=(0.5, 0.4, 1.0))
    x = read_image(paths[0], spatial_dims=2)
    assert tuple(x.shape) == (20, 30)  # rows x columns
    assert float(x[2, 5]) == pytest.approx(300.0) and float(x[0, 0]) == pytest.approx(0.0)
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "one", spatial_dims=3)
    assert "single slice" in _one_line(info.value, "one")
