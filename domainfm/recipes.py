"""Recipes from the data: the settings a pretraining run needs, picked from what the data and the machine are.

A user who gives only ``--domain``, ``--data`` and ``--objective`` (and perhaps ``--steps``) gets a
run sized to their images and their device: input and patch size from the image size, a model that
fits the machine (a CPU-sized ViT without a GPU), the objective's head, temperatures, crops and their
warmup from the image size and the step count, and learning-rate warmup from the step count. Every
key the user set wins; every decision is printed once (``domainfm: recipe: ...`` on stderr) and
recorded in the checkpoint card under ``recipe``.

The settings for small images (28-64 px) are the ones measured on PneumoniaMNIST and the Slovenia
NDVI chips (``docs/evaluation.md``); ``configs/objectives/dino_small_images.yaml`` is what the DINO
recipe resolves to for 28 px X-rays (a test keeps the two equal).

Example:
    >>> from domainfm.config import parse_config
    >>> cfg = parse_config({"objective": {"name": "dino"}, "train": {"steps": 1600}})
    >>> facts = DataFacts(spatial_dims=2, size=(28, 28), channels=1, items=2428, resizable=True)
    >>> recipe = resolve_recipe(cfg, facts, device="cpu")
    >>> cfg = apply_recipe(cfg, recipe, quiet=True)
    >>> cfg.data.img_size, cfg.model.patch_size, cfg.model.depth, cfg.objective.prototypes
    (28, 4, 4, 256)
    >>> cfg.objective.teacher_temp_warmup_steps, cfg.objective.local_crop_size, cfg.train.warmup_steps
    (480, 12, 160)
    >>> "model.patch_size" in [d.key for d in recipe.decisions]
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from domainfm import ssl as _objectives  # noqa: F401  (registers mae, contrastive, dino, ...)
from domainfm.config import Config
from domainfm.decisions import decide
from domainfm.errors import ConfigError
from domainfm.models import encoder as _encoder_sizes  # noqa: F401  (registers vit-tiny, vit-small, ...)
from domainfm.registry import get_encoder_arch, objective_spec

#: images whose shorter side is at most this many pixels get the small-image settings
SMALL_IMAGE = 64
#: the ViT input side for 2D images larger than this (the usual ViT resolution)
MAX_2D_SIDE = 224
#: the CPU-sized encoder: 4 blocks of width 96 (about 0.5 M parameters); PneumoniaMNIST measurements
CPU_MODEL = {"depth": 4, "embed_dim": 96, "num_heads": 3}
#: runs shorter than this many steps get the short-run teacher momentum and fewer prototypes
SHORT_RUN = 5000


@dataclass(frozen=True)
class DataFacts:
    """What a recipe reads off the data before anything is built.

    Attributes:
        spatial_dims: 2 or 3.
        size: the image size the model would see without resizing (pixels or voxels; for 3D volumes the
            training crop the domain chose).
        channels: channels per image (``None`` when the patch embed takes any band set).
        items: number of pretraining items (images, volumes, scenes or tiles).
        resizable: whether ``data.img_size`` sets the model input (2D images are resized, chips cut to it);
            ``False`` when the domain fixes the input size itself (3D crops, pathology tiles, arrays).
        what: how the data is described in the printed decisions (``"28x28 px images"``).
        dataset: the pretraining dataset the facts were read from, when one was built (not part of the
            facts: the pipeline reuses it when the recipe changes nothing of ``data``).
    """

    spatial_dims: int
    size: tuple[int, ...]
    channels: int | None
    items: int
    resizable: bool = False
    what: str = "images"
    dataset: Any = field(default=None, repr=False, compare=False)

    @property
    def side(self) -> int:
        """The shorter side of an image."""
        return int(min(self.size))

    def describe(self) -> str:
        return f"{self.items} {'x'.join(str(s) for s in self.size)} px {self.what}"


@dataclass
class Decision:
    """One setting the recipe chose: the dotted config ``key``, its ``value`` and ``why``."""

    key: str
    value: Any
    why: str


@dataclass
class Recipe:
    """The decisions a recipe took for a config, the facts they came from and the device."""

    facts: DataFacts
    device: str
    decisions: list[Decision] = field(default_factory=list)

    def to_card(self) -> dict:
        """JSON for the checkpoint card (``card["recipe"]``)."""
        facts = {f.name: getattr(self.facts, f.name) for f in dataclasses.fields(self.facts) if f.name != "dataset"}
        return {
            "facts": {**facts, "size": list(self.facts.size)},
            "device": self.device,
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
        }


# ---------------------------------------------------------------------------------------------- rules
def _patch_for(size: tuple[int, ...] | list[int], min_tokens: int) -> int | None:
    """The largest patch side in (16, 8, 4, 2) that divides every side and leaves ``min_tokens`` per side."""
    for p in (16, 8, 4, 2):
        if all(s % p == 0 and s // p >= min_tokens for s in size):
            return p
    return None


def _input_rules(cfg: Config, facts: DataFacts) -> Iterator[Decision]:
    """Model input size (2D images and chips) and patch size."""
    size = tuple(facts.size)
    if facts.resizable and facts.spatial_dims == 2 and not cfg.is_set("data.img_size"):
        side = facts.side
        if side > MAX_2D_SIDE:
            value, why = MAX_2D_SIDE, f"{facts.describe()}: resized to the usual ViT input {MAX_2D_SIDE} px"
        elif facts.what == "scenes":
            value = max(16, min(MAX_2D_SIDE, 2 ** int(math.log2(max(side // 2, 1)))))
            why = f"{facts.describe()}: {value} px chips (a power of two at most half the shorter side)"
        else:
            value, why = side, f"{facts.describe()}: kept at their own size ({side} px), not upsampled"
        size = (value,) * 2
        yield Decision("data.img_size", value, why)
    elif facts.resizable and facts.spatial_dims == 2:
        given = cfg.data.img_size
        size = tuple(given) if isinstance(given, list) else (given,) * 2
    if not cfg.is_set("model.patch_size") and not cfg.is_set("model.init"):
        min_tokens = 4 if facts.spatial_dims == 3 else 7
        patch = _patch_for(size, min_tokens) or _patch_for(size, 1)
        if patch is not None:
            tokens = "x".join(str(s // patch) for s in size)
            yield Decision("model.patch_size", patch, f"{tokens} tokens from a {'x'.join(map(str, size))} input")


def _model_rules(cfg: Config, facts: DataFacts, device: str) -> Iterator[Decision]:
    """Encoder size from the device and the number of items."""
    if any(cfg.is_set(k) for k in ("model.name", "model.depth", "model.embed_dim", "model.num_heads", "model.init")):
        return
    if device != "cuda":
        why = "no GPU: a CPU-sized ViT (4 blocks of width 96, about 0.5 M parameters)"
        for key, value in CPU_MODEL.items():
            yield Decision(f"model.{key}", value, why)
        return
    name = "vit-tiny" if facts.items < 50_000 else "vit-small" if facts.items < 500_000 else "vit-base"
    yield Decision("model.name", name, f"a GPU and {facts.items} items: {name}")


def _width(cfg: Config, updates: dict[str, Any]) -> int:
    """The encoder width: ``model.embed_dim``, else the registered size of ``model.name``."""
    dim = updates.get("model.embed_dim", cfg.model.embed_dim)
    return int(dim or get_encoder_arch(updates.get("model.name", cfg.model.name))()["embed_dim"])


def _train_rules(cfg: Config, updates: dict[str, Any]) -> Iterator[Decision]:
    """Learning rate from the encoder width, warmup from the step count."""
    steps = cfg.train.steps
    if not cfg.is_set("train.lr") and not cfg.is_set("model.init"):  # continual pretraining keeps the gentle default
        width = _width(cfg, updates)
        lr = 1e-3 if width <= 192 else 5e-4 if width <= 384 else 2.5e-4
        yield Decision("train.lr", lr, f"encoder width {width}: peak learning rate {lr:g} (AdamW, cosine)")
    if not cfg.is_set("train.warmup_steps"):
        warm = max(1, min(steps // 10, 10_000))
        yield Decision("train.warmup_steps", warm, f"{steps} steps: learning-rate warmup over the first 10%")


def _input_side(cfg: Config, facts: DataFacts, updates: dict[str, Any]) -> int:
    """The shorter side of the model input: the decided or given ``data.img_size`` when it resizes the data
    (2D images, remote-sensing chips), else the data's own size."""
    if not facts.resizable:
        return facts.side
    img = updates.get("data.img_size", cfg.data.img_size)
    return int(min(img)) if isinstance(img, list) else int(img)


