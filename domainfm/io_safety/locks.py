"""Run folders: an exclusive lock holding the holder's pid, and the leftovers of interrupted writes removed."""

from __future__ import annotations

import atexit
import logging
import os
import socket
from pathlib import Path

from domainfm.errors import ConfigError, DataError
from domainfm.io_safety.checks import check_writable_folder, os_error_text
from domainfm.io_safety.writers import _remove

log = logging.getLogger("domainfm")

LOCK_NAME = ".domainfm.lock"
_TMP_PREFIXES = (".tmp-", ".old-")


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
