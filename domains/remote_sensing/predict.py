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

import logging
import os
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from domainfm.classmap import ClassMap, output_dtype
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError
from domainfm.inference import gaussian_importance, window_starts
from domainfm.io_safety import check_output, refuse_input_overwrite, temp_name

from .io import Scene
from .sensors import card_sensor
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
    (raise the guard on purpose); progress (tiles done / total, ETA) goes to stderr.
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
                if mean_std is not None:
                    data = normalize(data, valid, *mean_std)
                tiles.append((c, data, valid))
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
    finally:
        if dst is not None and not dst.closed:
            dst.close()
        if tmp_path.exists():
            tmp_path.unlink()
        finish_progress(meter, file=sys.stderr)
    if n_skipped:
        log.warning("%s: skipped %d of %d all-nodata tiles", input_path, n_skipped, n_tiles)
    return out_path


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
