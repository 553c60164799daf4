"""Applying a trained checkpoint (or an exported model, or a model in hand): ``embed``, ``predict``,
``evaluate`` against a random-init baseline, what a masked-image-modelling checkpoint ``reconstruction`` rebuilds,
and the validation scores of a task model (:func:`evaluate_task`).

Example:
    >>> import tempfile
    >>> from domainfm.pipelines import pretrain
    >>> ckpt = pretrain({"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
    >>> model = resolve_model(ckpt)   # a checkpoint is loaded; a loaded model is taken as is
    >>> resolve_model(model) is model, model.card.stage
    (True, 'pretrain')
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from domainfm.data.adapters import SCHEMA, is_in_memory
from domainfm.data.sample import collate_samples
from domainfm.domain import operation_options
from domainfm.errors import ConfigError, DataError, UnsupportedError
from domainfm.eval import evaluate as _evaluate
from domainfm.eval.metrics import segmentation_scores
from domainfm.exported import ExportedModel, is_exported, load_exported
from domainfm.inference import batches_by_band_set, embed_samples
from domainfm.io_safety import check_embed_suffix, check_exists, check_regular, exist_ok_policy, write_arrays_atomic
from domainfm.model import FoundationModel, load
from domainfm.outputs import embeddings_frame, read_embeddings, read_prediction
from domainfm.runconfig import config_from_card
from domainfm.rundata import dataset_for
from domainfm.ssl import build_objective
from domainfm.train.checkpoint import load_module_state, load_tensors, resolve_checkpoint
from domainfm.viz import reconstruction_figure, save_reconstruction_png


@torch.no_grad()
def reconstruction(checkpoint, data=None, n: int = 4, *, labels=None, sampler=None, path: str | Path | None = None):
    """What a masked-image-modelling checkpoint rebuilds of ``n`` samples, as a matplotlib Figure (masked |
    reconstruction | original); written to ``path`` only when given. ``data``: a path or data in memory
    (default: the pretraining data named in the card).

    Example:
        >>> # domainfm.reconstruction("runs/quickstart")   # a Figure in the notebook
    """
    ckpt = resolve_checkpoint(checkpoint)
    model = load(ckpt)
    cfg = config_from_card(model.card, data=None if is_in_memory(data) else data, check_paths=data is not None)
    objective = build_objective(model.encoder, cfg.objective)
    if not hasattr(objective, "reconstruct"):
        raise UnsupportedError(f"{ckpt}: objective {cfg.objective.name!r} does not reconstruct images (mae does)")
    load_module_state(objective, load_tensors(ckpt), strict=False)
    dataset = dataset_for(model.domain, cfg, "pretrain", data, labels, sampler, model.card)
    masked, recon, original = _reconstruct(objective, dataset, n)
    return reconstruction_figure(masked, recon, original, max_rows=n, path=path)


@torch.no_grad()
def _reconstruct(objective, dataset, n: int = 4):
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collate_samples(samples)
    device = next(objective.parameters()).device
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    was_training = objective.training
    objective.eval()
    with torch.random.fork_rng(devices=[]):  # a fixed mask for the picture, without touching the caller's RNG
        torch.manual_seed(0)
        masked, recon, original = objective.reconstruct(batch)
    objective.train(was_training)
    return masked, recon, original


def save_reconstruction(objective, dataset, path: Path, n: int = 4) -> Path | None:
    """What ``objective`` rebuilds of the first ``n`` samples of ``dataset``, written as a PNG to ``path``."""
    return save_reconstruction_png(*_reconstruct(objective, dataset, n), path)


@torch.no_grad()
def evaluate_task(
    model: nn.Module, dataset, task: str, num_classes: int, batch_size: int = 16, background: bool = True
) -> dict[str, float]:
    """Accuracy / balanced accuracy (classification) or Dice / IoU (segmentation: over the classes present,
    class 0 left out when ``background``, i.e. ``finetune.background``; mask pixels < 0 are unlabelled and
    not counted; :func:`domainfm.eval.metrics.segmentation_scores`)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, targets = [], []
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for batch in batches_by_band_set(dataset, batch_size):
        logits = model.logits(batch["image"].to(device), wavelengths=batch.get("wavelengths")).float().cpu()
        if task == "segmentation":
            y = batch["mask"].long()
            y = y[:, 0] if y.ndim == logits.ndim else y
            valid = y >= 0
            pairs = y[valid] * num_classes + logits.argmax(1)[valid]
            confusion += np.bincount(pairs.numpy(), minlength=num_classes * num_classes).reshape(confusion.shape)
        else:
            preds.append(logits)
            targets.append(batch["label"])
    model.train(was)
    if task == "segmentation":
        scores = segmentation_scores(confusion, ignore_background=background)
        if not np.isfinite(scores["dice"]):  # no foreground anywhere: the background's own scores
            scores = segmentation_scores(confusion, ignore_background=False)
        return scores
    logits, y = torch.cat(preds), torch.cat(targets)
    if task == "multilabel":
        return {"accuracy": float(((logits > 0).float() == y.float()).float().mean())}
    p = logits.argmax(1)
    y = y.long().reshape(-1)
    recalls = [float((p[y == c] == c).float().mean()) for c in range(num_classes) if (y == c).any()]
    return {"accuracy": float((p == y).float().mean()), "balanced_accuracy": float(np.mean(recalls))}


