"""Supervised adaptation protocols on images: full fine-tuning with layer-wise LR decay, and LoRA.

The trainer's plain loop (:mod:`domainfm.train.loop`; AdamW, warmup + cosine, no augmentation) fits
a linear head on the mean-pooled tokens of a copy of the encoder, fast enough on CPU for tiny encoders
and small label fractions. ``mode="full"`` trains everything with :func:`param_groups_layer_decay`;
``mode="lora"`` wraps the attention projections with :func:`apply_lora` and trains the adapters
and the head only.

Example:
    >>> import torch
    >>> from domainfm.models import build_encoder
    >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=64, num_heads=2)
    >>> x = torch.randn(20, 1, 16, 16); y = torch.arange(20) % 2; x[y == 1] += 1
    >>> scores, info = finetune_classifier(enc, x, y, x, num_classes=2, mode="lora", steps=20, lora_rank=2)
    >>> scores.shape, info["encoder_trainable_fraction"] < 0.05
    ((20, 2), True)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.classmap import cap_indices
from domainfm.errors import DataError, DomainFMError
from domainfm.eval.embeddings import pooled_features
from domainfm.heads.task import TaskModel
from domainfm.models.lora import apply_lora, lora_parameter_count
from domainfm.train.layer_decay import param_groups_layer_decay
from domainfm.train.loop import Stepper, fit, refuse_divergence
from domainfm.train.schedule import lr_at


class PooledClassifier(nn.Module):
    """Encoder + ``LayerNorm`` + linear head on the mean-pooled tokens.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
        >>> PooledClassifier(enc, 3)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        dim = getattr(encoder, "embed_dim", None) or encoder.num_features
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        return self.head(self.fc_norm(pooled_features(self.encoder, x, wavelengths)))


def dataset_tensors(dataset, source: str | None = None, max_items: int | None = None, target: str = "label"):
    """Stack a labelled dataset into ``(images N x C x ..., targets, wavelengths or None)``.

    ``target="label"``: targets are class indices (int64 array N); ``target="mask"``: label maps
    (int64 tensor N x (D x) H x W) for segmentation.

    Example:
        >>> from domainfm.data.sample import make_sample
        >>> x, y, wl = dataset_tensors([make_sample(torch.zeros(1, 4, 4), label=1)])
        >>> tuple(x.shape), y.tolist(), wl
        ((1, 1, 4, 4), [1], None)
    """
    keep = cap_indices(dataset, max_items)  # a cap is a stratified random sample, not the first N
    if not keep:
        raise DataError(source, "the dataset is empty")
    images, targets, wls = [], [], set()
    for i in keep:
        s = dataset[i]
        where = (s.get("meta") or {}).get("path") or source
        if target == "mask":
            if "mask" not in s:
                raise DataError(where, "sample has no 'mask'; segmentation evaluation needs label maps")
            m = torch.as_tensor(s["mask"]).long()
            targets.append(m[0] if m.ndim == s["image"].ndim else m)
        else:
            if "label" not in s:
                raise DataError(
                    where,
                    "sample has no 'label'; the finetune/lora protocols need class labels "
                    "(or finetune.task=segmentation with masks)",
                )
            lbl = torch.as_tensor(s["label"])
            if lbl.numel() != 1:
                raise DataError(where, f"label of shape {tuple(lbl.shape)}: one class index per item expected")
            targets.append(int(lbl.reshape(())))
        images.append(s["image"])
        if s.get("wavelengths") is not None:
            wls.add(tuple(s["wavelengths"]))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(source, f"images of different shapes {sorted(shapes)[:3]}; the domain must resize them")
    if len(wls) > 1:
        raise DataError(source, f"samples mix band sets {sorted(wls)[:3]}")
    y = torch.stack(targets) if target == "mask" else np.asarray(targets, dtype=np.int64)
    return torch.stack(images).float(), y, (list(next(iter(wls))) if wls else None)


