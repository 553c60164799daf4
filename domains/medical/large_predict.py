"""Sliding-window segmentation of a volume larger than memory, slab by slab, written straight into the NIfTI file.

:func:`~domainfm.medical.inference.predict_scan` takes this path only when its in-memory prediction of a scan
would exceed a memory budget (:func:`memory_budget`: ``memory_budget=`` / ``DOMAINFM_PREDICT_MEMORY``, default
half the available RAM); smaller scans keep the in-memory path. The steps, each a function or class below:

* :class:`_Volume` reads the uncompressed ``.nii`` lazily (nibabel ``dataobj`` slicing: only the slab asked
  for) and puts each slab on the model's orientation (a permutation and flips of the file's axes);
* :class:`_Plan` lays the windows out exactly as MONAI's ``sliding_window_inference`` does on the whole volume
  (same starts, same Gaussian importance map), grouped by their start along the axis the file stores slowest;
* :class:`_Strip` blends the logits of the windows of one start into the rows they touch; rows no later
  window touches are final: softmax, argmax, the class map's label ids, back on the file's orientation;
* :class:`_NiftiOut` writes those rows straight into the output's NIfTI data block on disk (the header is
  the one the in-memory path writes), so neither input nor output ever has to fit in memory. A ``.nii.gz``
  output is gzip-streamed from the finished ``.nii`` at the end.

Memory holds one slab of input and one strip of ``classes x window x cross-section`` sums. Results equal the
in-memory path's up to float summation order. Recipes that need the whole volume at once (resampling to another
spacing, a foreground crop, MRI/PET/X-ray intensity statistics) cannot stream: such scans are predicted in
memory, with a warning saying why.

Example:
    >>> memory_budget("1.5G")
    1500000000
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from domainfm.classmap import ClassMap, output_dtype
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import ConfigError, DataError
from domainfm.io_safety import os_error_text, refuse_input_overwrite, temp_name
from domainfm.memory import available_ram

from .options import resolve_window
from .transforms import ORIENTATION_LABELS

log = logging.getLogger("domainfm.medical")

#: Environment variable holding the memory budget of predict (bytes, or ``4G``, ``512M``).
BUDGET_ENV = "DOMAINFM_PREDICT_MEMORY"
#: Default budget: this share of the RAM available when predict starts.
BUDGET_FRACTION = 0.5
WRITE_ROWS = 8  # oriented rows finalised and written at a time
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def memory_budget(value: int | float | str | None = None) -> int:
    """Bytes a prediction may hold in memory: ``value`` (bytes, or text such as ``"4G"``), else the
    ``DOMAINFM_PREDICT_MEMORY`` environment variable, else half the available RAM.

    Example:
        >>> memory_budget(2_000_000), memory_budget("512M")
        (2000000, 512000000)
    """
    raw = value if value is not None else os.environ.get(BUDGET_ENV)
    if raw is None or raw == "":
        return int(BUDGET_FRACTION * (available_ram() or 8 * 10**9))
    if isinstance(raw, (int, float)):
        return int(raw)
    text = str(raw).strip().lower().removesuffix("b")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        raise ConfigError(f"memory budget {raw!r}: give bytes or a size such as 4G or 512M ({BUDGET_ENV})") from None
    return int(number * _UNITS[unit])


def in_memory_bytes(shape, channels: int, classes: int) -> int:
    """About the peak of the in-memory path for a volume of ``shape``: the scan read and normalised
    (``3 x channels`` float32 copies), the blended logits and their inverse (``2 x classes``), the count map,
    the argmax (int64) and the labels."""
    voxels = int(np.prod([int(s) for s in shape]))
    return voxels * (12 * channels + 8 * classes + 14)


def _num_classes(card: dict) -> int:
    return int(card.get("num_classes") or len(card.get("classes") or []) or 2)


def streaming_blocker(input_path, setup, final: Path) -> str | None:
    """Why the slab-by-slab path cannot take this scan and recipe (``None``: it can)."""
    opts = setup.opts
    path = Path(input_path)
    if opts.spatial_dims != 3 or not path.name.lower().endswith(".nii"):
        return "only an uncompressed 3D .nii is read slab by slab (gunzip a .nii.gz first)"
    if not final.name.lower().endswith((".nii", ".nii.gz")):
        return "the output must be NIfTI"
    img = nib.load(str(path))
    shape = img.shape[:3]
    if len(img.shape) > 3 and int(np.prod(img.shape[3:])) != 1:
        return f"the scan has {img.shape[3]} channels; one is read slab by slab"
    if opts.foreground_crop:
        return "the recipe crops to the foreground, which needs the whole volume"
    if setup.normalise is None and opts.modality != "ct":
        return f"the {opts.modality} intensity recipe needs statistics of the whole volume"
    if opts.target_spacing:
        zooms = np.asarray(img.header.get_zooms()[:3], np.float64)
        order = np.argsort(_orientation(img.affine, opts.orientation)[:, 0])
        if not np.allclose(zooms[order], opts.target_spacing, rtol=1e-4):
            return f"the scan's spacing {zooms.tolist()} mm is resampled to {opts.target_spacing} mm"
    if any(s < c for s, c in zip(_oriented_shape(shape, img.affine, opts.orientation), setup.crop)):
        return "the scan is smaller than the window along an axis"
    return None


def should_stream(model, input_path, setup, final: Path, budget: int | float | str | None = None) -> bool:
    """Whether to predict ``input_path`` slab by slab: its in-memory prediction would exceed the budget and the
    recipe allows it (otherwise a warning says why it is predicted in memory anyway)."""
    path = Path(input_path)
    if setup.opts.spatial_dims != 3 or not path.name.lower().endswith((".nii", ".nii.gz")) or not path.is_file():
        return False
    try:
        shape = nib.load(str(path)).shape  # the header only
    except Exception:  # unreadable: the in-memory path's reader says why, in one line naming the file
        return False
    need = in_memory_bytes(shape[:3], int(np.prod(shape[3:])) if len(shape) > 3 else 1, _num_classes(model.card))
    limit = memory_budget(budget)
    if need <= limit:
        return False
    reason = streaming_blocker(path, setup, final)
    if reason is not None:
        log.warning("%s: predicting needs about %.1f GB in memory (budget %.1f GB) and cannot stream: %s",
                    path, need / 1e9, limit / 1e9, reason)  # fmt: skip
        return False
    log.info("%s: about %.1f GB in memory > budget %.1f GB: predicting slab by slab", path, need / 1e9, limit / 1e9)
    return True


def _orientation(affine, axcodes: str) -> np.ndarray:
    """nibabel's orientation transform from the file's axes to ``axcodes`` (identity for none)."""
    src = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    if not axcodes:
        return np.array([[0, 1], [1, 1], [2, 1]], np.float64)
    return nib.orientations.ornt_transform(src, nib.orientations.axcodes2ornt(axcodes, labels=ORIENTATION_LABELS))


def _oriented_shape(shape, affine, axcodes: str) -> tuple[int, ...]:
    ornt = _orientation(affine, axcodes)
    out = [0, 0, 0]
    for i, (j, _) in enumerate(ornt):
        out[int(j)] = int(shape[i])
    return tuple(out)


def _along(axis: int, lo: int, hi: int, lead: int = 0) -> tuple:
    """The index of rows ``[lo, hi)`` of ``axis`` (after ``lead`` leading axes taken whole)."""
    idx = [slice(None)] * (lead + 3)
    idx[lead + axis] = slice(lo, hi)
    return tuple(idx)


class _Volume:
    """The input scan read lazily: slabs along the axis the file stores slowest, put on the model's orientation."""

    def __init__(self, path: Path, axcodes: str):
        self.img = nib.load(str(path), mmap=False)  # slices read from the file, no map growing with the volume
        self.shape = tuple(int(s) for s in self.img.shape[:3])
        self.ornt = _orientation(self.img.affine, axcodes)
        self.inverse = np.zeros_like(self.ornt)  # file axis i went to axis j (flipped or not): j goes back to i
        for i, (j, flip) in enumerate(self.ornt):
            self.inverse[int(j)] = [i, flip]
        self.oriented = _oriented_shape(self.shape, self.img.affine, axcodes)
        self.axis = int(self.ornt[2, 0])  # the file's slowest axis (z in Fortran order) on the model's grid
        self.flip = bool(self.ornt[2, 1] < 0)

    def source_rows(self, lo: int, hi: int) -> tuple[int, int]:
        """File slices ``[z0, z1)`` holding rows ``[lo, hi)`` of the oriented axis."""
        depth = self.shape[2]
        return (depth - hi, depth - lo) if self.flip else (lo, hi)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Oriented rows ``[lo, hi)`` as float32 (the file's scaling applied)."""
        z0, z1 = self.source_rows(lo, hi)
        slab = np.asarray(self.img.dataobj[:, :, z0:z1])  # the stored type (float64 only when the file scales)
        slab = slab.reshape(slab.shape[:3])
        return np.ascontiguousarray(nib.orientations.apply_orientation(slab, self.ornt), dtype=np.float32)

    def to_source(self, block: np.ndarray) -> np.ndarray:
        """An oriented block (spatial axes first) back on the file's axes."""
        return nib.orientations.apply_orientation(block, self.inverse)


class _Plan:
    """The windows of MONAI's ``sliding_window_inference`` on the oriented volume: per-axis starts (its scan
    interval and layout), its Gaussian importance map, grouped by start along the slab axis."""

    def __init__(self, shape, roi, overlap: float, axis: int):
        from monai.data.utils import compute_importance_map, dense_patch_slices  # heavy import (MONAI)
        from monai.inferers.utils import _get_scan_interval

        self.shape, self.roi, self.axis = tuple(shape), tuple(int(r) for r in roi), axis
        interval = _get_scan_interval(self.shape, self.roi, 3, (overlap,) * 3)
        self.starts = [
            sorted({int(s[0][0]) for s in dense_patch_slices([n], [r], [i], return_slice=False)})
            for n, r, i in zip(self.shape, self.roi, interval)
        ]
        self.weight = compute_importance_map(self.roi, mode="gaussian", sigma_scale=0.125, dtype=torch.float32).numpy()

    def cross(self) -> list[tuple[int, ...]]:
        """Window starts on the two other axes (the slab axis start filled in by the caller as ``-1``)."""
        other = [a for a in range(3) if a != self.axis]
        out = []
        for s1 in self.starts[other[0]]:
            for s2 in self.starts[other[1]]:
                start = [-1, -1, -1]
                start[other[0]], start[other[1]] = s1, s2
                out.append(tuple(start))
        return out

    def done_to(self, j: int) -> int:
        """Rows before this one are final once the windows of slab start ``j`` are blended."""
        starts = self.starts[self.axis]
        return starts[j + 1] if j + 1 < len(starts) else self.shape[self.axis]

    @property
    def total(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))


