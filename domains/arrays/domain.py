"""The ``arrays`` domain: data held in memory (arrays, tensors, PyTorch/MONAI/TorchGeo datasets) or saved
as ``.npy``/``.npz``, described by what the object carries (see :mod:`domainfm.data.adapters`).

``pretrain(config, data=x)`` trains under this domain when ``data`` is an object. The card records the
channels, size, value range and per-channel mean/std (computed from the data), plus band names,
wavelengths, CRS, resolution, spacing or MPP when the object carries them; ``load`` rebuilds the same
normalisation, and refuses (or converts with a warning) input on another scale.

When the data carry a file geometry, the card's ``preprocessing["geometry"]`` (:func:`geometry_record`) names
the file domain whose readers, sliding windows and writers apply: MONAI ``MetaTensor`` volumes (affine,
spacing) -> ``medical``, a TorchGeo ``GeoDataset`` (CRS, resolution, band names) -> ``remote_sensing``, data
with an ``mpp`` -> ``pathology``. A fine-tuned model then predicts (:meth:`ArraysDomain.predict`) on that
domain's files and on the same kind of objects (a ``MetaTensor``, a TorchGeo sample dict) through the file
domain's :meth:`~domainfm.domain.Domain.predict_as`, with this card's normalisation; plain arrays predict
to arrays (label maps or class probabilities) whatever the geometry.

Example:
    >>> import numpy as np
    >>> from domainfm.data.adapters import adapt
    >>> d = ArraysDomain()
    >>> ds = adapt(np.random.default_rng(0).uniform(0, 1, (4, 2, 16, 16)))
    >>> pre = d.preprocessor({"preprocessing": d.profile_record(ds)})
    >>> pre(np.full((2, 16, 16), 0.5)).shape
    torch.Size([2, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.classmap import ClassMap, output_dtype
from domainfm.data.adapters import AdaptedDataset, adapt, check_scale
from domainfm.domain import Domain, DomainExample, accept_options
from domainfm.errors import ConfigError, DataError, UnsupportedError
from domainfm.inference import write_embeddings
from domainfm.io_safety import check_output, write_arrays_atomic
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card
from domainfm.utils import crs_text

_PROFILE_KEYS = (
    "source",
    "decisions",
    "spatial_dims",
    "channels",
    "size",
    "range",
    "mean",
    "std",
    "band_names",
    "wavelengths",
    "crs",
    "res",
    "spacing",
    "mpp",
    "dtype",
)


ARRAY_SUFFIXES = (".npy", ".npz")


def geometry_record(profile: dict) -> dict | None:
    """The file geometry of adapted data (``AdaptedDataset.profile``): which file domain's readers, sliding
    windows and writers apply to a model trained on it, and the facts they need; ``None`` for plain arrays.

    ``domain`` names that file domain, ``kind`` its input (``volume``/``image``, ``scene``, ``slide``), ``from``
    says in words what the model was trained on; then ``spatial_dims``, ``spacing`` and ``affine`` (the first
    sample's, orientation included) for ``medical``, ``crs``, ``res``, ``band_names`` and ``wavelengths`` for
    ``remote_sensing``, ``mpp`` for ``pathology``.

    Example:
        >>> scenes = {"source": "RasterDataset", "spatial_dims": 2, "crs": "EPSG:32633", "res": [10.0, 10.0]}
        >>> geometry_record(scenes)["from"]
        'a TorchGeo RasterDataset (CRS EPSG:32633, 10.0 x 10.0 per pixel)'
        >>> volumes = {"source": "Dataset", "spatial_dims": 3, "spacing": [1.5, 1.5, 2.0], "affine": np.eye(4).tolist()}
        >>> g = geometry_record(volumes)
        >>> g["domain"], g["kind"], g["from"]
        ('medical', 'volume', 'MONAI volumes (a Dataset of MetaTensors: affine and spacing)')
        >>> geometry_record({"source": "array", "spatial_dims": 2}) is None
        True
    """
    source, dims = profile.get("source", "data"), int(profile.get("spatial_dims") or 2)
    if profile.get("crs") is not None:
        res = profile.get("res")
        res_text = " x ".join(str(v) for v in res) if isinstance(res, (list, tuple)) else str(res)
        return {
            "domain": "remote_sensing",
            "kind": "scene",
            "from": f"a TorchGeo {source} (CRS {crs_text(profile['crs'])}, {res_text} per pixel)",
            "crs": profile["crs"],
            "res": res,
            "band_names": profile.get("band_names"),
            "wavelengths": profile.get("wavelengths"),
        }
    if profile.get("mpp") is not None:
        mpp = float(np.ravel(profile["mpp"])[0])
        return {"domain": "pathology", "kind": "slide", "from": f"tiles of a {source} at {mpp:g} µm/px", "mpp": mpp}
    affine, spacing = profile.get("affine"), profile.get("spacing")
    if affine is None and spacing is None:
        return None
    what = "volumes" if dims == 3 else "images"
    if spacing is None:
        spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:dims, :dims], axis=0).tolist()
    origin = (
        f"MONAI {what} (a {source} of MetaTensors: affine and spacing)"
        if affine is not None
        else f"{what} with spacing {spacing} (a {source})"
    )
    return {
        "domain": "medical",
        "kind": "volume" if dims == 3 else "image",
        "from": origin,
        "spatial_dims": dims,
        "spacing": [float(v) for v in list(spacing)[:dims]],
        "affine": affine,
    }


def read_array_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and labels) from ``.npy`` (images only) or ``.npz`` (``images``/``x`` and ``labels``/``y``)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read as .npy/.npz ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    keys = set(loaded.files)
    x = next((k for k in ("images", "image", "x") if k in keys), None)
    if x is None:
        raise DataError(path, f"has arrays {sorted(keys)}; name the images 'images' (and the labels 'labels')")
    y = next((k for k in ("labels", "label", "y", "masks") if k in keys), None)
    return loaded[x], (loaded[y] if y else None)


class ArraysDomain(Domain):
    """Images from memory or ``.npy``/``.npz``, normalised with statistics computed from the data."""

    name = "arrays"
    needs_data_path = False

    @dataclass
    class Options:
        normalize: bool = True
        spatial_dims: int | None = None
        channels_last: bool | None = None

    @dataclass
    class PredictOptions:
        """``predict`` options: inputs (or sliding windows) per batch, the windows' overlap on files, and
        class probabilities (segmentation: written beside the labels)."""

        batch_size: int | None = None
        overlap: float | None = None
        probabilities: bool = False

    def dataset(self, cfg, split: str) -> AdaptedDataset:
        if cfg.data.path is None:
            raise ConfigError(
                "the arrays domain reads data you give: pretrain(config, data=array_or_dataset), "
                "or data.path set to a .npy/.npz file"
            )
        opt = self.options(cfg)
        x, y = read_array_file(cfg.data.path)
        if split in ("train", "val", "test") and y is not None:
            order = np.random.default_rng(cfg.train.seed).permutation(len(x))
            n_val = max(1, int(round(len(x) * cfg.data.val_fraction)))
            keep = order[n_val:] if split == "train" else order[:n_val]
            x, y = x[np.sort(keep)], y[np.sort(keep)]
        ds = adapt(x, y, spatial_dims=opt.spatial_dims, channels_last=opt.channels_last)
        return self.prepare_in_memory(ds, cfg)

    def prepare_in_memory(self, ds: AdaptedDataset, cfg, card: dict | None = None) -> AdaptedDataset:
        """Normalise ``ds`` with a card's statistics (fine-tuning, embedding) or its own (pretraining)."""
        rec = (card or {}).get("preprocessing") or self.profile_record(ds, self.options(cfg).normalize)
        if rec.get("normalize", True):
            ds.normalise(rec["mean"], rec["std"])
        return ds

    def profile_record(self, ds: AdaptedDataset, normalize: bool = True) -> dict:
        """The card's preprocessing: the data's profile, and its file geometry (:func:`geometry_record`)."""
        rec = {"kind": "arrays", "normalize": bool(normalize)}
        rec.update({k: ds.profile[k] for k in _PROFILE_KEYS if k in ds.profile})
        geometry = geometry_record(ds.profile)
        if geometry is not None:
            rec["geometry"] = geometry
        return rec

    def memory_preprocessing(self, card: dict, dataset: AdaptedDataset) -> dict:
        """The parent card's record, with the file geometry of the fine-tuning data (:func:`geometry_record`)
        when the parent's data carried none, so a model fine-tuned on e.g. MONAI volumes predicts on files.

        Example:
            >>> ds = adapt(np.zeros((2, 1, 8, 8)))
            >>> ds.profile["spacing"] = [0.5, 0.5]
            >>> ArraysDomain().memory_preprocessing({"preprocessing": {"kind": "arrays"}}, ds)["geometry"]["domain"]
            'medical'
        """
        rec = dict(card["preprocessing"])
        geometry = geometry_record(dataset.profile) if rec.get("geometry") is None else None
        if geometry is not None:
            rec["geometry"] = geometry
        return rec

    def encoder_kwargs(self, cfg, dataset=None) -> dict:
        prof = (dataset if dataset is not None else self.dataset(cfg, "pretrain")).profile
        kind = cfg.model.patch_embed or (
            "wavelength" if prof.get("wavelengths") else ("3d" if prof["spatial_dims"] == 3 else "2d")
        )
        size = prof["size"]
        return {
            "patch_embed": kind,
            "img_size": size[0] if len(set(size)) == 1 else list(size),
            "patch_size": cfg.model.patch_size,
            "in_chans": None if kind == "wavelength" else prof["channels"],
        }

    def spatial_dims(self, cfg) -> int:
        return 2 if cfg is None else int(self.options(cfg).spatial_dims or 2)

    def preprocessing(self, cfg, dataset=None) -> dict:
        ds = dataset if dataset is not None else self.dataset(cfg, "pretrain")
        return self.profile_record(ds, self.options(cfg).normalize)

    def export_input(self, card: dict) -> dict:
        """An exported model takes the arrays as given in training (same value range); the card's per-channel
        mean/std are applied inside the graph."""
        rec = card["preprocessing"]
        channels = int(rec["channels"])
        norm = bool(rec.get("normalize", True))
        names = list(rec.get("band_names") or []) or [f"channel{i}" for i in range(channels)]
        return {
            "channels": names,
            "pixels": f"values as in the training arrays (range {rec.get('range')})",
            "window": list(rec.get("size") or []),
            "normalization": {
                "mean": [float(v) for v in rec["mean"]] if norm else [0.0] * channels,
                "std": [float(v) for v in rec["std"]] if norm else [1.0] * channels,
                "clip": None,
                "nan_to_zero": False,
                "text": "per-channel (x - mean) / std" if norm else "none",
            },
            "wavelengths_um": rec.get("wavelengths"),
        }

    def preprocessor(self, card: dict):
        rec = card["preprocessing"]
        dims, channels = int(rec["spatial_dims"]), int(rec["channels"])

        def prepare(x) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if t.ndim == dims and channels == 1:
                t = t[None]
            if t.ndim != dims + 1 or t.shape[0] != channels:
                raise DataError(
                    "input",
                    f"expected one image of {channels} x {' x '.join(map(str, rec['size']))} "
                    f"(C x {'D x ' if dims == 3 else ''}H x W), got shape {tuple(t.shape)}",
                )
            t = check_scale(t, rec.get("range"))
            if rec.get("normalize", True):
                shape = (-1,) + (1,) * dims
                t = (t - torch.tensor(rec["mean"]).reshape(shape)) / torch.tensor(rec["std"]).reshape(shape)
            return t.float()

        return prepare

    def embed(self, model, data, out, **options):
        """Embeddings of a ``.npy``/``.npz`` file, normalised with the checkpoint's statistics."""
        options = accept_options(options, {"batch_size": "batch_size"}, "embed")
        out = check_output(out, [data], what="embed out")  # before computing anything
        cfg = config_from_card(model.card, data=data)
        x, y = read_array_file(data)
        ds = self.prepare_in_memory(
            adapt(x, y, spatial_dims=model.card["preprocessing"]["spatial_dims"]), cfg, model.card
        )
        return write_embeddings(model, ds, out, batch_size=options.get("batch_size") or 32)

    # ---- predict ------------------------------------------------------------------------------
    def predict(self, model, input, out_path, **options) -> Path:
        """Predict with a fine-tuned model: plain arrays (an array or tensor shaped like the training data, one
        input or a batch, or a ``.npy``/``.npz`` file of them) to arrays written as ``.npz`` (segmentation:
        ``labels``, the label map; classification: ``probabilities``, ``labels`` and ``classes``); files and
        objects of the card's file geometry (a NIfTI or ``MetaTensor`` for MONAI-trained models, a GeoTIFF or
        a TorchGeo sample dict for TorchGeo-trained ones, a slide for models of tiles with an MPP) through that
        domain's readers, sliding windows and writers (:meth:`~domainfm.domain.Domain.predict_as`), with this
        card's normalisation.

        Example:
            >>> import tempfile
            >>> import domainfm
            >>> x = np.random.default_rng(0).uniform(0, 1, (8, 1, 16, 16)).astype("float32")
            >>> tiny = {"model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            ...         "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}}
            >>> ckpt = domainfm.pretrain({"out": tempfile.mkdtemp(), **tiny}, data=x)
            >>> seg = domainfm.finetune(ckpt, task="segmentation", data=x, labels=(x[:, 0] > 0.5).astype(int),
            ...                         out=tempfile.mkdtemp())
            >>> domainfm.predict(seg, x[:3]).array.shape     # label maps, one per image
            (3, 16, 16)
        """
        opts = accept_options(
            options, {"batch_size": "batch_size", "overlap": "overlap", "probabilities": "probabilities"}, "predict"
        )
        _require_head(model)
        geometry = (model.card.get("preprocessing") or {}).get("geometry")
        if isinstance(input, dict) and not geometry and "image" in input:
            input = input["image"]  # a sample dict for a model without geometry: its image, as an array
        if _is_arrays(input, geometry):
            return self._predict_arrays(model, input, out_path, **opts)
        if not geometry:
            raise DataError(input if isinstance(input, (str, Path)) else None, _no_geometry(model.card))
        normalise = self.preprocessor(model.card)
        return get_domain(geometry["domain"]).predict_as(model, input, out_path, geometry, normalise, **opts)

    def _predict_arrays(
        self, model, input, out_path, batch_size: int | None = None, overlap: float | None = None, probabilities=False
    ) -> Path:
        """Plain arrays in, the ``.npz`` of :func:`prediction_arrays` out (one input: no leading axis)."""
        is_file = isinstance(input, (str, Path))
        out = Path(out_path) if str(out_path).lower().endswith(".npz") else Path(str(out_path) + ".npz")
        check_output(out, [input] if is_file else [])  # before any work: never the input, a writable place
        raw = read_array_file(input)[0] if is_file else input
        x = model.preprocess(raw)
        single = x.ndim == model.spatial_dims + 1
        x = x[None] if single else x
        device = next(model.parameters()).device
        bs = int(batch_size or 32)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = torch.cat([model.logits(x[i : i + bs].to(device)).float().cpu() for i in range(0, len(x), bs)])
        finally:
            model.train(was)
        arrays = prediction_arrays(logits, model.card, probabilities)
        if single:
            arrays = {k: (v if k == "classes" else v[0]) for k, v in arrays.items()}
        return write_arrays_atomic(out, arrays)

    def example(self, folder: Path) -> DomainExample:
        """Images and labels saved as ``.npz`` (what a notebook user holds in memory)."""
        folder = Path(folder)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (16, 3, 16, 16)).astype(np.uint8)
        path = folder / "images.npz"
        np.savez(path, images=x, labels=rng.integers(0, 2, 16))
        bad = folder / "broken.npz"
        bad.write_bytes(b"not a zip")
        config = {
            "domain": "arrays",
            "out": str(folder / "pretrain"),
            "data": {"path": str(path)},
            "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1},
        }
        return DomainExample(
            config=config,
            bad_file=bad,
            task="classification",
            finetune_overrides=["train.steps=2"],
            predict_input=path,
            predict_suffix=".npz",
            same_geometry=_same_count,
        )


