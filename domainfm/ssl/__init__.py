"""Self-supervised objectives, registered by name: ``mae``, ``contrastive``, ``mae+contrastive``, ``dino``,
``mae+dino``.

Example:
    >>> from domainfm.config import ObjectiveConfig
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> type(build_objective(enc, ObjectiveConfig(name="mae"))).__name__
    'MAE'
"""

from __future__ import annotations

from domainfm.data.multicrop import MultiCropDataset, RandomResizedCropDataset, check_multicrop
from domainfm.data.views import ViewsDataset
from domainfm.errors import ConfigError, did_you_mean
from domainfm.registry import (
    get_objective,
    list_objectives,
    objective_spec,
    patch_embed_spatial_dims,
    register_objective,
)
from domainfm.ssl.combined import MAEContrastive, MAEContrastiveOptions, MAEDINOOptions
from domainfm.ssl.contrastive import Contrastive, ContrastiveOptions
from domainfm.ssl.dino import DINO, MAEDINO, CollapseError, DINOOptions, MultiCropOptions
from domainfm.ssl.mae import MAE, MAEOptions
from domainfm.ssl.monitor import collapse_metrics, teacher_collapse_metrics


def _mae_kwargs(cfg) -> dict:
    return {
        "mask_ratio": cfg.mask_ratio,
        "decoder_dim": cfg.decoder_dim,
        "decoder_depth": cfg.decoder_depth,
        "decoder_heads": cfg.decoder_heads,
        "norm_pix_loss": cfg.norm_pix_loss,
    }


def _contrastive_kwargs(cfg) -> dict:
    return {
        "proj_dim": cfg.proj_dim,
        "hidden_dim": cfg.proj_hidden_dim,
        "temperature": cfg.temperature,
        "momentum": cfg.momentum,
    }


@register_objective("mae", options=MAEOptions)
def _build_mae(encoder, cfg):
    return MAE(encoder, **_mae_kwargs(cfg))


@register_objective("contrastive", views="pair", min_batch=2, options=ContrastiveOptions)
def _build_contrastive(encoder, cfg):
    return Contrastive(encoder, **_contrastive_kwargs(cfg))


@register_objective(
    "mae+contrastive", views="pair", min_batch=2, parts=("mae", "contrastive"), options=MAEContrastiveOptions
)
def _build_both(encoder, cfg):
    return MAEContrastive(encoder, cfg.mae_weight, cfg.contrastive_weight, _mae_kwargs(cfg), _contrastive_kwargs(cfg))


def check_objective(cfg, batch_size: int | None = None) -> None:
    """A one-line ConfigError naming ``objective.name`` when no objective of that name is registered, or
    ``train.batch_size`` when it is below what the objective needs (contrastive negatives)."""
    if cfg.name not in list_objectives():
        raise ConfigError(
            f"objective.name must be one of {', '.join(list_objectives())}, got {cfg.name!r}"
            + did_you_mean(cfg.name, list_objectives())
        )
    need = objective_spec(cfg.name).min_batch
    if batch_size is not None and batch_size < need:
        raise ConfigError(
            f"{cfg.name} needs train.batch_size >= {need} (other samples are the negatives), got {batch_size}"
        )


def _dino_kwargs(cfg) -> dict:
    return {
        "prototypes": cfg.prototypes,
        "hidden_dim": cfg.head_hidden_dim,
        "bottleneck_dim": cfg.head_bottleneck_dim,
        "head_layers": cfg.head_layers,
        "head_bn": cfg.head_bn,
        "n_global": cfg.global_crops,
        "teacher_momentum": cfg.teacher_momentum,
        "teacher_temp": cfg.teacher_temp,
        "warmup_teacher_temp": cfg.warmup_teacher_temp,
        "teacher_temp_warmup_steps": cfg.teacher_temp_warmup_steps,
        "student_temp": cfg.student_temp,
        "centering": cfg.centering,
        "center_momentum": cfg.center_momentum,
        "koleo_weight": cfg.koleo_weight,
        "ibot_weight": cfg.ibot_weight,
        "ibot_mask_ratio": cfg.ibot_mask_ratio,
        "dino_weight": cfg.dino_weight,
        "collapse_threshold": cfg.collapse_threshold,
        "collapse_patience": cfg.collapse_patience,
        "collapse_check_after": cfg.collapse_check_after,
        "stop_on_collapse": cfg.stop_on_collapse,
    }


