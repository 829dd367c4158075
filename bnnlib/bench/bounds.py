"""The machine's limits a packed-inference figure is set against, measured in the same run.

* **Weight-streaming floor** (:func:`stream_floor`): at batch 1 a packed MLP reads every packed
  weight once per image, so no runtime can beat the time to read those bytes once, *with the
  same threads*. The floor is a compiled XOR-reduction over the weight arrays the fused path
  reads (vectorized loads, nothing else), on all numba threads (words split between them, as
  the fused path splits a layer) and on one thread; weights that stay in the caches between
  calls, as the network's do. The old floor (a numpy reduction) ran on one thread only.
* **Compute bound** (:func:`popcount_bound`): the binary multiply-accumulates one core retires
  per cycle in an XOR-popcount-add loop over L1-resident words (8 independent accumulators,
  vectorized: ``vpopcntq`` on AVX-512 VPOPCNTDQ, a byte-table popcount on AVX2), times the
  clock, times the threads. The loop is numba's, i.e. what LLVM makes of it; the same work
  written by hand in C (:func:`hand_written_popcount`: the popcount instruction, three AVX2
  table popcounts including Harley-Seal, ``vpopcntq`` where the compiler targets it, and the
  bit-sliced kernel a lone image's hidden layers take, :mod:`bnnlib.kernels.native`) is
  timed beside it when a C compiler is at hand, and the bound is the best of them. The clock is
  measured (:func:`clock_hz`): a dependent chain of ``x = (x ^ c) + (x >> 1)`` (two 1-cycle
  ops per iteration) timed in thread CPU time; the nominal clock from ``/proc/cpuinfo`` is
  reported beside it. A kernel's GMAC/s over this bound is the share of the machine's
  XOR-popcount throughput it reaches.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources

import numba
import numpy as np

from bnnlib.kernels import native
from bnnlib.kernels.xnor import popcount

__all__ = ["stream_floor", "stream_reads", "popcount_bound", "hand_written_popcount", "clock_hz"]

_JIT = {"fastmath": True, "boundscheck": False, "nogil": True, "cache": False}


@numba.njit(**_JIT)
def _xor_words(w, lo, hi):
    acc = np.int64(0)
    for i in range(lo, hi):
        acc ^= w[i]
    return acc


@numba.njit(parallel=True, **_JIT)
def _stream_parallel(w, parts, chunk):
    """XOR of every word of ``w``: one parallel region, chunks of ``chunk`` words per task."""
    n = w.shape[0]
    for c in numba.prange(parts.shape[0]):
        parts[c] = _xor_words(w, c * chunk, min(n, c * chunk + chunk))
    total = np.int64(0)
    for c in range(parts.shape[0]):
        total ^= parts[c]
    return total


@numba.njit(**_JIT)
def _stream_serial(w):
    return _xor_words(w, 0, w.shape[0])


def _median_s(fn, repeats: int) -> float:
    for _ in range(max(2, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stream_reads(arrays: list[np.ndarray]) -> dict[str, Callable[[], object]]:
    """The two reads :func:`stream_floor` times, as calls (``all_threads``, ``one_thread``):
    ``arrays`` (int64 words) copied, one after the other, into one buffer (the same bytes,
    one parallel region per read)."""
    w = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.int64) for a in arrays])
    chunk = max(512, -(-w.shape[0] // (4 * numba.get_num_threads())))
    parts = np.zeros(-(-w.shape[0] // chunk), np.int64)
    return {
        "all_threads": lambda: _stream_parallel(w, parts, chunk),
        "one_thread": lambda: _stream_serial(w),
    }


def stream_floor(
    arrays: list[np.ndarray], repeats: int = 2000, ms: dict[str, float] | None = None
) -> dict:
    """ms to read ``arrays`` (int64 words) once: on all numba threads and on one thread,
    each the median of ``repeats`` reads after warm-up; or, given ``ms``, those two figures as
    a caller timed the calls of :func:`stream_reads` (e.g. interleaved with other work)."""
    if ms is None:
        ms = {k: 1e3 * _median_s(fn, repeats) for k, fn in stream_reads(arrays).items()}
    nbytes = sum(int(a.nbytes) for a in arrays)
    return {
        "ms": ms,
        "bytes": nbytes,
        "threads": numba.get_num_threads(),
        "GB_per_s": {k: nbytes / v / 1e6 for k, v in ms.items()},
        "how": "compiled XOR-reduction over the packed weight words the fused path reads; "
        "median of repeats after warm-up, weights cache-resident between calls",
    }


@numba.njit(**_JIT)
def _dependent_chain(n, x):
    c = np.int64(0x5DEECE66D)
    for _ in range(n):
        x = (x ^ c) + (x >> 1)
    return x


def clock_hz(iterations: int = 20_000_000) -> dict:
    """The core clock: a chain of ``iterations`` dependent (xor, add) pairs, 2 cycles each
    (1-cycle latency ALU ops on current x86 cores), timed in thread CPU time (time slices
    lost to other work on a shared machine are not counted), best of 5; and the nominal MHz."""
    _dependent_chain(10, 1)
    best = min(
        _timed(lambda: _dependent_chain(iterations, np.int64(time.perf_counter_ns())))
        for _ in range(5)
    )
    nominal = _nominal_mhz()
    return {
        "measured_hz": 2 * iterations / best,
        "nominal_mhz": float(nominal) if nominal else None,
        "how": "dependent x = (x ^ c) + (x >> 1) chain, 2 cycles per iteration, thread CPU "
        "time, best of 5",
    }


def _nominal_mhz() -> str | None:
    """The first ``cpu MHz`` of ``/proc/cpuinfo`` (the nominal or current clock; Linux only)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return line.split(":", 1)[1].strip()
    return None


