"""Data in the form a researcher holds it, turned into the Sample schema (:mod:`domainfm.data.sample`).

:func:`adapt` takes a numpy array or torch tensor (``N x C x H x W``, ``N x H x W``, ``N x C x D x H x W``;
labels as a separate array), a ``torch.utils.data.Dataset`` yielding tensors, ``(image, label)`` tuples
or sample dicts (MONAI's dictionary datasets included: a ``MetaTensor`` gives its spacing), a TorchGeo
``GeoDataset`` with a sampler (CRS and resolution from the dataset) or a TorchGeo ``NonGeoDataset``
(band names and classes from the dataset). The result is an :class:`AdaptedDataset` whose
``profile`` holds what a checkpoint card needs: channels, spatial size, value range and per-channel
normalisation statistics (computed), band names, wavelengths, CRS, resolution, spacing, a MONAI
``MetaTensor``'s affine, MPP (taken from the object where it carries them).

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).uniform(0, 1, (6, 3, 16, 16)).astype("float32")
    >>> ds = adapt(x, labels=[0, 1, 0, 1, 0, 1])
    >>> s = ds[0]; s["image"].shape, s["label"], ds.profile["channels"], ds.profile["size"]
    (torch.Size([3, 16, 16]), 0, 3, [16, 16])
    >>> [round(v, 1) for v in ds.profile["range"]]
    [0.0, 1.0]
    >>> adapt({"pixels": 1})
    Traceback (most recent call last):
    ...
    domainfm.errors.DataError: data: cannot read a dict as data; give a path, an array or tensor ...
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from domainfm.contract import dataset_attribute, dataset_method
from domainfm.data.sample import make_sample
from domainfm.decisions import decide
from domainfm.errors import DataError
from domainfm.utils import crs_text

SCHEMA = (
    "give a path, an array or tensor N x C x H x W (with labels=), or a Dataset yielding C x H x W tensors, "
    "(image, label) tuples or dicts {'image': C x (D x) H x W tensor, 'label': int, "
    "'mask': (D x) H x W ints} (or a TorchGeo GeoDataset with sampler=)"
)
IMAGE_KEYS = ("image", "img", "x", "input", "data", "pixel_values")
LABEL_KEYS = ("label", "labels", "y", "target", "class")
MASK_KEYS = ("mask", "seg", "segmentation", "label_mask")
LABELS_SCHEMA = (
    "give one integer class id (0..K-1), multi-hot vector or mask of integer ids (the images' H x W) per image"
)


def is_in_memory(data: Any) -> bool:
    """Whether ``data`` is an object to adapt rather than a path (or nothing).

    Example:
        >>> is_in_memory("scans/"), is_in_memory(None), is_in_memory(np.zeros((2, 1, 8, 8)))
        (False, False, True)
    """
    return data is not None and not isinstance(data, (str, os.PathLike))


def _to_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x  # a MONAI MetaTensor: plain
    return torch.as_tensor(np.asarray(x))


def _argument_tensor(x: Any, arg: str, expected: str) -> torch.Tensor:
    """The ``data=`` or ``labels=`` argument (``arg``) as a tensor; text, Python objects, ragged lists and
    NaN/inf labels refused in one line saying what is ``expected``.

    Example:
        >>> _argument_tensor(["cat", "dog"], "labels", LABELS_SCHEMA)
        Traceback (most recent call last):
        ...
        domainfm.errors.DataError: labels= holds text ('cat', 'dog'); give one integer class id (0..K-1), ...
    """
    if isinstance(x, torch.Tensor):
        t = _to_tensor(x)
    else:
        try:
            a = np.asarray(x)
        except ValueError:  # a list of arrays of different shapes
            raise DataError(None, f"{arg}= holds items of different shapes; {expected}") from None
        if a.dtype.kind in "USO":
            raise DataError(None, _not_numbers(a, arg, expected))
        t = torch.as_tensor(a)
    if arg == "labels" and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).nonzero()[0]) if t.ndim else 0
        raise DataError(None, f"labels= holds NaN/inf (label {bad}); {expected}")
    return t


def _not_numbers(a: np.ndarray, arg: str, expected: str) -> str:
    """Why an array of text or Python objects is no ``data=``/``labels=``."""
    if a.dtype.kind in "US" and arg == "labels":
        names = [repr(str(v)) for v in np.unique(a)]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (
            f"labels= holds text ({shown}); {expected}: "
            "np.unique(labels, return_inverse=True)[1] turns names into ids (in sorted order)"
        )
    hint = ": e.g. images of different shapes" if arg == "data" else ""
    what = "text" if a.dtype.kind in "US" else f"Python objects (dtype object{hint})"
    return f"{arg}= is an array of {what}; {expected}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, slice):
        return [value.start, value.stop] if value.step is None else [value.start, value.stop, value.step]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _label_value(y: Any) -> Any:
    t = _to_tensor(y)
    if t.numel() == 1:
        return int(t.reshape(())) if not torch.is_floating_point(t) or float(t) == int(t) else float(t)
    return t.float()  # a multi-hot vector


class AdaptedDataset(Dataset):
    """Samples from an item reader, with the ``profile`` the card needs (see the module docstring).

    ``normalise(mean, std)`` makes every image ``(x - mean) / std`` per channel (the statistics a
    checkpoint records and its preprocessing applies again).
    """

    def __init__(
        self,
        length: int,
        read: Callable[[int], dict],
        source: str,
        spatial_dims: int | None = None,
        info: dict | None = None,
        classes: Sequence | None = None,
        stats_samples: int = 256,
    ):
        self._n, self._read, self.source = int(length), read, source
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        if self._n == 0:
            raise DataError(source, "holds no samples")
        if classes is not None:
            self.classes = [str(c) for c in classes]
        first = self._read(0)
        image = first["image"]
        dims = spatial_dims or image.ndim - 1
        if image.ndim != dims + 1:
            raise DataError(
                source,
                f"sample 0 has an image of shape {tuple(image.shape)}, not C x "
                f"{'D x ' if dims == 3 else ''}H x W; {SCHEMA}",
            )
        self.profile = {
            "source": source,
            "spatial_dims": dims,
            "channels": int(image.shape[0]),
            "size": [int(s) for s in image.shape[1:]],
            "dtype": str(first.get("dtype", image.dtype)),
            **{k: v for k, v in (info or {}).items() if v is not None},
        }
        for key in ("spacing", "affine", "mpp", "crs", "res"):
            if key not in self.profile and first["meta"].get(key) is not None:
                self.profile[key] = first["meta"][key]
        self.profile.update(self._statistics(stats_samples))

    def __len__(self) -> int:
        return self._n

    def _statistics(self, n: int) -> dict:
        """Per-channel mean/std and the 0.5-99.5 percentile value range over up to ``n`` evenly spread samples."""
        idx = sorted({int(i) for i in np.linspace(0, self._n - 1, min(n, self._n))})
        c = self.profile["channels"]
        flat = [self._read(i)["image"].double().reshape(c, -1) for i in idx]
        allv = torch.cat(flat, dim=1)
        sample = allv.flatten()[torch.linspace(0, allv.numel() - 1, min(allv.numel(), 1_000_000)).long()]
        lo, hi = torch.quantile(sample.float(), torch.tensor([0.005, 0.995])).tolist()
        mean = allv.mean(1)
        std = allv.std(1).clamp_min(1e-6)
        return {
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "range": [float(lo), float(hi)],
            "stats_samples": len(idx),
        }

    def normalise(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> AdaptedDataset:
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        return self

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._n:
            raise IndexError(index)
        sample = self._read(index)
        sample.pop("dtype", None)
        if self.mean is not None:
            shape = (-1,) + (1,) * (sample["image"].ndim - 1)
            m = torch.tensor(self.mean, dtype=torch.float32).reshape(shape)
            s = torch.tensor(self.std, dtype=torch.float32).reshape(shape)
            sample["image"] = (sample["image"] - m) / s
        wavelengths = self.profile.get("wavelengths")
        if wavelengths and "wavelengths" not in sample:
            sample["wavelengths"] = [float(w) for w in wavelengths]
        if not bool(torch.isfinite(sample["image"]).all()):
            raise DataError(sample["meta"].get("path"), f"sample {index} of {self.source} has NaN/inf values")
        return sample


def dims_decision(source: str, shape: tuple[int, ...], dims: int) -> str:
    """The text of the 2D/3D decision for data whose first image (channels first) has ``shape``.

    Example:
        >>> dims_decision("array", (1, 28, 28), 2)
        'array: 2D images (1 channel(s) of 28 x 28, read from the data; spatial_dims=3 reads volumes)'
    """
    size = f"{shape[0]} channel(s) of {' x '.join(map(str, shape[1:]))}, read from the data"
    if dims == 3:
        return f"{source}: 3D volumes ({size}; spatial_dims=2 reads images)"
    text = f"{source}: 2D images ({size}; spatial_dims=3 reads volumes)"
    if shape[0] > 16 and shape[0] >= min(shape[1:]) / 4:
        text += f"; {shape[0]} channels: if the second axis is depth, pass spatial_dims=3"
    return text


def _unpack(item: Any, index: int, source: str) -> tuple[Any, Any, Any, dict]:
    """``(image, label, mask, meta)`` of a dataset item: a dict (MONAI/TorchGeo keys), a tuple or an image."""
    meta: dict[str, Any] = {"path": f"{source}[{index}]", "index": index}
    if isinstance(item, (tuple, list)) and len(item) >= 1 and not np.isscalar(item[0]):
        return item[0], (item[1] if len(item) > 1 else None), None, meta
    if not isinstance(item, dict):
        return item, None, None, meta
    image = next((item[k] for k in IMAGE_KEYS if k in item), None)
    if image is None:
        raise DataError(source, f"item {index} is a dict with keys {sorted(map(str, item))} and no image; {SCHEMA}")
    for key in ("crs", "bounds", "bbox", "path", "filename", "id"):
        if key in item:
            meta["path" if key in ("filename", "path") else key] = _jsonable(item[key])
    if isinstance(item.get("meta"), dict):
        meta.update({k: _jsonable(v) for k, v in item["meta"].items()})
    label = next((item[k] for k in LABEL_KEYS if k in item), None)
    mask = next((item[k] for k in MASK_KEYS if k in item), None)
    return image, label, mask, meta


def _metatensor_meta(image: Any, meta: dict) -> None:
    """Spacing, affine (voxel to world, as the MetaTensor holds it after the user's transforms) and source
    file of a MONAI ``MetaTensor`` into ``meta``."""
    image_meta = getattr(image, "meta", None)
    if not isinstance(image_meta, dict):
        return
    if image_meta.get("pixdim") is not None:
        pix = _to_tensor(image_meta["pixdim"]).tolist()
        meta["spacing"] = [float(v) for v in pix[1:4]] if len(pix) >= 4 else [float(v) for v in pix]
    affine = getattr(image, "affine", None)
    if isinstance(affine, torch.Tensor) and affine.ndim == 2 and affine.shape[0] == affine.shape[1]:
        meta["affine"] = [[float(v) for v in row] for row in affine.tolist()]
    if image_meta.get("filename_or_obj"):
        meta["path"] = str(image_meta["filename_or_obj"])


def _pixels(image: Any, index: int, source: str, spatial_dims: int | None) -> torch.Tensor:
    """The image as a tensor with its channel axis (added to an ``H x W`` image or a ``spatial_dims`` array)."""
    if isinstance(image, (str, os.PathLike)):
        raise DataError(
            str(image),
            f"item {index} of {source} is a file name, not pixels; load it first "
            "(e.g. a MONAI LoadImaged transform) or give the folder as a path",
        )
    try:
        t = _to_tensor(image)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(source, f"item {index} holds a {type(image).__name__}, not an image; {SCHEMA}") from None
    if t.ndim == (spatial_dims or 2):
        t = t[None]
    return t


def _item_label(label: Any, index: int, source: str) -> torch.Tensor:
    """The label of item ``index`` as a tensor; text, objects and NaN refused naming the item."""
    try:
        lt = _to_tensor(label)
    except (TypeError, ValueError, RuntimeError):
        lt = None
    if lt is None or (lt.is_floating_point() and not bool(torch.isfinite(lt).all())):
        shown = repr(label) if isinstance(label, (str, float, int)) else type(label).__name__
        raise DataError(source, f"item {index} has the label {shown}; {LABELS_SCHEMA}")
    return lt


def _sample_from(item: Any, index: int, source: str, spatial_dims: int | None) -> dict:
    """One item of a dataset (tensor, tuple, dict) as a sample dict; raw values, float32."""
    image, label, mask, meta = _unpack(item, index, source)
    _metatensor_meta(image, meta)
    t = _pixels(image, index, source, spatial_dims)
    sample = make_sample(t.float(), **meta)
    sample["dtype"] = str(t.dtype)
    if label is not None:
        lt = _item_label(label, index, source)
        if lt.ndim >= 2 and tuple(lt.shape[-(t.ndim - 1) :]) == tuple(t.shape[1:]):
            mask = lt if mask is None else mask
        else:
            sample["label"] = _label_value(lt)
    if mask is not None:
        m = _to_tensor(mask)
        m = m[0] if m.ndim == t.ndim and m.shape[0] == 1 else m
        sample["mask"] = m.long()
    return sample


def _channels_last(t: torch.Tensor, spatial_dims: int | None, channels_last: bool | None) -> bool:
    """Whether to read the array ``t`` channels last: as given, or read from its shape with a warning. An
    array whose last axis is small (<= 4) and smaller than the others, read as it stands, is said so with
    the keyword that reads it the other way."""
    shape = tuple(t.shape)
    if channels_last and t.ndim != 4:
        raise DataError(
            None,
            f"channels_last=True reads an N x H x W x C array; data= has shape {shape} "
            f"({'x[None] makes one H x W x C image a stack of one' if t.ndim == 3 else 'give N x H x W x C'})",
        )
    if channels_last is not None or spatial_dims == 3 or t.ndim not in (3, 4):
        return bool(channels_last)
    if t.ndim == 4 and shape[-1] <= 16 < shape[1] and shape[-1] < shape[2]:
        warnings.warn(
            f"reading the array of shape {shape} as N x H x W x C (channels last); "
            "pass channels_last=False (data.options.channels_last=false in a config) to read it as N x C x H x W",
            stacklevel=4,
        )
        return True
    if shape[-1] <= 4 and shape[-1] < min(shape[:-1] if t.ndim == 3 else shape[1:-1]):
        read = f"{shape[0]} images of {shape[1]} x {shape[2]} (N x H x W)"
        other = "if it is one H x W x C image, pass x[None] with channels_last=True (data.options.channels_last=true)"
        if t.ndim == 4:
            read = f"N x C x H x W: {shape[1]} channels of {shape[2]} x {shape[3]}"
            other = "if its last axis holds the channels, pass channels_last=True (data.options.channels_last=true)"
        warnings.warn(f"reading the array of shape {shape} as {read}; {other}", stacklevel=4)
    return False


def _check_labels(y: torch.Tensor, images: torch.Tensor, spatial_dims: int) -> None:
    """One label (class id or multi-hot vector) or one mask of the images' size per image of ``images``."""
    if len(y) != len(images):
        raise DataError("labels", f"{len(y)} labels for {len(images)} images; give one label (or mask) per image")
    size = tuple(images.shape[2:])
    if y.ndim >= 3 and tuple(y.shape[-spatial_dims:]) != size:
        raise DataError(
            None,
            f"labels= has shape {tuple(y.shape)}: each image's label is {' x '.join(map(str, y.shape[1:]))}, "
            f"not a mask of the images' {' x '.join(map(str, size))}; {LABELS_SCHEMA}",
        )


def _from_array(x: Any, labels: Any, spatial_dims: int | None, channels_last: bool | None):
    t = _argument_tensor(x, "data", SCHEMA)
    if t.ndim not in (3, 4, 5):
        raise DataError(
            "array",
            f"an array of shape {tuple(t.shape)} is not a stack of images "
            "(N x H x W, N x C x H x W or N x C x D x H x W); add the sample axis N",
        )
    if _channels_last(t, spatial_dims, channels_last):
        t = torch.movedim(t, -1, 1)
    if spatial_dims is None:
        spatial_dims = 2 if t.ndim in (3, 4) else 3
    if t.ndim == spatial_dims + 1:
        t = t[:, None]
    if t.ndim != spatial_dims + 2:
        raise DataError(
            "array",
            f"shape {tuple(t.shape)} does not fit {spatial_dims}D images "
            f"(N x C x {'D x ' if spatial_dims == 3 else ''}H x W)",
        )
    y = None if labels is None else _argument_tensor(labels, "labels", LABELS_SCHEMA)
    if y is not None:
        _check_labels(y, t, spatial_dims)
    dtype = str(t.dtype)

    def read(i: int) -> dict:
        s = make_sample(t[i].float(), path=f"array[{i}]", index=i)
        s["dtype"] = dtype
        if y is not None:
            yi = y[i]
            if yi.ndim >= 2 and tuple(yi.shape[-spatial_dims:]) == tuple(t.shape[2:]):
                s["mask"] = (yi[0] if yi.ndim == spatial_dims + 1 else yi).long()
            else:
                s["label"] = _label_value(yi)
        return s

    return len(t), read, spatial_dims


def _torchgeo_kind(data: Any) -> str | None:
    if "torchgeo" not in sys.modules:
        return None  # torchgeo objects exist only once torchgeo was imported
    import torchgeo.datasets as tgd  # optional: TorchGeo datasets (already imported by the caller)

    if isinstance(data, tgd.GeoDataset):
        return "geo"
    if isinstance(data, tgd.NonGeoDataset):
        return "nongeo"
    return None


def _dataset_info(data: Any) -> dict:
    """Metadata a dataset object carries (band names, wavelengths, spacing, MPP)."""
    info: dict[str, Any] = {}
    bands = dataset_attribute(data, "bands") or dataset_attribute(data, "band_names")
    if bands and all(isinstance(b, str) for b in bands):
        info["band_names"] = list(bands)
    for key in ("wavelengths", "spacing", "mpp"):
        value = dataset_attribute(data, key)
        if value is not None and not callable(value):
            info[key] = _jsonable(value)
    return info


def adapt(
    data: Any,
    labels: Any = None,
    *,
    sampler: Any = None,
    spatial_dims: int | None = None,
    channels_last: bool | None = None,
    classes: Sequence | None = None,
    wavelengths: Sequence[float] | None = None,
    stats_samples: int = 256,
) -> AdaptedDataset:
    """Turn ``data`` (see the module docstring) into an :class:`AdaptedDataset` of samples.

    ``labels``: one label (int or multi-hot) or mask per image of an array. ``sampler``: the TorchGeo
    sampler of a ``GeoDataset`` (its queries are listed once, so the samples stay fixed).
    ``spatial_dims``: 3 reads an ``N x D x H x W`` array as volumes. ``wavelengths``: central
    wavelengths (micrometres) per channel, for a channel-adaptive encoder.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = adapt(TensorDataset(torch.rand(4, 2, 8, 8), torch.tensor([0, 1, 1, 0])))
        >>> ds[3]["label"], ds.profile["channels"], ds.profile["source"]
        (0, 2, 'TensorDataset')
    """
    if isinstance(data, AdaptedDataset):
        return data
    if data is None:
        raise DataError(None, f"data= is None; {SCHEMA}")
    if not is_in_memory(data):
        raise DataError(str(data), f"is a path; read it with the domain (data.path), or {SCHEMA}")
    name = type(data).__name__
    info = _dataset_info(data)
    if wavelengths is not None:
        info["wavelengths"] = [float(w) for w in wavelengths]
    classes = classes if classes is not None else dataset_attribute(data, "classes")
    if isinstance(data, (np.ndarray, torch.Tensor)) or (
        isinstance(data, (list, tuple))
        and data
        and isinstance(data[0], (np.ndarray, torch.Tensor))
        and not isinstance(data, Dataset)
        and labels is not None
    ):
        n, read, dims = _from_array(data, labels, spatial_dims, channels_last)
        return _with_dims_decision(AdaptedDataset(n, read, "array", dims, info, classes, stats_samples), spatial_dims)
    if labels is not None:
        raise DataError(name, "labels= goes with an array of images; a dataset brings its labels in its items")
    kind = _torchgeo_kind(data)
    if kind == "geo":
        if sampler is None:
            raise DataError(
                name,
                "a TorchGeo GeoDataset is indexed by location: pass sampler= (e.g. "
                "RandomGeoSampler(dataset, size=64, length=100) or GridGeoSampler)",
            )
        queries = list(sampler)
        info.update({"crs": crs_text(data.crs, short=False), "res": _jsonable(getattr(data, "res", None))})

        def read_geo(i: int) -> dict:
            return _sample_from(data[queries[i]], i, name, 2)

        return AdaptedDataset(len(queries), read_geo, name, 2, info, classes, stats_samples)
    if sampler is not None:
        raise DataError(name, "sampler= is for a TorchGeo GeoDataset")
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")) or isinstance(data, (dict, str, bytes)):
        raise DataError("data", f"cannot read a {name} as data; {SCHEMA}")

    def read_item(i: int) -> dict:
        return _sample_from(data[i], i, name, spatial_dims)

    adapted = AdaptedDataset(len(data), read_item, name, spatial_dims, info, classes, stats_samples)
    return _with_dims_decision(_with_epoch_hooks(adapted, data), spatial_dims)


def _with_epoch_hooks(ds: AdaptedDataset, wrapped) -> AdaptedDataset:
    """Keep the per-epoch hooks (``set_epoch``, ``epoch_batches``) of the dataset ``ds`` wraps, so a
    dataset that draws new crops each epoch (e.g. a prepared store) still does when handed over as ``data=``,
    and the record of the store it reads (``store``), which the card keeps."""
    for hook in ("set_epoch", "epoch_batches"):
        method = dataset_method(wrapped, hook)
        if method is not None:
            setattr(ds, hook, method)
    record = dataset_attribute(wrapped, "store")
    if record is not None:
        ds.store = record
    return ds


def _with_dims_decision(ds: AdaptedDataset, given: int | None) -> AdaptedDataset:
    """Print and record (``profile["decisions"]``) the 2D/3D reading when ``spatial_dims`` was not given."""
    if given is None:
        shape = (ds.profile["channels"], *ds.profile["size"])
        ds.profile["decisions"] = [decide("spatial_dims", dims_decision(ds.source, shape, ds.profile["spatial_dims"]))]
    return ds


def check_scale(x: torch.Tensor, trained_range: Sequence[float] | None, source: str = "input") -> torch.Tensor:
    """Compare raw input values with the range a model was trained on; convert the one unambiguous
    mismatch (8-bit ``0..255`` values for a model trained on ``[0, 1]``, and back) with a warning,
    refuse any other mismatch by a factor over 20. Never rescales silently.

    Example:
        >>> import torch
        >>> check_scale(torch.full((1, 4, 4), 0.5), [0.0, 1.0]).max().item()
        0.5
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     round(check_scale(torch.full((1, 4, 4), 255.0), [0.0, 1.0]).max().item(), 3), len(w)
        (1.0, 1)
    """
    if trained_range is None or x.numel() == 0:
        return x
    lo, hi = float(trained_range[0]), float(trained_range[1])
    span = max(abs(lo), abs(hi), 1e-6)
    xmax = float(x.abs().max())
    xmin = float(x.min())
    if xmax > 20 * span and span <= 1.5:
        if xmin >= 0 and xmax <= 255:
            warnings.warn(
                f"{source}: values reach {xmax:g} but the model was trained on [{lo:.3g}, {hi:.3g}]; "
                "reading them as 8-bit and dividing by 255",
                stacklevel=3,
            )
            return x / 255.0
        raise DataError(
            source,
            f"values reach {xmax:g}, far outside the range the model was trained on "
            f"[{lo:.3g}, {hi:.3g}]; scale the input the way the training data was scaled",
        )
    if span > 20 and xmax > 0 and xmax * 20 < span:
        if xmin >= 0 and xmax <= 1.0 and span <= 255 * 1.5:
            warnings.warn(
                f"{source}: values lie in [0, 1] but the model was trained on [{lo:.3g}, {hi:.3g}]; multiplying by 255",
                stacklevel=3,
            )
            return x * 255.0
        raise DataError(
            source,
            f"values reach only {xmax:g}, far below the range the model was trained on "
            f"[{lo:.3g}, {hi:.3g}]; scale the input the way the training data was scaled",
        )
    return x


def describe(profile: dict) -> str:
    """One line about an adapted dataset's profile.

    Example:
        >>> describe({"source": "array", "channels": 3, "size": [16, 16], "range": [0, 1]})
        'array: 3 channels, 16x16, values 0..1'
    """
    parts = [f"{profile['channels']} channels", "x".join(str(s) for s in profile["size"])]
    if profile.get("range") is not None:
        parts.append(f"values {profile['range'][0]:.3g}..{profile['range'][1]:.3g}")
    for key in ("crs", "res", "spacing", "mpp"):
        if profile.get(key) is not None:
            parts.append(f"{key} {profile[key]}")
    return f"{profile['source']}: " + ", ".join(parts)
