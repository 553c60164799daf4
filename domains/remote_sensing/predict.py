"""Tiled, streaming inference over a whole scene with overlap blending, written as a GeoTIFF on the
input's grid (same CRS, transform and size).

The steps, each a function below: plan the windows (:func:`_plan`), read one row of tiles in wide strips
(:func:`_row_tiles`), run the model and blend the tiles into a strip of rows with a Gaussian importance map
(:class:`_Strip`), and write the rows no later tile can touch (:class:`_Output`). Memory holds one strip of
tiles, not the scene, so scenes larger than memory stream through: the output is a tiled, compressed
(deflate) BigTIFF where needed, all-nodata blocks left sparse, with overviews for large scenes
(Cloud-Optimized-style; CRS and transform kept). With ``resume=True`` an interrupted predict keeps its
partial output and a sidecar of the rows written, and the next ``resume=True`` call continues from there.

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

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.windows import Window

from domainfm.classmap import ClassMap, output_dtype
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError
from domainfm.inference import gaussian_importance, window_starts
from domainfm.io_safety import check_output, os_error_text, refuse_input_overwrite, temp_name

from .io import Scene
from .sample_input import scene_input, scene_record
from .sensors import card_sensor
from .stats import normalize, stats_arrays

__all__ = ["MAX_OUTPUT_PIXELS", "predict_scene", "scene_input", "scene_record"]

log = logging.getLogger("domainfm.remote_sensing")

MAX_OUTPUT_PIXELS = 2_000_000_000  # ~ a 45000 x 45000 scene; larger outputs need max_pixels raised on purpose
READ_SPAN = 4096  # a row of tiles is read in strips about this many pixels wide
BLOCK = 256  # output tile side (outputs smaller than a tile are written in strips)
GDAL_CACHE_MB = 256  # GDAL's block cache while predicting (its default is a share of the machine's memory)


def _logits(model, x: torch.Tensor, wavelengths) -> torch.Tensor:
    if hasattr(model, "logits"):
        return model.logits(x, wavelengths=wavelengths)
    return model(x, wavelengths=wavelengths)  # pragma: no cover


@dataclass
class _Plan:
    """The windows of one scene: tile side on the scene grid (``chip``) and as the model takes it (``img``),
    the tile starts, the batch size, the task and the blending weights."""

    chip: int
    img: int
    rows: list[int]
    cols: list[int]
    batch_size: int
    task: str
    weight: np.ndarray
    height: int
    width: int

    def done_to(self, ri: int) -> int:
        """The rows before this one are final once tile row ``ri`` is blended: the next tile row's start."""
        return self.rows[ri + 1] if ri + 1 < len(self.rows) else self.height


def _plan(pre: dict, card: dict, scene: Scene, overlap: float | None, batch_size: int | None) -> _Plan:
    """Window planning: tile size from the record, ``overlap`` (default the record's) as a step."""
    chip = int(pre.get("chip_size") or pre.get("img_size"))
    ov = float(pre.get("predict_overlap", 0.25) if overlap is None else overlap)
    if not 0.0 <= ov < 1.0:
        raise DataError(None, f"overlap must be in [0, 1), got {ov}")
    step = max(1, chip - int(round(ov * chip)))
    return _Plan(
        chip=chip,
        img=int(pre.get("img_size") or chip),
        rows=window_starts(scene.height, chip, step),
        cols=window_starts(scene.width, chip, step),
        batch_size=int(batch_size or 8),
        task=card.get("task") or "segmentation",
        weight=gaussian_importance((chip, chip)),
        height=scene.height,
        width=scene.width,
    )