def _timed(fn) -> float:
    """Seconds of thread CPU time ``fn()`` took (single-threaded work only)."""
    t0 = time.thread_time_ns()
    fn()
    return 1e-9 * (time.thread_time_ns() - t0)


@numba.njit(**_JIT)
def _xor_popcount_loop(a, b, reps):
    """sum of popcount(a[i] ^ b[j, i]) for 8 rows j, ``reps`` times: 8 accumulators."""
    total = 0
    W = a.shape[0]
    for _ in range(reps):
        h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = 0
        for i in range(W):
            x = a[i]
            h0 += popcount(x ^ b[0, i])
            h1 += popcount(x ^ b[1, i])
            h2 += popcount(x ^ b[2, i])
            h3 += popcount(x ^ b[3, i])
            h4 += popcount(x ^ b[4, i])
            h5 += popcount(x ^ b[5, i])
            h6 += popcount(x ^ b[6, i])
            h7 += popcount(x ^ b[7, i])
        total += h0 + h1 + h2 + h3 + h4 + h5 + h6 + h7
    return total


def hand_written_popcount(timeout_s: float = 120.0) -> dict:
    """The XOR-popcount loop of :func:`popcount_bound` written by hand in C
    (``bnnlib/bench/popcount_variants.c``: the popcount instruction, AVX2 table popcounts
    with and without deferred ``vpsadbw``, Harley-Seal, the bit-sliced kernel of
    ``bnnlib/kernels/bitsliced.c`` on one block, AVX-512 ``vpopcntq`` where the compiler
    targets it), built with ``$CC`` (else ``cc``, ``gcc``, ``clang``) at ``-O3 -march=native``
    and run once: binary MACs per second of one core's thread CPU time for each variant, best
    of 5. ``available`` is False (with ``why``) without a C compiler or when the build or run
    fails; a variant whose sum differs from the scalar reference is listed under ``wrong``."""
    cc = native.find_compiler()
    if cc is None:
        return {"available": False, "why": "no C compiler ($CC, cc, gcc or clang) found"}
    try:
        out = _build_and_run(cc, timeout_s)
    except RuntimeError as e:  # the compiler or the program failed
        return {"available": False, "why": str(e)}
    except (OSError, subprocess.SubprocessError) as e:  # no temp folder, noexec, a timeout
        return {"available": False, "why": f"{type(e).__name__}: {e}"}
    rates, wrong = {}, []
    for line in out.splitlines():
        name, _, value = line.strip().partition(" ")
        if value == "WRONG":
            wrong.append(name)
        elif name and value:
            try:
                rates[name] = float(value)
            except ValueError:
                return {"available": False, "why": f"unexpected output line {line!r}"}
    return {
        "available": True,
        "compiler": cc,
        "macs_per_s_per_core": rates,
        "wrong": wrong,
        "how": "bnnlib/bench/popcount_variants.c, -O3 -march=native: 8 rows x 256 L1-resident "
        "words, 8 accumulators (avx2_bitsliced / avx512_bitsliced: bnnlib/kernels/bitsliced.c "
        "on 256 / 512 neurons x 1024 inputs, 32 / 64 kB), one thread, thread CPU time, best of 5",
    }


