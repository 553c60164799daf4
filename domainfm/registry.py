"""Registries: encoders, objectives, heads and domains by name (timm-style).

Third-party packages add domains through the ``domainfm.domains`` entry-point group, so the core
never imports a domain by name: ``get_domain("medical")`` finds it through its entry point.

Example:
    >>> from domainfm.registry import register_encoder, list_encoders
    >>> "vit-tiny" in list_encoders()
    True
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable

from domainfm.errors import ConfigError

_ENCODERS: dict[str, Callable[..., Any]] = {}
_OBJECTIVES: dict[str, Callable[..., Any]] = {}
_HEADS: dict[str, Callable[..., Any]] = {}
_DOMAINS: dict[str, Any] = {}


def _register(table: dict, kind: str, name: str):
    def deco(fn):
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn
    return deco


def register_encoder(name: str):
    """Decorator: register an encoder architecture (returns a dict of ViT hyper-parameters)."""
    return _register(_ENCODERS, "encoder", name)


def register_objective(name: str):
    """Decorator: register a pretraining objective factory ``fn(encoder, cfg) -> nn.Module``."""
    return _register(_OBJECTIVES, "objective", name)


def register_head(name: str):
    """Decorator: register a downstream head factory."""
    return _register(_HEADS, "head", name)


def register_domain(name: str):
    """Decorator: register a domain plugin class (instantiated lazily on first use)."""
    return _register(_DOMAINS, "domain", name)


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]


def get_encoder_arch(name: str):
    import domainfm.models.encoder  # noqa: F401  (registers the built-in sizes)
    return _lookup(_ENCODERS, "encoder", name)


def get_objective(name: str):
    import domainfm.ssl  # noqa: F401
    return _lookup(_OBJECTIVES, "objective", name)


def get_head(name: str):
    import domainfm.heads  # noqa: F401
    return _lookup(_HEADS, "head", name)


def list_encoders() -> list[str]:
    import domainfm.models.encoder  # noqa: F401
    return sorted(_ENCODERS)


def list_objectives() -> list[str]:
    import domainfm.ssl  # noqa: F401
    return sorted(_OBJECTIVES)


def list_heads() -> list[str]:
    import domainfm.heads  # noqa: F401
    return sorted(_HEADS)


_INSTANCES: dict[str, Any] = {}


def _load_domain_entry_points(only: str | None = None) -> None:
    for ep in entry_points(group="domainfm.domains"):
        if ep.name in _DOMAINS or (only is not None and ep.name != only):
            continue
        try:
            _DOMAINS[ep.name] = ep.load()
        except Exception as exc:  # a broken or half-installed plugin must not break the others
            _DOMAINS[ep.name] = exc


def list_domains() -> list[str]:
    """Names of the built-in and installed (entry point) domains."""
    import domainfm.synthetic  # noqa: F401  (the built-in toy domain)
    names = set(_DOMAINS) | {ep.name for ep in entry_points(group="domainfm.domains")}
    return sorted(names)


def get_domain(name: str):
    """Return the (singleton) domain plugin registered as ``name``."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    import domainfm.synthetic  # noqa: F401
    if name not in _DOMAINS:
        _load_domain_entry_points(only=name)
    if name not in _DOMAINS:
        raise ConfigError(f"unknown domain {name!r}; installed domains: {', '.join(list_domains())}")
    cls = _DOMAINS[name]
    if isinstance(cls, Exception):
        raise ConfigError(f"domain {name!r} could not be imported: {type(cls).__name__}: {cls}")
    _INSTANCES[name] = cls()
    return _INSTANCES[name]
