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

from .datasets import RasterChipDataset
from .defaults import infer_sensor, sensor_from_band_names
from .demo import run_demo
from .heads import build_head
from .io import Grid, Scene, write_geotiff
from .items import Item, discover_items, split_items
from .options import RemoteSensingOptions, img_size, sensor_list
from .predict import predict_scene
from .sample_input import scene_input, scene_record
from .sensors import card_sensor, get_sensor, parse_band_list, sensor_to_dict
from .stats import normalize, stats_arrays
from .synthetic import write_example
from .views import multicrop_for

log = logging.getLogger("domainfm.remote_sensing")


def _bands_of(opts: RemoteSensingOptions) -> dict[str, list[str]]:
    """``{canonical sensor name: [band names]}`` for the sensors of ``opts`` (validates names)."""
    out = {}
    names = sensor_list(opts)
    for s in names:
        sensor = get_sensor(s, opts.sensors_file)
        req = opts.bands
        if isinstance(req, dict):
            req = next((v for k, v in req.items() if get_sensor(k, opts.sensors_file).name == sensor.name), None)
        elif len(names) > 1 and req:
            req = _bands_it_has(sensor, parse_band_list(req))
        out[sensor.name] = [b.name for b in sensor.select(req)]
    return out


def _bands_it_has(sensor, requested: list[str]) -> list[str]:
    """One band list for several sensors: the bands ``sensor`` has (none at all is refused)."""
    keep = []
    for b in requested:
        try:
            keep.append(sensor.band(b).name)
        except ConfigError:
            pass
    if not keep:
        raise ConfigError(f"none of the bands {requested} exist for sensor {sensor.name!r}")
    return keep


def _split_path(cfg, split: str):
    """The data a split reads: ``data.val_path`` for ``val``/``test`` when given, else ``data.path``."""
    path = cfg.data.val_path if split in ("val", "test") and cfg.data.val_path else cfg.data.path
    if path is None:
        raise ConfigError("data.path is required for domain 'remote_sensing'")
    return path


def _items_of_split(items: list[Item], split: str, cfg) -> list[Item]:
    """The items of ``split``: every item for ``embed`` and for data a separate ``data.val_path`` splits (its
    own ``split`` column for val/test, when it has one); else the split column or the hash holdout."""
    if split == "embed":  # every item, deterministic chips; labels kept when there are any
        return split_items(items, "pretrain", 0.0)
    if cfg.data.val_path and split in ("val", "test") and any(it.split for it in items):
        return split_items(items, split, 0.0)
    if cfg.data.val_path and split in ("train", "val", "test"):
        return split_items(items, "pretrain", 0.0)
    return split_items(items, split, cfg.data.val_fraction, cfg.train.seed)


def _check_targets(items: list[Item], task: str, path) -> None:
    """A labelled split has what ``task`` learns from: labels (one per image for classification) or masks."""
    if task in ("classification", "multilabel") and not any(it.label is not None for it in items):
        raise DataError(path, f"task {task} needs labels: class sub-folders or a manifest 'label' column")
    if task == "classification" and any(isinstance(it.label, list) for it in items):
        raise DataError(path, 'the labels name several classes per image: use task="multilabel"')
    if task == "segmentation" and not any(it.mask is not None for it in items):
        raise DataError(
            path, "task segmentation needs masks: a manifest with a 'mask' column (rasters on the image grids)"
        )


def _keep_targets(items: list[Item], drop_labels: bool, keep_masks: bool) -> None:
    """Clear what a split does not learn from (labels for pretraining and segmentation, masks unless
    segmentation); ``items`` are this call's own (fresh from :func:`discover_items`)."""
    for it in items:
        if drop_labels or keep_masks:
            it.label = None
        if not keep_masks:
            it.mask = None


def _sampling(sampling: str, split: str, kind: str, items: list[Item], tile_labels: bool) -> str:
    """``auto`` sampling: whole tiles for labelled tiles (class folders, or image labels being learnt), a grid
    to embed scenes, random chips otherwise; any other setting as given."""
    if sampling != "auto":
        return sampling
    if split == "embed":
        return "whole" if kind == "classes" or any(it.label is not None for it in items) else "grid"
    return "whole" if tile_labels else "random"


