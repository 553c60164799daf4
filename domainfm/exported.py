"""Exported models (ONNX, ``torch.export`` ``.pt2``) back in the kit: the card each file carries
(:func:`read_card`) and :class:`ExportedModel`, which offers what the domains' ``predict`` and ``embed`` use of a
:class:`~domainfm.model.FoundationModel` (``card``, ``preprocess``, ``logits``, ``embed``, ``spatial_dims``), run
by onnxruntime or the loaded ``torch.export`` program. So ``domainfm predict model.onnx --input scan.nii.gz``
goes through the same readers, sliding windows and writers as the checkpoint it came from.

The graph takes pixels in the card's channel order and native scale and normalises inside (see
:meth:`domainfm.domain.Domain.export_input`); the domains hand model-ready (normalised) windows to
``logits``/``embed``, which map them back to pixels (``x * std + mean``) before the runtime sees them.

Example:
    >>> is_exported("model.onnx"), is_exported("runs/ct/ckpt-0000100"), export_format("m.pt2")
    (True, False, 'pt2')
    >>> print(describe({"domain": "medical", "export": {"format": "onnx", "fp16": False,
    ...     "input": {"layout": "B x C x D x H x W", "shape": ["batch", 1, "D", "H", "W"], "multiple_of": [8, 8, 8],
    ...               "channels": ["intensity"], "dynamic_spatial": True},
    ...     "normalization": {"inside": True, "text": "CT window"},
    ...     "output": {"kind": "logits", "layout": "B x K x D x H x W", "task": "segmentation"},
    ...     "parity": {"max_abs_diff": 2e-06}}})[0])
    medical onnx export (fp32): input pixels B x C x D x H x W ['batch', 1, 'D', 'H', 'W'], any size in multiples ...
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.card import Card
from domainfm.display import batched_preprocessor
from domainfm.errors import CheckpointError, DataError, UnsupportedError
from domainfm.registry import get_domain

CARD_KEY = "domainfm.card"
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
INSTALL = "pip install 'domainfm[export]'"


def export_format(path: str | Path) -> str | None:
    """``"onnx"`` or ``"pt2"`` from a file name's suffix, else ``None``."""
    return SUFFIXES.get(Path(str(path)).suffix.lower())


def is_exported(path: Any) -> bool:
    """Whether ``path`` names an exported model (``.onnx`` / ``.pt2``), by its suffix."""
    return isinstance(path, (str, Path)) and export_format(path) is not None


def missing_extra(package: str, what: str = "ONNX export and inference") -> UnsupportedError:
    """The one-line error for an optional dependency of the ``export`` extra that is not installed.

    Example:
        >>> str(missing_extra("onnxruntime"))
        "ONNX export and inference need onnxruntime, which is not installed: pip install 'domainfm[export]'"
    """
    return UnsupportedError(f"{what} need {package}, which is not installed: {INSTALL}")


def onnx_module():
    """The ``onnx`` package, or the one-line error saying how to install it."""
    try:
        import onnx  # optional: the [export] extra
    except ImportError:
        raise missing_extra("onnx") from None
    return onnx


def onnxruntime_module():
    """The ``onnxruntime`` package, or the one-line error saying how to install it."""
    try:
        import onnxruntime  # optional: the [export] extra
    except ImportError:
        raise missing_extra("onnxruntime") from None
    return onnxruntime


def _card_json(path: Path, text: str | None) -> Card:
    if text is None:
        raise CheckpointError(
            f"{path}: carries no domainfm card (metadata key {CARD_KEY}); export it with `domainfm export`"
        )
    try:
        card = Card.from_json(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: its {CARD_KEY} metadata is not valid JSON ({exc})") from None
    if not isinstance(card.export, dict):
        raise CheckpointError(f"{path}: its {CARD_KEY} metadata has no export record; export it again")
    return card


def _onnx_card_text(path: Path) -> str | None:
    onnx = onnx_module()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError... for a damaged file
        raise CheckpointError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:120]})") from None
    return next((p.value for p in proto.metadata_props if p.key == CARD_KEY), None)