def _checked_scene(model, pre: dict, input_path, out_path: Path, sensor, max_pixels) -> Scene:
    """The input scene in the record's bands, after the model, the output path and the size guard pass."""
    if getattr(model, "head", None) is None:
        raise CheckpointError("predict needs a fine-tuned model (with a head); this checkpoint is an encoder only")
    if not pre.get("sensors"):
        raise CheckpointError("the checkpoint card has no remote-sensing preprocessing record")
    sensor_obj, bands = card_sensor(pre, sensor)
    check_output(out_path, [input_path])
    scene = Scene(
        input_path, sensor_obj, bands, resolution=pre.get("resolution"), resampling=pre.get("resampling", "bilinear")
    )
    refuse_input_overwrite(out_path, [src.file for src in scene.sources])
    guard = MAX_OUTPUT_PIXELS if max_pixels is None else int(max_pixels)
    if scene.width * scene.height > guard:
        raise DataError(
            input_path,
            f"scene is {scene.width}x{scene.height} px ({scene.width * scene.height:,} > the "
            f"guard {guard:,}); cut it into tiles, or raise the guard on purpose "
            "(max_pixels=N)",
        )
    return scene


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
    resume: bool = False,
) -> Path:
    """Predict every pixel of ``input_path`` with ``model`` (a loaded fine-tuned model) into ``out_path``.

    Segmentation models give per-pixel classes; classification models paint each tile's class
    (blended where tiles overlap), i.e. a coarse scene map. The output is ``uint8`` classes (nodata
    255 where the input has no data), or float32 class probabilities (one band per class, nodata
    NaN) with ``probabilities=True``. ``preprocessing`` is the card's record (default: the model card's;
    the domain passes :meth:`RemoteSensingDomain.effective_preprocessing`). Class indices are written as the
    label ids of the training masks
    (the card's class map).

    The scene streams window by window (memory holds a strip of tiles, whatever the scene's size) into a
    tiled, compressed GeoTIFF with overviews for large scenes. The output is written under a temporary name
    and renamed when complete (an interrupted predict leaves nothing that looks valid); it may never be the
    input. ``resume=True``: an interrupted predict (Ctrl-C, an error) keeps its partial output
    (``.partial-<name>`` and a ``.json`` sidecar of the rows written, next to ``out_path``) and the next
    ``resume=True`` predict of the same input and settings continues from those rows. Scenes over
    ``max_pixels`` are refused (raise the guard on purpose); progress (tiles done / total, ETA) goes to
    stderr. ``normalise``: the model's own normalisation of a raw ``C x h x w`` tile, in place of the
    record's band statistics (a model trained on a TorchGeo dataset held in memory; see :func:`scene_record`).
    """
    card = getattr(model, "card", None) or {}
    pre = dict(card.get("preprocessing") or {}) if preprocessing is None else preprocessing
    out_path = Path(out_path)
    scene = _checked_scene(model, pre, input_path, out_path, sensor, max_pixels)
    class_map = ClassMap.from_card(card)
    stats = (pre.get("stats") or {}).get(scene.sensor.name)
    mean_std = stats_arrays(stats, scene.band_names, f" of sensor {scene.sensor.name} in the card") if stats else None
    plan = _plan(pre, card, scene, overlap, batch_size)
    device = _eval_mode(model, device)
    out = _Output(out_path, scene, probabilities, class_map.ids if class_map else None, resume)
    # tiles done / total with rate and ETA on stderr; by default only once a scene has taken 5 s
    meter = progress_bar(
        total=len(plan.rows) * len(plan.cols),
        desc=f"predict {Path(input_path).name}",
        unit="tile",
        disable=progress is False,
        delay=0 if progress else 5,
        leave=True,
    )
    done = False
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            run = _Run(model, scene, plan, _tile_normaliser(mean_std, normalise), out, meter, device)
            n_tiles, n_skipped = run.stream()
            if out.dst is None:
                raise DataError(input_path, f"every tile of the scene is nodata ({n_tiles} tiles); nothing to predict")
            out.finish()
        done = True
    except rasterio.errors.RasterioError as exc:
        raise DataError(
            out_path, f"cannot write ({str(exc).splitlines()[0][:120]}); disk full or not writable?"
        ) from None
    except OSError as exc:  # disk full, permissions: nothing carries the output's name
        raise DataError(out_path, f"cannot write: {os_error_text(exc)}; the output was not written") from None
    finally:
        out.close(done)
        finish_progress(meter, file=sys.stderr)
    if n_skipped:
        log.warning("%s: skipped %d of %d all-nodata tiles", input_path, n_skipped, n_tiles)
    return out_path


def _eval_mode(model, device) -> torch.device:
    """Model, encoder and head in eval mode; the device (default: the encoder's)."""
    enc = getattr(model, "encoder", None)
    for m in (model, enc, getattr(model, "head", None)):
        if hasattr(m, "eval"):
            m.eval()
    if device is None:
        device = next(enc.parameters()).device if enc is not None else torch.device("cpu")
    return device


