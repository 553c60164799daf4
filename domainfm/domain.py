"""The contract between the core and a domain plugin.

A domain plugin subclasses :class:`Domain`, is exposed through the ``domainfm.domains`` entry-point
group (see ``pyproject.toml``), and answers the questions below. The core calls these methods and
nothing else of the plugin; a new modality is a new plugin and no core change.

Example (a minimal plugin):
    >>> from dataclasses import dataclass
    >>> class MyDomain(Domain):
    ...     name = "mine"
    ...     @dataclass
    ...     class Options:
    ...         channels: int = 1
    ...     def dataset(self, cfg, split):
    ...         ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from domainfm.errors import UnsupportedError

if TYPE_CHECKING:
    from domainfm.config import Config


@dataclass
class NoOptions:
    """A domain without options of its own."""


def accept_options(given: dict, allowed: dict[str, str], operation: str) -> dict:
    """Map CLI/API options onto a function's keywords; an option the operation does not take is a
    one-line :class:`~domainfm.errors.ConfigError` listing the ones it does (never a TypeError).

    Example:
        >>> accept_options({"sw_overlap": 0.5}, {"sw_overlap": "overlap"}, "predict")
        {'overlap': 0.5}
    """
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        from domainfm.errors import ConfigError
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(allowed)) or "none"
        raise ConfigError(f"{operation} takes the preprocessing from the checkpoint card; it does not take "
                          f"{', '.join('--' + k.replace('_', '-') for k in unknown)} (options it takes: {flags})")
    return {allowed[k]: v for k, v in given.items()}


class Domain:
    """Base class of a domain plugin.

    Attributes:
        name: registry name (``medical``, ``remote_sensing``, ``pathology``...).
        Options: dataclass of the domain's own settings (``data.options`` in YAML; each field is also
            a CLI flag: ``target_mpp`` -> ``--target-mpp``).
        spatial_dims: 2 or 3 (may depend on options; see :meth:`encoder_kwargs`).
        needs_data_path: whether ``data.path`` is required.
    """

    name: str = "base"
    Options: type = NoOptions
    needs_data_path: bool = True

    # ---- data -------------------------------------------------------------------------------
    def dataset(self, cfg: "Config", split: str) -> torch.utils.data.Dataset:
        """A Dataset of samples (see :mod:`domainfm.data.sample`) for ``split``.

        ``split`` is ``"pretrain"`` (unlabelled is fine), ``"train"``, ``"val"``, ``"test"`` or ``"embed"``
        (every file once, deterministic preprocessing, labels optional: used by ``embed``),
        (labelled; ``label`` for classification, ``mask`` for segmentation). Samples must already be
        preprocessed to the model's input size. Random crops derive their randomness from
        :func:`domainfm.data.rng.item_generator` (seed, epoch, index) so that resume is exact.
        """
        raise UnsupportedError(f"domain {self.name!r} does not provide datasets")

    def augment(self, cfg: "Config") -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """Random augmentation used to make the two views of contrastive pretraining.

        Returns ``fn(image, generator) -> image`` (same shape); the generator gives all randomness.
        """
        from domainfm.data.augment import default_augment
        return default_augment(spatial_dims=3 if self.encoder_kwargs(cfg).get("patch_embed") == "3d" else 2)

    def multicrop(self, cfg: "Config", img_size: list[int], local_size: list[int]):
        """Multi-crop views for self-distillation (``dino``): ``fn(image, generator) -> [crops]``.

        Override with crops and intensity changes that fit the domain's physics (see domains/*/views.py).
        """
        from domainfm.data.multicrop import multicrop_from_config
        return multicrop_from_config(cfg.objective, len(img_size), img_size, local_size)

    def encoder_kwargs(self, cfg: "Config", dataset: Any | None = None) -> dict:
        """Keyword arguments of :func:`domainfm.build_encoder` that fit this data.

        At least ``patch_embed`` (``2d|3d|wavelength``), ``img_size``, ``patch_size`` and, for
        fixed-channel embeds, ``in_chans``.
        """
        return {"patch_embed": cfg.model.patch_embed or "2d", "img_size": cfg.data.img_size,
                "patch_size": cfg.model.patch_size, "in_chans": cfg.data.in_chans or 1}

    def preprocessing(self, cfg: "Config", dataset: Any | None = None) -> dict:
        """JSON-serialisable record of how inputs were prepared (spacing, window, band stats, MPP...).

        It goes into the checkpoint card; :meth:`preprocessor` rebuilds the same preprocessing
        from it, so a loaded model is fed the way it was trained.
        """
        return {}

    def preprocessor(self, card: dict) -> Callable[[Any], torch.Tensor]:
        """From a card, a callable turning one input (a file path or an array) into a model-ready
        ``C x (D x) H x W`` tensor, exactly as during pretraining."""
        raise UnsupportedError(f"domain {self.name!r} has no preprocessor")

    # ---- downstream -------------------------------------------------------------------------
    def head(self, task: str, encoder: nn.Module, num_classes: int, cfg: "Config") -> nn.Module:
        """The head for ``task``; called as ``head(tokens_or_layers, image_shape)`` by the core."""
        from domainfm.heads import default_head
        return default_head(task, encoder, num_classes, cfg)

    def finetune(self, cfg: "Config", checkpoint: Path, **kwargs) -> Path | None:
        """Override to fine-tune in a domain-specific way (e.g. MIL over slide features).

        Return ``None`` to use the core's generic supervised fine-tuning.
        """
        return None

    def validate(self, model, cfg: "Config") -> dict | None:
        """Optional domain metrics of a fine-tuned model on the validation data (e.g. whole-scan
        Dice and HD95 in the source geometry); merged into the card's ``val_metrics``."""
        return None

    def write(self, prediction: torch.Tensor | Any, sample: dict, path: str | Path) -> Path:
        """Write a prediction back in the domain's own format (NIfTI, GeoTIFF, heatmap PNG...)."""
        raise UnsupportedError(f"domain {self.name!r} has no writer")

    def predict(self, model, input_path: str | Path, out_path: str | Path, **kwargs) -> Path:
        """Whole-file inference (sliding window / tiles) written with :meth:`write`."""
        raise UnsupportedError(f"domain {self.name!r} does not support predict")

    def embed(self, model, data: str | Path, out: str | Path, **kwargs) -> Path:
        """One embedding per file (scan, scene, slide tile) of ``data`` written to ``out``.

        The default embeds each sample of the ``"test"``-less dataset built from ``data``.
        """
        from domainfm.api import embed_dataset_to_file
        options = accept_options(kwargs, {"batch_size": "batch_size"}, "embed")
        return embed_dataset_to_file(model, self, data, out, **options)

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        """Run the domain's end-to-end demo on real or generated data; return the figures."""
        raise UnsupportedError(f"domain {self.name!r} has no demo")

