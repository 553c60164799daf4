"""A run folder for a notebook cell that is run again: :func:`prepare_run_dir` (``exist_ok`` in Python words)
and :func:`run_summary` (the one line a finished run prints).

Example:
    >>> import tempfile
    >>> prepare_run_dir(tempfile.mkdtemp(), "error", resume=True)   # nothing to resume: starts fresh
    False
    >>> prepare_run_dir(tempfile.mkdtemp(), "sometimes", resume=False)
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: exist_ok must be "error", "resume" or "overwrite" (...), got 'sometimes'
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

from domainfm.errors import ConfigError
from domainfm.io_safety import EXIST_OK_WORDS
from domainfm.train.checkpoint import list_checkpoints

log = logging.getLogger("domainfm")
EXIST_OK = ("error", "resume", "overwrite")
# what a run writes at the top of its folder besides checkpoints (removed by exist_ok="overwrite")
RUN_FILES = ("latest.json", "metrics.csv", "config.yaml", "reconstruction.png", "val_metrics.json")


def prepare_run_dir(
    run_dir: str | Path, exist_ok: str | bool = "error", resume: bool = False, main: bool = True
) -> bool:
    """Decide what an ``out`` folder that may hold checkpoints means; return whether to resume.

    ``exist_ok="error"`` refuses a folder holding checkpoints (nothing is touched), ``"resume"`` (or
    ``resume=True``) continues its latest checkpoint, ``"overwrite"`` removes the run's checkpoints and
    logs (nothing else in the folder) and starts again. Resuming a folder without checkpoints starts fresh.
    ``False`` and ``True`` are ``"error"`` and ``"overwrite"``, as for every writer
    (:func:`domainfm.io_safety.check_exists`). Only the ``main`` process (rank 0) removes anything.
    """
    exist_ok = EXIST_OK_WORDS.get(exist_ok, exist_ok) if isinstance(exist_ok, (bool, str)) else exist_ok
    if exist_ok not in EXIST_OK:
        raise ConfigError(
            f'exist_ok must be "error", "resume" or "overwrite" (False, True: "error", "overwrite"), got {exist_ok!r}'
        )
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if resume or exist_ok == "resume":
        if not ckpts:
            log.info("%s holds no checkpoint yet: starting a fresh run there", run_dir)
        return bool(ckpts)
    if not ckpts:
        return False
    if exist_ok == "error":
        raise ConfigError(
            f'{run_dir} already holds checkpoints (last: {ckpts[-1].name}); pass exist_ok="resume" to '
            'continue that run, exist_ok="overwrite" to start it again, or another out '
            "(nothing was overwritten)"
        )
    if not main:
        return False
    for ckpt in ckpts:
        shutil.rmtree(ckpt)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "tensorboard").is_dir():
        shutil.rmtree(run_dir / "tensorboard")
    log.warning('exist_ok="overwrite": removed %d checkpoint(s) of %s', len(ckpts), run_dir)
    return False


def run_summary(kind: str, run_dir: str | Path, ckpt: str | Path, seconds: float, since_step: int = 0) -> str:
    """One line about a finished run: steps, loss first -> last (from ``metrics.csv``), time, checkpoint.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "metrics.csv").write_text("step,metric,value\\n1,loss,2.5\\n1,lr,0.1\\n8,loss,0.75\\n")
        >>> run_summary("pretrain", d, d / "ckpt-0000008", 3.21)  # doctest: +ELLIPSIS
        'pretrain: 8 steps, loss 2.5 -> 0.75, 3.2 s, checkpoint .../ckpt-0000008'
        >>> _ = (d / "metrics.csv").write_text("step,metric,value\\n4,loss,1.279\\n")
        >>> run_summary("pretrain", d, d / "ckpt-0000004", 1.0)  # doctest: +ELLIPSIS
        'pretrain: 4 steps, loss 1.279 (only one value logged), 1.0 s, checkpoint .../ckpt-0000004'
    """
    losses: dict[int, float] = {}  # step -> the value logged last for it (a resumed run may log a step again)
    path = Path(run_dir) / "metrics.csv"
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) == 3 and row[1] == "loss" and row[0].isdigit() and int(row[0]) > since_step:
                    losses[int(row[0])] = float(row[2])
    steps = sorted(losses)
    if len(steps) > 1:
        loss = f"loss {losses[steps[0]]:.4g} -> {losses[steps[-1]]:.4g}"
    elif steps:
        loss = f"loss {losses[steps[0]]:.4g} (only one value logged)"
    else:
        loss = "no loss logged"
    return f"{kind}: {steps[-1] if steps else '?'} steps, {loss}, {seconds:.1f} s, checkpoint {ckpt}"
