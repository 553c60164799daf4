"""The demo harness every domain's demo uses: the output folder it owns, the sample data it reads,
the loss trend it reports, and the probe of the pretrained encoder against random init.

Sample data: ``$DOMAINFM_DATA`` when set, else ``../shared/data`` beside the repository, else
``../shared/data`` from the working directory.

Example:
    >>> import os, tempfile
    >>> os.environ["DOMAINFM_DATA"] = tempfile.mkdtemp()
    >>> sample_data("medical", "pneumoniamnist.npz") is None
    True
    >>> del os.environ["DOMAINFM_DATA"]
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import warnings
from pathlib import Path

from domainfm.domain import DomainExample
from domainfm.errors import ConfigError
from domainfm.eval.embeddings import embed_dataset
from domainfm.eval.encoders import random_like
from domainfm.eval.protocols import knn_probe, linear_probe
from domainfm.model import load
from domainfm.pipelines import finetune, pretrain
from domainfm.registry import get_domain

DEMO_MARKER = ".domainfm-demo"
REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_data_roots() -> list[Path]:
    """Where sample data is looked for, in order."""
    roots = [Path(os.environ["DOMAINFM_DATA"])] if os.environ.get("DOMAINFM_DATA") else []
    return roots + [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def sample_data(*parts: str) -> Path | None:
    """The first existing ``<root>/<parts...>`` of :func:`sample_data_roots`, resolved; ``None`` if absent."""
    if os.environ.get("DOMAINFM_DATA"):
        candidate = Path(os.environ["DOMAINFM_DATA"]).joinpath(*parts)
        return candidate.resolve() if candidate.exists() else None
    for root in sample_data_roots():
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate.resolve()
    return None


def prepare_demo_dir(out: str | Path, domain: str) -> Path:
    """Own ``out`` for a demo: a folder left by an earlier demo is replaced; any other non-empty folder
    is refused, so a demo never deletes a user's files. The marker is written first."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            raise ConfigError(f"{out} is not empty and was not written by a demo; choose another output folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(f"{domain}\n")
    return out


def run_demo(domain: str = "synthetic", out: str | Path = "demo_out", quick: bool = False) -> dict:
    """Run a domain's end-to-end demo (pretrain, probe/fine-tune, figures) and return the figures."""
    plugin = get_domain(domain)
    return plugin.demo(prepare_demo_dir(out, domain), quick=quick)


def example_checkpoint(domain: str, folder: str | Path, task: str | None = None) -> tuple[Path, DomainExample]:
    """A tiny checkpoint on a domain's example files (:meth:`Domain.example`), for examples and tests:
    the example recipe with one encoder block, pretrained quietly, then fine-tuned for ``task`` (the
    example's own fine-tuning overrides) when one is given. Returns ``(checkpoint, example)``.

    Example:
        >>> import tempfile
        >>> ckpt, example = example_checkpoint("synthetic", tempfile.mkdtemp())
        >>> ckpt.name, example.config["model"]["depth"]
        ('ckpt-0000002', 1)
    """
    folder = Path(folder)
    example = get_domain(domain).example(folder)
    example.config["model"]["depth"] = 1
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ckpt = pretrain(example.config)
        if task is not None:
            ckpt = finetune(
                ckpt,
                task=task,
                out=folder / f"finetune-{task}",
                overrides=example.finetune_overrides,
                **example.finetune_kwargs,
            )
    return ckpt, example


def loss_trend(run_dir: str | Path, metric: str = "loss") -> tuple[float, float]:
    """First and last logged value of ``metric`` in a run's ``metrics.csv``."""
    values = []
    with open(Path(run_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["metric"] == metric:
                values.append(float(row["value"]))
    return (values[0], values[-1]) if values else (float("nan"), float("nan"))


def probe_vs_random(checkpoint, train_set, test_set, batch_size: int = 64, k: int = 20) -> dict[str, float]:
    """Linear-probe and kNN accuracy on held-out samples: the pretrained encoder vs the same
    architecture at random init (both pooled the same way)."""
    model = load(checkpoint)
    figures: dict[str, float] = {}
    for name, m in (("pretrained", model), ("random_init", random_like(model, model.card))):
        (xtr, ytr), (xte, yte) = embed_dataset(m, train_set, batch_size), embed_dataset(m, test_set, batch_size)
        n_cls = int(max(ytr.max(), yte.max()) + 1)
        lin = linear_probe(xtr, ytr, xte, num_classes=n_cls).argmax(1)
        knn = knn_probe(xtr, ytr, xte, k=k, num_classes=n_cls).argmax(1)
        figures[f"linear_probe_acc_{name}"] = float((lin == yte).mean())
        figures[f"knn_acc_{name}"] = float((knn == yte).mean())
    return figures
