"""Import local ViT weights (timm, official MAE / DINOv2, TorchGeo's timm ViTs) into a domainfm checkpoint.

:func:`import_weights` reads a local file or Hugging Face-style folder (never unpickling: ``.pth`` files
go through ``torch.load(weights_only=True)``), finds the encoder's state dict (nested under
``model``/``state_dict``/``teacher``/``student``, prefixed ``module.``/``backbone.``/``encoder.``...),
detects its layout and size from keys and shapes, maps input channels by name, optionally inflates 2D
weights to 3D, and writes a checkpoint folder (``model.safetensors`` + ``card.json``) that every command
accepts. The card's ``import`` section records the source file, its sha256, the detected layout and every
mapping decision. :func:`init_encoder` gives continual pretraining (``model.init``) its starting encoder.

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

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from domainfm.errors import CheckpointError, ConfigError
from domainfm.io_safety import check_exists, write_json_atomic
from domainfm.models.encoder import build_encoder
from domainfm.models.pos_embed import resample_pos_embed
from domainfm.registry import get_domain, get_encoder_arch, list_encoders
from domainfm.runconfig import load_config
from domainfm.train.checkpoint import (
    FORMAT,
    load_card,
    load_module_state,
    load_tensors,
    resolve_checkpoint,
    software_versions,
    unique_tensors,
)
from domainfm.train.layer_decay import layer_id

KNOWN_LAYOUTS = (
    "timm-vit (incl. registers, layer scale; TorchGeo's timm ViTs)",
    "mae (official, decoder dropped)",
    "dinov2 (official, registers, chunked blocks)",
    "hf-transformers (ViTModel, ViTMAEModel, Dinov2Model)",
)
_HF_ANCHOR = "embeddings.patch_embeddings.projection.weight"
# Hugging Face transformers names -> timm names (q/k/v are concatenated separately)
_HF_RENAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.mask_token", "mask_token"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("layernorm.", "norm."),
)
_HF_BLOCK = (
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)


def from_hf_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``ViTModel`` / ``ViTMAEModel`` / ``Dinov2Model`` state dict renamed to timm's ViT names.

    Example:
        >>> hf = {"encoder.layer.0.attention.attention.query.weight": torch.ones(2, 2),
        ...       "encoder.layer.0.attention.attention.key.weight": torch.ones(2, 2),
        ...       "encoder.layer.0.attention.attention.value.weight": torch.ones(2, 2),
        ...       "layernorm.weight": torch.ones(2)}
        >>> sorted((k, tuple(v.shape)) for k, v in from_hf_transformers(hf).items())
        [('blocks.0.attn.qkv.weight', (6, 2)), ('norm.weight', (2,))]
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple, dict] = {}
    for k, v in sd.items():
        m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", k)
        if m:
            i, rest = m.groups()
            a = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if a:
                qkv.setdefault((i, a.group(2)), {})[a.group(1)] = v
                continue
            new = next(
                (f"blocks.{i}.{dst}{rest[len(src) :]}" for src, dst in _HF_BLOCK if rest.startswith(src)),
                f"blocks.{i}.{rest}",
            )
            out[new] = v
            continue
        new = next((dst + k[len(src) :] for src, dst in _HF_RENAMES if k.startswith(src)), k)
        if new == "pooler.dense.weight" or new == "pooler.dense.bias":
            new = "head." + new  # dropped with the heads
        out[new] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"encoder.layer.{i}: attention {kind} lacks one of query/key/value")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    if "mask_token" in out and out["mask_token"].ndim == 2:
        out["mask_token"] = out["mask_token"][None]
    return out


NESTED_KEYS = ("model", "state_dict", "teacher", "student", "model_state_dict", "module", "net", "params")
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
# central wavelengths (µm) of common band names, for the wavelength patch embed's table
BAND_WAVELENGTHS = {
    "red": 0.665,
    "green": 0.56,
    "blue": 0.49,
    "nir": 0.842,
    "b01": 0.443,
    "b02": 0.49,
    "b03": 0.56,
    "b04": 0.665,
    "b05": 0.705,
    "b06": 0.74,
    "b07": 0.783,
    "b08": 0.842,
    "b8a": 0.865,
    "b09": 0.945,
    "b10": 1.375,
    "b11": 1.61,
    "b12": 2.19,
}
_ALIASES = {"r": "red", "g": "green", "b": "blue", "gray": "grey", "l": "grey", "luminance": "grey"}
# Sentinel-2 names (zero-padded) also answer to colour names; bare numbers (B4, B5) differ between sensors
_SENTINEL2_RGB = {"b04": "red", "b03": "green", "b02": "blue", "b08": "nir"}
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
_DROPPED = re.compile(
    r"^(head\.|head_dist\.|fc_norm\.(weight|bias)$|decoder_|decoder\.|mask_token$|pre_logits\.|"
    r"dist_token$)"
)


# ---- reading -------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: nothing in the file is executed."""
    try:
        # argparse.Namespace (the "args" of MAE/DINO training checkpoints) only holds attributes: allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, TypeError, EOFError) as exc:
        text = str(exc)
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n|$)", text)
        if found:
            first = re.sub(r" was not an allowed global.*", " is not allowed", found.group(1))[:160]
        else:
            first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: it is not a plain tensor file readable with "
            f"torch.load(weights_only=True) and is never unpickled ({first}); re-save it as "
            "safetensors or torch.save(model.state_dict()) from a trusted environment"
        ) from None


