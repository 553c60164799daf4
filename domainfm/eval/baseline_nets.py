"""The networks of the supervised baseline (:mod:`domainfm.eval.supervised`) and what they train with: ResNet-18
(timm 2D, MONAI 3D; a 3x3 stride-1 stem below 64 px), a MONAI U-Net padded to its stride, the losses, the
per-channel standardisation and the flip/shift augmentation.

Example:
    >>> net, arch = _classifier_net(1, 2, (28, 28))
    >>> arch, tuple(net(torch.rand(2, 1, 28, 28)).shape)
    ('resnet18-small-input', (2, 2))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from domainfm.errors import DomainFMError
from domainfm.heads.task import IGNORE_INDEX, soft_dice_loss

SMALL_INPUT = 64  # shorter spatial side below which ResNet-18 gets the 3x3 stride-1 stem, no max-pool
UNET_CHANNELS = (16, 32, 64, 128)
MEDICAL_EXTRA = "pip install 'domainfm[medical]'"
WHAT = "supervised baseline"


def _seeded(seed: int, build: Callable, *args):
    """``build(*args)`` with the global RNG seeded by ``seed``, restored afterwards (the caller's is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build(*args)


def _monai_nets():
    try:
        from monai.networks import nets  # optional heavy dependency: the medical extra
    except ImportError as e:
        raise DomainFMError(f"{WHAT}: 3D classification and segmentation need MONAI ({e}); {MEDICAL_EXTRA}") from None
    return nets


def _classifier_net(channels: int, num_classes: int, spatial: tuple[int, ...]) -> tuple[nn.Module, str]:
    """ResNet-18 for ``channels`` x ``spatial`` inputs and its ``arch`` name (small-input stem below 64 px)."""
    small = min(spatial) < SMALL_INPUT
    if len(spatial) == 3:
        stem = {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True} if small else {"conv1_t_stride": 2}
        net = _monai_nets().resnet18(spatial_dims=3, n_input_channels=channels, num_classes=num_classes, **stem)
        return net, "monai-resnet18-3d"
    net = timm.create_model("resnet18", pretrained=False, in_chans=channels, num_classes=num_classes)
    if not small:
        return net, "resnet18"
    net.conv1 = nn.Conv2d(channels, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net, "resnet18-small-input"


class _PaddedUNet(nn.Module):
    """A U-Net that zero-pads its input (a multiple of ``multiple``, at least ``2 * multiple`` per side) and
    crops its logits back to the input size."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        # a multiple of the total stride, and >= 2 pixels at the bottom (instance norm needs more than one)
        pad = [max(2 * self.multiple, s + (-s) % self.multiple) - s for s in size]
        out = self.net(F.pad(x, [v for p in reversed(pad) for v in (0, p)]))
        return out[(slice(None), slice(None), *(slice(0, s) for s in size))]


def _unet(channels: int, num_classes: int, spatial: tuple[int, ...]) -> nn.Module:
    """MONAI U-Net with 1-3 levels of stride 2 (fewer for a short side), wrapped to pad and crop any input size."""
    nets = _monai_nets()
    levels = int(min(len(UNET_CHANNELS) - 1, max(1, math.floor(math.log2(min(spatial))) - 1)))
    net = nets.UNet(
        spatial_dims=len(spatial),
        in_channels=channels,
        out_channels=num_classes,
        channels=UNET_CHANNELS[: levels + 1],
        strides=(2,) * levels,
        num_res_units=2,
    )
    return _PaddedUNet(net, 2**levels)


def _classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target)


def _segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX) + soft_dice_loss(logits, target)


class _Standardize:
    """Per-channel ``(x - mean) / std`` with the statistics of the images it was built on (the fit part)."""

    def __init__(self, x: torch.Tensor):
        dims = [0, *range(2, x.ndim)]
        self.mean = x.mean(dims, keepdim=True)
        std = x.std(dims, keepdim=True, correction=0)
        self.std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel stays centred

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def _per_item(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    return mask.view(-1, *([1] * (ndim - 1)))


def _flip(x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each item along each spatial axis with probability 1/2 (a label map ``t`` with it)."""
    spatial_target = t.ndim > 1
    for axis in range(x.ndim - 2):
        flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
        x = torch.where(_per_item(flip, x.ndim), x.flip(axis + 2), x)
        if spatial_target:
            t = torch.where(_per_item(flip, t.ndim), t.flip(axis + 1), t)
    return x, t


def _shift(x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each item by up to 1/8 of each side: zero padding + a random crop (a label map padded unlabelled)."""
    size = x.shape[2:]
    pads = [s // 8 for s in size]
    if not any(pads):
        return x, t
    spec = [v for p in reversed(pads) for v in (p, p)]
    xp = F.pad(x, spec)
    tp = F.pad(t, spec, value=IGNORE_INDEX) if t.ndim > 1 else None
    offsets = torch.stack([torch.randint(0, 2 * p + 1, (x.shape[0],), generator=gen) for p in pads], 1).tolist()
    windows = [tuple(slice(o, o + s) for o, s in zip(offs, size)) for offs in offsets]
    x = torch.stack([xp[(i, slice(None), *w)] for i, w in enumerate(windows)])
    if tp is not None:
        t = torch.stack([tp[(i, *w)] for i, w in enumerate(windows)])
    return x, t
