"""The pipelines behind the notebook and CLI surface: ``pretrain``, ``finetune``, ``embed``,
``predict`` and ``evaluate``.

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

import numpy as np
import torch
from torch import nn

from domainfm.classmap import map_labels, resolve_classes
from domainfm.config import Config, read_config_file, save_config
from domainfm.data.adapters import SCHEMA, adapt, describe, is_in_memory
from domainfm.data.sample import collate_samples
from domainfm.domain import operation_options
from domainfm.errors import ConfigError, DataError, UnsupportedError
from domainfm.eval import evaluate as _evaluate
from domainfm.eval.metrics import segmentation_scores
from domainfm.eval.online import OnlineKNNProbe
from domainfm.exported import ExportedModel, is_exported, load_exported
from domainfm.heads.task import TaskModel
from domainfm.inference import batches_by_band_set, embed_samples
from domainfm.io_safety import (
    check_embed_suffix,
    check_exists,
    check_regular,
    exist_ok_policy,
    lock_run,
    write_arrays_atomic,
    write_json_atomic,
)
from domainfm.model import FoundationModel, build_card, load
from domainfm.models.encoder import build_encoder
from domainfm.models.lora import apply_lora
from domainfm.outputs import embeddings_frame, read_embeddings, read_prediction
from domainfm.recipes import Recipe, apply_recipe, facts_from_dataset, resolve_recipe
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card, load_config
from domainfm.ssl import build_objective, check_objective, pretrain_views
from domainfm.train.checkpoint import (
    check_run_dir,
    list_checkpoints,
    load_card,
    load_module_state,
    load_tensors,
    resolve_checkpoint,
)
from domainfm.train.engine import train
from domainfm.train.init import init_from_config
from domainfm.train.rundir import prepare_run_dir, run_summary
from domainfm.utils import pick_device
from domainfm.viz import reconstruction_figure, save_reconstruction_png

log = logging.getLogger("domainfm")


def _encoder_for(cfg: Config, domain, dataset) -> nn.Module:
    kw = domain.encoder_kwargs(cfg, dataset)
    return build_encoder(
        cfg.model.name,
        depth=cfg.model.depth,
        embed_dim=cfg.model.embed_dim,
        num_heads=cfg.model.num_heads,
        drop_path_rate=cfg.model.drop_path_rate,
        class_token=cfg.model.class_token,
        num_registers=cfg.model.num_registers,
        global_pool=cfg.model.global_pool,
        **kw,
    )


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _data_updates(data) -> dict:
    """Config updates for a ``data`` argument: a path sets ``data.path``; data in memory trains under the
    ``arrays`` domain (its metadata comes from the object)."""
    if data is None:
        return {}
    if is_in_memory(data):
        return {"domain": "arrays", "data": {"path": None}}
    return {"data": {"path": str(data)}}


def _dataset(domain, cfg: Config, split: str, data=None, labels=None, sampler=None, card: dict | None = None):
    """The domain's dataset for ``split``, or ``data`` held in memory as samples (prepared by the domain
    when it can, e.g. normalised with the checkpoint's statistics)."""
    if not is_in_memory(data):
        if labels is not None or sampler is not None:
            raise ConfigError(
                "labels= and sampler= go with data held in memory (an array or a dataset object); "
                "a path brings its own labels"
            )
        return domain.dataset(cfg, split)
    options = cfg.data.options or {}  # the arrays domain's axis settings apply to data held in memory too
    spatial = ((card or {}).get("preprocessing") or {}).get("spatial_dims") or options.get("spatial_dims")
    ds = adapt(data, labels, sampler=sampler, spatial_dims=spatial, channels_last=options.get("channels_last"))
    prepare = getattr(domain, "prepare", None)
    return prepare(ds, cfg, card) if prepare is not None else ds


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
    updates = _data_updates(data)
    cfg = load_config(config, overrides=list(overrides), updates=updates)
    check_objective(cfg.objective, cfg.train.batch_size)
    domain = get_domain(cfg.domain)
    in_memory = _dataset(domain, cfg, "pretrain", data, labels, sampler) if is_in_memory(data) else None
    if in_memory is not None and len(in_memory) == 0:
        raise DataError("data", "no samples found for pretraining")
    recipe = _recipe(cfg, domain, in_memory)
    dataset = in_memory if in_memory is not None else _recipe_dataset(recipe)
    if dataset is None:
        dataset = _dataset(domain, cfg, "pretrain")
    if len(dataset) == 0:
        raise DataError(cfg.data.path, "no samples found for pretraining")
    torch.manual_seed(cfg.train.seed)  # the same config gives the same initial weights
    encoder = _encoder_for(cfg, domain, dataset)
    encoder, init_record = init_from_config(cfg, encoder)  # model.init: start from a checkpoint's encoder
    objective = build_objective(encoder, cfg.objective)
    card = {**build_card(cfg, domain, encoder, dataset, "pretrain"), **({"init": init_record} if init_record else {})}
    card["recipe"] = recipe.to_card()
    if is_in_memory(data):
        card["data"]["source"] = describe(dataset.profile)
    train_set = pretrain_views(dataset, domain, cfg)  # multi-crop, two views or resized crops, as the objective needs
    run_dir = Path(cfg.out)
    resume = prepare_run_dir(run_dir, exist_ok, resume, main=_is_main())
    if resume:
        _check_resume_matches(run_dir, cfg)
    cbs = list(callbacks)
    if cfg.train.probe_every:
        probe = _online_probe(cfg, domain)
        if probe is not None:
            cbs.append(probe)
    _start_run_dir(run_dir, cfg, resume)
    started = time.perf_counter()
    ckpt = train(
        objective, train_set, cfg.train, run_dir, card, resume=resume, num_workers=cfg.data.num_workers, callbacks=cbs
    )
    if _is_main() and cfg.train.progress:
        print(run_summary("pretrain", run_dir, ckpt, time.perf_counter() - started))
    if _is_main() and hasattr(objective, "reconstruct"):
        _save_reconstruction(objective, dataset, run_dir / "reconstruction.png")
    return ckpt


