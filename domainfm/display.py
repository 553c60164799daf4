"""How the kit's objects show themselves in a notebook: short text ``__repr__`` and small HTML tables
(``_repr_html_``), progress bars that leave their final state as text, and the batch-aware
preprocessing wrapper a loaded model uses.

Example:
    >>> print(html_table([("domain", "synthetic"), ("stage", "pretrain")], title="FoundationModel"))
    <div><b>FoundationModel</b><table><tr><th style="text-align:left">domain</th>...</table></div>
    >>> import torch
    >>> pre = batched_preprocessor(lambda x: torch.as_tensor(x, dtype=torch.float32), spatial_dims=2)
    >>> pre(torch.zeros(1, 8, 8).numpy()).shape, pre(torch.zeros(5, 1, 8, 8).numpy()).shape
    (torch.Size([1, 8, 8]), torch.Size([5, 1, 8, 8]))
    >>> bar = progress_bar(total=2, desc="train", disable=True)
    >>> finish_progress(bar)
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from domainfm.utils import crs_text


def html_table(rows: Iterable[tuple[str, Any]], title: str = "") -> str:
    """A two-column HTML table (name, value) under a bold title."""
    cells = "".join(
        f'<tr><th style="text-align:left">{html.escape(str(k))}</th>'
        f'<td style="text-align:left">{html.escape(str(v))}</td></tr>'
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table>{cells}</table></div>"


def progress_bar(**kwargs) -> tqdm:
    """A ``tqdm.auto`` bar (``total``, ``desc``... as tqdm takes them): text in a terminal, a widget in a
    notebook. End it with :func:`finish_progress`, so that a saved notebook keeps its final state."""
    return tqdm(**kwargs)


def finish_progress(bar: tqdm, file=None) -> None:
    """Close ``bar``; a notebook widget (which a saved or exported notebook does not keep) also prints its
    final state as one line of text (to ``file``, default stdout)."""
    widget = any(c.__module__ == "tqdm.notebook" for c in type(bar).__mro__)  # tqdm.auto's bar in a kernel
    final = str(bar) if widget and not bar.disable and bar.n else None
    bar.close()  # (closing disables the bar: its state is read before)
    if final is not None:
        print(final, file=file or sys.stdout)


def batched_preprocessor(
    one: Callable[..., torch.Tensor], spatial_dims: int, channels: int | None = None
) -> Callable[..., torch.Tensor]:
    """Wrap a one-input preprocessor: an ``N x C x (D x) H x W`` array (``N x (D x) H x W`` for a
    one-channel model) or a list/tuple of inputs is preprocessed item by item and stacked; anything else
    is one input."""

    def prepare(x, **kw) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            return torch.stack([one(item, **kw) for item in x])
        if isinstance(x, (np.ndarray, torch.Tensor)) and (
            x.ndim == spatial_dims + 2 or (channels == 1 and x.ndim == spatial_dims + 1 and x.shape[0] != 1)
        ):
            return torch.stack([one(item, **kw) for item in x])
        return one(x, **kw)

    prepare.single = one
    return prepare


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def model_rows(model) -> list[tuple[str, Any]]:
    """(name, value) rows describing a FoundationModel from its card and encoder."""
    card = model.card
    enc = card.get("encoder") or {}
    pre = dict(card.get("preprocessing") or {})
    params = sum(p.numel() for p in model.encoder.parameters())
    size = (
        f"{enc.get('name', '?')} depth {getattr(model.encoder, 'depth', None) or enc.get('depth', '?')}, "
        f"dim {getattr(model.encoder, 'embed_dim', '?')}, {_count(params)} params"
    )
    inputs = (
        f"{pre.get('channels', enc.get('in_chans', '?'))} ch, {_dims(enc.get('img_size', '?'))} px, "
        f"patch {_dims(enc.get('patch_size', '?'))} ({enc.get('patch_embed', '?')})"
    )
    skip = {"channels", "mean", "std", "stats", "classes", "sensors", "geometry"}
    prep = ", ".join(
        f"{k}={crs_text(v) if k == 'crs' else _short(v)}" for k, v in pre.items() if k not in skip and v is not None
    )
    rows = [
        ("domain", card.get("domain")),
        ("stage", card.get("stage")),
        ("encoder", size),
        ("inputs", inputs),
        ("preprocessing", prep or "-"),
    ]
    geometry = pre.get("geometry")
    if isinstance(geometry, dict):  # data held in memory with a file geometry: whose files the model predicts on
        rows.append(("geometry", f"{geometry.get('domain')} {geometry.get('kind')}, from {geometry.get('from')}"))
    if card.get("task"):
        rows.append(
            (
                "task",
                f"{card['task']} ({card.get('num_classes')} classes"
                f"{': ' + ', '.join(map(str, card['classes'][:6])) if card.get('classes') else ''})",
            )
        )
    if card.get("val_metrics"):
        rows.append(("val", ", ".join(f"{k}={v:.3f}" for k, v in card["val_metrics"].items())))
    rows.append(("path", model.path))
    return rows


def _dims(v: Any) -> str:
    return "x".join(str(d) for d in v) if isinstance(v, (list, tuple)) else str(v)


def _short(v: Any) -> str:
    text = str([round(x, 3) if isinstance(x, float) else x for x in v]) if isinstance(v, (list, tuple)) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def model_summary(model) -> str:
    """A few lines: what the model is and how it is fed."""
    rows = model_rows(model)
    width = max(len(k) for k, _ in rows)
    return "FoundationModel(\n" + "\n".join(f"  {k:<{width}} {v}" for k, v in rows) + "\n)"


def model_summary_html(model) -> str:
    return html_table(model_rows(model), "FoundationModel")
