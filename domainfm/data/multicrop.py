"""Multi-crop views for self-distillation (DINO): ``n_global`` large crops and ``n_local`` small ones, 2D or 3D.

A domain decides *how* crops are cut and which intensity changes are physically plausible (see
``Domain.multicrop``); this module is the shared mechanism. All randomness comes from a generator
derived from ``(seed, epoch, index)`` (:mod:`domainfm.data.rng`), so crops are the same whatever
worker runs them and after a resume.

Example:
    >>> import torch
    >>> crops = make_multicrop(spatial_dims=2, global_size=(32, 32), local_size=(16, 16), n_local=3)
    >>> views = crops(torch.rand(1, 32, 32), torch.Generator().manual_seed(0))
    >>> [tuple(v.shape) for v in views]
    [(1, 32, 32), (1, 32, 32), (1, 16, 16), (1, 16, 16), (1, 16, 16)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from domainfm.data.rng import item_generator
from domainfm.data.views import DatasetWrapper
from domainfm.errors import ConfigError

Photometric = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def crop_box(
    spatial: Sequence[int], g: torch.Generator, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)
) -> tuple[list[int], list[int]]:
    """A random box covering ``scale`` of the image's area (2D) or volume (3D): ``(starts, sizes)``.

    2D boxes take a log-uniform aspect ratio in ``ratio`` (as torchvision's RandomResizedCrop);
    3D boxes keep the volume's proportions (voxels are already resampled to the target spacing).

    Example:
        >>> starts, sizes = crop_box((32, 32), torch.Generator().manual_seed(0), (0.25, 0.25), ratio=(1, 1))
        >>> sizes
        [16, 16]
    """
    area = _u(g, *scale)
    if len(spatial) == 2:
        r = math.exp(_u(g, math.log(ratio[0]), math.log(ratio[1])))
        frac = [math.sqrt(area / r), math.sqrt(area * r)]
    else:
        frac = [area ** (1.0 / len(spatial))] * len(spatial)
    sizes = [min(s, max(1, int(round(s * f)))) for s, f in zip(spatial, frac)]
    starts = [int(torch.randint(0, s - c + 1, (1,), generator=g)) for s, c in zip(spatial, sizes)]
    return starts, sizes


def resized_crop(
    x: torch.Tensor, g: torch.Generator, out_size: Sequence[int], scale: Sequence[float], same_scale: bool = False
) -> torch.Tensor:
    """Crop ``x`` (``C x (D x) H x W``) and resize to ``out_size``.

    With ``same_scale`` the box is exactly ``out_size`` pixels/voxels and is not resized (the
    physical resolution, e.g. microns per pixel, is kept).
    """
    spatial = tuple(x.shape[1:])
    if same_scale:
        sizes = list(out_size)
        starts = [int(torch.randint(0, s - c + 1, (1,), generator=g)) for s, c in zip(spatial, sizes)]
    else:
        starts, sizes = crop_box(spatial, g, scale)
    crop = x[(slice(None), *[slice(a, a + c) for a, c in zip(starts, sizes)])]
    if tuple(crop.shape[1:]) == tuple(out_size):
        return crop.float()
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(crop[None].float(), size=tuple(out_size), mode=mode, align_corners=False)[0]


def random_flip_rot(
    x: torch.Tensor, g: torch.Generator, flip_axes: Sequence[int] = (), rot90: bool = False
) -> torch.Tensor:
    """Random flips along ``flip_axes`` (tensor axes) and, with ``rot90``, a random multiple of 90 degrees in-plane."""
    for axis in flip_axes:
        if float(torch.rand(1, generator=g)) < 0.5:
            x = x.flip(axis)
    if rot90 and x.shape[-1] == x.shape[-2]:
        k = int(torch.randint(0, 4, (1,), generator=g))
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    return x


def make_multicrop(
    spatial_dims: int,
    global_size: Sequence[int],
    local_size: Sequence[int],
    n_global: int = 2,
    n_local: int = 6,
    global_scale: Sequence[float] = (0.32, 1.0),
    local_scale: Sequence[float] = (0.05, 0.32),
    flip_axes: Sequence[int] | None = None,
    rot90: bool = False,
    photometric: Photometric | None = None,
    same_scale: bool = False,
) -> Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]:
    """``fn(image, generator) -> [global crops..., local crops...]``.

    Global crops have ``global_size`` and local crops ``local_size`` (pixels or voxels); every crop
    gets random flips (``flip_axes``, default all spatial axes), optional 90-degree rotations and the
    domain's ``photometric`` change. Channels (bands, sequences) are never mixed or dropped.

    Example:
        >>> import torch
        >>> f = make_multicrop(3, (16, 16, 16), (8, 8, 8), n_local=2)
        >>> [tuple(v.shape) for v in f(torch.rand(1, 16, 16, 16), torch.Generator().manual_seed(1))]
        [(1, 16, 16, 16), (1, 16, 16, 16), (1, 8, 8, 8), (1, 8, 8, 8)]
    """
    global_size, local_size = tuple(int(s) for s in global_size), tuple(int(s) for s in local_size)
    axes = tuple(range(1, spatial_dims + 1)) if flip_axes is None else tuple(flip_axes)

    def one(x: torch.Tensor, g: torch.Generator, size, scale) -> torch.Tensor:
        y = resized_crop(x, g, size, scale, same_scale=same_scale and size != tuple(x.shape[1:]))
        y = random_flip_rot(y, g, axes, rot90)
        if photometric is not None:
            y = photometric(y, g)
        return y.contiguous()

    def crops(x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        if any(ls > s for ls, s in zip(local_size, x.shape[1:])):
            raise ConfigError(
                f"objective.local_crop_size {list(local_size)} is larger than the image "
                f"{list(x.shape[1:])}; use a smaller local crop"
            )
        return [one(x, g, global_size, global_scale) for _ in range(n_global)] + [
            one(x, g, local_size, local_scale) for _ in range(n_local)
        ]

    return crops


def multicrop_from_config(
    ocfg, spatial_dims: int, global_size: Sequence[int], local_size: Sequence[int], **overrides
) -> Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]:
    """:func:`make_multicrop` with the counts and scales of ``objective.*``; a domain passes its own
    ``photometric``, ``flip_axes``, ``rot90`` or ``same_scale`` as ``overrides``.

    Example:
        >>> from domainfm.config import ObjectiveConfig
        >>> f = multicrop_from_config(ObjectiveConfig(name="dino", local_crops=1), 2, (16, 16), (8, 8))
        >>> len(f(torch.rand(1, 16, 16), torch.Generator().manual_seed(0)))
        3
    """
    kw = {
        "n_global": ocfg.global_crops,
        "n_local": ocfg.local_crops,
        "global_scale": tuple(ocfg.global_crop_scale),
        "local_scale": tuple(ocfg.local_crop_scale),
    }
    kw.update(overrides)
    return make_multicrop(spatial_dims, global_size, local_size, **kw)


def default_local_size(img_size: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """DINO's local/global ratio (96/224) rounded to whole patches, at least 2 patches a side.

    Example:
        >>> default_local_size((28, 28), (4, 4)), default_local_size((224, 224), (16, 16))
        ([12, 12], [96, 96])
    """
    return [min(s, max(2 * p, int(round(s * 96 / 224 / p)) * p)) for s, p in zip(img_size, patch_size)]


def check_multicrop(ocfg, img_size: Sequence[int], patch_size: Sequence[int], batch_size: int) -> list[int]:
    """Validate the multi-crop and centering settings; return the local crop size. One-line ConfigErrors.

    Example:
        >>> from domainfm.config import ObjectiveConfig
        >>> check_multicrop(ObjectiveConfig(name="dino"), (32, 32), (8, 8), batch_size=8)
        [16, 16]
    """
    img_size, patch_size = list(img_size), list(patch_size)
    if ocfg.global_crops < 1:
        raise ConfigError(
            f"objective.global_crops must be >= 1 (the teacher sees the global crops), got {ocfg.global_crops}"
        )
    if ocfg.local_crops < 0 or ocfg.global_crops + ocfg.local_crops < 2:
        raise ConfigError(
            f"objective.local_crops must be >= 0 with at least 2 crops in all, "
            f"got {ocfg.global_crops} global + {ocfg.local_crops} local"
        )
    for key in ("global_crop_scale", "local_crop_scale"):
        lo, hi = getattr(ocfg, key)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"objective.{key} must be [low, high] with 0 < low <= high <= 1 (a crop cannot be "
                f"larger than the image), got {[lo, hi]}"
            )
    if ocfg.local_crop_size is None:
        local = default_local_size(img_size, patch_size)
    else:
        local = ocfg.local_crop_size if isinstance(ocfg.local_crop_size, list) else [ocfg.local_crop_size]
        local = local * len(img_size) if len(local) == 1 else list(local)
    if len(local) != len(img_size) or any(ls > s for ls, s in zip(local, img_size)):
        raise ConfigError(
            f"objective.local_crop_size {ocfg.local_crop_size} is larger than the image "
            f"(data.img_size {img_size}); use at most the image size"
        )
    if any(ls < p or ls % p for ls, p in zip(local, patch_size)):
        raise ConfigError(f"objective.local_crop_size {local} must be a multiple of model.patch_size {patch_size}")
    if batch_size < 2:
        raise ConfigError(
            f"train.batch_size {batch_size} is too small for the teacher's centering "
            f"(objective.centering {ocfg.centering!r} averages over the batch); use >= 2"
        )
    return local


class MultiCropDataset(DatasetWrapper):
    """Wrap a dataset so each sample carries ``views``: the crops from ``crops(image, generator)``.

    Example:
        >>> import torch
        >>> base = [{"image": torch.rand(1, 16, 16), "meta": {}}]
        >>> ds = MultiCropDataset(base, make_multicrop(2, (16, 16), (8, 8), n_local=1), seed=0)
        >>> [tuple(v.shape) for v in ds[0]["views"]]
        [(1, 16, 16), (1, 16, 16), (1, 8, 8)]
    """

    def __init__(self, dataset, crops: Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]], seed: int = 0):
        super().__init__(dataset, seed)
        self.crops = crops

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        g = item_generator(self.seed, self.epoch, index, salt=29)
        sample["views"] = self.crops(sample["image"], g)
        return sample


class RandomResizedCropDataset(MultiCropDataset):
    """Replace each sample's ``image`` by one random resized crop covering ``scale`` of it (same size).

    Example:
        >>> import torch
        >>> ds = RandomResizedCropDataset([{"image": torch.rand(1, 16, 16), "meta": {}}], (0.5, 1.0))
        >>> tuple(ds[0]["image"].shape)
        (1, 16, 16)
    """

    def __init__(self, dataset, scale: Sequence[float], seed: int = 0):
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"objective.mae_crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(scale)}"
            )
        super().__init__(dataset, lambda x, g: [resized_crop(x, g, tuple(x.shape[1:]), (lo, hi))], seed)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample["image"] = sample.pop("views")[0]
        return sample