def _build_and_run(cc: str, timeout_s: float) -> str:
    """The output of ``popcount_variants.c`` built by ``cc`` in a temporary folder and run;
    RuntimeError with the compiler's or the program's message when either fails."""
    sources = {
        "p.c": resources.files("bnnlib.bench").joinpath("popcount_variants.c"),
        "bitsliced.c": resources.files("bnnlib.kernels").joinpath("bitsliced.c"),  # included
    }
    with tempfile.TemporaryDirectory(prefix="bnn-popcount-") as tmp:
        src, exe = os.path.join(tmp, "p.c"), os.path.join(tmp, "p")
        for name, source in sources.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(source.read_text())
        flags = ["-O3", "-march=native", "-o", exe, src]
        built = subprocess.run([cc, *flags], capture_output=True, text=True, timeout=timeout_s)
        if built.returncode != 0:
            raise RuntimeError(f"{cc} failed: {built.stderr.strip()[-500:]}")
        out = subprocess.run([exe], capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"exit status {out.returncode}: {out.stderr.strip()[-500:]}")
    return out.stdout


def popcount_bound(
    threads: int | None = None, clock: dict | None = None, hand_written: bool = True
) -> dict:
    """Binary MACs per cycle of one core in an XOR-popcount-add loop on L1-resident words,
    and the bound in GMAC/s on ``threads`` cores (default: numba's threads) at the measured
    clock (the loop runs on one core; cores are assumed to scale, SMT siblings would not).
    The loop is numba's; with ``hand_written`` the C variants of
    :func:`hand_written_popcount` are timed too and the bound is the fastest of all
    (``by`` names it)."""
    rng = np.random.default_rng(0)
    w = 256  # 2 kB per row, 9 rows: L1-resident
    a = rng.integers(-(2**62), 2**62, w, dtype=np.int64)
    b = rng.integers(-(2**62), 2**62, (8, w), dtype=np.int64)
    reps = 5_000
    _xor_popcount_loop(a, b, 2)
    best = min(_timed(lambda: _xor_popcount_loop(a, b, reps)) for _ in range(5))
    clock = clock or clock_hz()
    hz = clock["measured_hz"]
    macs = 64 * 8 * w * reps
    per_cycle = {"numba_loop": macs / best / hz}
    c = hand_written_popcount() if hand_written else None
    if c and c["available"]:
        per_cycle.update({k: v / hz for k, v in c["macs_per_s_per_core"].items()})
    by = max(per_cycle, key=per_cycle.get)
    threads = threads or numba.get_num_threads()
    return {
        "macs_per_cycle_per_core": per_cycle[by],
        "by": by,
        "variants_macs_per_cycle": per_cycle,
        "hand_written": c,
        "clock": clock,
        "threads": threads,
        "bound_macs_per_s": per_cycle[by] * hz * threads,
        "how": "XOR-popcount-add over 8 rows x 256 L1-resident words, 8 accumulators, "
        "one thread, thread CPU time, best of 5, the fastest of numba's loop and the "
        "hand-written C variants; bound = per cycle x measured clock x threads",
    }
