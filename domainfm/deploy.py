"""Export a checkpoint for deployment: ONNX (``torch.onnx.export(..., dynamo=True)``) or a ``torch.export``
program (``.pt2``), with the card inside the file.

The exported graph takes pixels as the domain reads them (the card's channel order, native scale: Hounsfield
units, band values, RGB 0..255) and normalises inside, so a consumer feeds pixels, not a recipe (see
:meth:`domainfm.domain.Domain.export_input`; a recipe built on per-image statistics stays outside and the
metadata says so). Encoders give embeddings (``B x E``), fine-tuned models logits (``B x K`` or
``B x K x (D x) H x W``). The batch is dynamic; the spatial size too when the model's shape logic allows it
(positions are interpolated), else it is fixed at the training size and the metadata says why. Wavelength
models are exported for the card's bands (their patch projection is computed once, at export).

The card, with an ``export`` record (input layout, channels, geometry, normalisation, output, window size,
the sha256 of the source weights, the measured parity), is the ONNX ``metadata_props`` entry and the ``.pt2``
extra file ``domainfm.card``; :func:`domainfm.exported.read_card` reads it back.

Example:
    >>> import tempfile
    >>> from domainfm.demo import example_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> ckpt, _ = example_checkpoint("synthetic", folder)
    >>> out = export(ckpt, folder / "encoder.pt2")
    >>> from domainfm.exported import load_exported
    >>> model = load_exported(out)
    >>> model.embed(torch.rand(3, 1, 32, 32)).shape, model.export["parity"]["max_abs_diff"] < 1e-4
    (torch.Size([3, 32]), True)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import hashlib
import io
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from domainfm.card import Card
from domainfm.errors import ConfigError, UnsupportedError
from domainfm.exported import CARD_KEY, SUFFIXES, export_format, onnx_module, onnxruntime_module
from domainfm.io_safety import atomic_output, check_exists, check_output, same_file
from domainfm.model import FoundationModel, load
from domainfm.models.patch_embed import PatchEmbed2d
from domainfm.train.checkpoint import resolve_checkpoint, software_versions

log = logging.getLogger("domainfm.deploy")

FORMATS = tuple(dict.fromkeys(SUFFIXES.values()))
TASKS = ("classification", "multilabel", "segmentation")
FP32_PARITY = 1e-4  # what an fp32 export promises against the checkpoint (max abs difference)
MAX_GRID = 1024  # largest token grid side a dynamic export accepts


def _resample_positions(encoder, grid) -> torch.Tensor:
    """The training grid's positions interpolated to ``grid`` (bicubic in 2D, trilinear in 3D), always: with a
    symbolic grid there is no "same grid" shortcut, and at the training grid the interpolation is the identity."""
    pe = encoder.pos_embed[0]
    dim = pe.shape[-1]
    x = pe.reshape(1, *encoder.grid, dim).movedim(-1, 1).float()
    mode = "bicubic" if len(encoder.grid) == 2 else "trilinear"
    x = F.interpolate(x, size=tuple(grid), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(1, -1, dim).to(pe.dtype)


def _fixed_band_embed(patch_embed, wavelengths) -> nn.Module:
    """A wavelength patch embed as the plain conv it is for the card's bands (the generated kernels)."""
    if patch_embed.kind != "wavelength":
        return patch_embed
    with torch.no_grad():
        weight = patch_embed.weights(wavelengths, len(wavelengths), patch_embed.bias.device)
        fixed = PatchEmbed2d(len(wavelengths), patch_embed.patch_size, patch_embed.embed_dim)
        fixed.proj.weight.copy_(weight)
        fixed.proj.bias.copy_(patch_embed.bias)
    return fixed


class ExportGraph(nn.Module):
    """What is exported: pixels -> the card's normalisation -> encoder (+ head) -> embeddings or logits.

    ``normalization`` is :meth:`Domain.export_input`'s record (``None``: the input is model-ready). With
    ``fp16`` the network runs in half precision after an fp32 normalisation; input and output stay fp32.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
        >>> graph = ExportGraph(enc, None, {"mean": [100.0], "std": [50.0], "clip": None}).eval()
        >>> torch.allclose(graph(torch.full((2, 1, 16, 16), 150.0)), enc.embed(torch.ones(2, 1, 16, 16)), atol=1e-6)
        True
    """

    def __init__(self, encoder, head, normalization: dict | None, wavelengths=None, fp16: bool = False):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.encoder.patch_embed = _fixed_band_embed(self.encoder.patch_embed, wavelengths)
        self.encoder.pos_embed_for = lambda grid: _resample_positions(self.encoder, grid)
        self.head = copy.deepcopy(head)
        self.layers = getattr(head, "layers", None)
        self.dtype = torch.float16 if fp16 else torch.float32
        norm = normalization or {}
        shape = (1, -1) + (1,) * self.encoder.spatial_dims
        self.normalizes = normalization is not None
        self.register_buffer("mean", torch.tensor(norm.get("mean") or [0.0]).float().reshape(shape))
        self.register_buffer("std", torch.tensor(norm.get("std") or [1.0]).float().reshape(shape))
        self.clip = tuple(float(v) for v in norm["clip"]) if norm.get("clip") else None
        self.nan_to_zero = bool(norm.get("nan_to_zero"))
        if fp16:
            self.encoder.half()
            if self.head is not None:
                self.head.half()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The card's per-channel ``(x - mean) / std``, clip and nodata rule, in fp32."""
        if not self.normalizes:
            return pixels
        x = (pixels - self.mean) / self.std
        if self.clip is not None:
            x = x.clamp(self.clip[0], self.clip[1])
        if self.nan_to_zero:
            x = torch.where(torch.isnan(pixels), torch.zeros_like(x), x)
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels).to(self.dtype)
        if self.head is None:
            return self.encoder.embed(x).float()
        return self.head(self.encoder.forward_features(x, layers=self.layers)).float()


