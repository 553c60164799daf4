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

from domainfm.config import TrainConfig
from domainfm.data.augment import default_augment
from domainfm.domain import Domain, DomainExample, accept_options
from domainfm.errors import ConfigError, DataError
from domainfm.recipes import DataFacts, Decision

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
from .io import read_image, write_nifti
from .modality import infer_modality, is_2d_only
from .options import MedicalOptions, normalized, options_from_card
from .sources import discover
from .splits import label_names, mask_values, split_items, task_items
from .synthetic import write_example
from .transforms import build_transforms, domain_errors, intensity_transforms, normalization_record
from .views import multicrop_for

#: ``train.batch_size`` left at the core's default (one for 2D images) becomes :data:`SEG_3D_BATCH` for 3D
#: segmentation fine-tuning (:meth:`MedicalDomain.settle`)
DEFAULT_BATCH = TrainConfig().batch_size
SEG_3D_BATCH = 2
#: the registered patch embed of each ``spatial_dims`` (its name is what the encoder is given)
PATCH_EMBEDS = {2: "2d", 3: "3d"}


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


def _cache_dir(cfg, opts: MedicalOptions, crop: list[int], stage: str) -> Path | None:
    """The disk-cache folder of this preprocessing (``data.cache: disk``), keyed by options, crop and stage."""
    if cfg.data.cache != "disk":
        return None
    recipe = json.dumps({"opts": dataclasses.asdict(opts), "crop": crop, "stage": stage}, sort_keys=True)
    return Path(opts.cache_dir or Path(cfg.out) / "cache") / hashlib.md5(recipe.encode()).hexdigest()[:12]


def _name_mask_labels(ds: MedicalDataset, cfg, spatial_dims: int) -> None:
    """Segmentation label names by mask id on ``ds`` (a Decathlon ``labels`` map); the ids themselves come from
    the masks (``ds.label_values``, read by :mod:`domainfm.classmap`), so sparse ids are never padded into absent
    classes."""
    ds.class_names_by_id = label_names(cfg)
    ds.mask_classes = [ds.class_names_by_id[k] for k in sorted(ds.class_names_by_id, key=int)] or None
    ds.label_values = functools.partial(mask_values, ds.items, spatial_dims, ds.class_names_by_id, str(cfg.data.path))
    ds.classes = None


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
        """``predict`` flags: sliding-window overlap and batch, probability maps beside the labels, and the
        memory budget above which a volume is predicted slab by slab (bytes or ``"4G"``; default half the
        available memory)."""

        overlap: float | None = None
        sw_overlap: float | None = None
        sw_batch_size: int | None = None
        save_probabilities: bool = False
        memory_budget: str | None = None

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
        decision printed once and recorded in the card. ``cfg`` is only read (:meth:`data_facts` writes the
        inferred modality into the pretraining config)."""
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
            items = split_items(cfg, opts, "pretrain")[0]
            self._modality[key] = infer_modality(items, opts.spatial_dims, cfg.data.path, opts.image_key)
        modality, text = self._modality[key]
        self._inferred[str(path)] = decide("modality", text)
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

    def spatial_dims(self, cfg) -> int:
        """2 or 3: ``data.options.spatial_dims`` as the data settles it (2D images only are read in 2D)."""
        return self.options(cfg).spatial_dims

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
        resizes it), or the 3D training crop (the volumes' size at the target spacing, capped at 96^3).

        The core asks for these before it builds any pretraining dataset, and this is where the run's config
        takes what the data settles: ``modality: auto`` becomes the inferred modality in ``data.options``, so
        the card's config (and a fine-tune or embedding from it) reads the same."""
        opts = self.options(cfg)
        if cfg.data.options.get("modality") == "auto":
            cfg.data.options["modality"] = opts.modality
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
        """Item dicts and class names for ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``);
        see :mod:`.splits`."""
        return split_items(cfg, self._read_options(cfg), split)

    def dataset(self, cfg, split: str) -> MedicalDataset:
        """A :class:`MedicalDataset` for ``split``; labels/masks kept according to ``finetune.task``. ``cfg`` is
        read, never changed: what a run takes from the data is decided before (:meth:`settle`).

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
        items, classes = task_items(items, classes, split, cfg.finetune.task, where)
        stage = "test" if split == "embed" else split
        ds = MedicalDataset(
            items,
            opts,
            crop=crop,
            stage=stage,
            cache=cfg.data.cache,
            cache_dir=_cache_dir(cfg, opts, crop, stage),
            seed=cfg.train.seed,
            classes=classes,
            num_workers=cfg.data.num_workers,
        )
        if cfg.finetune.task == "segmentation" and split in ("train", "val", "test"):
            _name_mask_labels(ds, cfg, opts.spatial_dims)
        return ds

    def settle(self, cfg, stage: str) -> list[Decision]:
        """What a ``stage`` run (``pretrain``, ``finetune``) takes from the data, decided before any dataset is
        built, for the core to set on ``cfg`` (which is only read here): 3D segmentation fine-tuning with
        ``train.batch_size`` left at the 2D default 64 trains :data:`SEG_3D_BATCH` crops a step (a 3D UNETR
        step decodes every crop at full resolution). The decision is printed once here and recorded in the
        card's preprocessing (:meth:`decisions`); the core sets each returned key.

        Example:
            >>> import tempfile
            >>> from domainfm.registry import get_domain
            >>> from domainfm.runconfig import load_config
            >>> domain = get_domain("medical")
            >>> example = domain.example(tempfile.mkdtemp()).config
            >>> cfg = load_config(example, overrides=["finetune.task=segmentation", "train.batch_size=64"])
            >>> [(d.key, d.value) for d in domain.settle(cfg, "finetune")], cfg.train.batch_size
            ([('train.batch_size', 2)], 64)
        """
        opts = self.options(cfg)
        if stage != "finetune" or cfg.finetune.task != "segmentation" or opts.spatial_dims != 3:
            return []
        if cfg.train.batch_size != DEFAULT_BATCH:
            return []
        self._batch_text = decide(
            "batch",
            f"3D segmentation: train.batch_size {SEG_3D_BATCH} (the default {DEFAULT_BATCH} is "
            "for 2D; UNETR practice for 96^3 crops; set --batch-size to change it)",
        )
        return [Decision("train.batch_size", SEG_3D_BATCH, self._batch_text)]

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
            "patch_embed": cfg.model.patch_embed or PATCH_EMBEDS[opts.spatial_dims],
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
                "memory_budget": "memory_budget",
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
