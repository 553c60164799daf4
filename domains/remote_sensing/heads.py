"""Heads for earth observation: a UPerNet/FPN-style segmentation decoder over intermediate ViT
layers, and a (single- or multi-label) classification head.

A head is called as ``head(features)`` with the dict of ``encoder.forward_features``:
``{"tokens": B x N x E, "layers": [B x N x E, ...], "grid": (h, w), "pooled": B x E, "image": x}``;
``head.layers`` lists the block indices it needs.

Example:
    >>> import torch
    >>> head = UPerNetHead(embed_dim=32, num_classes=5, layers=[0, 1, 2, 3], channels=32)
    >>> feats = {"layers": [torch.zeros(2, 16, 32)] * 4, "grid": (4, 4), "image": torch.zeros(2, 3, 32, 32)}
    >>> head.layers
    [0, 1, 2, 3]
    >>> head(feats).shape
    torch.Size([2, 5, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainfm.errors import ConfigError
from domainfm.utils import parse_list


def pick_layers(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread over ``depth`` blocks, ending with the last (duplicates allowed
    for shallow encoders: a depth-2 ViT gives [0, 0, 1, 1])."""
    return [min(depth - 1, max(0, round((k + 1) * depth / n) - 1)) for k in range(n)]


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Rescale(nn.Module):
    """ViTDet-style simple pyramid: turn the single-scale token map into scale 4x, 2x, 1x, 0.5x."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        if scale == 4:
            self.op = nn.Sequential(
                nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(), nn.ConvTranspose2d(dim, dim, 2, 2)
            )
        elif scale == 2:
            self.op = nn.ConvTranspose2d(dim, dim, 2, 2)
        elif scale == 1:
            self.op = nn.Identity()
        else:
            self.op = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.op(x)


class PPM(nn.Module):
    """Pyramid pooling module (PSPNet) on the coarsest level, as in UPerNet."""

    def __init__(self, cin: int, cout: int, scales=(1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True)) for s in scales
        )
        self.bottleneck = _conv_bn_relu(cin + len(scales) * cout, cout)

    def forward(self, x):
        h, w = x.shape[-2:]
        outs = [x] + [F.interpolate(st(x), size=(h, w), mode="bilinear", align_corners=False) for st in self.stages]
        return self.bottleneck(torch.cat(outs, 1))


class UPerNetHead(nn.Module):
    """UPerNet decoder over ViT layers: simple feature pyramid (4x, 2x, 1x, 1/2x of the token grid),
    PPM on the coarsest level, FPN top-down fusion, concat of all levels, per-pixel classifier;
    logits are upsampled to the input size.

    Args:
        embed_dim: encoder width. num_classes: output classes. layers: block indices (1-4 of them;
            the last one gets the coarsest pyramid level). channels: decoder width.
    """

    def __init__(self, embed_dim: int, num_classes: int, layers: list[int], channels: int = 128, dropout: float = 0.1):
        super().__init__()
        if not 1 <= len(layers) <= 4:
            raise ValueError(f"UPerNetHead takes 1 to 4 layers, got {layers}")
        # the encoder returns each requested block once, in block order: levels index into that list
        self.layers = sorted(set(int(i) for i in layers))
        self.level_src = [self.layers.index(int(i)) for i in layers]
        scales = [4, 2, 1, 0.5][-len(layers) :] if len(layers) < 4 else [4, 2, 1, 0.5]
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in layers)
        self.rescale = nn.ModuleList(_Rescale(embed_dim, s) for s in scales)
        self.lateral = nn.ModuleList(_conv_bn_relu(embed_dim, channels, 1) for _ in layers[:-1])
        self.ppm = PPM(embed_dim, channels)
        self.fpn = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in layers[:-1])
        self.fuse = _conv_bn_relu(len(layers) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: dict) -> torch.Tensor:
        h, w = features["grid"]
        maps = []
        feats = features["layers"]
        for k, src in enumerate(self.level_src):
            tok = feats[src]
            x = self.norms[k](tok).transpose(1, 2).reshape(tok.shape[0], -1, h, w)
            maps.append(self.rescale[k](x))
        lat = [self.lateral[k](maps[k]) for k in range(len(maps) - 1)] + [self.ppm(maps[-1])]
        for k in range(len(lat) - 1, 0, -1):  # top-down
            lat[k - 1] = lat[k - 1] + F.interpolate(
                lat[k], size=lat[k - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [self.fpn[k](lat[k]) for k in range(len(lat) - 1)] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        x = self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))
        image = features.get("image")
        out_size = tuple(image.shape[-2:]) if image is not None else (h * 16, w * 16)
        return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)


class ClassificationHead(nn.Module):
    """Scene/tile classification: mean of the patch tokens (and the pooled token) -> LayerNorm -> MLP.

    Works for single-label (softmax / cross-entropy) and multi-label (sigmoid / BCE) tasks alike;
    the loss lives in the core.
    """

    def __init__(self, embed_dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
        if hidden:
            layers += [nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes)]
        else:
            layers += [nn.Linear(embed_dim, num_classes)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: dict) -> torch.Tensor:
        x = features.get("pooled")
        if x is None:
            x = features["tokens"].mean(1)
        return self.mlp(self.norm(x))


def build_head(task: str, embed_dim: int, depth: int, num_classes: int, options: dict | None = None) -> nn.Module:
    """The remote-sensing head for ``task`` (``classification``/``multilabel``/``segmentation``).

    ``options`` (``finetune.head_options``): ``layers`` (block indices), ``channels`` (decoder width;
    default ``embed_dim`` clipped to 64..256),
    ``hidden`` / ``dropout`` (classification MLP).

    Example:
        >>> head = build_head("segmentation", 64, 2, 3)
        >>> head.layers, head.level_src
        ([0, 1], [0, 0, 1, 1])
    """
    opts = dict(options or {})
    if task == "segmentation":
        layers = parse_list(opts.get("layers"), int) or pick_layers(depth, 4)
        bad = [i for i in layers if not 0 <= int(i) < depth]
        if bad:
            raise ConfigError(f"finetune.head_options.layers {layers}: indices must be in 0..{depth - 1}")
        channels = int(opts.get("channels", min(256, max(64, embed_dim))))
        return UPerNetHead(embed_dim, num_classes, [int(i) for i in layers], channels, float(opts.get("dropout", 0.1)))
    if task in ("classification", "multilabel"):
        return ClassificationHead(embed_dim, num_classes, int(opts.get("hidden", 0)), float(opts.get("dropout", 0.0)))
    raise ConfigError(f"remote_sensing has no head for task {task!r}; use classification, multilabel or segmentation")