def _same_count(input_path: Path, output_path: Path) -> bool:
    """One prediction per image of an ``.npz`` of images."""
    with np.load(output_path) as out:
        return len(out["probabilities"]) == len(read_array_file(input_path)[0])


def _require_head(model) -> None:
    """An encoder without a head predicts nothing: say what to call instead."""
    if getattr(model, "head", None) is None:
        raise UnsupportedError(
            f"{getattr(model, 'path', None) or 'this model'}: an encoder without a head (pretrained, not fine-tuned) "
            "predicts nothing; call domainfm.embed(checkpoint, data) for features, or fine-tune it first: "
            "domainfm.finetune(checkpoint, task=...)"
        )


def _is_arrays(input: Any, geometry: dict | None) -> bool:
    """Whether ``input`` is predicted as plain arrays: a numpy array, a plain tensor, a list of them or a
    ``.npy``/``.npz`` file; a MONAI ``MetaTensor`` too when the model has no geometry to keep."""
    if isinstance(input, (str, Path)):
        return str(input).lower().endswith(ARRAY_SUFFIXES)
    if isinstance(input, (list, tuple)):
        return bool(input) and all(_is_arrays(item, geometry) for item in input)
    if isinstance(input, np.ndarray) or type(input) is torch.Tensor:
        return True
    return isinstance(input, torch.Tensor) and not geometry


