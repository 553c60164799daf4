"""What a domain registers to be prepared into a store and read back: :class:`StoreSpec`.

A domain plugin calls :func:`register_store_preparer` when it is imported (its ``store`` module, imported
by the plugin's ``__init__``); :func:`get_store_spec` loads the plugin through its entry point first, so a
spawned worker process finds the same entry.

The four functions a domain gives:

``list_sources(cfg) -> (settings, sources)``
    the deterministic preprocessing decisions of the config as a JSON dict (recorded in the manifest,
    passed to every worker) and the :class:`Source` list, one per file (or file group) to prepare.
``prepare_item(source, settings, writer) -> record``
    preprocess one source and write its arrays through the :class:`~domainfm.store.layout.ItemWriter`;
    return the JSON record of the item (``samples``: how many training samples it gives, plus metadata).
``read_sample(arrays, record, j, crop, rng, info) -> sample``
    sample ``j`` of an item as the domain's datasets give it, reading only the chunks the crop covers;
    ``info`` is the manifest's ``settings`` and ``summary``.
``summarize(records, settings) -> dict`` (optional)
    store-wide figures from the item records (e.g. per-band statistics over every scene).

Example:
    >>> spec = StoreSpec("toy", lambda cfg: ({}, []), lambda s, st, w: {"samples": 1}, lambda *a: {})
    >>> spec.domain, Source("a", "/data/a.nii.gz").files
    ('toy', ['/data/a.nii.gz'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domainfm.errors import ConfigError, unknown_choice
from domainfm.registry import get_domain

_SPECS: dict[str, StoreSpec] = {}


@dataclass
class Source:
    """One thing to prepare: a stable ``key`` (unique in the store), the ``path`` shown to the user, the
    ``files`` whose sizes and modification times decide whether it changed, and ``extra`` JSON the
    domain's ``prepare_item`` needs (a sensor, a label, an MPP override, sequence files)."""

    key: str
    path: str
    files: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.files:
            self.files = [str(self.path)]


@dataclass(frozen=True)
class StoreSpec:
    """The store functions of one domain (see the module docstring)."""

    domain: str
    list_sources: Callable[[Any], tuple[dict, list[Source]]]
    prepare_item: Callable[[Source, dict, Any], dict]
    read_sample: Callable[..., dict]
    summarize: Callable[[list[dict], dict], dict] | None = None


def register_store_preparer(
    domain: str,
    list_sources: Callable,
    prepare_item: Callable,
    read_sample: Callable,
    summarize: Callable | None = None,
) -> StoreSpec:
    """Register how ``domain`` is prepared into a store and read back (called by the plugin's ``store``
    module when it is imported; registering the same functions again is a no-op).

    Example:
        >>> spec = register_store_preparer("toy", lambda cfg: ({}, []), lambda *a: {"samples": 1}, lambda *a: {})
        >>> get_store_spec("toy") is spec
        True
    """
    spec = StoreSpec(domain, list_sources, prepare_item, read_sample, summarize)
    _SPECS[domain] = spec
    return spec


def get_store_spec(domain: str) -> StoreSpec:
    """The :class:`StoreSpec` of ``domain``, loading the plugin (its entry point) when needed.

    Example:
        >>> get_store_spec("synthetic")
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: domain 'synthetic' cannot be prepared into a store; domains that can: ...
    """
    if domain not in _SPECS:
        get_domain(domain)  # imports the plugin, whose store module registers itself
    if domain not in _SPECS:
        raise ConfigError(
            f"domain {domain!r} cannot be prepared into a store; "
            + unknown_choice("store domain", domain, _SPECS, "domains that can").split("; ", 1)[1]
        )
    return _SPECS[domain]


def store_domains() -> list[str]:
    """Domains registered so far (a plugin registers when it is loaded)."""
    return sorted(_SPECS)