def _row_tiles(scene: Scene, plan: _Plan, r: int) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """Reading: each tile ``(col, data, valid)`` of the tile row at ``r``, read in strips about
    :data:`READ_SPAN` px wide (one read per strip, not per tile; none where a sparse file holds no block);
    ``data`` is ``None`` for a tile without a valid pixel."""
    chip, cols = plan.chip, plan.cols
    i = 0
    while i < len(cols):
        j = i
        while j + 1 < len(cols) and cols[j + 1] + chip - cols[i] <= max(READ_SPAN, chip):
            j += 1
        c0 = cols[i]
        window = Window(c0, r, cols[j] + chip - c0, chip)
        empty = not scene.stored(window)  # blocks a sparse file never wrote: no read needed
        if not empty:
            data, valid = scene.read(window)
            empty = not valid.any()
        for c in cols[i : j + 1]:
            v = None if empty else valid[:, c - c0 : c - c0 + chip]
            if v is None or not v.any():
                yield c, None, None
            else:
                yield c, data[:, :, c - c0 : c - c0 + chip], v
        i = j + 1


class _Run:
    """One predict's loop: rows of tiles read, batched through the model, blended into a strip, written."""

    def __init__(self, model, scene: Scene, plan: _Plan, prepare, out: _Output, meter, device):
        self.model, self.scene, self.plan, self.prepare = model, scene, plan, prepare
        self.out, self.meter, self.device = out, meter, device
        self.strip: _Strip | None = None

    def stream(self) -> tuple[int, int]:
        """Every tile row from the first one the output still needs; returns (tiles, all-nodata tiles)."""
        n_tiles = n_skipped = 0
        for ri in range(self.out.first_tile_row(self.plan), len(self.plan.rows)):
            r = self.plan.rows[ri]
            if self.strip is not None:
                self.strip.shift_to(r)
            batch: list = []
            for c, data, valid in _row_tiles(self.scene, self.plan, r):
                n_tiles += 1
                if data is None:
                    n_skipped += 1
                    continue
                batch.append((c, self.prepare(data, valid), valid))
                if len(batch) == self.plan.batch_size:
                    self._blend(r, batch)
                    batch = []
            if batch:
                self._blend(r, batch)
            self.meter.update(len(self.plan.cols))
            if self.strip is not None:
                self.out.write_through(self.strip, self.plan.done_to(ri))
        return n_tiles, n_skipped

    def _blend(self, r: int, batch: list) -> None:
        """Blending: the batch's class probabilities added into the strip (opened with the first batch)."""
        probs = _tile_probs(self.model, batch, self.plan, self.scene.wavelengths, self.device)
        if self.strip is None:
            self.strip = _Strip(probs.shape[1], self.plan.chip, self.plan.width, r)
            self.out.start(probs.shape[1], r)
        self.strip.add(r, batch, probs, self.plan)


def _tile_probs(model, batch: list, plan: _Plan, wavelengths, device) -> np.ndarray:
    """``B x K x chip x chip`` class probabilities of a batch of prepared tiles (classification models paint
    the tile with its class)."""
    x = torch.from_numpy(np.stack([t[1] for t in batch]))
    if plan.img != plan.chip:
        x = F.interpolate(x, size=(plan.img, plan.img), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = _logits(model, x.to(device), wavelengths).float().cpu()
    if logits.ndim == 2:  # classification: paint the tile
        logits = logits[:, :, None, None].expand(-1, -1, plan.chip, plan.chip)
    elif logits.shape[-1] != plan.chip:
        logits = F.interpolate(logits, size=(plan.chip, plan.chip), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits) if plan.task == "multilabel" else torch.softmax(logits, 1)).numpy()