def _recipe(cfg: Config, domain, dataset=None) -> Recipe:
    """Resolve and apply the data-derived recipe (:mod:`domainfm.recipes`) of a pretraining config: facts
    from ``dataset`` when the data is held in memory, else from the domain's :meth:`data_facts`."""
    facts = facts_from_dataset(dataset) if dataset is not None else domain.data_facts(cfg)
    device = pick_device(cfg.train.device).type
    recipe = resolve_recipe(cfg, facts, "cuda" if device == "cuda" else "cpu")
    apply_recipe(cfg, recipe, quiet=not (_is_main() and cfg.train.progress))
    return recipe


def _recipe_dataset(recipe: Recipe):
    """The dataset the recipe's facts were read from, when the recipe changed nothing that shapes it (no
    ``data.*`` decision): the pretraining data is then not built twice."""
    if recipe.facts.dataset is None or any(d.key.startswith("data.") for d in recipe.decisions):
        return None
    return recipe.facts.dataset


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


def _start_run_dir(run_dir: Path, cfg: Config, resume: bool) -> None:
    """Refuse to overwrite a run before anything is written, then record the config the run uses."""
    check_run_dir(run_dir, resume)
    if _is_main():
        lock_run(run_dir)  # creates a writable run_dir; a second process into this run is refused (engine releases)
        save_config(cfg, run_dir / "config.yaml")


