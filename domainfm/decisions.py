"""Defaults derived from the data are printed once (stderr) and recorded in the card.

Example:
    >>> decide("crop", "3D crop 96x96x96 voxels", quiet=True)
    '3D crop 96x96x96 voxels'
"""

from __future__ import annotations

import sys

_PRINTED: set[tuple[str, str]] = set()


def decide(key: str, text: str, quiet: bool = False) -> str:
    """Print a data-derived decision once per process (``domainfm: <text>`` on stderr); return it."""
    if not quiet and (key, text) not in _PRINTED:
        _PRINTED.add((key, text))
        print(f"domainfm: {text}", file=sys.stderr)
    return text
