"""Checkpoints: safetensors weights + a JSON card (+ trainer state), written atomically, never pickled.

A checkpoint is a folder ``ckpt-0000100/`` inside a run folder:

``model.safetensors``   the trained module's weights (and ``ema.*`` copies when EMA is on)
``card.json``           the self-describing card (domain, encoder, preprocessing, objective, versions...)
``trainer_state.safetensors`` + ``trainer_state.json``  optimizer state, step and RNG, for exact resume

It is written into a temporary folder and renamed into place, and the run's ``latest`` pointer is
replaced atomically, so a crash mid-write never leaves a half checkpoint that looks whole. A write
error (disk full, permissions) removes the temporary folder and is one line naming the checkpoint
kept before. A damaged newest checkpoint (unreadable card or safetensors) is passed over, with a
warning, for the newest intact one (:func:`latest_intact`).

Example:
    >>> import tempfile, torch
    >>> run = Path(tempfile.mkdtemp())
    >>> ck = save_checkpoint(run, 5, {"w": torch.ones(2)}, {"domain": "synthetic"})
    >>> resolve_checkpoint(run) == ck, load_card(run)["step"]
    (True, 5)
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from domainfm.card import FORMAT, Card
from domainfm.errors import CheckpointError, ConfigError
from domainfm.io_safety import os_error_text, write_json_atomic

log = logging.getLogger("domainfm.train")

_CKPT_PREFIX = "ckpt-"


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint, for the card."""
    out = {"python": platform.python_version()}
    for pkg in (
        "domainfm",
        "torch",
        "timm",
        "monai",
        "rasterio",
        "openslide-python",
        "torchgeo",
        "nibabel",
        "safetensors",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases (the same storage under several names, e.g. a shared encoder), keep contiguous copies."""
    seen: set[tuple] = set()
    out = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    card: dict,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_json: dict | None = None,
    keep_last: int = 0,
) -> Path:
    """Write a checkpoint folder atomically and point ``run_dir/latest`` at it; return its path."""
    run_dir = Path(run_dir)
    final = run_dir / f"{_CKPT_PREFIX}{step:07d}"
    tmp = run_dir / f".tmp-{final.name}-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        card = {**card, "format": FORMAT, "step": int(step)}
        card.setdefault("versions", software_versions())
        save_file(unique_tensors(tensors), str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        card["weights_sha256"] = file_sha256(tmp / "model.safetensors")  # a bit flip is found on load
        write_json_atomic(tmp / "card.json", card)
        if trainer_tensors is not None or trainer_json is not None:
            save_file(unique_tensors(trainer_tensors or {}), str(tmp / "trainer_state.safetensors"))
            write_json_atomic(tmp / "trainer_state.json", trainer_json or {})
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        before = list_checkpoints(run_dir)
        kept = f"the last checkpoint {before[-1]} is intact" if before else "no earlier checkpoint exists"
        reason = os_error_text(exc) if isinstance(exc, OSError) else f"{exc} (disk full or not writable?)"
        raise CheckpointError(f"{final}: cannot write the checkpoint: {reason}; {kept}") from None
    if final.exists():
        old = run_dir / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    try:
        write_json_atomic(run_dir / "latest.json", {"checkpoint": final.name, "step": int(step)})
    except OSError as exc:  # the checkpoint itself is complete; resolve_checkpoint finds it without the pointer
        log.warning("%s: could not update latest.json (%s)", run_dir, os_error_text(exc))
    if keep_last and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        p
        for p in run_dir.iterdir()
        if p.is_dir()
        and p.name.startswith(_CKPT_PREFIX)
        and (p / "card.json").is_file()
        and (p / "model.safetensors").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def checkpoint_problem(ckpt: str | Path, need_trainer_state: bool = False) -> str | None:
    """Why a checkpoint folder is damaged (unparsable card, truncated or corrupt safetensors,
    missing trainer state), or ``None`` when it is intact. Only headers are read.

    Example:
        >>> import tempfile, torch
        >>> ck = save_checkpoint(tempfile.mkdtemp(), 1, {"w": torch.ones(2)}, {})
        >>> checkpoint_problem(ck) is None
        True
        >>> _ = (ck / "card.json").write_text("{")
        >>> checkpoint_problem(ck)
        'card.json is not valid JSON'
    """
    ckpt = Path(ckpt)
    try:
        card = json.loads((ckpt / "card.json").read_text())
    except OSError as exc:
        return f"card.json unreadable ({os_error_text(exc)})"
    except ValueError:
        return "card.json is not valid JSON"
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        return "card.json is not a domainfm card"
    files = ["model.safetensors"] + (["trainer_state.safetensors"] if need_trainer_state else [])
    for name in files:
        try:
            with safe_open(str(ckpt / name), "pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as exc:
            return f"{name} is damaged ({str(exc).splitlines()[0][:100]})"
    if need_trainer_state:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return "trainer_state.json is missing or damaged"
    if _sha_mismatch(ckpt):
        return "model.safetensors does not match the sha256 recorded in card.json (changed on disk)"
    return None


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _incomplete_entries(run_dir: Path) -> list[tuple[Path, str]]:
    """``ckpt-*`` entries of a run that are no complete checkpoint (a dangling link, missing files)."""
    if not run_dir.is_dir():
        return []
    out = []
    for p in sorted(run_dir.iterdir()):
        if not p.name.startswith(_CKPT_PREFIX):
            continue
        if p.is_symlink() and not p.exists():
            out.append((p, "a dangling symlink"))
        elif p.is_dir() and not ((p / "card.json").is_file() and (p / "model.safetensors").is_file()):
            out.append((p, "card.json or model.safetensors is missing"))
    return out


def latest_intact(run_dir: str | Path, need_trainer_state: bool = False) -> Path | None:
    """The newest intact checkpoint of a run; damaged newer ones are skipped with a warning.

    Example:
        >>> import tempfile, torch
        >>> run = tempfile.mkdtemp()
        >>> a = save_checkpoint(run, 1, {"w": torch.ones(2)}, {}); b = save_checkpoint(run, 2, {"w": torch.ones(2)}, {})
        >>> _ = (b / "model.safetensors").write_bytes(b"broken")
        >>> latest_intact(run) == a
        True
    """
    damaged = list(_incomplete_entries(Path(run_dir)))
    found = None
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(ckpt, need_trainer_state)
        if problem is None:
            found = ckpt
            break
        damaged.append((ckpt, problem))
    for ckpt, problem in sorted(damaged):
        if found is None or ckpt.name > found.name:  # only newer ones were passed over
            fallback = f"falling back to {found}" if found is not None else "no intact checkpoint is left"
            log.warning("checkpoint %s is damaged (%s); %s", ckpt, problem, fallback)
    return found


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """A run folder that already holds checkpoints is only continued (``resume``), never overwritten."""
    existing = list_checkpoints(run_dir)
    if not resume and existing:
        raise ConfigError(
            f"{run_dir} already holds checkpoints (last: {existing[-1].name}); pass resume=True to continue "
            "that run, or another out (nothing was overwritten)"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    if (path / "card.json").is_file():
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path}: card.json is there but model.safetensors is missing")
        return path
    pointer = path / "latest.json"
    if pointer.is_file() or pointer.is_symlink():
        named = _latest_pointer(pointer)
        if named is not None:
            return named
    for folder in (path, path / "checkpoints"):  # a finetune or pretrain run may keep them one level down
        if list_checkpoints(folder):
            found = latest_intact(folder)
            if found is None:
                raise CheckpointError(f"{folder}: every checkpoint is damaged (see the warnings); nothing to load")
            return found
    raise CheckpointError(f"{path}: not a checkpoint (no card.json + model.safetensors) and no checkpoint inside")


def _latest_pointer(pointer: Path) -> Path | None:
    """The intact checkpoint ``latest.json`` names, or ``None`` (a damaged pointer or checkpoint is warned
    about; the newest intact checkpoint is then used, and named by :func:`latest_intact`)."""
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        ckpt = pointer.parent / str(name)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is damaged (not a pointer to a checkpoint); using the newest intact checkpoint", pointer)
        return None
    newer = [c for c in list_checkpoints(pointer.parent) if c.name > ckpt.name]
    if newer:  # the pointer was not updated (a failed write): the newest checkpoint is the run's last
        log.warning("%s names %s but %s is newer; using the newest intact checkpoint", pointer, ckpt.name, newer[-1])
        return None
    if any(p.name > ckpt.name for p, _ in _incomplete_entries(pointer.parent)):
        return None  # a newer broken entry (a dangling link): named with its fallback by latest_intact
    if (ckpt / "card.json").is_file() and checkpoint_problem(ckpt) is None:
        return ckpt
    if not ckpt.exists() and not ckpt.is_symlink():
        log.warning("%s names %s, which is missing; using the newest intact checkpoint", pointer, ckpt)
    return None  # a damaged one is named with its fallback by latest_intact


def load_card(path: str | Path) -> Card:
    """The typed card of a checkpoint (or of a run's latest checkpoint), through the one reader
    :meth:`domainfm.card.Card.read`."""
    return Card.read(resolve_checkpoint(path))


def load_tensors(path: str | Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, through safetensors (never pickle)."""
    ckpt = resolve_checkpoint(path)
    file = ckpt / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: unreadable safetensors file ({exc})") from None
    if name == "model.safetensors" and _sha_mismatch(ckpt):
        raise CheckpointError(
            f"{file}: damaged (it does not match the sha256 recorded in card.json); load the run folder to fall back "
            "to an intact checkpoint"
        )
    return tensors


def _sha_mismatch(ckpt: Path) -> bool:
    """Whether ``model.safetensors`` differs from the sha256 its card records (cards without one pass)."""
    try:
        recorded = json.loads((ckpt / "card.json").read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, str) and file_sha256(ckpt / "model.safetensors") != recorded


def load_module_state(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "", strict: bool = True
) -> list[str]:
    """Copy ``tensors`` (keys ``prefix + name``) into ``module``, resolving saved aliases.

    Returns the names that were not found; raises :class:`CheckpointError` on shape mismatches, or
    on missing names when ``strict``.
    """
    state = module.state_dict(keep_vars=True)
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else (name,)
        groups.setdefault(key, []).append(name)
    missing = []
    with torch.no_grad():
        for names in groups.values():
            src = next((tensors[prefix + n] for n in names if prefix + n in tensors), None)
            if src is None:
                missing.extend(names)
                continue
            dst = state[names[0]]
            if tuple(src.shape) != tuple(dst.shape):
                raise CheckpointError(
                    f"weight {prefix + names[0]} has shape {tuple(src.shape)} in the checkpoint "
                    f"but {tuple(dst.shape)} in the model"
                )
            dst.copy_(src.to(dst.dtype))
    if strict and missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} weights, e.g. {prefix + missing[0]}")
    return missing
