"""Foreign state dicts to domainfm encoders (the role of timm's per-family ``checkpoint_filter_fn``): read a
weights file without unpickling, find the encoder's state dict, detect its layout (timm, official MAE/DINOv2,
Hugging Face ``transformers``), and convert it to this kit's keys, channels, grid and dimensionality.

Example:
    >>> detect_layout({"patch_embed.proj.weight": None, "blocks.0.attn.qkv.weight": None})
    'timm-vit'
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from domainfm.errors import CheckpointError, ConfigError
from domainfm.models.channels import BAND_WAVELENGTHS, as_name_list, channel_name_set, map_channels
from domainfm.models.encoder import build_encoder
from domainfm.models.pos_embed import resample_pos_embed
from domainfm.registry import get_domain, get_encoder_arch, list_encoders, patch_embed_spatial_dims
from domainfm.runconfig import load_config
from domainfm.train.checkpoint import load_module_state

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


_DROPPED = re.compile(
    r"^(head\.|head_dist\.|fc_norm\.(weight|bias)$|decoder_|decoder\.|mask_token$|pre_logits\.|"
    r"dist_token$)"
)


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the weights file is empty (0 bytes): its download or copy did not finish")
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


def holds_tensors(obj, depth: int = 0) -> bool:
    """Whether a weights file's contents hold any tensor (at the top level or nested in dicts/lists).

    Example:
        >>> holds_tensors({"model": {}}), holds_tensors({"model": {"w": torch.zeros(1)}})
        (False, True)
    """
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 8:
        return False
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return any(holds_tensors(v, depth + 1) for v in values)


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


def canonical_state(sd: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
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


def _registry_name(embed_dim: int, depth: int) -> str:
    for name in list_encoders():
        arch = get_encoder_arch(name)()
        if arch.get("embed_dim") == embed_dim and arch.get("depth") == depth:
            return name
    return next((n for n in list_encoders() if get_encoder_arch(n)().get("embed_dim") == embed_dim), "vit-base")


def config_for(
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
    if patch_embed_spatial_dims(kw.get("patch_embed")) == 3:
        pd = int(patch_depth or ph)
        raw["model"]["patch_size"] = [pd, ph, pw]
        if isinstance(size, int):
            raw["data"]["img_size"] = size
        cfg = load_config(raw, check_paths=False)
        kw = domain.encoder_kwargs(cfg, None)
    return domain, cfg, kw


def _fold_prefix_positions(sd: dict, src: dict, state: dict) -> tuple[torch.Tensor, str]:
    """Class and register tokens into ``state`` with their prefix positions folded in (exactly equivalent:
    the tokens are constants); returns the patch positions and the decision text."""
    E = src["embed_dim"]
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
    text = (
        f"{n_pre} prefix position(s) folded into the class/register tokens"
        if n_pre
        else "no prefix positions (timm no_embed_class)"
    )
    return patch_pos, text


def _source_wavelengths(source_names: list[str], source_wavelengths) -> list[float]:
    """One wavelength (µm) per source channel: given, or known from the channel names."""
    wls = as_name_list(source_wavelengths)
    if wls is None:
        missing = [n for n in source_names if not any(x in BAND_WAVELENGTHS for x in channel_name_set(n))]
        if missing:
            raise ConfigError(
                f"no known wavelength for source channel(s) {', '.join(missing)}: pass "
                "source_wavelengths= (µm, one per source channel)"
            )
        wls = [
            next(BAND_WAVELENGTHS[x] for x in sorted(channel_name_set(n)) if x in BAND_WAVELENGTHS)
            for n in source_names
        ]
    wls = [float(x) for x in wls]
    if len(wls) != len(source_names):
        raise ConfigError(f"source_wavelengths gives {len(wls)} values for {len(source_names)} source channels")
    return wls


def _wavelength_table(state: dict, w, b, source_names: list[str], source_wavelengths) -> list[dict]:
    """The wavelength patch embed's kernel table from the source kernels (generated residual zero at import)."""
    wls = _source_wavelengths(source_names, source_wavelengths)
    state["patch_embed.table_wavelengths"] = torch.tensor(wls)
    state["patch_embed.table_kernels"] = w.transpose(0, 1).contiguous()
    state["patch_embed.bias"] = b
    state["patch_embed.weight_gen.out.weight"] = torch.zeros_like(state["patch_embed.weight_gen.out.weight"])
    state["patch_embed.weight_gen.out.bias"] = torch.zeros_like(state["patch_embed.weight_gen.out.bias"])
    return [
        {
            "target": "any band",
            "rule": "kernel table by wavelength (linear in log-wavelength "
            "between entries, nearest outside) + generated residual (zero at import)",
            "table": dict(zip(source_names, wls)),
        }
    ]


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
    patch_pos, decisions["prefix_positions"] = _fold_prefix_positions(sd, src, state)
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
        decisions["channels"] = _wavelength_table(state, w, b, source_names, source_wavelengths)
    else:
        mapped, decisions["channels"] = map_channels(w, source_names, target_names)
        if enc.patch_embed.spatial_dims == 3:
            pd = enc.patch_embed.patch_size[0]
            mapped = inflate_kernel(mapped, pd)
            decisions["inflation"] = f"2D kernel / {pd} repeated over {pd} depth slices"
        state["patch_embed.proj.weight"] = mapped
        state["patch_embed.proj.bias"] = b
    missing = load_module_state(enc, state, strict=False)
    if missing:
        raise CheckpointError(f"the weights lack {len(missing)} encoder weights, e.g. {missing[0]}")
    return enc, decisions