class _Strip:
    """Weighted logit sums of the rows one slab of windows touches: ``K x`` the volume, ``roi`` rows deep."""

    def __init__(self, classes: int, plan: _Plan):
        shape = list(plan.shape)
        shape[plan.axis] = plan.roi[plan.axis]
        self.acc = np.zeros((classes, *shape), np.float32)
        self.wsum = np.zeros(shape, np.float32)
        self.axis, self.top, self.extent = plan.axis, 0, 0

    def shift_to(self, r: int) -> None:
        """Start the strip at oriented row ``r`` (rows above were written)."""
        shift = r - self.top
        if shift <= 0:
            return
        keep = max(0, self.extent - shift)
        for arr, lead in ((self.acc, 1), (self.wsum, 0)):
            if keep:
                arr[_along(self.axis, 0, keep, lead)] = arr[_along(self.axis, shift, shift + keep, lead)]
            arr[_along(self.axis, keep, self.extent, lead)] = 0
        self.top, self.extent = r, keep

    def add(self, start, logits: np.ndarray, plan: _Plan) -> None:
        idx = tuple(slice(s - (self.top if a == self.axis else 0), s - (self.top if a == self.axis else 0) + r)
                    for a, (s, r) in enumerate(zip(start, plan.roi)))  # fmt: skip
        self.acc[(slice(None), *idx)] += logits * plan.weight
        self.wsum[idx] += plan.weight
        self.extent = max(self.extent, plan.roi[self.axis])

    def probabilities(self, lo: int, hi: int) -> np.ndarray:
        """Softmax class probabilities of oriented rows ``[lo, hi)``, ``K x ...``."""
        a, b = lo - self.top, hi - self.top
        p = self.acc[_along(self.axis, a, b, 1)] / self.wsum[_along(self.axis, a, b)][None]
        p -= p.max(0, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(0, keepdims=True)
        return p


class _NiftiOut:
    """An output NIfTI written slab by slab into its data block on disk: the header the in-memory path writes (the
    source's, with the output dtype and the source affine), then each slab of file slices ``[z0, z1)`` with one
    positioned write per channel (Fortran order: a slab is contiguous), so no page of it stays in memory; renamed
    (or gzip-streamed to a ``.nii.gz``) when complete, removed when not."""

    def __init__(self, final: Path, like: Path, shape: tuple, dtype, inputs: list):
        refuse_input_overwrite(final, inputs)
        self.final, self.shape = final, tuple(int(s) for s in shape)
        self.gz = final.name.lower().endswith(".gz")
        tmp = temp_name(final)
        self.raw = tmp.with_name(tmp.name[:-3]) if self.gz else tmp
        self.fd: int | None = None
        src = nib.load(str(like), mmap=False)
        header = src.header.copy()
        header.set_data_dtype(dtype)
        zeros = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
        img = nib.Nifti1Image(zeros, src.affine, header=header)  # data never materialised: zero strides
        img.set_qform(src.affine, int(src.header["qform_code"]) or 1)
        img.set_sform(src.affine, int(src.header["sform_code"]) or 1)
        nib.save(img, str(self.raw))
        proxy = nib.load(str(self.raw), mmap=False).dataobj
        if proxy.slope != 1 or proxy.inter != 0:  # pragma: no cover - integer labels and float32 are never scaled
            raise DataError(final, "internal error: the output header scales its data")
        self.dtype, self.offset = np.dtype(proxy.dtype), int(proxy.offset)
        self.fd = os.open(self.raw, os.O_WRONLY)

    def write(self, z0: int, z1: int, block: np.ndarray) -> None:
        """File slices ``[z0, z1)``: ``X x Y x (z1 - z0) [x C]``."""
        x, y, z = self.shape[:3]
        plane = x * y * self.dtype.itemsize
        channels = block.reshape(*block.shape[:3], -1)
        for c in range(channels.shape[3]):
            data = np.asarray(channels[..., c], self.dtype).tobytes(order="F")
            os.pwrite(self.fd, data, self.offset + (c * z + z0) * plane)

    def finish(self) -> Path:
        os.close(self.fd)
        self.fd = None
        if not self.gz:
            os.replace(self.raw, self.final)
            return self.final
        tmp = temp_name(self.final)
        with open(self.raw, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        os.replace(tmp, self.final)
        self.raw.unlink()
        return self.final

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for path in (self.raw, temp_name(self.final)):
            if path.exists():
                path.unlink()


def _intensity(setup):
    """The recipe's voxel-wise intensity step on a ``1 x ...`` float32 slab tensor: the model's own normalisation,
    or the CT window as MONAI's ``ScaleIntensityRange(clip=True)`` computes it (same operations, in place)."""
    if setup.normalise is not None:
        own = setup.normalise
        return lambda x: torch.as_tensor(own(x)).as_subclass(torch.Tensor).float()
    lo, hi = resolve_window(setup.opts)
    return lambda x: x.sub_(lo).div_(hi - lo).mul_(1.0 - 0.0).add_(0.0).clamp_(0.0, 1.0)


def predict_streaming(
    model, input_path, final: Path, setup, overlap: float | None = None, sw_batch_size: int | None = None,
    save_probabilities: bool = False, progress: bool | None = None,
) -> Path:  # fmt: skip
    """Segment ``input_path`` (an uncompressed 3D ``.nii``) slab by slab into ``final`` (NIfTI, the source's affine
    and header; ``save_probabilities``: also ``*_probs.nii[.gz]``). See the module doc."""
    opts = setup.opts
    vol = _Volume(Path(input_path), opts.orientation if opts.spatial_dims == 3 else "")
    plan = _Plan(vol.oriented, setup.crop, opts.sw_overlap if overlap is None else overlap, vol.axis)
    class_map = ClassMap.from_card(model.card)
    classes = _num_classes(model.card)
    ids = class_map.ids if class_map else list(range(classes))
    lut = np.asarray(ids, np.int64)
    meter = progress_bar(total=plan.total, desc=f"predict {Path(input_path).name}", unit="window",
                         disable=progress is False, delay=0 if progress else 5, leave=True)  # fmt: skip
    outs: list[_NiftiOut] = []
    was = model.training
    model.eval()
    try:
        outs.append(_NiftiOut(final, Path(input_path), vol.shape, output_dtype(ids), [input_path]))
        if save_probabilities:
            probs_path = Path(str(final).replace(".nii", "_probs.nii"))
            outs.append(_NiftiOut(probs_path, Path(input_path), (*vol.shape, classes), np.float32, [input_path]))
        run = _Run(model, vol, plan, _intensity(setup), sw_batch_size or opts.sw_batch_size, lut, outs)
        run.stream(meter)
        written = [out.finish() for out in outs]
    except OSError as exc:
        raise DataError(final, f"cannot write: {os_error_text(exc)}; the output was not written") from None
    finally:
        model.train(was)
        finish_progress(meter, file=sys.stderr)
        for out in outs:
            if out.fd is not None:
                out.discard()
    return written[0]


class _Run:
    """One streaming predict: per slab start, the slab read, its windows through the model, blended, rows
    written once final."""

    def __init__(self, model, vol: _Volume, plan: _Plan, intensity, batch: int, lut: np.ndarray, outs: list):
        self.model, self.vol, self.plan, self.intensity = model, vol, plan, intensity
        self.batch, self.lut, self.outs = max(1, int(batch)), lut, outs
        self.device = next(model.parameters()).device
        self.strip: _Strip | None = None
        self.written = 0

    def stream(self, meter) -> None:
        plan, axis = self.plan, self.plan.axis
        cross = plan.cross()
        for j, s in enumerate(plan.starts[axis]):
            if self.strip is not None:
                self.strip.shift_to(s)
            x = self.intensity(torch.from_numpy(self.vol.read(s, s + plan.roi[axis]))[None])
            if not bool(torch.isfinite(x).all()):
                raise DataError(self.vol.img.get_filename(), "preprocessed scan has NaN/inf values")
            for b in range(0, len(cross), self.batch):
                starts = [tuple(s if a == axis else c[a] for a in range(3)) for c in cross[b : b + self.batch]]
                self._blend(x, s, starts)
                meter.update(len(starts))
            del x  # the next slab is read without this one
            self._write_through(plan.done_to(j))

    def _blend(self, x: torch.Tensor, top: int, starts: list) -> None:
        roi, axis = self.plan.roi, self.plan.axis
        wins = [x[(slice(None), *(slice(st[a] - (top if a == axis else 0), st[a] - (top if a == axis else 0) + roi[a])
                                  for a in range(3)))] for st in starts]  # fmt: skip
        with torch.no_grad():
            logits = self.model.logits(torch.stack(wins).to(self.device)).float().cpu().numpy()
        if self.strip is None:
            self.strip = _Strip(logits.shape[1], self.plan)
            self.strip.top = top
        for st, lg in zip(starts, logits):
            self.strip.add(st, lg, self.plan)

    def _write_through(self, upto: int) -> None:
        """Oriented rows ``[written, upto)``: final, so written to the outputs on the file's axes, a few rows at a
        time (the temporaries stay small)."""
        for lo in range(self.written, upto, WRITE_ROWS):
            hi = min(upto, lo + WRITE_ROWS)
            p = self.strip.probabilities(lo, hi)
            z0, z1 = self.vol.source_rows(lo, hi)
            self.outs[0].write(z0, z1, self.vol.to_source(self.lut[_argmax(p)].astype(self.outs[0].dtype)))
            if len(self.outs) > 1:
                self.outs[1].write(z0, z1, self.vol.to_source(np.moveaxis(p, 0, -1)))
        self.written = max(self.written, upto)


def _argmax(p: np.ndarray) -> np.ndarray:
    """``p.argmax(0)`` (the first class on ties) for a few classes, class by class: faster than numpy's strided
    reduction over the leading axis."""
    best, index = p[0].copy(), np.zeros(p.shape[1:], np.int64)
    for k in range(1, len(p)):
        more = p[k] > best
        index[more] = k
        np.maximum(best, p[k], out=best)
    return index
