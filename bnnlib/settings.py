"""Process-wide settings, read in one place.

The environment variables that configure bnnlib are named and read here (torchrun's
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and CUDA's ``CUDA_HOME`` are read where they are used,
by the protocols they belong to; benchmarks record a few others with their figures):

* ``BNN_DATA_DIR``: the data root when none is given (:data:`DATA_DIR_VAR`);
* ``BNN_RESULTS_DIR``: the committed ``results/`` folder (:data:`RESULTS_DIR_VAR`);
* ``BNN_RECORD_FILE``: where a notebook's :func:`bnnlib.book.record.record` writes
  (:data:`RECORD_FILE_VAR`);
* ``BNN_BOOK_RUN``: set by ``python -m bnnlib.book`` while it runs the notebooks
  (:func:`book_run`: figures then embed what the exported HTML page needs);
* ``NUMBA_NUM_THREADS``: checked before the kernels import numba (:func:`check_numba_threads`);
  numba's threads are started with them, keeping torch's thread count (:func:`start_numba_threads`);
* ``OMP_WAIT_POLICY``: ``PASSIVE`` makes idle OpenMP threads sleep; the fused packed MLP then
  stays on one thread (:func:`omp_passive`).

:func:`retain_freed_memory` is the glibc ``malloc`` setting that halves CPU training steps. A
step allocates and frees tensors of tens of megabytes (a 4096 x 4096 weight and its binarization
are 64 MB each); glibc serves such blocks with ``mmap`` and returns them to the OS on ``free``,
so every step page-faults its memory in again. It is process-wide, so the training CLI and the
benchmarks call it explicitly, never at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

__all__ = [
    "DATA_DIR_VAR",
    "RESULTS_DIR_VAR",
    "RECORD_FILE_VAR",
    "BOOK_RUN_VAR",
    "book_run",
    "data_dir",
    "results_dir_override",
    "record_file",
    "omp_passive",
    "check_numba_threads",
    "start_numba_threads",
    "retain_freed_memory",
]

DATA_DIR_VAR = "BNN_DATA_DIR"
RESULTS_DIR_VAR = "BNN_RESULTS_DIR"
RECORD_FILE_VAR = "BNN_RECORD_FILE"
BOOK_RUN_VAR = "BNN_BOOK_RUN"


def _path_var(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def data_dir() -> Path | None:
    """``$BNN_DATA_DIR`` as a path, None when unset or empty."""
    return _path_var(DATA_DIR_VAR)


def results_dir_override() -> Path | None:
    """``$BNN_RESULTS_DIR`` as a path, None when unset or empty."""
    return _path_var(RESULTS_DIR_VAR)


def record_file() -> Path | None:
    """``$BNN_RECORD_FILE`` as a path, None when unset or empty."""
    return _path_var(RECORD_FILE_VAR)


def book_run() -> bool:
    """True while ``python -m bnnlib.book`` executes the notebooks (``$BNN_BOOK_RUN`` set)."""
    return bool(os.environ.get(BOOK_RUN_VAR))


def check_numba_threads() -> None:
    """``NUMBA_NUM_THREADS``, if set, must be an integer >= 1: numba's own import fails deep
    inside otherwise, without naming the variable. Called before the kernels import numba."""
    value = os.environ.get("NUMBA_NUM_THREADS")
    if value is None or value.strip() == "":
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"NUMBA_NUM_THREADS={value!r}: must be an integer >= 1 (1 keeps the CPU kernels on "
            "one thread); unset it for all cores"
        )


def start_numba_threads() -> None:
    """Start numba's threads now and keep torch's thread count as it was.

    numba's OpenMP threading layer, when its threads start (its first parallel kernel), sets
    the thread count of the OpenMP runtime it shares with torch to its own (``NUMBA_NUM_THREADS``,
    default: every core). A process run with ``OMP_NUM_THREADS=1`` (or ``torch.set_num_threads``)
    then ran torch's products on more threads from that moment on, and torch's float32 GEMMs
    round differently with another thread count: a training run's first step and a resumed
    run's first step were computed with one count, the rest with another. The kernels call
    this when imported, so torch keeps the count it was given."""
    import numba
    import torch

    count = torch.get_num_threads()
    numba.get_num_threads()  # starts numba's threads (its threading layer)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def omp_passive() -> bool:
    """True when ``OMP_WAIT_POLICY`` is ``PASSIVE`` (idle OpenMP threads sleep)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


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
