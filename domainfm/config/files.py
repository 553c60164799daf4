"""Config files: YAML read with duplicate keys refused and errors naming the line, relative data paths
resolved against the file's folder, and the resolved config written back (a run's ``config.yaml``)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from domainfm.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(
                    f"{self.name}: line {key_node.start_mark.line + 1}: key {key!r} is given twice (first on line "
                    f"{seen[key] + 1}); YAML would keep the last one silently: remove one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: str | Path):
    """The content of a YAML config file: invalid YAML and duplicate keys are one line naming the line.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = f.write_text("train: {steps: 2}\\ntrain: {steps: 3}\\n")
        >>> load_yaml_file(f)
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: .../c.yaml: line 2: key 'train' is given twice (first on line 1); ...
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data() or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML config file sets (only its own keys), with relative ``data.path`` and
    ``data.val_path`` resolved against the file's folder.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "ft.yaml"
        >>> _ = f.write_text("{finetune: {task: segmentation}, data: {path: labels.csv}}")
        >>> raw = read_config_file(f); raw["finetune"], raw["data"]["path"] == str(f.parent.resolve() / "labels.csv")
        ({'task': 'segmentation'}, True)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = load_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (domain, data, model, ...)")
    if isinstance(raw.get("data"), dict):
        for key in ("path", "val_path"):
            value = raw["data"].get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                raw["data"][key] = _relative_to(path.parent, value)
    return raw


def _relative_to(base_dir: Path, value: str) -> str:
    """``value`` resolved against ``base_dir``, as an absolute path (so a saved copy of the config,
    e.g. a run's ``config.yaml``, still points at the same data)."""
    return os.path.normpath((base_dir / value).resolve())
