"""What a pretrained encoder is compared against: the supervised baseline's runs, and the paired gains.

:class:`SupervisedRuns` trains, once per label fraction and seed, an ordinary network from scratch
(:mod:`domainfm.eval.supervised`: a ResNet-18 for classification, a MONAI U-Net for segmentation) on
exactly the labelled items that fraction's probes see, and scores the same test items. Its scores are
the ``supervised`` baseline of :func:`domainfm.evaluate`; its records carry the encoder name
``supervised`` and the protocol ``supervised``.

:func:`paired_gains` gives, for each metric, the gain of an encoder over each baseline with a paired
bootstrap interval over test items and seeds (the ``vs`` field of a record).

Example:
    >>> import numpy as np
    >>> y = np.array([0, 1] * 20)
    >>> good, weak = [np.eye(2)[y] * 0.8 + 0.1], [np.full((40, 2), 0.5)]
    >>> vs = paired_gains(y, good, {"random": weak}, n_boot=50)
    >>> vs["accuracy"]["random"]["gain"] > 0.4
    True
"""

from __future__ import annotations

import inspect
import json
import time

import numpy as np

from domainfm.errors import ConfigError
from domainfm.eval.embeddings import EmbeddingCache, cache_key
from domainfm.eval.finetune import dataset_tensors
from domainfm.eval.metrics import bootstrap_ci
from domainfm.eval.supervised import supervised_classifier, supervised_segmenter


def paired_gains(y_true, probas: list, baselines: dict[str, list], n_boot: int, seed: int = 1234, metric_fn=None):
    """``{metric: {baseline: {"gain", "low", "high"}}}``: the mean gain of ``probas`` over each baseline's
    scores, with a paired 95% bootstrap interval (the same test resamples and seeds for both sides)."""
    out: dict[str, dict] = {}
    for name, base in baselines.items():
        kw = {"num_classes": np.asarray(probas[0]).shape[1]} if metric_fn is None else {"metric_fn": metric_fn}
        stats = bootstrap_ci(y_true, probas, n_boot=n_boot, seed=seed, baseline_probas=base, **kw)
        for metric, s in stats.items():
            out.setdefault(metric, {})[name] = {"gain": s["gain"], "low": s["gain_low"], "high": s["gain_high"]}
    return out


def _checked(kwargs: dict) -> dict:
    """The trainer's keyword options; an unknown one is a one-line ConfigError listing those it takes."""
    params = inspect.signature(supervised_classifier).parameters.values()
    known = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(
            f"supervised_kwargs: unknown key {unknown[0]} (the supervised baseline takes {', '.join(known)})"
        )
    return dict(kwargs)


class SupervisedRuns:
    """The supervised baseline of one evaluation: trained lazily, once per (fraction, seed), and cached.

    Args:
        train_ds, test_ds: the evaluation's labelled datasets (the items the probes see, same order).
        task: ``classification`` or ``segmentation``. source: the data's name, for errors.
        max_train, max_test: the evaluation's caps (the same items as the probes).
        kwargs: passed to the trainer (``max_epochs``, ``patience``...).
        cache, data_id: scores are kept in the evaluation's cache under the data's identity, the labelled
            items and the trainer's settings, so a second evaluation of the same data (another checkpoint)
            reuses them; the compute recorded is the original training's.
    """

    def __init__(
        self,
        train_ds,
        test_ds,
        task: str,
        source: str,
        max_train=None,
        max_test=None,
        kwargs=None,
        *,
        cache: EmbeddingCache | None = None,
        data_id: dict | None = None,
    ):
        self.task, self.source = task, source
        self._datasets, self._caps = (train_ds, test_ds), (max_train, max_test)
        self._tensors = None
        self.kwargs = _checked(kwargs or {})
        self.cache, self.data_id = cache or EmbeddingCache(None), data_id or {}
        self.runs: dict[tuple[float, int], tuple[np.ndarray, dict]] = {}
        self.elapsed = 0.0  # wall seconds spent here (training, or reading the cache)

    def _data(self):
        if self._tensors is None:
            target = "mask" if self.task == "segmentation" else "label"
            train_ds, test_ds = self._datasets
            xtr, ytr, _ = dataset_tensors(train_ds, self.source, max_items=self._caps[0], target=target)
            xte, yte, _ = dataset_tensors(test_ds, self.source, max_items=self._caps[1], target=target)
            self._tensors = (xtr, ytr, xte, yte)
        return self._tensors

    def test_targets(self) -> np.ndarray:
        """The test labels (classification) or label maps (segmentation) the scores are compared with."""
        yte = self._data()[3]
        return yte.numpy() if hasattr(yte, "numpy") else np.asarray(yte)

    def fractions(self) -> list[float]:
        """The label fractions trained so far, ascending."""
        return sorted({k[0] for k in self.runs})

    def scores(self, fraction: float, seed: int, idx: np.ndarray, num_classes: int) -> np.ndarray:
        """Test scores (classification) or label maps (segmentation) of the network trained on ``idx``."""
        key = (float(fraction), int(seed))
        if key not in self.runs:
            stored = cache_key(
                supervised=self.task,
                kwargs=self.kwargs,
                data=self.data_id,
                seed=int(seed),
                items=np.asarray(idx).tolist(),
            )
            started = time.perf_counter()
            scores, info = self.cache.get_or_compute(
                stored, lambda: self._train(seed, idx, num_classes), meta={"encoder": "supervised"}
            )
            self.elapsed += time.perf_counter() - started
            self.runs[key] = (scores, json.loads(str(info)))
        return self.runs[key][0]

    def _train(self, seed: int, idx: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        xtr, ytr, xte, _ = self._data()
        train = supervised_segmenter if self.task == "segmentation" else supervised_classifier
        scores, info = train(xtr[idx], ytr[idx], xte, num_classes, seed=seed, **self.kwargs)  # info has its seconds
        return scores, np.asarray(json.dumps(info, default=float))

    def probas(self, fraction: float) -> list[np.ndarray]:
        """The scores of every seed run at ``fraction``, in seed order."""
        return [self.runs[k][0] for k in sorted(k for k in self.runs if k[0] == float(fraction))]

    def seconds(self) -> float:
        """Wall seconds this process spent on the baseline so far (its recorded cost is :meth:`compute`)."""
        return self.elapsed

    def compute(self) -> dict:
        """Training time and size of the baseline networks (for ``report.json``)."""
        infos = [info for _, info in self.runs.values()]
        if not infos:
            return {}
        return {
            "arch": infos[0].get("arch"),
            "params": infos[0].get("params"),
            "runs": len(infos),
            "seconds": round(float(sum(i.get("seconds", 0.0) for i in infos)), 2),
            "cpu_seconds": round(float(sum(i.get("cpu_seconds", 0.0) for i in infos)), 2),
            "mean_epochs": round(float(np.mean([i.get("epochs", 0) for i in infos])), 1),
        }
