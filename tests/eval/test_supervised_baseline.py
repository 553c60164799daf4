"""The supervised baseline: ResNet-18 / U-Net trained from scratch on the probe's labelled items (tiny, CPU)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from domainfm.errors import DataError, DomainFMError
from domainfm.eval import supervised
from domainfm.eval.finetune import finetune_segmenter
from domainfm.eval.supervised import (
    DEFAULT_MIN_STEPS,
    MEDICAL_EXTRA,
    MIN_STEPS,
    _classifier_net,
    _fit,
    _options,
    _unet,
)
from domainfm.heads import ProgressiveUpsampleHead
from domainfm.models import build_encoder

TIMING = {"seconds", "cpu_seconds"}
NO_MONAI = "MONAI is the medical extra (pip install 'domainfm[medical]')"


def supervised_classifier(*args, **kwargs):
    """On the CPU also where a GPU is (the exact-equality checks below assume deterministic kernels)."""
    return supervised.supervised_classifier(*args, device="cpu", **kwargs)


def supervised_segmenter(*args, **kwargs):
    return supervised.supervised_segmenter(*args, device="cpu", **kwargs)


def _bright(n: int, channels: int, spatial: tuple[int, ...], seed: int):
    """Two classes told apart by brightness: class 1 images are 0.4 brighter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, channels, *spatial, generator=g) * 0.6 + 0.4 * y.view(-1, *([1] * (1 + len(spatial))))
    return x, y


def _threshold(n: int, spatial: tuple[int, ...], seed: int):
    """Images of uniform noise and their mask ``image > 0.5``."""
    x = torch.rand(n, 1, *spatial, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0] > 0.5).long()


def _same_info(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


@pytest.mark.parametrize("channels", [1, 3])
def test_classifier_learns_brightness_2d(channels):
    xtr, ytr = _bright(24, channels, (8, 8), seed=0)
    xte, yte = _bright(20, channels, (8, 8), seed=1)
    scores, info = supervised_classifier(xtr, ytr, xte, 2, max_epochs=10, batch_size=8)
    assert scores.shape == (20, 2) and scores.dtype == np.float64
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-6)
    assert (scores.argmax(1) == yte.numpy()).mean() >= 0.8  # chance is 0.5
    assert info["arch"] == "resnet18-small-input" and info["params"] > 10_000_000
    assert (info["n_fit"], info["n_val"]) == (20, 4) and info["steps"] == 10 * 3
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 10 and info["val_loss"] is not None
    assert info["seconds"] >= 0 and info["cpu_seconds"] >= 0  # recorded; their size depends on the machine


def test_resnet_stem_is_sized_to_the_input():
    small, arch = _classifier_net(3, 4, (28, 28))
    assert arch == "resnet18-small-input"
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.in_channels == 3
    assert isinstance(small.maxpool, nn.Identity)
    assert small(torch.zeros(2, 3, 28, 28)).shape == (2, 4)
    large, arch = _classifier_net(2, 4, (64, 80))
    assert arch == "resnet18" and large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_classifier_3d_runs_with_the_monai_resnet():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, ytr = _bright(8, 1, (8, 8, 8), seed=0)
    xte, _ = _bright(3, 1, (8, 8, 8), seed=1)
    scores, info = supervised_classifier(xtr, ytr, xte, 2, max_epochs=1)
    assert scores.shape == (3, 2) and scores.dtype == np.float64
    assert info["arch"] == "monai-resnet18-3d" and (info["n_fit"], info["n_val"], info["steps"]) == (6, 2, 1)
    net, _ = _classifier_net(1, 2, (8, 8, 8))
    assert net.conv1.stride == (1, 1, 1) and net.conv1.kernel_size == (3, 3, 3)  # small-input stem in 3D too


def test_segmenter_2d_returns_what_finetune_returns_and_learns():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, mtr = _threshold(16, (16, 16), seed=0)
    xte, mte = _threshold(8, (16, 16), seed=1)
    pred, info = supervised_segmenter(xtr, mtr, xte, 2, max_epochs=10, batch_size=4, lr=1e-2)
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    ft_pred, _ = finetune_segmenter(enc, ProgressiveUpsampleHead(32, 2, layers=[0]), xtr, mtr, xte, steps=1)
    assert type(pred) is type(ft_pred) and pred.dtype == ft_pred.dtype and pred.shape == ft_pred.shape
    assert (pred == mte.numpy()).mean() >= 0.75  # chance is 0.5
    assert info["arch"] == "monai-unet" and (info["n_fit"], info["n_val"]) == (13, 3)


