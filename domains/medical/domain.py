"""The medical domain plugin: CT/MRI volumes and X-rays, from files to 3D MAE, UNETR segmentation
and NIfTI predictions in the source geometry.

Example (Python API):
    >>> import domainfm
    >>> cfg = {"domain": "medical", "out": "runs/ct",
    ...        "data": {"path": "scans/", "img_size": 96, "options": {"modality": "ct", "window": "soft_tissue",
    ...                                                              "target_spacing": [1.5, 1.5, 2.0]}},
    ...        "model": {"patch_embed": "3d", "patch_size": 16}}
    >>> # ckpt = domainfm.pretrain(cfg)
    >>> # seg = domainfm.finetune(ckpt, task="segmentation", data="labels.csv")
    >>> # domainfm.predict(seg, "scan.nii.gz", "pred.nii.gz")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domain import Domain, accept_options
from domainfm.errors import ConfigError, DataError
from domainfm.registry import register_domain
from domainfm.medical.dataset import MedicalDataset
from domainfm.medical.options import MedicalOptions, normalized
from domainfm.medical.sources import discover, holdout, is_decathlon
from domainfm.medical.transforms import build_transforms, domain_errors, normalization_record
from domainfm.medical.views import multicrop_for

_NPZ_SPLIT = {"pretrain": "train", "train": "train", "val": "val", "test": "test", "embed": "test"}


def _img_size(cfg, spatial_dims: int) -> list[int]:
    size = cfg.data.img_size
    if isinstance(size, (list, tuple)):
        if len(size) != spatial_dims:
            raise ConfigError(f"data.img_size {list(size)} has {len(size)} values but data.options.spatial_dims is {spatial_dims}")
        return [int(s) for s in size]
    return [int(size)] * spatial_dims


def options_from_card(card: dict) -> MedicalOptions:
    """The :class:`MedicalOptions` recorded in a checkpoint card."""
    rec = (card.get("preprocessing") or {}).get("options")
    if rec is None:
        raise ConfigError("the checkpoint card has no medical preprocessing record (preprocessing.options)")
    return normalized(MedicalOptions(**rec))


@register_domain("medical")
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

    # ---------------------------------------------------------------------------------------- data
    def options(self, cfg) -> MedicalOptions:
        """``cfg.options`` validated, with comma-string lists parsed."""
        return normalized(cfg.options)

    def crop_size(self, cfg) -> list[int]:
        """Model input size: ``options.crop_size`` or ``data.img_size``."""
        opts = self.options(cfg)
        return list(opts.crop_size) if opts.crop_size else _img_size(cfg, opts.spatial_dims)

    def items(self, cfg, split: str) -> tuple[list[dict], list[str] | None]:
        """Item dicts and class names for ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``)."""
        opts = self.options(cfg)
        if cfg.data.path is None:
            raise ConfigError("data.path is required for the medical domain (a folder, a manifest, a .npz or a scan)")
        path = Path(cfg.data.path)
        if split in ("val", "test") and cfg.data.val_path:
            return discover(cfg.data.val_path, opts, "validation" if split == "val" else "test")
        if path.suffix.lower() == ".npz":
            return discover(path, opts, _NPZ_SPLIT.get(split, "train"))
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

    def dataset(self, cfg, split: str) -> MedicalDataset:
        """A :class:`MedicalDataset` for ``split``; labels/masks kept according to ``finetune.task``.

        Example:
            >>> # ds = get_domain("medical").dataset(load_config("configs/medical/ct_mae_3d.yaml"), "pretrain")
        """
        opts = self.options(cfg)
        crop = self.crop_size(cfg)
        items, classes = self.items(cfg, split)
        where = cfg.data.val_path if split in ("val", "test") and cfg.data.val_path else cfg.data.path
        task = cfg.finetune.task
        if split in ("pretrain", "embed"):
            items = [{k: v for k, v in it.items() if k not in ("mask", "label")} for it in items]
            classes = None
        elif task == "segmentation":
            if not all("mask" in it for it in items):
                raise DataError(where, "segmentation needs masks: a 'mask' column in the manifest, "
                                       "imagesTr/labelsTr (or images/masks) folders, or Decathlon 'label' entries")
            items = [{k: v for k, v in it.items() if k != "label"} for it in items]
        else:
            if not all("label" in it for it in items):
                raise DataError(where, f"{task} needs labels: class subfolders, a 'label' column in the manifest, "
                                       "or a MedMNIST .npz with *_labels")
            items = [{k: v for k, v in it.items() if k != "mask"} for it in items]
        stage = "test" if split == "embed" else split
        cache_dir = None
        if cfg.data.cache == "disk":
            key = hashlib.md5(json.dumps({"opts": dataclasses.asdict(opts), "crop": crop, "stage": stage},
                                         sort_keys=True).encode()).hexdigest()[:12]
            cache_dir = Path(opts.cache_dir or Path(cfg.out) / "cache") / key
        ds = MedicalDataset(items, opts, crop, stage=stage, cache=cfg.data.cache, cache_dir=cache_dir,
                            seed=cfg.train.seed, classes=classes, num_workers=cfg.data.num_workers)
        if task == "segmentation" and split in ("train", "val", "test"):
            # segmentation label names, background first (``classes`` stays for image-level labels)
            names = ds.classes or []
            n = max(ds.num_classes or 2, len(names), 2)
            ds.mask_classes = list(names) + [f"label_{i}" for i in range(len(names), n)] if names else \
                ["background"] + [f"label_{i}" for i in range(1, n)]
            ds.classes = None
        return ds

    def augment(self, cfg):
        """Contrastive views: random resized crop, flips, intensity jitter (2D or 3D)."""
        from domainfm.data.augment import default_augment
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
        return {"patch_embed": cfg.model.patch_embed or ("3d" if opts.spatial_dims == 3 else "2d"),
                "img_size": crop, "patch_size": patch, "in_chans": in_chans or 1}

    def preprocessing(self, cfg, dataset: Any | None = None) -> dict:
        """Spacing, orientation, window/normalization and crop, as JSON for the card."""
        opts = self.options(cfg)
        rec = {"kind": "medical", "spatial_dims": opts.spatial_dims, "modality": opts.modality,
               "orientation": opts.orientation if opts.spatial_dims == 3 else None,
               "target_spacing": opts.target_spacing, "normalization": normalization_record(opts),
               "crop_size": self.crop_size(cfg), "sequences": opts.sequences,
               "foreground_crop": opts.foreground_crop, "options": dataclasses.asdict(opts)}
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
            >>> # x = domainfm.load("runs/ct").preprocess("scan.nii.gz")   # 1 x D x H x W
        """
        opts = options_from_card(card)
        crop = (card.get("preprocessing") or {}).get("crop_size") or card["encoder"]["img_size"]
        det, _ = build_transforms(opts, crop, "inference")
        from monai import transforms as mt
        from domainfm.medical.transforms import intensity_transforms

        def prepare(x) -> torch.Tensor:
            if isinstance(x, (str, Path)):
                with domain_errors():
                    out = det({"image": str(x)})["image"]
                return out.as_tensor().float().contiguous()
            arr = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if arr.ndim == opts.spatial_dims:
                arr = arr[None]
            if arr.ndim != opts.spatial_dims + 1:
                raise DataError(None, f"expected a {opts.spatial_dims}D array (with or without channel axis), got shape {tuple(arr.shape)}")
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
        from domainfm.medical.heads import build_head
        return build_head(task, encoder, num_classes, cfg.finetune.head_options)

    def validate(self, model, cfg) -> dict | None:
        """Whole-scan Dice and HD95 (mm) in each scan's own geometry on ``data.val_path`` (segmentation);
        the core's crop-level validation reports the rest."""
        if cfg.finetune.task != "segmentation" or not cfg.data.val_path:
            return None
        from domainfm.medical.inference import evaluate_segmentation
        res = evaluate_segmentation(model, cfg.data.val_path)
        return {f"scan_{k}": v for k, v in res.items() if isinstance(v, (int, float))}

    # ---------------------------------------------------------------------------------------- outputs
    def write(self, prediction, sample: dict, path) -> Path:
        """Write a label/probability array with the sample's affine as NIfTI."""
        from domainfm.medical.io import write_nifti
        meta = sample.get("meta") or {}
        return write_nifti(prediction, np.asarray(meta.get("affine", np.eye(4))), path, like=meta.get("path"))

    def predict(self, model, input_path, out_path, **kwargs) -> Path:
        """Sliding-window prediction over a whole scan, written in the scan's ORIGINAL geometry.

        See :func:`domainfm.medical.inference.predict_scan`.
        """
        from domainfm.medical.inference import predict_scan
        options = accept_options(kwargs, {"sw_overlap": "overlap", "sw_batch_size": "sw_batch_size", "overlap": "overlap",
                                          "save_probabilities": "save_probabilities"}, "predict")
        return predict_scan(model, input_path, out_path, **options)

    def embed(self, model, data, out, **kwargs) -> Path:
        """One embedding per scan (mean over sliding windows for volumes) into ``.npz`` or ``.h5``."""
        from domainfm.medical.inference import embed_scans
        options = accept_options(kwargs, {"batch_size": "batch_size", "sw_overlap": "overlap", "overlap": "overlap"}, "embed")
        return embed_scans(model, data, out, **options)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        """PneumoniaMNIST MAE pretraining + linear probe vs random init (NIfTI fallback); see :mod:`domainfm.medical.demo`."""
        from domainfm.medical.demo import run_demo
        return run_demo(Path(out_dir), quick=quick)
