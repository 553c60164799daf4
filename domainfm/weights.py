"""Import local ViT weights (timm, official MAE / DINOv2, TorchGeo's timm ViTs) into a domainfm checkpoint.

:func:`import_weights` reads a local file or Hugging Face-style folder (never unpickling: ``.pth`` files
go through ``torch.load(weights_only=True)``), finds the encoder's state dict (nested under
``model``/``state_dict``/``teacher``/``student``, prefixed ``module.``/``backbone.``/``encoder.``...),
detects its layout and size from keys and shapes, maps input channels by name, optionally inflates 2D
weights to 3D, and writes a checkpoint folder (``model.safetensors`` + ``card.json``) that every command
accepts. The card's ``import`` section records the source file, its sha256, the detected layout and every
mapping decision. State-dict conversion is :mod:`domainfm.convert`; continual pretraining (``model.init``) starts from
:func:`domainfm.train.init.init_encoder`.

Conventions (see docs/weights.md):

- Positions: the source's learned absolute position embedding becomes the encoder's ``pos_embed``
  (``pos_embed_type="learned"``, patch positions only); a class-token (or register) position is folded into
  that token, which is exactly equivalent (timm does the same for DINOv2 with registers). Other grids are
  reached by bicubic resampling; 3D grids repeat the (resampled) 2D positions along depth.
- Channels: matching names copy their kernels; a grey target takes the sum of the red, green and blue
  kernels (a grey image seen as equal RGB gives identical tokens); other targets get the mean of the source
  kernels; when no name matches at all, timm's ``adapt_input_conv`` rule is used (sum for one channel, else
  the source kernels cycled and scaled by ``source / target`` channels).
- 3D: the 2D kernel divided by the depth patch size and repeated along depth, so a volume constant along
  depth gives, at every depth position, the 2D model's tokens for that slice.

Example:
    >>> import tempfile, timm, torch
    >>> from safetensors.torch import save_file
    >>> tmp = Path(tempfile.mkdtemp())
    >>> vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=1).eval()
    >>> save_file(vit.state_dict(), str(tmp / "vit.safetensors"))
    >>> ckpt = import_weights(tmp / "vit.safetensors", domain="synthetic", out=tmp / "imported", channels=3)
    >>> card = json.loads((ckpt / "card.json").read_text())
    >>> card["import"]["layout"], card["encoder"]["embed_dim"], card["encoder"]["num_heads"]
    ('timm-vit', 384, 6)
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from domainfm.card import build_card
from domainfm.config import MAX_SIDE
from domainfm.convert import (
    KNOWN_LAYOUTS,
    canonical_state,
    config_for,
    convert,
    detect_layout,
    find_state_dict,
    holds_tensors,
    read_weights,
    strip_prefix,
)
from domainfm.errors import CheckpointError, ConfigError
from domainfm.io_safety import check_exists, os_error_text, write_json_atomic
from domainfm.models.channels import source_channel_names, target_channel_names
from domainfm.train.checkpoint import (
    FORMAT,
    file_sha256,
    software_versions,
    unique_tensors,
)

# the options import_weights takes itself; every other keyword is a domain option (data.options)
IMPORT_OPTIONS = (
    "source_bands",
    "source_wavelengths",
    "target_bands",
    "img_size",
    "patch_depth",
    "global_pool",
    "key",
    "seed",
    "patch_embed",
)
_BLOCK_PARTS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
)


# ---- reading -------------------------------------------------------------------------------------------


# ---- layouts -------------------------------------------------------------------------------------------


def _timm_arch_info(arch: str) -> dict:
    """Architecture facts of a timm model name, read from a model built on the meta device (no weights)."""
    import timm  # already a dependency of the encoder blocks; imported here to keep module import light

    try:
        with torch.device("meta"):
            m = timm.create_model(arch, pretrained=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"arch {arch!r} is not a timm model name ({exc})") from None
    if not hasattr(m, "blocks") or not hasattr(m, "patch_embed"):
        raise ConfigError(f"arch {arch!r} is not a ViT (no blocks/patch_embed)")
    return {
        "num_heads": m.blocks[0].attn.num_heads,
        "embed_dim": m.embed_dim,
        "depth": len(m.blocks),
        "global_pool": "token" if getattr(m, "global_pool", "token") == "token" else "avg",
        "img_size": list(m.patch_embed.img_size) if m.patch_embed.img_size else None,
        "no_embed_class": bool(getattr(m, "no_embed_class", False)),
    }


def _square_grid(n_pos: int, class_token: bool, regs: int) -> tuple[list[int] | None, int]:
    """The square patch grid of ``n_pos`` positions after 0, 1 (class token) or 1 + registers prefix positions."""
    for prefix in (0, int(class_token), int(class_token) + regs):
        side = math.isqrt(max(n_pos - prefix, 0))
        if side * side == n_pos - prefix and side > 0:
            return [side, side], prefix
    return None, 0


def _arch_grid(img_size, patch_size, n_pos: int, class_token: bool, regs: int) -> tuple[list[int] | None, int]:
    """The grid a timm arch's image size gives, when the positions fit it (else ``(None, prefix)``)."""
    g = [s // p for s, p in zip(img_size, patch_size)]
    prefix = n_pos - math.prod(g)
    return (g if prefix in (0, int(class_token), int(class_token) + regs) else None), prefix


def _heads(embed_dim: int, arch: str | None, hf: dict) -> tuple[int, str, str | None]:
    """``(heads, where the number came from, arch)``: a Hugging Face config's, else head_dim 64."""
    heads_from = "head_dim 64 (ViT convention; pass arch= to set it)"
    num_heads = {1280: 16, 1536: 24}.get(embed_dim, max(1, embed_dim // 64))
    if arch is None and isinstance(hf.get("architecture"), str):
        arch, heads_from = hf["architecture"], "config.json architecture"
    if isinstance(hf.get("num_attention_heads"), int):
        num_heads, heads_from = hf["num_attention_heads"], "config.json num_attention_heads"
    return num_heads, heads_from, arch


def describe_source(
    sd: dict[str, torch.Tensor], layout: str, arch: str | None = None, hf_config: dict | None = None
) -> dict:
    """Size and structure of a canonical (timm-named) ViT state dict, from its keys and shapes.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> d = describe_source(vit.state_dict(), "timm-vit")
        >>> d["embed_dim"], d["depth"], d["patch_size"], d["grid"], d["class_token"], d["pos_has_prefix"]
        (384, 2, [16, 16], [2, 2], True, 1)
    """
    w = sd["patch_embed.proj.weight"]
    if w.ndim != 4:
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; a 2D ViT kernel is E x C x ph x pw")
    embed_dim, in_chans = int(w.shape[0]), int(w.shape[1])
    depth = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    class_token = "cls_token" in sd
    regs = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    if "pos_embed" not in sd:
        raise CheckpointError(
            "the weights have no pos_embed (absolute position embedding); relative/rotary "
            f"position ViTs are not supported; known layouts: {'; '.join(KNOWN_LAYOUTS)}"
        )
    n_pos = int(sd["pos_embed"].shape[1])
    grid, pos_prefix = _square_grid(n_pos, class_token, regs)
    info = {
        "layout": layout,
        "embed_dim": embed_dim,
        "in_chans": in_chans,
        "patch_size": [int(s) for s in w.shape[2:]],
        "depth": depth,
        "class_token": class_token,
        "num_registers": regs,
        "mlp_ratio": float(sd["blocks.0.mlp.fc1.weight"].shape[0]) / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "layer_scale": "blocks.0.ls1.gamma" in sd,
        "patch_bias": "patch_embed.proj.bias" in sd,
    }
    num_heads, heads_from, arch = _heads(embed_dim, arch, hf_config or {})
    if arch:
        a = _timm_arch_info(arch)
        if a["embed_dim"] != embed_dim:  # depth comes from the keys (a truncated model keeps its arch's heads)
            raise ConfigError(f"arch {arch!r} has embed_dim {a['embed_dim']} but the weights have {embed_dim}")
        num_heads, heads_from = a["num_heads"], f"timm arch {arch}"
        info["global_pool"] = a["global_pool"] if class_token else "avg"
        if grid is None and a["img_size"]:
            grid, pos_prefix = _arch_grid(a["img_size"], info["patch_size"], n_pos, class_token, regs)
    if grid is None:
        raise CheckpointError(
            f"pos_embed has {n_pos} positions: not a square grid (with 0, 1 or {1 + regs} prefix "
            "positions); pass arch= (a timm model name) to give the image size"
        )
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads ({heads_from}); pass arch=")
    info.update({"grid": grid, "pos_has_prefix": pos_prefix, "num_heads": int(num_heads), "num_heads_from": heads_from})
    info["arch"] = arch
    info.setdefault("global_pool", "token" if class_token else "avg")
    return info


# ---- the import ----------------------------------------------------------------------------------------


def import_weights(
    src: str | Path,
    domain: str = "synthetic",
    out: str | Path = "imported",
    arch: str | None = None,
    *,
    exist_ok: bool = False,
    **options,
) -> Path:
    """Convert a local ViT checkpoint into a domainfm checkpoint folder; return its path.

    Args:
        src: a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, or a folder with ``config.json`` and
            ``model.safetensors`` or ``pytorch_model.bin``. Pickles holding anything but tensors are refused.
        domain: the domain the checkpoint is for (its preprocessing and channels).
        out: the checkpoint folder to create (nothing is written there on failure).
        exist_ok: an existing ``out`` is refused (``False``) or replaced atomically by the new checkpoint
            (``True``; only an imported checkpoint, never a trained one or a folder holding ``src``).
        arch: a timm model name overriding what is read from the keys (number of heads, image size).
        **options: ``source_bands`` (source channel names; RGB by default for 3 channels),
            ``source_wavelengths`` (µm, for the wavelength patch embed), ``target_bands``, ``img_size``,
            ``patch_depth`` (3D: depth of a patch), ``global_pool``, ``key`` (where the state dict is nested),
            ``patch_embed`` (``2d``/``3d``/``wavelength`` where the domain lets you choose), ``seed``;
            any other keyword is a domain option (``spatial_dims=3``, ``bands="B04,B03,B02"``...).

    Example:
        >>> # domainfm.import_weights("dinov2_vits14_reg4.pth", domain="pathology", out="runs/dinov2-path")
    """
    src_path = Path(src)
    out = Path(out)
    _check_import_out(out, exist_ok, src_path)
    imp = _import_options(options)
    obj, info = read_weights(src_path)
    sd, where, prefix, outside = _checked_state(obj, info, imp.get("key"))
    layout = detect_layout(sd)
    sd, dropped = canonical_state(sd, layout)
    source = describe_source(sd, layout, arch, info["config"])
    if imp.get("global_pool"):
        if imp["global_pool"] == "token" and not source["class_token"]:
            raise ConfigError("global_pool='token' needs a class token, and the weights have none")
        source["global_pool"] = imp["global_pool"]
    _check_understood(sd, source, layout, info["file"])
    source_names, names_from = source_channel_names(source["in_chans"], imp.get("source_bands"), info["config"])
    dom, cfg, kw = config_for(
        domain, source, out, options, imp.get("img_size"), imp.get("patch_depth"), imp.get("patch_embed")
    )
    target_names = target_channel_names(dom, cfg, kw, imp.get("target_bands"))
    if kw["patch_embed"] != "wavelength" and kw.get("in_chans") and len(target_names) != kw["in_chans"]:
        raise ConfigError(f"target_bands names {len(target_names)} channels but the {domain} data has {kw['in_chans']}")
    encoder, decisions = convert(
        sd, source, kw, source_names, target_names, imp.get("source_wavelengths"), int(imp.get("seed", 0))
    )
    provenance = {
        "source_file": info["file"].name,
        "source_path": str(info["file"].resolve()),
        "sha256": file_sha256(info["file"]),
        "format": info["format"],
        "nested_under": where or None,
        "prefix": prefix or None,
        "keys_outside_prefix": len(outside),
        "dropped_keys": dropped[:50],
        "num_dropped_keys": len(dropped),
        "layout": layout,
        "arch": source["arch"],
        "detected": {k: source[k] for k in _DETECTED},
        "source_channels": source_names,
        "source_channels_from": names_from,
        "target_channels": [t[0] for t in target_names] if kw["patch_embed"] != "wavelength" else "any",
        "pooling": source["global_pool"],
        **decisions,
    }
    _write_checkpoint(out, encoder, _card(cfg, dom, encoder, provenance), replace=exist_ok)
    return out


#: what the card's ``import.detected`` records of the source architecture
_DETECTED = (
    "embed_dim",
    "depth",
    "num_heads",
    "num_heads_from",
    "patch_size",
    "in_chans",
    "grid",
    "class_token",
    "num_registers",
    "layer_scale",
    "qkv_bias",
    "mlp_ratio",
    "global_pool",
)
_USED_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "reg_token", "pos_embed")


def _import_options(options: dict) -> dict:
    """The import's own options, popped from ``options`` (the rest are the domain's), sizes checked."""
    imp = {k: options.pop(k) for k in list(options) if k in IMPORT_OPTIONS}
    for key in ("patch_depth", "img_size"):
        if imp.get(key) is not None and (isinstance(imp[key], bool) or not 1 <= int(imp[key]) <= MAX_SIDE):
            raise ConfigError(f"{key} must be an integer in [1, {MAX_SIDE}], got {imp[key]!r}")
    return imp


def _checked_state(obj, info: dict, key) -> tuple[dict, str, str, list]:
    """The encoder's state dict found in ``obj`` with its prefix stripped; an empty file or NaN weights are
    refused naming the file. Returns ``(state dict, where it was nested, prefix, keys outside the prefix)``."""
    if not holds_tensors(obj):
        what = "an empty dict" if isinstance(obj, dict) and not obj else f"a {type(obj).__name__} without tensors"
        raise CheckpointError(
            f"{info['file']}: the weights file is empty: it holds no tensors ({what}); "
            "save the model's state dict into it"
        )
    try:
        sd, where = find_state_dict(obj, key)
    except CheckpointError as exc:
        raise CheckpointError(f"{info['file']}: {exc}") from None
    sd, prefix, outside = strip_prefix(sd)
    nonfinite = [
        k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if nonfinite:
        raise CheckpointError(
            f"{info['file']}: {len(nonfinite)} tensor(s) hold NaN or inf values (first: {nonfinite[0]}); "
            "the weights are damaged or were saved from a diverged run"
        )
    return sd, where, prefix, outside


def _check_understood(sd: dict, source: dict, layout: str, file) -> None:
    """Every key of the canonical state dict is one the encoder uses (else one line naming the first ones)."""
    used = set(_USED_KEYS) | {"norm.weight", "norm.bias"}
    used |= {f"blocks.{i}.{p}" for i in range(source["depth"]) for p in _BLOCK_PARTS}
    unmatched = sorted(k for k in sd if k not in used)
    if unmatched:
        raise CheckpointError(
            f"{file}: {len(unmatched)} keys of the {layout} layout are not understood "
            f"(first: {', '.join(unmatched[:5])}); known layouts: {'; '.join(KNOWN_LAYOUTS)}"
        )


def _check_import_out(out: Path, exist_ok: bool, src: Path) -> None:
    """The writers' ``exist_ok`` rule (:func:`~domainfm.io_safety.check_exists`); what ``exist_ok=True`` may
    replace is a file or an imported checkpoint, never a trained checkpoint."""
    if not check_exists(out, exist_ok, [src], checkpoint_ok=True):
        return
    card = out / "card.json"
    stage = None
    if card.is_file():
        try:
            stage = json.loads(card.read_text()).get("stage")
        except (OSError, ValueError):
            stage = "unreadable"
    if not out.is_dir() or any(out.glob("ckpt-*")) or (card.is_file() and stage != "import"):
        raise ConfigError(
            f"{out} is not a checkpoint written by import_weights (it is a file, a run folder or a trained "
            "checkpoint), so it is never replaced; choose another out"
        )
    if not card.is_file() and any(out.iterdir()):
        raise ConfigError(f"{out} holds files other than a checkpoint, so it is never replaced; choose another out")


def _card(cfg, domain, encoder, provenance: dict) -> dict:
    """The card of an imported encoder: the one card builder's sections, the import's provenance, step 0."""
    card = build_card(cfg, domain, encoder, None, "import", **{"import": provenance})
    return {**card.to_dict(), "format": FORMAT, "step": 0, "versions": software_versions()}


def _write_checkpoint(out: Path, encoder, card: dict, replace: bool = False) -> None:
    """``model.safetensors`` + ``card.json`` written in a temporary sibling folder, renamed into place at the end
    (``replace``: an existing ``out`` is swapped out and removed only once the new one is in place)."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = unique_tensors({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": card["format"]})
        card["weights_sha256"] = file_sha256(tmp / "model.safetensors")
        write_json_atomic(tmp / "card.json", card)
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        if out.exists() and replace:
            os.replace(out, old)
        elif out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} appeared while importing; nothing was overwritten")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as exc:  # disk full, read-only: one line, nothing left at out
        reason = os_error_text(exc) if isinstance(exc, OSError) else f"{exc} (disk full or not writable?)"
        raise CheckpointError(f"{out}: cannot write the checkpoint: {reason}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- continual pretraining -----------------------------------------------------------------------------