def _given_stats(st) -> dict | str | None:
    """``data.options.stats`` read: ``None`` for none, ``"auto"``, or the ``{sensor: {band: [mean, std]}}``
    given inline or in a JSON file."""
    if st is None or (isinstance(st, str) and st.lower() == "none"):
        return None
    if not isinstance(st, str) or st.lower() == "auto":
        return st
    p = Path(st)
    if not p.is_file():
        raise ConfigError(f"data.options.stats: {st} is neither auto, none nor an existing JSON file")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(p, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


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
        """``predict`` flags: the scene's sensor (mixed-sensor models), probability bands, tiling, and ``resume``
        (an interrupted predict keeps its partial output and the next ``resume`` continues it)."""

        sensor: str | None = None
        probabilities: bool = False
        predict_overlap: float | None = None
        predict_batch_size: int | None = None
        max_pixels: int | None = None
        resume: bool = False

    def __init__(self):
        self._stats_cache: dict[str, dict] = {}

    # ---- options -> sensors/bands ---------------------------------------------------------------
    def _read_opts(self, cfg) -> RemoteSensingOptions:
        """``cfg.options`` with the sensor read from the data when none is declared (the decision printed
        once); the config itself is left as it is."""
        opts = cfg.options
        if opts.sensor is not None:
            return opts
        if cfg.data.path is not None:
            # no sensor declared: the file's band descriptions decide
            sensor, bands, text = infer_sensor(cfg.data.path)
        elif opts.bands and not isinstance(opts.bands, dict):
            # no file to read (e.g. importing weights): the sensor whose band names these are
            sensor, bands, text = sensor_from_band_names(parse_band_list(opts.bands))
        else:
            return opts
        decide("sensor", text)
        return dataclasses.replace(opts, sensor=sensor, bands=opts.bands or bands)

    def _opts(self, cfg) -> RemoteSensingOptions:
        """:meth:`_read_opts`, with an inferred sensor recorded in the config (and so in the card)."""
        opts = self._read_opts(cfg)
        if cfg.options.sensor is None and opts.sensor is not None:
            cfg.bind_options(opts)
        return opts

    def sensors_and_bands(self, cfg) -> dict[str, list[str]]:
        """``{canonical sensor name: [band names]}`` for the configured sensors (validates names)."""
        return _bands_of(self._opts(cfg))

    # ---- data -------------------------------------------------------------------------------------
    def dataset(self, cfg, split: str) -> RasterChipDataset:
        """Chips/tiles for ``split`` (``pretrain``, ``train``, ``val``, ``test``, ``embed``).

        Without a ``split`` column or ``data.val_path``, items are split by a stable hash of their
        path (``data.val_fraction``); fewer than 4 scenes are split by rows. Statistics are resolved
        here (see :class:`RemoteSensingOptions` ``stats``) and kept on the dataset (``ds.stats``); the card
        records them (:meth:`preprocessing`). The config is not changed.

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
        opts = self._read_opts(cfg)
        bands = _bands_of(opts)
        path = _split_path(cfg, split)
        items, classes, kind = discover_items(path, list(bands), opts.layout, opts.sensors_file, opts.label_sep)
        items = _items_of_split(items, split, cfg)
        if not items:
            raise DataError(path, f"no scenes/tiles for split {split!r}")
        task = cfg.finetune.task
        labelled = split in ("train", "val", "test")
        if labelled:
            _check_targets(items, task, path)
        _keep_targets(items, drop_labels=split == "pretrain", keep_masks=labelled and task == "segmentation")
        img = img_size(cfg)
        tile_labels = labelled and task in ("classification", "multilabel")
        ds = RasterChipDataset(
            items,
            bands,
            opts.chip_size or img,
            img_size=img,
            sampling=_sampling(opts.sampling, split, kind, items, tile_labels),
            chips_per_scene=opts.chips_per_scene,
            grid_overlap=opts.grid_overlap,
            seed=cfg.train.seed,
            min_valid=opts.min_valid,
            classes=classes,
            multilabel=any(isinstance(it.label, list) for it in items) or (labelled and task == "multilabel"),
            ignore_index=opts.ignore_index,
            resolution=opts.resolution,
            resampling=opts.resampling,
            sensors_file=opts.sensors_file,
        )
        ds.kind = kind
        if task == "segmentation" and opts.classes:
            ds.classes = ds.mask_classes = parse_band_list(opts.classes)
        ds.stats = self._resolve_stats(cfg, opts, ds, split)
        return ds

    def data_facts(self, cfg) -> DataFacts:
        """Recipe facts from the scenes' grids (the first 32 read): the smallest scene side decides the chip
        size (``data.img_size``); bands come from the sensor, so the patch embed takes any band set."""
        opts = self._opts(cfg)
        bands = _bands_of(opts)
        items, _, _ = discover_items(cfg.data.path, list(bands), opts.layout, opts.sensors_file, opts.label_sep)
        if not items:
            raise DataError(cfg.data.path, "no scenes or tiles found for pretraining")
        grids = [
            Scene(
                it.path,
                it.sensor,
                bands.get(it.sensor),
                resolution=opts.resolution,
                resampling=opts.resampling,
                sensors_file=opts.sensors_file,
            ).grid
            for it in items[:32]
        ]
        side = min(min(g.height, g.width) for g in grids)
        return DataFacts(2, (side, side), None, len(items), resizable=opts.chip_size is None, what="scenes")

    def _resolve_stats(self, cfg, opts: RemoteSensingOptions, ds: RasterChipDataset, split: str) -> dict | None:
        """The band statistics ``ds`` is normalised with: none, given (a dict or JSON file, e.g. from the
        pretraining card), or computed from sampled chips (``auto``, and any band the given ones lack)."""
        st = _given_stats(opts.stats)
        if st is None:
            return None
        given = st if isinstance(st, dict) else {}
        need = {s: [b for b in bl if b not in given.get(s, {})] for s, bl in ds.bands.items()}
        if not any(need.values()):
            return st
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
            src = ds if split == "pretrain" else self._stats_dataset(cfg, opts, ds)
            self._stats_cache[key] = src.compute_stats(opts.stats_chips, cfg.train.seed)
            log.info("band statistics from %s: %s", cfg.data.path, self._stats_cache[key])
        computed = self._stats_cache[key]
        merged = {s: dict(given.get(s, {})) for s in set(given) | set(computed)}
        for s, bl in need.items():
            for b in bl:
                merged.setdefault(s, {})[b] = computed[s][b]
        return merged

    def _stats_dataset(self, cfg, opts: RemoteSensingOptions, ds: RasterChipDataset) -> RasterChipDataset:
        """Statistics for fine-tuning without pretraining stats: random chips of the training items."""
        items, _, _ = discover_items(cfg.data.path, list(ds.bands), opts.layout, opts.sensors_file, opts.label_sep)
        items = split_items(items, "pretrain", 0.0)
        _keep_targets(items, drop_labels=True, keep_masks=False)
        return RasterChipDataset(
            items,
            ds.bands,
            ds.chip_size,
            img_size=ds.img_size,
            sampling="whole" if ds.sampling == "whole" else "random",
            chips_per_scene=max(1, opts.chips_per_scene),
            grid_overlap=0,
            seed=cfg.train.seed,
            min_valid=opts.min_valid,
            ignore_index=opts.ignore_index,
            resolution=opts.resolution,
            resampling=opts.resampling,
            sensors_file=opts.sensors_file,
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
            "img_size": img_size(cfg),
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
        """What the card records: sensors with their bands/wavelengths, band statistics, chip size.

        The statistics ``dataset`` resolved are also recorded in the config (``data.options.stats``), so the
        card's config, and a fine-tune started from it, normalise with the same numbers."""
        opts = self._opts(cfg)
        bands = self.sensors_and_bands(cfg)
        stats = getattr(dataset, "stats", None)
        if stats is not None:
            cfg.data.options["stats"] = stats
        elif isinstance(opts.stats, dict):
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
            "img_size": img_size(cfg),
            "chip_size": opts.chip_size or img_size(cfg),
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
                scene = Scene(
                    x, sensor_obj, bands, resolution=pre.get("resolution"), resampling=pre.get("resampling", "bilinear")
                )
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
        resume: bool = False,
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
                "predict takes sensor, probabilities, predict_overlap, predict_batch_size, max_pixels and resume; "
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
            resume=bool(resume),
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
