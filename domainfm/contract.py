"""What the core reads off a dataset beyond ``len`` and ``[i]``, declared once: the optional attributes a
dataset (a domain's, or an object a user hands over) may carry, and the one accessor the core reads them with.

The methods the core calls on a domain plugin are declared in :mod:`domainfm.domain` (``Domain``); the samples
a dataset yields in :mod:`domainfm.data.sample`. Nothing else is looked up on a dataset by name.

Example:
    >>> class Tiles(list):
    ...     classes = ["background", "tumour"]
    >>> dataset_attribute(Tiles([1, 2]), "classes"), dataset_attribute([1, 2], "classes")
    (['background', 'tumour'], None)
    >>> dataset_attribute([1, 2], "colour")
    Traceback (most recent call last):
    ...
    KeyError: "'colour' is not a declared dataset attribute (domainfm.contract.DATASET_ATTRIBUTES)"
"""

from __future__ import annotations

from typing import Any

#: the optional dataset attributes the core reads, and what it reads them for
DATASET_ATTRIBUTES: dict[str, str] = {
    "classes": "class names, in label-id order (classification) or background first (masks)",
    "mask_classes": "class names of segmentation masks, background first",
    "class_names_by_id": "segmentation: {label id: class name} for sparse mask ids",
    "label_values": "method () -> the label ids present, read without loading images (else a pass over samples)",
    "ignore_index": "a label id that marks unlabelled pixels or samples (left out of the classes)",
    "items": "a list of item dicts (or objects) with a 'label': labels read without loading images",
    "files": "a list of (path, label) tuples: labels read without loading images",
    "epoch_batches": "method (epoch, batch_size, seed, rank, world_size) -> lists of indices: the dataset's batches",
    "set_epoch": "method (epoch): per-epoch randomness of the dataset (and of datasets it wraps)",
    "bands": "band names of a multispectral dataset (TorchGeo's 'bands')",
    "band_names": "band names, when a dataset calls them so",
    "wavelengths": "central wavelength (micrometres) per channel",
    "spacing": "voxel or pixel spacing (mm)",
    "mpp": "microns per pixel of a slide or tile dataset",
    "store": "the record of the prepared store the samples are read from (path, sources, software): card data.store",
}


def dataset_attribute(dataset: Any, name: str, default: Any = None) -> Any:
    """The declared optional attribute ``name`` of ``dataset`` (:data:`DATASET_ATTRIBUTES`), ``default`` when
    the dataset does not carry it; a name not declared there is a ``KeyError`` (declare it first)."""
    if name not in DATASET_ATTRIBUTES:
        raise KeyError(f"{name!r} is not a declared dataset attribute (domainfm.contract.DATASET_ATTRIBUTES)")
    return getattr(dataset, name, default)


def dataset_method(dataset: Any, name: str):
    """The declared optional method ``name`` of ``dataset`` when it has a callable one, else ``None``.

    Example:
        >>> dataset_method([1, 2], "set_epoch") is None
        True
    """
    fn = dataset_attribute(dataset, name)
    return fn if callable(fn) else None
