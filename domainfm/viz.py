"""Pictures a person looks at: MAE reconstructions as a titled PNG grid, and matplotlib figures that show
themselves in a notebook.

Every figure the kit returns is made by :func:`new_figure`: a real :class:`matplotlib.figure.Figure`
(``savefig`` and axes as usual) that also renders itself as PNG through the Agg canvas
(``_repr_png_``), so it shows in a fresh Jupyter kernel without ``%matplotlib inline`` and without pyplot.

Example:
    >>> import torch, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.png"
    >>> x = torch.rand(2, 1, 16, 16)
    >>> save_reconstruction_png(x, x, x, p).exists()
    True
    >>> fig = new_figure(figsize=(2, 2))
    >>> fig._repr_png_()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: the columns of a reconstruction view, left to right
RECONSTRUCTION_COLUMNS = ("input", "masked", "reconstruction")


@functools.cache
def _figure_class() -> type:
    """The kit's Figure class, made on first use (matplotlib is imported only when a figure is asked for)."""
    from matplotlib.figure import Figure as MatplotlibFigure  # heavy import, only when a figure is asked for

    class Figure(MatplotlibFigure):
        """A matplotlib Figure that renders itself as PNG in a notebook (``_repr_png_``, Agg canvas), with
        no pyplot state and no ``%matplotlib`` magic needed; ``savefig`` writes files as usual."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

        def __repr__(self) -> str:
            width, height = self.get_size_inches() * self.dpi
            return f"<Figure {width:.0f}x{height:.0f} px with {len(self.axes)} Axes>"

    Figure.__module__ = __name__
    return Figure


def new_figure(**kwargs):
    """A :class:`matplotlib.figure.Figure` (``figsize``, ``dpi``... as matplotlib takes them) that displays
    itself in a notebook; see the module doc.

    Example:
        >>> import matplotlib.figure
        >>> isinstance(new_figure(), matplotlib.figure.Figure)
        True
    """
    return _figure_class()(**kwargs)


def save_figure(fig, path: str | Path | None):
    """Write ``fig`` to ``path`` (its folder created) when a path is given; return ``fig``."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


def _to_display(img: torch.Tensor) -> np.ndarray:
    """``C x (D x) H x W`` -> ``H x W x 3`` uint8 (middle slice for 3D, first 3 channels or grey)."""
    x = img.detach().float().cpu()
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    lo, hi = torch.quantile(x.flatten(), 0.01), torch.quantile(x.flatten(), 0.99)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _columns(masked: torch.Tensor, recon: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The batches in the order of :data:`RECONSTRUCTION_COLUMNS`."""
    return original, masked, recon


def _font_fitting(text: str, width: float):
    """The default font at the largest size (8 to 16 px) at which ``text`` fits ``width`` pixels."""
    try:
        for size in range(16, 8, -1):
            font = ImageFont.load_default(size=size)
            if font.getlength(text) <= width:
                return font
        return ImageFont.load_default(size=8)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def save_reconstruction_png(
    masked: torch.Tensor,
    recon: torch.Tensor,
    original: torch.Tensor,
    path: str | Path,
    max_rows: int = 4,
    scale: int = 4,
) -> Path:
    """A grid with one row per sample under the column titles input | masked | reconstruction."""
    rows = []
    for i in range(min(max_rows, original.shape[0])):
        cells = [_to_display(t[i]) for t in _columns(masked, recon, original)]
        sep = np.full((cells[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], sep, cells[1], sep, cells[2]], axis=1))
    grid = np.concatenate(rows, axis=0)
    width = rows[0].shape[1] // 3
    scale = max(scale, -(-96 // width))  # a column at least 96 px wide, so that its title fits
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    cell = image.width / 3
    font = _font_fitting(max(RECONSTRUCTION_COLUMNS, key=len), cell - 4)
    band = getattr(font, "size", 11) + 8
    titled = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    titled.paste(image, (0, band))
    draw = ImageDraw.Draw(titled)
    for j, title in enumerate(RECONSTRUCTION_COLUMNS):
        draw.text((round(j * cell) + 2, 3), title, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    titled.save(path)
    return path


def reconstruction_figure(
    masked: torch.Tensor, recon: torch.Tensor, original: torch.Tensor, max_rows: int = 4, path: str | Path | None = None
):
    """The same grid as a Figure (columns input | masked | reconstruction) that shows itself in a notebook;
    written to ``path`` only when given.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> fig = reconstruction_figure(x, x, x)
        >>> [ax.get_title() for ax in fig.axes[:3]], fig._repr_png_()[:4]
        (['input', 'masked', 'reconstruction'], b'\\x89PNG')
    """
    rows = min(max_rows, original.shape[0])
    fig = new_figure(figsize=(6, 2 * rows), dpi=100)
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        for j, (title, t) in enumerate(zip(RECONSTRUCTION_COLUMNS, _columns(masked, recon, original))):
            axes[i, j].imshow(_to_display(t[i]))
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
