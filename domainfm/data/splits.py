"""Train / validation holdout of a list of items: the one split mechanism every domain uses.

Example:
    >>> int(holdout_mask(10, 0.2, seed=0).sum())
    2
    >>> m = holdout_mask(7, 0.5, seed=1, labels=["a", "a", "a", "a", "b", "b", "c"])
    >>> int(m[:4].sum()), int(m[4:6].sum()), bool(m[6])   # per class; a class of one stays in training
    (2, 1, False)
    >>> hash_holdout(["a.tif", "b.tif", "c.tif", "d.tif"], 0.25, seed=0)   # by name: stable as items come and go
    [False, False, False, True]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def _n_held(n: int, fraction: float) -> int:
    """``round(n * fraction)``, at least 1 and at most ``n - 1`` when there are two items or more."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(round(n * fraction))))


def holdout_mask(n: int, fraction: float, seed: int = 0, labels: Sequence | None = None) -> np.ndarray:
    """Boolean mask of the ``n`` items held out for validation (seeded, deterministic).

    ``fraction`` of the items (at least one and never all, when there are two or more) are held out;
    with ``labels`` the holdout is stratified: the fraction of each class, and a class with a single
    item stays in training.
    """
    rng = np.random.default_rng(seed)
    held = np.zeros(n, bool)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(np.asarray(labels, dtype=object) == c) for c in sorted(set(labels), key=str)]
    )
    for idx in groups:
        held[rng.permutation(idx)[: _n_held(len(idx), fraction)]] = True
    return held


def holdout_split(items: list, split: str, fraction: float, seed: int = 0, labels: Sequence | None = None) -> list:
    """The items of ``split``: ``val``/``test`` get the held-out part, ``train`` the rest, other splits all.

    Example:
        >>> holdout_split(list(range(10)), "val", 0.2, seed=0), len(holdout_split(list(range(10)), "train", 0.2))
        ([4, 6], 8)
    """
    if split not in ("train", "val", "test"):
        return list(items)
    held = holdout_mask(len(items), fraction, seed, labels)
    return [it for it, h in zip(items, held) if h == (split in ("val", "test"))]


def hash_fraction(key: str, seed: int = 0) -> float:
    """A number in ``[0, 1]`` fixed by ``key`` and ``seed`` alone: the first 32 bits of
    ``sha1(f"{seed}:{key}")`` over ``2**32 - 1``.

    Example:
        >>> round(hash_fraction("scene0.tif", 0), 6)
        0.623927
    """
    digest = hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def hash_holdout(keys: Sequence[str], fraction: float, seed: int = 0) -> list[bool]:
    """Which of ``keys`` are held out for validation, each decided by a stable hash of the key itself
    (:func:`hash_fraction` below ``fraction``), not by its position: adding or removing items never moves
    the others between train and validation, and the same key is held out on every machine.

    With two keys or more, at least one is held out and one kept (the last key is held out when the hashes
    hold none, the first kept when they hold all); a single key is kept, and ``fraction <= 0`` holds nothing.

    Example:
        >>> keys = [f"scene{i}.tif" for i in range(10)]
        >>> held = hash_holdout(keys, 0.3, seed=1)
        >>> held == hash_holdout(keys, 0.3, seed=1), held[:4] == hash_holdout(keys[:4], 0.3, seed=1)
        (True, True)
    """
    if fraction <= 0:
        return [False] * len(keys)
    held = [hash_fraction(str(k), seed) < fraction for k in keys]
    if held and not any(held):
        held[-1] = True
    if held and all(held):
        held[0] = False
    return held
