"""Evaluation and adaptation: frozen-feature probes, fine-tuning, label fractions, honest intervals.

Public surface:
- :func:`evaluate` (also ``domainfm.evaluate`` / ``domainfm evaluate``): pretrained vs random-init
  encoder at several label fractions and seeds, with report.json / report.md / plots.
- Protocols over numpy embeddings: :func:`linear_probe`, :func:`knn_probe`, :func:`fewshot_probe`.
- :func:`finetune_classifier` (full fine-tuning with layer-wise LR decay, or LoRA).
- Metrics: :func:`classification_metrics`, :func:`segmentation_metrics`, :func:`bootstrap_ci`.
- :class:`OnlineKNNProbe`: ``probe(step, encoder) -> dict`` for the pretraining engine.

Example:
    >>> import numpy as np
    >>> y = np.repeat([0, 1], 10); x = np.eye(2)[y] + 0.01
    >>> classification_metrics(y, knn_probe(x, y, x, k=3))["accuracy"]
    1.0
"""

from domainfm.eval.command import add_evaluate_arguments, evaluate_from_args, run_evaluate_from_args
from domainfm.eval.embeddings import EmbeddingCache, embed_dataset
from domainfm.eval.evaluate import evaluate
from domainfm.eval.finetune import finetune_classifier
from domainfm.eval.metrics import bootstrap_ci, classification_metrics, pixel_accuracy, segmentation_metrics
from domainfm.eval.online import OnlineKNNProbe
from domainfm.eval.protocols import fewshot_probe, knn_probe, leave_one_out_probe, linear_probe, prototype_probe
from domainfm.eval.report import EvalResult, write_report
from domainfm.eval.splits import (
    as_blocks,
    check_labels,
    check_pair,
    checkerboard_blocks,
    stratified_fraction,
    stratified_split,
)

__all__ = [
    "evaluate",
    "add_evaluate_arguments",
    "evaluate_from_args",
    "run_evaluate_from_args",
    "EmbeddingCache",
    "embed_dataset",
    "finetune_classifier",
    "bootstrap_ci",
    "classification_metrics",
    "segmentation_metrics",
    "pixel_accuracy",
    "OnlineKNNProbe",
    "fewshot_probe",
    "knn_probe",
    "linear_probe",
    "leave_one_out_probe",
    "prototype_probe",
    "EvalResult",
    "write_report",
    "check_labels",
    "check_pair",
    "stratified_fraction",
    "stratified_split",
    "checkerboard_blocks",
    "as_blocks",
]
