"""Small synthetic CT/MRI data written as real files (NIfTI via nibabel, DICOM via pydicom).

Used by the tests, the benchmark and the demo's fallback; handy to try the kit without data.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> paths = write_ct_nifti_folder(folder, n=2, shape=(24, 24, 16))
    >>> len(paths)
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from domainfm.domain import DomainExample


def make_phantom(shape=(32, 32, 24), seed: int = 0, n_blobs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like phantom in HU (air -1000, body ~40, bright 'lesions' ~200) and its lesion mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    body = (grid**2).sum(0) < 0.8**2
    vol = np.full(shape, -1000.0, np.float32)
    vol[body] = 40.0
    mask = np.zeros(shape, np.uint8)
    for _b in range(n_blobs):
        c = rng.uniform(-0.4, 0.4, size=len(shape))
        r = rng.uniform(0.15, 0.3)
        blob = (((grid - c.reshape(-1, *[1] * len(shape))) ** 2).sum(0) < r**2) & body
        vol[blob] = 200.0
        mask[blob] = 1
    vol += rng.normal(0, 10, size=shape).astype(np.float32)
    return vol, mask


def write_nifti_pair(folder: str | Path, name: str, shape=(32, 32, 24), affine=None, seed: int = 0):
    """Write ``images/<name>.nii.gz`` (HU) and ``masks/<name>.nii.gz`` (labels); return both paths."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    vol, mask = make_phantom(shape, seed)
    affine = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else np.asarray(affine, float)
    ip, mp = folder / "images" / f"{name}.nii.gz", folder / "masks" / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(ip))
    nib.save(nib.Nifti1Image(mask, affine), str(mp))
    return ip, mp


def write_ct_nifti_folder(folder: str | Path, n: int = 4, shape=(32, 32, 24), affine=None) -> list[Path]:
    """Write ``n`` phantom CT volumes ``ct_<i>.nii.gz`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else np.asarray(affine, float)
    out = []
    for i in range(n):
        vol, _ = make_phantom(shape, seed=i)
        p = folder / f"ct_{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(p))
        out.append(p)
    return out


def write_dicom_series(
    folder: str | Path,
    volume_hu: np.ndarray,
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    skip: Sequence[int] = (),
    duplicate: Sequence[int] = (),
    shuffle: bool = True,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``volume_hu`` (columns x rows x slices, HU) as an axial CT series, one file per slice.

    Tags: CT Image Storage, Rows/Columns, PixelSpacing, SliceThickness, ImagePositionPatient,
    ImageOrientationPatient (axial), RescaleSlope/Intercept (stored values = HU + 1024). ``skip``
    leaves slices out and ``duplicate`` writes them twice (to test the series checks); files are
    named in shuffled order so readers must sort by position.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    ncol, nrow, nsl = volume_hu.shape
    order = list(range(nsl)) + list(duplicate)
    names = np.random.default_rng(0).permutation(len(order)) if shuffle else np.arange(len(order))
    paths = []
    for j, k in enumerate(order):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{int(names[j]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.PatientID = "PHANTOM"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = nrow, ncol
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * spacing[2])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        stored = np.clip(np.round(volume_hu[:, :, k].T + 1024), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def dicom_affine_ras(spacing=(0.8, 0.8, 2.5), origin=(-100.0, -120.0, 50.0)) -> np.ndarray:
    """The RAS affine of a series written by :func:`write_dicom_series` (axial, LPS -> RAS)."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [-origin[0], -origin[1], origin[2]]
    return aff


def _same_nifti_grid(source: Path, prediction: Path) -> bool:
    a, b = nib.load(str(source)), nib.load(str(prediction))
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-4)


def write_example(folder: str | Path) -> DomainExample:
    """Three oblique phantom CT volumes with lesion masks (NIfTI), a broken ``.nii.gz`` and a tiny
    MAE + UNETR recipe: the medical domain's :class:`~domainfm.domain.DomainExample`."""
    folder = Path(folder)
    oblique = np.array([[0.0, 0.0, -2.0, 40.0], [-1.2, 0.0, 0.0, 10.0], [0.0, 1.4, 0.0, -5.0], [0, 0, 0, 1.0]])
    for i in range(3):
        write_nifti_pair(folder / "data", f"c{i}", shape=(20, 22, 14), affine=oblique, seed=i)
    bad = folder / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    config = {
        "domain": "medical",
        "out": str(folder / "pretrain"),
        "data": {
            "path": str(folder / "data"),
            "img_size": 16,
            "cache": "memory",
            "options": {"target_spacing": [2.0, 2.0, 2.0], "window": "soft_tissue"},
        },
        "model": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
        "train": {"steps": 2, "batch_size": 2, "progress": False, "tensorboard": False, "warmup_steps": 1},
    }
    return DomainExample(
        config=config,
        bad_file=bad,
        task="segmentation",
        finetune_overrides=["train.steps=2", "finetune.head_options={feature_size: 4}"],
        predict_input=folder / "data" / "images" / "c1.nii.gz",
        predict_suffix=".nii.gz",
        same_geometry=_same_nifti_grid,
    )
