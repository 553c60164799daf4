"""The pathology domain plugin: whole-slide images to tiles, tile pretraining, slide features, MIL.

Example (Python API; see docs/pathology.md for the whole walkthrough):
    >>> import tempfile, warnings
    >>> import domainfm
    >>> from domainfm.pathology.synthetic import write_example
    >>> folder = Path(tempfile.mkdtemp())
    >>> example = write_example(folder)    # 6 small H&E slides at 0.5 µm/px (odd ones tumour), slides.csv, a recipe
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     ckpt = domainfm.pretrain(example.config)
    ...     mil = domainfm.finetune(ckpt, task="mil", out=folder / "mil", labels=str(folder / "slides.csv"),
    ...                             overrides=["data.options.mil_epochs=2", "data.options.mil_hidden=16"])
    embedded 6 slide(s) ...
    >>> domainfm.load(ckpt).card["preprocessing"]["target_mpp"]      # real slides: img_size 224, tile_size 224
    1.0
    >>> domainfm.predict(mil, folder / "slides/s1.tif", folder / "s1.png").name   # a heatmap over the slide
    's1.png'
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import domainfm
from domainfm.data.splits import holdout_split
from domainfm.domain import Domain, DomainExample, accept_options
from domainfm.errors import ConfigError, DataError
from domainfm.io_safety import check_output, existing_output
from domainfm.train.checkpoint import load_tensors
from domainfm.utils import parse_list

from .datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SlideRecord,
    SlideTileDataset,
    TileFolderDataset,
    TileTransform,
    is_tile_folder,
    list_slides,
)
from .demo import run_demo
from .embed import embed_slides, find_feature_files, transform_from_preprocessing
from .heatmap import write_heatmap, write_tile_scores
from .mil import GatedABMIL
from .mil_task import require_labels, run_mil
from .predict import NormalisedTiles, predict_slide, slide_record
from .slide import SLIDE_SUFFIXES
from .stain import MacenkoNormalizer
from .synthetic import write_example
from .views import make_view_augment, multicrop_for


@dataclass
class PathologyOptions:
    """Pathology settings (``data.options`` in YAML; each is a CLI flag, e.g. ``--target-mpp 0.5``).

    Attributes:
        target_mpp: microns per pixel of a tile.  tile_size: tile side in pixels at ``target_mpp``
            (resized to ``data.img_size`` for the model when they differ).
        mpp: level-0 MPP override for slides whose files lack it (``--mpp``).
        min_tissue: minimum tissue fraction of a kept tile.  thumbnail_size: tissue-mask thumbnail side.
        max_tiles_per_slide: cap per slide for pretraining (fixed random subset).
        coords_dir: where tile grids are cached (default ``<out>/tiles``).
        stain_augment, hed_sigma: HED jitter in training and contrastive views.
        macenko, macenko_reference: Macenko normalization (to the standard H&E reference, or to a
            reference tile image).
        mean, std: RGB normalization (ImageNet by default; a list or ``"0.7,0.5,0.7"``).
        max_open_slides: open slide handles per DataLoader worker (LRU).
        labels: slide labels CSV (``slide,label[,split]``) for ``--task mil``.
        mil_epochs, mil_lr, mil_hidden: MIL training.  heatmaps: write attention heatmaps.
    """

    target_mpp: float = 0.5
    tile_size: int = 224
    mpp: float | None = None
    min_tissue: float = 0.5
    thumbnail_size: int = 1024
    max_tiles_per_slide: int | None = None
    coords_dir: str | None = None
    stain_augment: bool = True
    hed_sigma: float = 0.05
    macenko: bool = False
    macenko_reference: str | None = None
    mean: list[float] | str = dataclasses.field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] | str = dataclasses.field(default_factory=lambda: list(IMAGENET_STD))
    max_open_slides: int = 8
    labels: str | None = None
    mil_epochs: int = 20
    mil_lr: float = 2e-4
    mil_hidden: int = 128
    heatmaps: bool = True


def _floats3(value, name: str) -> list[float]:
    try:
        out = parse_list(value, float)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.options.{name} must be three numbers (e.g. 0.485,0.456,0.406), got {value!r}"
        ) from None
    if len(out) != 3:
        raise ConfigError(f"data.options.{name} must be three numbers (one per RGB channel), got {out}")
    if name == "std" and not all(v > 0 for v in out):
        raise ConfigError(f"data.options.std must be three positive numbers (it divides the pixels), got {out}")
    return out


def _img_size(cfg) -> int:
    size = cfg.data.img_size
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1 or len(size) != 2:
            raise ConfigError(f"pathology tiles are square 2D images; data.img_size must be one number, got {size}")
        size = size[0]
    return int(size)


def _macenko(opts) -> MacenkoNormalizer | None:
    if not opts.macenko:
        return None
    norm = MacenkoNormalizer()
    if opts.macenko_reference:
        ref = Path(opts.macenko_reference)
        try:
            rgb = np.asarray(Image.open(ref).convert("RGB"))
        except Exception as exc:
            raise DataError(ref, f"cannot read the Macenko reference image ({exc})") from None
        try:
            norm.fit(rgb)
        except ValueError as exc:
            raise DataError(ref, str(exc)) from None
    return norm


def _tile_folder_dataset(cfg, split: str, path, transform: TileTransform) -> TileFolderDataset:
    """Tiles of a folder of images: ``<class>/*.png`` with a held-out share per class (``data.val_path``: that
    folder whole, with the training folder's classes), or a flat folder to pretrain on."""
    if split in ("val", "test") and cfg.data.val_path:
        classes = None
        if cfg.data.path and is_tile_folder(cfg.data.path):
            classes = TileFolderDataset(cfg.data.path, "all", transform=transform).classes or None
        return TileFolderDataset(path, "all", transform=transform, classes=classes)
    whole = split == "pretrain" or (split == "train" and cfg.data.val_path)
    return TileFolderDataset(
        path, "all" if whole else split, transform=transform, val_fraction=cfg.data.val_fraction, seed=cfg.train.seed
    )


def _slide_labels(slides: list[SlideRecord], split: str, path) -> dict[str, int] | None:
    """``class name -> index`` of the slides' own labels (``None`` to pretrain); a labelled split needs a label
    on every slide."""
    if split == "pretrain":
        return None
    named = [s.label for s in slides if s.label]
    if len(named) != len(slides):
        raise ConfigError(
            f'{path}: slides carry no tile labels; for slide labels use task="mil" with labels="slides.csv", '
            "for tile classification point data.path at a folder <class>/*.png"
        )
    return {c: i for i, c in enumerate(sorted(set(named)))}


def _slide_dataset(cfg, split: str, path, transform: TileTransform) -> SlideTileDataset:
    """Tissue tiles of the slides of ``path`` at the configured MPP; a labelled split takes its held-out share
    of the slides (unless ``data.val_path`` holds the validation slides) and their labels."""
    opts = cfg.options
    slides = list_slides(path, opts.mpp)
    labels = _slide_labels(slides, split, path)
    if labels is not None and not cfg.data.val_path:
        slides = holdout_split(slides, split, cfg.data.val_fraction, cfg.train.seed)
    ds = SlideTileDataset(
        slides,
        target_mpp=opts.target_mpp,
        tile_size=opts.tile_size,
        out_size=_img_size(cfg),
        min_tissue=opts.min_tissue,
        coords_dir=opts.coords_dir or str(Path(cfg.out) / "tiles"),
        transform=transform,
        max_tiles_per_slide=opts.max_tiles_per_slide,
        mpp=opts.mpp,
        thumbnail_size=opts.thumbnail_size,
        labels=labels,
        max_open=opts.max_open_slides,
        seed=cfg.train.seed,
    )
    if labels is not None:
        ds.classes = list(labels)
    return ds


class PathologyDomain(Domain):
    """Whole-slide images (OpenSlide), MPP-aware tissue tiles, stain tools, slide embeddings and MIL.

    Data (``data.path``): a folder of slides, one slide, a manifest CSV (``slide[,mpp][,label]``),
    or a folder of tile images (``<class>/*.png`` for tile classification, flat for pretraining).

    Example:
        >>> from domainfm.registry import get_domain
        >>> get_domain("pathology").name
        'pathology'
    """

    name = "pathology"
    Options = PathologyOptions
    custom_tasks = ("mil",)

    @dataclass
    class PredictOptions:
        """``predict`` flags (slide-level MIL heatmaps); ``resume``: an interrupted scoring pass keeps the tiles
        it scored and the next ``resume`` continues it."""

        mpp: float | None = None
        batch_size: int | None = None
        min_tissue: float | None = None
        resume: bool = False

    @dataclass
    class EmbedOptions:
        """``embed`` flags: tiling of slides without the card's values, and I/O."""

        mpp: float | None = None
        min_tissue: float | None = None
        coords_dir: str | None = None
        batch_size: int | None = None
        num_workers: int | None = None
        overwrite: bool = False
        target_mpp: float | None = None
        tile_size: int | None = None

    def spatial_dims(self, cfg) -> int:
        """Tiles are 2D."""
        return 2

    # ---- data -------------------------------------------------------------------------------
    def transform(self, cfg, train: bool) -> TileTransform:
        """The tile transform of ``cfg`` (normalization, Macenko, and for training flips + HED jitter)."""
        opts = cfg.options
        return TileTransform(
            _img_size(cfg),
            mean=_floats3(opts.mean, "mean"),
            std=_floats3(opts.std, "std"),
            macenko=_macenko(opts),
            train=train,
            stain_sigma=opts.hed_sigma if (train and opts.stain_augment) else 0.0,
        )

    def dataset(self, cfg, split: str):
        """Tiles of slides (``SlideTileDataset``) or of a tile folder (``TileFolderDataset``); ``cfg`` is read,
        never changed."""
        path = cfg.data.val_path if split in ("val", "test") and cfg.data.val_path else cfg.data.path
        if path is None:
            raise ConfigError("data.path is required for the pathology domain (slides, a manifest CSV or tiles)")
        transform = self.transform(cfg, split in ("pretrain", "train"))
        if is_tile_folder(path):
            return _tile_folder_dataset(cfg, split, path, transform)
        return _slide_dataset(cfg, split, path, transform)

    def augment(self, cfg) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """Contrastive views: random resized crop, flips, 90° rotations and HED stain jitter.

        Works on normalized tiles (un-normalizes, jitters in RGB, re-normalizes); all randomness
        comes from the generator.
        """
        opts = cfg.options
        mean = torch.tensor(_floats3(opts.mean, "mean")).view(3, 1, 1)
        std = torch.tensor(_floats3(opts.std, "std")).view(3, 1, 1)
        sigma = float(opts.hed_sigma) * 2 if opts.stain_augment else 0.0
        return make_view_augment(mean, std, sigma)

    def multicrop(self, cfg, img_size, local_size):
        """Self-distillation crops at the tiles' MPP (no zoom) with HED stain jitter (see views.py)."""
        mean, std = (torch.tensor(_floats3(getattr(cfg.options, k), k)).view(3, 1, 1) for k in ("mean", "std"))
        return multicrop_for(cfg, mean, std, img_size, local_size)

    def encoder_kwargs(self, cfg, dataset=None) -> dict:
        return {
            "patch_embed": cfg.model.patch_embed or "2d",
            "img_size": _img_size(cfg),
            "patch_size": cfg.model.patch_size,
            "in_chans": 3,
        }

    def preprocessing(self, cfg, dataset=None) -> dict:
        """Target MPP, tile size, model input size, normalization and Macenko reference, for the card."""
        opts = cfg.options
        size = _img_size(cfg)
        norm = _macenko(opts)
        return {
            "kind": "tiles",
            "target_mpp": float(opts.target_mpp),
            "tile_size": int(opts.tile_size),
            "img_size": size,
            "input_mpp": float(opts.target_mpp) * opts.tile_size / size,
            "min_tissue": float(opts.min_tissue),
            "thumbnail_size": int(opts.thumbnail_size),
            "mean": _floats3(opts.mean, "mean"),
            "std": _floats3(opts.std, "std"),
            "macenko": norm.to_dict() if norm is not None else None,
            "stain_augment": bool(opts.stain_augment),
            "hed_sigma": float(opts.hed_sigma),
            "tissue_detection": "otsu(saturation)+closing+small-object removal on a thumbnail",
        }

    def export_input(self, card: dict) -> dict:
        """An exported model takes RGB tiles in 0..255 at the card's input MPP; the mean/std normalisation is
        done inside the graph (a Macenko reference, when the card has one, is applied before)."""
        pre = card.get("preprocessing") or {}
        mean = [255.0 * float(v) for v in pre.get("mean", IMAGENET_MEAN)]
        std = [255.0 * float(v) for v in pre.get("std", IMAGENET_STD)]
        size = int(pre.get("img_size", pre.get("tile_size", 224)))
        stain = ", Macenko-normalised to the card's reference first" if pre.get("macenko") else ""
        return {
            "channels": ["R", "G", "B"],
            "pixels": f"RGB values 0..255 of a {size} px tile at {pre.get('input_mpp')} µm/px{stain}",
            "window": [size, size],
            "normalization": {
                "mean": mean,
                "std": std,
                "clip": None,
                "nan_to_zero": False,
                "text": "x / 255, then (x - mean) / std per channel",
            },
            "mpp": pre.get("input_mpp"),
            "target_mpp": pre.get("target_mpp"),
            "tile_size": pre.get("tile_size"),
            "macenko": pre.get("macenko"),
        }

    def preprocessor(self, card: dict) -> Callable[[Any], torch.Tensor]:
        """From a card: tile image (path, PIL image, ``H x W x 3`` uint8 array) -> ``3 x S x S`` tensor."""
        transform = transform_from_preprocessing(card.get("preprocessing") or {})
        return TilePreprocessor(transform)

    # ---- downstream -------------------------------------------------------------------------
    def head(self, task: str, encoder, num_classes: int, cfg):
        """``mil``: a :class:`~.mil.GatedABMIL` over tile embeddings; other tasks: the core's heads."""
        if task == "mil":
            hidden = int(cfg.options.mil_hidden)
            return GatedABMIL(encoder.embed_dim, num_classes, hidden_dim=hidden, attn_dim=max(8, hidden // 2))
        return super().head(task, encoder, num_classes, cfg)

    def finetune_task(self, cfg, checkpoint: Path, **kwargs) -> Path:
        """``task: mil``: slide classification from tile features (ABMIL + mean-pool baseline).

        ``data.path``: a folder of feature files from ``embed``, or slides (embedded first, into
        ``<out>/features``). ``labels`` (kwarg or option): CSV ``slide,label[,split]``.
        """
        opts = cfg.options
        labels = require_labels(kwargs.get("labels") or opts.labels)
        data = kwargs.get("data") or cfg.data.path
        if data is None:
            raise ConfigError("task mil needs data.path: the features folder written by `domainfm embed`, or slides")
        data = Path(data)
        model = domainfm.load(checkpoint)
        if data.is_dir() and find_feature_files(data):
            features = data
        else:
            features = Path(cfg.out) / "features"
            pre = dict(model.card.get("preprocessing") or {})
            embed_slides(
                model,
                data,
                features,
                pre,
                mpp=opts.mpp,
                batch_size=cfg.train.batch_size,
                num_workers=cfg.data.num_workers,
                coords_dir=opts.coords_dir,
            )
        card = {
            k: v
            for k, v in model.card.items()
            if k not in ("format", "step", "task", "num_classes", "classes", "metrics", "mil")
        }
        card["config"] = cfg.to_dict()
        card["source_checkpoint"] = str(checkpoint)
        card["features"] = str(features)
        return run_mil(
            features,
            labels,
            Path(cfg.out),
            epochs=opts.mil_epochs,
            lr=opts.mil_lr,
            hidden_dim=opts.mil_hidden,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.train.seed,
            heatmaps=opts.heatmaps,
            thumbnail_size=opts.thumbnail_size,
            card=card,
            encoder_tensors=load_tensors(checkpoint),
        )

    def embed(self, model, data, out, **kwargs) -> Path:
        """Every tissue tile of every slide of ``data`` embedded; one ``<slide>.h5`` per slide in ``out``
        (features + level-0 coordinates); resumable (finished slides are skipped). For a folder of
        tile images: one ``embeddings.npz`` (embeddings, labels, paths) via the core's default.

        Keyword arguments: ``mpp`` (override), ``min_tissue``, ``coords_dir``, ``batch_size``,
        ``num_workers``, ``overwrite``; ``target_mpp``/``tile_size`` override the card (with a warning).
        """

        accept_options(
            kwargs,
            {
                k: k
                for k in (
                    "mpp",
                    "min_tissue",
                    "coords_dir",
                    "batch_size",
                    "num_workers",
                    "overwrite",
                    "target_mpp",
                    "tile_size",
                )
            },
            "embed",
        )
        if is_tile_folder(data):  # a folder of tile images: one embedding per tile, in one file
            out = Path(out)
            target = out if out.suffix in (".npz", ".h5", ".hdf5") else out / "embeddings.npz"
            check_output(target, [data], what="embed out")
            return super().embed(model, data, target, batch_size=int(kwargs.get("batch_size") or 32))
        check_output(out, [data], what="embed out", folder=True, resumable=True)  # before embedding any slide
        replace = existing_output(out, [data], resumable=True) == "overwrite"  # exist_ok=True: every slide again
        pre = dict((getattr(model, "card", None) or {}).get("preprocessing") or {})
        for key in ("target_mpp", "tile_size"):
            if kwargs.get(key) is not None and kwargs[key] != pre.get(key):
                warnings.warn(
                    f"embedding with {key}={kwargs[key]} while the encoder was pretrained with "
                    f"{pre.get(key)}: features may transfer worse",
                    stacklevel=2,
                )
                pre[key] = kwargs[key]
        if Path(out).suffix.lower() in (".npz", ".h5", ".hdf5", ".csv", ".json"):
            raise ConfigError(
                f"{out}: slides are embedded into a folder (one <slide>.h5 per slide plus index.csv); "
                f"give a folder path such as {Path(out).with_suffix('')}"
            )
        embed_slides(
            model,
            data,
            out,
            pre,
            mpp=kwargs.get("mpp"),
            min_tissue=kwargs.get("min_tissue"),
            batch_size=int(kwargs.get("batch_size") or 64),
            num_workers=int(kwargs.get("num_workers") or 0),
            coords_dir=kwargs.get("coords_dir"),
            overwrite=bool(kwargs.get("overwrite", False)) or replace,
        )
        return Path(out)

    def predict(self, model, input_path, out_path, **kwargs) -> Path:
        """Slide-level prediction with a MIL checkpoint: heatmap PNG at ``out_path`` (``.png``; else a
        folder) plus ``<slide>.tiles.csv`` and ``<slide>.prediction.json`` next to it."""
        options = accept_options(
            kwargs,
            {"mpp": "mpp", "batch_size": "batch_size", "min_tissue": "min_tissue", "resume": "resume"},
            "predict",
        )
        return predict_slide(model, input_path, out_path, **options)

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
        """Prediction for a tile classifier trained on tiles held in memory with an MPP (an ``arrays`` card with
        a pathology ``geometry``): the slide's tissue tiles at the training MPP and size, normalised by the
        model's own statistics, scored, and written as heatmap PNG + tile CSV + JSON (see
        :func:`.predict.predict_slide`)."""
        if not isinstance(input, (str, Path)):
            raise DataError(
                None,
                f"cannot predict on a {type(input).__name__}: this model was trained on {geometry.get('from')}; "
                "give a slide file, or tiles as an array",
            )
        record = slide_record(input, geometry, model.card)
        transform = NormalisedTiles(record["img_size"], normalise)
        return predict_slide(
            model, input, out_path, batch_size=batch_size or 64, preprocessing=record, transform=transform
        )

    def write(self, prediction, sample: dict, path) -> Path:
        """Write tile scores of one slide (``prediction``: N scores; ``sample``: coords, size0, path) as
        heatmap PNG + CSV."""
        path = Path(path)
        scores = np.asarray(prediction, np.float64).reshape(-1)
        coords = np.asarray(sample["coords"])
        write_tile_scores(path.with_suffix(".csv"), coords, int(sample["size0"]), {"score": scores})
        return write_heatmap(sample["path"], coords, int(sample["size0"]), scores, path.with_suffix(".png"))

    def example(self, folder: Path) -> DomainExample:
        """Small real files and a tiny recipe (see :func:`.synthetic.write_example`)."""
        return write_example(folder)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        return run_demo(Path(out_dir), quick=quick)


class TilePreprocessor:
    """Callable tile -> model-ready tensor, rebuilt from a card (see :meth:`PathologyDomain.preprocessor`).

    Example:
        >>> import numpy as np
        >>> pre = TilePreprocessor(TileTransform(32))
        >>> pre(np.zeros((64, 64, 3), np.uint8)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, transform: TileTransform):
        self.transform = transform

    def __call__(self, item) -> torch.Tensor:

        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.suffix.lower() in SLIDE_SUFFIXES and path.suffix.lower() not in (".tif", ".tiff"):
                raise DataError(
                    path,
                    "is a whole slide; use domain.embed / `domainfm embed` for slides "
                    "(the preprocessor takes one tile)",
                )
            try:
                with Image.open(path) as im:
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    rgb = np.asarray(Image.alpha_composite(bg, im).convert("RGB"))
            except Exception as exc:
                raise DataError(path, f"cannot read the tile image ({exc})") from None
        elif isinstance(item, Image.Image):
            rgb = np.asarray(item.convert("RGB"))
        elif isinstance(item, torch.Tensor):
            arr = item.detach().cpu()
            if arr.ndim == 3 and arr.shape[0] == 3:
                arr = arr.permute(1, 2, 0)
            arr = arr.numpy()
            rgb = (
                (arr * 255).clip(0, 255).astype(np.uint8)
                if arr.dtype != np.uint8 and arr.max() <= 1.0
                else arr.astype(np.uint8)
            )
        else:
            rgb = np.asarray(item)
            if rgb.dtype != np.uint8:
                rgb = (
                    (rgb * 255).clip(0, 255).astype(np.uint8) if rgb.max() <= 1.0 else rgb.clip(0, 255).astype(np.uint8)
                )
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise DataError(None, f"expected an H x W x 3 RGB tile, got shape {rgb.shape}")
        return self.transform(rgb)