def _dino_rules(cfg: Config, facts: DataFacts, device: str, updates: dict[str, Any]) -> Iterator[Decision]:
    """Head, temperatures, crops and their warmup of self-distillation (dino, mae+dino)."""
    steps, small = cfg.train.steps, _input_side(cfg, facts, updates) <= SMALL_IMAGE
    short = steps < SHORT_RUN or facts.items < 10_000
    if not cfg.is_set("model.class_token"):
        yield Decision("model.class_token", True, "self-distillation reads the class token")
    head = (256, 256, 128) if short else (4096, 1024, 256) if facts.items >= 100_000 else (1024, 1024, 256)
    where = f"{steps} steps over {facts.items} items"
    for key, value in zip(("prototypes", "head_hidden_dim", "head_bottleneck_dim"), head):
        yield Decision(f"objective.{key}", value, f"{where}: a {head[0]}-prototype head")
    if small:
        yield Decision(
            "objective.head_bn", True, f"{facts.side} px images: BatchNorm in the head (else it stays uniform)"
        )
    yield Decision("objective.teacher_temp", 0.05 if short else 0.07, f"{where}: teacher temperature")
    yield Decision("objective.warmup_teacher_temp", 0.04, "teacher temperature warmup starts at 0.04")
    yield Decision(
        "objective.teacher_temp_warmup_steps", max(1, int(0.3 * steps)), f"{steps} steps: temperature warmup over 30%"
    )
    yield Decision("objective.teacher_momentum", 0.99 if short else 0.996, f"{where}: teacher EMA momentum")
    if cfg.objective.name == "dino":
        yield Decision("objective.koleo_weight", 0.1, "KoLeo spreads the class tokens (DINOv2)")
        yield Decision("objective.ibot_weight", 1.0, "iBOT masked-patch loss beside the class-token loss")
    yield from _crop_rules(cfg, facts, device, updates)


