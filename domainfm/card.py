"""The card a checkpoint carries: :class:`Card`, its one builder (:func:`build_card`) and its one reader
(:meth:`Card.read`).

A card is the JSON written next to ``model.safetensors`` (``card.json``, and inside an exported file): the
domain, the encoder's constructor arguments, the objective, the exact preprocessing, the config, the data
it saw, the task and classes of a fine-tuned model, and the provenance (parent checkpoint, recipe, learning
verdict, compute, software versions). In the core it is typed: sections are attributes. Sections the core
does not know (a plugin's own, e.g. pathology's ``mil``) are kept in :attr:`Card.extra` and survive a round
trip. A card is also readable (and writable) as a mapping by its JSON keys, for plugins that read
``card["preprocessing"]``: a section that is unset (``None``) is not among its keys, ``card.get(key, default)``
gives ``default`` for it, and ``card[key]`` gives ``None``.

Cards written before ``schema_version`` existed are version 1; their missing sections read as ``None``.

Example:
    >>> card = Card(domain="synthetic", preprocessing={"spatial_dims": 2}, extra={"mil": {"default": "abmil"}})
    >>> card.preprocessing["spatial_dims"], card["preprocessing"]["spatial_dims"], card.get("task", "none")
    (2, 2, 'none')
    >>> again = Card.from_json(card.to_json())
    >>> again == card, again["mil"], again.schema_version == SCHEMA_VERSION
    (True, {'default': 'abmil'}, True)
    >>> Card.from_dict({"domain": "synthetic", "encoder": {"depth": 1}}).schema_version   # an old card
    1
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from domainfm.contract import dataset_attribute
from domainfm.data.adapters import describe
from domainfm.errors import CheckpointError

#: the layout of the sections below; cards without the field are version 1
SCHEMA_VERSION = 2
#: the checkpoint format a card on disk declares (the same string :mod:`domainfm.train.checkpoint` writes)
FORMAT = "domainfm-checkpoint/1"


@dataclasses.dataclass(eq=True)
class Card(MutableMapping):
    """A checkpoint's self-description, typed; readable as the mapping of its JSON keys (see the module doc).

    Example:
        >>> card = Card(domain="synthetic", task="classification", num_classes=2)
        >>> card.task, "task" in card, "lora" in card, card["lora"], sorted(card)[:3]
        ('classification', True, False, None, ['domain', 'num_classes', 'schema_version'])
        >>> card["mil"] = {"default": "abmil"}      # a plugin's own section
        >>> card.extra
        {'mil': {'default': 'abmil'}}
    """

    #: the domain plugin that reads, preprocesses and writes its data
    domain: str | None = None
    #: ``pretrain``, ``finetune``, ``import`` (weights brought in), or a plugin's own
    stage: str | None = None
    #: the encoder's constructor arguments (``build_encoder(**card.encoder)``)
    encoder: dict | None = None
    #: the pretraining objective's options
    objective: dict | None = None
    #: the domain's preprocessing record (normalisation, spacing, bands, channels, spatial dims...)
    preprocessing: dict | None = None
    #: the run's whole config
    config: dict | None = None
    #: the data it saw: ``path``, ``num_samples`` and, for data held in memory, ``source``
    data: dict | None = None
    #: the task of a fine-tuned model (``classification``, ``segmentation``...), else ``None``
    task: str | None = None
    num_classes: int | None = None
    classes: list | None = None
    #: contiguous training indices back to the data's label ids
    class_map: dict | None = None
    #: the checkpoint a fine-tuned model started from
    parent: str | None = None
    #: where ``model.init`` took the encoder from
    init: dict | None = None
    #: the data-derived recipe's facts and decisions
    recipe: dict | None = None
    lora: dict | None = None
    #: whether the weights file holds EMA copies (``ema.*``) that ``load`` uses
    ema: bool | None = None
    #: validation metrics of a fine-tuned model
    val_metrics: dict | None = None
    #: the learning check's verdict
    learning: dict | None = None
    #: what the run cost (wall/CPU seconds, device, ranks)
    compute: dict | None = None
    created: str | None = None
    #: written with the checkpoint: format, step, software versions, sha256 of the weights
    format: str | None = None
    step: int | None = None
    versions: dict | None = None
    weights_sha256: str | None = None
    #: the export record of a card inside an exported file (``.onnx``/``.pt2``)
    export: dict | None = None
    schema_version: int = SCHEMA_VERSION
    #: sections the core does not know (a plugin's own), kept as they are
    extra: dict = dataclasses.field(default_factory=dict)

    # ---------------------------------------------------------------------------------- mapping view
    def _is_field(self, key: str) -> bool:
        return key in _FIELDS

    def __getitem__(self, key: str) -> Any:
        if self._is_field(key):
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self._is_field(key):
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if self._is_field(key):
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from (name for name in _FIELDS if getattr(self, name) is not None)
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and self._is_field(key):
            return getattr(self, key) is not None
        return key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        """The section ``key``, or ``default`` when it is unset."""
        value = self[key] if key in self else None
        return default if value is None else value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The section ``key``, set to ``default`` first when it is unset (as ``dict.setdefault``)."""
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        """Unset the section ``key`` and return it (``default`` when it is unset; ``KeyError`` without one)."""
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    # ---------------------------------------------------------------------------------- conversions
    def to_dict(self) -> dict:
        """The card as the JSON object it is stored as (unset sections left out, a plugin's sections kept).

        Example:
            >>> Card(domain="synthetic", extra={"mil": {}}).to_dict()
            {'domain': 'synthetic', 'schema_version': 2, 'mil': {}}
        """
        return {key: self[key] for key in self}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Card:
        """A card from its JSON object (or another card, copied); keys the core does not know go to
        :attr:`extra`, and a card without ``schema_version`` is version 1. Nothing is validated here
        (:func:`domainfm.model.check_card` says what a loadable card needs).

        Example:
            >>> card = Card.from_dict({"domain": "medical", "task": None, "mil": 1})
            >>> card.domain, card.task, card.extra, card.schema_version
            ('medical', None, {'mil': 1}, 1)
        """
        data = dict(data or {})
        fields = {k: data.pop(k) for k in list(data) if k in _FIELDS}
        fields.setdefault("schema_version", 1)  # written before the field existed
        return cls(**fields, extra=data)

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text (numpy values and paths converted)."""
        return json.dumps(self.to_dict(), indent=indent, default=_plain)

    @classmethod
    def from_json(cls, text: str) -> Card:
        """A card from JSON text; ``ValueError`` when the text is no JSON object.

        Example:
            >>> Card.from_json('{"domain": "synthetic", "schema_version": 2}').domain
            'synthetic'
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a card is a JSON object, not {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> Card:
        """The card of a checkpoint folder (its ``card.json``) or of a ``card.json`` file: the one reader of
        cards on disk. A missing, unparsable or foreign card is a one-line :class:`CheckpointError`.

        Example:
            >>> import tempfile
            >>> folder = Path(tempfile.mkdtemp())
            >>> _ = (folder / "card.json").write_text('{"format": "domainfm-checkpoint/1", "domain": "synthetic"}')
            >>> Card.read(folder).domain
            'synthetic'
        """
        path = Path(path)
        file = path / "card.json" if path.is_dir() else path
        try:
            card = cls.from_json(file.read_text())
        except OSError as exc:
            raise CheckpointError(f"{file}: unreadable ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise CheckpointError(f"{file}: not valid JSON ({exc})") from None
        if card.format != FORMAT:
            raise CheckpointError(f"{file.parent}: unknown checkpoint format {card.format!r} (expected {FORMAT})")
        return card


_FIELDS = tuple(f.name for f in dataclasses.fields(Card) if f.name != "extra")


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: numpy values (``tolist``), anything else as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def data_record(cfg, dataset, in_memory: bool = False) -> dict:
    """The card's ``data``: the path and sample count, for data held in memory what it was (``source``), and
    for a prepared store its record (``store``: path, sources, software versions)."""
    record = {"path": cfg.data.path, "num_samples": len(dataset) if dataset is not None else 0}
    if in_memory:
        record["source"] = describe(dataset.profile) if hasattr(dataset, "profile") else None
    store = dataset_attribute(dataset, "store") if dataset is not None else None
    if store is not None:
        record["store"] = store
    return record


def build_card(
    cfg,
    domain,
    encoder,
    dataset,
    stage: str,
    *,
    base: Mapping | None = None,
    preprocessing: dict | None = None,
    in_memory: bool = False,
    **sections,
) -> Card:
    """The card of a checkpoint this run writes, complete before the first write.

    The run sets ``domain``, ``stage``, ``encoder`` (``encoder.config``), ``config``, ``preprocessing`` (the
    domain's record for ``dataset`` unless given) and ``data``; a new card also gets ``objective`` and
    ``created``. ``base`` is the card the run starts from (fine-tuning: the pretrained checkpoint's), whose
    other sections (objective, recipe, a plugin's own...) carry over. ``sections`` set any other section by
    its JSON key (``task=...``, ``recipe=...``, a plugin's own).

    Example:
        >>> from domainfm.models import build_encoder
        >>> from domainfm.registry import get_domain
        >>> from domainfm.runconfig import load_config
        >>> cfg = load_config({"domain": "synthetic"})
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
        >>> card = build_card(cfg, get_domain("synthetic"), enc, [0] * 8, "pretrain", recipe={"decisions": []})
        >>> card.stage, card.encoder["depth"], card.data["num_samples"], card.recipe, card.schema_version
        ('pretrain', 1, 8, {'decisions': []}, 2)
        >>> tuned = build_card(cfg, get_domain("synthetic"), enc, [0] * 4, "finetune", base=card, task="classification")
        >>> tuned.task, tuned.recipe, tuned.created == card.created
        ('classification', {'decisions': []}, True)
    """
    if base is not None:
        card = Card.from_dict(base)
    else:
        card = Card(
            objective=dataclasses.asdict(cfg.objective),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
    card.schema_version = SCHEMA_VERSION
    card.domain, card.stage = cfg.domain, stage
    card.encoder = dict(encoder.config)
    card.preprocessing = preprocessing if preprocessing is not None else domain.preprocessing(cfg, dataset)
    card.config = cfg.to_dict()  # after preprocessing: a domain may record statistics it settled there
    card.data = data_record(cfg, dataset, in_memory)
    for key, value in sections.items():
        card[key] = value
    return card