def test_segmenter_3d_and_odd_sizes_keep_the_input_shape():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, mtr = _threshold(6, (7, 9, 10), seed=0)
    xte, _ = _threshold(2, (7, 9, 10), seed=1)
    pred, info = supervised_segmenter(xtr, mtr, xte, 2, max_epochs=2)
    assert pred.shape == (2, 7, 9, 10) and pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1}
    xtr, mtr = _threshold(4, (15, 13), seed=0)
    pred, _ = supervised_segmenter(xtr, mtr, xtr[:1], 2, max_epochs=1)
    assert pred.shape == (1, 15, 13)


def test_unet_depth_shrinks_for_small_inputs():
    pytest.importorskip("monai", reason=NO_MONAI)
    for side, multiple in [(64, 8), (16, 8), (8, 4), (5, 2), (2, 2), (1, 2)]:
        net = _unet(1, 3, (side, side))
        assert net.multiple == multiple
        assert net(torch.zeros(2, 1, side, side)).shape == (2, 3, side, side)


def test_segmenter_learns_3d_mask():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, mtr = _threshold(8, (8, 8, 8), seed=0)
    xte, mte = _threshold(4, (8, 8, 8), seed=1)
    pred, _ = supervised_segmenter(xtr, mtr, xte, 2, max_epochs=25, batch_size=4, lr=1e-2)
    assert (pred == mte.numpy()).mean() >= 0.7  # chance is 0.5


def test_same_seed_same_result_other_seed_other_result():
    xtr, ytr = _bright(12, 1, (8, 8), seed=0)
    xte, _ = _bright(6, 1, (8, 8), seed=1)
    a, info_a = supervised_classifier(xtr, ytr, xte, 2, max_epochs=2, seed=3)
    b, info_b = supervised_classifier(xtr, ytr, xte, 2, max_epochs=2, seed=3)
    c, _ = supervised_classifier(xtr, ytr, xte, 2, max_epochs=2, seed=4)
    np.testing.assert_array_equal(a, b)
    assert _same_info(info_a, info_b)
    assert not np.array_equal(a, c)


def test_early_stopping_restores_the_best_weights():
    model = nn.Linear(2, 1)
    scripted = iter([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5])
    seen = []

    def val_loss():
        seen.append(model.weight.detach().clone())
        return next(scripted)

    def step_loss(positions, gen):
        return model(torch.ones(len(positions), 2)).pow(2).mean() + 1.0

    opts = _options(2, 0, 50, 3, 0.2, 4, 1e-2, 0.0, False, "cpu", 8)
    result = _fit(model, step_loss, val_loss, 64, 50, opts)  # 16 steps an epoch: past MIN_STEPS after 2
    assert (result.epochs, result.best_epoch, result.val_loss, result.steps) == (6, 3, 1.0, 6 * 16)
    assert not torch.equal(seen[2], seen[5])  # the weights moved after the best epoch ...
    assert torch.equal(model.weight.detach(), seen[2])  # ... and the best ones are back
    assert not model.training


def test_early_stopping_in_a_real_run():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, mtr = _threshold(10, (8, 8), seed=0)
    _, info = supervised_segmenter(xtr, mtr, xtr[:1], 2, max_epochs=60, patience=2, batch_size=4, lr=3e-2)
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 60
    assert info["steps"] >= MIN_STEPS and info["val_loss"] is not None
    if info["epochs"] < 60:  # stopped early: `patience` epochs after the best one
        assert info["epochs"] - info["best_epoch"] >= 2


def test_tiny_training_sets_train_fixed_epochs_without_validation():
    pytest.importorskip("monai", reason=NO_MONAI)
    xtr, mtr = _threshold(3, (8, 8), seed=0)
    pred, info = supervised_segmenter(xtr, mtr, xtr, 2, max_epochs=100)
    assert pred.shape == (3, 8, 8)
    assert (info["n_fit"], info["n_val"], info["val_loss"]) == (3, 0, None)
    assert info["validation"].startswith("none") and info["epochs"] == info["best_epoch"] == info["steps"] == MIN_STEPS
    # the default budget trains a tiny set as many steps as a large one needs (500), not 60 epochs of one step
    _, info = supervised_segmenter(xtr, mtr, xtr, 2)
    assert info["steps"] == DEFAULT_MIN_STEPS
    # one item of each class cannot spare any for validation either; a single item still trains
    x1, y1 = _bright(4, 1, (8, 8), seed=0)
    _, info = supervised_classifier(x1, [0, 1, 2, 3], x1, 4, max_epochs=1)
    assert info["n_val"] == 0 and "no class" in info["validation"]
    _, info = supervised_classifier(x1[:1], [1], x1, 2, max_epochs=1)
    assert (info["n_fit"], info["steps"]) == (1, 1)


