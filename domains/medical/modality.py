"""Which modality a set of scans is, from what the files say and what their intensities look like.

The evidence for one scan, strongest first:

1. **The header**: a DICOM ``Modality`` tag (``CT``, ``MR``, ``PT``/``NM``, ``CR``/``DX``/``MG``); a NIfTI
   ``descrip``/``intent_name`` naming the modality (``dcm2niix`` writes ``TE=...`` for MR) or a
   ``cal_min`` below -500 (Hounsfield units).
2. **The intensities** (a strided sample of at most about a million voxels): CT has air near -1000 HU
   (1st percentile below -500); MRI is non-negative with no fixed scale; PET is non-negative with a long
   tail (the 99.9th percentile of the foreground at least :data:`PET_TAIL` times its median uptake).
3. **The file name** (``ct``, ``t1``/``t2``/``flair``/``mr``, ``pet``/``suv``, ``cxr``/``xray``), only
   when the intensities cannot tell (values already normalised, with negatives but no air).

2D images (PNG/JPEG, single-frame DICOM without a tag, 2D arrays in an ``.npz``) are X-rays. A dataset
whose sampled scans disagree is refused (:class:`~domainfm.errors.DataError` listing which files look like
what); one where nothing tells falls back to ``mri``'s percentile z-score, which assumes no fixed scale and
so never clips, and says so.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ct = np.concatenate([np.full(5000, -1000.0), rng.normal(40, 20, 20000), np.full(500, 700.0)])
    >>> intensity_evidence(ct)[0]
    'ct'
    >>> mri = np.concatenate([np.zeros(5000), rng.normal(600, 120, 20000).clip(0)])
    >>> intensity_evidence(mri)[0]
    'mri'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from domainfm.errors import DataError

from .io import IMAGE_2D_SUFFIXES, dicom_files, is_dicom_file, is_nifti, read_npz_item

#: DICOM ``Modality`` codes and the preprocessing they get
DICOM_MODALITIES = {"CT": "ct", "MR": "mri", "PT": "pet", "NM": "pet", "CR": "xray", "DX": "xray", "MG": "xray"}
#: what each modality's preprocessing does (see :func:`domainfm.medical.transforms.intensity_transforms`)
RECIPES = {
    "ct": "HU window to [0, 1]",
    "mri": "percentile clip + z-score",
    "pet": "SUV-like: divided by the mean foreground uptake",
    "xray": "min-max to [0, 1]",
}
#: PET when the 99.9th percentile of the foreground is at least this many times its median
PET_TAIL = 6.0
#: scans read per dataset (spread evenly over it)
SAMPLE_SCANS = 8
#: voxels read per scan at most (a strided sample)
SAMPLE_VOXELS = 1_000_000

_NAME_HINTS = (
    ("pet", re.compile(r"(^|[^a-z])(pet|suv|fdg|pt)([^a-z]|$)")),
    ("mri", re.compile(r"(^|[^a-z])(mri?|t1w?|t2w?|flair|dwi|adc|t1ce|t1gd|pd)([^a-z]|$)")),
    ("ct", re.compile(r"(^|[^a-z])(ct|cect|ncct)([^a-z]|$)")),
    ("xray", re.compile(r"(^|[^a-z])(cxr|xray|x-ray|radiograph)([^a-z]|$)")),
)


@dataclass(frozen=True)
class Evidence:
    """What one scan says about its modality: ``modality`` is ``None`` when it cannot tell.

    Example:
        >>> Evidence("mri", "DICOM Modality MR", "s1").text()
        's1 (DICOM Modality MR)'
    """

    modality: str | None
    reason: str
    file: str

    def text(self) -> str:
        return f"{Path(self.file).name} ({self.reason})"


def intensity_evidence(values: np.ndarray) -> tuple[str | None, str]:
    """``(modality, reason)`` from a sample of voxel values (``None`` when they cannot tell).

    Example:
        >>> intensity_evidence(np.array([-1.0, 0.0, 1.0] * 100))
        (None, 'negative values without air near -1000 HU (already normalised?)')
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 64:
        return None, "too few voxels to tell"
    p1, p995, top = np.percentile(v, [1, 99.5, 99.9])
    if p1 < -500:
        bone = " and bone above +300" if p995 > 300 else ""
        return "ct", f"air near -1000 HU{bone}"
    scale = max(abs(float(top)), 1e-6)
    if np.percentile(v, 0.5) < -1e-3 * scale:
        return None, "negative values without air near -1000 HU (already normalised?)"
    fg = v[v > 0.05 * scale]
    if fg.size < 32:
        return None, "almost no foreground"
    tail = float(np.percentile(fg, 99.9) / max(float(np.median(fg)), 1e-12))
    if tail >= PET_TAIL:
        return "pet", f"non-negative with a long tail: 99.9th percentile {tail:.0f}x the median uptake"
    return "mri", f"non-negative, no air, 99.9th percentile {tail:.1f}x the median"


def name_evidence(path: str) -> str | None:
    """The modality a file name hints at (a last resort).

    Example:
        >>> name_evidence("sub-01_T1w.nii.gz"), name_evidence("patient3_pet.nii"), name_evidence("scan.nii")
        ('mri', 'pet', None)
    """
    name = Path(str(path).split("::")[0]).name.lower()
    for modality, pattern in _NAME_HINTS:
        if pattern.search(name):
            return modality
    return None


def _dicom_tag(path: Path) -> str | None:
    first = path if path.is_file() else next(iter(dicom_files(path)), None)
    if first is None:
        return None
    try:
        ds = pydicom.dcmread(str(first), stop_before_pixels=True)
    except Exception:  # unreadable files are reported by the reader, with their name
        return None
    return DICOM_MODALITIES.get(str(getattr(ds, "Modality", "")).upper())