def _crop_rules(cfg: Config, facts: DataFacts, device: str, updates: dict[str, Any]) -> Iterator[Decision]:
    """Multi-crop sizes and counts from the input and patch size."""
    side = _input_side(cfg, facts, updates)
    size = list(facts.size) if not facts.resizable else [side] * facts.spatial_dims
    patch = updates.get("model.patch_size", cfg.model.patch_size)
    patch = patch if isinstance(patch, int) else min(patch)
    local = max(2 * patch, int(round(min(size) * 96 / 224 / patch)) * patch)
    if local < min(size):
        yield Decision("objective.local_crop_size", local, f"{min(size)} px input: {local} px local crops (96/224)")
    n_local = 4 if device != "cuda" else 6
    yield Decision("objective.local_crops", n_local, f"{'GPU' if device == 'cuda' else 'CPU'}: {n_local} local crops")
    if _input_side(cfg, facts, updates) <= SMALL_IMAGE:
        yield Decision("objective.global_crop_scale", [0.4, 1.0], "small images: global crops keep 40-100%")
        yield Decision("objective.local_crop_scale", [0.1, 0.4], "small images: local crops keep 10-40%")


def _objective_rules(cfg: Config, facts: DataFacts, device: str, updates: dict[str, Any]) -> Iterator[Decision]:
    """The objective's own settings; decoder and projector sized like the CPU model when it is used."""
    parts = objective_spec(cfg.objective.name).parts
    if "dino" in parts:
        yield from _dino_rules(cfg, facts, device, updates)
    small_model = _width(cfg, updates) <= CPU_MODEL["embed_dim"]
    if "mae" in parts and small_model:
        why = "a small encoder: a one-block MAE decoder of width 64"
        yield from (Decision(f"objective.{k}", v, why) for k, v in (("decoder_dim", 64), ("decoder_depth", 1)))
    if "contrastive" in parts and small_model:
        why = "a small encoder: a 512-128 projector"
        yield from (Decision(f"objective.{k}", v, why) for k, v in (("proj_hidden_dim", 512), ("proj_dim", 128)))


# ---------------------------------------------------------------------------------------------- public
def resolve_recipe(cfg: Config, facts: DataFacts, device: str = "cpu") -> Recipe:
    """The decisions for ``cfg`` on data described by ``facts`` on ``device`` (``"cpu"`` or ``"cuda"``);
    keys the user set (:attr:`Config.explicit`) are never decided."""
    recipe = Recipe(facts=facts, device=device)
    updates: dict[str, Any] = {}

    def take(decisions: Iterator[Decision]) -> None:
        for d in decisions:
            if not cfg.is_set(d.key) and d.key not in updates:
                updates[d.key] = d.value
                recipe.decisions.append(d)

    take(_input_rules(cfg, facts))
    take(_model_rules(cfg, facts, device))
    take(_train_rules(cfg, updates))
    take(_objective_rules(cfg, facts, device, updates))
    return recipe


def apply_recipe(cfg: Config, recipe: Recipe, quiet: bool = False) -> Config:
    """Set each decided key on ``cfg`` (in place; returned), print each decision once unless ``quiet``."""
    for d in recipe.decisions:
        section, _, name = d.key.partition(".")
        target = getattr(cfg, section)
        if not hasattr(target, name):
            raise ConfigError(f"recipe: unknown key {d.key}")
        setattr(target, name, d.value)
        decide(f"recipe:{d.key}", f"recipe: {d.key}={d.value} ({d.why})", quiet=quiet)
    cfg.__dict__["_explicit"] = frozenset(cfg.explicit | {d.key for d in recipe.decisions})
    return cfg


def facts_from_dataset(dataset, resizable: bool = False, what: str = "images") -> DataFacts:
    """:class:`DataFacts` read off a built dataset (its first sample and its length); the dataset rides along.

    Example:
        >>> import torch
        >>> facts_from_dataset([{"image": torch.zeros(3, 32, 32)}] * 5)
        DataFacts(spatial_dims=2, size=(32, 32), channels=3, items=5, resizable=False, what='images')
    """
    image = dataset[0]["image"]
    return DataFacts(
        spatial_dims=image.ndim - 1,
        size=tuple(int(s) for s in image.shape[1:]),
        channels=int(image.shape[0]),
        items=len(dataset),
        resizable=resizable,
        what=what,
        dataset=dataset,
    )
