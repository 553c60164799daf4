"""The contract between the core and a domain plugin.

A domain plugin subclasses :class:`Domain`, lives in one folder, and is found through the
``domainfm.domains`` entry-point group (see ``pyproject.toml``). The core calls the methods below and
nothing else of the plugin.

Required: :meth:`Domain.dataset`, :meth:`Domain.encoder_kwargs`, :meth:`Domain.preprocessing`,
:meth:`Domain.preprocessor`. Everything else has a core default. An operation a domain does not offer
(``predict``, ``predict_as``, ``demo``, a custom fine-tuning task) raises
:class:`~domainfm.errors.UnsupportedError`: that is the one convention for "not offered". ``predict_as``
is how a model trained on objects held in memory (the ``arrays`` domain) predicts on a file domain's
files: the file domain's readers, sliding windows and writers, the model's own normalisation.

The samples a dataset yields follow :mod:`domainfm.data.sample` (``image``, ``meta``, optional
``label``/``mask``/``wavelengths``). The optional attributes a dataset may carry and the core reads
(``classes`` / ``mask_classes``, ``label_values()``, ``ignore_index``, ``items``/``files``,
``epoch_batches(epoch, batch_size, seed, rank, world_size)``, ``set_epoch(epoch)``, ``bands``,
``wavelengths``, ``spacing``, ``mpp``...) are declared once, in :data:`domainfm.contract.DATASET_ATTRIBUTES`,
and read through :func:`domainfm.contract.dataset_attribute`. A head may carry ``layers`` (the encoder blocks
it reads).

Example (a complete plugin over in-memory images; the contract test runs it like the shipped ones):
    >>> import torch
    >>> from dataclasses import dataclass
    >>> from domainfm.data.sample import make_sample
    >>> class Squares(Domain):
    ...     name = "squares"
    ...     @dataclass
    ...     class Options:
    ...         size: int = 16
    ...     def dataset(self, cfg, split):
    ...         n = self.options(cfg).size
    ...         return [make_sample(torch.rand(1, n, n), label=i % 2) for i in range(8)]
    ...     def encoder_kwargs(self, cfg, dataset=None):
    ...         return {"patch_embed": "2d", "img_size": self.options(cfg).size, "patch_size": 8, "in_chans": 1}
    ...     def preprocessing(self, cfg, dataset=None):
    ...         return {"size": self.options(cfg).size}
    ...     def preprocessor(self, card):
    ...         return lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(1, card["preprocessing"]["size"], -1)
    >>> Squares().spatial_dims(None), Squares().needs_data_path, Squares().offers("predict")
    (2, True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from domainfm.config import build_dataclass
from domainfm.data.augment import default_augment
from domainfm.data.multicrop import multicrop_from_config
from domainfm.errors import ConfigError, DataError, UnsupportedError
from domainfm.heads import default_head
from domainfm.inference import write_embeddings
from domainfm.io_safety import check_output
from domainfm.recipes import DataFacts, Decision, facts_from_dataset
from domainfm.registry import patch_embed_spatial_dims
from domainfm.runconfig import config_from_card

if TYPE_CHECKING:
    from domainfm.config import Config


#: the operations a domain may leave out, and what to call instead (said by the "not offered" error)
OPTIONAL_OPERATIONS = {
    "predict": (
        "for a fine-tuned checkpoint call model = domainfm.load(checkpoint) and model(x) (or model.logits(x)) "
        "on a batch, or domainfm.embed(checkpoint, data) for features"
    ),
    "demo": "see the domain's docs page for a worked example",
    "finetune_task": "fine-tune with one of the core tasks (classification, multilabel, segmentation)",
    "predict_as": "predict on arrays shaped like the training data: domainfm.predict(model, x)",
}


@dataclass
class NoOptions:
    """A domain without options of its own."""


@dataclass
class DomainExample:
    """Small real files of a domain, written by :meth:`Domain.example`: what the contract test (and a
    reader of the docs) runs every domain through.

    Attributes:
        config: a tiny pretraining config (a dict with ``domain``, ``data.path``, a small model).
        bad_file: a file with the domain's suffix that cannot be read (``None``: the domain reads no files).
        task: a fine-tuning task whose checkpoint ``predict`` takes (``None``: predict is not offered).
        finetune_overrides: overrides of that fine-tuning run; ``finetune_kwargs`` its extra arguments.
        embed_out: where ``embed`` writes, relative to the example folder (a file or a folder).
        predict_input: a file to predict on; ``same_geometry(input, output) -> bool`` checks the result.
    """

    config: dict
    bad_file: Path | None = None
    task: str | None = None
    finetune_overrides: list = dataclasses.field(default_factory=list)
    finetune_kwargs: dict = dataclasses.field(default_factory=dict)
    embed_out: str = "embeddings.npz"
    predict_input: Path | None = None
    predict_suffix: str = ""
    same_geometry: Callable[[Path, Path], bool] | None = None


@dataclass
class BatchOptions:
    """What ``embed`` and ``predict`` take by default: the inference batch size."""

    batch_size: int | None = None


def accept_options(given: dict, allowed: dict[str, str], operation: str) -> dict:
    """Map options onto a function's keywords; an option the operation does not take is a one-line
    :class:`~domainfm.errors.ConfigError` listing the ones it does (never a TypeError).

    Example:
        >>> accept_options({"sw_overlap": 0.5}, {"sw_overlap": "overlap"}, "predict")
        {'overlap': 0.5}
    """
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{operation} does not take {', '.join(unknown)} (it takes: "
            f"{', '.join(sorted(allowed)) or 'no options'}; preprocessing comes from the checkpoint card)"
        )
    return {allowed[k]: v for k, v in given.items()}


def operation_options(options_cls: type, given: dict, operation: str) -> dict:
    """Check ``given`` keyword options against an operation's options dataclass (names and types) and
    return the ones that were set.

    Example:
        >>> operation_options(BatchOptions, {"batch_size": 8}, "embed")
        {'batch_size': 8}
    """
    typed = build_dataclass(options_cls, given, "", f"{operation} options")
    return {f.name: getattr(typed, f.name) for f in dataclasses.fields(typed) if f.name in given}


class Domain:
    """Base class of a domain plugin.

    Attributes:
        name: registry name (``medical``, ``remote_sensing``, ``pathology``...), the entry point's name.
        Options: dataclass of the domain's data settings (``data.options`` in YAML; each field is also
            a CLI flag of ``pretrain``/``finetune``: ``target_mpp`` -> ``--target-mpp``).
        EmbedOptions, PredictOptions: dataclasses of what ``embed``/``predict`` take (their CLI flags).
        custom_tasks: fine-tuning tasks the domain runs itself with :meth:`finetune_task` (e.g. ``mil``).
        needs_data_path: whether ``data.path`` is required.
    """

    name: str = "base"
    Options: type = NoOptions
    EmbedOptions: type = BatchOptions
    PredictOptions: type = BatchOptions
    custom_tasks: tuple[str, ...] = ()
    needs_data_path: bool = True

    def __repr__(self) -> str:
        return f"<domain {self.name!r} ({type(self).__module__}.{type(self).__name__})>"

    def offers(self, operation: str) -> bool:
        """Whether this domain offers an optional operation (``predict``, ``demo``, ``finetune_task``): it
        does when its class overrides the core's "not offered" default."""
        if operation not in OPTIONAL_OPERATIONS:
            return True
        return getattr(type(self), operation) is not getattr(Domain, operation)

    def check_offered(self, operation: str) -> None:
        """The one "not offered" error (:class:`~domainfm.errors.UnsupportedError`, saying what to call
        instead), raised before any option of the operation is looked at."""
        if not self.offers(operation):
            raise UnsupportedError(f"domain {self.name!r} does not offer {operation}; {OPTIONAL_OPERATIONS[operation]}")

    # ---- required ---------------------------------------------------------------------------
    def dataset(self, cfg: Config, split: str) -> torch.utils.data.Dataset:
        """A Dataset of samples (see :mod:`domainfm.data.sample`) for ``split``.

        ``split`` is ``"pretrain"`` (unlabelled is fine), ``"train"``, ``"val"``, ``"test"`` (labelled:
        ``label`` for classification, ``mask`` for segmentation) or ``"embed"`` (every file once,
        deterministic preprocessing, labels optional). Samples are preprocessed to the model's input
        size. Random crops derive their randomness from :func:`domainfm.data.rng.item_generator`
        (seed, epoch, index) so that resume is exact.
        """
        raise UnsupportedError(f"domain {self.name!r} does not provide datasets")

    def multicrop(self, cfg: Config, img_size: list[int], local_size: list[int]):
        """Multi-crop views for an objective on multi-crop views (``dino``): ``fn(image, generator) -> [crops]``,
        with the counts and scales of ``cfg.objective`` (:class:`~domainfm.ssl.dino.MultiCropOptions`).

        Override with crops and intensity changes that fit the domain's physics (see domains/*/views.py).
        """
        return multicrop_from_config(cfg.objective, len(img_size), img_size, local_size)

    def prepare_in_memory(self, ds: Any, cfg: Config, card: dict | None = None) -> Any:
        """Data held in memory (adapted by :func:`domainfm.data.adapters.adapt`) made ready for this domain's
        model: normalised with ``card``'s statistics (fine-tuning, embedding from a checkpoint) or the data's own
        (pretraining). The default returns ``ds`` as it is.

        Example:
            >>> Domain().prepare_in_memory([1, 2], cfg=None)
            [1, 2]
        """
        return ds

    def encoder_kwargs(self, cfg: Config, dataset: Any | None = None) -> dict:
        """Keyword arguments of :func:`domainfm.build_encoder` that fit this data: at least
        ``patch_embed`` (a registered patch embed name), ``img_size``, ``patch_size`` and, for
        fixed-channel embeds, ``in_chans``."""
        raise UnsupportedError(f"domain {self.name!r} does not say which encoder fits its data")

    def preprocessing(self, cfg: Config, dataset: Any | None = None) -> dict:
        """JSON-serialisable record of how inputs were prepared (spacing, window, band stats, MPP...).

        It goes into the checkpoint card; :meth:`preprocessor` rebuilds the same preprocessing from it,
        so a loaded model is fed the way it was trained.
        """
        raise UnsupportedError(f"domain {self.name!r} does not record its preprocessing")

    def preprocessor(self, card: dict) -> Callable[..., torch.Tensor]:
        """From a card, a callable turning one input (a file path or an array) into a model-ready
        ``C x (D x) H x W`` tensor, exactly as during pretraining (it may take keyword options)."""
        raise UnsupportedError(f"domain {self.name!r} has no preprocessor")

    # ---- optional, with core defaults -------------------------------------------------------
    def options(self, cfg: Config):
        """The domain's typed options of ``cfg`` (``cfg.options`` when the config is bound)."""
        try:
            return cfg.options
        except ConfigError:
            return build_dataclass(self.Options, cfg.data.options, "data.options", cfg.source)

    def settle(self, cfg: Config, stage: str) -> list[Decision]:
        """Settings a ``stage`` run (``"pretrain"``, ``"finetune"``) takes from this domain's data, decided
        before any dataset is built: :class:`~domainfm.recipes.Decision` s (dotted key, value, why) that the
        core sets on ``cfg`` (:func:`domainfm.rundata.settle`). ``cfg`` is only read here, and ``dataset``
        never changes it. The default decides nothing.

        Example:
            >>> Domain().settle(None, "finetune")
            []
        """
        return []

    def memory_preprocessing(self, card: dict, dataset: Any) -> dict:
        """The preprocessing record of a model fine-tuned from ``card`` on data held in memory (``dataset``, as
        adapted with that card's preprocessing): by default the parent's record, which the data was prepared
        with. A domain whose record also holds what the data carries (the ``arrays`` domain's file geometry)
        completes it from ``dataset``.

        Example:
            >>> Domain().memory_preprocessing({"preprocessing": {"kind": "arrays"}}, None)
            {'kind': 'arrays'}
        """
        return card["preprocessing"]

    def spatial_dims(self, cfg: Config) -> int:
        """2 or 3: the dimensionality of this config's images (default: that of the patch embed
        :meth:`encoder_kwargs` names, as it registered)."""
        if cfg is None:
            return 2
        return patch_embed_spatial_dims(self.encoder_kwargs(cfg).get("patch_embed"))

    def data_facts(self, cfg: Config) -> DataFacts:
        """What a data-derived recipe (:mod:`domainfm.recipes`) needs to know of ``cfg``'s pretraining
        data: dimensionality, native image size, channels, number of items, and whether ``data.img_size``
        resizes the input. The default builds the pretraining dataset and reads its first sample; a domain
        that can say it more cheaply (from file headers) or that resizes overrides it."""
        dataset = self.dataset(cfg, "pretrain")
        if len(dataset) == 0:
            raise DataError(cfg.data.path, "no samples found for pretraining")
        return facts_from_dataset(dataset)

    def augment(self, cfg: Config) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """Random augmentation making the two views of contrastive pretraining:
        ``fn(image, generator) -> image`` (same shape); the generator gives all randomness."""
        return default_augment(spatial_dims=self.spatial_dims(cfg))

    def head(self, task: str, encoder: nn.Module, num_classes: int, cfg: Config) -> nn.Module:
        """The head for ``task``, called with ``encoder.forward_features(...)``."""
        return default_head(task, encoder, num_classes, cfg)

    def validate(self, model, cfg: Config) -> dict:
        """Domain metrics of a fine-tuned model on the validation data (e.g. whole-scan Dice and HD95 in
        the source geometry), merged into the card's ``val_metrics``; ``{}`` when there are none."""
        return {}

    def export_input(self, card: dict) -> dict:
        """What an exported model (ONNX, ``torch.export``; see :mod:`domainfm.deploy`) is fed, for its metadata.

        Keys: ``channels`` (names, in input order), ``pixels`` (what the input values are, in words),
        ``window`` (the sliding-window / tile size in model pixels), ``normalization`` and any geometry a
        consumer needs (``spacing_mm``, ``orientation``, ``mpp``, ``bands``, ``wavelengths_um``...).
        ``normalization`` is a per-channel ``(x - mean) / std`` the graph applies itself, then an optional
        ``clip`` to ``[lo, hi]`` and, with ``nan_to_zero``, 0 where a pixel is NaN (nodata); ``None`` when the
        preprocessing is no such per-pixel map (e.g. per-image statistics): the graph then takes model-ready
        input, and the card's record says how to make it. The default knows only what every card holds.

        Example:
            >>> Domain().export_input({"encoder": {"in_chans": 2, "img_size": [16, 16]}})["channels"]
            ['channel0', 'channel1']
        """
        enc = card.get("encoder") or {}
        count = (card.get("preprocessing") or {}).get("channels") or enc.get("in_chans") or 1
        return {
            "channels": [f"channel{i}" for i in range(int(count))],
            "pixels": "what the domain's preprocessing gives (model-ready)",
            "window": list(enc.get("img_size") or []),
            "normalization": None,
        }

    def embed(self, model, data: str | Path, out: str | Path, **options) -> Path:
        """One embedding per sample of ``data`` written to ``out`` (``.npz`` or ``.h5``)."""
        options = accept_options(options, {"batch_size": "batch_size"}, "embed")
        out = check_output(out, [data], what="embed out")  # before computing anything
        cfg = config_from_card(model.card, data=data)
        return write_embeddings(model, self.dataset(cfg, "embed"), out, batch_size=options.get("batch_size") or 32)

    # ---- optional, not offered unless overridden --------------------------------------------
    def finetune_task(self, cfg: Config, checkpoint: Path, **kwargs) -> Path:
        """Fine-tune for one of :attr:`custom_tasks` in a domain-specific way; return the checkpoint."""
        raise UnsupportedError(f"domain {self.name!r} has no task {cfg.finetune.task!r} of its own")

    def predict(self, model, input_path: str | Path, out_path: str | Path, **options) -> Path:
        """Whole-file inference (sliding window / tiles) written in the domain's own format."""
        self.check_offered("predict")
        raise UnsupportedError(f"domain {self.name!r} does not offer predict")

    def predict_as(
        self,
        model,
        input: Any,
        out_path: str | Path,
        geometry: dict,
        normalise: Callable[[torch.Tensor], torch.Tensor],
        *,
        overlap: float | None = None,
        batch_size: int | None = None,
        probabilities: bool = False,
    ) -> Path:
        """Predict, in this domain's format, for a model that another domain trained (the ``arrays`` domain's
        models of data held in memory) on objects carrying this domain's geometry.

        ``geometry`` is the record that domain's card holds (``preprocessing["geometry"]``: ``domain`` is this
        one's name, ``kind``, ``from`` (the training data, in words), and the facts the data carried: spacing
        and affine, CRS and resolution, MPP...). ``input`` is a file this domain reads, or an object of the kind
        the model was trained on (e.g. a MONAI ``MetaTensor``, a TorchGeo sample dict). This domain reads it,
        puts it on the training grid, hands each raw ``C x (D x) H x W`` window (or the whole input) to
        ``normalise`` (the model's own preprocessing, in place of this domain's recipe), runs its sliding
        windows and writes the prediction in the input's geometry. An input this domain cannot take is a
        one-line error naming it and the training data. Returns the written path (its suffix added).
        """
        self.check_offered("predict_as")
        raise UnsupportedError(f"domain {self.name!r} does not offer predict_as")

    def demo(self, out_dir: Path, quick: bool = False) -> dict:
        """Run the domain's end-to-end demo on real or generated data; return the figures."""
        self.check_offered("demo")
        raise UnsupportedError(f"domain {self.name!r} has no demo")

    def example(self, folder: Path) -> DomainExample:
        """Write small real files of this domain into ``folder`` (see :class:`DomainExample`)."""
        raise UnsupportedError(f"domain {self.name!r} has no example data")
