"""Tiled, streaming inference over a whole scene with overlap blending, written as a GeoTIFF on the
input's grid (same CRS, transform and size).

Tiles are read in windows, blended with a Gaussian importance map, and finished rows are
written as soon as no later tile can touch them: memory holds one strip of tiles, not the scene.

Example:
    >>> import tempfile, warnings
    >>> import domainfm
    >>> from domainfm.registry import get_domain
    >>> folder = Path(tempfile.mkdtemp())
    >>> example = get_domain("remote_sensing").example(folder)   # 3 GeoTIFF scenes with masks, a tiny recipe
    >>> example.config["model"]["depth"] = 1
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     seg = domainfm.finetune(domainfm.pretrain(example.config), task="segmentation", out=folder / "seg",
    ...                             overrides=["train.steps=2"])
    validation: dice=..., miou=...
    >>> model = domainfm.load(seg)
    >>> domain = get_domain("remote_sensing")
    >>> preprocessing = domain.effective_preprocessing(model.card)
    >>> out = predict_scene(model, folder / "scene0.tif", folder / "pred.tif", preprocessing)
    >>> with rasterio.open(out) as pred, rasterio.open(folder / "scene0.tif") as src:
    ...     pred.shape == src.shape and pred.crs == src.crs and pred.transform == src.transform
    True
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.crs import CRS
from rasterio.windows import Window

from domainfm.classmap import ClassMap, output_dtype
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError
from domainfm.inference import gaussian_importance, window_starts
from domainfm.io_safety import check_output, os_error_text, refuse_input_overwrite, temp_name

from .geotiff import array_to_geotiff
from .io import Scene, crs_equal, is_raster_name, open_raster
from .sensors import Band, Sensor, card_sensor, sensor_to_dict
from .stats import normalize, stats_arrays

log = logging.getLogger("domainfm.remote_sensing")


def _logits(model, x: torch.Tensor, wavelengths) -> torch.Tensor:
    if hasattr(model, "logits"):
        return model.logits(x, wavelengths=wavelengths)
    return model(x, wavelengths=wavelengths)  # pragma: no cover


MAX_OUTPUT_PIXELS = 2_000_000_000  # ~ a 45000 x 45000 scene; larger outputs need max_pixels raised on purpose


def predict_scene(
    model,
    input_path,
    out_path,
    preprocessing: dict | None = None,
    sensor: str | None = None,
    probabilities: bool = False,
    overlap: float | None = None,
    batch_size: int | None = None,
    device=None,
    max_pixels: int | None = None,
    progress: bool | None = None,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Path:
    """Predict every pixel of ``input_path`` with ``model`` (a loaded fine-tuned model) into ``out_path``.

    Segmentation models give per-pixel classes; classification models paint each tile's class
    (blended where tiles overlap), i.e. a coarse scene map. The output is ``uint8`` classes (nodata
    255 where the input has no data), or float32 class probabilities (one band per class, nodata
    NaN) with ``probabilities=True``. ``preprocessing`` is the card's record (default: the model card's;
    the domain passes :meth:`RemoteSensingDomain.effective_preprocessing`). Class indices are written as the
    label ids of the training masks
    (the card's class map).

    The output is written under a temporary name and renamed when complete (an interrupted predict
    leaves nothing that looks valid); it may never be the input. Scenes over ``max_pixels`` are refused
    (raise the guard on purpose); progress (tiles done / total, ETA) goes to stderr. ``normalise``: the
    model's own normalisation of a raw ``C x h x w`` tile, in place of the record's band statistics (a model
    trained on a TorchGeo dataset held in memory; see :func:`scene_record`).
    """
    card = getattr(model, "card", None) or {}
    pre = dict(card.get("preprocessing") or {}) if preprocessing is None else preprocessing
    if getattr(model, "head", None) is None:
        raise CheckpointError("predict needs a fine-tuned model (with a head); this checkpoint is an encoder only")
    if not pre.get("sensors"):
        raise CheckpointError("the checkpoint card has no remote-sensing preprocessing record")
    sensor_obj, bands = card_sensor(pre, sensor)
    out_path = Path(out_path)
    check_output(out_path, [input_path])
    scene = Scene(input_path, sensor_obj, bands, pre.get("resolution"), pre.get("resampling", "bilinear"))
    refuse_input_overwrite(out_path, [src.file for src in scene.sources])
    guard = MAX_OUTPUT_PIXELS if max_pixels is None else int(max_pixels)
    if scene.width * scene.height > guard:
        raise DataError(
            input_path,
            f"scene is {scene.width}x{scene.height} px ({scene.width * scene.height:,} > the "
            f"guard {guard:,}); cut it into tiles, or raise the guard on purpose "
            "(max_pixels=N)",
        )
    class_map = ClassMap.from_card(card)
    stats = (pre.get("stats") or {}).get(sensor_obj.name)
    mean_std = stats_arrays(stats, bands, f" of sensor {sensor_obj.name} in the card") if stats else None
    prepare = _tile_normaliser(mean_std, normalise)
    chip = int(pre.get("chip_size") or pre.get("img_size"))
    img = int(pre.get("img_size") or chip)
    ov = float(pre.get("predict_overlap", 0.25) if overlap is None else overlap)
    if not 0.0 <= ov < 1.0:
        raise DataError(None, f"overlap must be in [0, 1), got {ov}")
    step = max(1, chip - int(round(ov * chip)))
    bs = int(batch_size or 8)
    task = card.get("task") or "segmentation"
    wl = scene.wavelengths
    H, W = scene.height, scene.width
    rows, cols = window_starts(H, chip, step), window_starts(W, chip, step)
    weight = gaussian_importance((chip, chip))
    enc = getattr(model, "encoder", None)
    if device is None:
        device = next(enc.parameters()).device if enc is not None else torch.device("cpu")
    for m in (model, enc, getattr(model, "head", None)):
        if hasattr(m, "eval"):
            m.eval()

    num_classes = None
    tmp_path = temp_name(out_path)
    # tiles done / total with rate and ETA on stderr; by default only once a scene has taken 5 s
    meter = progress_bar(
        total=len(rows) * len(cols),
        desc=f"predict {Path(input_path).name}",
        unit="tile",
        disable=progress is False,
        delay=0 if progress else 5,
        leave=True,
    )
    ids = class_map.ids if class_map else None
    dst = None
    acc = wsum = valid_acc = None
    top = 0  # first row of the accumulator strip
    written = 0
    n_tiles = n_skipped = 0
    try:
        for ri, r in enumerate(rows):
            tiles = []
            for c in cols:
                data, valid = scene.read(Window(c, r, chip, chip))
                n_tiles += 1
                meter.update(1)
                if not valid.any():
                    n_skipped += 1
                    continue
                tiles.append((c, prepare(data, valid), valid))
            if acc is not None and r > top:  # shift the strip so it starts at this tile row
                shift = r - top
                acc = np.concatenate([acc[:, shift:], np.zeros_like(acc[:, :shift])], 1)
                wsum = np.concatenate([wsum[shift:], np.zeros_like(wsum[:shift])], 0)
                valid_acc = np.concatenate([valid_acc[shift:], np.zeros_like(valid_acc[:shift])], 0)
                top = r
            for b0 in range(0, len(tiles), bs):
                batch = tiles[b0 : b0 + bs]
                x = torch.from_numpy(np.stack([t[1] for t in batch]))
                if img != chip:
                    x = F.interpolate(x, size=(img, img), mode="bilinear", align_corners=False)
                with torch.no_grad():
                    logits = _logits(model, x.to(device), wl).float().cpu()
                if logits.ndim == 2:  # classification: paint the tile
                    logits = logits[:, :, None, None].expand(-1, -1, chip, chip)
                elif logits.shape[-1] != chip:
                    logits = F.interpolate(logits, size=(chip, chip), mode="bilinear", align_corners=False)
                probs = (torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)).numpy()
                if num_classes is None:
                    num_classes = probs.shape[1]
                    acc = np.zeros((num_classes, chip, W), np.float32)
                    wsum = np.zeros((chip, W), np.float32)
                    valid_acc = np.zeros((chip, W), bool)
                    top = r
                    count = num_classes if probabilities else 1
                    ids = ids if ids and len(ids) == num_classes else list(range(num_classes))
                    nodata = 255 if max(ids) < 255 else 65535
                    dtype = "float32" if probabilities else str(output_dtype(ids, nodata))
                    try:
                        dst = rasterio.open(
                            tmp_path,
                            "w",
                            driver="GTiff",
                            width=W,
                            height=H,
                            count=count,
                            dtype=dtype,
                            crs=scene.grid.crs,
                            transform=scene.grid.transform,
                            nodata=float("nan") if probabilities else nodata,
                            compress="deflate",
                            BIGTIFF="IF_SAFER",
                        )
                    except rasterio.errors.RasterioError as exc:
                        raise DataError(out_path, f"cannot write ({str(exc).splitlines()[0][:120]})") from None
                    if written < top:  # leading rows that were all nodata
                        _write_rows(
                            dst,
                            np.zeros((num_classes, top - written, W), np.float32),
                            np.zeros((top - written, W), np.float32),
                            np.zeros((top - written, W), bool),
                            written,
                            probabilities,
                            ids,
                            nodata,
                        )
                        written = top
                for (c, _, valid), p in zip(batch, probs):
                    hh, ww = min(chip, H - r), min(chip, W - c)
                    wv = weight[:hh, :ww] * valid[:hh, :ww]
                    acc[:, :hh, c : c + ww] += p[:, :hh, :ww] * wv
                    wsum[:hh, c : c + ww] += wv
                    valid_acc[:hh, c : c + ww] |= valid[:hh, :ww]
            # rows before the next tile row (or the scene end) are final
            done_to = rows[ri + 1] if ri + 1 < len(rows) else H
            if dst is None:
                if ri + 1 == len(rows):
                    break
                continue
            if done_to > written:
                a, b = written - top, done_to - top
                _write_rows(dst, acc[:, a:b], wsum[a:b], valid_acc[a:b], written, probabilities, ids, nodata)
                written = done_to
        if dst is None:
            raise DataError(input_path, f"every tile of the scene is nodata ({n_tiles} tiles); nothing to predict")
        dst.close()
        os.replace(tmp_path, out_path)  # complete: only now does the output carry its name
    except rasterio.errors.RasterioError as exc:
        raise DataError(
            out_path, f"cannot write ({str(exc).splitlines()[0][:120]}); disk full or not writable?"
        ) from None
    except OSError as exc:  # disk full, permissions: nothing carries the output's name
        raise DataError(out_path, f"cannot write: {os_error_text(exc)}; the output was not written") from None
    finally:
        if dst is not None and not dst.closed:
            dst.close()
        if tmp_path.exists():
            tmp_path.unlink()
        finish_progress(meter, file=sys.stderr)
    if n_skipped:
        log.warning("%s: skipped %d of %d all-nodata tiles", input_path, n_skipped, n_tiles)
    return out_path


def _tile_normaliser(mean_std, normalise) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(data, valid) -> data`` for one tile: the model's own ``normalise`` when given, else the card's band
    statistics, else the values as read; pixels without data stay 0."""
    if normalise is not None:

        def own(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
            x = normalise(torch.from_numpy(data)).numpy()
            return np.where(valid[None], x, 0.0).astype(np.float32)

        return own
    if mean_std is not None:
        return lambda data, valid: normalize(data, valid, *mean_std)
    return lambda data, valid: data


def _sample_bounds(bounds) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a TorchGeo sample's ``bounds``: x, y (and time) slices since TorchGeo
    0.8, a ``BoundingBox`` (``minx``...) before."""
    if hasattr(bounds, "minx"):
        return float(bounds.minx), float(bounds.miny), float(bounds.maxx), float(bounds.maxy)
    if isinstance(bounds, (tuple, list)) and len(bounds) >= 2 and all(isinstance(b, slice) for b in bounds[:2]):
        x, y = bounds[0], bounds[1]
        return float(x.start), float(y.start), float(x.stop), float(y.stop)
    raise DataError(None, f"cannot read the sample's bounds {bounds!r}: give TorchGeo's (x, y slices or a BoundingBox)")


@contextlib.contextmanager
def scene_input(input, geometry: dict) -> Iterator[Path]:
    """A scene path for ``input``, for a model trained on ``geometry["from"]``'s data (a TorchGeo dataset held
    in memory): a raster file or folder as is; a TorchGeo sample dict (``image`` ``C x H x W``, ``crs``,
    ``bounds``) written to a temporary GeoTIFF on its grid, so it is read, predicted and written back like a
    file. Anything else is a one-line :class:`DataError` naming the input and the training data."""
    trained = f"this model was trained on {geometry.get('from') or 'a TorchGeo dataset'}"
    if isinstance(input, (str, Path)):
        path = Path(input)
        if not (path.is_dir() or is_raster_name(path)):
            raise DataError(
                path,
                f"is not a raster scene the model takes; {trained}, so it predicts on GeoTIFF scenes "
                "(.tif, .tiff, .jp2, .vrt) and TorchGeo sample dicts (image, crs, bounds)",
            )
        yield path
        return
    image = input.get("image") if isinstance(input, dict) else None
    if image is None or input.get("crs") is None or input.get("bounds") is None or np.ndim(image) != 3:
        what = f"a dict with keys {sorted(map(str, input))}" if isinstance(input, dict) else f"a {type(input).__name__}"
        raise DataError(
            None,
            f"cannot predict on {what}: {trained}; give a GeoTIFF, or a TorchGeo sample dict with image "
            "(C x H x W), crs and bounds",
        )
    pixels = torch.as_tensor(image).detach().cpu().as_subclass(torch.Tensor).float().numpy()
    crs = input["crs"].to_wkt() if hasattr(input["crs"], "to_wkt") else input["crs"]
    with tempfile.TemporaryDirectory(prefix="domainfm-scene-") as tmp:
        yield array_to_geotiff(
            Path(tmp) / "sample.tif",
            pixels,
            crs,
            _sample_bounds(input["bounds"]),
            band_names=geometry.get("band_names"),
        )


def _band_names(path: Path, geometry: dict, channels: int) -> list[str]:
    """The training bands' names; without them, the file's own band descriptions (or ``band1``...), which
    TorchGeo would have read in file order."""
    if geometry.get("band_names"):
        return [str(b) for b in geometry["band_names"]]
    if path.is_dir():
        raise DataError(path, "is a folder of band files, and the training dataset named no bands; give one raster")
    src = open_raster(path)
    if src.count != channels:
        raise DataError(path, f"has {src.count} band(s); this model was trained on {channels} ({geometry.get('from')})")
    descriptions = list(src.descriptions or ())
    if all(descriptions) and len(set(descriptions)) == len(descriptions):
        return [str(d) for d in descriptions]
    return [f"band{i + 1}" for i in range(channels)]


def scene_record(path: str | Path, geometry: dict, card: dict) -> dict:
    """The preprocessing record :func:`predict_scene` reads, for a model trained on a TorchGeo dataset held in
    memory (an ``arrays`` card whose ``geometry`` is remote sensing): the training bands (by the dataset's band
    names, else in file order), read at the training resolution when the scene shares the training CRS, in
    chips of the training size; no band statistics (the model's own normalisation goes to ``normalise``).

    Example:
        >>> import tempfile
        >>> from domainfm.remote_sensing.synthetic import write_scene
        >>> path, _ = write_scene(Path(tempfile.mkdtemp()) / "s.tif", "sentinel2", ["B02", "B03"], size=(16, 16))
        >>> g = {"domain": "remote_sensing", "crs": "EPSG:32633", "res": [10.0, 10.0], "band_names": ["B02", "B03"]}
        >>> rec = scene_record(path, g, {"preprocessing": {"channels": 2, "size": [8, 8]}})
        >>> rec["bands"], rec["chip_size"], rec["resolution"]
        ({'training_bands': ['B02', 'B03']}, 8, 10.0)
    """
    path = Path(path)
    pre = card.get("preprocessing") or {}
    names = _band_names(path, geometry, int(pre["channels"]))
    res = geometry.get("res")
    gsd = float(res[0] if isinstance(res, (list, tuple)) else res) if res else 0.0
    wavelengths = geometry.get("wavelengths") or [0.0] * len(names)
    sensor = Sensor(
        "training_bands",
        tuple(Band(n, float(w), gsd) for n, w in zip(names, wavelengths)),
        f"the bands of {geometry.get('from')}",
    )
    first = path if path.is_file() else next(p for p in sorted(path.iterdir()) if is_raster_name(p))
    same_crs = geometry.get("crs") is not None and crs_equal(
        open_raster(first).crs, CRS.from_user_input(geometry["crs"])
    )
    size = int(min(pre["size"]))
    return {
        "sensors": {sensor.name: sensor_to_dict(sensor)},
        "bands": {sensor.name: names},
        "stats": None,
        "img_size": size,
        "chip_size": size,
        "resolution": gsd if same_crs and gsd > 0 else None,
        "resampling": "bilinear",
        "predict_overlap": 0.25,
    }


def _write_rows(dst, acc, wsum, valid, row0: int, probabilities: bool, ids: list[int], nodata: int) -> None:
    h, w = wsum.shape
    ok = valid & (wsum > 0)
    p = acc / np.maximum(wsum, 1e-12)[None]
    if probabilities:
        out = np.where(ok[None], p, np.nan).astype(np.float32)
    else:
        label = np.asarray(ids, dtype=np.int64)[p.argmax(0)]  # training index -> label id of the masks
        out = np.where(ok, label, nodata).astype(dst.dtypes[0])[None]
    dst.write(out, window=Window(0, row0, w, h))