@register_objective("dino", views="multicrop", options=DINOOptions)
def _build_dino(encoder, cfg):
    return DINO(encoder, **_dino_kwargs(cfg))


@register_objective("mae+dino", views="multicrop", parts=("mae", "dino"), options=MAEDINOOptions)
def _build_mae_dino(encoder, cfg):
    return MAEDINO(encoder, cfg.mae_weight, _mae_kwargs(cfg), _dino_kwargs(cfg))


def build_objective(encoder, cfg):
    """Build the objective named ``cfg.name`` around ``encoder``."""
    check_objective(cfg)
    return get_objective(cfg.name)(encoder, cfg)


def needs_views(name: str) -> bool:
    """Whether an objective consumes augmented views (two for contrastive, multi-crop for dino), as it
    registered (:class:`~domainfm.registry.ObjectiveSpec`).

    Example:
        >>> needs_views("dino"), needs_views("mae")
        (True, False)
    """
    return objective_spec(name).views != "none"


def pretrain_views(dataset, domain, cfg):
    """The pretraining dataset an objective needs: multi-crop views for ``dino`` (cut by the domain's
    ``multicrop`` hook), two augmented views for ``contrastive``, random resized crops for ``mae`` with
    ``objective.mae_crop_scale``, the plain dataset otherwise.

    Example:
        >>> import torch
        >>> from domainfm.runconfig import load_config
        >>> from domainfm.registry import get_domain
        >>> cfg = load_config({"domain": "synthetic", "objective": {"name": "dino", "local_crops": 2},
        ...                    "data": {"img_size": 32}, "model": {"patch_size": 8}}, check_paths=False)
        >>> ds = pretrain_views([{"image": torch.rand(1, 32, 32), "meta": {}}], get_domain("synthetic"), cfg)
        >>> [tuple(v.shape) for v in ds[0]["views"]]
        [(1, 32, 32), (1, 32, 32), (1, 16, 16), (1, 16, 16)]
    """
    views = objective_spec(cfg.objective.name).views
    if views == "multicrop":
        kw = domain.encoder_kwargs(cfg, dataset)
        dims = patch_embed_spatial_dims(kw.get("patch_embed"))
        img = kw["img_size"] if isinstance(kw["img_size"], (list, tuple)) else [kw["img_size"]] * dims
        patch = kw["patch_size"] if isinstance(kw["patch_size"], (list, tuple)) else [kw["patch_size"]] * dims
        local = check_multicrop(cfg.objective, img, patch, cfg.train.batch_size)
        return MultiCropDataset(dataset, domain.multicrop(cfg, img, local), seed=cfg.train.seed)
    if views == "pair":
        return ViewsDataset(dataset, domain.augment(cfg), seed=cfg.train.seed)
    if cfg.objective.mae_crop_scale:
        return RandomResizedCropDataset(dataset, cfg.objective.mae_crop_scale, seed=cfg.train.seed)
    return dataset


__all__ = [
    "MAE",
    "Contrastive",
    "MAEContrastive",
    "DINO",
    "MAEDINO",
    "MAEOptions",
    "ContrastiveOptions",
    "MultiCropOptions",
    "DINOOptions",
    "MAEContrastiveOptions",
    "MAEDINOOptions",
    "CollapseError",
    "collapse_metrics",
    "teacher_collapse_metrics",
    "build_objective",
    "check_objective",
    "needs_views",
    "pretrain_views",
]
