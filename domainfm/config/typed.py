"""Typing of config values: a mapping in, a dataclass out, each value checked against its annotation and
converted gently (``"5e-4"`` -> 0.5e-3, ``"a,b"`` -> a list); unknown keys and wrong types are one line naming
the key. Also the parser of ``key=value`` overrides and of ``--flag`` options.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opts:
    ...     size: int = 32
    ...     scale: list[float] | None = None
    >>> build_dataclass(Opts, {"size": 64.0, "scale": "0.5,1"}, "data.options", "config")
    Opts(size=64, scale=[0.5, 1.0])
    >>> build_dataclass(Opts, {"sise": 1}, "opts", "config")
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: config: unknown key opts.sise (did you mean opts.size? known: scale, size)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from domainfm.errors import ConfigError
from domainfm.utils import parse_list


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


def parse_option_flags(args: list[str], options_cls: type, owner: str) -> dict:
    """``--foo-bar VALUE`` / ``--foo-bar=VALUE`` / ``--flag`` tokens -> ``{"foo_bar": value}`` for the fields
    of ``options_cls`` (values are YAML scalars; list fields also take ``a,b,c``). The one parser of
    domain and operation flags, for every CLI command.

    Example:
        >>> from dataclasses import dataclass, field
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