class _Strip:
    """The rows one tile row touches, as weighted class sums: ``chip`` rows x the scene's width."""

    def __init__(self, num_classes: int, chip: int, width: int, top: int):
        self.acc = np.zeros((num_classes, chip, width), np.float32)
        self.wsum = np.zeros((chip, width), np.float32)
        self.valid = np.zeros((chip, width), bool)
        self.top = top  # scene row of the strip's first row
        self.extent = 0  # rows [0, extent) of the strip may hold sums; the rest are zero

    def shift_to(self, r: int) -> None:
        """Move the strip down so it starts at scene row ``r`` (rows above were written); only the rows that
        hold sums are moved or cleared."""
        shift = r - self.top
        if shift <= 0:
            return
        self.top = r
        keep = max(0, self.extent - shift)
        for arr in (self.acc, self.wsum[None], self.valid[None]):  # rows on axis 1
            if keep:
                arr[:, :keep] = arr[:, shift : shift + keep]
            arr[:, keep : self.extent] = 0
        self.extent = keep

    def add(self, r: int, batch: list, probs: np.ndarray, plan: _Plan) -> None:
        """Add each tile's probabilities, weighted by the importance map where the tile has data."""
        for (c, _, valid), p in zip(batch, probs):
            hh, ww = min(plan.chip, plan.height - r), min(plan.chip, plan.width - c)
            wv = plan.weight[:hh, :ww] * valid[:hh, :ww]
            self.acc[:, :hh, c : c + ww] += p[:, :hh, :ww] * wv
            self.wsum[:hh, c : c + ww] += wv
            self.valid[:hh, c : c + ww] |= valid[:hh, :ww]
            self.extent = max(self.extent, hh)


def _partial_name(out_path: Path) -> Path:
    """The fixed name a resumable predict writes under (``.partial-pred.tif`` for ``pred.tif``)."""
    return out_path.with_name(f".partial-{out_path.name}")


class _Output:
    """Writing: the output GeoTIFF under a temporary name, opened with the first predicted batch, rows
    written once final, renamed when complete; with ``resume`` a partial output and its sidecar carry the
    rows written over an interruption."""

    def __init__(self, out_path: Path, scene: Scene, probabilities: bool, ids: list[int] | None, resume: bool):
        self.final, self.scene, self.probabilities, self.resume = out_path, scene, probabilities, resume
        self.ids, self.nodata = ids, 255
        self.tmp = _partial_name(out_path) if resume else temp_name(out_path)
        self.sidecar = self.tmp.with_name(self.tmp.name + ".json")
        self.dst = None
        self.num_classes: int | None = None
        self.written = 0  # rows [0, written) are in the file
        if resume:
            self._reopen()

    # -- the record a resumed predict must match
    def _key(self) -> dict:
        src = Path(self.scene.sources[0].file)
        stat = src.stat()
        return {
            "input": str(Path(self.scene.path).resolve()),
            "input_bytes": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "bands": self.scene.band_names,
            "shape": [self.scene.height, self.scene.width],
            "probabilities": self.probabilities,
        }

    def _reopen(self) -> None:
        """Continue a partial output whose sidecar matches this predict; anything else starts afresh."""
        if not (self.sidecar.is_file() and self.tmp.is_file()):
            return
        try:
            record = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("key") != self._key():
            log.warning("%s: the partial output is of another input or settings; starting afresh", self.tmp)
            return
        self.dst = rasterio.open(self.tmp, "r+")
        self.num_classes, self.ids, self.nodata = record["num_classes"], record["ids"], record["nodata"]
        self.written = int(record["rows_done"])
        log.warning("%s: resuming at row %d of %d", self.final, self.written, self.scene.height)

    def first_tile_row(self, plan: _Plan) -> int:
        """The first tile row that touches a row not yet written (0 for a new output)."""
        if self.written == 0:
            return 0
        return next((i for i, r in enumerate(plan.rows) if r + plan.chip > self.written), len(plan.rows))

    def start(self, num_classes: int, top: int) -> None:
        """With the first predicted batch (tile row at ``top``): open the file, write the nodata rows above."""
        if self.dst is None:
            self._open(num_classes)
        if self.written < top:  # leading rows that were all nodata
            self._write_nodata(top)

    def _open(self, num_classes: int) -> None:
        ids = self.ids if self.ids and len(self.ids) == num_classes else list(range(num_classes))
        self.num_classes, self.ids = num_classes, ids
        self.nodata = 255 if max(ids) < 255 else 65535
        H, W = self.scene.height, self.scene.width
        tiles = dict(tiled=True, blockxsize=BLOCK, blockysize=BLOCK) if min(H, W) >= BLOCK else {}
        try:
            self.dst = rasterio.open(
                self.tmp,
                "w",
                driver="GTiff",
                width=W,
                height=H,
                count=num_classes if self.probabilities else 1,
                dtype="float32" if self.probabilities else str(output_dtype(ids, self.nodata)),
                crs=self.scene.grid.crs,
                transform=self.scene.grid.transform,
                nodata=float("nan") if self.probabilities else self.nodata,
                compress="deflate",
                BIGTIFF="IF_SAFER",
                SPARSE_OK="TRUE",  # all-nodata blocks take no space
                **tiles,
            )
        except rasterio.errors.RasterioError as exc:
            raise DataError(self.final, f"cannot write ({str(exc).splitlines()[0][:120]})") from None

    def _write_nodata(self, upto: int) -> None:
        """Rows ``[written, upto)`` without data: left unwritten, as the sparse output reads them as nodata."""
        self.written = max(self.written, upto)

    def write_through(self, strip: _Strip, upto: int) -> None:
        """Rows ``[written, upto)`` from the strip (they are final: no later tile touches them)."""
        if upto <= self.written:
            return
        a, b = self.written - strip.top, upto - strip.top
        if a >= strip.extent:  # no sums in these rows: nodata, left unwritten
            self.written = upto
            return
        _write_rows(
            self.dst, strip.acc[:, a:b], strip.wsum[a:b], strip.valid[a:b], self.written, self.probabilities,
            self.ids, self.nodata,
        )  # fmt: skip
        self.written = upto

    def finish(self) -> None:
        """The rows left (nodata), overviews for a large output, closed and renamed to the final name."""
        if self.written < self.scene.height:
            self._write_nodata(self.scene.height)
        _build_overviews(self.dst, self.probabilities)
        self.dst.close()
        os.replace(self.tmp, self.final)  # complete: only now does the output carry its name

    def close(self, done: bool) -> None:
        """After success or failure: nothing temporary is left, except a resumable partial output."""
        keep = self.resume and not done and self.dst is not None and self.written > 0
        if self.dst is not None and not self.dst.closed:
            self.dst.close()
        if keep:
            record = {"key": self._key(), "rows_done": self.written, "num_classes": self.num_classes,
                      "ids": self.ids, "nodata": self.nodata}  # fmt: skip
            part = self.sidecar.with_name(self.sidecar.name + ".tmp")
            part.write_text(json.dumps(record))
            os.replace(part, self.sidecar)
            log.warning("%s: interrupted at row %d; predict again with resume=True to continue", self.final,
                        self.written)  # fmt: skip
            return
        for path in (self.tmp, self.sidecar):
            if path.exists():
                path.unlink()


