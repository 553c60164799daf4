"""A run's config bound to its domain: :func:`load_config` and :func:`config_from_card`.

:func:`domainfm.config.parse_config` checks the schema; this adds what only the domain knows: its
typed ``data.options`` (the plugin's ``Options`` dataclass) and whether ``data.path`` is required.

Example:
    >>> cfg = load_config({"domain": "synthetic", "data": {"options": {"channels": 2}}})
    >>> cfg.options.channels, cfg.data.options["channels"]
    (2, 2)
    >>> load_config({"domain": "synthetic", "data": {"options": {"colour": 1}}})
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: config: unknown key data.options.colour (known: channels, noise, ...)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from domainfm.config import Config, build_dataclass, parse_config
from domainfm.errors import ConfigError
from domainfm.io_safety import check_regular
from domainfm.registry import get_domain


def bind_domain(cfg: Config, check_paths: bool = True) -> Config:
    """Check ``cfg`` against its domain plugin and attach the plugin's typed options."""
    name = cfg.source
    try:
        domain = get_domain(cfg.domain)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    cfg.bind_options(build_dataclass(domain.Options, cfg.data.options, "data.options", name))
    if check_paths:
        for key in ("path", "val_path"):
            value = getattr(cfg.data, key)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{name}: data.{key} {value} does not exist")
            check_regular(value, f"data.{key}")  # a FIFO would make the reader wait forever
        if cfg.data.path is None and domain.needs_data_path:
            raise ConfigError(f"{name}: data.path is required for domain {cfg.domain!r} (a folder or a manifest CSV)")
    return cfg


def load_config(
    source=None, overrides: Iterable[str] = (), updates: dict | None = None, check_paths: bool = True
) -> Config:
    """Load a config (YAML path, dict or :class:`~domainfm.config.Config`) and bind it to its domain.

    ``overrides`` are ``key=value`` strings, ``updates`` a nested dict merged on top; with
    ``check_paths`` the data paths must exist. A config already bound, with nothing to change, is
    returned as it is (it is not read twice).
    """
    overrides = list(overrides)
    if isinstance(source, Config) and not overrides and not updates and "_options_cls" in source.__dict__:
        return source
    return bind_domain(parse_config(source, overrides=list(overrides), updates=updates), check_paths=check_paths)


def config_from_card(
    card: dict,
    data: str | Path | None = None,
    overrides: Iterable[str] = (),
    updates: dict | None = None,
    check_paths: bool = True,
) -> Config:
    """The run config stored in a checkpoint card, with a new data path and overrides applied."""
    upd = {k: dict(v) if isinstance(v, dict) else v for k, v in (updates or {}).items()}
    if data is not None:
        upd.setdefault("data", {})["path"] = str(data)
    return load_config(card["config"], overrides=list(overrides), updates=upd, check_paths=check_paths)
