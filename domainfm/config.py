"""Typed configs: YAML (or a dict) in, a schema-checked :class:`Config` out, clear one-line errors.

This module is the only place that reads a config file's text. Unknown keys, wrong types and values
out of range raise :class:`~domainfm.errors.ConfigError` naming the key and the file. Relative data
paths in a YAML file are relative to that file. It knows no domain: :func:`domainfm.load_config`
(in :mod:`domainfm.domain`) adds the domain's checks and binds its typed options.

Example:
    >>> cfg = parse_config({"domain": "synthetic", "train": {"steps": 5}}, overrides=["model.depth=2"])
    >>> cfg.train.steps, cfg.model.depth
    (5, 2)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from domainfm.errors import ConfigError, did_you_mean
from domainfm.utils import parse_list


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
class ObjectiveConfig:
    """Pretraining objective: ``mae``, ``contrastive``, ``mae+contrastive``, ``dino`` or ``mae+dino``."""

    name: str = "mae"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    proj_dim: int = 256
    proj_hidden_dim: int = 1024
    temperature: float = 0.2
    momentum: float = 0.99
    mae_weight: float = 1.0
    contrastive_weight: float = 1.0
    # --- self-distillation (dino, mae+dino; domainfm/ssl/dino.py, domainfm/data/multicrop.py) ---
    dino_weight: float = 1.0
    prototypes: int = 4096  # weight-normalised prototypes of the DINO head
    head_hidden_dim: int = 1024
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = False  # BatchNorm in the DINO head's MLP (helps short runs on homogeneous images)
    teacher_momentum: float = 0.996  # cosine schedule from this to 1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 0
    student_temp: float = 0.1
    centering: str = "center"  # center (EMA center) | sinkhorn (Sinkhorn-Knopp)
    center_momentum: float = 0.9
    koleo_weight: float = 0.0
    ibot_weight: float = 0.0  # iBOT masked-patch loss
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    global_crops: int = 2
    local_crops: int = 6
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    local_crop_size: int | list[int] | None = None  # pixels/voxels; None: 96/224 of data.img_size
    collapse_threshold: float = 0.01  # teacher mutual information / log(prototypes) below this = collapsed
    collapse_patience: int = 50  # consecutive collapsed steps after the check starts
    collapse_check_after: int | None = None  # None: after teacher_temp_warmup_steps and 10% of the steps
    stop_on_collapse: bool = True
    mae_crop_scale: list[float] | None = None  # mae alone: random resized crop of this area share (X-ray MAE: 0.5-1)


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
                value = value.get(part) if isinstance(value, dict) else None
            _set_nested(out, parts, _deepcopy(value))
        return out

    def bind_options(self, options: Any) -> Config:
        """Bind the domain's typed options (done by :func:`domainfm.load_config`): ``data.options`` becomes
        their values, and :attr:`options` reads ``data.options`` through their class from then on."""
        self.__dict__["_options_cls"] = type(options)
        self.data.options = dataclasses.asdict(options)
        return self


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (a small subset of typing), converting gently."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key, source)
    if origin in (list, tuple):
        return _coerce_list(value, (typing.get_args(tp)[:1] or (Any,))[0], key, source)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key, source)
    scalar = _SCALARS.get(tp)
    return scalar(value, key, source) if scalar is not None else value


def _coerce_union(value: Any, args: tuple, key: str, source: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{source}: {key} must not be null")
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, source)
        except ConfigError:
            continue
    names = " or ".join(_type_name(a) for a in args if a is not type(None))
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r}")


def _coerce_list(value: Any, inner: Any, key: str, source: str) -> list:
    if isinstance(value, str) and "," in value:  # "a,b,c" from a flag or a YAML scalar
        value = [yaml.safe_load(v) for v in parse_list(value)]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
    return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]


def _as_bool(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")


def _as_int(value: Any, key: str, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")


def _as_float(value: Any, key: str, source: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{source}: {key} must be a number, got {value!r}")


def _as_str(value: Any, key: str, source: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ConfigError(f"{source}: {key} must be a string, got {value!r}")


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def build_dataclass(cls, data: Any, key: str, source: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {key or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{key}." if key else ""
        close = difflib.get_close_matches(str(unknown[0]), sorted(names), n=1)
        hint = f"did you mean {where}{close[0]}? " if close else ""
        raise ConfigError(f"{source}: unknown key {where}{unknown[0]!s} ({hint}known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{key}.{k}" if key else k, source) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=10"`` -> (["train", "steps"], 10); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_nested(d: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k} is not a section")
        d = nxt
    d[keys[-1]] = value


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
    cfg = build_dataclass(Config, raw, "", name)
    cfg.__dict__["_source"] = name
    cfg.__dict__["_explicit"] = _explicit_keys(source, raw, updates, overrides)
    if not 0.0 <= cfg.objective.mask_ratio < 1.0:
        raise ConfigError(f"{name}: objective.mask_ratio must be in [0, 1), got {cfg.objective.mask_ratio}")
    if cfg.data.cache not in ("none", "memory", "disk"):
        raise ConfigError(
            f"{name}: data.cache must be none, memory or disk, got {cfg.data.cache!r}"
            + did_you_mean(cfg.data.cache, ("none", "memory", "disk"))
        )
    if cfg.train.steps < 1 or cfg.train.batch_size < 1 or cfg.train.accum_steps < 1:
        raise ConfigError(f"{name}: train.steps, train.batch_size and train.accum_steps must be >= 1")
    _check_ranges(cfg, name)
    return cfg


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(
                    f"{self.name}: line {key_node.start_mark.line + 1}: key {key!r} is given twice (first on line "
                    f"{seen[key] + 1}); YAML would keep the last one silently: remove one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: str | Path):
    """The content of a YAML config file: invalid YAML and duplicate keys are one line naming the line.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = f.write_text("train: {steps: 2}\\ntrain: {steps: 3}\\n")
        >>> load_yaml_file(f)
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: .../c.yaml: line 2: key 'train' is given twice (first on line 1); ...
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data() or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file sets (only its own keys), with relative ``data.path`` and
    ``data.val_path`` resolved against the file's folder.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "ft.yaml"
        >>> _ = f.write_text("{finetune: {task: segmentation}, data: {path: labels.csv}}")
        >>> raw = read_config_file(f); raw["finetune"], raw["data"]["path"] == str(f.parent.resolve() / "labels.csv")
        ({'task': 'segmentation'}, True)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = load_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (domain, data, model, ...)")
    if isinstance(raw.get("data"), dict):
        for key in ("path", "val_path"):
            value = raw["data"].get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                raw["data"][key] = _relative_to(path.parent, value)
    return raw