def test_val_fraction_zero_trains_max_epochs():
    xtr, ytr = _bright(6, 1, (8, 8), seed=0)
    scores, info = supervised_classifier(xtr, ytr, xtr[:0], 2, max_epochs=2, val_fraction=0)
    assert (info["n_val"], info["epochs"], info["val_loss"]) == (0, 2, None)
    assert scores.shape == (0, 2)  # no test rows: no scores


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_test_set_never_influences_training(task):
    if task == "segmentation":
        pytest.importorskip("monai", reason=NO_MONAI)
        xtr, target = _threshold(8, (8, 8), seed=0)
        run = supervised_segmenter
    else:
        xtr, target = _bright(8, 1, (8, 8), seed=0)
        run = supervised_classifier
    xte, _ = _bright(6, 1, (8, 8), seed=1)
    extra, _ = _bright(5, 1, (8, 8), seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    rng_before = torch.get_rng_state()
    a, info_a = run(xtr, target, xte, 2, max_epochs=2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is untouched
    b, info_b = run(xtr, target, torch.cat([extra, xte[perm]]), 2, max_epochs=2)
    assert _same_info(info_a, info_b)
    np.testing.assert_allclose(b[5:], a[perm.numpy()], atol=1e-5)  # each test row's result is its own


BAD = {
    "more labels than images": (lambda x, y: (x, np.append(y, 0), x, 2), "2 training images but 3 labels"),
    "NaN in train_x": (lambda x, y: (torch.where(x == x.max(), torch.nan, x), y, x, 2), "train_x holds 1 NaN"),
    "NaN in test_x": (lambda x, y: (x, y, x / 0 * 0, 2), "test_x holds"),
    "label out of range": (lambda x, y: (x, y + 1, x, 2), "[0, 2)"),
    "negative label": (lambda x, y: (x, y - 1, x, 2), "[0, 2)"),
    "fractional labels": (lambda x, y: (x, y + 0.5, x, 3), "integer"),
    "string labels": (lambda x, y: (x, np.array(["a", "b"]), x, 2), "integer"),
    "train_x not 4D/5D": (lambda x, y: (x[:, 0], y, x, 2), "train_x of shape"),
    "test_x other channels": (lambda x, y: (x, y, x.repeat(1, 2, 1, 1), 2), "test_x of shape"),
    "one class": (lambda x, y: (x, y, x, 1), "num_classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_classification_input_gives_one_line(case):
    make, words = BAD[case]
    x, y = _bright(2, 1, (4, 4), seed=0)
    with pytest.raises(DomainFMError) as err:
        supervised_classifier(*make(x, y.numpy()), max_epochs=1)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_settings_give_one_line(kwargs, words):
    x, y = _bright(2, 1, (4, 4), seed=0)
    with pytest.raises(DomainFMError, match=words) as err:
        supervised_classifier(x, y, x, 2, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_masks_give_one_line():
    pytest.importorskip("monai", reason=NO_MONAI)
    x, m = _threshold(2, (4, 4), seed=0)
    cases = [(m[:, :3], "do not match"), (m + 1, "class 2"), (m * 0 - 1, "no labelled pixel"), (m + 0.5, "integer")]
    for masks, words in cases:
        with pytest.raises(DataError, match=words) as err:
            supervised_segmenter(x, masks, x, 2, max_epochs=1)
        assert "\n" not in str(err.value)
    pred, _ = supervised_segmenter(x, m[:, None], x, 2, max_epochs=1)  # N x 1 x H x W masks are fine
    assert pred.shape == (2, 4, 4)


def test_missing_monai_names_the_medical_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai.networks", None)  # `from monai.networks import nets` fails
    x, m = _threshold(2, (4, 4), seed=0)
    with pytest.raises(DomainFMError, match="domainfm\\[medical\\]") as err:
        supervised_segmenter(x, m, x, 2)
    assert MEDICAL_EXTRA in str(err.value) and "\n" not in str(err.value)
    x3, y3 = _bright(2, 1, (4, 4, 4), seed=0)
    with pytest.raises(DomainFMError, match="domainfm\\[medical\\]"):
        supervised_classifier(x3, y3, x3, 2)
    assert _classifier_net(1, 2, (28, 28))[1] == "resnet18-small-input"  # 2D classification needs only timm
