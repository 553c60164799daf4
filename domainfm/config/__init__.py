"""Typed configs: YAML (or a dict) in, a schema-checked :class:`Config` out, clear one-line errors.

This package is the only place that reads a config file's text (:mod:`domainfm.config.files`). Unknown keys,
wrong types and values out of range raise :class:`~domainfm.errors.ConfigError` naming the key and the file
(:mod:`domainfm.config.typed`). Relative data paths in a YAML file are relative to that file. The ``objective``
section is typed by the options the named objective registered (:mod:`domainfm.config.objective`). It knows no
domain: :func:`domainfm.load_config` (in :mod:`domainfm.runconfig`) adds the domain's checks and binds its typed
options.

Example:
    >>> cfg = parse_config({"domain": "synthetic", "train": {"steps": 5}}, overrides=["model.depth=2"])
    >>> cfg.train.steps, cfg.model.depth
    (5, 2)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from domainfm.config.files import load_yaml_file, read_config_file
from domainfm.config.objective import ObjectiveConfig, build_objective_config, objective_section
from domainfm.config.typed import _set_nested, build_dataclass, parse_option_flags, parse_override
from domainfm.errors import ConfigError, did_you_mean
from domainfm.registry import get_domain, list_objectives


@dataclass
class DataConfig:
    """Where the data is and how to feed it. ``options`` holds the domain's own settings."""

    path: str | None = None
    val_path: str | None = None
    img_size: int | list[int] = 224
    in_chans: int | None = None
    num_workers: int = 0
    cache: str = "none"  # none | memory | disk
    val_fraction: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Encoder size (``vit-tiny|vit-small|vit-base|vit-large``) and token maker."""

    name: str = "vit-tiny"
    patch_embed: str | None = None  # 2d | 3d | wavelength; None lets the domain choose
    patch_size: int | list[int] = 16
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    class_token: bool = False
    num_registers: int = 0
    global_pool: str | None = None  # token | avg | token+avg; None: the class token when there is one
    init: str | None = None  # pretraining starts from this checkpoint's encoder (imported or trained)


@dataclass
class TrainConfig:
    """The engine's knobs (see :func:`domainfm.train.engine.train`)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_steps: int = 50
    accum_steps: int = 1
    clip_grad: float | None = 1.0
    ema: float = 0.0  # EMA decay of the weights; 0 disables
    compile: bool = False
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    device: str = "auto"
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None keeps torch's default
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 2
    tensorboard: bool = True
    progress: bool = True
    probe_every: int = 0  # online kNN probe every N steps when labelled data.val_path is given
    layer_decay: float = 1.0  # pretraining: layer-wise LR decay over the encoder (1.0 = none), e.g. with model.init
    grad_checkpointing: bool = False  # recompute encoder block activations in backward (less memory, ~30% slower)
    memory_check: bool = True  # estimate the step's peak memory before training; refuse when it does not fit
    strategy: str = "ddp"  # under torchrun: ddp (replicated weights) | fsdp (FSDP2 sharding, for ViT-L and larger)
    stop_if_not_learning: bool = True  # a loss flat from the start past warmup stops the run with its cause
    flat_tolerance: float = 0.01  # relative loss change below which a run counts as not learning


@dataclass
class FinetuneConfig:
    """Downstream training: task, head and how much of the encoder moves."""

    task: str = "classification"  # classification | multilabel | segmentation | mil
    num_classes: int | None = None
    freeze_encoder: bool = False
    layer_decay: float = 0.75
    lora_rank: int = 0
    lora_alpha: float = 16.0
    head_options: dict[str, Any] = field(default_factory=dict)
    background: bool = True  # segmentation: label id 0 is background, left out of the Dice / mIoU means


_ABSENT = object()


