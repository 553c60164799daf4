"""Spatial block split and block bootstrap of one labelled scene (checkerboard_blocks, as_blocks, pixel_accuracy)."""

from __future__ import annotations

import numpy as np
import pytest

from domainfm.errors import DomainFMError
from domainfm.eval import as_blocks, bootstrap_ci, checkerboard_blocks, pixel_accuracy, segmentation_metrics


def test_checkerboard_halves_the_scene_and_blocks_cover_it_once():
    test = checkerboard_blocks(101, 100, 10)
    assert test.shape == (101, 100) and 0.45 < test.mean() < 0.55
    ids = np.arange(101 * 100).reshape(101, 100)
    blocks = as_blocks(ids, 10)
    assert blocks.shape == (11 * 10, 10, 10)
    kept = blocks[blocks >= 0]
    assert np.array_equal(np.sort(kept), ids.ravel())  # every pixel once, padding is -1
    # each block lies on one side of the split
    sides = as_blocks(test.astype(int), 10)
    assert all(len(set(b[b >= 0].tolist())) == 1 for b in sides)
    with pytest.raises(DomainFMError, match="block size"):
        checkerboard_blocks(4, 4, 0)
    with pytest.raises(DomainFMError, match="H x W"):
        as_blocks(np.zeros((2, 2, 2)), 2)


def test_pixel_accuracy_ignores_unlabelled_and_checks_shapes():
    assert pixel_accuracy([1, 1, -1], [1, 0, 5]) == 0.5
    assert np.isnan(pixel_accuracy([-1, -1], [0, 0]))
    with pytest.raises(DomainFMError, match="pixel_accuracy"):
        pixel_accuracy([0, 1], [0])


def test_block_bootstrap_gives_a_paired_segmentation_gain():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (40, 40))
    base = np.where(rng.random(y.shape) < 0.6, y, (y + 1) % 3)  # 60% right
    better = np.where(rng.random(y.shape) < 0.9, y, (y + 1) % 3)  # 90% right
    units = as_blocks(y, 8)

    def metric_fn(t, p):
        return {"miou": segmentation_metrics(t, p, 3, ignore_background=False)["miou"], "acc": pixel_accuracy(t, p)}

    base_units = [as_blocks(base, 8)]
    st = bootstrap_ci(units, [as_blocks(better, 8)], metric_fn=metric_fn, n_boot=200, baseline_probas=base_units)
    assert st["acc"]["mean"] == pytest.approx(pixel_accuracy(y, better))
    assert 0.2 < st["acc"]["gain_low"] <= st["acc"]["gain"] <= st["acc"]["gain_high"] < 0.4
    assert st["miou"]["gain_low"] > 0
    same = bootstrap_ci(units, base_units, metric_fn=metric_fn, n_boot=50, baseline_probas=base_units)
    assert same["acc"]["gain_low"] == same["acc"]["gain_high"] == 0.0
