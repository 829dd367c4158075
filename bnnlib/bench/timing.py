"""The one timer of the benchmarks: the median of repeated runs after warm-up.

GPU work is queued, not done, when a call returns, so a wall clock read right after
``fn()`` would time the launch. :func:`timeit` therefore waits for the device (``sync``)
before each clock read: before the start, so that earlier work is not counted, and before
the stop, so that ``fn``'s own work is. :func:`cuda_timeit` times on the GPU itself with
CUDA events recorded around ``fn`` (no host-side launch overhead in the figure).

Both return ``{"median_s": ..., "times_s": [...]}``, seconds; the median is robust to the
odd slow run that other load on a shared machine causes.

>>> t = timeit(lambda: sum(range(1000)), repeats=3)
>>> len(t["times_s"]), t["median_s"] >= 0
(3, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["timeit", "cuda_timeit", "device_sync"]


def device_sync(device: str | torch.device = "cpu") -> Callable[[], None] | None:
    """The function that waits for ``device``'s queued work: ``torch.cuda.synchronize`` on a
    CUDA device, None on the CPU (nothing to wait for)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def timeit(
    fn: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    *,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Median (and all) wall times of ``fn()`` in seconds, after ``warmup`` untimed calls.

    ``sync`` (default: :func:`device_sync` of ``device``) runs after the warm-up and before
    every clock read; ``clock`` is the time source (``time.perf_counter``).
    """
    if sync is None:
        sync = device_sync(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        times.append(clock() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def cuda_timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Median (and all) GPU times of ``fn()`` in seconds, measured with CUDA events on the
    current stream, after ``warmup`` untimed calls and a device synchronize."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return {"median_s": statistics.median(times), "times_s": times}