def _prepare(encoder: nn.Module, mode: str, lora_rank: int, lora_alpha: float) -> nn.Module:
    if mode not in ("full", "lora"):
        raise DomainFMError(f"finetune mode must be 'full' or 'lora', got {mode!r}")
    enc = copy.deepcopy(encoder)
    for p in enc.parameters():
        p.requires_grad_(True)
    if mode == "lora":
        apply_lora(enc, rank=lora_rank, alpha=lora_alpha)
    return enc


class _Shuffled:
    """Batches of ``bs`` indices out of ``n``, drawn from one generator: a fresh permutation whenever the
    current one has fewer than ``bs`` left."""

    def __init__(self, n: int, bs: int, seed: int):
        self.n, self.bs = n, bs
        self.gen = torch.Generator().manual_seed(int(seed))
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def __call__(self, step: int, k: int) -> torch.Tensor:
        if self.pos + self.bs > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx


def _fit(
    model: nn.Module,
    loss_of,
    n: int,
    *,
    mode: str,
    steps,
    epochs,
    batch_size,
    lr,
    weight_decay,
    layer_decay,
    warmup_frac,
    min_steps,
    max_steps,
    seed,
) -> tuple[int, float, float]:
    """AdamW (+ layer-wise decay for ``full``), warmup + cosine, clipping at 1, through the trainer's loop
    (:func:`domainfm.train.loop.fit`); ``loss_of(idx)`` gives the batch loss."""
    if mode == "lora":
        lr = 3e-3 if lr is None else lr
        groups = param_groups_layer_decay(model, lr, weight_decay, 1.0)
    else:
        lr = 1e-3 if lr is None else lr
        groups = param_groups_layer_decay(model, lr, weight_decay, layer_decay)
    for g in groups:
        g.pop("names", None)
        g["lr_scale"] = g["lr"]  # the group's peak rate; the schedule below is its fraction, 0 to 1
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    bs = min(batch_size, n)
    if steps is None:
        steps = int(min(max(epochs * math.ceil(n / bs), min_steps), max_steps))
    warmup = max(1, int(warmup_frac * steps))

    stepper = Stepper(
        model,
        lambda idx: {"loss": loss_of(idx)},
        opt,
        lambda step: lr_at(step, 1.0, steps, warmup),
        steps,
        clip_grad=1.0,
        check_loss=refuse_divergence("fine-tuning", opt),
    )
    result = fit(stepper, _Shuffled(n, bs, seed))
    model.eval()
    return steps, (result.loss if result is not None else float("nan")), lr


def _info(model: nn.Module, encoder: nn.Module, steps: int, last: float, lr: float) -> dict[str, Any]:
    trainable, total = lora_parameter_count(model)
    enc_trainable, enc_total = lora_parameter_count(encoder)
    return {
        "steps": steps,
        "trainable": trainable,
        "total": total,
        "trainable_fraction": trainable / total,
        "encoder_trainable_fraction": enc_trainable / enc_total,
        "final_loss": last,
        "lr": lr,
    }


def _seeded_copy(encoder, mode, lora_rank, lora_alpha, seed, device):
    """The encoder prepared for ``mode`` (full / LoRA) after seeding, and the device to train on."""
    device = next(encoder.parameters()).device if device is None else device
    torch.manual_seed(seed)
    return _prepare(encoder, mode, lora_rank, lora_alpha), device