# ---- checks before any work ------------------------------------------------------------------------
def _format(format: str | None, out: Path) -> str:
    """The format asked for (``format``, else ``out``'s suffix), checked."""
    given = format or export_format(out)
    if given is None:
        raise ConfigError(f"{out}: name the output *.onnx or *.pt2 (the format follows the suffix), or give format=")
    fmt = str(given).lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    return fmt


def _check_out(out: Path, ckpt: Path, fmt: str, exist_ok: bool) -> Path:
    """Before any work: never the checkpoint's own file or folder, the suffix of the format, the exist_ok rule."""
    sources = [p for p in ckpt.iterdir() if p.is_file()] + [ckpt]
    if any(same_file(out, src) for src in sources) or ckpt.resolve() in out.resolve().parents:
        raise ConfigError(f"{out} is the checkpoint's own file or lies inside its folder {ckpt}; choose another out")
    if export_format(out) != fmt:
        want = next(s for s, f in SUFFIXES.items() if f == fmt)
        raise ConfigError(f"{out}: an {fmt} export is written to a {want} file; name the output *{want}")
    check_exists(out, bool(exist_ok), sources)  # the kit's one exist_ok rule
    return check_output(out, sources)


def _model_for_export(ckpt: Path) -> FoundationModel:
    model = load(ckpt)
    task = model.card.task
    if task and task not in TASKS:
        raise UnsupportedError(
            f"{ckpt}: task {task!r} is not exported (encoders and {', '.join(TASKS)} models are); "
            "export the encoder checkpoint it was trained from"
        )
    return model.float().eval()


def weights_sha256(ckpt: Path) -> str:
    """sha256 of a checkpoint's weights file (``model.safetensors``)."""
    digest = hashlib.sha256()
    with open(ckpt / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- tracing -----------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _trace(graph: ExportGraph, example: torch.Tensor, patch: tuple[int, ...], dynamic: bool):
    """``torch.export`` of ``graph`` with a dynamic batch and, when ``dynamic``, spatial sizes in multiples of
    the patch; torch.export's own error (a shape the model's logic fixes) propagates."""
    shapes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic:
        shapes.update({2 + i: p * torch.export.Dim(f"grid{i}", min=1, max=MAX_GRID) for i, p in enumerate(patch)})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return torch.export.export(graph, (example,), dynamic_shapes=(shapes,))


def _fixed_size_op(program) -> str | None:
    """An op the ONNX exporter lowers for the traced size only (adaptive pooling: its kernel comes from the
    example's shape), or ``None``."""
    for node in program.graph.nodes:
        if node.op == "call_function" and "adaptive_" in str(node.target):
            return str(node.target)
    return None


def _program(graph: ExportGraph, example: torch.Tensor, patch, fmt: str, dynamic: bool = True):
    """``(program, dynamic spatial size?, why fixed)``: dynamic when the model (and, for ONNX, its ops) allow it."""
    reason = None
    if dynamic:
        try:
            program = _trace(graph, example, patch, True)
            op = _fixed_size_op(program) if fmt == "onnx" else None
            if op is None:
                return program, True, None
            reason = f"{op} is exported to ONNX for one input size only"
        except Exception as exc:  # the head's shape logic (e.g. a size-dependent number of stages) fixes the size
            reason = _first_line(exc)
    try:
        return _trace(graph, example, patch, False), False, reason
    except Exception as exc:  # torch.export's own error types
        raise UnsupportedError(f"torch.export cannot trace this model ({_first_line(exc)})") from None


def _onnx_program(program, example: torch.Tensor, opset: int | None, output: str):
    onnx_module(), onnxruntime_module()
    kwargs = {"opset_version": int(opset)} if opset else {}
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1]:
        try:
            return torch.onnx.export(
                program,
                (example,),
                dynamo=True,
                input_names=["pixels"],
                output_names=[output],
                verbose=False,
                **kwargs,
            )
        except Exception as exc:  # the exporter's own error types (unsupported op or opset)
            raise UnsupportedError(
                f"the ONNX exporter cannot convert this model{f' at opset {opset}' if opset else ''} "
                f"({_first_line(exc)}); try another --opset or --format pt2"
            ) from None


