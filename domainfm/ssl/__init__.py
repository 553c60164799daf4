"""Self-supervised objectives, registered by name: ``mae``, ``contrastive``, ``mae+contrastive``.

Example:
    >>> from domainfm.config import ObjectiveConfig
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
    >>> type(build_objective(enc, ObjectiveConfig(name="mae"))).__name__
    'MAE'
"""

from __future__ import annotations

from domainfm.errors import ConfigError
from domainfm.registry import get_objective, list_objectives, register_objective
from domainfm.ssl.combined import MAEContrastive
from domainfm.ssl.contrastive import Contrastive
from domainfm.ssl.mae import MAE
from domainfm.ssl.monitor import collapse_metrics


def _mae_kwargs(cfg) -> dict:
    return {"mask_ratio": cfg.mask_ratio, "decoder_dim": cfg.decoder_dim, "decoder_depth": cfg.decoder_depth,
            "decoder_heads": cfg.decoder_heads, "norm_pix_loss": cfg.norm_pix_loss}


def _contrastive_kwargs(cfg) -> dict:
    return {"proj_dim": cfg.proj_dim, "hidden_dim": cfg.proj_hidden_dim, "temperature": cfg.temperature,
            "momentum": cfg.momentum}


@register_objective("mae")
def _build_mae(encoder, cfg):
    return MAE(encoder, **_mae_kwargs(cfg))


@register_objective("contrastive")
def _build_contrastive(encoder, cfg):
    return Contrastive(encoder, **_contrastive_kwargs(cfg))


@register_objective("mae+contrastive")
def _build_both(encoder, cfg):
    return MAEContrastive(encoder, cfg.mae_weight, cfg.contrastive_weight, _mae_kwargs(cfg), _contrastive_kwargs(cfg))


def check_objective(cfg) -> None:
    """A one-line ConfigError naming ``objective.name`` when no objective of that name is registered."""
    if cfg.name not in list_objectives():
        raise ConfigError(f"objective.name must be one of {', '.join(list_objectives())}, got {cfg.name!r}")


def build_objective(encoder, cfg):
    """Build the objective named ``cfg.name`` around ``encoder``."""
    check_objective(cfg)
    return get_objective(cfg.name)(encoder, cfg)


def needs_views(name: str) -> bool:
    """Whether an objective consumes two augmented views."""
    return "contrastive" in name


__all__ = ["MAE", "Contrastive", "MAEContrastive", "collapse_metrics", "build_objective", "check_objective", "needs_views"]