def _relative_to(base_dir: Path, value: str) -> str:
    """``value`` resolved against ``base_dir``, as an absolute path (so a saved copy of the config,
    e.g. a run's ``config.yaml``, still points at the same data)."""
    return os.path.normpath((base_dir / value).resolve())


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


def parse_option_flags(args: list[str], options_cls: type, owner: str) -> dict:
    """``--foo-bar VALUE`` / ``--foo-bar=VALUE`` / ``--flag`` tokens -> ``{"foo_bar": value}`` for the fields
    of ``options_cls`` (values are YAML scalars; list fields also take ``a,b,c``). The one parser of
    domain and operation flags, for every CLI command.

    Example:
        >>> @dataclass
        ... class Opts:
        ...     bands: list[str] = field(default_factory=list)
        ...     mpp: float | None = None
        ...     probabilities: bool = False
        >>> parse_option_flags(["--bands", "B02,B03", "--mpp=0.5", "--probabilities"], Opts, "predict")
        {'bands': ['B02', 'B03'], 'mpp': 0.5, 'probabilities': True}
        >>> parse_option_flags(["--colour", "red"], Opts, "predict")
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: unknown option --colour for predict (its options: --bands, --mpp, --probabilities)
    """
    fields = {f.name: f for f in dataclasses.fields(options_cls)} if dataclasses.is_dataclass(options_cls) else {}
    hints = typing.get_type_hints(options_cls) if fields else {}
    out: dict = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} for {owner}")
        name, eq, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        if key not in fields:
            flags = ["--" + f.replace("_", "-") for f in fields]
            close = difflib.get_close_matches("--" + name, flags, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown option --{name} for {owner} ({hint}its options: {', '.join(flags) or 'none'})")
        if eq:
            raw = inline
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 1
        else:
            raw = "true"
        value = yaml.safe_load(raw) if raw.strip() else ""
        if "list" in str(hints.get(key, "")):
            value = [yaml.safe_load(v) if isinstance(v, str) else v for v in parse_list(value)]
        out[key] = value
        i += 1
    return out
