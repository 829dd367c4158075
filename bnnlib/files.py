"""The one writer of bnnlib: :func:`atomic_write` writes every file bnnlib writes (checkpoints,
histories, records, packed models, pages, benchmark JSON), and :class:`FileLock` is the one lock.

:func:`atomic_write`: the bytes go to a temporary file in the same folder, are fsynced, then
``os.replace`` renames it over the target and the folder is fsynced, so readers see the old
file or the new one, never a part. What is already at the path must be a regular file: a
symbolic link, a device (``/dev/null``), a FIFO or a folder is refused
(:class:`UnsafePathError`), never replaced. A rewritten file keeps its permission bits; a new
one gets 0666 less the umask (not the 0600 of a temporary file). An ``OSError`` that stopped
the write (a full disk) is raised as itself even when the writing function wrapped it in
another error (``torch.save`` raises a RuntimeError), so the caller can say "free space".

Leftovers of a process killed mid-write are cleaned on the next run: a temporary
``.<name>.<random>.tmp`` once an hour old (:data:`STALE_TMP_SECONDS`; a younger one may belong
to a write still running), and the staging folders of :func:`staging_dir` (``.<name>.staging-``
and ``.<name>.old-``, named with their host and PID) as soon as their process is gone.

:class:`FileLock` (a run folder, a publish destination): an ``flock`` the kernel drops when its
holder dies, so a killed process never blocks the next one; a lock path that is a symbolic link
or not a regular file is refused, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import platform
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bnnlib.errors import BadInput

__all__ = ["atomic_write", "read_json", "STALE_TMP_SECONDS", "FileLock", "LockHeld"]
__all__ += ["UnsafePathError", "check_writable_path", "staging_dir", "remove_leftovers"]

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


class UnsafePathError(BadInput):
    """A path to write (or lock) that holds something other than a regular file."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def check_writable_path(path: str | os.PathLike) -> os.stat_result | None:
    """The ``lstat`` of what is at ``path`` (None when nothing is), or
    :class:`UnsafePathError` when it is not a regular file: a writer never replaces a
    symbolic link, a device, a FIFO or a folder with a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(
            f"{path} is {_kind(st.st_mode)}, not a regular file: bnnlib writes only regular "
            "files and does not replace it; give the path of a file (or remove it first)"
        )
    return st


class _RecordingFile(io.FileIO):
    """A file that remembers the OSError of a failed write (a full disk), which a writing
    function like ``torch.save`` may turn into another exception."""

    error: OSError | None = None

    def write(self, b) -> int | None:
        try:
            return super().write(b)
        except OSError as e:
            self.error = e
            raise


@contextlib.contextmanager
def _ctrl_c_after():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block has ended, then
    deliver it as the handler in place would have: a write is never cut by Ctrl-C half-way
    through a library's own writer (``torch.save`` reports an interrupt inside its callback
    with a traceback of its own). Only the main thread can handle signals; elsewhere a no-op."""
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        elif got and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], Any]) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    Readers see the old file or the new one, never a part: the bytes go to a temporary file in
    the same folder, are fsynced, then renamed over ``path``. If anything fails the temporary
    file is removed and ``path`` is untouched; an ``OSError`` that stopped the write is raised
    as itself. What is at ``path`` must be a regular file (else :class:`UnsafePathError`); it
    keeps its permission bits, a new file gets 0666 less the umask. Temporary files of earlier
    writes of ``path`` killed before their rename are removed once an hour old
    (:data:`STALE_TMP_SECONDS`). A Ctrl-C during the write is delivered once it is done.
    """
    with _ctrl_c_after():
        return _atomic_write(Path(path), data)


def _atomic_write(path: Path, data: bytes | Callable[[BinaryIO], Any]) -> Path:
    """:func:`atomic_write`'s work."""
    old = check_writable_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    raw = None
    try:
        mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask()
        with contextlib.suppress(OSError):  # mkstemp makes 0600
            os.fchmod(fd, mode)
        raw = _RecordingFile(fd, "wb")
        with io.BufferedWriter(raw) as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        check_writable_path(path)  # not swapped for a link or a device meanwhile
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if raw is None:
            os.close(fd)
        elif raw.error is not None and not isinstance(e, OSError):
            raise raw.error from e
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