def _no_geometry(card: dict) -> str:
    """Why a model trained on plain arrays takes no file, and what it takes."""
    pre = card.get("preprocessing") or {}
    dims = int(pre.get("spatial_dims") or 2)
    shape = f"{pre.get('channels')} x {' x '.join(str(s) for s in pre.get('size') or [])}"
    return (
        f"this model was trained on {pre.get('source') or 'arrays'} without a file geometry (no MONAI affine, "
        f"TorchGeo CRS or MPP), so it predicts on arrays shaped like its training data (C x "
        f"{'D x ' if dims == 3 else ''}H x W = {shape}): domainfm.predict(model, x), or a .npy/.npz file of them"
    )


def prediction_arrays(logits: torch.Tensor, card: dict, probabilities: bool = False) -> dict[str, np.ndarray]:
    """What a batch of logits predicts: ``labels`` (segmentation: ``N x (D x) H x W`` label ids of the training
    masks, with ``probabilities`` ``N x K x ...`` first when asked); classification: ``probabilities``
    ``N x K``, ``labels`` (class ids; multilabel: ``N x K`` booleans) and ``classes`` (their names).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
        >>> out = prediction_arrays(logits, {"task": "classification", "classes": ["cat", "dog"]})
        >>> out["labels"].tolist(), out["classes"].tolist(), out["probabilities"].shape
        ([0, 1], ['cat', 'dog'], (2, 2))
    """
    task = card.get("task")
    class_map = ClassMap.from_card(card)
    if task == "segmentation":
        probs = logits.softmax(1)
        index = probs.argmax(1).numpy()
        ids = class_map.ids if class_map else list(range(probs.shape[1]))
        labels = (class_map.to_ids(index) if class_map else index).astype(output_dtype(ids))
        return {"probabilities": probs.numpy(), "labels": labels} if probabilities else {"labels": labels}
    probs = logits.sigmoid() if task == "multilabel" else logits.softmax(1)
    classes = card.get("classes") or [str(i) for i in range(probs.shape[1])]
    if task == "multilabel":
        labels = (probs > 0.5).numpy()
    else:
        index = probs.argmax(1).numpy()
        labels = class_map.to_ids(index) if class_map else index
    return {
        "probabilities": probs.numpy(),
        "labels": np.asarray(labels),
        "classes": np.asarray([str(c) for c in classes]),
    }