def resolve_model(model_or_path) -> FoundationModel | ExportedModel:
    """A loaded model as is; an exported file (``.onnx``/``.pt2``) through its runtime; a checkpoint loaded."""
    if isinstance(model_or_path, (FoundationModel, ExportedModel)):
        return model_or_path
    return load_exported(model_or_path) if is_exported(model_or_path) else load(model_or_path)


def embed(
    checkpoint,
    data,
    out: str | Path | None = None,
    *,
    labels=None,
    sampler=None,
    exist_ok: bool | str = False,
    **options,
):
    """Embed every file/sample of ``data`` with a checkpoint.

    ``data`` is a path (the domain reads it) or data held in memory (see :func:`pretrain`; for a
    checkpoint of another domain than ``arrays`` its samples must be model-ready). With ``out`` the
    embeddings are written (the domain decides the layout) and the path is returned; without it they are
    returned: a pandas DataFrame (``id``, ``label``/``split``/coordinates when known, ``z0..``) when pandas
    is installed, else a dict of arrays. ``options`` are the domain's ``EmbedOptions`` (e.g.
    ``batch_size``; ``mpp`` for slides that lack it). An existing ``out`` is refused unless ``exist_ok=True``
    (replaced atomically; ``"resume"`` keeps the finished files of a folder of slide features); see
    :func:`domainfm.io_safety.check_exists`.
    """
    if data is None:
        raise DataError(None, f"data= is None: embed needs the data to embed; {SCHEMA}")
    model = resolve_model(checkpoint)
    domain = model.domain
    opts = operation_options(domain.EmbedOptions, options, "embed")
    inputs = [getattr(model, "path", None), None if is_in_memory(data) else data]
    check_regular(inputs[1], "data")  # a FIFO would make the reader wait forever
    if out is not None:  # before any work; only a folder (of slide features) can be resumed
        check_embed_suffix(out)
        check_exists(out, exist_ok, inputs, resumable=Path(out).is_dir())
    if is_in_memory(data):
        cfg = config_from_card(model.card, check_paths=False)
        arrays = embed_samples(
            model,
            dataset_for(domain, cfg, "embed", data, labels, sampler, model.card),
            batch_size=opts.get("batch_size") or 32,
        )
        return write_arrays_atomic(Path(out), arrays) if out is not None else embeddings_frame(arrays)
    if out is not None:
        with exist_ok_policy(exist_ok, inputs):  # the same rule for the files the domain writes
            return domain.embed(model, data, out, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            written = domain.embed(model, data, Path(tmp) / "embeddings.npz", **opts)
        except ConfigError:  # a domain that writes one file per item (slides) takes a folder
            written = domain.embed(model, data, Path(tmp) / "embeddings", **opts)
        return embeddings_frame(read_embeddings(written))


def predict(checkpoint, input, out: str | Path | None = None, *, exist_ok: bool = False, **options):
    """Predict on a whole file (volume, scene, slide) in the domain's format.

    With ``out`` the prediction is written and its path returned; without it a
    :class:`~domainfm.outputs.Prediction` is returned (the array and its geometry: affine, CRS +
    transform, or the tile coordinates) and nothing is left on disk. ``options`` are the domain's
    ``PredictOptions`` (e.g. ``save_probabilities`` for medical scans). An existing output is refused
    unless ``exist_ok=True`` (replaced atomically); see :func:`domainfm.io_safety.check_exists`.

    A model trained on data held in memory (the ``arrays`` domain) also takes objects: an array or tensor
    shaped like its training data (label maps or class probabilities back), and, when its card records a
    file geometry, that domain's files and objects (a NIfTI or MONAI ``MetaTensor``, a GeoTIFF or TorchGeo
    sample dict, a slide); see :meth:`domainfm.arrays.ArraysDomain.predict`.
    """
    model = resolve_model(checkpoint)
    domain = model.domain
    domain.check_offered("predict")  # before its options: a domain without predict says so, and what to call
    opts = operation_options(domain.PredictOptions, options, "predict")
    if out is not None:
        with exist_ok_policy(exist_ok, [getattr(model, "path", None)]):
            return domain.predict(model, input, out, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        name = "prediction" if is_in_memory(input) else Path(input).name  # the domain adds its suffix
        written = domain.predict(model, input, Path(tmp) / name, **opts)
        return read_prediction(written)


def evaluate(
    checkpoint,
    data=None,
    protocol: str = "linear",
    *,
    labels=None,
    test_data=None,
    test_labels=None,
    sampler=None,
    **kwargs,
):
    """Compare a checkpoint against a random-init baseline; see :func:`domainfm.eval.evaluate`.

    ``data`` is a labelled path, or data held in memory (with ``labels``) as the training pool plus
    ``test_data`` (with ``test_labels``) as the test set; both go through the checkpoint's preprocessing
    record (e.g. the ``arrays`` domain's normalisation).

    Example:
        >>> # domainfm.evaluate(ckpt, x_train, labels=y_train, test_data=x_test, test_labels=y_test, protocol="knn")
    """
    if is_in_memory(data):
        if test_data is None:
            raise ConfigError("evaluate with data held in memory needs test_data= (and test_labels=) as the test set")
        model = resolve_model(checkpoint)
        domain = model.domain
        cfg = config_from_card(model.card, check_paths=False)
        train_set = dataset_for(domain, cfg, "train", data, labels, sampler, model.card)
        test_set = dataset_for(domain, cfg, "test", test_data, test_labels, sampler, model.card)
        kwargs["datasets"] = (train_set, test_set)
        data = None
    return _evaluate(checkpoint, data=data, protocol=protocol, **kwargs)
