"""Modality and dimensionality inferred from the data, for every input kind the medical domain reads."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from domainfm.errors import DataError
from domainfm.medical.modality import infer_modality, intensity_evidence, scan_evidence
from domainfm.medical.synthetic import make_phantom, write_dicom_series
from domainfm.registry import get_domain
from domainfm.runconfig import load_config

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _mri(shape=(24, 24, 16), seed=0) -> np.ndarray:
    """Non-negative, no air: background 0, tissue around 600, CSF around 1300 (MRI-like)."""
    rng = np.random.default_rng(seed)
    vol, mask = make_phantom(shape, seed)
    out = np.where(vol > -500, rng.normal(600, 80, shape), 0.0)
    out[mask > 0] = 1300
    return out.clip(0).astype(np.float32)


def _pet(shape=(24, 24, 16), seed=0) -> np.ndarray:
    """Non-negative with hot spots: body around 1 (SUV), a few voxels at 15."""
    rng = np.random.default_rng(seed)
    vol, mask = make_phantom(shape, seed)
    out = np.where(vol > -500, rng.gamma(4.0, 0.25, shape), 0.02)
    out[mask > 0] = 15.0
    return out.astype(np.float32)


def _ct(shape=(24, 24, 16), seed=0) -> np.ndarray:
    vol, _ = make_phantom(shape, seed)
    vol[:2] = 900.0  # a slab of bone
    return vol


def _write(folder, name, vol, descrip=None):
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(vol, AFFINE)
    if descrip:
        img.header["descrip"] = descrip
    path = folder / name
    nib.save(img, str(path))
    return path


def _resolved(data, **options):
    cfg = load_config({"domain": "medical", "data": {"path": str(data), "options": options}})
    domain = get_domain("medical")
    opts = domain.options(cfg)
    card_rec = domain.preprocessing(cfg)
    return opts, card_rec


@pytest.mark.parametrize(
    "make, modality, kind",
    [(_ct, "ct", "ct_window"), (_mri, "mri", "percentile_clip_zscore"), (_pet, "pet", "suv_like")],
)
def test_nifti_folder_modality_from_intensities(tmp_path, make, modality, kind):
    for i in range(3):
        _write(tmp_path / "scans", f"case{i}.nii.gz", make(seed=i))
    opts, rec = _resolved(tmp_path / "scans")
    assert opts.modality == modality and opts.spatial_dims == 3
    assert rec["modality"] == modality and rec["normalization"]["kind"] == kind
    assert any(f"modality {modality}" in d for d in rec["decisions"])


def test_mri_is_never_ct_windowed_and_explicit_modality_wins(tmp_path):
    for i in range(2):
        _write(tmp_path / "mri", f"s{i}.nii.gz", _mri(seed=i))
    opts, rec = _resolved(tmp_path / "mri")
    assert rec["normalization"]["kind"] != "ct_window"
    opts, rec = _resolved(tmp_path / "mri", modality="ct")  # the user asks for it: CT window, with a warning
    assert opts.modality == "ct" and rec["normalization"]["kind"] == "ct_window"
    assert any("do not look like CT" in d for d in rec["decisions"])


def test_header_evidence_beats_intensities(tmp_path):
    # MRI-looking values, but a DICOM series tagged CT (stored values + intercept give HU with air)
    series = tmp_path / "series"
    write_dicom_series(series, _ct(shape=(16, 16, 6)))
    assert scan_evidence(str(series), 3).modality == "ct"
    for f in series.iterdir():  # retag as MR: the tag decides
        ds = pydicom.dcmread(str(f))
        ds.Modality = "MR"
        ds.save_as(str(f))
    ev = scan_evidence(str(series), 3)
    assert ev.modality == "mri" and "DICOM Modality" in ev.reason
    # NIfTI description written by dcm2niix for MR (TE=...) on CT-like values
    path = _write(tmp_path / "n", "x.nii.gz", _ct(), descrip=b"TE=30;Time=1200")
    assert scan_evidence(str(path), 3).modality == "mri"


def test_file_name_only_when_intensities_cannot_tell(tmp_path):
    zscored = np.random.default_rng(0).normal(0, 1, (16, 16, 8)).astype(np.float32)
    named = _write(tmp_path, "sub-01_T1w.nii.gz", zscored)
    plain = _write(tmp_path, "scan.nii.gz", zscored)
    assert scan_evidence(str(named), 3).modality == "mri"
    assert scan_evidence(str(plain), 3).modality is None
    # a name never overrides what the intensities say
    ct_named_mri = _write(tmp_path, "brain_flair.nii.gz", _ct())
    assert scan_evidence(str(ct_named_mri), 3).modality == "ct"
    # nothing tells: mri's percentile z-score (never a CT window), said in the decision
    modality, text = infer_modality([{"image": str(plain)}], 3, tmp_path)
    assert modality == "mri" and "nothing tells" in text


def test_mixed_modality_folder_is_refused_naming_files(tmp_path):
    _write(tmp_path / "mixed", "a_ct.nii.gz", _ct())
    _write(tmp_path / "mixed", "b.nii.gz", _mri())
    with pytest.raises(DataError) as err:
        _resolved(tmp_path / "mixed")
    msg = str(err.value)
    assert "mixes modalities" in msg and "a_ct.nii.gz" in msg and "b.nii.gz" in msg and "\n" not in msg
    opts, _ = _resolved(tmp_path / "mixed", modality="mri")  # explicit: read them all the same way
    assert opts.modality == "mri"


def test_intensity_rules():
    rng = np.random.default_rng(1)
    assert intensity_evidence(np.concatenate([np.full(2000, -1000.0), rng.normal(40, 30, 8000)]))[0] == "ct"
    assert intensity_evidence(_mri().ravel())[0] == "mri"
    assert intensity_evidence(_pet().ravel())[0] == "pet"
    assert intensity_evidence(np.zeros(10))[0] is None


# ----------------------------------------------------------------------------------- dimensionality
def test_2d_npz_is_2d_xray_and_3d_npz_is_3d(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x2d.npz", train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8))
    opts, rec = _resolved(tmp_path / "x2d.npz")
    assert (opts.spatial_dims, opts.modality) == (2, "xray") and rec["normalization"]["kind"] == "minmax"
    np.savez(tmp_path / "x3d.npz", train_images=rng.integers(0, 255, (4, 20, 20, 20), dtype=np.uint8))
    opts, rec = _resolved(tmp_path / "x3d.npz")
    assert opts.spatial_dims == 3 and opts.modality == "mri"  # 0..255 without air: not windowed as CT
    assert rec["crop_size"] == [32, 32, 32]  # capped by the arrays' own 20^3 (up to a multiple of the 16 patch)


def test_slice_stack_declared_volume_and_npy(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (12, 24, 24), dtype=np.uint8)
    np.savez(tmp_path / "stack.npz", train_images=stack)
    domain = get_domain("medical")
    cfg = load_config({"domain": "medical", "data": {"path": str(tmp_path / "stack.npz")}})
    assert domain.options(cfg).spatial_dims == 2 and len(domain.items(cfg, "pretrain")[0]) == 12
    cfg = load_config(
        {"domain": "medical", "data": {"path": str(tmp_path / "stack.npz"), "options": {"spatial_dims": 3}}}
    )
    items = domain.items(cfg, "pretrain")[0]
    assert domain.options(cfg).spatial_dims == 3 and len(items) == 1
    ds = domain.dataset(cfg, "pretrain")
    assert ds[0]["image"].ndim == 4  # C x D x H x W: the whole stack is one volume
    np.save(tmp_path / "slices.npy", stack)
    cfg = load_config({"domain": "medical", "data": {"path": str(tmp_path / "slices.npy")}})
    assert domain.options(cfg).spatial_dims == 2 and len(domain.items(cfg, "pretrain")[0]) == 12
    assert len(domain.items(cfg, "val")[0]) >= 1  # no val split in an .npy: a held-out share of it


def test_manifest_and_folder_of_pngs_are_2d_xrays(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "png").mkdir()
    rows = []
    for i in range(4):
        p = tmp_path / "png" / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(p)
        rows.append({"image": str(p), "label": i % 2})
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    for data in (tmp_path / "png", tmp_path / "list.csv"):
        opts, rec = _resolved(data)
        assert (opts.spatial_dims, opts.modality) == (2, "xray"), data
        assert any("2D images only" in d for d in rec["decisions"]) and rec["spatial_dims"] == 2


def test_dicom_series_folder_is_3d_with_modality_from_tag(tmp_path):
    write_dicom_series(tmp_path / "patient" / "s1", _ct(shape=(16, 16, 6)))
    opts, rec = _resolved(tmp_path / "patient")
    assert (opts.spatial_dims, opts.modality) == (3, "ct") and "DICOM Modality" in " ".join(rec["decisions"])


def test_arrays_and_datasets_record_their_dimensionality():
    import torch
    from torch.utils.data import TensorDataset

    from domainfm.data.adapters import adapt

    assert "2D images" in adapt(np.zeros((3, 28, 28), np.float32) + np.arange(28)).profile["decisions"][0]
    vols = adapt(TensorDataset(torch.rand(3, 1, 8, 8, 8)))
    assert vols.profile["spatial_dims"] == 3 and "3D volumes" in vols.profile["decisions"][0]
    assert "decisions" not in adapt(np.random.rand(3, 8, 8, 8).astype(np.float32), spatial_dims=3).profile


def test_cli_with_only_domain_and_data_gets_2d_xrays_from_an_npz_and_mri_from_mri_volumes(tmp_path, capsys):
    """The two cases of the issue, as the researcher typed them (plus a short run)."""
    import json

    from domainfm.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=rng.integers(0, 255, (16, 28, 28), dtype=np.uint8))
    for i in range(2):
        _write(tmp_path / "mri", f"s{i}.nii.gz", _mri(seed=i))
    quick = ["--steps", "2", "--set", "train.batch_size=4", "--set", "train.progress=false"]
    runs = {"npz": (tmp_path / "pneumoniamnist.npz", ["--objective", "dino"]), "mri": (tmp_path / "mri", [])}
    for name, (data, extra) in runs.items():
        argv = ["pretrain", "--domain", "medical", "--data", str(data), "--out", str(tmp_path / name), *extra, *quick]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert not exc.value.code, capsys.readouterr().err
    npz_card = json.loads(next((tmp_path / "npz").rglob("card.json")).read_text())
    mri_card = json.loads(next((tmp_path / "mri").rglob("card.json")).read_text())
    assert (npz_card["preprocessing"]["spatial_dims"], npz_card["preprocessing"]["modality"]) == (2, "xray")
    assert (mri_card["preprocessing"]["spatial_dims"], mri_card["preprocessing"]["modality"]) == (3, "mri")
    assert mri_card["preprocessing"]["normalization"]["kind"] == "percentile_clip_zscore"
    assert any("modality mri" in d for d in mri_card["preprocessing"]["decisions"])