def read_weights(src: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The raw contents of a local weights file or HF-style folder, and what was read.

    Returns ``(obj, info)`` where ``obj`` is whatever the file holds (a state dict, or a dict nesting
    one) and ``info`` has ``file`` (the file read), ``format`` and ``config`` (the folder's config.json).

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"model": {"w": torch.ones(1)}}, f)
        >>> obj, info = read_weights(f)
        >>> info["format"], list(obj)
        ('torch', ['model'])
    """
    path = Path(src)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text())
            except ValueError as exc:
                raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from None
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path}: a weights folder needs model.safetensors or pytorch_model.bin "
                "(with config.json, Hugging Face style)"
            )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
        fmt = "safetensors"
    elif suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        obj = _torch_load(path)
        fmt = "torch"
    else:
        raise CheckpointError(
            f"{path}: unknown weights format {suffix!r} (give .safetensors, .pth/.pt/.bin, "
            "or a folder with config.json + model.safetensors or pytorch_model.bin)"
        )
    return obj, {"file": path, "format": fmt, "config": config}


def _is_state(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor dict inside ``obj`` and where it was (``""`` at the top, ``"teacher"``, ...).

    Example:
        >>> sd, where = find_state_dict({"epoch": 3, "teacher": {"backbone.cls_token": torch.zeros(1, 1, 4)}})
        >>> where, list(sd)
        ('teacher', ['backbone.cls_token'])
    """
    if key is not None:
        cur = obj
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise CheckpointError(
                    f"key {key!r} not found in the weights file (top-level keys: "
                    f"{', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else '-'})"
                )
            cur = cur[part]
        if not _is_state(cur):
            raise CheckpointError(f"key {key!r} of the weights file holds no tensors")
        return {k: v for k, v in cur.items() if isinstance(v, torch.Tensor)}, key
    if _is_state(obj) and any(".weight" in k or "token" in k for k in obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, ""
    if isinstance(obj, dict):
        for name in NESTED_KEYS:
            if name in obj and isinstance(obj[name], dict):
                try:
                    sd, where = find_state_dict(obj[name])
                    return sd, f"{name}.{where}".rstrip(".")
                except CheckpointError:
                    continue
    raise CheckpointError(
        "no state dict found in the weights file (looked at the top level and under "
        f"{'/'.join(NESTED_KEYS)}); pass key=... to name it"
    )


def strip_prefix(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Keep the encoder: keys under the prefix of the patch embedding (``module.backbone.`` ...), stripped.

    Returns the stripped dict, the prefix and the keys left out (outside that prefix).

    Example:
        >>> sd = {"module.backbone.patch_embed.proj.weight": torch.zeros(1), "module.head.w": torch.zeros(1)}
        >>> out, prefix, other = strip_prefix(sd)
        >>> list(out), prefix, other
        (['patch_embed.proj.weight'], 'module.backbone.', ['module.head.w'])
    """
    anchors = [k[: -len(a)] for k in sd for a in ("patch_embed.proj.weight", _HF_ANCHOR) if k.endswith(a)]
    if not anchors:
        return dict(sd), "", []
    # prefer the online network over momentum / EMA copies: the shortest, then alphabetical
    prefix = min(anchors, key=lambda p: (("momentum" in p or "ema" in p), len(p), p))
    out = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    other = [k for k in sd if not k.startswith(prefix)]
    return out, prefix, other


# ---- layouts -------------------------------------------------------------------------------------------


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """``timm-vit``, ``mae`` or ``dinov2`` from the (prefix-stripped) keys; :class:`CheckpointError` otherwise.

    Example:
        >>> detect_layout({"patch_embed.proj.weight": 0, "blocks.0.attn.qkv.weight": 0, "register_tokens": 0})
        'dinov2'
    """
    keys = set(sd)
    if _HF_ANCHOR in keys:
        return "hf-transformers"
    vit = "patch_embed.proj.weight" in keys and any(
        re.match(r"blocks\.(\d+\.)?\d+\.attn\.qkv\.weight$", k) for k in keys
    )
    if not vit:
        first = ", ".join(sorted(keys)[:6])
        raise CheckpointError(
            f"unknown weights layout (first keys: {first}); known layouts: "
            f"{'; '.join(KNOWN_LAYOUTS)}; a timm model name via arch= does not change the keys"
        )
    if (
        "register_tokens" in keys
        or any(re.match(r"blocks\.\d+\.\d+\.", k) for k in keys)
        or ("mask_token" in keys and any(k.endswith("ls1.gamma") for k in keys))
    ):
        return "dinov2"
    if any(k.startswith(("decoder_", "decoder.")) for k in keys):
        return "mae"
    return "timm-vit"


def _canonical(sd: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename to timm names (``reg_token``, unchunked ``blocks.i``); return it and the dropped keys."""
    out, dropped = {}, []
    if layout == "hf-transformers":
        sd = from_hf_transformers(sd)
    for k, v in sd.items():
        k2 = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k) if layout == "dinov2" else k
        if k2 == "register_tokens":
            k2 = "reg_token"
        if re.match(r"blocks\.\d+\.mlp\.w(12|3)\.", k2):
            raise CheckpointError(
                f"weight {k}: SwiGLU MLP blocks (DINOv2 ViT-g) are not supported; known layouts: "
                f"{'; '.join(KNOWN_LAYOUTS)}"
            )
        if _DROPPED.match(k2):
            dropped.append(k)
            continue
        out[k2] = v
    if "fc_norm.weight" in sd and "norm.weight" not in sd:
        raise CheckpointError(
            "the weights use fc_norm on pooled tokens without a final token norm (a fine-tuned "
            "average-pool ViT); import the pretraining checkpoint instead"
        )
    return out, dropped


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
    grid, pos_prefix = None, 0
    for prefix in (0, int(class_token), int(class_token) + regs):
        side = math.isqrt(max(n_pos - prefix, 0))
        if side * side == n_pos - prefix and side > 0:
            grid, pos_prefix = [side, side], prefix
            break
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
    heads_from = "head_dim 64 (ViT convention; pass arch= to set it)"
    num_heads = {1280: 16, 1536: 24}.get(embed_dim, max(1, embed_dim // 64))
    hf = hf_config or {}
    if arch is None and isinstance(hf.get("architecture"), str):
        arch = hf["architecture"]
        heads_from = "config.json architecture"
    if isinstance(hf.get("num_attention_heads"), int):
        num_heads, heads_from = hf["num_attention_heads"], "config.json num_attention_heads"
    if arch:
        a = _timm_arch_info(arch)
        if a["embed_dim"] != embed_dim:  # depth comes from the keys (a truncated model keeps its arch's heads)
            raise ConfigError(f"arch {arch!r} has embed_dim {a['embed_dim']} but the weights have {embed_dim}")
        num_heads, heads_from = a["num_heads"], f"timm arch {arch}"
        info["global_pool"] = a["global_pool"] if class_token else "avg"
        if grid is None and a["img_size"]:
            g = [s // p for s, p in zip(a["img_size"], info["patch_size"])]
            pos_prefix = n_pos - math.prod(g)
            grid = g if pos_prefix in (0, int(class_token), int(class_token) + regs) else None
    if grid is None:
        raise CheckpointError(
            f"pos_embed has {n_pos} positions: not a square grid (with 0, 1 or {1 + regs} prefix "
            "positions); pass arch= (a timm model name) to give the image size"
        )
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads ({heads_from}); pass arch=")
    info.update(
        {
            "grid": grid,
            "pos_has_prefix": pos_prefix,
            "num_heads": int(num_heads),
            "num_heads_from": heads_from,
            "arch": arch,
        }
    )
    info.setdefault("global_pool", "token" if class_token else "avg")
    return info


# ---- channels ------------------------------------------------------------------------------------------


def _norm_name(name: str) -> str:
    n = str(name).strip().lower()
    return _ALIASES.get(n, n)


def _names(entry) -> set[str]:
    names = {_norm_name(n) for n in (entry if isinstance(entry, (list, tuple, set)) else [entry])}
    return names | {_SENTINEL2_RGB[n] for n in names if n in _SENTINEL2_RGB}


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def source_channel_names(in_chans: int, source_bands=None, hf_config: dict | None = None) -> tuple[list[str], str]:
    """Names of the source's input channels and where they came from (option, config.json, default)."""
    given = _as_list(source_bands)
    origin = "source_bands option"
    if given is None and hf_config:
        for key in ("bands", "band_names", "channel_names"):
            if isinstance(hf_config.get(key), list):
                given, origin = [str(b) for b in hf_config[key]], f"config.json {key}"
                break
    if given is None:
        if in_chans == 3:
            return ["red", "green", "blue"], "default for 3-channel (ImageNet-style) weights"
        if in_chans == 1:
            return ["grey"], "default for 1-channel weights"
        raise ConfigError(
            f"the weights take {in_chans} input channels: name them with source_bands=B01,B02,... "
            "so they can be mapped by name"
        )
    if len(given) != in_chans:
        raise ConfigError(
            f"source_bands names {len(given)} channels ({', '.join(given)}) but the weights take {in_chans}"
        )
    return given, origin


def target_channel_names(domain, cfg, enc_kwargs: dict, target_bands=None) -> list[list[str]]:
    """Each target channel's names (band name + aliases for remote sensing; RGB / grey by count otherwise)."""
    given = _as_list(target_bands)
    if given is not None:
        return [[g] for g in given]
    prep = domain.preprocessing(cfg, None) if hasattr(domain, "preprocessing") else {}
    sensors = (prep or {}).get("sensors")
    if sensors:
        bands = next(iter(sensors.values()))["bands"]
        return [[b["name"], *b.get("aliases", [])] for b in bands]
    n = enc_kwargs.get("in_chans") or 3
    if n == 3:
        return [["red"], ["green"], ["blue"]]
    if n == 1:
        return [["grey"]]
    return [[f"channel{i}"] for i in range(n)]


def map_channels(kernel: torch.Tensor, source: list[str], target: list[list[str]]) -> tuple[torch.Tensor, list[dict]]:
    """Patch kernel ``E x Cs x ...`` -> ``E x Ct x ...`` by channel name, and one decision per target channel.

    Example:
        >>> w = torch.randn(4, 3, 2, 2)
        >>> new, how = map_channels(w, ["red", "green", "blue"], [["B04", "red"], ["B08", "nir"]])
        >>> torch.equal(new[:, 0], w[:, 0]), [d["rule"] for d in how]
        (True, ['copied', 'mean of source kernels'])
    """
    src = [_names(s) for s in source]
    cs, ct = kernel.shape[1], len(target)
    out = torch.empty(kernel.shape[0], ct, *kernel.shape[2:], dtype=kernel.dtype)
    decisions: list[dict] = []
    unmatched = []
    for i, names in enumerate(target):
        tn = _names(names)
        j = next((j for j, s in enumerate(src) if s & tn), None)
        if j is not None:
            out[:, i] = kernel[:, j]
            decisions.append({"target": names[0], "rule": "copied", "from": [source[j]]})
        elif "grey" in tn and all(any(c in s for s in src) for c in ("red", "green", "blue")):
            idx = [next(j for j, s in enumerate(src) if c in s) for c in ("red", "green", "blue")]
            out[:, i] = kernel[:, idx].sum(1)
            decisions.append({"target": names[0], "rule": "sum of red+green+blue", "from": [source[j] for j in idx]})
        else:
            unmatched.append(i)
    if unmatched and len(unmatched) == ct:  # nothing matched: timm adapt_input_conv
        for i in unmatched:
            if ct == 1:
                out[:, i] = kernel.sum(1)
                decisions.append(
                    {
                        "target": target[i][0],
                        "rule": "sum of source kernels (timm adapt_input_conv)",
                        "from": list(source),
                    }
                )
            else:
                out[:, i] = kernel[:, i % cs] * (cs / ct)
                decisions.append(
                    {
                        "target": target[i][0],
                        "rule": f"cycled x {cs}/{ct} (timm adapt_input_conv)",
                        "from": [source[i % cs]],
                    }
                )
    else:
        for i in unmatched:
            out[:, i] = kernel.mean(1)
            decisions.append({"target": target[i][0], "rule": "mean of source kernels", "from": list(source)})
    decisions.sort(key=lambda d: [t[0] for t in target].index(d["target"]))
    return out, decisions


def inflate_kernel(kernel: torch.Tensor, depth: int) -> torch.Tensor:
    """2D kernel ``E x C x ph x pw`` -> 3D ``E x C x depth x ph x pw``, divided by ``depth`` (sums to the 2D one).

    Example:
        >>> inflate_kernel(torch.ones(2, 1, 4, 4), 2).shape
        torch.Size([2, 1, 2, 4, 4])
    """
    return kernel[:, :, None].repeat(1, 1, depth, 1, 1) / depth


def positions_for(pos2d: torch.Tensor, src_grid, target_grid) -> torch.Tensor:
    """Patch position embedding ``N x E`` on ``src_grid`` for a 2D or 3D ``target_grid`` (3D: repeated along depth).

    Example:
        >>> positions_for(torch.randn(4, 8), (2, 2), (3, 4, 4)).shape
        torch.Size([48, 8])
    """
    plane = tuple(target_grid[-2:])
    pe = resample_pos_embed(pos2d, tuple(src_grid), plane)
    if len(target_grid) == 3:
        pe = pe[None].expand(target_grid[0], -1, -1).reshape(-1, pe.shape[-1])
    return pe.contiguous()


# ---- the import ----------------------------------------------------------------------------------------


def _registry_name(embed_dim: int, depth: int) -> str:
    for name in list_encoders():
        arch = get_encoder_arch(name)()
        if arch.get("embed_dim") == embed_dim and arch.get("depth") == depth:
            return name
    return next((n for n in list_encoders() if get_encoder_arch(n)().get("embed_dim") == embed_dim), "vit-base")


def _config_for(
    domain_name: str,
    src: dict,
    out: Path,
    domain_options: dict,
    img_size,
    patch_depth: int | None,
    patch_embed: str | None = None,
):
    domain = get_domain(domain_name)
    ph, pw = src["patch_size"]
    size = img_size if img_size is not None else [g * p for g, p in zip(src["grid"], src["patch_size"])]
    size = size if isinstance(size, int) else (list(size) if len(set(size)) > 1 else int(size[0]))
    model = {
        "name": _registry_name(src["embed_dim"], src["depth"]),
        "patch_size": ph if ph == pw else [ph, pw],
        "embed_dim": src["embed_dim"],
        "depth": src["depth"],
        "num_heads": src["num_heads"],
        "class_token": src["class_token"],
        "num_registers": src["num_registers"],
        "global_pool": src["global_pool"],
        "patch_embed": patch_embed,
    }
    raw = {
        "domain": domain_name,
        "out": str(out),
        "data": {"img_size": size, "options": dict(domain_options)},
        "model": model,
    }
    cfg = load_config(raw, check_paths=False)
    kw = domain.encoder_kwargs(cfg, None)
    if kw.get("patch_embed") == "3d":
        pd = int(patch_depth or ph)
        raw["model"]["patch_size"] = [pd, ph, pw]
        if isinstance(size, int):
            raw["data"]["img_size"] = size
        cfg = load_config(raw, check_paths=False)
        kw = domain.encoder_kwargs(cfg, None)
    return domain, cfg, kw


def convert(
    sd: dict[str, torch.Tensor],
    src: dict,
    kw: dict,
    source_names: list[str],
    target_names: list[list[str]],
    source_wavelengths=None,
    seed: int = 0,
):
    """Build the domainfm encoder for ``kw`` (domain encoder kwargs) and fill it from the canonical state dict.

    Returns ``(encoder, decisions)``; every mapping decision is listed in ``decisions``.
    """
    kind = kw["patch_embed"]
    decisions: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # parameters that have no source (the wavelength generator) are reproducible
        enc = build_encoder(
            _registry_name(src["embed_dim"], src["depth"]),
            depth=src["depth"],
            embed_dim=src["embed_dim"],
            num_heads=src["num_heads"],
            mlp_ratio=src["mlp_ratio"],
            class_token=src["class_token"],
            num_registers=src["num_registers"],
            global_pool=src["global_pool"],
            pos_embed_type="learned",
            init_values=1e-5 if src["layer_scale"] else None,
            qkv_bias=src["qkv_bias"],
            wavelength_table=len(source_names) if kind == "wavelength" else 0,
            **kw,
        )
    if tuple(enc.patch_embed.patch_size[-2:]) != tuple(src["patch_size"]):
        raise ConfigError(
            f"the weights use {src['patch_size']} patches in-plane but the target has "
            f"{list(enc.patch_embed.patch_size)}; keep the source's patch size"
        )
    state = {k: v for k, v in enc.state_dict().items() if k.startswith("patch_embed.weight_gen.")}
    E = src["embed_dim"]
    # prefix tokens, with their positions folded in (exactly equivalent: the tokens are constants)
    pos = sd["pos_embed"].reshape(-1, E).float()
    n_pre = src["pos_has_prefix"]
    prefix_pos, patch_pos = pos[:n_pre], pos[n_pre:]
    prefix = []
    if src["class_token"]:
        prefix.append(("cls_token", sd["cls_token"].reshape(1, 1, E).float()))
    if src["num_registers"]:
        prefix.append(("reg_token", sd["reg_token"].reshape(1, -1, E).float()))
    row = 0
    for name, t in prefix:
        n = t.shape[1]
        take = prefix_pos[row : row + n]
        if len(take):
            t = t.clone()
            t[0, : len(take)] += take
        row += n
        state[name] = t
    decisions["prefix_positions"] = (
        f"{n_pre} prefix position(s) folded into the class/register tokens"
        if n_pre
        else "no prefix positions (timm no_embed_class)"
    )
    state["pos_embed"] = positions_for(patch_pos, src["grid"], enc.grid)[None]
    decisions["pos_embed"] = (
        f"learned {src['grid']} -> {list(enc.grid)}"
        + (" (bicubic)" if list(enc.grid[-2:]) != list(src["grid"]) else "")
        + (" repeated along depth" if len(enc.grid) == 3 else "")
    )
    # blocks and final norm: same names
    for k, v in sd.items():
        if k.startswith(("blocks.", "norm.")):
            state[k] = v.float()
    # the patch embedding, by channel name
    w = sd["patch_embed.proj.weight"].float()
    b = sd.get("patch_embed.proj.bias")
    b = torch.zeros(E) if b is None else b.float()
    if kind == "wavelength":
        wls = _as_list(source_wavelengths)
        if wls is None:
            missing = [n for n in source_names if not any(x in BAND_WAVELENGTHS for x in _names(n))]
            if missing:
                raise ConfigError(
                    f"no known wavelength for source channel(s) {', '.join(missing)}: pass "
                    "source_wavelengths= (µm, one per source channel)"
                )
            wls = [next(BAND_WAVELENGTHS[x] for x in sorted(_names(n)) if x in BAND_WAVELENGTHS) for n in source_names]
        wls = [float(x) for x in wls]
        if len(wls) != len(source_names):
            raise ConfigError(f"source_wavelengths gives {len(wls)} values for {len(source_names)} source channels")
        state["patch_embed.table_wavelengths"] = torch.tensor(wls)
        state["patch_embed.table_kernels"] = w.transpose(0, 1).contiguous()
        state["patch_embed.bias"] = b
        state["patch_embed.weight_gen.out.weight"] = torch.zeros_like(state["patch_embed.weight_gen.out.weight"])
        state["patch_embed.weight_gen.out.bias"] = torch.zeros_like(state["patch_embed.weight_gen.out.bias"])
        decisions["channels"] = [
            {
                "target": "any band",
                "rule": "kernel table by wavelength (linear in log-wavelength "
                "between entries, nearest outside) + generated residual (zero at import)",
                "table": dict(zip(source_names, wls)),
            }
        ]
    else:
        mapped, decisions["channels"] = map_channels(w, source_names, target_names)
        if kind == "3d":
            pd = enc.patch_embed.patch_size[0]
            mapped = inflate_kernel(mapped, pd)
            decisions["inflation"] = f"2D kernel / {pd} repeated over {pd} depth slices"
        state["patch_embed.proj.weight"] = mapped
        state["patch_embed.proj.bias"] = b
    missing = load_module_state(enc, state, strict=False)
    if missing:
        raise CheckpointError(f"the weights lack {len(missing)} encoder weights, e.g. {missing[0]}")
    return enc, decisions


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
    imp = {k: options.pop(k) for k in list(options) if k in IMPORT_OPTIONS}
    obj, info = read_weights(src_path)
    sd, where = find_state_dict(obj, imp.get("key"))
    sd, prefix, outside = strip_prefix(sd)
    layout = detect_layout(sd)
    sd, dropped = _canonical(sd, layout)
    source = describe_source(sd, layout, arch, info["config"])
    if imp.get("global_pool"):
        if imp["global_pool"] == "token" and not source["class_token"]:
            raise ConfigError("global_pool='token' needs a class token, and the weights have none")
        source["global_pool"] = imp["global_pool"]
    used = {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "cls_token",
        "reg_token",
        "pos_embed",
        "norm.weight",
        "norm.bias",
    }
    used |= {f"blocks.{i}.{p}" for i in range(source["depth"]) for p in _BLOCK_PARTS}
    unmatched = sorted(k for k in sd if k not in used)
    if unmatched:
        raise CheckpointError(
            f"{info['file']}: {len(unmatched)} keys of the {layout} layout are not understood "
            f"(first: {', '.join(unmatched[:5])}); known layouts: {'; '.join(KNOWN_LAYOUTS)}"
        )
    source_names, names_from = source_channel_names(source["in_chans"], imp.get("source_bands"), info["config"])
    dom, cfg, kw = _config_for(
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
        "sha256": sha256_of(info["file"]),
        "format": info["format"],
        "nested_under": where or None,
        "prefix": prefix or None,
        "keys_outside_prefix": len(outside),
        "dropped_keys": dropped[:50],
        "num_dropped_keys": len(dropped),
        "layout": layout,
        "arch": source["arch"],
        "detected": {
            k: source[k]
            for k in (
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
        },
        "source_channels": source_names,
        "source_channels_from": names_from,
        "target_channels": [t[0] for t in target_names] if kw["patch_embed"] != "wavelength" else "any",
        "pooling": source["global_pool"],
        **decisions,
    }
    card = _card(cfg, dom, encoder, provenance)
    _write_checkpoint(out, encoder, card, replace=exist_ok)
    return out


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
    return {
        "domain": cfg.domain,
        "stage": "import",
        "encoder": encoder.config,
        "objective": dataclasses.asdict(cfg.objective),
        "preprocessing": domain.preprocessing(cfg, None),
        "config": cfg.to_dict(),
        "data": {"path": None, "num_samples": 0},
        "task": None,
        "num_classes": None,
        "classes": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "format": FORMAT,
        "step": 0,
        "versions": software_versions(),
        "import": provenance,
    }


def _write_checkpoint(out: Path, encoder, card: dict, replace: bool = False) -> None:
    """``model.safetensors`` + ``card.json`` written in a temporary sibling folder, renamed into place at the end
    (``replace``: an existing ``out`` is swapped out and removed only once the new one is in place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = unique_tensors({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": card["format"]})
        write_json_atomic(tmp / "card.json", card)
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        if out.exists() and replace:
            os.replace(out, old)
        elif out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} appeared while importing; nothing was overwritten")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- continual pretraining -----------------------------------------------------------------------------

_ARCH_KEYS = ("patch_embed", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")


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
    diffs = []
    for key in _ARCH_KEYS:
        if key in ("embed_dim", "depth", "num_heads") and getattr(cfg.model, key) is None:
            continue  # not set in the config: the init decides
        a, b = new.get(key), enc_cfg.get(key)
        if key == "patch_size" and a is not None and b is not None and len(a) != len(b):
            diffs.append(
                f"model.patch_size (config {a}, init {b}: 2D vs 3D; inflate with spatial_dims=3 when importing)"
            )
        elif a != b:
            diffs.append(f"{'model.' + key if key not in ('in_chans',) else 'data.in_chans'} (config {a}, init {b})")
    for key in ("class_token", "num_registers"):
        if new.get(key) and new.get(key) != enc_cfg.get(key):
            diffs.append(f"model.{key} (config {new.get(key)}, init {enc_cfg.get(key)})")
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
        "sha256": sha256_of(ckpt / "model.safetensors"),
        "import": (card.get("import") or {}).get("source_file"),
    }
    return encoder, record


def layer_decay_groups(objective, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups for pretraining with layer-wise LR decay over ``objective.encoder`` only.

    Encoder block ``i`` gets ``lr_scale = layer_decay ** (depth - i)``, its token maker ``layer_decay **
    (depth + 1)``; everything else (final norm, decoder, projector heads) learns at the full rate.

    Example:
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=2, embed_dim=32,
        ...                     num_heads=2)
        >>> obj = torch.nn.Module(); obj.encoder = enc; obj.decoder = torch.nn.Linear(32, 4)
        >>> sorted({round(g["lr_scale"], 3) for g in layer_decay_groups(obj, 0.05, 0.5)})
        [0.125, 0.25, 0.5, 1.0]
    """
    depth = len(objective.encoder.blocks)
    groups: dict[tuple, dict] = {}
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name[len("encoder.") :], depth) if name.startswith("encoder.") else depth + 1
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - lid)
            groups[key] = {"params": [], "lr_scale": scale, "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def init_from_config(cfg, encoder):
    """``(encoder, init record)``: the ``model.init`` checkpoint's encoder when the config names one, else
    ``(encoder, None)`` unchanged (see :func:`init_encoder`)."""
    if not getattr(cfg.model, "init", None):
        return encoder, None
    return init_encoder(cfg, encoder, cfg.model.init)


def set_layer_decay(objective, layer_decay: float) -> None:
    """Give a pretraining objective layer-wise LR decay over its encoder (``train.layer_decay``; 1.0 = none)."""
    if not 0.0 < float(layer_decay) <= 1.0:
        raise ConfigError(f"train.layer_decay must be in (0, 1], got {layer_decay}")
    if float(layer_decay) < 1.0:
        objective.param_groups = lambda weight_decay: layer_decay_groups(objective, weight_decay, float(layer_decay))
