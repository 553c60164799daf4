"""Nothing is lost: outputs never replace inputs, run folders are locked, writes are atomic and checked.

* :func:`check_output` — before any expensive work, refuse an output path that is (or would replace)
  one of the inputs (same resolved path or same inode), that sits under a file, or whose folder is
  not writable; one-line :class:`~domainfm.errors.DataError` naming the path.
* :func:`check_exists` — the one ``exist_ok`` rule of every writer (``import_weights``, ``embed``,
  ``predict``, ``evaluate``'s ``out``, the export): an existing output is refused in one line that names it
  and says "pass exist_ok=True to replace it"; with ``exist_ok=True`` it is replaced atomically by the
  writer, but never when it is, or holds, an input or a checkpoint. :func:`exist_ok_policy` applies the
  same rule to the file names a domain's writer derives from ``out`` (through :func:`check_output`).
* :func:`atomic_output` — write to a temporary name in the same folder and rename at the end, so an
  interrupted writer never leaves a file that looks complete; write errors (disk full, permissions)
  become one line.
* :class:`RunLock` — a lock file with the holder's pid in a run folder; a second process is refused
  with that pid, a lock left by a dead process is taken over.
* :func:`clean_stale_tmp` — remove ``.tmp-*`` / ``.old-*`` leftovers of interrupted checkpoint writes.

Example:
    >>> import tempfile, os
    >>> d = Path(tempfile.mkdtemp()); src = d / "scan.nii.gz"; _ = src.write_bytes(b"x")
    >>> check_output(d / "pred.nii.gz", [src]).name
    'pred.nii.gz'
    >>> try:
    ...     check_output(d / "scan.nii.gz", [src])
    ... except DataError as e:
    ...     print("refused")
    refused
    >>> with atomic_output(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text(), sorted(p.name for p in d.iterdir() if ".tmp" in p.name)
    ('done', [])
    >>> check_exists(d / "out.txt", exist_ok=False)
    Traceback (most recent call last):
    ...
    domainfm.errors.ConfigError: .../out.txt already exists; pass exist_ok=True to replace it, or another out (...)
    >>> check_exists(d / "out.txt", exist_ok=True), check_exists(d / "new.txt")
    (True, False)
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import errno
import json
import logging
import os
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.errors import ConfigError, DataError

log = logging.getLogger("domainfm")

LOCK_NAME = ".domainfm.lock"
_TMP_PREFIXES = (".tmp-", ".old-")

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


def temp_name(final: str | Path) -> Path:
    """A temporary name next to ``final`` that keeps its suffix (writers pick formats by suffix).

    Example:
        >>> temp_name("/data/pred.nii.gz").name.endswith(".nii.gz")
        True
    """
    final = Path(final)
    suffix = _suffixes(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    return final.with_name(f".tmp-{stem}-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_output(final: str | Path, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it to ``final`` (atomic), on any
    error (or Ctrl-C) delete it, so no half-written file ever carries the final name.

    OS errors while writing (disk full, permissions) become a one-line :class:`DataError`.
    """
    final = Path(final)
    refuse_input_overwrite(final, inputs)
    tmp = temp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise DataError(final, "the writer produced no file")
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        raise DataError(final, f"cannot write: {os_error_text(exc)}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: ``<run>/.domainfm.lock`` holding ``pid host``.

    Re-entrant within one process (the API takes it before writing ``config.yaml``, the engine
    again around training). A lock whose process is gone (same host) is taken over with a warning.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> with RunLock(run):
        ...     (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        True
        >>> (run / LOCK_NAME).exists()
        False
    """

    _held: dict[str, int] = {}  # resolved run folder -> re-entry count in this process

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME

    def _key(self) -> str:
        return str(self.run_dir.resolve())

    def acquire(self) -> RunLock:
        key = self._key()
        if RunLock._held.get(key):
            RunLock._held[key] += 1
            return self
        check_writable_folder(self.run_dir, "out")
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = self._holder()
                if pid == os.getpid() and host == socket.gethostname():
                    break  # ours (e.g. taken by the API in this process before)
                if host == socket.gethostname() and not _pid_alive(pid):
                    log.warning("%s: taking over a stale lock of process %s (no longer running)", self.run_dir, pid)
                    _remove(self.path)
                    continue
                where = f" on {host}" if host and host != socket.gethostname() else ""
                raise ConfigError(
                    f"{self.run_dir} is in use by another domainfm process (pid {pid}{where}); wait for "
                    f"it to finish, stop it, or choose another out (lock file {self.path})"
                ) from None
            except OSError as exc:
                raise DataError(self.run_dir, f"cannot create the run lock: {os_error_text(exc)}") from None
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(me)
                break
        RunLock._held[key] = 1
        return self

    def _holder(self) -> tuple[int, str]:
        try:
            parts = self.path.read_text().split()
            return int(parts[0]), (parts[1] if len(parts) > 1 else "")
        except (OSError, ValueError, IndexError):
            return -1, socket.gethostname()  # unreadable / half-written: treat as stale

    def release(self) -> None:
        key = self._key()
        count = RunLock._held.get(key, 0)
        if count > 1:
            RunLock._held[key] = count - 1
            return
        RunLock._held.pop(key, None)
        pid, _ = self._holder()
        if pid == os.getpid():
            _remove(self.path)

    def release_all(self) -> None:
        """Drop every re-entry of this process's lock (the end of a run)."""
        RunLock._held[self._key()] = 1
        self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@atexit.register
def _release_locks_at_exit() -> None:
    for key in list(RunLock._held):
        RunLock(key).release_all()


def lock_run(run_dir: str | Path) -> RunLock:
    """Take (or re-enter) the lock of ``run_dir`` for this process; see :class:`RunLock`.

    Example:
        >>> import tempfile
        >>> lock = lock_run(tempfile.mkdtemp()); lock.release()
    """
    return RunLock(run_dir).acquire()


def clean_stale_tmp(run_dir: str | Path) -> list[str]:
    """Remove ``.tmp-*`` / ``.old-*`` leftovers of interrupted writes in ``run_dir`` (call with the run
    lock held, so no live writer owns them); return their names.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()); (run / ".tmp-ckpt-0000010-123").mkdir()
        >>> clean_stale_tmp(run)
        ['.tmp-ckpt-0000010-123']
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for p in sorted(run_dir.iterdir()):
        if p.name.startswith(_TMP_PREFIXES):
            _remove(p)
            removed.append(p.name)
    if removed:
        log.warning("%s: removed %d leftover(s) of interrupted writes: %s", run_dir, len(removed), ", ".join(removed))
    return removed


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy values and paths converted), atomically and synced to disk."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_arrays_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays to ``.npz``, or to ``.h5``/``.hdf5`` (strings stored as bytes), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py  # optional heavy dependency, only for HDF5 outputs

            with h5py.File(tmp, "w") as f:
                for key, value in arrays.items():
                    value = np.asarray(value)
                    f.create_dataset(key, data=value.astype("S") if value.dtype.kind == "U" else value)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path
