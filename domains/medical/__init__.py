"""Medical imaging domain plugin for domainfm: CT/MRI volumes (NIfTI, DICOM series) and X-rays
(DICOM, PNG, MedMNIST ``.npz``), MONAI preprocessing, 3D MAE pretraining, UNETR segmentation and
NIfTI predictions written in the source geometry.

Example:
    >>> from domainfm.medical import MedicalDomain
    >>> MedicalDomain.name
    'medical'
"""

from . import store as _store  # noqa: F401  (registers the medical store preparer)
from .domain import MedicalDomain
from .io import read_dicom_series, read_image, read_nifti, write_nifti
from .options import WINDOW_PRESETS, MedicalOptions

__all__ = [
    "MedicalDomain",
    "MedicalOptions",
    "WINDOW_PRESETS",
    "read_image",
    "read_nifti",
    "read_dicom_series",
    "write_nifti",
]
