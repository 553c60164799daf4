"""Label checks and seeded, stratified subsets (label fractions, validation and test splits).

Example:
    >>> import numpy as np
    >>> y = np.array([0] * 50 + [1] * 50)
    >>> idx = stratified_fraction(y, 0.1, seed=0)
    >>> len(idx), int(y[idx].sum())
    (10, 5)
"""

from __future__ import annotations

import numpy as np

from domainfm.errors import DataError, DomainFMError


def check_labels(labels, source: str | None = None, what: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int64 vector; raise a one-line error if it holds fewer than 2 classes.

    Example:
        >>> check_labels([0, 1, 1]).tolist()
        [0, 1, 1]
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(source, f"{what} must be one class index per item, got shape {y.shape}")
    if y.size == 0:
        raise DataError(source, f"{what} are empty: no labelled items to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(source, f"{what} must be integer class indices, got dtype {y.dtype}")
    classes = np.unique(y)
    if classes.size < 2:
        raise DataError(
            source,
            f"{what} hold a single class ({int(classes[0])}) in {y.size} items; a probe needs at least 2 classes",
        )
    if classes.min() < 0:
        raise DataError(source, f"{what} must be >= 0, got {int(classes.min())}")
    return y.astype(np.int64)


def check_pair(x, y, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check that embeddings ``x`` (N x E) and labels ``y`` (N) line up; return them as arrays.

    Example:
        >>> x, y = check_pair(np.zeros((3, 4)), [0, 1, 0])
        >>> x.shape, y.shape
        ((3, 4), (3,))
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(source, f"embeddings must be N x E, got shape {x.shape}")
    y = check_labels(y, source)
    if x.shape[0] != y.shape[0]:
        raise DataError(source, f"{x.shape[0]} embeddings but {y.shape[0]} labels; they must have the same length")
    if not np.all(np.isfinite(x)):
        raise DataError(source, f"embeddings hold {int((~np.isfinite(x)).sum())} NaN/inf values")
    return x, y


def stratified_fraction(
    labels, fraction: float, seed: int = 0, source: str | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Indices of a seeded, stratified ``fraction`` of ``labels`` (sorted).

    Each class keeps ``round(fraction * n_class)`` items; a fraction that would leave a class of the
    full label set empty raises a one-line :class:`DataError` (use a larger fraction or fewer classes).

    Example:
        >>> stratified_fraction([0, 0, 0, 0, 1, 1, 1, 1], 0.5, seed=1).size
        4
    """
    y = check_labels(labels, source)
    if not 0.0 < float(fraction) <= 1.0:
        raise DomainFMError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.arange(y.size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED, int(round(fraction * 1e6))]))
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = int(round(fraction * idx.size))
        if n == 0:
            need = 0.5 / idx.size
            raise DataError(
                source,
                f"label fraction {fraction:g} leaves class {int(c)} empty "
                f"({idx.size} items x {fraction:g} rounds to 0); use a fraction >= {need:.3g}",
            )
        out.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(out))


def stratified_split(
    labels, holdout: float = 0.2, seed: int = 0, source: str | None = None, min_train: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split into ``(keep, holdout)`` indices (holdout >= 1 item per class).

    Raises :class:`DataError` if a class has too few items to appear on both sides.

    Example:
        >>> a, b = stratified_split([0] * 10 + [1] * 10, 0.2, seed=0)
        >>> len(a), len(b)
        (16, 4)
    """
    y = check_labels(labels, source)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7E57]))
    keep, hold = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if idx.size < min_train + 1:
            raise DataError(
                source, f"class {int(c)} has {idx.size} item(s): too few to split off a held-out part for it"
            )
        n_hold = min(max(1, int(round(holdout * idx.size))), idx.size - min_train)
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def random_fraction(n: int, fraction: float, seed: int = 0, source: str | None = None) -> np.ndarray:
    """Indices of a seeded random ``fraction`` of ``n`` items (segmentation: no class to stratify on).

    Example:
        >>> random_fraction(10, 0.3, seed=0).size
        3
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise DomainFMError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.arange(n)
    k = int(round(fraction * n))
    if k == 0:
        raise DataError(
            source,
            f"label fraction {fraction:g} of {n} labelled images keeps none; use a fraction >= {0.5 / max(n, 1):.3g}",
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E6, int(round(fraction * 1e6))]))
    return np.sort(rng.choice(n, size=k, replace=False))


def checkerboard_blocks(height: int, width: int, block: int) -> np.ndarray:
    """Spatial split of one scene: ``H x W`` bool, True on the test blocks of a ``block``-pixel checkerboard.

    Blocks (the last row/column of blocks may be smaller) alternate train/test like a chess board,
    so both sides cover every part of the scene and no block touches another of its side along an edge.

    Example:
        >>> checkerboard_blocks(4, 6, 2).astype(int).tolist()
        [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1]]
    """
    if int(block) < 1:
        raise DomainFMError(f"block size must be >= 1 pixel, got {block}")
    rows = np.arange(int(height))[:, None] // int(block)
    cols = np.arange(int(width))[None, :] // int(block)
    return (rows + cols) % 2 == 1


def as_blocks(array, block: int, fill=-1) -> np.ndarray:
    """Cut an ``H x W`` map into ``block x block`` tiles (``N x block x block``, row-major), padding the
    last row/column of tiles with ``fill``: the resampling units of a spatial (block) bootstrap.

    Example:
        >>> as_blocks(np.arange(6).reshape(2, 3), 2).tolist()
        [[[0, 1], [3, 4]], [[2, -1], [5, -1]]]
    """
    a = np.asarray(array)
    if a.ndim != 2:
        raise DomainFMError(f"as_blocks takes an H x W map, got shape {a.shape}")
    b = int(block)
    if b < 1:
        raise DomainFMError(f"block size must be >= 1 pixel, got {block}")
    h, w = -(-a.shape[0] // b) * b, -(-a.shape[1] // b) * b
    padded = np.full((h, w), fill, dtype=np.result_type(a.dtype, np.min_scalar_type(fill)))
    padded[: a.shape[0], : a.shape[1]] = a
    return padded.reshape(h // b, b, w // b, b).transpose(0, 2, 1, 3).reshape(-1, b, b)