def _check_resume_matches(run_dir: Path, cfg: Config) -> None:
    """Resuming with another model, objective or domain than the run's would load the wrong weights."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return  # the engine says there is nothing to resume from
    before = load_card(ckpts[-1])["config"]
    now = cfg.to_dict()
    diffs = (
        [f"domain: {before['domain']!r} in the run, {now['domain']!r} now"] if before["domain"] != now["domain"] else []
    )
    for section in ("model", "objective"):
        for key, value in now[section].items():
            if before.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}: {before[section].get(key)!r} in the run, {value!r} now")
    if diffs:
        raise ConfigError(
            f"{run_dir}: resume=True with a different setup than the run ({'; '.join(diffs[:3])}); "
            "resume with the run's config (load_config(out + '/config.yaml')), exist_ok=\"overwrite\" "
            "to start again, or another out"
        )


def _online_probe(cfg: Config, domain):
    """kNN probe on labelled data (``data.val_path``, else the labelled splits of ``data.path``)."""
    vcfg = load_config(cfg, updates={"data": {"path": cfg.data.val_path}}) if cfg.data.val_path else cfg
    try:
        return OnlineKNNProbe(domain.dataset(vcfg, "train"), domain.dataset(vcfg, "val"), every=cfg.train.probe_every)
    except (DataError, NotImplementedError, KeyError) as exc:
        log.warning("online probe disabled: no labelled train/val splits (%s)", exc)
        return None


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
    dataset = _dataset(model.domain, cfg, "pretrain", data, labels, sampler, model.card)
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


def _save_reconstruction(objective, dataset, path: Path, n: int = 4) -> Path | None:
    return save_reconstruction_png(*_reconstruct(objective, dataset, n), path)


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
    card = load_card(base_ckpt)
    cfg = _finetune_config(card, task, None if memory else data, config, overrides, out)
    domain = get_domain(cfg.domain)
    run_dir = Path(cfg.out)
    resume = prepare_run_dir(run_dir, exist_ok, resume, main=_is_main())
    if cfg.finetune.task in domain.custom_tasks:
        return domain.finetune_task(cfg, base_ckpt, resume=resume, **kwargs)
    if kwargs:
        raise ConfigError(
            f"finetune for task {cfg.finetune.task!r} does not take {', '.join(sorted(kwargs))} "
            f"(domain {cfg.domain!r} takes extra arguments only for {list(domain.custom_tasks) or 'no task'})"
        )
    task = cfg.finetune.task
    encoder = load(base_ckpt).encoder.train()
    train_set = _dataset(domain, cfg, "train", data, labels, sampler, card)
    _check_task_targets(train_set, task, cfg.data.path)
    val_memory = _memory_validation_set(domain, cfg, card, encoder, memory, val_data, val_labels)
    if memory:
        _check_input_channels(encoder, train_set, "data")
    num_classes, classes, class_map = _task_classes(train_set, task, cfg)
    train_set = map_labels(train_set, class_map, task)  # sparse label ids -> contiguous training indices
    model = _task_model(domain, encoder, task, num_classes, cfg)
    card_ft = {
        **card,
        "stage": "finetune",
        "task": task,
        "num_classes": num_classes,
        "classes": classes,
        "class_map": class_map.to_dict() if class_map else None,
        "parent": str(base_ckpt),
        "config": cfg.to_dict(),
        "ema": False,
        "preprocessing": domain.memory_preprocessing(card, train_set)
        if memory
        else domain.preprocessing(cfg, train_set),
        "lora": {"rank": cfg.finetune.lora_rank, "alpha": cfg.finetune.lora_alpha} if cfg.finetune.lora_rank else None,
        "data": _data_record(cfg, train_set, memory),
    }
    _start_run_dir(run_dir, cfg, resume)
    started = time.perf_counter()
    ckpt = train(model, train_set, cfg.train, run_dir, card_ft, resume=resume, num_workers=cfg.data.num_workers)
    if _is_main() and cfg.train.progress:
        print(run_summary("finetune", run_dir, ckpt, time.perf_counter() - started))
    if _is_main():
        val_set = val_memory if memory else _validation_set(domain, cfg)
        val_set = map_labels(val_set, class_map, task, strict=False)
        _validate_finetuned(model, ckpt, domain, cfg, val_set, num_classes, memory)
    return ckpt


def _task_classes(train_set, task: str, cfg) -> tuple:
    """``(num_classes, class names, class map)`` of the training data (:func:`resolve_classes`), checked."""
    names = (getattr(train_set, "mask_classes", None) if task == "segmentation" else None) or getattr(
        train_set, "classes", None
    )
    num_classes, classes, class_map = resolve_classes(train_set, task, cfg.finetune.num_classes, names, cfg.data.path)
    if task == "classification" and num_classes < 2:
        raise DataError(cfg.data.path, f"classification needs at least 2 classes, found {num_classes}")
    return num_classes, classes, class_map


def _data_record(cfg, train_set, memory: bool) -> dict:
    """The card's ``data``: the path and sample count, and for data held in memory what it was."""
    record = {"path": cfg.data.path, "num_samples": len(train_set)}
    if memory:
        record["source"] = describe(train_set.profile) if hasattr(train_set, "profile") else None
    return record


def _finetune_config(card: dict, task, data, config, overrides, out) -> Config:
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
        updates["out"] = str(Path(card["config"]["out"]).with_name(Path(card["config"]["out"]).name + "-finetune"))
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


def _memory_validation_set(domain, cfg, card: dict, encoder, memory: bool, val_data, val_labels):
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
        val_set = _dataset(domain, cfg, "val", val_data, val_labels, None, card)
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


def _validate_finetuned(model, ckpt: Path, domain, cfg, val_set, num_classes: int, memory: bool) -> None:
    """Validation metrics of the fine-tuned model (and the domain's own, e.g. whole-scan Dice), printed and
    written to ``val_metrics.json`` and the checkpoint's card."""
    metrics = {}
    if val_set is not None and len(val_set):
        background = cfg.finetune.background
        metrics = evaluate_task(model, val_set, cfg.finetune.task, num_classes, cfg.train.batch_size, background)
    extra = {} if memory else domain.validate(load(ckpt), cfg)
    metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    if metrics:
        (Path(cfg.out) / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
        card_path = ckpt / "card.json"
        write_json_atomic(card_path, {**json.loads(card_path.read_text()), "val_metrics": metrics})
        print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


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


def _resolve_model(model_or_path) -> FoundationModel | ExportedModel:
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
    model = _resolve_model(checkpoint)
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
            _dataset(domain, cfg, "embed", data, labels, sampler, model.card),
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
    model = _resolve_model(checkpoint)
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
        model = _resolve_model(checkpoint)
        domain = model.domain
        cfg = config_from_card(model.card, check_paths=False)
        train_set = _dataset(domain, cfg, "train", data, labels, sampler, model.card)
        test_set = _dataset(domain, cfg, "test", test_data, test_labels, sampler, model.card)
        kwargs["datasets"] = (train_set, test_set)
        data = None
    return _evaluate(checkpoint, data=data, protocol=protocol, **kwargs)
