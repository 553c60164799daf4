"""Path checks before any expensive work: an output never replaces an input or a checkpoint, the one
``exist_ok`` rule of every writer, special files (FIFOs, sockets) refused or reported, OS errors in one line."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from domainfm.errors import ConfigError, DataError

log = logging.getLogger("domainfm")

#: the words every writer's ``exist_ok`` takes: False/"error" refuses an existing output, True/"overwrite"
#: replaces it, "resume" keeps what a resumable output (a run folder, a folder of slide features) holds
EXIST_OK_WORDS = {False: "error", True: "overwrite", "error": "error", "overwrite": "overwrite", "resume": "resume"}
#: how a refused output says what to do (the CLI says ``--exist-ok``)
REPLACE_HINT = "pass exist_ok=True to replace it"
_POLICY: contextvars.ContextVar[tuple[str, tuple] | None] = contextvars.ContextVar("domainfm_exist_ok", default=None)


def _suffixes(name: str) -> str:
    """``scan.nii.gz`` -> ``.nii.gz`` (the part writers dispatch on)."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[-len(double) :]
    return Path(name).suffix


def os_error_text(exc: OSError) -> str:
    """A short reason for an OS error, with the usual fix.

    Example:
        >>> os_error_text(OSError(errno.ENOSPC, "No space left on device"))
        'disk full (No space left on device): free space or write elsewhere'
    """
    code = getattr(exc, "errno", None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return f"disk full ({reason}): free space or write elsewhere"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable ({reason}): choose a folder you can write to"
    if code == errno.ENOTDIR:
        return f"a file is in the way where a folder is needed ({reason})"
    if code == errno.EISDIR:
        return f"is a folder where a file is needed ({reason})"
    return reason


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same file: same resolved path, or same device and inode
    (hard links, bind mounts, symlinks).

    Example:
        >>> same_file("/tmp/../tmp/x", "/tmp/x")
        True
    """
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):
        pass
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def check_writable_folder(folder: str | Path, what: str = "out", report: str | Path | None = None) -> Path:
    """Make sure ``folder`` exists (creating it) and is writable; a one-line error otherwise.

    Example:
        >>> import tempfile
        >>> check_writable_folder(Path(tempfile.mkdtemp()) / "a" / "b").is_dir()
        True
    """
    folder = Path(folder)
    named = folder if report is None else Path(report)  # the path the user gave, named in the message
    # the first ancestor that exists must be a folder, and writable if something is to be created there
    probe = folder
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(named, f"{what}: {probe} is a file, but a folder is needed there; choose another path")
    if probe.is_symlink() and not probe.exists():
        raise DataError(named, f"{what}: {probe} is a dangling symlink; remove it or choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(named, f"{what}: cannot create the folder: {os_error_text(exc)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(named, f"{what}: not writable (permission denied); choose a folder you can write to")
    return folder


def exist_ok_mode(exist_ok: bool | str, resumable: bool = False) -> str:
    """``"error"``, ``"overwrite"`` or ``"resume"`` for an ``exist_ok`` argument (``True``/``False`` or
    those words); ``"resume"`` only where the output can be resumed.

    Example:
        >>> exist_ok_mode(False), exist_ok_mode(True), exist_ok_mode("resume", resumable=True)
        ('error', 'overwrite', 'resume')
    """
    mode = EXIST_OK_WORDS.get(exist_ok) if isinstance(exist_ok, (bool, str)) else None
    if mode is None or (mode == "resume" and not resumable):
        words = "True or False" + (' (or "resume")' if resumable else "")
        raise ConfigError(f"exist_ok must be {words}, got {exist_ok!r}")
    return mode


def has_output(path: str | Path) -> bool:
    """Whether ``path`` holds something a writer would replace: a file (or link), or a non-empty folder.

    Example:
        >>> import tempfile
        >>> has_output(tempfile.mkdtemp()), has_output("/nonexistent/x")
        (False, False)
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


#: the files of a checkpoint folder (what a writer never replaces)
CHECKPOINT_FILES = ("model.safetensors", "card.json", "trainer_state.safetensors", "trainer_state.json")


def checkpoint_around(path: str | Path) -> Path | None:
    """The checkpoint folder ``path`` is, holds (a run folder's ``ckpt-*``) or is a file of, or ``None``:
    what a writer never replaces.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()); (run / "ckpt-0000002").mkdir()
        >>> for name in ("card.json", "model.safetensors"):
        ...     _ = (run / "ckpt-0000002" / name).write_text("{}")
        >>> checkpoint_around(run).name, checkpoint_around(run / "ckpt-0000002" / "card.json").name
        ('ckpt-0000002', 'ckpt-0000002')
        >>> checkpoint_around(run / "embeddings.npz") is None
        True
    """
    path = Path(path)

    def is_ckpt(p: Path) -> bool:
        return (p / "card.json").is_file() and (p / "model.safetensors").is_file()

    if is_ckpt(path):
        return path
    if path.name in CHECKPOINT_FILES and is_ckpt(path.parent):
        return path.parent
    if path.is_dir() and not path.is_symlink():
        found = sorted(p for p in path.glob("ckpt-*") if is_ckpt(p))
        if found:
            return found[-1]
    return None


def refuse_replacing(
    out: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "out", checkpoint_ok: bool = False
) -> None:
    """Refuse (one-line :class:`DataError`) to replace ``out`` when it is, or holds, one of ``inputs`` or a
    checkpoint (``checkpoint_ok``: the writer itself writes checkpoints and decides)."""
    out = Path(out)
    for src in inputs:
        if not isinstance(src, (str, Path)):  # None, or data held in memory
            continue
        if same_file(out, src) or (out.is_dir() and _inside(Path(src), out)):
            raise DataError(out, f"{what} holds the input {src}; replacing it would destroy it. Choose another {what}")
    ckpt = None if checkpoint_ok else checkpoint_around(out)
    if ckpt is not None:
        raise DataError(
            out, f"{what} is or holds the checkpoint {ckpt}, which is never replaced; choose another {what}"
        )


def check_exists(
    out: str | Path,
    exist_ok: bool | str = False,
    inputs: Iterable[str | Path | None] = (),
    what: str = "out",
    resumable: bool = False,
    checkpoint_ok: bool = False,
) -> bool:
    """The one ``exist_ok`` rule of every writer, checked before any work; return whether ``out`` holds an
    output now (one the writer replaces or, with ``exist_ok="resume"``, continues).

    ``exist_ok=False`` (``"error"``) refuses an existing output (a file, or a non-empty folder; an empty
    folder is no output) with a one-line :class:`ConfigError` naming it; ``exist_ok=True``
    (``"overwrite"``) lets the writer replace it atomically, unless it is or holds one of ``inputs`` or a
    checkpoint (:func:`refuse_replacing`); ``"resume"`` is for ``resumable`` outputs only.
    """
    mode = exist_ok_mode(exist_ok, resumable)
    out = Path(out)
    for src in inputs:
        check_regular(src if isinstance(src, (str, Path)) else None)
    if not checkpoint_ok:
        check_not_in_checkpoint(out, what)
    if not has_output(out):
        return False
    if mode == "error":
        keep = ', exist_ok="resume" to keep what it holds' if resumable else ""
        raise ConfigError(f"{out} already exists; {REPLACE_HINT}{keep}, or another {what} (nothing was overwritten)")
    refuse_replacing(out, inputs, what, checkpoint_ok=checkpoint_ok or mode == "resume")
    return True


@contextlib.contextmanager
def exist_ok_policy(exist_ok: bool | str, inputs: Iterable[str | Path | None] = ()) -> Iterator[str]:
    """Within the block, every :func:`check_output` (each file a domain's writer is about to write) applies
    :func:`check_exists` with this ``exist_ok`` and these ``inputs`` (e.g. the checkpoint): how the API's
    ``exist_ok`` reaches the file names a domain derives from ``out``. Yields the mode.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "pred.tif").write_text("old")
        >>> with exist_ok_policy(False):
        ...     try:
        ...         check_output(d / "pred.tif")
        ...     except ConfigError:
        ...         print("refused")
        refused
        >>> check_output(d / "pred.tif").name   # outside the block: the writer's own rules only
        'pred.tif'
    """
    mode = exist_ok_mode(exist_ok, resumable=True)
    token = _POLICY.set((mode, tuple(i for i in inputs if i is not None)))
    try:
        yield mode
    finally:
        _POLICY.reset(token)


def existing_output(out: str | Path, inputs: Iterable[str | Path | None] = (), resumable: bool = False) -> str | None:
    """Under :func:`exist_ok_policy`: ``None`` when ``out`` holds nothing, else the mode that lets it be
    written (``"overwrite"`` or ``"resume"``; refused otherwise). Outside: ``None`` (no policy)."""
    policy = _POLICY.get()
    if policy is None:
        return None
    mode, extra = policy
    if mode == "resume" and not resumable:
        mode = "error"  # only a resumable output is continued; any other is refused as with exist_ok=False
    return mode if check_exists(out, mode, [*inputs, *extra], resumable=resumable) else None


def special_file(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (reading a FIFO waits
    forever), or ``None``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); os.mkfifo(d / "scan.nii.gz")
        >>> special_file(d / "scan.nii.gz"), special_file(d)
        ('a FIFO (named pipe)', None)
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    return "a socket" if stat.S_ISSOCK(mode) else "a device or other special file"


def check_regular(path: str | Path | None, what: str = "input") -> None:
    """Refuse (one-line :class:`DataError`) an input that is a FIFO, socket or device, before it is read."""
    if not isinstance(path, (str, Path)):
        return
    kind = special_file(path)
    if kind:
        raise DataError(path, f"{what} is {kind}, not a regular file or folder; reading it would wait forever")


def check_not_in_checkpoint(out: str | Path, what: str = "out") -> None:
    """Refuse an output inside a checkpoint folder or named like a checkpoint's own file (``card.json``...)."""
    out = Path(out)
    if out.name in CHECKPOINT_FILES:
        raise DataError(out, f"{what} is named like a checkpoint's own file ({out.name}); choose another name")
    for parent in list(out.parents)[:3]:
        if (parent / "card.json").is_file() and (parent / "model.safetensors").is_file():
            raise DataError(out, f"{what} lies inside the checkpoint {parent}, which is never changed; choose another")


#: what embeddings are written as (a name without a suffix is a folder: one file per slide)
EMBED_SUFFIXES = (".npz", ".h5", ".hdf5")


def check_embed_suffix(out: str | Path) -> None:
    """Refuse an embeddings output whose suffix no reader takes (``emb.txt`` would be an npz named .txt).

    Example:
        >>> check_embed_suffix("emb.npz"), check_embed_suffix("features")
        (None, None)
    """
    out = Path(out)
    if out.suffix and out.suffix.lower() not in EMBED_SUFFIXES and not out.is_dir():
        raise ConfigError(
            f"{out}: embeddings are written as {', '.join(EMBED_SUFFIXES)} (or into a folder for slides); "
            "name the output file with one of those suffixes"
        )


def check_output(
    out: str | Path,
    inputs: Iterable[str | Path | None] = (),
    what: str = "out",
    folder: bool = False,
    resumable: bool = False,
) -> Path:
    """Check an output path before expensive work; return it.

    Refused (one-line :class:`DataError`): ``out`` is one of ``inputs`` (resolved path or inode), an
    existing folder where a file is written (``folder=False``) or a file where a folder is written
    (``folder=True``), under a file, or not writable. With ``folder=True`` nothing in ``inputs`` may
    lie inside ``out``'s files either (checked by the writer per file). Under :func:`exist_ok_policy`
    an existing output is also refused unless ``exist_ok`` allows it (``resumable``: a folder a writer
    continues, such as slide features).
    """
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        check_regular(src)  # a FIFO would hang the reader
        if same_file(out, src):
            raise DataError(
                out, f"{what} is the input {src}; writing there would destroy it. Choose another output path"
            )
    check_not_in_checkpoint(out, what)
    if folder:
        if out.exists() and not out.is_dir():
            raise DataError(out, f"{what} is a file, but a folder is needed; choose another path")
        check_writable_folder(out, what)
    else:
        if out.is_dir():
            raise DataError(out, f"{what} is an existing folder, but a file is written here; give a file name")
        check_writable_folder(out.parent, what, report=out)
    existing_output(out, inputs, resumable)
    return out


def refuse_input_overwrite(out: str | Path, inputs: Iterable[str | Path | None], what: str = "out") -> None:
    """Refuse to write ``out`` when it is one of ``inputs`` (used for every file a writer produces).

    Example:
        >>> refuse_input_overwrite("/tmp/a.tif", ["/tmp/b.tif"])
    """
    for src in inputs:
        if src is not None and same_file(out, src):
            raise DataError(out, f"{what} would overwrite the input {src}; choose another output path")


def report_dangling(folder: str | Path, recursive: bool = False, suffixes: Iterable[str] = ()) -> list[Path]:
    """Warn (once per call) about what data discovery skips in ``folder``: symlinks whose target is gone,
    FIFOs/sockets/devices, and (with ``suffixes``) folders named like data files; return them, so nothing is
    skipped without a word.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "gone.nii.gz").symlink_to(d / "missing.nii.gz")
        >>> [p.name for p in report_dangling(d)]
        ['gone.nii.gz']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    entries = list(folder.rglob("*") if recursive else folder.iterdir())
    dangling = sorted(p for p in entries if p.is_symlink() and not p.exists())
    special = sorted(p for p in entries if special_file(p))
    odd_dirs = sorted(p for p in entries if suffixes and p.is_dir() and p.name.lower().endswith(tuple(suffixes)))
    groups = (
        (dangling, "dangling symlink(s) whose target is missing"),
        (special, "FIFO(s) or other special file(s), not regular files"),
        (odd_dirs, "folder(s) named like data files"),
    )
    for group, kind in groups:
        key = (str(folder), kind, tuple(p.name for p in group))
        if group and key not in _REPORTED:  # discovery runs more than once per command: say it once
            _REPORTED.add(key)
            shown = ", ".join(p.name for p in group[:5]) + (" ..." if len(group) > 5 else "")
            log.warning("%s: skipped %d %s: %s", folder, len(group), kind, shown)
    return dangling + special + odd_dirs


_REPORTED: set[tuple] = set()
