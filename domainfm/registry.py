"""Name tables: encoders, objectives, heads, patch embeds and domains (timm-style registration).

The registry imports nothing of the kit but its errors. A module registers its entries when it is
imported (``@register_encoder("vit-tiny")`` in :mod:`domainfm.models.encoder`); domain plugins are
found through the ``domainfm.domains`` entry-point group, the one discovery path for domains, and
may register their own patch embeds, heads and objectives by name when they are imported.

Example:
    >>> import domainfm.models  # registers the built-in encoder sizes and patch embeds
    >>> "vit-tiny" in list_encoders(), "2d" in list_patch_embeds()
    (True, True)
    >>> get_encoder_arch("vit-smal")
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: unknown encoder 'vit-smal' (did you mean 'vit-small'?); choose one of: vit-base, ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from importlib.metadata import entry_points
from typing import Any

from domainfm.errors import ConfigError, unknown_choice

DOMAIN_ENTRY_POINT_GROUP = "domainfm.domains"

_TABLES: dict[str, dict[str, Any]] = {"encoder": {}, "objective": {}, "head": {}, "patch embed": {}}
_DOMAIN_CLASSES: dict[str, Any] = {}
_DOMAIN_INSTANCES: dict[str, Any] = {}


def _register(kind: str, name: str) -> Callable:
    table = _TABLES[kind]

    def deco(fn):
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def _lookup(kind: str, name: str):
    table = _TABLES[kind]
    if name not in table:
        raise ConfigError(unknown_choice(kind, name, table))
    return table[name]


def register_encoder(name: str):
    """Decorator: register an encoder size (a function returning a dict of ViT hyper-parameters)."""
    return _register("encoder", name)


@dataclass(frozen=True)
class ObjectiveSpec:
    """What an objective needs from the data and the run, declared where it registers.

    ``views``: ``"none"`` (the images themselves), ``"pair"`` (two augmented views, the domain's ``augment``)
    or ``"multicrop"`` (global and local crops, the domain's ``multicrop``). ``min_batch``: samples a batch
    needs (2 when the other samples are the negatives). ``parts``: the objectives it combines (its own name
    when it is one). ``options``: the dataclass of its own settings (the ``objective`` section of a config
    beside ``name``; :class:`domainfm.config.ObjectiveConfig` types and checks it), ``None`` when it has none.
    """

    name: str
    build: Callable
    views: str = "none"
    min_batch: int = 1
    parts: tuple[str, ...] = ()
    options: type | None = None


_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str, *, views: str = "none", min_batch: int = 1, parts: tuple[str, ...] = (), options: type | None = None
):
    """Decorator: register a pretraining objective factory ``fn(encoder, cfg) -> nn.Module`` with what it needs
    (:class:`ObjectiveSpec`); ``cfg`` is the typed ``objective`` section (its ``options`` fields and ``name``).

    Example:
        >>> import domainfm.ssl  # registers the built-in objectives
        >>> spec = objective_spec("mae+dino")
        >>> spec.views, spec.parts, spec.options.__name__
        ('multicrop', ('mae', 'dino'), 'MAEDINOOptions')
    """
    if views not in ("none", "pair", "multicrop"):
        raise ValueError(f"objective {name!r}: views must be none, pair or multicrop, got {views!r}")
    if options is not None and not is_dataclass(options):
        raise ValueError(f"objective {name!r}: options must be a dataclass, got {options!r}")
    register = _register("objective", name)

    def deco(fn):
        register(fn)
        _OBJECTIVES[name] = ObjectiveSpec(name, fn, views, int(min_batch), tuple(parts) or (name,), options)
        return fn

    return deco


def objective_spec(name: str) -> ObjectiveSpec:
    """The :class:`ObjectiveSpec` of a registered objective (a one-line error with the closest name otherwise)."""
    _lookup("objective", name)
    return _OBJECTIVES[name]


def objective_specs() -> list[ObjectiveSpec]:
    """Every registered :class:`ObjectiveSpec`, by name."""
    return [_OBJECTIVES[name] for name in sorted(_OBJECTIVES)]


def register_head(name: str):
    """Decorator: register a downstream head factory."""
    return _register("head", name)


_PATCH_EMBED_DIMS: dict[str, int] = {}


def register_patch_embed(name: str, *, spatial_dims: int = 2):
    """Decorator: register a patch embed class ``cls(embed_dim, patch_size, in_chans)`` and the number of
    spatial axes of its input (2: ``B x C x H x W``, 3: ``B x C x D x H x W``); a plugin can bring its own
    token maker this way without touching the core."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"patch embed {name!r}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    register = _register("patch embed", name)

    def deco(fn):
        register(fn)
        _PATCH_EMBED_DIMS[name] = spatial_dims
        return fn

    return deco


def patch_embed_spatial_dims(name: str | None) -> int:
    """2 or 3: the spatial axes of the input of the patch embed ``name`` as it registered (``None``: the
    default ``2d``).

    Example:
        >>> import domainfm.models  # registers the built-in patch embeds
        >>> patch_embed_spatial_dims("3d"), patch_embed_spatial_dims("wavelength"), patch_embed_spatial_dims(None)
        (3, 2, 2)
    """
    name = name or "2d"
    _lookup("patch embed", name)
    return _PATCH_EMBED_DIMS[name]


def get_encoder_arch(name: str):
    return _lookup("encoder", name)


def get_objective(name: str):
    return _lookup("objective", name)


def get_head(name: str):
    return _lookup("head", name)


def get_patch_embed(name: str):
    return _lookup("patch embed", name)


def list_encoders() -> list[str]:
    return sorted(_TABLES["encoder"])


def list_objectives() -> list[str]:
    return sorted(_TABLES["objective"])


def list_heads() -> list[str]:
    return sorted(_TABLES["head"])


def list_patch_embeds() -> list[str]:
    return sorted(_TABLES["patch embed"])


def _domain_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=DOMAIN_ENTRY_POINT_GROUP)}


def list_domains() -> list[str]:
    """Names of the installed domains (their ``domainfm.domains`` entry points)."""
    return sorted(set(_domain_entry_points()) | set(_DOMAIN_CLASSES))


def loaded_domains() -> list[Any]:
    """The domain plugins loaded in this process so far (asking loads no entry point)."""
    return list(_DOMAIN_INSTANCES.values())


def add_domain(name: str, cls: Any) -> None:
    """Make a domain class available under ``name`` without an entry point (tests, notebooks).

    Installed plugins are found through entry points; this is for a domain defined in a session.
    """
    _DOMAIN_CLASSES[name] = cls
    _DOMAIN_INSTANCES.pop(name, None)


def get_domain(name: str):
    """Return the (singleton) plugin of the domain ``name``, loading its entry point on first use."""
    if name in _DOMAIN_INSTANCES:
        return _DOMAIN_INSTANCES[name]
    if name not in _DOMAIN_CLASSES:
        ep = _domain_entry_points().get(name)
        if ep is None:
            raise ConfigError(unknown_choice("domain", name, list_domains(), "installed domains"))
        try:
            _DOMAIN_CLASSES[name] = ep.load()
        except Exception as exc:  # a broken or half-installed plugin must not break the others
            raise ConfigError(
                f"domain {name!r} could not be imported ({type(exc).__name__}: {exc}); "
                f"install its extra: pip install 'domainfm[{name.replace('_', '-')}]'"
            ) from None
    _DOMAIN_INSTANCES[name] = _DOMAIN_CLASSES[name]()
    return _DOMAIN_INSTANCES[name]
