"""The training pipelines behind the notebook and CLI surface: ``pretrain`` (and the step count a CPU budget
buys, :func:`steps_for_cpu_budget`) and ``finetune``. Applying a checkpoint (``embed``, ``predict``,
``evaluate``, ``reconstruction``) is :mod:`domainfm.apply`, and what a run is built from (datasets, encoder,
recipe, run folder) :mod:`domainfm.rundata`; both are importable from here as before.

Example:
    >>> import tempfile, torch
    >>> out = tempfile.mkdtemp()
    >>> ckpt = pretrain({"domain": "synthetic", "out": out, "data": {"img_size": 32},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
    >>> load(ckpt).embed(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from domainfm.apply import embed, evaluate, evaluate_task, predict, reconstruction, save_reconstruction
from domainfm.card import Card, build_card
from domainfm.classmap import map_labels, resolve_classes
from domainfm.config import Config, read_config_file
from domainfm.contract import dataset_attribute
from domainfm.data.adapters import is_in_memory
from domainfm.errors import ConfigError, DataError
from domainfm.heads.task import TaskModel
from domainfm.io_safety import write_json_atomic
from domainfm.model import FoundationModel, load
from domainfm.models.lora import apply_lora
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card, load_config
from domainfm.rundata import (
    check_resume_matches,
    data_updates,
    dataset_for,
    encoder_for,
    is_main,
    online_probe,
    recipe_dataset,
    run_recipe,
    settle,
    start_run_dir,
    stored_data,
)
from domainfm.ssl import build_objective, check_objective, pretrain_views
from domainfm.train.checkpoint import resolve_checkpoint
from domainfm.train.engine import train
from domainfm.train.init import init_from_config
from domainfm.train.rundir import prepare_run_dir, run_summary

__all__ = [
    "pretrain",
    "finetune",
    "steps_for_cpu_budget",
    "embed",
    "predict",
    "evaluate",
    "evaluate_task",
    "reconstruction",
    "load",
]

log = logging.getLogger("domainfm")


def pretrain(
    config: str | Path | dict | Config,
    overrides: Iterable[str] = (),
    resume: bool = False,
    callbacks: Iterable[Callable] = (),
    *,
    data=None,
    labels=None,
    sampler=None,
    exist_ok: str = "error",
) -> Path:
    """Pretrain an encoder with self-supervision; return the last checkpoint folder.

    ``config`` is a YAML path, a dict or a :class:`~domainfm.config.Config`; ``overrides`` are
    ``key=value`` strings. ``data`` replaces ``data.path``: a path, or data held in memory (an array
    or tensor, a Dataset of tensors / ``(x, y)`` tuples / sample dicts, a MONAI or TorchGeo dataset
    with its ``sampler``; see :mod:`domainfm.data.adapters`), which trains under the ``arrays``
    domain. ``exist_ok`` says what an ``out`` folder holding checkpoints means: ``"error"``,
    ``"resume"`` (continue it) or ``"overwrite"`` (start again); ``resume=True`` is
    ``exist_ok="resume"`` (on an empty folder both start fresh).

    Example:
        >>> import tempfile
        >>> ckpt = pretrain({"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
        ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}},
        ...     overrides=["objective.mask_ratio=0.5"])
        >>> ckpt.name, load(ckpt).card["objective"]["mask_ratio"]
        ('ckpt-0000002', 0.5)
    """
    updates = data_updates(data)
    cfg = load_config(config, overrides=list(overrides), updates=updates)
    check_objective(cfg.objective, cfg.train.batch_size)
    domain = get_domain(cfg.domain)
    data = stored_data(cfg, data)
    settle(cfg, domain, "pretrain")
    in_memory = dataset_for(domain, cfg, "pretrain", data, labels, sampler) if is_in_memory(data) else None
    if in_memory is not None and len(in_memory) == 0:
        raise DataError("data", "no samples found for pretraining")
    recipe = run_recipe(cfg, domain, in_memory)
    dataset = in_memory if in_memory is not None else recipe_dataset(recipe)
    if dataset is None:
        dataset = dataset_for(domain, cfg, "pretrain")
    if len(dataset) == 0:
        raise DataError(cfg.data.path, "no samples found for pretraining")
    torch.manual_seed(cfg.train.seed)  # the same config gives the same initial weights
    encoder = encoder_for(cfg, domain, dataset)
    encoder, init_record = init_from_config(cfg, encoder)  # model.init: start from a checkpoint's encoder
    objective = build_objective(encoder, cfg.objective)
    card = build_card(
        cfg,
        domain,
        encoder,
        dataset,
        "pretrain",
        in_memory=is_in_memory(data),
        init=init_record,
        recipe=recipe.to_card(),
    )
    train_set = pretrain_views(dataset, domain, cfg)  # multi-crop, two views or resized crops, as the objective needs
    run_dir = Path(cfg.out)
    resume = prepare_run_dir(run_dir, exist_ok, resume, main=is_main())
    if resume:
        check_resume_matches(run_dir, cfg)
    cbs = list(callbacks)
    if cfg.train.probe_every:
        probe = online_probe(cfg, domain)
        if probe is not None:
            cbs.append(probe)
    start_run_dir(run_dir, cfg, resume)
    started = time.perf_counter()
    ckpt = train(
        objective, train_set, cfg.train, run_dir, card, resume=resume, num_workers=cfg.data.num_workers, callbacks=cbs
    )
    if is_main() and cfg.train.progress:
        print(run_summary("pretrain", run_dir, ckpt, time.perf_counter() - started))
    if is_main() and hasattr(objective, "reconstruct"):
        save_reconstruction(objective, dataset, run_dir / "reconstruction.png")
    return ckpt


#: step counts that are a proportion of ``train.steps`` (rescaled by :func:`steps_for_cpu_budget`)
SCHEDULE_KEYS = (
    ("train", "warmup_steps"),
    ("train", "log_every"),
    ("train", "ckpt_every"),
    ("train", "probe_every"),
    ("objective", "teacher_temp_warmup_steps"),
)


#: a step's CPU cost is trusted once the timed steps add up to this many CPU seconds, and to at least
#: ``NOISE_FACTOR`` times the resolution of ``time.process_time`` (:func:`steps_for_cpu_budget`)
MIN_MEASURED_CPU_S = 0.2
NOISE_FACTOR = 50
#: the longest probe run :func:`steps_for_cpu_budget` makes before it says it cannot measure
MAX_PROBE_STEPS = 640


def _cpu_now() -> float:
    """The CPU seconds this process has used (``time.process_time``; the tests give a fake clock here)."""
    return time.process_time()


def _timed_steps(base: dict, steps: int, folder: str, data) -> list[float]:
    """CPU seconds of each step but the first (which carries the one-off setup) of a ``steps``-step probe run
    of the config ``base`` in ``folder``."""
    marks: list[float] = []

    def mark(step: int, encoder) -> dict:
        marks.append(_cpu_now())
        return {}

    probe = json.loads(json.dumps(base))
    probe["out"] = folder
    probe["train"].update(steps=steps, ckpt_every=steps, log_every=steps, probe_every=0, progress=False)
    pretrain(probe, data=data, exist_ok="overwrite", callbacks=[mark])
    return [b - a for a, b in zip(marks, marks[1:])]


def _step_cost(base: dict, probe_steps: int, data) -> tuple[float, float]:
    """``(mean, fastest)`` CPU seconds of one step, from probe runs made longer until the timed steps add up
    to more than the timer's noise (:data:`MIN_MEASURED_CPU_S`); a one-line :class:`ConfigError` when even
    :data:`MAX_PROBE_STEPS` steps do not."""
    resolution = time.get_clock_info("process_time").resolution
    floor = max(NOISE_FACTOR * resolution, MIN_MEASURED_CPU_S)
    steps = max(1, int(probe_steps))
    with tempfile.TemporaryDirectory(prefix="domainfm-budget-") as tmp:
        while True:
            times = _timed_steps(base, steps + 1, os.path.join(tmp, "probe"), data)
            total = sum(times)
            if times and total >= floor:
                break
            if steps >= MAX_PROBE_STEPS:
                raise ConfigError(
                    f"steps_for_cpu_budget: cannot measure a step's CPU time: {len(times)} timed steps took "
                    f"{total:.3g} CPU s, under the {floor:.3g} s the timer needs (time.process_time resolution "
                    f"{resolution:g} s); give a larger model, batch or data, or time the run yourself"
                )
            grow = math.ceil(1.5 * steps * floor / total) if total > 0 else 4 * steps
            steps = min(MAX_PROBE_STEPS, max(2 * steps, grow))
    positive = [t for t in times if t > 0]
    mean = total / len(times)
    return mean, min(positive) if positive else mean


def steps_for_cpu_budget(config, cpu_seconds: float, probe_steps: int = 20, *, data=None) -> dict:
    """The pretraining config (a dict) whose ``train.steps`` cost ``cpu_seconds`` of CPU time on this machine.

    Comparing objectives fairly means the same compute, not the same step count: a ``dino`` step with
    multi-crop views costs several ``mae`` steps. The CPU seconds of each step are timed in a probe run of the
    same model, objective, data and batch (``probe_steps + 1`` steps in a temporary folder; the first step,
    which carries the one-off setup, is not counted). A probe whose timed steps add up to less than the
    timer's noise (:data:`MIN_MEASURED_CPU_S`, and 50x the resolution of ``time.process_time``) is run again
    longer; when even :data:`MAX_PROBE_STEPS` steps are too fast to time, a one-line :class:`ConfigError`
    says so. The steps returned are the budget over the mean step cost, never more than the budget allows
    at the fastest step seen (a budget below one step is refused). The probes and the returned config keep
    only the keys the user set, so the data-derived recipe (:mod:`domainfm.recipes`) resolves the real run
    for its own step count; step counts the user set (``warmup_steps``, ``log_every``, ``ckpt_every``,
    ``probe_every``, a dino teacher-temperature warmup) keep their proportions of the run.

    Example:
        >>> import tempfile
        >>> cfg = {"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
        ...        "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        ...        "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}}
        >>> budget = steps_for_cpu_budget(cfg, cpu_seconds=60, probe_steps=2)   # the steps depend on this machine
        >>> budget["train"]["steps"] >= 1, budget["model"]["depth"], "lr" in budget["train"]   # what the user set
        (True, 1, False)
    """
    if float(cpu_seconds) <= 0:
        raise ConfigError(f"cpu_seconds must be > 0, got {cpu_seconds}")
    loaded = load_config(config)
    base = loaded.explicit_dict()
    base.setdefault("train", {})
    base_steps = int(loaded.train.steps)
    mean, fastest = _step_cost(base, probe_steps, data)
    steps = min(int(float(cpu_seconds) / mean + 1e-9), int(float(cpu_seconds) / fastest + 1e-9))  # 1e-9: rounding
    if steps < 1:
        raise ConfigError(
            f"cpu_seconds={cpu_seconds} buys no step: one step costs {mean:.3g} CPU s here; give at least that"
        )
    out = json.loads(json.dumps(base))
    scale = steps / max(1, base_steps)
    for section, key in SCHEDULE_KEYS:
        value = out.get(section, {}).get(key)
        if isinstance(value, int) and value > 0:
            out[section][key] = max(1, min(steps, round(value * scale)))
    out["train"]["steps"] = steps
    return out


def finetune(
    checkpoint: str | Path,
    task: str | None = None,
    data: str | Path | None = None,
    config: str | Path | dict | None = None,
    overrides: Iterable[str] = (),
    resume: bool = False,
    out: str | Path | None = None,
    *,
    labels=None,
    sampler=None,
    val_data=None,
    val_labels=None,
    exist_ok: str = "error",
    **kwargs,
) -> Path:
    """Fine-tune a pretrained checkpoint for a task; return the fine-tuned checkpoint folder.

    The run starts from the pretraining config stored in the card; ``config`` (YAML or dict) and
    ``overrides`` change it. Tasks: ``classification``, ``multilabel``, ``segmentation`` (and what
    a domain adds, e.g. ``mil`` for pathology).

    ``data`` is a path or data held in memory with its ``labels`` (see :func:`pretrain`); ``val_data``
    / ``val_labels`` give a validation set in memory. ``exist_ok`` as in :func:`pretrain`.

    Example:
        >>> import tempfile
        >>> ckpt = pretrain({"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
        ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
        >>> tuned = finetune(ckpt, task="classification", out=tempfile.mkdtemp(), overrides=["train.steps=2"])
        validation: ...
        >>> load(tuned).card["classes"]
        ['disk', 'square', 'cross', 'ring']
    """
    memory = is_in_memory(data)
    if labels is not None and not memory:
        kwargs["labels"] = labels  # a domain task's own labels argument (e.g. the slide labels CSV of ``mil``)
        labels = None
    base_ckpt = resolve_checkpoint(checkpoint)
    card = Card.read(base_ckpt)
    cfg = _finetune_config(card, task, None if memory else data, config, overrides, out)
    domain = get_domain(cfg.domain)
    settle(cfg, domain, "finetune")
    run_dir = Path(cfg.out)
    resume = prepare_run_dir(run_dir, exist_ok, resume, main=is_main())
    if cfg.finetune.task in domain.custom_tasks:
        return domain.finetune_task(cfg, base_ckpt, resume=resume, **kwargs)
    if kwargs:
        raise ConfigError(
            f"finetune for task {cfg.finetune.task!r} does not take {', '.join(sorted(kwargs))} "
            f"(domain {cfg.domain!r} takes extra arguments only for {list(domain.custom_tasks) or 'no task'})"
        )
    task = cfg.finetune.task
    encoder = load(base_ckpt).encoder.train()
    train_set = dataset_for(domain, cfg, "train", data, labels, sampler, card)
    _check_task_targets(train_set, task, cfg.data.path)
    val_memory = _memory_validation_set(domain, cfg, card, encoder, memory, val_data, val_labels)
    if memory:
        _check_input_channels(encoder, train_set, "data")
    num_classes, classes, class_map = _task_classes(train_set, task, cfg)
    train_set = map_labels(train_set, class_map, task)  # sparse label ids -> contiguous training indices
    model = _task_model(domain, encoder, task, num_classes, cfg)
    card_ft = build_card(
        cfg,
        domain,
        encoder,
        train_set,
        "finetune",
        base=card,
        preprocessing=domain.memory_preprocessing(card, train_set) if memory else None,
        in_memory=memory,
        task=task,
        num_classes=num_classes,
        classes=classes,
        class_map=class_map.to_dict() if class_map else None,
        parent=str(base_ckpt),
        ema=False,
        lora={"rank": cfg.finetune.lora_rank, "alpha": cfg.finetune.lora_alpha} if cfg.finetune.lora_rank else None,
        val_metrics=None,  # the base card's scores are not this model's
    )
    validation = _FinalValidation(model, domain, cfg, card_ft, val_memory, class_map, num_classes, memory)
    start_run_dir(run_dir, cfg, resume)
    started = time.perf_counter()
    ckpt = train(
        model,
        train_set,
        cfg.train,
        run_dir,
        card_ft,
        resume=resume,
        num_workers=cfg.data.num_workers,
        callbacks=[validation],
    )
    if is_main() and cfg.train.progress:
        print(run_summary("finetune", run_dir, ckpt, time.perf_counter() - started))
    if is_main():
        validation.finish(ckpt)
    return ckpt


def _task_classes(train_set, task: str, cfg) -> tuple:
    """``(num_classes, class names, class map)`` of the training data (:func:`resolve_classes`), checked."""
    masks = dataset_attribute(train_set, "mask_classes") if task == "segmentation" else None
    names = masks or dataset_attribute(train_set, "classes")
    num_classes, classes, class_map = resolve_classes(train_set, task, cfg.finetune.num_classes, names, cfg.data.path)
    if task == "classification" and num_classes < 2:
        raise DataError(cfg.data.path, f"classification needs at least 2 classes, found {num_classes}")
    return num_classes, classes, class_map


def _finetune_config(card: Card, task, data, config, overrides, out) -> Config:
    """The fine-tuning config: the card's pretraining config with ``config``'s keys, the task and the out
    folder (default: the pretraining folder's name + ``-finetune``) applied."""
    updates: dict = {}
    if config is not None:
        updates.update(read_config_file(config) if not isinstance(config, dict) else config)  # only the keys it sets
    if task:
        updates.setdefault("finetune", {})["task"] = task
    if out is not None:
        updates["out"] = str(out)
    elif "out" not in updates:
        base_out = Path(card.config["out"])
        updates["out"] = str(base_out.with_name(base_out.name + "-finetune"))
    return config_from_card(card, data=data, overrides=overrides, updates=updates)


def _check_task_targets(train_set, task: str, path) -> None:
    """The training data has samples, each with what ``task`` learns from (a mask or a label)."""
    if len(train_set) == 0:
        raise DataError(path, "no labelled samples found for fine-tuning")
    first = train_set[0]
    needed = "mask" if task == "segmentation" else "label"
    if needed not in first:
        where = (first.get("meta") or {}).get("path") or path
        raise DataError(
            where,
            f"the {task} task needs a '{needed}' for every sample, and this data has none "
            f"(give labelled data: class subfolders or a manifest with a "
            f"{'mask' if needed == 'mask' else 'label'} column)",
        )


def _task_model(domain, encoder, task: str, num_classes: int, cfg) -> TaskModel:
    """The encoder with the domain's head for ``task``; LoRA adapters or a frozen encoder when configured."""
    torch.manual_seed(cfg.train.seed)
    head = domain.head(task, encoder, num_classes, cfg)
    if cfg.finetune.lora_rank:
        apply_lora(encoder, rank=cfg.finetune.lora_rank, alpha=cfg.finetune.lora_alpha)
    elif cfg.finetune.freeze_encoder:
        for p in encoder.parameters():
            p.requires_grad_(False)
    return TaskModel(encoder, head, task, layer_decay=cfg.finetune.layer_decay)


def _validation_set(domain, cfg):
    """The domain's validation split, or ``None`` when there is none."""
    try:
        return domain.dataset(cfg, "val")
    except (NotImplementedError, DataError) as exc:
        log.info("no validation split (%s)", exc)
        return None


_ARGUMENT = re.compile(r"(?<![\w.])(data|labels)=")


def _memory_validation_set(domain, cfg, card: Card, encoder, memory: bool, val_data, val_labels):
    """``val_data`` (with ``val_labels``) held in memory as the validation set of data held in memory, checked
    before any training (a problem names ``val_data``/``val_labels``); ``None`` when none is given."""
    if val_data is None and val_labels is None:
        return None
    if not (memory and is_in_memory(val_data)):
        raise ConfigError(
            "val_data= (with val_labels=) is a validation set held in memory, for data= held in memory; "
            "data read from a path brings its own validation split"
        )
    try:
        val_set = dataset_for(domain, cfg, "val", val_data, val_labels, None, card)
        _check_input_channels(encoder, val_set, "val_data")
        needed = "mask" if cfg.finetune.task == "segmentation" else "label"
        if len(val_set) and needed not in val_set[0]:
            raise DataError(None, f"the {cfg.finetune.task} task needs a {needed} per image: pass val_labels=")
    except DataError as exc:
        text = _ARGUMENT.sub(r"val_\1=", str(exc))
        raise DataError(None, text if text.startswith("val_") else f"val_data: {text}") from None
    return val_set


def _check_input_channels(encoder, dataset, arg: str) -> None:
    """The first sample of ``dataset`` (the ``arg`` argument) has the channel count a fixed-channel encoder
    takes; told before any training rather than at the first batch."""
    expected = getattr(encoder.patch_embed, "in_chans", None)
    if expected is None or len(dataset) == 0:  # a wavelength patch embed takes any channel count
        return
    got = int(dataset[0]["image"].shape[0])
    if got != int(expected):
        raise DataError(
            None,
            f"{arg}: the model expects {expected} input channels, got {got}; "
            f"give images with the {expected} channel(s) of the data it was pretrained on",
        )


class _FinalValidation:
    """The fine-tuned model's validation scores (the core's on the validation data, and the domain's own, e.g.
    whole-scan Dice), put in the card before the last checkpoint is written: a training callback that acts at
    the last step, so the card is complete when first written. It acts only where the module this process
    holds is the one trained and saved as is (one process, no EMA); otherwise (DDP/FSDP, EMA weights, or a
    finished run resumed) :meth:`finish` scores the saved checkpoint and adds the scores to its card.
    :meth:`finish` prints them and writes ``val_metrics.json`` in the run folder."""

    def __init__(self, model, domain, cfg: Config, card: Card, val_memory, class_map, num_classes: int, memory):
        self.model, self.domain, self.cfg, self.card = model, domain, cfg, card
        self.val_memory, self.class_map, self.num_classes, self.memory = val_memory, class_map, num_classes, memory
        self.metrics: dict | None = None

    def __call__(self, step: int, encoder) -> dict:
        held = encoder is self.model.encoder and not self.cfg.train.ema  # not a DDP/FSDP copy, no EMA weights
        if step == self.cfg.train.steps and held and is_main():
            was = self.model.training
            try:
                self.metrics = self._scores(FoundationModel(self.model.encoder, self.card, self.model.head))
            finally:
                self.model.train(was)
            self.card.val_metrics = self.metrics or None
        return {}

    def _scores(self, loaded) -> dict:
        """The scores of the trained ``model`` and of ``loaded`` (the same model, as ``load`` rebuilds it)."""
        cfg, task = self.cfg, self.cfg.finetune.task
        val_set = self.val_memory if self.memory else _validation_set(self.domain, cfg)
        val_set = map_labels(val_set, self.class_map, task, strict=False)
        metrics = {}
        if val_set is not None and len(val_set):
            background = cfg.finetune.background
            metrics = evaluate_task(self.model, val_set, task, self.num_classes, cfg.train.batch_size, background)
        extra = {} if self.memory else self.domain.validate(loaded.eval(), cfg)
        metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
        return metrics

    def finish(self, ckpt: Path) -> None:
        """Print the scores and write ``val_metrics.json``; score the checkpoint first when the callback could
        not (and add the scores to its card)."""
        if self.metrics is None:
            self.metrics = self._scores(None if self.memory else load(ckpt))
            card = Card.read(ckpt)
            if self.metrics and card.val_metrics != self.metrics:  # a finished run resumed keeps its card as is
                card.val_metrics = self.metrics
                write_json_atomic(ckpt / "card.json", card.to_dict())
        if self.metrics:
            (Path(self.cfg.out) / "val_metrics.json").write_text(json.dumps(self.metrics, indent=2))
            print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items()))