def _build_overviews(dst, probabilities: bool) -> None:
    """Overviews (x2, x4, ... down to about one block) for outputs over 4 blocks a side: viewers open large
    predictions at any zoom without reading every pixel. Classes by nearest, probabilities by average."""
    side = min(dst.width, dst.height)
    factors = []
    f = 2
    while side // f >= BLOCK and side > 4 * BLOCK:
        factors.append(f)
        f *= 2
    if factors:
        dst.build_overviews(factors, Resampling.average if probabilities else Resampling.nearest)


def _tile_normaliser(mean_std, normalise) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(data, valid) -> data`` for one tile: the model's own ``normalise`` when given, else the card's band
    statistics, else the values as read; pixels without data stay 0."""
    if normalise is not None:

        def own(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
            x = normalise(torch.from_numpy(np.ascontiguousarray(data))).numpy()
            return np.where(valid[None], x, 0.0).astype(np.float32)

        return own
    if mean_std is not None:
        return lambda data, valid: normalize(data, valid, *mean_std)
    return lambda data, valid: data


def _write_rows(dst, acc, wsum, valid, row0: int, probabilities: bool, ids: list[int], nodata: int) -> None:
    h, w = wsum.shape
    ok = valid & (wsum > 0)
    if not ok.any():
        return  # nodata rows stay unwritten: a sparse output reads them as nodata
    p = acc / np.maximum(wsum, 1e-12)[None]
    if probabilities:
        out = np.where(ok[None], p, np.nan).astype(np.float32)
    else:
        label = np.asarray(ids, dtype=np.int64)[p.argmax(0)]  # training index -> label id of the masks
        out = np.where(ok, label, nodata).astype(dst.dtypes[0])[None]
    dst.write(out, window=Window(0, row0, w, h))
