"""Supervised baseline: an ordinary network trained from scratch on the labelled items a probe sees.

What a researcher would do without a pretrained encoder, so a report can show what pretraining adds
over it: ``evaluate(..., baseline=("random", "supervised"))`` trains it on exactly the training
items of each label fraction and seed and scores its test predictions like the encoder's.

The networks, losses and augmentation are in :mod:`domainfm.eval.baseline_nets`; this module is the protocol.

- Classification: ResNet-18. 2D: timm ``resnet18`` (``pretrained=False``, ``in_chans=C``); 3D:
  MONAI ``resnet18(spatial_dims=3)``. Sized to the input: when the shorter spatial side is below
  64 (e.g. 28 px MedMNIST), the 7x7 stride-2 stem and the max-pool are replaced by a 3x3 stride-1
  conv without max-pool, as MedMNIST v2's ResNet-18 (28) does, so the first stage keeps the full
  resolution instead of a quarter of it (``arch="resnet18-small-input"``).
- Segmentation: MONAI ``UNet`` with channels (16, 32, 64, 128), strides (2, 2, 2) and 2 residual
  units; fewer levels when the shorter side is small (the bottom level keeps >= 2 pixels), inputs
  zero-padded to a multiple of the total stride and the logits cropped back. Loss: cross-entropy
  + soft Dice over the foreground classes, mask pixels < 0 unlabelled (the loss of the fine-tune
  protocol, :func:`domainfm.heads.task.soft_dice_loss`).
- Training: images standardised per channel with the mean/std of the fit part; AdamW (the kit's
  optimiser step, :class:`domainfm.train.loop.Stepper`), cosine LR per step, batches of at least 2
  items (batch norm); ``augment``: per item random flips along every spatial axis and random
  shifts of up to 1/8 of each side (zero padding + random crop; masks padded as unlabelled), the
  same geometry on image and mask. Early stopping: a seeded validation
  part (``val_fraction``; stratified by class for classification, random for segmentation) of the
  training items, its loss measured after every epoch, the best weights kept in memory and
  restored; training stops after ``patience`` epochs without improvement. The default budget
  (``max_epochs=None``) is 60 epochs but at least ``DEFAULT_MIN_STEPS`` (500) optimisation steps,
  with a patience of at least ``PATIENCE_STEPS`` (100) steps and no stop before 500 steps: a 1%
  label set (one step an epoch) trains to convergence too. A given ``max_epochs`` is a hard cap
  and early stopping waits ``MIN_STEPS`` (30) steps. Fewer than ``MIN_VALIDATION_ITEMS`` items
  (or no class that can spare one): no validation part, a fixed number of epochs for that many
  steps (``info["validation"]`` says which). Everything is seeded by
  ``seed`` (same seed, same result on CPU); the caller's global RNG is left as it was.

The test images reach the network only after training, in :func:`_predict`: the training helpers
never receive them, and each test row's prediction depends on that row alone (eval mode).

Example:
    >>> import torch
    >>> x = torch.rand(20, 1, 16, 16); y = torch.arange(20) % 2; x[y == 1] += 1
    >>> scores, info = supervised_classifier(x, y, x, num_classes=2, max_epochs=3)
    >>> scores.shape, info["arch"], info["epochs"], info["n_fit"] + info["n_val"]
    ((20, 2), 'resnet18-small-input', 3, 20)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.errors import DataError, DomainFMError
from domainfm.eval.baseline_nets import (  # noqa: F401  (importable here as before)
    MEDICAL_EXTRA,
    SMALL_INPUT,
    UNET_CHANNELS,
    WHAT,
    _classification_loss,
    _classifier_net,
    _flip,
    _seeded,
    _segmentation_loss,
    _shift,
    _Standardize,
    _unet,
)
from domainfm.heads.task import IGNORE_INDEX
from domainfm.ramps import cosine_ramp
from domainfm.train.layer_decay import default_param_groups
from domainfm.train.loop import Stepper, refuse_divergence

MIN_STEPS = 30  # with max_epochs given, early stopping never stops before this many steps
DEFAULT_EPOCHS = 60  # max_epochs=None: 60 epochs, and at least DEFAULT_MIN_STEPS steps on tiny label sets
DEFAULT_MIN_STEPS = 500  # max_epochs=None: no early stop before this many steps (1% labels: 1 step an epoch)
PATIENCE_STEPS = 100  # max_epochs=None: patience is at least this many steps
MIN_VALIDATION_ITEMS = 4  # fewer training items: no validation part, a fixed number of epochs


@dataclass
class _Options:
    seed: int
    max_epochs: int | None
    patience: int
    val_fraction: float
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool
    eval_batch_size: int
    device: torch.device
    min_steps: int = MIN_STEPS


@dataclass
class _FitResult:
    epochs: int
    best_epoch: int
    val_loss: float | None
    steps: int
    train_loss: float


def supervised_classifier(
    train_x: torch.Tensor,
    train_y,
    test_x: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    max_epochs: int | None = None,
    patience: int = 8,
    val_fraction: float = 0.2,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    device=None,
    eval_batch_size: int = 256,
) -> tuple[np.ndarray, dict]:
    """ResNet-18 sized to the input, trained from scratch on ``(train_x, train_y)``; class scores of ``test_x``.

    Args:
        train_x: ``N x C x H x W`` (2D, timm) or ``N x C x D x H x W`` (3D, MONAI) images, any ``C``.
        train_y: ``N`` class indices in ``[0, num_classes)`` (numpy array, list or tensor).
        test_x: images of the same kind; used only for the final prediction.
        val_fraction: share of the training items held out (stratified, seeded) for early stopping
            on the validation cross-entropy; 0 trains ``max_epochs`` without validation.
        device: default CUDA when available, else CPU.

    Returns:
        ``(scores N_test x K softmax float64, info)`` with ``info = {"arch", "params", "epochs",
        "best_epoch", "val_loss", "n_fit", "n_val", "seconds", "cpu_seconds", "steps",
        "train_loss", "validation"}``.
    """
    start = (time.perf_counter(), time.process_time())
    opts = _options(
        num_classes,
        seed,
        max_epochs,
        patience,
        val_fraction,
        batch_size,
        lr,
        weight_decay,
        augment,
        device,
        eval_batch_size,
    )
    x, test = _check_images(train_x, test_x)
    y = _check_class_labels(train_y, x.shape[0], num_classes)
    fit, val, note = _class_split(y.numpy(), val_fraction, seed)
    model, arch = _seeded(seed, _classifier_net, x.shape[1], num_classes, tuple(x.shape[2:]))
    norm, result = _train(model, x, y, _classification_loss, fit, val, opts)  # test images not passed
    scores = _predict(model, test, norm, opts, lambda logits: torch.softmax(logits.float(), 1))
    return scores.numpy().astype(np.float64), _info(arch, model, result, fit, val, note, start)


def supervised_segmenter(
    train_x: torch.Tensor,
    train_masks: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    max_epochs: int | None = None,
    patience: int = 8,
    val_fraction: float = 0.2,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment: bool = True,
    device=None,
    eval_batch_size: int = 32,
) -> tuple[np.ndarray, dict]:
    """MONAI U-Net (2D/3D) trained from scratch on ``(train_x, train_masks)``; label maps of ``test_x``.

    Loss: cross-entropy + soft Dice (foreground classes), as the fine-tune protocol; mask pixels
    below 0 are unlabelled and add no loss. Early stopping on that loss over a random, seeded
    ``val_fraction`` of the training items. Needs MONAI (``pip install 'domainfm[medical]'``).

    Args:
        train_x: ``N x C x H x W`` or ``N x C x D x H x W`` images; any size (padded inside the net).
        train_masks: ``N x (D x) H x W`` integer label maps in ``[0, num_classes)`` (< 0: unlabelled).
        test_x: images of the same kind; used only for the final prediction.

    Returns:
        ``(predictions, info)``: the argmax label maps ``N_test x (D x) H x W`` int64, as
        :func:`domainfm.eval.finetune.finetune_segmenter` returns them, and ``info`` as
        :func:`supervised_classifier`'s (``arch="monai-unet"``).
    """
    start = (time.perf_counter(), time.process_time())
    opts = _options(
        num_classes,
        seed,
        max_epochs,
        patience,
        val_fraction,
        batch_size,
        lr,
        weight_decay,
        augment,
        device,
        eval_batch_size,
    )
    x, test = _check_images(train_x, test_x)
    masks = _check_masks(train_masks, x, num_classes)
    fit, val, note = _random_split(x.shape[0], val_fraction, seed)
    model = _seeded(seed, _unet, x.shape[1], num_classes, tuple(x.shape[2:]))
    norm, result = _train(model, x, masks, _segmentation_loss, fit, val, opts)  # test images not passed
    preds = _predict(model, test, norm, opts, lambda logits: logits.argmax(1))
    return preds.numpy(), _info("monai-unet", model, result, fit, val, note, start)


# ---------------------------------------------------------------- checks


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DomainFMError(f"{WHAT}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _options(
    num_classes,
    seed,
    max_epochs,
    patience,
    val_fraction,
    batch_size,
    lr,
    weight_decay,
    augment,
    device,
    eval_batch_size,
) -> _Options:
    """The training settings, checked (one-line :class:`DomainFMError` naming the wrong one)."""
    if _positive(num_classes, "num_classes") < 2:
        raise DomainFMError(f"{WHAT}: num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DomainFMError(f"{WHAT}: val_fraction must be in [0, 1), got {val_fraction}")
    if not (float(lr) > 0 and float(weight_decay) >= 0):
        raise DomainFMError(f"{WHAT}: lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _Options(
        seed=int(seed),
        max_epochs=None if max_epochs is None else _positive(max_epochs, "max_epochs"),
        patience=_positive(patience, "patience"),
        val_fraction=float(val_fraction),
        batch_size=_positive(batch_size, "batch_size"),
        lr=float(lr),
        weight_decay=float(weight_decay),
        augment=bool(augment),
        eval_batch_size=_positive(eval_batch_size, "eval_batch_size"),
        device=torch.device(device),
    )


def _check_images(train_x, test_x) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and test images as float tensors of one kind (2D/3D, channels), finite."""
    x, t = torch.as_tensor(train_x), torch.as_tensor(test_x)
    if x.ndim not in (4, 5):
        raise DataError(
            None,
            f"{WHAT}: train_x of shape {tuple(x.shape)}; images N x C x H x W (2D) or N x C x D x H x W (3D) expected",
        )
    if x.shape[0] == 0:
        raise DataError(None, f"{WHAT}: train_x holds no images")
    if t.ndim != x.ndim or t.shape[1] != x.shape[1]:
        raise DataError(
            None, f"{WHAT}: test_x of shape {tuple(t.shape)} does not match train_x {tuple(x.shape)} (N x C x ...)"
        )
    for name, a in (("train_x", x), ("test_x", t)):
        bad = int((~torch.isfinite(a)).sum()) if a.is_floating_point() else 0
        if bad:
            raise DataError(None, f"{WHAT}: {name} holds {bad} NaN/inf values")
    return x.float(), t.float()


