"""CPU run-time settings that matter for BNN training speed.

A training step allocates and frees tensors of tens of megabytes (a 4096 x 4096
weight and its binarization are 64 MB each). glibc serves such blocks with
``mmap`` and returns them to the OS on ``free``, so every step page-faults its
memory in again; on a 2-core machine that doubles the step time of the paper's
MLP. :func:`retain_freed_memory` asks glibc to keep freed memory in the heap
for reuse instead. It is process-wide, so it is called explicitly by the
training CLI and the benchmarks, never at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

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