# --------------------------------------------------------------------------- staging folders


def _me() -> str:
    """This process's tag in staging names: a hash of the host, and the PID."""
    host = hashlib.sha256(platform.node().encode()).hexdigest()[:6]
    return f"{host}-{os.getpid()}"


def _gone(tag: str) -> bool:
    """Whether the process of a staging tag (``HOST-PID``) is gone: on this host, no such PID."""
    host, _, pid = tag.partition("-")
    if host != _me().split("-")[0] or not pid.isdigit():
        return False  # another host's: only its age tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _stale(entry: os.DirEntry, tag: str | None, held: bool, cutoff: float) -> bool:
    if tag == _me():  # this process's own, whatever its age
        return False
    if held or (tag is not None and _gone(tag)):
        return True
    return entry.stat(follow_symlinks=False).st_mtime < cutoff


def remove_leftovers(parent: str | os.PathLike, name: str, held: bool = False) -> list[Path]:
    """Remove what writes of ``parent/name`` killed midway left beside it, and return it:

    * temporary files of :func:`atomic_write` (``.NAME.<random>.tmp``) older than
      :data:`STALE_TMP_SECONDS` (a younger one may be a write still running elsewhere);
    * staging folders of :func:`staging_dir` (``.NAME.staging-HOST-PID-*``, ``.NAME.old-*``)
      whose process is gone (same host, no such PID) or that are older than that.

    ``held``: the caller holds the lock every writer of ``NAME`` takes (a run folder's), so
    every leftover is stale, whatever its age or name after ``.NAME.``."""
    tmp = r"[^/]+" if held else r"[a-z0-9_]{8}"
    pattern = re.compile(
        rf"\.{re.escape(name)}\.(?:{tmp}\.tmp|(?:staging|old)-([0-9a-f]{{6}}-\d+)-.*)"
    )
    cutoff = time.time() - STALE_TMP_SECONDS
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            m = pattern.fullmatch(entry.name)
            if not m:
                continue
            tag = m.group(1)
            with contextlib.suppress(OSError):
                is_tmp = tag is None and entry.is_file(follow_symlinks=False)
                is_dir = tag is not None and entry.is_dir(follow_symlinks=False)
                if (is_tmp or is_dir) and _stale(entry, tag, held, cutoff):
                    (os.unlink if is_tmp else shutil.rmtree)(entry.path)
                    removed.append(Path(entry.path))
    return removed


def staging_dir(parent: str | os.PathLike, name: str, kind: str = "staging") -> Path:
    """A new empty folder ``parent/.NAME.KIND-HOST-PID-*`` to build ``parent/NAME`` in (then
    renamed into place), after removing the leftovers of killed builds
    (:func:`remove_leftovers`)."""
    remove_leftovers(parent, name)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{_me()}-", dir=parent))


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
    A lock path that is a symbolic link, a device or a FIFO is :class:`UnsafePathError`: its
    target is never opened, truncated or written.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd: int | None = None
        self.previous: tuple[int | None, str] = (None, "")

    def acquire(self) -> FileLock:
        import fcntl

        for _ in range(20):
            check_writable_path(self.path)
            try:  # never follows a link; never blocks on a FIFO
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644
                )
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENXIO):
                    raise
                check_writable_path(self.path)
                raise UnsafePathError(f"{self.path}: not a regular file ({e.strerror})") from e
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                mode = os.fstat(fd).st_mode
                os.close(fd)
                raise UnsafePathError(
                    f"the lock {self.path} is {_kind(mode)}, not a regular file; remove it"
                )
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
