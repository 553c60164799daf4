"""The encoders an evaluation compares: the checkpoint's (and its other pretraining seeds), a random-init
copy of the same shape, and the pooling each one uses; checks that a checkpoint fits the data.

Example:
    >>> pretraining_seeds(["runs/a", "runs/b"])
    ('runs/a', ['runs/b'])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from domainfm.errors import CheckpointError, ConfigError, DataError
from domainfm.model import load
from domainfm.models.encoder import build_encoder

RANDOM_SEED = 0  # init seed of the random baseline encoder (fixed: the baseline is reproducible)


def load_model(checkpoint, device):
    if not isinstance(checkpoint, (str, Path)):
        return checkpoint  # an already loaded FoundationModel
    model = load(checkpoint)
    if device is not None and hasattr(model, "to"):
        model = model.to(device)
    return model


def item_label(ds, i, source):
    s = ds[i]
    if "label" not in s:
        raise DataError(
            (s.get("meta") or {}).get("path") or source, "sample has no 'label': evaluate needs labelled data"
        )
    return int(torch.as_tensor(s["label"]).reshape(-1)[0])


def check_card_matches(card: dict, sample: dict, checkpoint=None, data=None) -> None:
    """Raise :class:`CheckpointError` (one line) if the data's channels or spatial dims do not fit the card.

    Example:
        >>> card = {"encoder": {"img_size": [32, 32], "in_chans": 3}}
        >>> check_card_matches(card, {"image": torch.zeros(1, 32, 32)}, "ck", "d.npz")
        Traceback (most recent call last):
        ...
        domainfm.errors.CheckpointError: checkpoint ck was trained on 3-channel inputs but d.npz gives 1-channel ...
    """
    enc = card.get("encoder") or {}
    image = sample["image"]
    dims = len(enc["img_size"]) if isinstance(enc.get("img_size"), (list, tuple)) else None
    if dims is not None and image.ndim - 1 != dims:
        raise CheckpointError(
            f"checkpoint {checkpoint} takes {dims}D images but {data} gives "
            f"{image.ndim - 1}D ones (shape {tuple(image.shape)})"
        )
    chans = enc.get("in_chans")
    if chans is not None and enc.get("patch_embed") != "wavelength" and image.shape[0] != chans:
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained on {chans}-channel inputs but {data} gives "
            f"{image.shape[0]}-channel images (shape {tuple(image.shape)})"
        )


def random_like(model, card: dict, seed: int = RANDOM_SEED):
    """A copy of ``model`` whose encoder is re-initialised (``build_encoder(**card["encoder"])``, fixed seed).

    The copy keeps the model's own ``embed`` path, so both encoders are pooled the same way.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_encoder(**card["encoder"])
    try:
        rand = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied: use the bare encoder
        return fresh.to(encoder_device(model))
    enc = getattr(rand, "encoder", rand)
    missing = enc.load_state_dict(fresh.state_dict(), strict=False)
    if missing.missing_keys:
        raise CheckpointError(
            f"random baseline: encoder of shape {card['encoder']} does not match "
            f"the checkpoint's ({len(missing.missing_keys)} missing weights)"
        )
    return rand


def with_pool(model, pool: str | None):
    """``(model, pooling)``: ``model`` (a copy when ``pool`` changes it) pooling with ``pool``.

    ``"token+avg"`` on an encoder without a class token falls back to ``"avg"``; ``None`` keeps the
    encoder's own pooling. Encoders without ``set_global_pool`` are returned as they are.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32,
        ...                     num_heads=2, class_token=True)
        >>> other, used = with_pool(enc, "token+avg")
        >>> used, other.pooled_dim, enc.global_pool
        ('token+avg', 64, 'token')
    """
    enc = getattr(model, "encoder", model)
    if not hasattr(enc, "set_global_pool"):
        return model, getattr(enc, "global_pool", None)
    if pool is None or pool == enc.global_pool:
        return model, enc.global_pool
    if pool == "token+avg" and enc.cls_token is None:
        pool = "avg"
    if pool == enc.global_pool:
        return model, pool
    copied = copy.deepcopy(model)
    getattr(copied, "encoder", copied).set_global_pool(pool)
    return copied, pool


def encoder_device(model) -> torch.device:
    mod = getattr(model, "encoder", model)
    p = next(mod.parameters(), None) if isinstance(mod, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def encoder_of(model):
    return getattr(model, "encoder", model)


def pretraining_seeds(checkpoint) -> tuple[Any, list]:
    """``(first checkpoint, the others)``: a list of checkpoints are pretraining seeds of one recipe."""
    if isinstance(checkpoint, (list, tuple)):
        if not checkpoint:
            raise ConfigError("checkpoint: an empty list (give one checkpoint, or one per pretraining seed)")
        return checkpoint[0], list(checkpoint[1:])
    return checkpoint, []


def replica(path, card: dict, device):
    """Another pretraining seed of the recipe: it must have the first checkpoint's encoder shape."""
    other = load_model(path, device)
    if (getattr(other, "card", None) or {}).get("encoder") != card.get("encoder"):
        raise CheckpointError(
            f"{path}: its encoder differs from the first checkpoint's; checkpoints evaluated together must be "
            "pretraining seeds of one recipe (same model and data)"
        )
    return other


def weights_file(checkpoint):
    if not isinstance(checkpoint, (str, Path)):
        return None
    p = Path(checkpoint)
    return p / "model.safetensors" if (p / "model.safetensors").is_file() else p
