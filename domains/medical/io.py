"""Readers and writers for medical images: NIfTI, DICOM series, single DICOM/PNG, MedMNIST ``.npz``.

Every reader returns a :class:`monai.data.MetaTensor` whose ``affine`` maps voxel indices to RAS
millimetres (NIfTI convention, what MONAI's spatial transforms expect) and whose ``meta`` carries
``filename_or_obj``, ``original_affine``, ``spatial_shape`` and ``original_channel_dim``, so
MONAI's ``EnsureChannelFirstd``/``Orientationd``/``Spacingd`` and their inverses work on it.
Unreadable or inconsistent files raise :class:`~domainfm.errors.DataError` naming the file.

Example:
    >>> import numpy as np, nibabel as nib, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([2., 2., 3., 1.])), p)
    >>> read_image(p).shape
    torch.Size([4, 5, 6])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError

from domainfm.errors import DataError
from domainfm.io_safety import atomic_output

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_IMAGE_PIXELS = 100_000_000  # 2D images above this are refused (tile them); DOMAINFM_MAX_IMAGE_PIXELS raises it
MIN_IMAGE_SIDE = 16  # 2D images with a smaller side are mostly padding after resizing to the model


def is_nifti(path: str | Path) -> bool:
    """True for ``.nii`` / ``.nii.gz`` names."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: str | Path) -> bool:
    """True for a file that starts like DICOM (``DICM`` preamble) or has a DICOM suffix."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:  # other known suffixes are never DICOM
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (sorted by name)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


def _meta_tensor(array: np.ndarray, affine: np.ndarray, path: str, channel_dim: Any = "no_channel", **extra):
    from monai.data import MetaTensor  # heavy import (MONAI), loaded on first use

    affine = np.asarray(affine, dtype=np.float64)
    spatial = (
        array.shape
        if channel_dim == "no_channel"
        else tuple(s for i, s in enumerate(array.shape) if i != (channel_dim % array.ndim))
    )
    meta = {
        "filename_or_obj": str(path),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(spatial),
        "original_channel_dim": channel_dim,
        "space": "RAS",
        **extra,
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.from_numpy(affine), meta=meta)


def _check_finite(array: np.ndarray, path) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataError(
                path, f"{int(bad.sum())} NaN/inf voxels out of {array.size}; fix or mask them before training"
            )


# ---------------------------------------------------------------------------------------------- NIfTI
def read_nifti(path: str | Path, check_finite: bool = True):
    """Read a NIfTI file with nibabel as a float32 MetaTensor (RAS affine from the header).

    A 4D file (``X x Y x Z x C``) keeps channels last (``original_channel_dim=-1``).

    Example:
        >>> import tempfile
        >>> import nibabel as nib
        >>> path = Path(tempfile.mkdtemp()) / "ct.nii.gz"
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.5, 2.5, 1.0])), str(path))
        >>> img = read_nifti(path)
        >>> tuple(img.shape), img.affine.diagonal().tolist()
        ((4, 5, 6), [0.5, 0.5, 2.5, 1.0])
    """

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel/gzip/zlib errors on truncated or corrupt files
        raise DataError(
            path,
            f"cannot read NIfTI ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}); "
            "the file is corrupt or truncated",
        ) from None
    data = np.asarray(data, dtype=np.float32)
    if check_finite:
        _check_finite(data, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    channel_dim: Any = "no_channel"
    if data.ndim == 4:
        if data.shape[3] == 1:
            data = data[..., 0]
        else:
            channel_dim = -1
    elif data.ndim > 4 and all(n == 1 for n in data.shape[3:]):  # trailing unit axes: one 3D volume
        data = data.reshape(data.shape[:3])
    elif data.ndim not in (2, 3):
        raise DataError(
            path,
            f"is a {data.ndim}D NIfTI of shape {tuple(data.shape)}; NIfTI files are read as 2D (X x Y), 3D "
            "(X x Y x Z) or 4D (X x Y x Z x C, channels last): save it as one of those (e.g. one file per "
            "volume) or leave it out of the data folder",
        )
    return _meta_tensor(data, affine, str(path), channel_dim, original_file_affine=affine.copy())


# ---------------------------------------------------------------------------------------------- DICOM
def _ds_float(ds, name, path, default=None) -> Any:
    value = getattr(ds, name, None)
    if value is None:
        if default is not None:
            return default
        raise DataError(path, f"DICOM tag {name} is missing")
    return value


def _dicom_pixels(ds, path) -> np.ndarray:
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise DataError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr + arr.min()
    return arr


def _series_slices(folder: Path) -> list[tuple[Path, Any]]:
    """The ``(file, dataset)`` of each slice of the one series in ``folder`` (refusing mixes and single slices)."""
    if not folder.is_dir():
        raise DataError(folder, "DICOM series folder does not exist")
    files = dicom_files(folder)
    if not files:
        raise DataError(folder, "empty folder: no DICOM files found")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise DataError(f, f"cannot read DICOM ({type(exc).__name__}: {exc})") from None
        if "PixelData" not in ds:  # cut short before its pixels (they come last)
            raise DataError(f, "is truncated or incomplete: this DICOM slice has no pixel data; replace or remove it")
        slices.append((f, ds))
    series: dict[str, Path] = {}
    for f, ds in slices:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), f)
    if len(series) > 1:
        firsts = ", ".join(p.name for p in series.values())
        raise DataError(
            folder, f"folder mixes {len(series)} DICOM series (first slices: {firsts}); put one series per folder"
        )
    if len(slices) == 1:
        f, ds = slices[0]
        if _dicom_pixels(ds, f).ndim == 3:  # multi-frame
            raise DataError(f, "multi-frame DICOM volumes are not supported; export one file per slice")
        raise DataError(folder, "DICOM series has a single slice; configure spatial_dims: 2 to read it as a 2D image")
    return slices


def _ordered_slices(slices: list[tuple[Path, Any]], iop: np.ndarray) -> list[tuple]:
    """``(position along the normal, ImagePositionPatient, file, dataset)`` per slice, sorted by position;
    slices of another orientation or size are refused."""
    normal = np.cross(iop[:3], iop[3:])
    rows, cols = int(slices[0][1].Rows), int(slices[0][1].Columns)
    entries = []
    for f, ds in slices:
        ipp = np.asarray([float(v) for v in _ds_float(ds, "ImagePositionPatient", f)], dtype=np.float64)
        o = np.asarray([float(v) for v in _ds_float(ds, "ImageOrientationPatient", f)], dtype=np.float64)
        if not np.allclose(o, iop, atol=1e-3):
            raise DataError(f, "ImageOrientationPatient differs from the other slices of the series")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(f, f"slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {rows}x{cols}")
        entries.append((float(ipp @ normal), ipp, f, ds))
    entries.sort(key=lambda e: e[0])
    return entries


def _check_slice_steps(entries: list[tuple], folder: Path, thickness: float, tolerance: float) -> None:
    """Duplicated positions and gaps over ``1 + tolerance`` slice steps (missing slices) name their files."""
    pos = np.asarray([e[0] for e in entries])
    steps = np.diff(pos)
    for i, step in enumerate(steps):
        if abs(step) < 1e-3 * max(1.0, thickness):
            raise DataError(
                entries[i + 1][2],
                f"duplicated slice: same ImagePositionPatient as {entries[i][2].name} "
                f"(position {pos[i]:.3f} mm along the slice normal)",
            )
    step = float(np.min(steps))
    gaps = np.nonzero(steps > step * (1.0 + tolerance))[0]
    if len(gaps):
        i = int(gaps[0])
        n_missing = int(round(steps[i] / step)) - 1
        raise DataError(
            folder,
            f"DICOM series has missing slices: a gap of {steps[i]:.2f} mm between "
            f"{entries[i][2].name} and {entries[i + 1][2].name} (slice step {step:.2f} mm, "
            f"about {max(n_missing, 1)} slice(s) missing)",
        )


def read_dicom_series(folder: str | Path, check_finite: bool = True, tolerance: float = 0.2):
    """Read a folder holding ONE DICOM series as a 3D float32 MetaTensor (values in HU for CT).

    Slices are ordered by ``ImagePositionPatient`` projected on the slice normal (from
    ``ImageOrientationPatient``). Duplicated positions and gaps larger than ``1 + tolerance`` times
    the typical slice step (missing slices) raise :class:`DataError` naming the files. The affine is
    converted from DICOM's LPS to RAS.

    Example:
        >>> import tempfile
        >>> from domainfm.medical.synthetic import write_dicom_series
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_dicom_series(folder, np.zeros((6, 5, 4), np.float32), spacing=(0.8, 0.8, 2.5))
        >>> vol = read_dicom_series(folder)
        >>> tuple(vol.shape)  # (columns, rows, slices)
        (6, 5, 4)
    """

    folder = Path(folder)
    slices = _series_slices(folder)
    f0, ds0 = slices[0]
    iop = np.asarray([float(v) for v in _ds_float(ds0, "ImageOrientationPatient", f0)], dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    entries = _ordered_slices(slices, iop)
    _check_slice_steps(entries, folder, float(getattr(ds0, "SliceThickness", 0) or 0), tolerance)
    px = [float(v) for v in _ds_float(ds0, "PixelSpacing", f0)]  # [row spacing, column spacing]
    vol = np.stack([_dicom_pixels(e[3], e[2]).T for e in entries], axis=-1)  # (cols, rows, slices)
    if check_finite:
        _check_finite(vol, folder)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * px[1]
    lps[:3, 1] = col_cos * px[0]
    lps[:3, 2] = (entries[-1][1] - entries[0][1]) / (len(entries) - 1)
    lps[:3, 3] = entries[0][1]
    affine = LPS_TO_RAS @ lps
    return _meta_tensor(
        vol,
        affine,
        str(folder),
        "no_channel",
        original_file_affine=affine.copy(),
        modality=str(getattr(ds0, "Modality", "")),
    )


def read_dicom_2d(path: str | Path, check_finite: bool = True):
    """Read one single-frame DICOM image (e.g. a radiograph) as a 2D float32 MetaTensor (rows x columns)."""

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise DataError(path, f"cannot read DICOM ({type(exc).__name__}: {exc})") from None
    arr = _dicom_pixels(ds, path)
    if arr.ndim != 2:
        raise DataError(path, f"expected a single-frame grayscale DICOM image, got pixel array shape {arr.shape}")
    if check_finite:
        _check_finite(arr, path)
    px = [
        float(v) for v in (getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None) or [1.0, 1.0])
    ]
    affine = np.diag([px[0], px[1], 1.0, 1.0])
    return _meta_tensor(arr, affine, str(path), "no_channel")


# ---------------------------------------------------------------------------------------------- 2D images
def read_image_2d(path: str | Path):
    """Read a PNG/JPEG/TIFF image as a 2D float32 MetaTensor (RGB is converted to grayscale)."""

    path = Path(path)
    guard = int(os.environ.get("DOMAINFM_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    try:
        with Image.open(path) as im:
            if im.width * im.height > guard:
                raise DataError(
                    path,
                    f"image is {im.width}x{im.height} px, over the size guard of {guard:,} px: "
                    "tile it, or raise the guard on purpose (DOMAINFM_MAX_IMAGE_PIXELS)",
                )
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"image over PIL's size guard ({exc}); tile it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise DataError(path, f"expected a grayscale image, got shape {arr.shape}")
    if min(arr.shape) < MIN_IMAGE_SIDE:
        raise DataError(
            path,
            f"image is {arr.shape[1]}x{arr.shape[0]} px, smaller than one {MIN_IMAGE_SIDE}-px patch: "
            "the model would train on padding; remove it from the data",
        )
    return _meta_tensor(arr, np.eye(4), str(path), "no_channel")


# ---------------------------------------------------------------------------------------------- MedMNIST npz
class NpzStore:
    """Lazy, shared access to a MedMNIST-style ``.npz`` (``{split}_images``, ``{split}_labels``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pneumoniamnist.npz"
        >>> np.savez(path, train_images=np.zeros((5, 28, 28), np.uint8), train_labels=np.zeros((5, 1), np.uint8))
        >>> store = NpzStore(path)
        >>> store.images("train").shape, store.splits()
        ((5, 28, 28), ['train'])
    """

    _cache: dict[str, dict[str, np.ndarray]] = {}

    def __init__(self, path: str | Path):
        self.path = Path(path)
        key = str(self.path.resolve())
        if key not in self._cache:
            try:
                if self.path.suffix.lower() == ".npy":  # one array of images: the train split
                    self._cache[key] = {"train_images": np.load(self.path, mmap_mode="r", allow_pickle=False)}
                else:
                    with np.load(self.path, allow_pickle=False) as z:
                        self._cache[key] = {k: z[k] for k in z.files}
            except Exception as exc:
                raise DataError(self.path, f"cannot read .npz ({type(exc).__name__}: {exc})") from None
        self.arrays = self._cache[key]

    def splits(self) -> list[str]:
        return [k[: -len("_images")] for k in self.arrays if k.endswith("_images")]

    def images(self, split: str) -> np.ndarray:
        key = f"{split}_images"
        if key not in self.arrays:
            raise DataError(self.path, f"no array {key!r} (has {', '.join(sorted(self.arrays))})")
        return self.arrays[key]

    def labels(self, split: str) -> np.ndarray | None:
        lab = self.arrays.get(f"{split}_labels")
        return None if lab is None else np.asarray(lab).reshape(len(lab), -1)


def read_npz_item(path: str | Path, split: str, index: int | str):
    """One image of a MedMNIST ``.npz`` (or an ``.npy``) as a MetaTensor (2D ``H x W``, 3D ``D x H x W`` or
    RGB channels last); ``index`` ``":"`` reads a stack of ``N x H x W`` slices as one volume."""
    images = NpzStore(path).images(split)
    whole = str(index) == ":"
    arr = np.asarray(images if whole else images[int(index)], dtype=np.float32)
    channel_dim: Any = "no_channel"
    if not whole and arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        channel_dim = -1  # RGB 2D image
    return _meta_tensor(arr, np.eye(4), f"{path}::{split}[{index}]", channel_dim)


# ---------------------------------------------------------------------------------------------- dispatch
def read_image(path: str | Path, check_finite: bool = True, spatial_dims: int | None = None):
    """Read any supported scan by its path: NIfTI, DICOM series folder, DICOM file, PNG/JPEG/TIFF,
    or ``file.npz::split[index]`` (MedMNIST).

    Example:
        >>> import tempfile
        >>> import nibabel as nib
        >>> folder = Path(tempfile.mkdtemp())
        >>> affine = np.diag([2.0, 2.0, 3.0, 1.0])
        >>> nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), affine), str(folder / "scan.nii.gz"))
        >>> read_image(folder / "scan.nii.gz").affine.diagonal().tolist()
        [2.0, 2.0, 3.0, 1.0]
        >>> np.savez(folder / "x.npz", test_images=np.zeros((3, 28, 28), np.uint8))
        >>> tuple(read_image(f"{folder / 'x.npz'}::test[2]").shape)            # one image of a MedMNIST split
        (28, 28)
    """
    text = str(path)
    if "::" in text and text.split("::")[0].endswith((".npz", ".npy")):
        file, rest = text.split("::", 1)
        split, idx = rest.rstrip("]").split("[")
        return read_npz_item(file, split, idx)
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_dir():
        files = dicom_files(path)
        if not files:
            raise DataError(path, "empty folder: no DICOM files (one series per folder) found")
        if len(files) == 1 and spatial_dims == 2:
            return read_dicom_2d(files[0], check_finite)
        return read_dicom_series(path, check_finite)
    if is_nifti(path):
        return read_nifti(path, check_finite)
    if path.suffix.lower() in IMAGE_2D_SUFFIXES:
        return read_image_2d(path)
    if is_dicom_file(path):
        return read_dicom_2d(path, check_finite)
    raise DataError(path, "unsupported file type (expected .nii/.nii.gz, a DICOM series folder, .dcm, .png/.jpg, .npz)")


def read_multisequence(paths: Sequence[str | Path], check_finite: bool = True, spatial_dims: int | None = None):
    """Read several co-registered scans (MRI sequences) and stack them as channels (``C x ...``).

    All sequences must share the spatial shape and the affine; otherwise :class:`DataError`
    names the file that differs.
    """
    if len(paths) == 1:
        return read_image(paths[0], check_finite, spatial_dims)
    from monai.data import MetaTensor  # heavy import (MONAI), loaded on first use

    images = [read_image(p, check_finite, spatial_dims) for p in paths]
    ref = images[0]
    for p, img in zip(paths[1:], images[1:]):
        if img.meta.get("original_channel_dim") != "no_channel":
            raise DataError(p, "each sequence of a multi-sequence scan must be single-channel")
        if tuple(img.shape) != tuple(ref.shape):
            raise DataError(p, f"sequence shape {tuple(img.shape)} differs from {paths[0]} {tuple(ref.shape)}")
        if not np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-3):
            raise DataError(p, f"sequence affine differs from {paths[0]}; resample the sequences to one grid first")
    stacked = torch.stack([img.as_tensor() for img in images], dim=0)
    meta = {k: v for k, v in ref.meta.items() if k != "affine"}
    meta["original_channel_dim"] = 0
    meta["filename_or_obj"] = str(paths[0])
    meta["sequences"] = [str(p) for p in paths]
    return MetaTensor(stacked, affine=ref.affine.clone(), meta=meta)


def check_mask_geometry(image, mask, image_path, mask_path) -> None:
    """Raise :class:`DataError` if the mask is not on the image's grid (shape and affine)."""
    ishape = (
        tuple(image.shape)
        if image.meta.get("original_channel_dim") == "no_channel"
        else tuple(np.asarray(image.meta["spatial_shape"]).tolist())
    )
    if tuple(mask.shape) != ishape:
        raise DataError(mask_path, f"mask shape {tuple(mask.shape)} differs from image {image_path} shape {ishape}")
    if not np.allclose(np.asarray(mask.affine), np.asarray(image.affine), atol=1e-3):
        raise DataError(
            mask_path, f"mask affine differs from image {image_path} affine; resample the mask onto the image grid"
        )


