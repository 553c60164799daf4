"""Fine-tune validation scores segmentation with the one metrics module, and finetune.background counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from domainfm.eval.metrics import segmentation_metrics
from domainfm.pipelines import evaluate_task


class _AlwaysClass(nn.Module):
    """Predicts class ``c`` everywhere (2 classes)."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.w = nn.Parameter(torch.zeros(1))

    def logits(self, x, wavelengths=None):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, self.c] = 1.0
        return out


def _masks():
    m = np.zeros((4, 8, 8), np.int64)
    m[:, :4] = 1
    m[0, 0, 0] = -1  # unlabelled
    return m


def test_background_switch_changes_segmentation_validation_and_matches_evaluate():
    masks = _masks()
    data = [{"image": torch.zeros(1, 8, 8), "mask": torch.from_numpy(m)} for m in masks]
    model = _AlwaysClass(0)
    with_bg = evaluate_task(model, data, "segmentation", 2, batch_size=2, background=False)
    without = evaluate_task(model, data, "segmentation", 2, batch_size=2, background=True)
    assert without["dice"] == pytest.approx(0.0) and with_bg["dice"] > 0.3  # class 0 alone is right
    pred = np.zeros_like(masks)
    for background, scores in ((True, without), (False, with_bg)):
        ref = segmentation_metrics(masks, pred, 2, ignore_background=background)
        assert scores == pytest.approx(ref)
