"""The core holdout splits: seeded by position (:func:`holdout_mask`) and by a stable hash of each key
(:func:`hash_holdout`, which remote sensing uses for scenes)."""

from __future__ import annotations

import hashlib

import pytest

from domainfm.data.splits import hash_fraction, hash_holdout, holdout_split


def _old_remote_sensing_flags(keys: list[str], fraction: float, seed: int) -> list[bool]:
    """The remote-sensing split as it was written before it moved to the core (datasets.py)."""

    def stable(key: str) -> float:
        h = hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
        return int(h[:8], 16) / 0xFFFFFFFF

    flags = [stable(k) < fraction for k in keys]
    if not any(flags):
        flags[-1] = True
    if all(flags):
        flags[0] = False
    return flags


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.2, 0.25, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [1, 4, 5, 37, 200])
def test_hash_holdout_is_bit_identical_to_the_old_remote_sensing_split(n, fraction, seed):
    keys = [f"/data/scenes/S2A_{i:04d}_T33UVP.tif" for i in range(n)]
    assert hash_holdout(keys, fraction, seed) == _old_remote_sensing_flags(keys, fraction, seed)


def test_hash_holdout_is_stable_per_key_and_keeps_both_sides():
    keys = [f"tile_{i}.tif" for i in range(500)]
    held = hash_holdout(keys, 0.2, seed=3)
    assert 60 < sum(held) < 140  # about a fifth
    # an item's side depends on its key only: dropping other items moves nobody (away from the guarantees)
    sub = keys[100:400:3]
    assert [h for k, h in zip(keys, held) if k in set(sub)] == hash_holdout(sub, 0.2, seed=3)
    assert hash_holdout(keys, 0.2, seed=4) != held
    assert hash_holdout(["a", "b"], 1e-9) == [False, True] and hash_holdout(["a", "b"], 1.0) == [False, True]
    assert hash_holdout(["only"], 0.5) == [False] and hash_holdout([], 0.5) == []
    assert hash_holdout(keys[:5], 0.0) == [False] * 5
    assert 0.0 <= hash_fraction("x", 0) <= 1.0


def test_holdout_split_unchanged():
    assert holdout_split(list(range(10)), "val", 0.2, seed=0) == [4, 6]
    assert holdout_split(list(range(10)), "pretrain", 0.2) == list(range(10))
