"""The machine a figure was measured on, the device to run on, and safe file writes.

Every reported number names its hardware: :func:`hardware` gives one line (the
CPU model and cores, or the GPU), :func:`describe_machine` a dict for JSON
with the CPU flags that decide the popcount kernels' speed (AVX2, AVX-512,
VPOPCNTDQ), the library versions and the date.

:func:`retain_freed_memory` is the glibc ``malloc`` setting that halves CPU
training steps. A step allocates and frees tensors of tens of megabytes (a
4096 x 4096 weight and its binarization are 64 MB each); glibc serves such
blocks with ``mmap`` and returns them to the OS on ``free``, so every step
page-faults its memory in again. It is process-wide, so the training CLI and
the benchmarks call it explicitly, never at import.

:func:`atomic_write` is the one way bnnlib writes a file that must never be
seen half-written (checkpoints, histories, records, packed models, benchmark
JSON): a temporary file in the same folder, fsync, ``os.replace``, fsync of
the folder. The file gets the mode any new file gets, 0666 less the umask (not
the 0600 of a temporary file). A write killed before its rename leaves its
temporary ``.<name>.<random>.tmp``; the next write of the same path removes such
leftovers once they are an hour old (:data:`STALE_TMP_SECONDS`; younger ones may
belong to a write still running in another process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_write",
    "cpu_model",
    "cpu_flags",
    "hardware",
    "describe_machine",
    "select_device",
    "retain_freed_memory",
    "POPCOUNT_FLAGS",
    "STALE_TMP_SECONDS",
]

#: The CPU flags that matter for XNOR-popcount speed, reported with every figure.
POPCOUNT_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq")


# --------------------------------------------------------------------------- files


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


# --------------------------------------------------------------------------- the machine


def _cpuinfo_field(name: str) -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    return (
        _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"
    )


def cpu_flags(wanted: tuple[str, ...] = POPCOUNT_FLAGS) -> list[str]:
    """Which of ``wanted`` this CPU reports (empty where ``/proc/cpuinfo`` is missing)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in wanted if f in flags]


def hardware(device: Any = None) -> str:
    """One line naming the hardware: the CPU (cores, flags), or the GPU when ``device`` is CUDA."""
    flags = ", ".join(cpu_flags()) or "no popcount flags"
    cpu = f"CPU: {cpu_model()} ({os.cpu_count()} logical cores; {flags})"
    if device is not None and str(device).startswith("cuda"):
        import torch

        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}; {cpu}"
    return cpu


def describe_machine() -> dict:
    """Where a figure was measured, as plain values for JSON."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def select_device(choice: str = "auto"):
    """``torch.device`` to run on: ``"auto"`` takes the GPU when there is one, else the CPU.

    Prints which path runs (and why not the GPU), so an executed notebook says it.
    ``choice="cuda"`` without a GPU is an error naming the fix.
    """
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device choice {choice!r}: use 'auto', 'cpu' or 'cuda'")
    has_gpu = torch.cuda.is_available()
    if choice == "cuda" and not has_gpu:
        raise RuntimeError("DEVICE = 'cuda' but torch sees no CUDA GPU; set DEVICE = 'auto'")
    device = torch.device("cuda" if choice != "cpu" and has_gpu else "cpu")
    why = "" if device.type == "cuda" or choice == "cpu" else " (no CUDA GPU found)"
    print(f"running on the {device.type.upper()} path{why}: {hardware(device)}")
    return device


# --------------------------------------------------------------------------- malloc

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Keep freed blocks in the heap (glibc ``mallopt``); returns False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