# ---------------------------------------------------------------------------------------------- writers
def write_nifti(
    array: np.ndarray | torch.Tensor, affine: np.ndarray, path: str | Path, like: str | Path | None = None, dtype=None
) -> Path:
    """Write ``array`` (spatial, or spatial x C) as NIfTI with ``affine``; copy units/qform codes from ``like``.

    Example:
        >>> import tempfile
        >>> import nibabel as nib
        >>> out = write_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), Path(tempfile.mkdtemp()) / "pred.nii.gz")
        >>> nib.load(out).shape, int(nib.load(out).get_fdata().sum())
        ((4, 4, 4), 64)
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    affine = np.asarray(affine, dtype=np.float64)
    header = None
    if like is not None and is_nifti(like) and Path(like).is_file():
        src = nib.load(str(like))
        header = src.header.copy()
        header.set_data_dtype(arr.dtype)
    img = nib.Nifti1Image(arr, affine, header=header)
    if header is not None:
        img.set_qform(affine, int(src.header["qform_code"]) or 1)
        img.set_sform(affine, int(src.header["sform_code"]) or 1)
    else:
        img.set_qform(affine, 1)
        img.set_sform(affine, 1)
    name = Path(str(path) if is_nifti(path) else str(path) + ".nii.gz")
    # temp name + rename: an interrupted write never leaves a valid-looking file; the source is never replaced
    with atomic_output(name, [like]) as tmp:
        nib.save(img, str(tmp))
    return name


def scan_id(path: str | Path) -> str:
    """A short id for a scan path (file name without ``.nii.gz``/``.nii``/``.dcm``)."""
    name = os.path.basename(str(path).rstrip("/"))
    for suf in (".nii.gz", ".nii", ".dcm", ".png"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name
