"""Safe file writes: :func:`atomic_write` is the one way bnnlib writes a file that must never
be seen half-written (checkpoints, histories, records, packed models, benchmark JSON).

The bytes go to a temporary file in the same folder, are fsynced, then ``os.replace`` renames
it over the target and the folder is fsynced. The file gets the mode any new file gets, 0666
less the umask (not the 0600 of a temporary file). A write killed before its rename leaves its
temporary ``.<name>.<random>.tmp``; the next write of the same path removes such leftovers once
they are an hour old (:data:`STALE_TMP_SECONDS`; younger ones may belong to a write still
running in another process).

:class:`FileLock` is the one lock bnnlib takes (a run folder, a publish destination): an
``flock`` the kernel drops when its holder dies, so a killed process never blocks the next one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "read_json", "STALE_TMP_SECONDS", "FileLock", "LockHeld"]

#: Age after which a leftover ``.<name>.<random>.tmp`` of an interrupted write is removed.
STALE_TMP_SECONDS = 3600


def _umask() -> int:
    """The process umask, read without changing it where Linux tells (/proc), else set back."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_tmp(path: Path) -> None:
    """Remove ``.<name>.<random>.tmp`` siblings of ``path`` (mkstemp's names, as below) left by
    writes killed before their rename, once older than :data:`STALE_TMP_SECONDS`."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    cutoff = time.time() - STALE_TMP_SECONDS
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], Any]) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    Readers see the old file or the new one, never a part: the bytes go to a
    temporary file in the same folder, are fsynced, then renamed over ``path``.
    If anything fails the temporary file is removed and ``path`` is untouched.
    The file's mode is 0666 less the umask, as for any new file. Temporary files
    of earlier writes of ``path`` that were killed before their rename are removed
    once an hour old (:data:`STALE_TMP_SECONDS`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with contextlib.suppress(OSError):  # mkstemp makes 0600; a new file is 0666 & ~umask
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


# --------------------------------------------------------------------------- locks


class LockHeld(RuntimeError):
    """Another process holds the lock (``pid`` and ``host`` as it wrote them, if readable)."""

    def __init__(self, path: Path, pid: int | None, host: str):
        self.path, self.pid, self.host = path, pid, host
        who = f"process {pid}" + (f" on {host}" if host else "") if pid else "another process"
        super().__init__(f"{path} is held by {who}")


def _holder(fd: int) -> tuple[int | None, str]:
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 256).decode(errors="replace").split()
    try:
        return int(words[0]), (words[1] if len(words) > 1 else "")
    except (IndexError, ValueError):
        return None, ""


class FileLock:
    """An exclusive lock on ``path`` held with ``flock``: the kernel releases it when the
    holder exits in any way (SIGKILL, SIGTERM, a power cut of the process), so there is no
    stale lock to take over and no PID to trust. The file holds the holder's PID and host for
    messages; :meth:`release` removes it. Taking it is atomic (no check-then-act): after the
    ``flock`` succeeds the path is checked to still name the locked file (a releaser may have
    unlinked it meanwhile), else it is taken again.

    ``acquire()`` raises :class:`LockHeld` at once when another process holds it;
    ``previous`` is the (PID, host) a holder that died without releasing left in the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd: int | None = None
        self.previous: tuple[int | None, str] = (None, "")

    def acquire(self) -> FileLock:
        import fcntl
        import platform

        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, host = _holder(fd)
                os.close(fd)
                raise LockHeld(self.path, pid, host) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # unlinked by its last holder between our open and flock
                os.close(fd)
                continue
            self.previous = _holder(fd)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {platform.node()}\n".encode())
            self.fd = fd
            return self
        raise LockHeld(self.path, None, "")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink first, then unlock: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a damaged file (truncated, not UTF-8, not JSON) is a
    :class:`ValueError` naming the file."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}); the file is damaged or truncated"
        ) from None