def finetune_classifier(
    encoder: nn.Module,
    train_x: torch.Tensor,
    train_y,
    test_x: torch.Tensor,
    num_classes: int,
    mode: str = "full",
    steps: int | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float | None = None,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    lora_rank: int = 4,
    lora_alpha: float = 8.0,
    warmup_frac: float = 0.1,
    min_steps: int = 30,
    max_steps: int = 300,
    seed: int = 0,
    wavelengths=None,
    device: str | torch.device | None = None,
    eval_batch_size: int = 256,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune a copy of ``encoder`` + linear head on ``(train_x, train_y)``; class scores of ``test_x``.

    Args:
        mode: ``"full"`` (all weights, layer-wise LR decay) or ``"lora"`` (adapters + head).
        steps: optimisation steps; default ``epochs`` passes over the training set, clipped to
            ``[min_steps, max_steps]``.
        lr: peak learning rate of the head (default 1e-3 full, 3e-3 lora); earlier layers get
            ``lr * layer_decay ** (depth + 1 - layer)``.

    Returns:
        ``(scores N_test x K (softmax), info)`` with ``info = {"steps", "trainable", "total",
        "trainable_fraction", "encoder_trainable_fraction", "final_loss", "lr"}``.
    """
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    if y.shape[0] != train_x.shape[0]:
        raise DomainFMError(f"{train_x.shape[0]} training images but {y.shape[0]} labels")
    enc, device = _seeded_copy(encoder, mode, lora_rank, lora_alpha, seed, device)
    model = PooledClassifier(enc, num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def loss_of(idx):
        return loss_fn(model(train_x[idx].to(device), wavelengths=wavelengths), y[idx].to(device))

    steps, last, lr = _fit(
        model,
        loss_of,
        train_x.shape[0],
        mode=mode,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        warmup_frac=warmup_frac,
        min_steps=min_steps,
        max_steps=max_steps,
        seed=seed,
    )
    outs = []
    with torch.no_grad():
        for s in range(0, test_x.shape[0], eval_batch_size):
            logits = model(test_x[s : s + eval_batch_size].to(device), wavelengths=wavelengths)
            outs.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(outs).numpy().astype(np.float64), _info(model, model.encoder, steps, last, lr)


def finetune_segmenter(
    encoder: nn.Module,
    head: nn.Module,
    train_x: torch.Tensor,
    train_masks: torch.Tensor,
    test_x: torch.Tensor,
    mode: str = "full",
    steps: int | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float | None = None,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    lora_rank: int = 4,
    lora_alpha: float = 8.0,
    warmup_frac: float = 0.1,
    min_steps: int = 30,
    max_steps: int = 300,
    seed: int = 0,
    wavelengths=None,
    device: str | torch.device | None = None,
    eval_batch_size: int = 32,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune a copy of ``encoder`` with a segmentation ``head`` (cross-entropy + soft Dice).

    ``head`` is built for ``encoder`` (e.g. ``domain.head("segmentation", encoder, K, cfg)``); it is
    copied, so the caller's modules are untouched. Returns the predicted label maps of ``test_x``
    (``N x (D x) H x W`` uint8/int64) and the same ``info`` as :func:`finetune_classifier`.

    Example:
        >>> from domainfm.models import build_encoder
        >>> from domainfm.heads import ProgressiveUpsampleHead
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
        >>> x = torch.rand(4, 1, 16, 16); m = (x[:, 0] > 0.5).long()
        >>> pred, info = finetune_segmenter(enc, ProgressiveUpsampleHead(32, 2, layers=[0]), x, m, x, steps=2)
        >>> pred.shape
        (4, 16, 16)
    """
    if train_masks.shape[0] != train_x.shape[0]:
        raise DomainFMError(f"{train_x.shape[0]} training images but {train_masks.shape[0]} masks")
    enc, device = _seeded_copy(encoder, mode, lora_rank, lora_alpha, seed, device)
    model = TaskModel(enc, copy.deepcopy(head), "segmentation").to(device)
    for p in model.head.parameters():
        p.requires_grad_(True)

    def loss_of(idx):
        return model(
            {"image": train_x[idx].to(device), "mask": train_masks[idx].to(device), "wavelengths": wavelengths}
        )["loss"]

    steps, last, lr = _fit(
        model,
        loss_of,
        train_x.shape[0],
        mode=mode,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        warmup_frac=warmup_frac,
        min_steps=min_steps,
        max_steps=max_steps,
        seed=seed,
    )
    outs = []
    with torch.no_grad():
        for s in range(0, test_x.shape[0], eval_batch_size):
            logits = model.logits(test_x[s : s + eval_batch_size].to(device), wavelengths=wavelengths)
            outs.append(logits.argmax(1).cpu())
    return torch.cat(outs).numpy(), _info(model, model.encoder, steps, last, lr)
