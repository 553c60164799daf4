"""Small mechanisms every layer uses: device lookup, list-option parsing and how a CRS is named.

Nothing here imports the kit beyond :mod:`domainfm.errors`.

Example:
    >>> parse_list("B02, B03,B04"), parse_list([0.5, 1]), parse_list("1,2", float)
    (['B02', 'B03', 'B04'], [0.5, 1], [1.0, 2.0])
    >>> pick_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from domainfm.errors import ConfigError


def pick_device(name: str = "auto", local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``auto`` -> the local CUDA device when present, else CPU; a bad or absent device is a ConfigError."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key} {name!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {name!r} but no CUDA GPU is available here; use auto or cpu")
    return device


def parse_list(value: Any, item: Callable[[Any], Any] | None = None) -> list:
    """A list option given as a list, a scalar, or a comma-separated string (``"a,b"``; blanks dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        values: list = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    return [item(v) for v in values] if item else values


_WKT_EPSG = re.compile(r'(?:AUTHORITY|ID)\[\s*"EPSG"\s*,\s*"?(\d+)"?\s*\]\s*\]\s*$')


def crs_text(crs: Any, short: bool = True) -> str | None:
    """How a CRS is shown and recorded: ``EPSG:n`` when it has an EPSG code (a rasterio/pyproj CRS, an ``EPSG:n``
    string or a WKT that names one), else its text (shortened to 60 characters when ``short``); ``None`` stays
    ``None``.

    Example:
        >>> crs_text("EPSG:32633"), crs_text(None)
        ('EPSG:32633', None)
        >>> crs_text('PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84"],AUTHORITY["EPSG","32633"]]')
        'EPSG:32633'
        >>> crs_text('PROJCRS["WGS 84 / UTM zone 33N",BASEGEOGCRS["WGS 84"],ID["EPSG",32633]]')
        'EPSG:32633'
    """
    if crs is None:
        return None
    to_epsg = getattr(crs, "to_epsg", None)
    if callable(to_epsg):
        try:
            code = to_epsg()
        except Exception:  # a CRS object that cannot say: shown as its text
            code = None
        if code:
            return f"EPSG:{code}"
    text = str(crs)
    code = _WKT_EPSG.search(text)  # the CRS's own authority closes a WKT (WKT1 AUTHORITY, WKT2 ID)
    if code and text.lstrip()[:1].isalpha():
        return f"EPSG:{code.group(1)}"
    return text if len(text) <= 60 or not short else text[:57] + "..."
