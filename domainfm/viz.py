"""Pictures a person looks at: MAE reconstructions as a PNG grid.

Example:
    >>> import torch, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.png"
    >>> x = torch.rand(2, 1, 16, 16)
    >>> save_reconstruction_png(x, x, x, p).exists()
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _to_display(img: torch.Tensor) -> np.ndarray:
    """``C x (D x) H x W`` -> ``H x W x 3`` uint8 (middle slice for 3D, first 3 channels or grey)."""
    x = img.detach().float().cpu()
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    lo, hi = torch.quantile(x.flatten(), 0.01), torch.quantile(x.flatten(), 0.99)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_reconstruction_png(
    masked: torch.Tensor,
    recon: torch.Tensor,
    original: torch.Tensor,
    path: str | Path,
    max_rows: int = 4,
    scale: int = 4,
) -> Path:
    """A grid with one row per sample: masked input | reconstruction | original."""
    rows = []
    for i in range(min(max_rows, original.shape[0])):
        ref = original[i]
        cells = [_to_display(t[i]) for t in (masked, recon)] + [_to_display(ref)]
        sep = np.full((cells[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], sep, cells[1], sep, cells[2]], axis=1))
    grid = np.concatenate(rows, axis=0)
    image = Image.fromarray(grid)
    image = image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def reconstruction_figure(
    masked: torch.Tensor, recon: torch.Tensor, original: torch.Tensor, max_rows: int = 4, path: str | Path | None = None
):
    """The same grid as a matplotlib Figure (masked | reconstruction | original), for a notebook; written to
    ``path`` only when given.

    Example:
        >>> type(reconstruction_figure(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)))
        <class 'matplotlib.figure.Figure'>
    """
    from matplotlib.figure import Figure  # heavy import, only when a figure is asked for

    rows = min(max_rows, original.shape[0])
    fig = Figure(figsize=(6, 2 * rows), dpi=100)
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        for j, (title, t) in enumerate((("masked", masked), ("reconstruction", recon), ("original", original))):
            axes[i, j].imshow(_to_display(t[i]))
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