# ---- parity -------------------------------------------------------------------------------------------
def _sample_pixels(graph: ExportGraph, batch: int, channels: int, size, seed: int) -> torch.Tensor:
    """Pixels whose normalised values cover the model's range (standard normal, or the clip range and past it)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *size)
    if graph.clip is not None:
        lo, hi = graph.clip
        z = lo + (hi - lo) * (torch.rand(shape, generator=g) * 1.2 - 0.1)
    else:
        z = torch.randn(shape, generator=g)
    return z * graph.std + graph.mean


def _reference(model: FoundationModel, graph: ExportGraph, pixels: torch.Tensor) -> torch.Tensor:
    """The checkpoint's own output (fp32, eager) for ``pixels``."""
    x = graph.normalize(pixels)
    with torch.no_grad():
        return (model.logits(x) if model.head is not None else model.embed(x)).float()


def _runner(fmt: str, program, onnx_program):
    if fmt == "pt2":
        module = program.module()
        return lambda x: module(x)
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        onnx_program.model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _parity(model, graph, run, channels: int, size, dynamic: bool, patch) -> dict:
    """Max abs difference between the exported program and the checkpoint on two batches: the training size
    (batch 2) and, for a dynamic export, one patch larger per side (batch 1); else batch 3 at the training size."""
    other = [s + p for s, p in zip(size, patch)] if dynamic else list(size)
    cases = [(2, list(size)), (1 if dynamic else 3, other)]
    diffs, scale = [], 0.0
    for k, (batch, shape) in enumerate(cases):
        pixels = _sample_pixels(graph, batch, channels, shape, seed=k)
        ref = _reference(model, graph, pixels)
        with torch.no_grad():
            got = run(pixels).float()
        if got.shape != ref.shape:
            raise UnsupportedError(
                f"the exported program gives shape {tuple(got.shape)}, the checkpoint {tuple(ref.shape)}"
            )
        diffs.append(float((got - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return {
        "max_abs_diff": max(diffs),
        "per_input": diffs,
        "reference_max_abs": scale,
        "inputs": [f"{b} x {channels} x {' x '.join(map(str, s))}" for b, s in cases],
    }


# ---- the record ---------------------------------------------------------------------------------------
def _output_record(model: FoundationModel, spatial_dims: int) -> dict:
    card = model.card
    task = card.task
    grid = " x ".join(["D", "H", "W"][-spatial_dims:])
    if task is None:
        return {"name": "embedding", "kind": "embedding", "layout": "B x E", "size": model.encoder.pooled_dim}
    layout = f"B x K x {grid}" if task == "segmentation" else "B x K"
    return {
        "name": "logits",
        "kind": "logits",
        "layout": layout,
        "task": task,
        "num_classes": card.num_classes,
        "classes": card.classes,
        "class_map": card.class_map,
        "activation": "sigmoid per class" if task == "multilabel" else "softmax over K",
    }


def _input_record(model: FoundationModel, spec: dict, dynamic: bool, reason: str | None, wavelengths) -> dict:
    enc = model.encoder
    dims = enc.spatial_dims
    axes = ["D", "H", "W"][-dims:]
    rec = {k: v for k, v in spec.items() if k not in ("normalization", "recipe", "window", "overlap")}
    rec.update(
        {
            "name": "pixels",
            "dtype": "float32",
            "layout": f"B x C x {' x '.join(axes)}",
            "shape": ["batch", len(spec["channels"]), *(axes if dynamic else list(enc.img_size))],
            "size": list(enc.img_size),
            "multiple_of": list(enc.patch_embed.patch_size),
            "dynamic_spatial": dynamic,
            "fixed_size_reason": reason,
        }
    )
    if wavelengths is not None:
        rec["wavelengths_um"] = [float(w) for w in wavelengths]
    return rec


def _normalization_record(spec: dict) -> dict:
    norm = spec.get("normalization")
    if norm is None:
        return {"inside": False, "recipe": spec.get("recipe") or "the domain's preprocessing (see the card)"}
    return {"inside": True, **norm}


def export_record(model, spec, fmt, opset, fp16, traced, wavelengths) -> dict:
    """The ``export`` section of the card an exported file carries (parity is added once measured)."""
    _, dynamic, reason = traced
    versions = software_versions()
    if fmt == "onnx":
        versions.update({"onnx": onnx_module().__version__, "onnxruntime": onnxruntime_module().__version__})
    return {
        "format": fmt,
        "opset": opset,
        "fp16": bool(fp16),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "checkpoint": str(model.path),
            "weights_file": "model.safetensors",
            "weights_sha256": weights_sha256(model.path),
        },
        "input": _input_record(model, spec, dynamic, reason, wavelengths),
        "normalization": _normalization_record(spec),
        "output": _output_record(model, model.encoder.spatial_dims),
        "window": {"size": spec.get("window") or list(model.encoder.img_size), "overlap": spec.get("overlap")},
        "software": versions,
    }


def _opset_of(onnx_program) -> int | None:
    return next((int(o.version) for o in onnx_program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _write(fmt: str, tmp: Path, program, onnx_program, card: Card) -> None:
    text = card.to_json(indent=None)
    if fmt == "pt2":
        torch.export.save(program, str(tmp), extra_files={CARD_KEY: text})
        return
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, text
    onnx_module().save(proto, str(tmp))


def _build(model: FoundationModel, graph: ExportGraph, fmt: str, opset: int | None, spec: dict, dynamic=True):
    """Trace, convert (ONNX) and measure: ``(program, onnx program or None, dynamic?, why fixed, parity)``."""
    channels, size = len(spec["channels"]), list(model.encoder.img_size)
    patch = tuple(model.encoder.patch_embed.patch_size)
    example = _sample_pixels(graph, 2, channels, size, seed=0)
    program, dynamic, reason = _program(graph, example, patch, fmt, dynamic)
    name = "embedding" if model.head is None else "logits"
    onnx_program = _onnx_program(program, example, opset, name) if fmt == "onnx" else None
    parity = _parity(model, graph, _runner(fmt, program, onnx_program), channels, size, dynamic, patch)
    return program, onnx_program, dynamic, reason, parity


def _sound(parity: dict) -> bool:
    """Whether a dynamic export is as close to the checkpoint at another size as at the training size."""
    at_size, other = parity["per_input"]
    return other <= max(FP32_PARITY, 10 * at_size)


def export(
    checkpoint,
    path: str | Path,
    format: str | None = None,
    opset: int | None = None,
    fp16: bool = False,
    exist_ok: bool = False,
) -> Path:
    """Export a checkpoint (encoder, or a classification/segmentation model) to ``path`` and return it.

    ``format`` is ``"onnx"`` or ``"pt2"`` (default: from ``path``'s suffix); ``opset`` the ONNX opset (default
    the exporter's); ``fp16`` runs the network in half precision (the measured difference to the fp32
    checkpoint is stored and logged); ``exist_ok`` replaces an existing ``path``. The output is written under a
    temporary name and renamed when complete; it is never the checkpoint's own file. See the module doc.
    """
    out = Path(path)
    fmt = _format(format, out)
    ckpt = resolve_checkpoint(checkpoint)
    out = _check_out(out, ckpt, fmt, exist_ok)
    if fmt == "onnx":
        onnx_module(), onnxruntime_module()  # a missing extra is named before any work
    model = _model_for_export(ckpt)
    spec = model.domain.export_input(model.card)
    wavelengths = model._wavelengths(None) if model.encoder.patch_embed.kind == "wavelength" else None
    graph = ExportGraph(model.encoder, model.head, spec.get("normalization"), wavelengths, fp16).eval()
    built = _build(model, graph, fmt, opset, spec)
    if built[2] and not _sound(built[4]):
        fixed = _build(model, graph, fmt, opset, spec, dynamic=False)
        built = (
            *fixed[:3],
            f"the {fmt} graph differs from the checkpoint at sizes other than the traced one",
            fixed[4],
        )
    program, onnx_program, dynamic, reason, parity = built
    record = export_record(model, spec, fmt, opset, fp16, (program, dynamic, reason), wavelengths)
    if onnx_program is not None:
        record["opset"] = _opset_of(onnx_program)
    record["parity"] = {**parity, "runtime": "torch.export program" if fmt == "pt2" else "onnxruntime (CPU)"}
    record["tolerance"] = parity["max_abs_diff"]
    _report_parity(out, record)
    with atomic_output(out, [ckpt / "model.safetensors", ckpt / "card.json"]) as tmp:
        _write(fmt, tmp, program, onnx_program, dataclasses.replace(model.card, export=record))
    return out


def _report_parity(out: Path, record: dict) -> None:
    diff = record["parity"]["max_abs_diff"]
    if record["fp16"]:
        log.warning("%s: fp16 export, max abs difference to the fp32 checkpoint %.2e", out, diff)
    elif not math.isfinite(diff) or diff > FP32_PARITY:
        log.warning("%s: max abs difference to the checkpoint %.2e exceeds %.0e", out, diff, FP32_PARITY)