def _pt2_card_text(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/extra/" + CARD_KEY)), None)
            return None if name is None else zf.read(name).decode()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch.export archive ({exc})") from None


def read_card(path: str | Path) -> dict:
    """The card an exported file carries (with its ``export`` record) as its JSON object, read without running
    anything (:func:`exported_card` gives it typed).

    Raises a one-line :class:`CheckpointError` for a missing, damaged or foreign file.
    """
    return exported_card(path).to_dict()


def exported_card(path: str | Path) -> Card:
    """The :class:`~domainfm.card.Card` an exported file carries; see :func:`read_card`."""
    path = Path(path)
    fmt = export_format(path)
    if fmt is None:
        raise CheckpointError(f"{path}: not an exported model (.onnx or .pt2)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    return _card_json(path, _onnx_card_text(path) if fmt == "onnx" else _pt2_card_text(path))


def _dims(values) -> str:
    return "x".join(str(v) for v in values)


def describe(card: Card | Mapping) -> list[str]:
    """A few lines saying how to feed an exported model and what it gives (``domainfm info`` prints them)."""
    card = card if isinstance(card, Card) else Card.from_dict(card)
    exp = card.export
    inp, out, norm = exp.get("input") or {}, exp.get("output") or {}, exp.get("normalization") or {}
    size = (
        f"any size in multiples of {_dims(inp.get('multiple_of') or [])}"
        if inp.get("dynamic_spatial")
        else f"fixed size {_dims(inp.get('size') or [])}"
    )
    precision = "fp16" if exp.get("fp16") else "fp32"
    parity = (exp.get("parity") or {}).get("max_abs_diff")
    lines = [
        f"{card.domain} {exp.get('format')} export ({precision}): input pixels {inp.get('layout')} "
        f"{inp.get('shape')}, {size}, channels {inp.get('channels')}",
        "normalisation: "
        + (f"inside the graph ({norm.get('text')})" if norm.get("inside") else f"NOT inside: {norm.get('recipe')}"),
        f"output: {out.get('kind')} {out.get('layout')}"
        + (f" ({out.get('task')}: {out.get('classes')})" if out.get("task") else ""),
        f"parity with the checkpoint: max abs diff {parity:.2e} ({precision})"
        if isinstance(parity, float)
        else "parity: not measured",
    ]
    if inp.get("pixels"):
        lines.insert(1, f"pixels: {inp['pixels']}")
    return lines


class _OnnxRunner:
    """An onnxruntime session on the CPU (or the providers given) over one input."""

    def __init__(self, path: Path, providers=None, threads: int | None = None):
        ort = onnxruntime_module()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime's own error types for a damaged or foreign graph
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


class _Pt2Runner:
    """The module of a loaded ``torch.export`` program."""

    def __init__(self, path: Path):
        try:
            self.module = torch.export.load(str(path)).module()
        except Exception as exc:  # torch raises several types for a damaged archive
            raise CheckpointError(f"{path}: torch.export cannot load it ({str(exc).splitlines()[0][:160]})") from None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(pixels.detach().float().cpu().contiguous())


class _ExportedHead(nn.Module):
    """Stands for the head, which runs inside the exported graph (``model.head is None`` means an encoder)."""

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def forward(self, features):
        raise UnsupportedError("the head of an exported model runs inside its graph; call model.logits(x)")


class ExportedModel(nn.Module):
    """An exported file with the interface the domains' predict/embed use of a FoundationModel.

    ``preprocess`` is the domain's preprocessing rebuilt from the card (model-ready, normalised, as for the
    checkpoint); ``logits``/``embed`` take such batches, check them against the card (dims, channels, size,
    wavelengths) and run the graph on the pixels they stand for; :meth:`run` takes pixels directly.
    """

    def __init__(self, path: Path, card: Card | dict, runner: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        card = card if isinstance(card, Card) else Card.from_dict(card)
        self.path, self.card, self._runner = Path(path), card, runner
        self.export = card.export
        self.head = _ExportedHead(card.task) if card.task else None
        # the domains' predict functions find the device from a parameter; an exported model runs on the CPU
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self._preprocess: Callable | None = None
        norm = self.export.get("normalization") or {}
        shape = (1, -1) + (1,) * self.spatial_dims
        self._mean = torch.tensor(norm["mean"], dtype=torch.float32).reshape(shape) if norm.get("inside") else None
        self._std = torch.tensor(norm["std"], dtype=torch.float32).reshape(shape) if norm.get("inside") else None

    def __repr__(self) -> str:
        return "ExportedModel(\n  " + "\n  ".join(describe(self.card) + [f"path {self.path}"]) + "\n)"

    @property
    def domain(self):
        return get_domain(self.card.domain)

    @property
    def spatial_dims(self) -> int:
        return len(self.export["input"]["size"])

    @property
    def channels(self) -> list[str]:
        return list(self.export["input"]["channels"])

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        """The domain's preprocessing from the card (as :attr:`FoundationModel.preprocess`): model-ready tensors."""
        if self._preprocess is None:
            one = self.domain.preprocessor(self.card)
            self._preprocess = batched_preprocessor(one, self.spatial_dims, len(self.channels))
        return self._preprocess

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model-ready (normalised) input back to the pixels the graph takes: ``x * std + mean``."""
        x = x.float().cpu()
        return x if self._mean is None else x * self._std + self._mean

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse, in one line, a batch the exported graph does not take (dims, channels, size)."""
        inp = self.export["input"]
        if x.ndim != self.spatial_dims + 2:
            raise DataError(None, f"{self.path.name} takes {inp['layout']} input, got shape {tuple(x.shape)}")
        if x.shape[1] != len(self.channels):
            raise DataError(
                None,
                f"{self.path.name} takes {len(self.channels)} channel(s) ({', '.join(self.channels)}); "
                f"the input has {x.shape[1]}",
            )
        spatial = tuple(x.shape[2:])
        if not inp.get("dynamic_spatial") and spatial != tuple(inp["size"]):
            raise DataError(
                None, f"{self.path.name} takes a fixed size {_dims(inp['size'])}; the input is {_dims(spatial)}"
            )
        bad = [s for s, m in zip(spatial, inp.get("multiple_of") or []) if s % m]
        if bad:
            raise DataError(
                None, f"{self.path.name} takes sizes in multiples of {_dims(inp['multiple_of'])}; got {_dims(spatial)}"
            )

    def _check_wavelengths(self, wavelengths) -> None:
        fixed = self.export["input"].get("wavelengths_um")
        if wavelengths is None or not fixed:
            return
        given = [float(w) for w in torch.as_tensor(wavelengths).reshape(-1).tolist()]
        if len(given) != len(fixed) or any(abs(a - b) > 1e-6 for a, b in zip(given, fixed)):
            raise DataError(
                None,
                f"{self.path.name} was exported for the wavelengths {fixed} µm ({', '.join(self.channels)}); "
                f"the input's bands have {given}: export the checkpoint again for these bands",
            )

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """The graph's output for a batch of pixels (the export's input layout, native scale)."""
        self.check_input(pixels)
        return self._runner(pixels)

    def _ready(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = self.preprocess(x)
            x = x[None] if x.ndim == self.spatial_dims + 1 else x
        return x

    def _output(self, x, wavelengths, kind: str) -> torch.Tensor:
        have = self.export["output"]["kind"]
        if have != kind:
            fix = (
                "export the pretrained encoder checkpoint" if kind == "embedding" else "export a fine-tuned checkpoint"
            )
            raise CheckpointError(f"{self.path}: this export gives {have}, not {kind}; {fix}")
        self._check_wavelengths(wavelengths)
        x = self._ready(x)
        self.check_input(x)
        return self.run(self.to_pixels(x))

    @torch.no_grad()
    def logits(self, x, wavelengths=None) -> torch.Tensor:
        """Head output for a model-ready batch (as :meth:`FoundationModel.logits`)."""
        return self._output(x, wavelengths, "logits")

    @torch.no_grad()
    def embed(self, x, wavelengths=None) -> torch.Tensor:
        """One vector per input for a model-ready batch (as :meth:`FoundationModel.embed`)."""
        return self._output(x, wavelengths, "embedding")

    def forward(self, x, wavelengths=None) -> torch.Tensor:
        return self._output(x, wavelengths, self.export["output"]["kind"])


def load_exported(path: str | Path, providers=None, threads: int | None = None) -> ExportedModel:
    """An exported file (``.onnx`` through onnxruntime, ``.pt2`` through ``torch.export.load``) as an
    :class:`ExportedModel`; ``providers`` are onnxruntime's (default the CPU), ``threads`` its intra-op threads."""
    path = Path(path)
    card = exported_card(path)
    if export_format(path) == "onnx":
        runner = _OnnxRunner(path, providers, threads)
    else:
        runner = _Pt2Runner(path)
    return ExportedModel(path, card, runner)