@dataclass
class Config:
    """A whole run: domain, data, model, objective, training and (for fine-tuning) the task."""

    domain: str = "synthetic"
    out: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def source(self) -> str:
        """Where the config came from (a YAML path, ``config`` for a dict), for error messages."""
        return self.__dict__.get("_source", "config")

    @property
    def options(self):
        """The domain's typed options (``data.options`` checked by the domain plugin's ``Options``)."""
        options_cls = self.__dict__.get("_options_cls")
        if options_cls is None:
            raise ConfigError(
                f"{self.source}: the config is not bound to its domain; load it with "
                "domainfm.load_config(...) to get data.options checked and typed"
            )
        return build_dataclass(options_cls, self.data.options, "data.options", self.source)

    @property
    def explicit(self) -> frozenset[str]:
        """Dotted keys the user set (``train.steps``, ``objective.name``...): a data-derived recipe
        (:mod:`domainfm.recipes`) never changes them. A config built from a dataclass, a card or a saved
        ``config.yaml`` has every key explicit."""
        return self.__dict__.get("_explicit", frozenset())

    def is_set(self, key: str) -> bool:
        """Whether the dotted ``key`` (or a key under it) was set by the user.

        Example:
            >>> cfg = parse_config({"train": {"steps": 5}})
            >>> cfg.is_set("train.steps"), cfg.is_set("train.lr"), cfg.is_set("train")
            (True, False, True)
        """
        return any(k == key or k.startswith(key + ".") for k in self.explicit)

    def explicit_dict(self) -> dict:
        """The config as the user gave it: a nested dict of the :attr:`explicit` keys only (what a recipe
        resolves again, e.g. for another step count).

        Example:
            >>> parse_config({"train": {"steps": 5}, "objective": {"name": "dino"}}).explicit_dict()
            {'objective': {'name': 'dino'}, 'train': {'steps': 5}}
        """
        full, out = self.to_dict(), {}
        for key in sorted(self.explicit):
            parts = key.split(".")
            value: Any = full
            for part in parts:
                value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
            if value is not _ABSENT:  # absent: a setting of another objective than the one named
                _set_nested(out, parts, _deepcopy(value))
        return out

    def bind_options(self, options: Any) -> Config:
        """Bind the domain's typed options (done by :func:`domainfm.load_config`): ``data.options`` becomes
        their values, and :attr:`options` reads ``data.options`` through their class from then on."""
        self.__dict__["_options_cls"] = type(options)
        self.data.options = dataclasses.asdict(options)
        return self


def parse_config(
    source: str | Path | dict | Config | None = None, overrides: list[str] | tuple = (), updates: dict | None = None
) -> Config:
    """Read and schema-check a config from a YAML path, a dict or a :class:`Config`.

    ``overrides`` are ``key=value`` strings (dotted keys, YAML values); ``updates`` a nested dict
    merged on top. Relative ``data.path``/``data.val_path`` in a YAML file resolve against its folder.
    """
    name = "config"
    if isinstance(source, Config):
        raw = source.to_dict()
        name = source.source
    elif isinstance(source, (str, Path)):
        name = str(source)
        raw = read_config_file(source)
    elif source is None:
        name = "command line"
        raw = {}
    elif isinstance(source, dict):
        raw = _deepcopy(source)
    else:
        raise ConfigError(f"config must be a path, a dict or a Config, got {type(source).__name__}")
    for section, values in (updates or {}).items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            _merge(raw[section], values)
        else:
            raw[section] = _deepcopy(values)
    for text in overrides:
        keys, value = parse_override(text)
        _set_nested(raw, keys, value)
    _import_objective_of(raw)
    typed = {**raw, "objective": build_objective_config(raw.get("objective"), "objective", name)}
    cfg = build_dataclass(Config, typed, "", name)
    cfg.__dict__["_source"] = name
    cfg.__dict__["_explicit"] = _explicit_keys(source, raw, updates, overrides)
    if cfg.data.cache not in ("none", "memory", "disk"):
        raise ConfigError(
            f"{name}: data.cache must be none, memory or disk, got {cfg.data.cache!r}"
            + did_you_mean(cfg.data.cache, ("none", "memory", "disk"))
        )
    if cfg.train.steps < 1 or cfg.train.batch_size < 1 or cfg.train.accum_steps < 1:
        raise ConfigError(f"{name}: train.steps, train.batch_size and train.accum_steps must be >= 1")
    _check_ranges(cfg, name)
    return cfg


def _import_objective_of(raw: dict) -> None:
    """An objective a domain plugin registers when imported: load that domain (through its entry point) when the
    config names an objective not registered yet, so its section can be typed."""
    section, domain = raw.get("objective"), raw.get("domain", "synthetic")
    wanted = section.get("name") if isinstance(section, dict) else None
    if isinstance(wanted, str) and wanted not in list_objectives() and isinstance(domain, str):
        try:
            get_domain(domain)
        except ConfigError:  # an unknown domain is named when the config is bound to it
            pass


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _leaf_keys(v, key) if isinstance(v, dict) and v else {key}
    return out


