"""Frozen-feature protocols over cached embeddings: linear probe, kNN and few-shot prototypes.

Each protocol takes training embeddings + labels and test embeddings (numpy arrays) and returns
class scores for the test items (N_test x K, rows sum to 1), so one set of embeddings serves many
probes, fractions and seeds.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20); x = rng.normal(size=(40, 8)) + 3 * y[:, None]
    >>> linear_probe(x, y, x, num_classes=2).argmax(1).tolist() == y.tolist()
    True
    >>> float((knn_probe(x, y, x, k=5, num_classes=2).argmax(1) == y).mean())
    1.0
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from domainfm.eval.splits import check_pair

#: the linear probe's inverse-regularisation sweep: half-decade steps from 1e-4 to 1e3, wide enough that
#: weak (random-init) and strong encoders both find their optimum inside it, not at an edge
DEFAULT_CS = tuple(float(f"{c:.3g}") for c in np.logspace(-4, 3, 15))


def _standardize(train_x: np.ndarray, *others: np.ndarray):
    mean = train_x.mean(0, keepdims=True)
    std = train_x.std(0, keepdims=True) + 1e-6
    return [(a - mean) / std for a in (train_x, *others)]


def _few_threads(size: int):
    """One BLAS thread for small problems: multi-threaded BLAS on small matrices is 10-20x slower
    on a busy machine (thread oversubscription), and large ones keep every thread."""
    if size > 5_000_000:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # comes with scikit-learn, imported only for a probe

    return threadpool_limits(1)


def _fit_logreg(x, y, c, seed):
    from sklearn.linear_model import LogisticRegression  # heavy import (scipy), only for a linear probe

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    with warnings.catch_warnings(), _few_threads(x.size):
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny/odd subsets: the sweep handles it
        clf.fit(x, y)
    return clf


def _scores_from(clf, x, num_classes):
    p = clf.predict_proba(x)
    out = np.zeros((x.shape[0], num_classes), dtype=np.float64)
    out[:, clf.classes_] = p
    return out


def _folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold indices (each class dealt round-robin over the folds)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF01D]))
    fold_of = np.empty(y.size, dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (np.arange(idx.size) + rng.integers(n_folds)) % n_folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)]


def linear_probe(
    train_x,
    train_y,
    test_x,
    num_classes: int | None = None,
    seed: int = 0,
    Cs=DEFAULT_CS,
    n_folds: int = 3,
    return_info: bool = False,
):
    """Logistic regression on standardised embeddings; ``C`` chosen by validation on the training set.

    The sweep holds out part of the (labelled-fraction) training set: seeded, stratified
    ``n_folds``-fold cross-validation (fewer folds when a class has fewer items), scored by the
    validation log-loss (smoother than accuracy on small sets). The best ``C`` is refit on the
    whole training set. When a class has a single item no validation is possible and the middle
    ``C`` of ``Cs`` is used.

    Returns class scores ``N_test x K`` (and ``{"C": chosen, "val_log_loss": ...}`` if ``return_info``).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [0.1], [1.0], [1.1]]); y = np.array([0, 0, 1, 1])
        >>> linear_probe(x, y, np.array([[0.05], [1.05]]), Cs=(1.0,)).argmax(1).tolist()
        [0, 1]
    """
    x, y = check_pair(train_x, train_y, "linear probe training set")
    tx = np.asarray(test_x, dtype=np.float32)
    k = int(num_classes or y.max() + 1)
    Cs = tuple(float(c) for c in Cs)
    chosen, best = Cs[len(Cs) // 2], None
    smallest = int(min(np.bincount(y)[np.unique(y)]))
    folds = min(int(n_folds), smallest)
    if len(Cs) > 1 and folds >= 2:
        splits = _folds(y, folds, seed)
        prepared = [(fit, val, *_standardize(x[fit], x[val])) for fit, val in splits]
        for c in Cs:
            losses = []
            for fit, val, xf, xv in prepared:
                p = _scores_from(_fit_logreg(xf, y[fit], c, seed), xv, k)
                losses.append(float(-np.log(np.clip(p[np.arange(val.size), y[val]], 1e-12, None)).mean()))
            loss = float(np.mean(losses))
            if best is None or loss < best - 1e-9:
                best, chosen = loss, c
    xs, txs = _standardize(x, tx)
    clf = _fit_logreg(xs, y, chosen, seed)
    scores = _scores_from(clf, txs, k)
    return (scores, {"C": chosen, "val_log_loss": best}) if return_info else scores


def leave_one_out_probe(features, labels, C: float = 0.5, num_classes: int | None = None) -> np.ndarray:
    """Class scores ``N x K`` of each item from a logistic regression fit on all the other items.

    For labelled sets too small to split (tens of tiles): every item is scored by a standardised
    logistic regression (fixed ``C``; a sweep would need a nested split the set cannot spare) that
    never saw it. Pass the scores to :func:`~domainfm.eval.metrics.bootstrap_ci` for intervals.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [0.2], [0.1], [1.0], [1.2], [1.1]]); y = np.array([0, 0, 0, 1, 1, 1])
        >>> leave_one_out_probe(x, y).argmax(1).tolist()
        [0, 0, 0, 1, 1, 1]
    """
    x, y = check_pair(features, labels, "leave-one-out probe")
    k = int(num_classes or y.max() + 1)
    scores = np.zeros((y.size, k), dtype=np.float64)
    for i in range(y.size):
        rest = np.arange(y.size) != i
        if np.unique(y[rest]).size < 2:
            scores[i, y[rest][0]] = 1.0  # one class left: it is the only possible answer
            continue
        xs, xi = _standardize(x[rest], x[i : i + 1])
        scores[i] = _scores_from(_fit_logreg(xs, y[rest], C, 0), xi, k)[0]
    return scores


def _l2n(a: np.ndarray) -> np.ndarray:
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)


def knn_probe(
    train_x, train_y, test_x, k: int = 20, num_classes: int | None = None, temperature: float = 0.07, chunk: int = 4096
) -> np.ndarray:
    """Weighted k-nearest-neighbour vote with cosine similarity (DINO-style ``exp(sim / T)`` weights).

    ``k`` is capped at the training-set size. Returns normalised class votes ``N_test x K``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]); y = np.array([0, 0, 1])
        >>> knn_probe(x, y, np.array([[1.0, 0.05]]), k=2).argmax(1).tolist()
        [0]
    """
    x, y = check_pair(train_x, train_y, "kNN training set")
    tx = np.asarray(test_x, dtype=np.float32)
    n_cls = int(num_classes or y.max() + 1)
    k = max(1, min(int(k), x.shape[0]))
    xn, tn = _l2n(x), _l2n(tx)
    out = np.zeros((tx.shape[0], n_cls), dtype=np.float64)
    for s in range(0, tx.shape[0], chunk):
        sim = tn[s : s + chunk] @ xn.T
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn_idx, 1)
        w = np.exp((nn_sim - nn_sim.max(1, keepdims=True)) / temperature)
        votes = np.zeros((sim.shape[0], n_cls))
        np.add.at(votes, (np.repeat(np.arange(sim.shape[0]), k), y[nn_idx].ravel()), w.ravel())
        out[s : s + chunk] = votes / votes.sum(1, keepdims=True)
    return out


def prototype_probe(
    support_x, support_y, query_x, num_classes: int | None = None, temperature: float = 0.1
) -> np.ndarray:
    """Nearest class prototype (mean of L2-normalised support embeddings), cosine, softmax scores.

    Example:
        >>> import numpy as np
        >>> prototype_probe(np.eye(2), [0, 1], np.array([[2.0, 0.1]])).argmax(1).tolist()
        [0]
    """
    x, y = check_pair(support_x, support_y, "few-shot support set")
    n_cls = int(num_classes or y.max() + 1)
    xn = _l2n(x)
    protos = np.zeros((n_cls, x.shape[1]))
    present = np.zeros(n_cls, dtype=bool)
    for c in np.unique(y):
        protos[c] = xn[y == c].mean(0)
        present[c] = True
    logits = _l2n(np.asarray(query_x, dtype=np.float64)) @ _l2n(protos).T / temperature
    logits[:, ~present] = -np.inf
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def sample_episode(labels, shots: int, seed: int) -> np.ndarray:
    """Indices of a ``shots``-per-class support set (seeded); classes with fewer items give all they have.

    Example:
        >>> sample_episode([0, 0, 0, 1, 1, 1], shots=2, seed=0).size
        4
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(shots), 0xFE5]))
    idx = [
        rng.choice(np.flatnonzero(y == c), size=min(shots, int((y == c).sum())), replace=False) for c in np.unique(y)
    ]
    return np.sort(np.concatenate(idx))


def fewshot_probe(
    train_x, train_y, test_x, shots: int = 5, episodes: int = 10, seed: int = 0, num_classes: int | None = None
) -> list[np.ndarray]:
    """``episodes`` k-shot episodes: sample ``shots`` items per class, classify by prototypes.

    Returns one ``N_test x K`` score array per episode (episodes are replicates for the bootstrap).

    Example:
        >>> import numpy as np
        >>> y = np.repeat([0, 1], 10); x = np.eye(2)[y] + 0.01
        >>> len(fewshot_probe(x, y, x, shots=1, episodes=3))
        3
    """
    x, y = check_pair(train_x, train_y, "few-shot training set")
    return [
        prototype_probe(x[s], y[s], test_x, num_classes=num_classes or int(y.max() + 1))
        for s in (sample_episode(y, shots, seed * 100003 + e) for e in range(episodes))
    ]
