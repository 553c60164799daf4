"""Metrics by task and the bootstrap that gives them honest 95% intervals.

Classification: accuracy, balanced accuracy, macro-F1 and AUROC (binary, or one-vs-rest macro for
more classes) from scikit-learn. Segmentation: mean Dice and mIoU over the foreground classes.
The bootstrap resamples the test set (and the seeds) together, so an interval covers both the
finite test set and the run-to-run spread.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); p = np.array([[.9, .1], [.6, .4], [.3, .7], [.8, .2]])
    >>> m = classification_metrics(y, p)
    >>> round(m["accuracy"], 2), round(m["auroc"], 2)
    (0.75, 0.75)
"""

from __future__ import annotations

import warnings

import numpy as np

from domainfm.errors import DomainFMError

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
SEGMENTATION_METRICS = ("dice", "miou")


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(
    y_true, proba, num_classes: int | None = None, metrics=CLASSIFICATION_METRICS
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUROC of class scores ``proba`` (N x K).

    ``y_true`` holds class indices ``0..K-1``. AUROC is binary (score of class 1) for K = 2 and
    macro one-vs-rest otherwise; it is NaN when the test labels hold a single class. Balanced
    accuracy and macro-F1 average over the classes present in ``y_true``.

    Example:
        >>> classification_metrics([0, 1, 1], [[1, 0], [0, 1], [1, 0]])["balanced_accuracy"]
        0.75
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
        raise DomainFMError(
            f"classification_metrics: scores of shape {proba.shape} do not match {y_true.shape[0]} labels"
        )
    k = num_classes or proba.shape[1]
    y_pred = proba.argmax(1)
    out: dict[str, float] = {}
    cm = _confusion(y_true, y_pred, k)
    support = cm.sum(1)
    present = support > 0
    recall = np.diag(cm)[present] / support[present]
    if "accuracy" in metrics:
        out["accuracy"] = float(np.trace(cm) / max(cm.sum(), 1))
    if "balanced_accuracy" in metrics:
        out["balanced_accuracy"] = float(recall.mean()) if recall.size else float("nan")
    if "macro_f1" in metrics:
        tp = np.diag(cm)[present].astype(np.float64)
        denom = support[present] + cm.sum(0)[present]  # 2TP + FP + FN = (TP+FN) + (TP+FP)
        out["macro_f1"] = float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))
    if "auroc" in metrics:
        out["auroc"] = _auroc(y_true, proba, k)
    return out


def _auroc(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    classes = np.unique(y_true)
    if classes.size < 2:
        return float("nan")
    if k == 2:
        return _binary_auroc(y_true == 1, proba[:, 1])
    # one-vs-rest macro over the classes present in y_true (as sklearn's multi_class="ovr")
    return float(np.mean([_binary_auroc(y_true == c, proba[:, c]) for c in classes]))


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with tied scores counted half (equals ``sklearn.metrics.roc_auc_score``)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as ``scipy.stats.rankdata``), via one sort."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.ravel()]


