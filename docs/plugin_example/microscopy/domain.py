"""Fluorescence microscopy: a folder of 16-bit single-channel TIFF images.

It brings its own patch embed (``log-2d``: photon counts are heavy-tailed, so tokens are made from
``log1p`` of the counts) registered by name; the core builds it from the card like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from domainfm.data.sample import make_sample
from domainfm.domain import Domain, DomainExample
from domainfm.errors import DataError
from domainfm.models.patch_embed import PatchEmbed2d
from domainfm.registry import register_patch_embed


class LogPatchEmbed(PatchEmbed2d):
    """Conv patch embed over ``log1p`` of non-negative counts."""

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        return super().forward(torch.log1p(x.clamp_min(0)), wavelengths=wavelengths)


@register_patch_embed("log-2d")
def _log_patch_embed(embed_dim: int, patch_size, in_chans: int | None = None, **_) -> LogPatchEmbed:
    return LogPatchEmbed(in_chans or 1, patch_size, embed_dim)


def read_counts(path: Path, size: int) -> torch.Tensor:
    """One image as ``1 x size x size`` float counts (centre crop); a bad file is a DataError naming it."""
    try:
        counts = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for a damaged file
        raise DataError(path, f"not a readable TIFF ({type(exc).__name__}); export the image as TIFF") from None
    if counts.ndim != 2 or min(counts.shape) < size:
        raise DataError(path, f"expected a single-channel image of at least {size}x{size}, got shape {counts.shape}")
    top, left = (counts.shape[0] - size) // 2, (counts.shape[1] - size) // 2
    return torch.from_numpy(counts[top : top + size, left : left + size].astype(np.float32))[None]


class MicroscopyDomain(Domain):
    name = "microscopy"

    @dataclass
    class Options:
        size: int = 32

    def _files(self, path) -> list[Path]:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.glob("*.tif"))
        if not files:
            raise DataError(path, "no .tif images found")
        return files

    def dataset(self, cfg, split):
        size = self.options(cfg).size
        return [make_sample(read_counts(f, size), path=str(f)) for f in self._files(cfg.data.path)]

    def encoder_kwargs(self, cfg, dataset=None):
        return {"patch_embed": "log-2d", "img_size": self.options(cfg).size, "patch_size": 8, "in_chans": 1}

    def preprocessing(self, cfg, dataset=None):
        return {"size": self.options(cfg).size, "counts": "log1p in the patch embed"}

    def preprocessor(self, card):
        return lambda path: read_counts(Path(path), card["preprocessing"]["size"])

    def example(self, folder: Path) -> DomainExample:
        folder = Path(folder)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(6):
            tifffile.imwrite(folder / "images" / f"cell{i}.tif", rng.poisson(50 + 40 * i, (40, 40)).astype(np.uint16))
        bad = folder / "broken.tif"
        bad.write_bytes(b"not a tiff")
        config = {
            "domain": "microscopy",
            "out": str(folder / "pretrain"),
            "data": {"path": str(folder / "images")},
            "model": {"depth": 1, "embed_dim": 32, "num_heads": 2},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1},
        }
        return DomainExample(config=config, bad_file=bad)
