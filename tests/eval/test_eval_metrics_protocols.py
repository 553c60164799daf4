"""Metrics, bootstrap, label fractions and frozen-feature protocols over plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from domainfm.errors import DataError, DomainFMError
from domainfm.eval import (
    bootstrap_ci,
    check_pair,
    classification_metrics,
    fewshot_probe,
    knn_probe,
    linear_probe,
    segmentation_metrics,
    stratified_fraction,
)
from domainfm.eval.protocols import DEFAULT_CS


def _blobs(n_per=60, k=3, dim=16, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * sep
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + rng.normal(size=(y.size, dim))
    return x.astype(np.float32), y


@pytest.mark.parametrize("k", [2, 4])
def test_classification_metrics_match_sklearn(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    p = rng.random((300, k)).round(1) + np.eye(k)[y] * 0.3  # ties + some signal
    p /= p.sum(1, keepdims=True)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    ref = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr")
    assert m["auroc"] == pytest.approx(ref)
    assert m["auroc"] > 0.6


def test_segmentation_metrics_known_values():
    t = np.zeros((4, 4), int)
    t[:2, :2] = 1
    p = np.zeros((4, 4), int)
    p[:2, :1] = 1  # half of the object
    m = segmentation_metrics(t, p, num_classes=2)
    assert m["dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert m["miou"] == pytest.approx(2 / 4)
    with pytest.raises(DomainFMError, match="pixels"):
        segmentation_metrics(t, p[:2], num_classes=2)


def test_bootstrap_interval_covers_mean_shrinks_with_n_and_gives_paired_gain():
    rng = np.random.default_rng(0)

    def run(n):
        y = rng.integers(0, 2, n)
        good = [np.eye(2)[y] * 0.5 + rng.random((n, 2)) for _ in range(3)]  # ~75% accurate
        bad = [rng.random((n, 2)) for _ in range(3)]
        return bootstrap_ci(y, good, n_boot=300, baseline_probas=bad)

    small, large = run(100), run(2000)
    for r in (small, large):
        acc = r["accuracy"]
        assert acc["ci_low"] <= acc["mean"] <= acc["ci_high"]
        assert len(acc["per_seed"]) == 3
        assert acc["gain"] > 0.15 and acc["gain_low"] > 0.05  # clearly better than the random scores
    width = lambda r: r["auroc"]["ci_high"] - r["auroc"]["ci_low"]  # noqa: E731
    assert width(large) < width(small) / 2


def test_bootstrap_fast_path_equals_generic_metric_fn_on_point_estimates():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    p = [rng.random((200, 3)) for _ in range(2)]
    fast = bootstrap_ci(y, p, n_boot=200)
    slow = bootstrap_ci(y, p, metric_fn=lambda a, b: classification_metrics(a, b, 3), n_boot=200)
    for m in fast:
        assert fast[m]["mean"] == pytest.approx(slow[m]["mean"])
        assert fast[m]["ci_low"] == pytest.approx(slow[m]["ci_low"], abs=0.03)


def test_stratified_fraction_is_seeded_stratified_and_nested_sizes():
    y = np.array([0] * 300 + [1] * 100)
    a = stratified_fraction(y, 0.1, seed=0)
    assert np.array_equal(a, stratified_fraction(y, 0.1, seed=0))
    assert not np.array_equal(a, stratified_fraction(y, 0.1, seed=1))
    assert np.bincount(y[a]).tolist() == [30, 10]
    assert stratified_fraction(y, 1.0, seed=3).size == 400


def test_bad_labels_and_embeddings_give_one_line_errors():
    x, y = _blobs()
    with pytest.raises(DataError, match="single class") as e:
        linear_probe(x, np.zeros_like(y), x)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="leaves class 1 empty") as e:
        stratified_fraction(np.array([0] * 500 + [1] * 20), 0.01, seed=0, source="labels.csv")
    assert str(e.value).startswith("labels.csv:") and "\n" not in str(e.value)
    with pytest.raises(DataError, match="180 embeddings but 179 labels"):
        check_pair(x, y[:-1], "emb.npz")
    with pytest.raises(DataError, match="180 embeddings but 179 labels"):
        knn_probe(x, y[:-1], x)
    with pytest.raises(DomainFMError, match=r"\(0, 1\]"):
        stratified_fraction(y, 1.5)


def test_protocols_separate_blobs_and_stay_at_chance_on_shuffled_labels():
    x, y = _blobs()
    xt, yt = _blobs(seed=0)  # same centres, new noise below
    rng = np.random.default_rng(5)
    xt = xt + rng.normal(size=xt.shape).astype(np.float32) * 0.1
    scores, info = linear_probe(x, y, xt, seed=0, return_info=True)
    assert info["C"] in DEFAULT_CS and info["val_log_loss"] < 0.3
    assert scores.shape == (180, 3) and np.allclose(scores.sum(1), 1)
    assert classification_metrics(yt, scores)["accuracy"] > 0.95
    assert classification_metrics(yt, knn_probe(x, y, xt, k=10))["accuracy"] > 0.95
    eps = fewshot_probe(x, y, xt, shots=5, episodes=3, seed=0)
    assert len(eps) == 3 and all(classification_metrics(yt, e)["accuracy"] > 0.9 for e in eps)
    shuffled = rng.permutation(y)
    chance = classification_metrics(yt, knn_probe(x, shuffled, xt, k=10))["accuracy"]
    assert chance < 0.55


def test_knn_k_larger_than_train_set_and_weighting():
    x = np.array([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0]])
    y = np.array([0, 0, 1])
    s = knn_probe(x, y, np.array([[0.1, 1.0]]), k=50, temperature=0.01)  # k capped at 3; weighted vote
    assert s.argmax(1).tolist() == [1]


def test_random_fraction_for_segmentation():
    from domainfm.eval.splits import random_fraction

    a = random_fraction(50, 0.2, seed=0)
    assert a.size == 10 and np.array_equal(a, random_fraction(50, 0.2, seed=0)) and len(set(a.tolist())) == 10
    with pytest.raises(DataError, match="keeps none"):
        random_fraction(20, 0.01, seed=0, source="masks/")