def segmentation_metrics(target, pred, num_classes: int, ignore_background: bool = True) -> dict[str, float]:
    """Mean Dice and mean IoU of integer label maps (any shape; ``pred`` = argmax of the logits).

    Classes absent from both target and prediction are skipped; class 0 is background and is
    left out when ``ignore_background`` (and there is another class). Target pixels below 0 are
    unlabelled (nodata, outside a split region) and not counted.

    Example:
        >>> import numpy as np
        >>> t = np.array([[0, 1], [1, 1], [-1, -1]]); p = np.array([[0, 1], [0, 1], [1, 0]])
        >>> {k: round(v, 3) for k, v in segmentation_metrics(t, p, 2).items()}
        {'dice': 0.8, 'miou': 0.667}
    """
    t = np.asarray(target).astype(np.int64).ravel()
    p = np.asarray(pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise DomainFMError(f"segmentation_metrics: prediction with {p.size} pixels for a target with {t.size}")
    labelled = t >= 0
    return segmentation_scores(_confusion(t[labelled], p[labelled], num_classes), ignore_background)


def segmentation_scores(cm: np.ndarray, ignore_background: bool = True) -> dict[str, float]:
    """Mean Dice and IoU from a ``K x K`` confusion matrix (rows: target, columns: prediction), over the
    classes present in either (class 0 left out when ``ignore_background``); NaN when none is.

    Example:
        >>> segmentation_scores(np.array([[1, 1], [0, 2]]))
        {'dice': 0.8, 'miou': 0.6666666666666666}
    """
    num_classes = cm.shape[0]
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    classes = np.arange(num_classes)
    if ignore_background and num_classes > 1:
        classes = classes[1:]
    valid = [c for c in classes if tp[c] + fp[c] + fn[c] > 0]
    if not valid:
        return {"dice": float("nan"), "miou": float("nan")}
    v = np.array(valid)
    dice = 2 * tp[v] / (2 * tp[v] + fp[v] + fn[v])
    iou = tp[v] / (tp[v] + fp[v] + fn[v])
    return {"dice": float(dice.mean()), "miou": float(iou.mean())}


def pixel_accuracy(target, pred) -> float:
    """Fraction of labelled pixels (target >= 0) whose predicted class is right; NaN with none labelled.

    Example:
        >>> import numpy as np
        >>> pixel_accuracy(np.array([[0, 1], [2, -1]]), np.array([[0, 1], [1, 2]]))
        0.6666666666666666
    """
    t = np.asarray(target).astype(np.int64).ravel()
    p = np.asarray(pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise DomainFMError(f"pixel_accuracy: prediction with {p.size} pixels for a target with {t.size}")
    labelled = t >= 0
    return float((t[labelled] == p[labelled]).mean()) if labelled.any() else float("nan")


class _WeightedClassification:
    """Classification metrics of one score matrix under many resampling weight vectors at once.

    A bootstrap resample is a weight per test item (how often it was drawn). ``batch(W)`` (W: B x N)
    returns, for every row, the exact weighted accuracy, balanced accuracy, macro-F1 and tie-aware
    Mann-Whitney AUROC, i.e. :func:`classification_metrics` of the resampled set, with a few sparse
    matrix products instead of B sorts.
    """

    def __init__(self, y_true: np.ndarray, proba: np.ndarray, num_classes: int):
        from scipy import sparse  # heavy import (scipy), loaded on first use

        n = y_true.shape[0]
        k = num_classes
        self.k = k
        rows = np.arange(n)
        cell = y_true * k + proba.argmax(1)
        self.cells = sparse.csr_matrix((np.ones(n), (rows, cell)), shape=(n, k * k))
        self.columns = []  # per scored class: sparse (positives, negatives) x tie-group indicator
        for c in [1] if k == 2 else range(k):
            _, inv = np.unique(proba[:, c], return_inverse=True)
            inv = inv.ravel()
            ng = int(inv.max()) + 1
            pos = (y_true == c).astype(np.float64)
            gp = sparse.csr_matrix((pos, (rows, inv)), shape=(n, ng))
            gn = sparse.csr_matrix((1.0 - pos, (rows, inv)), shape=(n, ng))
            self.columns.append((gp, gn))

    def batch(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        k = self.k
        b = weights.shape[0]
        cm = np.asarray((self.cells.T @ weights.T).T).reshape(b, k, k)
        support = cm.sum(2)
        pred_count = cm.sum(1)
        tp = np.einsum("bii->bi", cm)
        present = support > 0
        total = support.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = tp.sum(1) / total
            recall = np.where(present, tp / np.where(present, support, 1), np.nan)
            bal = np.nanmean(np.where(present.any(1, keepdims=True), recall, 0.0), 1)
            denom = support + pred_count
            f1 = np.where(present, np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0), np.nan)
            macro_f1 = np.nanmean(f1, 1)
            aucs = []
            for gp, gn in self.columns:
                wp = np.asarray((gp.T @ weights.T).T)
                wn = np.asarray((gn.T @ weights.T).T)
                tpos, tneg = wp.sum(1), wn.sum(1)
                below = np.cumsum(wn, 1) - wn
                auc = (wp * (below + 0.5 * wn)).sum(1) / (tpos * tneg)
                aucs.append(np.where((tpos > 0) & (tneg > 0), auc, np.nan))
            aucs = np.stack(aucs, 1)
            if k > 2:
                ok = np.isfinite(aucs).sum(1) >= 2
                auroc = np.where(ok, np.nanmean(np.where(np.isfinite(aucs), aucs, np.nan), 1), np.nan)
            else:
                auroc = aucs[:, 0]
        return {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": macro_f1, "auroc": auroc}


def _nanmean(values) -> float:
    a = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def bootstrap_ci(
    y_true,
    probas: list,
    metric_fn=None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    baseline_probas: list | None = None,
    num_classes: int | None = None,
) -> dict:
    """Mean of the metrics over seeds, and percentile bootstrap intervals over test resamples x seeds.

    Args:
        y_true: test labels (N).
        probas: one N x K score array per seed (same test set).
        metric_fn: ``fn(y_true, proba) -> dict[str, float]``; default (None) is
            :func:`classification_metrics`, computed with a fast exact weighted path.
        n_boot: number of bootstrap resamples. Each resample draws N test items with replacement
            and S seeds with replacement and averages the metric over the drawn seeds.
        baseline_probas: if given (one per seed), the same resamples also give an interval for the
            paired difference ``metric(probas) - metric(baseline_probas)``.

    Returns:
        ``{metric: {"mean", "ci_low", "ci_high", "per_seed": [...], "gain"?, "gain_low"?, "gain_high"?}}``

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0); y = rng.integers(0, 2, 200)
        >>> p = np.eye(2)[y] * 0.8 + 0.1
        >>> r = bootstrap_ci(y, [p, p], n_boot=50)["accuracy"]
        >>> r["mean"], r["ci_low"], r["ci_high"]
        (1.0, 1.0, 1.0)
    """
    y_true = np.asarray(y_true)
    if metric_fn is None:  # class labels: one per item
        y_true = y_true.astype(np.int64).ravel()
    _check_scores(y_true.shape[0], probas, baseline_probas)
    rng = np.random.default_rng(seed)
    if metric_fn is None:
        k = int(num_classes or np.asarray(probas[0]).shape[1])
        draws = _fast_bootstrap(y_true, probas, baseline_probas, k, n_boot, rng)
    else:
        draws = _generic_bootstrap(y_true, probas, baseline_probas, metric_fn, n_boot, rng)
    return _intervals(*draws, alpha)


def _check_scores(n: int, probas: list, baseline_probas: list | None) -> None:
    if len(probas) == 0:
        raise DomainFMError("bootstrap_ci: no predictions to summarise")
    for p in list(probas) + list(baseline_probas or []):
        if np.asarray(p).shape[0] != n:
            raise DomainFMError(f"bootstrap_ci: scores for {np.asarray(p).shape[0]} items but {n} labels")


def _seed_means(per: list[dict], names: list[str], seeds: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample (column), the metric averaged over the seeds drawn for it (``seeds``: b x s)."""
    return {m: np.nanmean(np.stack([per[j][m] for j in range(len(per))])[seeds.T, cols], 0) for m in names}


def _resample_weights(rng, n: int, b: int) -> np.ndarray:
    """``b x n`` counts of each item in ``b`` resamples of ``n`` items with replacement."""
    idx = rng.integers(0, n, (b, n))
    w = np.zeros((b, n))
    np.add.at(w, (np.repeat(np.arange(b), n), idx.ravel()), 1.0)
    return w


def _fast_bootstrap(y_true, probas, baseline_probas, k: int, n_boot: int, rng) -> tuple:
    """Classification metrics of weighted resamples, many at once (exact, see :class:`_WeightedClassification`)."""
    n, s = y_true.shape[0], len(probas)
    fast = [_WeightedClassification(y_true, np.asarray(p, dtype=np.float64), k) for p in probas]
    fast_b = [_WeightedClassification(y_true, np.asarray(p, dtype=np.float64), k) for p in (baseline_probas or [])]
    ones = np.ones((1, n))
    per_seed = [{m: float(v[0]) for m, v in f.batch(ones).items()} for f in fast]
    base_per_seed = [{m: float(v[0]) for m, v in f.batch(ones).items()} for f in fast_b] if fast_b else None
    names = list(per_seed[0])
    boots: dict[str, list] = {m: [] for m in names}
    gains: dict[str, list] = {m: [] for m in names}
    chunk = max(1, min(n_boot, int(2e7 // max(n, 1))))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        done += b
        w = _resample_weights(rng, n, b)  # drawn before the seeds: the order of the random draws is fixed
        seeds = rng.integers(0, s, (b, s))
        cols = np.arange(b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, dropped below
            vals = _seed_means([f.batch(w) for f in fast], names, seeds, cols)
            for m in names:
                boots[m].extend(vals[m].tolist())
            if fast_b:
                base = _seed_means([f.batch(w) for f in fast_b], names, seeds % len(fast_b), cols)
                for m in names:
                    gains[m].extend((vals[m] - base[m]).tolist())
    return names, per_seed, base_per_seed, boots, gains


def _generic_bootstrap(y_true, probas, baseline_probas, metric_fn, n_boot: int, rng) -> tuple:
    """Any ``metric_fn(y_true, proba)``, one resample at a time."""
    n, s = y_true.shape[0], len(probas)
    per_seed = [metric_fn(y_true, p) for p in probas]
    base_per_seed = [metric_fn(y_true, p) for p in baseline_probas] if baseline_probas is not None else None
    names = list(per_seed[0])
    boots: dict[str, list] = {m: [] for m in names}
    gains: dict[str, list] = {m: [] for m in names}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        seeds = rng.integers(0, s, s)
        yb = y_true[idx]
        cache = {j: metric_fn(yb, probas[j][idx]) for j in set(seeds.tolist())}
        vals = {m: _nanmean([cache[j][m] for j in seeds]) for m in names}
        for m in names:
            boots[m].append(vals[m])
        if base_per_seed is not None:
            bseeds = seeds % len(baseline_probas)
            bcache = {j: metric_fn(yb, baseline_probas[j][idx]) for j in set(bseeds.tolist())}
            for m in names:
                gains[m].append(vals[m] - _nanmean([bcache[j][m] for j in bseeds]))
    return names, per_seed, base_per_seed, boots, gains


def _percentiles(values: list, q: list[float]) -> tuple[float, float]:
    a = np.array(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    lo, hi = np.percentile(a, q) if a.size else (np.nan, np.nan)
    return float(lo), float(hi)


def _intervals(names, per_seed, base_per_seed, boots, gains, alpha: float) -> dict:
    """Means over seeds with percentile intervals of the resamples (and of the paired gains)."""
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out = {}
    for m in names:
        vals = [d[m] for d in per_seed]
        lo, hi = _percentiles(boots[m], q)
        rec = {"mean": _nanmean(vals), "ci_low": lo, "ci_high": hi, "per_seed": [float(v) for v in vals]}
        if base_per_seed is not None:
            glo, ghi = _percentiles(gains[m], q)
            rec.update(gain=rec["mean"] - _nanmean([d[m] for d in base_per_seed]), gain_low=glo, gain_high=ghi)
        out[m] = rec
    return out
