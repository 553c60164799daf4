"""How far a maintainer walks to follow the pretrain config: the kit's functions that receive the ``Config``
of a tiny synthetic pretraining run, in the order they are first called.

A stop is a function (in ``domainfm/`` or ``domains/``) first called with the config or one of its sections
(``cfg.train``, ``cfg.objective``...) as an argument; a return
is a stop in a file already visited before the previous stop's file. Prints stops, files, returns and the
files visited most often.

    python scripts/config_walk.py
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import domainfm
from domainfm.config import Config

ROOTS = [str(Path(domainfm.__file__).resolve().parent), str(Path(domainfm.__file__).resolve().parents[1] / "domains")]


def _is_config(value) -> bool:
    """The config or one of its sections (``cfg.train``, ``cfg.objective``...)."""
    return isinstance(value, Config) or type(value).__module__.startswith("domainfm.config")


def walk() -> list[tuple[str, str]]:
    """``(file, function)`` of each stop, in order of first call."""
    stops: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def tracer(frame, event, arg):
        if event != "call":
            return None
        file = frame.f_code.co_filename
        if not file.startswith(tuple(ROOTS)):
            return None
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        key = (file, code.co_qualname)
        if key not in seen and any(_is_config(a) for a in args):
            seen.add(key)
            stops.append(key)
        return None

    tiny = {
        "domain": "synthetic",
        "out": str(Path(tempfile.mkdtemp()) / "run"),
        "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        "train": {"steps": 2, "batch_size": 8, "progress": False, "tensorboard": False},
    }
    sys.settrace(tracer)
    try:
        domainfm.pretrain(tiny, exist_ok="overwrite")
    finally:
        sys.settrace(None)
    return stops


def main() -> int:
    stops = walk()
    files = [f for f, _ in stops]
    returns = sum(1 for i, f in enumerate(files) if i and f != files[i - 1] and f in files[: i - 1])
    root = Path(ROOTS[0]).parent
    print(f"stops {len(stops)}, files {len(set(files))}, returns to a file already visited {returns}")
    for f, n in Counter(files).most_common(5):
        print(f"  {n:3d}  {Path(f).relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
