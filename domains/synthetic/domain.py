"""A built-in toy domain of generated shapes: the quickstart's data, and the core tests' data.

Images of four shape classes (disk, square, cross, ring) at random positions, sizes and contrasts
over a smooth background with noise, in 2D or 3D, with any channel count. No files needed, so the
core can be exercised (and learn something measurable) on any machine.

Example:
    >>> ds = ShapesDataset(8, size=32, channels=1, spatial_dims=2, seed=0)
    >>> s = ds[0]; s["image"].shape, int(s["label"]) in range(4)
    (torch.Size([1, 32, 32]), True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from domainfm.data.rng import item_numpy_rng
from domainfm.data.sample import make_sample
from domainfm.domain import Domain, DomainExample
from domainfm.errors import ConfigError
from domainfm.synthetic.demo import run_shapes_demo

CLASSES = ("disk", "square", "cross", "ring")
_SPLIT_SEED = {"pretrain": 11, "train": 23, "val": 37, "test": 53, "embed": 53}


def render_shape(kind: int, size: int, spatial_dims: int, rng: np.random.Generator) -> np.ndarray:
    """One shape mask (float 0..1) in a ``size^spatial_dims`` grid."""
    axes = np.meshgrid(*[np.arange(size, dtype=np.float32)] * spatial_dims, indexing="ij")
    radius = rng.uniform(0.18, 0.32) * size
    centre = rng.uniform(radius, size - radius, spatial_dims)
    d = [a - c for a, c in zip(axes, centre)]
    if kind == 0:  # disk / ball
        m = sum(x**2 for x in d) <= radius**2
    elif kind == 1:  # square / cube
        m = np.all([np.abs(x) <= radius * 0.85 for x in d], axis=0)
    elif kind == 2:  # cross
        w = radius * 0.3
        inside = np.all([np.abs(x) <= radius for x in d], axis=0)
        m = inside & (sum((np.abs(x) <= w).astype(np.int32) for x in d) >= spatial_dims - 1)
    else:  # ring / shell
        r2 = sum(x**2 for x in d)
        m = (r2 <= radius**2) & (r2 >= (radius * 0.6) ** 2)
    return m.astype(np.float32)


class ShapesDataset(Dataset):
    """Deterministic generated shapes; ``seed`` picks the split, ``index`` the image."""

    def __init__(
        self,
        n: int,
        size: int = 32,
        channels: int = 1,
        spatial_dims: int = 2,
        seed: int = 0,
        noise: float = 0.15,
        wavelengths: list[float] | None = None,
        with_mask: bool = False,
    ):
        self.n, self.size, self.channels, self.spatial_dims = n, size, channels, spatial_dims
        self.seed, self.noise, self.wavelengths, self.with_mask = seed, noise, wavelengths, with_mask
        self.classes = list(CLASSES)
        self.mask_classes = ["background", *CLASSES]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = item_numpy_rng(self.seed, 0, index)
        label = int(rng.integers(0, len(CLASSES)))
        shape = render_shape(label, self.size, self.spatial_dims, rng)
        grid = np.meshgrid(*[np.linspace(-1, 1, self.size, dtype=np.float32)] * self.spatial_dims, indexing="ij")
        channels = []
        for c in range(self.channels):
            background = sum(rng.uniform(-0.3, 0.3) * g for g in grid)
            contrast = rng.uniform(0.6, 1.4) * (1.0 if c % 2 == 0 else -0.7)
            img = background + contrast * shape + self.noise * rng.standard_normal(shape.shape).astype(np.float32)
            channels.append(img)
        image = torch.from_numpy(np.stack(channels).astype(np.float32))
        mask = torch.from_numpy(shape.astype(np.int64) * (label + 1)) if self.with_mask else None
        return make_sample(
            image, path=f"shapes://{self.seed}/{index}", label=label, mask=mask, wavelengths=self.wavelengths
        )


class SyntheticDomain(Domain):
    """Generated shapes, 2D or 3D, any channel count; optional wavelengths for channel-adaptive models."""

    name = "synthetic"
    needs_data_path = False

    @dataclass
    class Options:
        num_samples: int = 512
        channels: int = 1
        spatial_dims: int = 2
        noise: float = 0.15
        wavelengths: list[float] = field(default_factory=list)
        segmentation: bool = False

    def _size(self, cfg) -> int:
        size = cfg.data.img_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def dataset(self, cfg, split: str):
        opt = cfg.options
        if cfg.data.path is not None and split != "embed":  # generated shapes: --data would be ignored silently
            raise ConfigError(
                f"data.path {cfg.data.path}: the synthetic domain generates its own shapes and reads no "
                'files; drop data.path, or pretrain with the domain of your files (domain="medical", ...)'
            )
        if opt.channels < 1 or opt.num_samples < 1 or opt.spatial_dims not in (2, 3):
            raise ConfigError(
                "synthetic data needs channels >= 1, num_samples >= 1 and spatial_dims 2 or 3, got "
                f"{opt.channels}, {opt.num_samples}, {opt.spatial_dims}"
            )
        if cfg.data.path:
            logging.getLogger("domainfm").warning(
                "the synthetic domain generates its images; data.path %s is not read", cfg.data.path
            )
        n = opt.num_samples if split in ("pretrain", "train") else max(64, opt.num_samples // 4)
        return ShapesDataset(
            n,
            size=self._size(cfg),
            channels=opt.channels,
            spatial_dims=opt.spatial_dims,
            seed=cfg.train.seed * 1000 + _SPLIT_SEED[split],
            noise=opt.noise,
            wavelengths=opt.wavelengths or None,
            with_mask=opt.segmentation,
        )

    def encoder_kwargs(self, cfg, dataset=None) -> dict:
        opt = cfg.options
        kind = cfg.model.patch_embed or ("wavelength" if opt.wavelengths else ("3d" if opt.spatial_dims == 3 else "2d"))
        return {
            "patch_embed": kind,
            "img_size": self._size(cfg),
            "patch_size": cfg.model.patch_size,
            "in_chans": None if kind == "wavelength" else opt.channels,
        }

    def preprocessing(self, cfg, dataset=None) -> dict:
        opt = cfg.options
        return {
            "kind": "synthetic-shapes",
            "size": self._size(cfg),
            "channels": opt.channels,
            "spatial_dims": opt.spatial_dims,
            "classes": list(CLASSES),
            "wavelengths": opt.wavelengths or None,
        }

    def preprocessor(self, card: dict):
        def prepare(x) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if t.ndim == card["preprocessing"]["spatial_dims"]:
                t = t[None]
            return t

        return prepare

    def example(self, folder: Path) -> DomainExample:
        """A tiny recipe over generated shapes (no files: this domain reads none, and has no predict)."""
        config = {
            "domain": "synthetic",
            "out": str(Path(folder) / "pretrain"),
            "data": {"img_size": 32, "options": {"num_samples": 16}},
            "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1},
        }
        return DomainExample(config=config)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        return run_shapes_demo(out_dir, quick=quick)
