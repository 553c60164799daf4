"""The medical domain plugin: CT/MRI volumes and X-rays, from files to 3D MAE, UNETR segmentation
and NIfTI predictions in the source geometry.

Example (Python API):
    >>> import tempfile, warnings
    >>> import domainfm
    >>> from domainfm.medical.synthetic import write_nifti_pair
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(3):      # phantom CTs in images/, lesion masks in masks/ (real scans: a folder of .nii.gz)
    ...     _ = write_nifti_pair(folder / "scans", f"case{i}", shape=(20, 20, 12), seed=i)
    >>> cfg = {"domain": "medical", "out": str(folder / "ct"),
    ...        "data": {"path": str(folder / "scans"), "img_size": 16,
    ...                 "options": {"modality": "ct", "window": "soft_tissue", "target_spacing": [2.0, 2.0, 2.0]}},
    ...        "model": {"patch_embed": "3d", "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    ...        "train": {"steps": 2, "batch_size": 2, "progress": False, "tensorboard": False}}
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     ckpt = domainfm.pretrain(cfg)
    ...     seg = domainfm.finetune(ckpt, task="segmentation", out=folder / "seg",
    ...                             overrides=["train.steps=2", "finetune.head_options={feature_size: 4}"])
    validation: dice=..., miou=...
    >>> pred = domainfm.predict(seg, folder / "scans/images/case0.nii.gz", folder / "pred.nii.gz")
    >>> import nibabel as nib
    >>> nib.load(pred).shape == nib.load(folder / "scans/images/case0.nii.gz").shape
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.data.augment import default_augment
from domainfm.domain import Domain, DomainExample, accept_options
from domainfm.errors import ConfigError, DataError
from domainfm.recipes import DataFacts

from .dataset import MedicalDataset
from .defaults import decide, default_crop, looks_like_ct, only_2d_images
from .demo import run_demo
from .deploy import export_input
from .heads import build_head
from .inference import (
    embed_scans,
    evaluate_segmentation,
    predict_scan,
    scan_input,
    setup_from_geometry,
)
from .io import NpzStore, read_image, write_nifti
from .modality import infer_modality, is_2d_only
from .options import MedicalOptions, normalized, options_from_card
from .sources import discover, holdout, is_decathlon
from .synthetic import write_example
from .transforms import build_transforms, domain_errors, intensity_transforms, normalization_record
from .views import multicrop_for


def mask_values(
    items: list[dict], spatial_dims: int, names_by_id: dict | None = None, named_in: str = "dataset.json"
) -> list[int]:
    """The label ids present in the masks of ``items`` (each mask read whole, once). With ``names_by_id`` (a
    Decathlon ``labels`` map, from ``named_in``) a mask holding an id it does not name is refused, naming the
    mask file and the ids.

    Example:
        >>> mask_values([], 3)
        []
    """
    found: set[int] = set()
    for it in items:
        if "mask" in it:
            arr = read_image(it["mask"], spatial_dims=spatial_dims).as_tensor()
            ids = {int(v) for v in torch.unique(arr.round().long()).tolist()}
            _check_named(ids, names_by_id, it["mask"], named_in)
            found.update(ids)
    return sorted(found)


def _check_named(ids: set[int], names_by_id: dict | None, mask: str, named_in: str) -> None:
    """Every id >= 0 of a mask is named by a labels map ``{"0": "background", ...}`` (when one is given).

    Example:
        >>> _check_named({0, 5}, {"0": "background", "1": "tumour"}, "m.nii.gz", "dataset.json")
        Traceback (most recent call last):
        ...
        domainfm.errors.DataError: m.nii.gz: holds label ids [5] that the labels of dataset.json do not name ...
    """
    keys = [str(k) for k in (names_by_id or {})]
    if not keys or not all(k.lstrip("-").isdigit() for k in keys):  # no map, or one by name (nnU-Net v2)
        return
    unnamed = sorted(v for v in ids if v >= 0 and str(v) not in keys)
    if unnamed:
        named = ", ".join(f"{k}: {names_by_id[k]}" for k in sorted(keys, key=int))
        raise DataError(
            mask,
            f"holds label ids {unnamed} that the labels of {named_in} do not name ({named}); "
            "fix the mask or name every id in the labels map",
        )


SEG_3D_BATCH = 2  # 3D segmentation fine-tuning batch when train.batch_size is left at its default
_NPZ_SPLIT = {"pretrain": "train", "train": "train", "val": "val", "test": "test", "embed": "test"}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _img_size(cfg, spatial_dims: int) -> list[int]:
    size = cfg.data.img_size
    if isinstance(size, (list, tuple)):
        if len(size) != spatial_dims:
            raise ConfigError(
                f"data.img_size {list(size)} has {len(size)} values but data.options.spatial_dims is {spatial_dims}"
            )
        return [int(s) for s in size]
    return [int(size)] * spatial_dims


def _task_items(items: list[dict], classes, split: str, task: str, where) -> tuple[list[dict], list[str] | None]:
    """The items with what ``task`` needs (masks or labels; neither to pretrain or embed), checked."""
    if split in ("pretrain", "embed"):
        return [{k: v for k, v in it.items() if k not in ("mask", "label")} for it in items], None
    if task == "segmentation":
        if not all("mask" in it for it in items):
            raise DataError(
                where,
                "segmentation needs masks: a 'mask' column in the manifest, "
                "imagesTr/labelsTr (or images/masks) folders, or Decathlon 'label' entries",
            )
        return [{k: v for k, v in it.items() if k != "label"} for it in items], classes
    if not all("label" in it for it in items):
        raise DataError(
            where,
            f"{task} needs labels: class subfolders, a 'label' column in the manifest, "
            "or a MedMNIST .npz with *_labels",
        )
    return [{k: v for k, v in it.items() if k != "mask"} for it in items], classes


def _cache_dir(cfg, opts: MedicalOptions, crop: list[int], stage: str) -> Path | None:
    """The disk-cache folder of this preprocessing (``data.cache: disk``), keyed by options, crop and stage."""
    if cfg.data.cache != "disk":
        return None
    recipe = json.dumps({"opts": dataclasses.asdict(opts), "crop": crop, "stage": stage}, sort_keys=True)
    return Path(opts.cache_dir or Path(cfg.out) / "cache") / hashlib.md5(recipe.encode()).hexdigest()[:12]


class MedicalDomain(Domain):
    """NIfTI / DICOM / PNG / MedMNIST readers, MONAI preprocessing, UNETR head, NIfTI writer.

    Example:
        >>> from domainfm.registry import get_domain
        >>> get_domain("medical").name
        'medical'
    """

    name = "medical"
    Options = MedicalOptions
    needs_data_path = True

    @dataclasses.dataclass
    class PredictOptions:
        """``predict`` flags: sliding-window overlap and batch, probability maps beside the labels."""

        overlap: float | None = None
        sw_overlap: float | None = None
        sw_batch_size: int | None = None
        save_probabilities: bool = False

    @dataclasses.dataclass
    class EmbedOptions:
        """``embed`` flags: batch size and the sliding-window overlap for volumes."""

        batch_size: int | None = None
        overlap: float | None = None
        sw_overlap: float | None = None

    def __init__(self):
        self._crops: dict[tuple, tuple[list[int], str]] = {}
        self._ct_like: dict[str, bool | None] = {}
        self._batch_text: str | None = None
        self._dims: dict[tuple, bool] = {}
        self._modality: dict[tuple, tuple[str, str]] = {}
        self._inferred: dict[str, str] = {}

    # ---------------------------------------------------------------------------------------- data
    def options(self, cfg) -> MedicalOptions:
        """``cfg.options`` validated, with comma-string lists parsed, the dimensionality read from the data
        (:meth:`_read_options`) and ``modality: auto`` resolved from the scans (:mod:`.modality`); each
        decision printed once and recorded in the card."""
        opts = self._read_options(cfg)
        if opts.modality != "auto":
            return opts
        if cfg.data.path is None:
            raise ConfigError(
                "data.options.modality is auto but there is no data.path to infer it from; set ct, mri, pet or xray"
            )
        path = Path(cfg.data.path)
        key = (str(path), opts.spatial_dims, opts.image_key, str(opts.sequences), _mtime(path))
        if key not in self._modality:
            items = self._items(cfg, opts, "pretrain")[0]
            self._modality[key] = infer_modality(items, opts.spatial_dims, cfg.data.path, opts.image_key)
        modality, text = self._modality[key]
        self._inferred[str(path)] = decide("modality", text)
        cfg.data.options["modality"] = modality  # the card's config (and a fine-tune from it) reads the same
        return normalized(dataclasses.replace(opts, modality=modality))

    def _read_options(self, cfg) -> MedicalOptions:
        """The options with the dimensionality decided: 2D images only (PNG/JPEG, single DICOM files, a
        manifest listing them, an ``.npz``/``.npy`` of ``N x H x W`` images) are read in 2D unless
        ``data.options.spatial_dims: 3`` declares an ``.npz`` stack one volume."""
        opts = normalized(cfg.options)
        if opts.spatial_dims == 3 and not opts.sequences and self._only_2d(cfg, opts):
            decide("spatial_dims", f"{cfg.data.path} holds 2D images only: reading them in 2D (spatial_dims 2)")
            opts = normalized(dataclasses.replace(opts, spatial_dims=2, target_spacing=None, crop_size=None))
        return opts

    def _only_2d(self, cfg, opts) -> bool:
        path = cfg.data.path
        if path is None:
            return False
        path = Path(path)
        declared_volume = path.suffix.lower() in (".npz", ".npy") and cfg.is_set("data.options.spatial_dims")
        if declared_volume or not path.exists():
            return False
        key = (str(path), opts.image_key, _mtime(path))
        if key not in self._dims:
            if path.is_file() and path.suffix.lower() in (".csv", ".json"):
                try:
                    items = discover(path, opts, "training")[0]
                except DataError:
                    items = []
                self._dims[key] = is_2d_only([it.get(opts.image_key, it.get("image")) for it in items])
            else:
                self._dims[key] = only_2d_images(path)
        return self._dims[key]

    def crop_size(self, cfg) -> list[int]:
        """Model input size: ``options.crop_size``, else ``data.img_size``; in 3D with ``img_size`` left
        at the 2D default 224, 96^3 voxels capped by the largest volume (see :mod:`.defaults`)."""
        opts = self.options(cfg)
        if opts.crop_size:
            return list(opts.crop_size)
        if opts.spatial_dims == 3 and cfg.data.img_size == 224 and cfg.data.path is not None:
            key = (str(cfg.data.path), str(opts.target_spacing), str(cfg.model.patch_size))
            if key not in self._crops:
                try:
                    items = self.items(cfg, "pretrain")[0]
                except DataError:
                    items = []
                self._crops[key] = default_crop(items, opts.target_spacing, cfg.model.patch_size)
            crop, text = self._crops[key]
            decide("crop", text)
            return list(crop)
        return _img_size(cfg, opts.spatial_dims)

    def decisions(self, cfg) -> list[str]:
        """The data-derived decisions of this config (for the card), each printed once.

        Example:
            >>> # get_domain("medical").decisions(cfg) -> ['3D crop 96x96x96 voxels (the 3D default; ...)']
        """
        opts = self.options(cfg)
        out = []
        if opts.spatial_dims == 2 and cfg.options.spatial_dims == 3:
            out.append(f"{cfg.data.path} holds 2D images only: read in 2D")
        elif opts.spatial_dims == 3 and not cfg.is_set("data.options.spatial_dims") and cfg.data.path is not None:
            out.append(decide("spatial_dims", f"{cfg.data.path}: 3D volumes (spatial_dims 3)"))
        if str(cfg.data.path) in self._inferred and not cfg.is_set("data.options.modality"):
            out.append(self._inferred[str(cfg.data.path)])
        if opts.spatial_dims == 3 and not opts.crop_size and cfg.data.img_size == 224 and cfg.data.path is not None:
            self.crop_size(cfg)
            out.append(self._crops[(str(cfg.data.path), str(opts.target_spacing), str(cfg.model.patch_size))][1])
        if self._batch_text and cfg.finetune.task == "segmentation" and cfg.train.batch_size == SEG_3D_BATCH:
            out.append(self._batch_text)
        declared_ct = opts.modality == "ct" and cfg.is_set("data.options.modality")
        if declared_ct and opts.spatial_dims == 3 and cfg.data.path is not None:
            out += self._ct_warning(cfg)
        return out

    def _ct_warning(self, cfg) -> list[str]:
        key = str(cfg.data.path)
        if key not in self._ct_like:
            try:
                self._ct_like[key] = looks_like_ct(self.items(cfg, "pretrain")[0])
            except DataError:
                self._ct_like[key] = None
        if self._ct_like[key] is not False:
            return []
        text = (
            f"warning: modality is ct (set in the config) but the volumes of {key} have no air near -1000 HU, "
            "so they do not look like CT; the CT window will clip them (data.options.modality: auto infers it)"
        )
        return [decide("modality", text)]

    def data_facts(self, cfg) -> DataFacts:
        """Recipe facts from the file headers: a 2D image's own size (read from the first item; ``data.img_size``
        resizes it), or the 3D training crop (the volumes' size at the target spacing, capped at 96^3)."""
        opts = self.options(cfg)
        items = self.items(cfg, "pretrain")[0]
        if not items:
            raise DataError(cfg.data.path, "no scans found for pretraining")
        channels = len(opts.sequences) if opts.sequences else cfg.data.in_chans
        if opts.spatial_dims == 3:
            return DataFacts(3, tuple(self.crop_size(cfg)), channels or 1, len(items), what="volume crops")
        first = items[0][opts.image_key] if opts.image_key in items[0] else items[0]["image"]
        image = read_image(first, spatial_dims=2)
        if image.ndim == 3:  # RGB channels last: the first two axes are the image
            return DataFacts(2, tuple(image.shape[:2]), int(image.shape[2]), len(items), resizable=True)
        return DataFacts(2, tuple(int(s) for s in image.shape[-2:]), channels or 1, len(items), resizable=True)

    def items(self, cfg, split: str) -> tuple[list[dict], list[str] | None]:
        """Item dicts and class names for ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``)."""
        return self._items(cfg, self._read_options(cfg), split)

    def _items(self, cfg, opts: MedicalOptions, split: str) -> tuple[list[dict], list[str] | None]:
        if cfg.data.path is None:
            raise ConfigError("data.path is required for the medical domain (a folder, a manifest, a .npz or a scan)")
        path = Path(cfg.data.path)
        if split in ("val", "test") and cfg.data.val_path:
            return discover(cfg.data.val_path, opts, "validation" if split == "val" else "test")
        if path.suffix.lower() in (".npz", ".npy"):
            return self._array_items(path, opts, split, cfg)
        if path.is_file() and is_decathlon(path):
            data = json.loads(path.read_text())
            if split in ("val", "test") and data.get("validation"):
                return discover(path, opts, "validation")
            items, classes = discover(path, opts, "training")
            if split == "pretrain" and data.get("test"):
                items = items + discover(path, opts, "test")[0]
            if not data.get("validation"):
                items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
            labels = data.get("labels")
            if isinstance(labels, dict) and labels:
                classes = [labels[k] for k in sorted(labels, key=lambda k: int(k))]
            return items, classes
        items, classes = discover(path, opts, "training")
        if split in ("train", "val", "test"):
            items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
        return items, classes

    @staticmethod
    def _array_items(path: Path, opts: MedicalOptions, split: str, cfg) -> tuple[list[dict], list[str] | None]:
        """Items of an ``.npz``/``.npy``: its own split, or a held-out share of ``train`` when it has none."""
        wanted = _NPZ_SPLIT.get(split, "train")
        if wanted in NpzStore(path).splits():
            return discover(path, opts, wanted)
        items, classes = discover(path, opts, "train")
        if split in ("train", "val", "test"):
            items = holdout(items, split, cfg.data.val_fraction, cfg.train.seed)
        return items, classes

    def dataset(self, cfg, split: str) -> MedicalDataset:
        """A :class:`MedicalDataset` for ``split``; labels/masks kept according to ``finetune.task``.

        Example:
            >>> import tempfile
            >>> from domainfm.registry import get_domain
            >>> from domainfm.runconfig import load_config
            >>> domain = get_domain("medical")
            >>> cfg = load_config(domain.example(tempfile.mkdtemp()).config)   # e.g. configs/medical/ct_mae_3d.yaml
            >>> ds = domain.dataset(cfg, "pretrain")
            >>> len(ds), ds[0]["image"].shape
            (3, torch.Size([1, 16, 16, 16]))
        """
        opts = self.options(cfg)
        crop = self.crop_size(cfg)
        items, classes = self.items(cfg, split)
        where = cfg.data.val_path if split in ("val", "test") and cfg.data.val_path else cfg.data.path
        task = cfg.finetune.task
        items, classes = _task_items(items, classes, split, task, where)
        if split == "train" and task == "segmentation" and opts.spatial_dims == 3 and cfg.train.batch_size == 64:
            # train.batch_size left at the 2D default: a 3D UNETR step decodes every crop at full resolution
            cfg.train.batch_size = SEG_3D_BATCH
            self._batch_text = decide(
                "batch",
                f"3D segmentation: train.batch_size {SEG_3D_BATCH} (the default 64 is "
                "for 2D; UNETR practice for 96^3 crops; set --batch-size to change it)",
            )
        stage = "test" if split == "embed" else split
        ds = MedicalDataset(
            items,
            opts,
            crop,
            stage=stage,
            cache=cfg.data.cache,
            cache_dir=_cache_dir(cfg, opts, crop, stage),
            seed=cfg.train.seed,
            classes=classes,
            num_workers=cfg.data.num_workers,
        )
        if task == "segmentation" and split in ("train", "val", "test"):
            # segmentation label names by mask id (a Decathlon ``labels`` map); the ids themselves come
            # from the masks (domainfm.classmap), so sparse ids are never padded into absent classes
            ds.class_names_by_id = self._label_names(cfg)
            ds.mask_classes = [ds.class_names_by_id[k] for k in sorted(ds.class_names_by_id, key=int)] or None
            ds.label_values = functools.partial(
                mask_values, ds.items, opts.spatial_dims, ds.class_names_by_id, str(cfg.data.path)
            )
            ds.classes = None
        return ds

    @staticmethod
    def _label_names(cfg) -> dict[str, str]:
        path = Path(cfg.data.path)
        if path.is_file() and path.suffix.lower() == ".json" and is_decathlon(path):
            labels = json.loads(path.read_text()).get("labels")
            if isinstance(labels, dict):
                return {str(k): str(v) for k, v in labels.items()}
        return {}

    def augment(self, cfg):
        """Contrastive views: random resized crop, flips, intensity jitter (2D or 3D)."""
        return default_augment(spatial_dims=self.options(cfg).spatial_dims)

    def multicrop(self, cfg, img_size, local_size):
        """Self-distillation crops: 3D for volumes, no intensity jitter on CT HU (see views.py)."""
        return multicrop_for(cfg, self.options(cfg), img_size, local_size)

    def encoder_kwargs(self, cfg, dataset: Any | None = None) -> dict:
        """``3d`` patch embed for volumes (anisotropic ``model.patch_size`` like ``[4, 16, 16]`` allowed),
        ``2d`` for X-rays; ``img_size`` = the crop; ``in_chans`` = sequences/channels of the data."""
        opts = self.options(cfg)
        crop = self.crop_size(cfg)
        in_chans = cfg.data.in_chans
        if in_chans is None and opts.sequences:
            in_chans = len(opts.sequences)
        if in_chans is None and dataset is not None and len(dataset):
            in_chans = int(dataset[0]["image"].shape[0])
        patch = cfg.model.patch_size
        if isinstance(patch, (list, tuple)) and len(patch) != opts.spatial_dims:
            raise ConfigError(f"model.patch_size {list(patch)} has {len(patch)} values for {opts.spatial_dims}D data")
        return {
            "patch_embed": cfg.model.patch_embed or ("3d" if opts.spatial_dims == 3 else "2d"),
            "img_size": crop,
            "patch_size": patch,
            "in_chans": in_chans or 1,
        }

    def preprocessing(self, cfg, dataset: Any | None = None) -> dict:
        """Spacing, orientation, window/normalization and crop, as JSON for the card."""
        opts = self.options(cfg)
        rec = {
            "kind": "medical",
            "spatial_dims": opts.spatial_dims,
            "modality": opts.modality,
            "orientation": opts.orientation if opts.spatial_dims == 3 else None,
            "target_spacing": opts.target_spacing,
            "normalization": normalization_record(opts),
            "crop_size": self.crop_size(cfg),
            "sequences": opts.sequences,
            "foreground_crop": opts.foreground_crop,
            "options": dataclasses.asdict(opts),
            "decisions": self.decisions(cfg),
        }
        if dataset is not None and len(dataset):
            meta = dataset[0].get("meta") or {}
            rec["in_chans"] = int(dataset[0]["image"].shape[0])
            if "spacing" in meta and opts.spatial_dims == 3:
                rec["example_spacing"] = meta["spacing"]
        return rec

    def preprocessor(self, card: dict):
        """``fn(path | array) -> C x (D x) H x W`` float tensor, preprocessed as recorded in the card.

        Files go through the full recipe (orientation, spacing, window...); a 3D scan is returned
        whole (use sliding windows); 2D images are resized to the model size. Arrays are taken as
        raw intensities (HU for CT) already on the model's grid, with or without a channel axis.

        Example:
            >>> import tempfile, warnings
            >>> import domainfm
            >>> from domainfm.registry import get_domain
            >>> folder = Path(tempfile.mkdtemp())
            >>> example = get_domain("medical").example(folder)
            >>> example.config["model"]["depth"] = 1
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     model = domainfm.load(domainfm.pretrain(example.config))
            >>> x = model.preprocess(folder / "data/images/c0.nii.gz")   # 1 x D x H x W on the model's 2 mm grid
            >>> x.ndim, x.shape[0]
            (4, 1)
        """
        opts = options_from_card(card)
        crop = (card.get("preprocessing") or {}).get("crop_size") or card["encoder"]["img_size"]
        det, _ = build_transforms(opts, crop, "inference")
        from monai import transforms as mt  # heavy import (MONAI), loaded on first use

        def prepare(x) -> torch.Tensor:
            if isinstance(x, (str, Path)):
                with domain_errors():
                    out = det({"image": str(x)})["image"]
                return out.as_tensor().float().contiguous()
            arr = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if arr.ndim == opts.spatial_dims:
                arr = arr[None]
            if arr.ndim != opts.spatial_dims + 1:
                raise DataError(
                    None,
                    f"expected a {opts.spatial_dims}D array (with or without channel axis), "
                    f"got shape {tuple(arr.shape)}",
                )
            if not bool(torch.isfinite(arr).all()):
                raise DataError(None, "array has NaN/inf values")
            tr = intensity_transforms(opts)
            if opts.spatial_dims == 2 and opts.resize_2d:
                tr.append(mt.Resized("image", spatial_size=crop, mode="bilinear"))
            out = mt.Compose(tr)({"image": arr})["image"]
            return torch.as_tensor(out).float().contiguous()

        return prepare

    # ---------------------------------------------------------------------------------------- heads
    def head(self, task: str, encoder, num_classes: int, cfg):
        """UNETR-style decoder for segmentation, LayerNorm + linear on pooled tokens otherwise.
        ``finetune.head_options`` go to the head (e.g. ``feature_size: 16``)."""
        return build_head(task, encoder, num_classes, cfg.finetune.head_options)

    def validate(self, model, cfg) -> dict:
        """Whole-scan Dice and HD95 (mm) in each scan's own geometry on ``data.val_path`` (segmentation);
        the core's crop-level validation reports the rest."""
        if cfg.finetune.task != "segmentation" or not cfg.data.val_path:
            return {}
        res = evaluate_segmentation(model, cfg.data.val_path)
        return {f"scan_{k}": v for k, v in res.items() if isinstance(v, (int, float))}

    # ---------------------------------------------------------------------------------------- outputs
    def write(self, prediction, sample: dict, path) -> Path:
        """Write a label/probability array with the sample's affine as NIfTI."""
        meta = sample.get("meta") or {}
        return write_nifti(prediction, np.asarray(meta.get("affine", np.eye(4))), path, like=meta.get("path"))

    def predict(self, model, input_path, out_path, **kwargs) -> Path:
        """Sliding-window prediction over a whole scan, written in the scan's ORIGINAL geometry.

        See :func:`domainfm.medical.inference.predict_scan`.
        """
        options = accept_options(
            kwargs,
            {
                "sw_overlap": "overlap",
                "sw_batch_size": "sw_batch_size",
                "overlap": "overlap",
                "save_probabilities": "save_probabilities",
            },
            "predict",
        )
        return predict_scan(model, input_path, out_path, **options)

    def predict_as(
        self,
        model,
        input,
        out_path,
        geometry: dict,
        normalise,
        *,
        overlap: float | None = None,
        batch_size: int | None = None,
        probabilities: bool = False,
    ) -> Path:
        """Prediction for a model trained on MONAI volumes held in memory (an ``arrays`` card with a medical
        ``geometry``): a NIfTI/DICOM scan or a ``MetaTensor`` is put on the training samples' orientation and
        spacing, normalised by the model's own statistics, predicted by sliding windows and written as NIfTI
        with the input's affine (classification: JSON); see :func:`.inference.predict_scan`."""
        setup = setup_from_geometry(model.card, geometry, normalise)
        with scan_input(input, geometry) as path:
            return predict_scan(model, path, out_path, overlap, batch_size, probabilities, setup=setup)

    def export_input(self, card: dict) -> dict:
        """An exported model takes the scan on the card's grid in Hounsfield units for CT (the window is done
        inside the graph); see :mod:`domainfm.medical.deploy`."""
        return export_input(card)

    def embed(self, model, data, out, **kwargs) -> Path:
        """One embedding per scan (mean over sliding windows for volumes) into ``.npz`` or ``.h5``."""
        options = accept_options(
            kwargs, {"batch_size": "batch_size", "sw_overlap": "overlap", "overlap": "overlap"}, "embed"
        )
        return embed_scans(model, data, out, **options)

    def example(self, folder: Path) -> DomainExample:
        """Small real files and a tiny recipe (see :func:`.synthetic.write_example`)."""
        return write_example(folder)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        """PneumoniaMNIST MAE pretraining + linear probe vs random init (NIfTI fallback);
        see :mod:`domainfm.medical.demo`."""
        return run_demo(Path(out_dir), quick=quick)
