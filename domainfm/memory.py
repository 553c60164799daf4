"""Memory known before the first step: estimate the peak of one training step and refuse when it
does not fit; activation checkpointing for the encoder blocks.

The estimate runs the configured step once on PyTorch's ``meta`` device (shapes only: no memory, no
compute) under a dispatch mode that tracks every tensor the step allocates and frees, forward and
backward, so the activations of the encoder, the decoder/head and the loss at the real crop and batch
are counted as they are in a real step. Parameters, gradients and AdamW state (two fp32 copies of
the trainable parameters) are added. Free memory is ``MemAvailable`` (and the cgroup limit) on CPU,
``cudaMemGetInfo`` on GPU.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    >>> class Step(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.net = net
    ...     def forward(self, batch):
    ...         return {"loss": self.net(batch["image"]).mean()}
    >>> est = estimate_step_bytes(Step(), {"image": torch.zeros(64)}, batch_size=32)
    >>> est["params"], est["optimizer"] > 0, est["activations"] >= 32 * 256 * 4
    (67588, True, True)
"""

from __future__ import annotations

import copy
import logging
import os
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from domainfm.errors import ConfigError

log = logging.getLogger("domainfm.train")

GB = 1024**3


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensors produced by ops (views excluded) and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                key = id(t)
                if key in self._seen:
                    continue
                nbytes = t.numel() * t.element_size()
                self._seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, key, nbytes)
        return out


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value


def _meta_batch(sample: dict, batch_size: int) -> dict:
    """A meta batch of ``batch_size`` copies of ``sample`` (images, views, labels, masks)."""
    batch: dict = {}
    for key, value in sample.items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.empty((batch_size, *value.shape), dtype=value.dtype, device="meta")
        elif key == "views" and isinstance(value, (list, tuple)):
            batch[key] = [torch.empty((batch_size, *v.shape), dtype=v.dtype, device="meta") for v in value]
        elif isinstance(value, (int, float)) and key in ("label",):
            batch[key] = torch.empty((batch_size,), dtype=torch.long, device="meta")
        elif key == "wavelengths":
            batch[key] = value
        elif key == "meta":
            batch[key] = [value] * batch_size
    return batch


def _param_bytes(module: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for p in module.parameters():
        n = p.numel() * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def estimate_step_bytes(
    module: nn.Module, sample: dict, batch_size: int, use_bf16: bool = False, grad_checkpointing: bool = False
) -> dict:
    """Bytes of one training step: ``params``, ``grads``, ``optimizer`` (AdamW), ``activations``
    (peak of the tensors the forward + backward allocate, measured on the meta device; -1 when the
    step cannot run on meta) and ``total``."""
    params, trainable = _param_bytes(module)
    est = {"params": params, "grads": trainable, "optimizer": 2 * trainable, "activations": -1}
    meta_module = copy.deepcopy(module).to("meta")
    if grad_checkpointing:
        enable_grad_checkpointing(getattr(meta_module, "encoder", meta_module))
    meta_module.train()
    tracker = _LiveBytes()
    try:
        batch = _meta_batch(sample, batch_size)
        with tracker:
            out = meta_module(batch)
            loss = out["loss"] if isinstance(out, dict) else out
            del out
            loss.backward()
            del loss
        act = tracker.peak
        # grads of the trainable parameters are counted separately
        act = max(0, act - trainable) if act > trainable else act
        est["activations"] = int(act * (0.6 if use_bf16 else 1.0))
    except Exception as exc:  # an op without a meta kernel, data-dependent code: estimate weights only
        log.debug("activation estimate unavailable (%s: %s)", type(exc).__name__, exc)
    finally:
        del meta_module
    est["total"] = est["params"] + est["grads"] + est["optimizer"] + max(0, est["activations"])
    return est


def _cgroup_limit() -> int | None:
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit > 1 << 60:
                return None
            return max(0, limit - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_ram() -> int | None:
    """Bytes of RAM available to this process (``MemAvailable``, capped by a cgroup limit).

    Example:
        >>> available_ram() is None or available_ram() > 0
        True
    """
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        free = None
    if free is None:
        try:
            import psutil  # optional: other systems than Linux

            free = int(psutil.virtual_memory().available)
        except ImportError:
            return None
    cg = _cgroup_limit()
    return min(free, cg) if cg is not None else free


def free_memory(device: torch.device) -> tuple[int | None, str]:
    """(free bytes or None when unknown, what was measured) on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free GPU memory on {device}"
    return available_ram(), "available RAM"


def check_step_memory(
    module: nn.Module,
    sample: dict,
    batch_size: int,
    device: torch.device,
    use_bf16: bool = False,
    grad_checkpointing: bool = False,
    headroom: float = 0.9,
) -> dict:
    """Estimate the configured step's peak (see :func:`estimate_step_bytes`) and raise a one-line
    :class:`ConfigError` with the estimate and the fix when it exceeds ``headroom`` x free memory.
    Set ``DOMAINFM_MEMORY_CHECK=0`` (or ``train.memory_check: false``) to skip."""
    if os.environ.get("DOMAINFM_MEMORY_CHECK", "1") == "0":
        return {}
    est = estimate_step_bytes(module, sample, batch_size, use_bf16, grad_checkpointing)
    free, what = free_memory(device)
    image = sample.get("image") if isinstance(sample.get("image"), torch.Tensor) else None
    shape = "x".join(str(s) for s in image.shape[1:]) if image is not None else "?"
    log.info(
        "step memory estimate: %.2f GB (activations %.2f GB at %s, batch %d); %s: %s",
        est["total"] / GB,
        max(0, est["activations"]) / GB,
        shape,
        batch_size,
        what,
        "unknown" if free is None else f"{free / GB:.1f} GB",
    )
    if free is not None and est["total"] > headroom * free:
        act = est["activations"]
        half = "x".join(str(max(16, s // 2)) for s in image.shape[1:]) if image is not None else "half the size"
        raise ConfigError(
            f"train: one step at input {shape}, batch {batch_size} needs about {est['total'] / GB:.1f} GB "
            f"(activations {max(0, act) / GB:.1f} GB, weights+grads+AdamW "
            f"{(est['params'] + est['grads'] + est['optimizer']) / GB:.2f} GB) but only {free / GB:.1f} GB is {what}; "
            f"fix: a smaller input (e.g. {half}: data.options.crop_size or data.img_size), a smaller train.batch_size"
            f"{'' if grad_checkpointing else ', or train.grad_checkpointing=true'} (skip this check: "
            f"train.memory_check=false)"
        )
    return est


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def enable_grad_checkpointing(encoder: nn.Module) -> int:
    """Recompute each encoder block's activations in the backward pass instead of keeping them
    (``train.grad_checkpointing``); the weights and their names are unchanged. Returns the number of
    blocks wrapped.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=2)
        >>> enable_grad_checkpointing(enc)
        2
    """
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        return 0
    n = 0
    for block in blocks:
        if not getattr(block, "_domainfm_ckpt", False):
            block.forward = _checkpointed(block.forward)
            block._domainfm_ckpt = True
            n += 1
    return n