def _explicit_keys(source: Any, raw: dict, updates: dict | None, overrides) -> frozenset[str]:
    """The dotted keys a user set: every key of a dict or YAML source, of ``updates`` and of ``overrides``;
    a :class:`Config` source keeps its own explicit set (all keys when it has none)."""
    if isinstance(source, Config):
        keys = set(source.explicit) if "_explicit" in source.__dict__ else _leaf_keys(source.to_dict())
        keys |= _leaf_keys(updates or {})
    else:
        keys = _leaf_keys(raw)
    for text in overrides:
        keys.add(".".join(parse_override(text)[0]))
    return frozenset(keys)


#: the largest side of a model input (data.img_size, a card's encoder.img_size): 16384 px
MAX_SIDE = 16384


def _check_ranges(cfg: Config, name: str) -> None:
    """Values that would otherwise fail deep inside torch with a message about something else."""
    t = cfg.train
    checks = [
        (math.isfinite(t.lr) and t.lr >= 0, f"train.lr must be a number >= 0, got {t.lr}"),
        (math.isfinite(t.min_lr) and 0 <= t.min_lr <= t.lr, f"train.min_lr must be in [0, train.lr], got {t.min_lr}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (0 <= t.ema < 1, f"train.ema must be in [0, 1), got {t.ema}"),
        (t.clip_grad is None or t.clip_grad > 0, f"train.clip_grad must be > 0 or null, got {t.clip_grad}"),
        (t.threads is None or t.threads >= 1, f"train.threads must be >= 1, got {t.threads}"),
        (t.log_every >= 1 and t.ckpt_every >= 1, "train.log_every and train.ckpt_every must be >= 1"),
        (
            t.amp in ("auto", "bf16", "fp32"),
            f"train.amp must be auto, bf16 or fp32, got {t.amp!r}" + did_you_mean(t.amp, ("auto", "bf16", "fp32")),
        ),
        (
            t.strategy in ("ddp", "fsdp"),
            f"train.strategy must be ddp or fsdp, got {t.strategy!r}" + did_you_mean(t.strategy, ("ddp", "fsdp")),
        ),
        (0 <= t.flat_tolerance < 1, f"train.flat_tolerance must be in [0, 1), got {t.flat_tolerance}"),
        (0 < t.layer_decay <= 1, f"train.layer_decay must be in (0, 1], got {t.layer_decay}"),
        (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
        (0 <= cfg.model.drop_path_rate < 1, f"model.drop_path_rate must be in [0, 1), got {cfg.model.drop_path_rate}"),
        (0 < cfg.data.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}"),
        (cfg.finetune.lora_rank >= 0, f"finetune.lora_rank must be >= 1 (0: no LoRA), got {cfg.finetune.lora_rank}"),
    ]
    sizes = cfg.data.img_size if isinstance(cfg.data.img_size, list) else [cfg.data.img_size]
    patches = cfg.model.patch_size if isinstance(cfg.model.patch_size, list) else [cfg.model.patch_size]
    checks.append(
        (
            all(s >= 1 for s in sizes) and all(p >= 1 for p in patches),
            f"data.img_size {cfg.data.img_size} and model.patch_size {cfg.model.patch_size} must be positive",
        )
    )
    checks.append(
        (
            all(s <= MAX_SIDE for s in sizes),
            f"data.img_size {cfg.data.img_size} is over {MAX_SIDE} pixels a side (the model's input, not the "
            "file's size: larger images are cut into crops, chips or tiles); give a smaller data.img_size",
        )
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{name}: {message}")


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = _deepcopy(v)


def _deepcopy(obj):
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_deepcopy(v) for v in obj]
    return obj


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (what a run actually used), with absolute data paths so
    that reading it back from its own folder finds the same data."""
    path = Path(path)
    raw = cfg.to_dict()
    for key in ("path", "val_path"):
        if raw["data"].get(key):
            raw["data"][key] = str(Path(raw["data"][key]).resolve())
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


__all__ = [
    "MAX_SIDE",
    "Config",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "TrainConfig",
    "build_dataclass",
    "build_objective_config",
    "load_yaml_file",
    "objective_section",
    "parse_config",
    "parse_option_flags",
    "parse_override",
    "read_config_file",
    "save_config",
]