def _integers(values: torch.Tensor, name: str) -> torch.Tensor:
    if values.is_floating_point():
        if not bool(torch.all(values == torch.round(values))):
            raise DataError(None, f"{WHAT}: {name} must be integer class indices, got fractional values")
    elif values.is_complex():
        raise DataError(None, f"{WHAT}: {name} must be integer class indices, got dtype {values.dtype}")
    return values.long()


def _check_class_labels(train_y, n: int, num_classes: int) -> torch.Tensor:
    """``train_y`` as an int64 vector of ``n`` indices in ``[0, num_classes)``."""
    try:
        y = torch.as_tensor(np.asarray(train_y.cpu() if isinstance(train_y, torch.Tensor) else train_y))
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(None, f"{WHAT}: train_y must be integer class indices ({e})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(None, f"{WHAT}: train_y must hold one class index per image, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise DataError(None, f"{WHAT}: {n} training images but {y.shape[0]} labels; they must have the same length")
    y = _integers(y, "train_y")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(
            None, f"{WHAT}: train_y holds {int(y.min())}..{int(y.max())}; labels must be in [0, {num_classes})"
        )
    return y


def _check_masks(train_masks, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps ``N x (D x) H x W`` int64 in ``[0, num_classes)``; every value < 0 becomes unlabelled (-1)."""
    m = torch.as_tensor(train_masks)
    if m.ndim == x.ndim and m.shape[1] == 1:
        m = m[:, 0]
    expected = (x.shape[0], *x.shape[2:])
    if tuple(m.shape) != expected:
        raise DataError(
            None, f"{WHAT}: train_masks of shape {tuple(m.shape)} do not match the images; {expected} expected"
        )
    m = _integers(m, "train_masks")
    if int(m.max()) >= num_classes:
        raise DataError(None, f"{WHAT}: train_masks hold class {int(m.max())}; classes must be in [0, {num_classes})")
    if int(m.max()) < 0:
        raise DataError(None, f"{WHAT}: train_masks have no labelled pixel (all < 0)")
    return m.clamp_min(IGNORE_INDEX)


# ---------------------------------------------------------------- splits


def _split_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B1]))


def _no_validation(n: int, why: str) -> tuple[np.ndarray, np.ndarray, str]:
    return np.arange(n), np.zeros(0, dtype=np.int64), f"none ({why})"


def _class_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(fit, val, note)``: a seeded, stratified ``val_fraction`` held out; every class keeps >= 1 fit item."""
    if val_fraction <= 0:
        return _no_validation(y.size, "val_fraction=0: max_epochs without early stopping")
    if y.size < MIN_VALIDATION_ITEMS:
        return _no_validation(y.size, f"{y.size} training items: too few to hold some out; fixed epochs")
    rng = _split_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    val = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        val.append(idx[: min(int(round(val_fraction * idx.size)), idx.size - 1)])
    held = np.concatenate(val)
    if held.size == 0 and counts.max() >= 2:  # every class rounds to 0: one item of the largest class
        held = rng.choice(np.flatnonzero(y == classes[counts.argmax()]), size=1)
    if held.size == 0:
        return _no_validation(y.size, "no class has an item to spare; fixed epochs")
    fit = np.setdiff1d(np.arange(y.size), held)
    return fit, np.sort(held), f"stratified {held.size} of {y.size} items"


def _random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(fit, val, note)``: a seeded random ``val_fraction`` (>= 1 item) held out, >= 1 item kept to fit."""
    if val_fraction <= 0:
        return _no_validation(n, "val_fraction=0: max_epochs without early stopping")
    if n < MIN_VALIDATION_ITEMS:
        return _no_validation(n, f"{n} training items: too few to hold some out; fixed epochs")
    k = min(max(1, int(round(val_fraction * n))), n - 1)
    perm = _split_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k]), f"random {k} of {n} items"


# ---------------------------------------------------------------- training (networks: eval.baseline_nets)


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """Sizes of the batches of one pass over ``n`` items: ``batch_size`` (at least 2, for batch norm) each,
    a lone last item joined to the batch before it; a single item is used twice (two augmented copies)."""
    bs = max(2, batch_size)
    sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
    if len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled pass over ``range(n)`` in batches of :func:`_batch_sizes`."""
    if n == 1:
        return [torch.zeros(2, dtype=torch.long)]
    return list(torch.randperm(n, generator=gen).split(_batch_sizes(n, batch_size)))


class _Best:
    """The lowest validation loss so far, its epoch and a copy of the weights then."""

    def __init__(self):
        self.loss, self.epoch, self.state = math.inf, 0, None

    def update(self, loss: float, epoch: int, model: nn.Module) -> None:
        if loss < self.loss:
            self.loss, self.epoch = loss, epoch
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _step_budget(opts: _Options, n_fit: int) -> _Options:
    """``max_epochs=None``: ``DEFAULT_EPOCHS`` epochs but at least ``DEFAULT_MIN_STEPS`` steps, patience at least
    ``PATIENCE_STEPS`` steps, no early stop before ``DEFAULT_MIN_STEPS``: a label set of 20 items (one step an
    epoch) trains as many steps as a large one needs to converge, not 60."""
    if opts.max_epochs is not None:
        return opts
    per_epoch = len(_batch_sizes(n_fit, opts.batch_size))
    return dataclasses.replace(
        opts,
        max_epochs=max(DEFAULT_EPOCHS, math.ceil(DEFAULT_MIN_STEPS / per_epoch)),
        patience=max(opts.patience, math.ceil(PATIENCE_STEPS / per_epoch)),
        min_steps=DEFAULT_MIN_STEPS,
    )


def _epoch_cap(n_fit: int, n_val: int, opts: _Options) -> int:
    """``max_epochs``; without a validation part for want of items, enough epochs for ``min_steps`` steps."""
    if n_val or opts.val_fraction <= 0:
        return opts.max_epochs
    return min(opts.max_epochs, math.ceil(opts.min_steps / len(_batch_sizes(n_fit, opts.batch_size))))


def _fit(
    model: nn.Module, step_loss: Callable, val_loss: Callable | None, n_fit: int, max_epochs: int, opts: _Options
) -> _FitResult:
    """AdamW, cosine LR per step, ``max_epochs`` passes over the fit part or early stopping on ``val_loss()``.

    ``step_loss(positions, generator)`` is the loss of a batch of the fit part; ``val_loss()`` the
    validation loss (None: no validation). The best weights are restored at the end.
    """
    gen = torch.Generator().manual_seed(opts.seed)
    total = max_epochs * len(_batch_sizes(n_fit, opts.batch_size))
    opt = torch.optim.AdamW(default_param_groups(model, opts.weight_decay), lr=opts.lr)
    stepper = Stepper(
        model,
        lambda positions: {"loss": step_loss(positions, gen)},
        opt,
        lambda step: cosine_ramp(step, total, opts.lr, 0.0),
        total,
        check_loss=refuse_divergence(f"{WHAT}: training", opt),
    )
    best, step, last, epoch = _Best(), 0, math.nan, 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for positions in _batches(n_fit, opts.batch_size, gen):
            result = stepper.step(step, lambda _step, _k, batch=positions: batch)
            step, last = result.step, result.loss
        if val_loss is not None:
            best.update(val_loss(), epoch, model)
            if epoch - best.epoch >= opts.patience and step >= opts.min_steps:
                break
    best.restore(model)
    model.eval()
    if val_loss is None:
        return _FitResult(epoch, epoch, None, step, last)
    found = best.state is not None
    return _FitResult(epoch, best.epoch if found else epoch, best.loss if found else math.nan, step, last)


def _mean_loss(model, norm, x, target, idx: torch.Tensor, loss_fn, opts: _Options) -> float:
    """Loss over the items ``idx`` (eval mode, no augmentation), batch losses weighted by batch size."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for part in idx.split(opts.eval_batch_size):
            logits = model(norm(x[part]).to(opts.device))
            total += float(loss_fn(logits, target[part].to(opts.device))) * part.numel()
    return total / idx.numel()


def _train(model, x, target, loss_fn, fit: np.ndarray, val: np.ndarray, opts: _Options):
    """Train ``model`` on the training items ``fit`` (early stopping on ``val``); returns ``(norm, result)``.

    Only training images and targets come in: the test images cannot influence anything here.
    """
    fit_idx, val_idx = torch.as_tensor(fit, dtype=torch.long), torch.as_tensor(val, dtype=torch.long)
    norm = _Standardize(x[fit_idx])
    model.to(opts.device)

    def step_loss(positions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        items = fit_idx[positions]
        xb, tb = norm(x[items]).to(opts.device), target[items].to(opts.device)
        if opts.augment:
            xb, tb = _shift(*_flip(xb, tb, gen), gen)
        return loss_fn(model(xb), tb)

    def val_loss() -> float:
        return _mean_loss(model, norm, x, target, val_idx, loss_fn, opts)

    opts = _step_budget(opts, fit.size)
    cap = _epoch_cap(fit.size, val.size, opts)
    return norm, _fit(model, step_loss, val_loss if val.size else None, fit.size, cap, opts)


def _predict(model: nn.Module, x: torch.Tensor, norm: _Standardize, opts: _Options, post: Callable) -> torch.Tensor:
    """``post(logits)`` of every row of ``x`` in eval mode, on the CPU (a row's result depends on it alone)."""
    model.eval()
    with torch.no_grad():
        outs = [post(model(norm(part).to(opts.device))).cpu() for part in x.split(opts.eval_batch_size)]
        return torch.cat(outs) if outs else post(model(norm(x).to(opts.device))).cpu()


def _info(arch: str, model: nn.Module, result: _FitResult, fit, val, note: str, start) -> dict[str, Any]:
    return {
        "arch": arch,
        "params": int(sum(p.numel() for p in model.parameters())),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_loss": result.val_loss,
        "n_fit": int(len(fit)),
        "n_val": int(len(val)),
        "seconds": time.perf_counter() - start[0],
        "cpu_seconds": time.process_time() - start[1],
        "steps": result.steps,
        "train_loss": result.train_loss,
        "validation": note,
    }