def _nifti_header(img) -> tuple[str | None, str]:
    hdr = img.header
    text = " ".join(bytes(hdr[k]).decode("latin-1", "ignore") for k in ("descrip", "intent_name")).strip()
    if re.search(r"\bTE=", text):
        return "mri", f"NIfTI description {text[:40]!r}"
    hint = name_evidence(text.lower().replace(" ", "_"))
    if hint:
        return hint, f"NIfTI description {text[:40]!r}"
    if float(hdr["cal_min"]) < -500:
        return "ct", f"NIfTI cal_min {float(hdr['cal_min']):.0f}"
    return None, ""


def _nifti_sample(img) -> np.ndarray:
    shape = img.shape[:3]
    step = max(1, math.ceil((math.prod(shape) / SAMPLE_VOXELS) ** (1 / 3)))
    index = tuple(slice(None, None, step) for _ in shape) + (0,) * (len(img.shape) - len(shape))
    return np.asarray(img.dataobj[index], dtype=np.float32)


def _voxels(src: str) -> np.ndarray | None:
    """A strided sample of the scan's voxels (``None`` when it cannot be read here)."""
    if "::" in src and src.split("::")[0].endswith((".npz", ".npy")):
        file, rest = src.split("::", 1)
        split, idx = rest.rstrip("]").split("[")
        return np.asarray(read_npz_item(file, split, idx).as_tensor())
    try:
        return _nifti_sample(nib.load(src))
    except Exception:  # unreadable files are reported by the reader, with their name
        return None


def scan_evidence(src: Any, spatial_dims: int) -> Evidence:
    """The modality evidence of one scan (a path, a DICOM folder, ``file.npz::split[i]``, or a list of
    sequences, of which the first speaks)."""
    src = str(src[0] if isinstance(src, (list, tuple)) else src)
    path = Path(src)
    if "::" not in src and (path.is_dir() or is_dicom_file(path)):
        tag = _dicom_tag(path)
        if tag:
            return Evidence(tag, f"DICOM Modality {tag}", src)
    if spatial_dims == 2:
        return Evidence("xray", "2D grey-level images, not Hounsfield units", src)
    if "::" not in src and is_nifti(path):
        try:
            img = nib.load(src)
            modality, reason = _nifti_header(img)
        except Exception:
            modality, reason = None, ""
        if modality:
            return Evidence(modality, reason, src)
    values = _voxels(src) if "::" in src or is_nifti(path) else None
    modality, reason = intensity_evidence(values) if values is not None else (None, "no voxels read")
    if modality is None and name_evidence(src):
        return Evidence(name_evidence(src), f"file name; intensities: {reason}", src)
    return Evidence(modality, reason, src)


def sample_items(items: list[dict], key: str = "image", n: int = SAMPLE_SCANS) -> list[Any]:
    """The sources of at most ``n`` items spread evenly over ``items``.

    Example:
        >>> sample_items([{"image": str(i)} for i in range(10)], n=3)
        ['0', '4', '9']
    """
    if not items:
        return []
    k = min(n, len(items))
    picks = sorted({round(i * (len(items) - 1) / max(k - 1, 1)) for i in range(k)})
    return [items[i].get(key, items[i].get("image")) for i in picks]


def infer_modality(items: list[dict], spatial_dims: int, where: str | Path, key: str = "image") -> tuple[str, str]:
    """``(modality, decision text)`` for a dataset from a sample of its scans.

    Raises :class:`DataError` naming ``where`` when the sampled scans look like different modalities.

    Example:
        >>> infer_modality([{"image": "a.png"}], 2, "xrays")[0]
        'xray'
    """
    evidence = [scan_evidence(src, spatial_dims) for src in sample_items(items, key)]
    found: dict[str, list[Evidence]] = {}
    for ev in evidence:
        if ev.modality:
            found.setdefault(ev.modality, []).append(ev)
    if len(found) > 1:
        listing = "; ".join(f"{m}: " + ", ".join(e.text() for e in evs[:3]) for m, evs in sorted(found.items()))
        raise DataError(
            where,
            f"mixes modalities ({listing}); keep one modality per dataset, or set data.options.modality "
            "to read them all the same way",
        )
    if not found:
        why = evidence[0].reason if evidence else "no scans"
        return "mri", (
            f"{where}: modality mri ({RECIPES['mri']}, no fixed scale assumed): nothing tells the "
            f"modality ({why}); set data.options.modality to choose"
        )
    modality, evs = next(iter(found.items()))
    return modality, (
        f"{where}: modality {modality}, {RECIPES[modality]} ({evs[0].reason}; {len(evs)} of {len(evidence)} "
        "sampled scans; set data.options.modality to choose)"
    )


def is_2d_only(sources: list[Any]) -> bool:
    """True when the scan sources are 2D images only (PNG/JPEG/BMP/TIFF files, single DICOM files).

    Example:
        >>> is_2d_only(["a.png", "b.jpg"]), is_2d_only(["a.png", "v.nii.gz"]), is_2d_only([])
        (True, False, False)
    """
    flat = [str(s[0] if isinstance(s, (list, tuple)) else s) for s in sources]
    if not flat:
        return False
    for s in flat:
        p = Path(s)
        if "::" in s or is_nifti(p) or p.is_dir():
            return False
        if not (p.suffix.lower() in IMAGE_2D_SUFFIXES or is_dicom_file(p)):
            return False
    return True
