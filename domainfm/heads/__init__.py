"""Downstream heads (registered by name) and the encoder+head task module.

Example:
    >>> from domainfm.config import Config
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> type(default_head("classification", enc, 4, Config())).__name__
    'LinearHead'
"""

from __future__ import annotations

from domainfm.heads.classification import LinearHead
from domainfm.heads.segmentation import ProgressiveUpsampleHead
from domainfm.heads.task import TaskModel
from domainfm.registry import get_head, register_head


@register_head("linear")
def _linear(encoder, num_classes: int, **kw):
    return LinearHead(getattr(encoder, "pooled_dim", encoder.embed_dim), num_classes, **kw)


@register_head("upsample-seg")
def _upsample(encoder, num_classes: int, **kw):
    depth = encoder.depth
    layers = kw.pop("layers", sorted({max(0, depth // 2 - 1), depth - 1}))
    return ProgressiveUpsampleHead(encoder.embed_dim, num_classes, encoder.spatial_dims, layers=layers, **kw)


#: the registered head the core uses for each task (a domain's ``head`` hook may choose another)
DEFAULT_HEADS = {"classification": "linear", "multilabel": "linear", "segmentation": "upsample-seg"}


def default_head(task: str, encoder, num_classes: int, cfg):
    """The core's default head for a task, looked up in the head registry (:data:`DEFAULT_HEADS`): linear for
    (multi-label) classification, upsampling for segmentation; ``finetune.head_options`` go to it."""
    opts = dict(cfg.finetune.head_options or {})
    return get_head(DEFAULT_HEADS.get(task, "linear"))(encoder, num_classes, **opts)


__all__ = ["LinearHead", "ProgressiveUpsampleHead", "TaskModel", "default_head"]
