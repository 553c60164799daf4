"""Continual pretraining: the encoder a run starts from when ``model.init`` names a checkpoint (imported with
:func:`domainfm.weights.import_weights` or trained with this kit).

Example:
    >>> from domainfm.config import Config
    >>> init_from_config(Config(), "the encoder built from the config")   # no model.init: unchanged
    ('the encoder built from the config', None)
"""

from __future__ import annotations

from pathlib import Path

from domainfm.errors import CheckpointError, ConfigError
from domainfm.models.encoder import build_encoder
from domainfm.models.pos_embed import resample_pos_embed
from domainfm.train.checkpoint import file_sha256, load_card, load_module_state, load_tensors, resolve_checkpoint

_ARCH_KEYS = ("patch_embed", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")


def _arch_differences(cfg, new: dict, init: dict) -> list[str]:
    """The architecture keys where the config's encoder (``new``) differs from the init's; depth, width and
    heads count only when the config sets them."""
    diffs = []
    for key in _ARCH_KEYS:
        if key in ("embed_dim", "depth", "num_heads") and getattr(cfg.model, key) is None:
            continue  # not set in the config: the init decides
        a, b = new.get(key), init.get(key)
        if key == "patch_size" and a is not None and b is not None and len(a) != len(b):
            diffs.append(
                f"model.patch_size (config {a}, init {b}: 2D vs 3D; inflate with spatial_dims=3 when importing)"
            )
        elif a != b:
            diffs.append(f"{'model.' + key if key not in ('in_chans',) else 'data.in_chans'} (config {a}, init {b})")
    for key in ("class_token", "num_registers"):
        if new.get(key) and new.get(key) != init.get(key):
            diffs.append(f"model.{key} (config {new.get(key)}, init {init.get(key)})")
    return diffs


def init_encoder(cfg, built, init: str | Path):
    """The encoder a pretraining run starts from when ``model.init`` names a checkpoint (imported or trained).

    ``built`` is the encoder the config alone would build. The init's architecture is kept (its class and
    register tokens, layer scale, learned positions); ``img_size`` follows the data (positions resampled).
    A config that asks for another architecture (patch embed, patch size, channels; depth, width or heads
    when set) is refused naming the differing keys. Returns ``(encoder, record for the card)``.
    """
    ckpt = resolve_checkpoint(init)
    card = load_card(ckpt)
    enc_cfg = dict(card.get("encoder") or {})
    if not enc_cfg:
        raise CheckpointError(f"{ckpt}/card.json: no encoder description; model.init needs a domainfm checkpoint")
    new = dict(built.config)
    diffs = _arch_differences(cfg, new, enc_cfg)
    if diffs:
        raise ConfigError(f"model.init {ckpt}: its encoder differs from the config in {'; '.join(diffs)}")
    enc_cfg["img_size"] = new["img_size"]
    enc_cfg["drop_path_rate"] = new.get("drop_path_rate", enc_cfg.get("drop_path_rate", 0.0))
    old_grid = [s // p for s, p in zip(card["encoder"]["img_size"], card["encoder"]["patch_size"])]
    tensors = load_tensors(ckpt)
    prefix = "ema.encoder." if card.get("ema") and any(k.startswith("ema.encoder.") for k in tensors) else "encoder."
    encoder = build_encoder(**enc_cfg)
    if list(encoder.grid) != old_grid and f"{prefix}pos_embed" in tensors:
        tensors = dict(tensors)
        tensors[f"{prefix}pos_embed"] = resample_pos_embed(
            tensors[f"{prefix}pos_embed"][0], tuple(old_grid), encoder.grid
        )[None]
    if card.get("lora"):
        raise CheckpointError(f"{ckpt}: a LoRA fine-tuned checkpoint; use its parent or merge it first")
    load_module_state(encoder, tensors, prefix=prefix)
    record = {
        "path": str(ckpt),
        "stage": card.get("stage"),
        "step": card.get("step"),
        "sha256": file_sha256(ckpt / "model.safetensors"),
        "import": (card.get("import") or {}).get("source_file"),
    }
    return encoder, record


def init_from_config(cfg, encoder):
    """``(encoder, init record)``: the ``model.init`` checkpoint's encoder when the config names one, else
    ``(encoder, None)`` unchanged (see :func:`init_encoder`)."""
    if not getattr(cfg.model, "init", None):
        return encoder, None
    return init_encoder(cfg, encoder, cfg.model.init)
