"""The remote-sensing domain plugin: GeoTIFF scenes of any sensor in, georeferenced predictions out.

Example (Python API):
    >>> import tempfile
    >>> import domainfm
    >>> from domainfm.remote_sensing.synthetic import write_scene
    >>> scenes = Path(tempfile.mkdtemp())
    >>> for k in range(2):
    ...     _ = write_scene(scenes / f"scene{k}.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(32, 32), seed=k)
    >>> ckpt = domainfm.pretrain({"domain": "remote_sensing", "out": str(scenes / "run"),
    ...     "data": {"path": str(scenes), "img_size": 16,
    ...              "options": {"sensor": "sentinel2", "bands": "B02,B03,B04,B08"}},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 2, "progress": False, "tensorboard": False}})
    >>> domainfm.load(ckpt).card["preprocessing"]["bands"]      # the bands the model reads, per sensor
    {'sentinel2_l2a': ['B02', 'B03', 'B04', 'B08']}
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine
from torch import nn

from domainfm.data.augment import default_augment
from domainfm.decisions import decide
from domainfm.domain import Domain, DomainExample
from domainfm.errors import ConfigError, DataError
from domainfm.recipes import DataFacts
from domainfm.runconfig import config_from_card

from .datasets import RasterChipDataset, discover_items, split_items
from .defaults import infer_sensor, sensor_from_band_names
from .demo import run_demo
from .heads import build_head
from .io import Grid, Scene, write_geotiff
from .predict import predict_scene, scene_input, scene_record
from .sensors import card_sensor, get_sensor, parse_band_list, sensor_to_dict
from .stats import normalize, stats_arrays
from .synthetic import write_example
from .views import multicrop_for

log = logging.getLogger("domainfm.remote_sensing")


@dataclass
class RemoteSensingOptions:
    """``data.options`` of the remote-sensing domain (each is also a CLI flag: ``--chip-size 64``).

    Attributes:
        sensor: sensor name, or several (``"sentinel2,landsat8"``: one sub-folder or manifest
            ``sensor`` value per sensor; batches hold one sensor each). Unset: read from the band
            descriptions of the first raster (an error when they do not identify the bands).
        bands: band names (``"B02,B03,B04,B08"`` or a list); with several sensors a mapping
            ``{sensor: [bands]}``; empty = all of the sensor's bands.
        sensors_file: YAML with user-defined sensors (see :mod:`.sensors`).
        layout: ``auto`` | ``scenes`` | ``classes`` (EuroSAT-style folders) | ``manifest`` (CSV).
        chip_size: chip side in pixels of the scene grid (default ``data.img_size``); chips are
            resampled to ``data.img_size`` when they differ.
        chips_per_scene: random chips per scene per epoch.
        sampling: ``auto`` (``whole`` for labelled tiles, else ``random``) | ``random`` | ``grid`` | ``whole``.
        grid_overlap: overlap in pixels between grid chips.
        resolution: target pixel size (CRS units) for multi-resolution scenes; default the finest band.
        resampling: ``bilinear`` | ``nearest`` | ``cubic`` | ``average`` for bands read off-grid.
        min_valid: chips with a smaller valid-pixel fraction are skipped (all-nodata always are).
        stats: ``auto`` (computed from sampled chips of your data) | ``none`` | a JSON file |
            ``{sensor: {band: [mean, std]}}``.
        stats_chips: chips per sensor used to compute ``auto`` statistics.
        label_sep: separator of several labels in a manifest's ``label`` column (multi-label).
        ignore_index: mask value ignored by the loss (mask nodata, pixels outside the split region).
        predict_overlap: tile overlap fraction in :meth:`RemoteSensingDomain.predict`.
        predict_batch_size: tiles per forward pass in predict.
        probabilities: predict writes class probabilities (float32, one band per class) instead of classes.
        classes: names of the mask classes (segmentation; index order), e.g. ``forest,water,urban``.
        max_pixels: predict refuses scenes larger than this (default 2e9 pixels); raise it on purpose.
    """

    sensor: str | list[str] | None = None
    bands: list[str] | dict[str, Any] | str | None = None
    sensors_file: str | None = None
    layout: str = "auto"
    chip_size: int | None = None
    chips_per_scene: int = 16
    sampling: str = "auto"
    grid_overlap: int = 0
    resolution: float | None = None
    resampling: str = "bilinear"
    min_valid: float = 0.0
    stats: str | dict[str, Any] | None = "auto"
    stats_chips: int = 32
    label_sep: str = ";"
    ignore_index: int = -1
    predict_overlap: float = 0.25
    predict_batch_size: int = 8
    probabilities: bool = False
    classes: list[str] | str | None = None
    max_pixels: int | None = None

    def __post_init__(self):
        checks = (
            (self.chip_size is None or self.chip_size >= 1, "chip_size", "a positive number of pixels"),
            (self.chips_per_scene >= 1, "chips_per_scene", ">= 1"),
            (self.grid_overlap >= 0, "grid_overlap", ">= 0 pixels"),
            (0.0 <= self.min_valid <= 1.0, "min_valid", "a fraction in [0, 1]"),
            (self.stats_chips >= 1, "stats_chips", ">= 1"),
            (0.0 <= self.predict_overlap < 1.0, "predict_overlap", "a fraction in [0, 1)"),
            (self.predict_batch_size >= 1, "predict_batch_size", ">= 1"),
            (self.resolution is None or self.resolution > 0, "resolution", "a positive pixel size"),
        )
        for ok, key, what in checks:
            if not ok:
                raise ConfigError(f"data.options.{key} must be {what}, got {getattr(self, key)!r}")


def _sensor_list(opts: RemoteSensingOptions) -> list[str]:
    names = parse_band_list(opts.sensor) if isinstance(opts.sensor, (str, list)) else []
    if not names:
        raise ConfigError("data.options.sensor is empty; name a sensor (e.g. sentinel2, landsat8, naip)")
    return names


def _img_size(cfg) -> int:
    size = cfg.data.img_size
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConfigError(f"data.img_size {size}: remote sensing chips are square; give one integer")
        size = size[0]
    return int(size)


class RemoteSensingDomain(Domain):
    """Multispectral / SAR GeoTIFF scenes from any sensor (see :class:`RemoteSensingOptions`).

    Example:
        >>> from domainfm.registry import get_domain
        >>> get_domain("remote_sensing").name
        'remote_sensing'
    """

    name = "remote_sensing"
    Options = RemoteSensingOptions
    needs_data_path = True

    @dataclass
    class PredictOptions:
        """``predict`` flags: the scene's sensor (mixed-sensor models), probability bands, tiling."""

        sensor: str | None = None
        probabilities: bool = False
        predict_overlap: float | None = None
        predict_batch_size: int | None = None
        max_pixels: int | None = None

    def __init__(self):
        self._stats_cache: dict[str, dict] = {}

    # ---- options -> sensors/bands ---------------------------------------------------------------
    def _opts(self, cfg) -> RemoteSensingOptions:
        opts = cfg.options
        if opts.sensor is not None:
            return opts
        if cfg.data.path is not None:
            # no sensor declared: the file's band descriptions decide (recorded in the config -> card)
            sensor, bands, text = infer_sensor(cfg.data.path)
        elif opts.bands and not isinstance(opts.bands, dict):
            # no file to read (e.g. importing weights): the sensor whose band names these are
            sensor, bands, text = sensor_from_band_names(parse_band_list(opts.bands))
        else:
            return opts
        decide("sensor", text)
        cfg.bind_options(dataclasses.replace(opts, sensor=sensor, bands=opts.bands or bands))
        return cfg.options

    def sensors_and_bands(self, cfg) -> dict[str, list[str]]:
        """``{canonical sensor name: [band names]}`` for the configured sensors (validates names)."""
        opts = self._opts(cfg)
        out = {}
        names = _sensor_list(opts)
        for s in names:
            sensor = get_sensor(s, opts.sensors_file)
            req = opts.bands
            if isinstance(req, dict):
                req = next((v for k, v in req.items() if get_sensor(k, opts.sensors_file).name == sensor.name), None)
            elif len(names) > 1 and req:
                # one list for several sensors: keep the bands each sensor has
                keep = []
                for b in parse_band_list(req):
                    try:
                        keep.append(sensor.band(b).name)
                    except ConfigError:
                        pass
                if not keep:
                    raise ConfigError(f"none of the bands {parse_band_list(req)} exist for sensor {sensor.name!r}")
                req = keep
            out[sensor.name] = [b.name for b in sensor.select(req)]
        return out

    # ---- data -------------------------------------------------------------------------------------
    def dataset(self, cfg, split: str) -> RasterChipDataset:
        """Chips/tiles for ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``).

        Without a ``split`` column or ``data.val_path``, items are split by a stable hash of their
        path (``data.val_fraction``); fewer than 4 scenes are split by rows. Statistics are resolved
        here (see :class:`RemoteSensingOptions` ``stats``) and recorded in ``data.options.stats``.

        Example:
            >>> import tempfile
            >>> from domainfm.registry import get_domain
            >>> from domainfm.runconfig import load_config
            >>> domain = get_domain("remote_sensing")
            >>> cfg = load_config(domain.example(tempfile.mkdtemp()).config)   # 3 scenes, 32 px chips
            >>> ds = domain.dataset(cfg, "pretrain")
            >>> ds[0]["image"].shape
            torch.Size([4, 32, 32])
        """
        opts = self._opts(cfg)
        bands = self.sensors_and_bands(cfg)
        sensors = list(bands)
        path = cfg.data.path
        if split in ("val", "test") and cfg.data.val_path:
            path = cfg.data.val_path
        if path is None:
            raise ConfigError("data.path is required for domain 'remote_sensing'")
        items, classes, kind = discover_items(path, sensors, opts.layout, opts.sensors_file, opts.label_sep)
        if split == "embed":  # every item, deterministic chips; labels kept when there are any
            items = split_items(items, "pretrain", 0.0)
        elif split in ("val", "test") and cfg.data.val_path:
            items = (
                split_items(items, "pretrain", 0.0)
                if not any(it.split for it in items)
                else split_items(items, split, 0.0)
            )
        elif split == "train" and cfg.data.val_path:
            items = split_items(items, "pretrain", 0.0)
        else:
            items = split_items(items, split, cfg.data.val_fraction, cfg.train.seed)
        if not items:
            raise DataError(path, f"no scenes/tiles for split {split!r}")
        task = cfg.finetune.task
        labelled = split in ("train", "val", "test")
        if labelled and task in ("classification", "multilabel") and not any(it.label is not None for it in items):
            raise DataError(path, f"task {task} needs labels: class sub-folders or a manifest 'label' column")
        if labelled and task == "classification" and any(isinstance(it.label, list) for it in items):
            raise DataError(path, 'the labels name several classes per image: use task="multilabel"')
        if labelled and task == "segmentation" and not any(it.mask is not None for it in items):
            raise DataError(
                path, "task segmentation needs masks: a manifest with a 'mask' column (rasters on the image grids)"
            )
        for it in items:
            if split == "pretrain" or (labelled and task == "segmentation"):
                it.label = None
            if not (labelled and task == "segmentation"):
                it.mask = None
        sampling = opts.sampling
        if sampling == "auto":
            if split == "embed":
                sampling = "whole" if kind == "classes" or any(it.label is not None for it in items) else "grid"
            else:
                sampling = "whole" if (labelled and task in ("classification", "multilabel")) else "random"
        img = _img_size(cfg)
        chip = opts.chip_size or img
        multilabel = any(isinstance(it.label, list) for it in items) or (labelled and task == "multilabel")
        ds = RasterChipDataset(
            items,
            bands,
            chip,
            img,
            sampling,
            opts.chips_per_scene,
            opts.grid_overlap,
            None,
            cfg.train.seed,
            opts.min_valid,
            classes,
            multilabel,
            opts.ignore_index,
            opts.resolution,
            opts.resampling,
            opts.sensors_file,
        )
        ds.kind = kind
        if task == "segmentation" and opts.classes:
            ds.classes = ds.mask_classes = parse_band_list(opts.classes)
        ds.stats = self._resolve_stats(cfg, ds, split)
        return ds

    def data_facts(self, cfg) -> DataFacts:
        """Recipe facts from the scenes' grids (the first 32 read): the smallest scene side decides the chip
        size (``data.img_size``); bands come from the sensor, so the patch embed takes any band set."""
        opts = self._opts(cfg)
        sensors = list(self.sensors_and_bands(cfg))
        items, _, _ = discover_items(cfg.data.path, sensors, opts.layout, opts.sensors_file, opts.label_sep)
        if not items:
            raise DataError(cfg.data.path, "no scenes or tiles found for pretraining")
        bands = self.sensors_and_bands(cfg)
        grids = [
            Scene(it.path, it.sensor, bands.get(it.sensor), opts.resolution, opts.resampling, opts.sensors_file).grid
            for it in items[:32]
        ]
        side = min(min(g.height, g.width) for g in grids)
        return DataFacts(2, (side, side), None, len(items), resizable=opts.chip_size is None, what="scenes")

    def _resolve_stats(self, cfg, ds: RasterChipDataset, split: str) -> dict | None:
        opts = self._opts(cfg)
        st = opts.stats
        if st is None or (isinstance(st, str) and st.lower() == "none"):
            return None
        if isinstance(st, str) and st.lower() != "auto":
            p = Path(st)
            if not p.is_file():
                raise ConfigError(f"data.options.stats: {st} is neither auto, none nor an existing JSON file")
            try:
                st = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(p, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        given = st if isinstance(st, dict) else {}
        # statistics given (e.g. from the pretraining card) are reused; missing bands are computed
        need = {s: [b for b in bl if b not in given.get(s, {})] for s, bl in ds.bands.items()}
        if any(need.values()):
            key = json.dumps(
                [
                    str(cfg.data.path),
                    ds.bands,
                    ds.chip_size,
                    opts.stats_chips,
                    cfg.train.seed,
                    opts.resolution,
                    {s: sorted(given.get(s, {})) for s in ds.bands},
                ],
                default=str,
            )
            if key not in self._stats_cache:
                src = ds if split == "pretrain" else self._stats_dataset(cfg, ds)
                self._stats_cache[key] = src.compute_stats(opts.stats_chips, cfg.train.seed)
                log.info("band statistics from %s: %s", cfg.data.path, self._stats_cache[key])
            computed = self._stats_cache[key]
            merged = {s: dict(given.get(s, {})) for s in set(given) | set(computed)}
            for s, bl in need.items():
                for b in bl:
                    merged.setdefault(s, {})[b] = computed[s][b]
            st = merged
        # the resolved statistics travel with the config (and so into the checkpoint card)
        cfg.data.options["stats"] = st
        return st

    def _stats_dataset(self, cfg, ds: RasterChipDataset) -> RasterChipDataset:
        """Statistics for fine-tuning without pretraining stats: random chips of the training items."""
        opts = self._opts(cfg)
        items, classes, kind = discover_items(
            cfg.data.path, list(ds.bands), opts.layout, opts.sensors_file, opts.label_sep
        )
        items = split_items(items, "pretrain", 0.0)
        for it in items:
            it.label, it.mask = None, None
        sampling = "whole" if ds.sampling == "whole" else "random"
        return RasterChipDataset(
            items,
            ds.bands,
            ds.chip_size,
            ds.img_size,
            sampling,
            max(1, opts.chips_per_scene),
            0,
            None,
            cfg.train.seed,
            opts.min_valid,
            [],
            False,
            opts.ignore_index,
            opts.resolution,
            opts.resampling,
            opts.sensors_file,
        )

    def encoder_kwargs(self, cfg, dataset=None) -> dict:
        """The wavelength-conditioned patch embed (any band set); ``in_chans`` for a fixed ``2d`` embed."""
        bands = self.sensors_and_bands(cfg)
        kind = cfg.model.patch_embed or "wavelength"
        if kind not in ("wavelength", "2d"):
            raise ConfigError(f"model.patch_embed {kind!r}: remote sensing uses wavelength (or 2d)")
        if kind == "2d" and len({len(v) for v in bands.values()}) > 1:
            raise ConfigError("model.patch_embed 2d needs the same number of bands for every sensor; use wavelength")
        return {
            "patch_embed": kind,
            "img_size": _img_size(cfg),
            "patch_size": cfg.model.patch_size,
            "in_chans": len(next(iter(bands.values()))),
        }

    def augment(self, cfg):
        """Contrastive views: random resized crop, flips, per-band intensity jitter, noise."""
        return default_augment(spatial_dims=2)

    def multicrop(self, cfg, img_size, local_size):
        """Self-distillation crops that keep every band, with no per-band jitter (see views.py)."""
        return multicrop_for(cfg, img_size, local_size)

    def preprocessing(self, cfg, dataset=None) -> dict:
        """What the card records: sensors with their bands/wavelengths, band statistics, chip size."""
        opts = self._opts(cfg)
        bands = self.sensors_and_bands(cfg)
        stats = getattr(dataset, "stats", None)
        if stats is None and isinstance(opts.stats, dict):
            stats = opts.stats
        sensors = {}
        for s, bl in bands.items():
            sensor = get_sensor(s, opts.sensors_file)
            sensors[s] = sensor_to_dict(sensor, [sensor.band(b) for b in bl])
        first = next(iter(bands))
        wl = [b["embed_wavelength"] or b["wavelength"] for b in sensors[first]["bands"]]
        return {
            "sensors": sensors,
            "bands": bands,
            "stats": stats,
            "wavelengths": wl,
            "img_size": _img_size(cfg),
            "chip_size": opts.chip_size or _img_size(cfg),
            "resolution": opts.resolution,
            "resampling": opts.resampling,
            "ignore_index": opts.ignore_index,
            "classes": list(getattr(dataset, "classes", []) or []),
            "predict_overlap": opts.predict_overlap,
        }

    def effective_preprocessing(self, card: dict) -> dict:
        """The card's preprocessing record, rebuilt from the card's config when that config selects
        other bands (a fine-tuned card may carry its parent's record)."""
        pre = dict(card.get("preprocessing") or {})
        cfg_opts = ((card.get("config") or {}).get("data") or {}).get("options") or {}
        if not pre.get("sensors") or not cfg_opts:
            return pre
        try:
            cfg = config_from_card(card, check_paths=False)
            if self.sensors_and_bands(cfg) == pre.get("bands"):
                return pre
            fresh = self.preprocessing(cfg, None)
        except ConfigError as exc:  # e.g. a user sensors file that is not on this machine
            log.debug("using the card's preprocessing record as is (%s)", exc)
            return pre
        fresh["classes"] = pre.get("classes") or fresh.get("classes")
        return fresh

    def preprocessor(self, card: dict):
        """``fn(path_or_array, sensor=None) -> C x H x W`` tensor normalised as in pretraining.

        A path is read whole (tiles; big scenes go through :meth:`predict`), an array is taken as
        ``C x H x W`` in the card's band order.
        """
        pre = self.effective_preprocessing(card)
        if not pre.get("sensors"):
            raise DataError(None, "checkpoint card has no remote-sensing preprocessing record")

        def preprocess(x, sensor: str | None = None) -> torch.Tensor:
            sensor_obj, bands = card_sensor(pre, sensor)
            stats = (pre.get("stats") or {}).get(sensor_obj.name)
            if isinstance(x, (str, Path)):
                scene = Scene(x, sensor_obj, bands, pre.get("resolution"), pre.get("resampling", "bilinear"))
                data, valid = scene.read_all()
            else:
                data = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
                if data.ndim != 3 or data.shape[0] != len(bands):
                    raise DataError(
                        None, f"expected a {len(bands)} x H x W array ({', '.join(bands)}), got shape {data.shape}"
                    )
                valid = np.isfinite(data).all(0)
                data = np.where(np.isfinite(data), data, 0.0).astype(np.float32)
            if stats:
                mean, std = stats_arrays(stats, bands, f" of sensor {sensor_obj.name} in the card")
                data = normalize(data, valid, mean, std)
            return torch.from_numpy(np.ascontiguousarray(data))

        return preprocess

    def export_input(self, card: dict) -> dict:
        """An exported model takes the card's first sensor's bands as read (scale/offset applied, nodata as NaN);
        the per-band statistics are applied inside the graph (wavelengths are fixed at export).

        Example:
            >>> # get_domain("remote_sensing").export_input(card)["bands"] -> ['B02', 'B03', 'B04', 'B08']
        """
        pre = self.effective_preprocessing(card)
        if not pre.get("sensors"):
            raise DataError(None, "checkpoint card has no remote-sensing preprocessing record")
        sensor, bands = card_sensor(pre, None)
        stats = (pre.get("stats") or {}).get(sensor.name)
        mean, std = stats_arrays(stats, bands) if stats else (np.zeros(len(bands)), np.ones(len(bands)))
        chip, img = int(pre.get("chip_size") or pre["img_size"]), int(pre.get("img_size") or 0)
        resized = f", chips of {chip} px resized to {img} px" if img and img != chip else ""
        return {
            "channels": list(bands),
            "pixels": f"{sensor.name} band values as read (file scale/offset applied), nodata as NaN{resized}",
            "window": [img or chip] * 2,
            "overlap": pre.get("predict_overlap", 0.25),
            "normalization": {
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
                "clip": None,
                "nan_to_zero": True,
                "text": "per-band (x - mean) / std; NaN (nodata) -> 0",
            },
            "sensor": sensor.name,
            "bands": list(bands),
            "wavelengths_um": [float(v) for v in pre.get("wavelengths") or []],
            "resolution": pre.get("resolution"),
            "chip_size": chip,
        }

    # ---- downstream -------------------------------------------------------------------------------
    def head(self, task: str, encoder: nn.Module, num_classes: int, cfg) -> nn.Module:
        """UPerNet-style decoder on 4 intermediate layers (segmentation) or a pooled head (classification)."""
        return build_head(task, encoder.embed_dim, encoder.depth, num_classes, cfg.finetune.head_options)

    def write(self, prediction, sample: dict, path) -> Path:
        """Write ``prediction`` (``K x H x W`` or ``H x W``) as a GeoTIFF on the sample's grid."""
        meta = sample.get("meta", sample)
        arr = prediction.detach().cpu().numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)
        grid = meta.get("grid")
        if grid is None:
            crs = CRS.from_wkt(meta["crs"]) if meta.get("crs") else None
            grid = Grid(crs, Affine(*meta["transform"][:6]), arr.shape[-1], arr.shape[-2])
        return write_geotiff(path, arr, grid)

    def predict(
        self,
        model,
        input_path,
        out_path,
        sensor: str | list | None = None,
        probabilities: bool = False,
        predict_overlap: float | None = None,
        predict_batch_size: int | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> Path:
        """Tiled inference over a whole scene with overlap blending; the output GeoTIFF has the
        input's CRS, transform and size (see :func:`.predict.predict_scene`).

        Example:
            >>> import tempfile, warnings
            >>> import domainfm
            >>> from domainfm.registry import get_domain
            >>> folder = Path(tempfile.mkdtemp())
            >>> example = get_domain("remote_sensing").example(folder)
            >>> example.config["model"]["depth"] = 1
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     seg = domainfm.finetune(domainfm.pretrain(example.config), task="segmentation", out=folder / "seg",
            ...                             overrides=["train.steps=2"])
            validation: dice=..., miou=...
            >>> out = domainfm.predict(seg, folder / "scene0.tif", folder / "pred.tif")
            >>> example.same_geometry(folder / "scene0.tif", out)    # same CRS, transform and size as the scene
            True
        """
        if kwargs:
            raise ConfigError(
                "predict takes sensor, probabilities, predict_overlap, predict_batch_size and max_pixels; "
                f"got {', '.join(kwargs)} (preprocessing comes from the checkpoint card)"
            )
        if isinstance(sensor, list):
            if len(sensor) != 1:
                raise ConfigError(f'predict: give one sensor (sensor="name"), got {sensor}')
            sensor = sensor[0]
        return predict_scene(
            model,
            input_path,
            out_path,
            self.effective_preprocessing(model.card),
            sensor=sensor,
            probabilities=bool(probabilities),
            overlap=predict_overlap,
            batch_size=predict_batch_size,
            max_pixels=max_pixels,
        )

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
        """Prediction for a model trained on a TorchGeo dataset held in memory (an ``arrays`` card with a
        remote-sensing ``geometry``): a GeoTIFF scene or a TorchGeo sample dict is read in the training bands
        and resolution, normalised by the model's own statistics, predicted by overlapping windows and written
        as a GeoTIFF with the input's CRS and transform (see :func:`.predict.predict_scene`)."""
        out = Path(out_path)
        out = out if out.suffix.lower() in (".tif", ".tiff") else Path(str(out) + ".tif")
        with scene_input(input, geometry) as path:
            return predict_scene(
                model,
                path,
                out,
                scene_record(path, geometry, model.card),
                probabilities=bool(probabilities),
                overlap=overlap,
                batch_size=batch_size,
                normalise=normalise,
            )

    def example(self, folder: Path) -> DomainExample:
        """Small real files and a tiny recipe (see :func:`.synthetic.write_example`)."""
        return write_example(folder)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        """Pretrain + fine-tune LULC segmentation on the eo-learn Slovenia patch (or generated scenes)."""
        return run_demo(Path(out_dir), quick)
