"""The ``objective`` section of a config: the objective's ``name``, the fields every objective shares, and the
options the objective registered (``register_objective(name, options=SomeOptions)``, a dataclass).

The section stays flat in YAML and on the command line (``objective.mask_ratio=0.6``); it is typed by the named
objective's options, so ``cfg.objective.mask_ratio`` reads like any dataclass field and a new objective brings
its settings without a change here. A key no registered objective declares is one line naming
``objective.<key>`` and the closest known key; a key of another objective (a config written for ``mae`` run with
``--objective dino``, a card of an older version holding every objective's settings) is left out.

Example:
    >>> import domainfm.ssl  # registers the built-in objectives
    >>> section = build_objective_config({"name": "dino", "prototypes": 64, "mask_ratio": 0.6}, "objective", "config")
    >>> section.name, section.prototypes, section.local_crops, hasattr(section, "mask_ratio")
    ('dino', 64, 6, False)
    >>> ObjectiveConfig(name="mae", mask_ratio=0.5).decoder_dim
    128
    >>> build_objective_config({"name": "mae", "mask_ration": 0.5}, "objective", "config")
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: config: unknown key objective.mask_ration (did you mean objective.mask_ratio? ...)
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from domainfm.config.typed import _as_str, build_dataclass
from domainfm.errors import ConfigError, did_you_mean
from domainfm.registry import ObjectiveSpec, list_objectives, objective_spec, objective_specs


@dataclass
class ObjectiveConfig:
    """Pretraining objective: its ``name`` (``mae``, ``contrastive``, ``mae+contrastive``, ``dino``, ``mae+dino`` or
    one a plugin registered) and the fields every objective shares; an instance is of the objective's section
    class, which adds the options the objective registered (``ObjectiveConfig(name="dino", prototypes=64)``
    builds one).

    ``mae_crop_scale``: for an objective on the images themselves (``views="none"``, e.g. ``mae``), a random
    resized crop keeping this share of the area (X-ray MAE: ``[0.5, 1.0]``); ``None``: the whole image.
    """

    name: str = "mae"
    mae_crop_scale: list[float] | None = None

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is ObjectiveConfig:
            name = kwargs.get("name", args[0] if args else "mae")
            try:
                cls = objective_section(name)
            except ConfigError:  # not registered (yet): the common fields only; check_objective names it
                pass
        return object.__new__(cls)

    def __reduce__(self):
        return (_objective_from_dict, (dataclasses.asdict(self),))


def _objective_from_dict(values: dict) -> ObjectiveConfig:
    return ObjectiveConfig(**values)


_SECTIONS: dict[type, type] = {}


def objective_section(name: str) -> type:
    """The section class of the objective ``name``: :class:`ObjectiveConfig` with the objective's registered
    options (a one-line error with the closest name for an unknown objective).

    Example:
        >>> import domainfm.ssl  # registers the built-in objectives
        >>> [f.name for f in dataclasses.fields(objective_section("mae"))]
        ['name', 'mae_crop_scale', 'mask_ratio', 'norm_pix_loss', 'decoder_dim', 'decoder_depth', 'decoder_heads']
    """
    return _section_of(objective_spec(name))


def _section_of(spec: ObjectiveSpec) -> type:
    options = spec.options
    if options is None:
        return ObjectiveConfig
    if options not in _SECTIONS:
        section = type(f"{options.__name__}Config", (options, ObjectiveConfig), {"__module__": __name__})
        _SECTIONS[options] = dataclass(section)
    return _SECTIONS[options]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def check_objective_name(name: str, key: str = "objective", source: str = "config") -> None:
    """A one-line :class:`~domainfm.errors.ConfigError` naming ``objective.name`` when no objective of that name is
    registered."""
    if name not in list_objectives():
        raise ConfigError(
            f"{source}: {key}.name must be one of {', '.join(list_objectives())}, got {name!r}"
            + did_you_mean(name, list_objectives())
        )


def _unknown_key_error(keys: list, own: set[str], known: set[str], name: str, key: str, source: str) -> ConfigError:
    bad = str(keys[0])
    close = difflib.get_close_matches(bad, sorted(own), n=1) or difflib.get_close_matches(bad, sorted(known), n=1)
    hint = f"did you mean {key}.{close[0]}? " if close else ""
    return ConfigError(f"{source}: unknown key {key}.{bad} ({hint}known for {name}: {', '.join(sorted(own))})")


def build_objective_config(data: Any, key: str = "objective", source: str = "config") -> ObjectiveConfig:
    """The typed ``objective`` section from a mapping: ``name`` picks the objective, whose options type the rest;
    keys of other registered objectives are left out, keys of none are an error; then each options class's own
    ``check()`` (values out of range) runs."""
    if isinstance(data, ObjectiveConfig):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {key} must be a mapping, got {data!r}")
    name = _as_str(data.get("name", "mae"), f"{key}.name", source)
    check_objective_name(name, key, source)
    section = objective_section(name)
    own = _field_names(section)
    known = set(own).union(*(_field_names(_section_of(spec)) for spec in objective_specs()))
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise _unknown_key_error(unknown, own, known, name, key, source)
    cfg = build_dataclass(section, {k: v for k, v in data.items() if k in own}, key, source)
    for klass in type(cfg).__mro__:
        check = klass.__dict__.get("check")
        if check is not None:
            try:
                check(cfg)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    return cfg
