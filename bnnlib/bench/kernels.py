"""Kernel benchmarks (paper Section 4): XNOR-popcount products against float matmul.

:func:`bench_cpu_gemm` times ``bnnlib.kernels.xnor_gemm`` against ``torch.matmul`` in
float32 on the CPU; :func:`bench_gpu_gemm` times the paper's GPU comparison (baseline
kernel, cuBLAS, the paper's XNOR kernel) plus cuBLAS bf16 / int8 and our faster XNOR
kernels. Rules (the timers of :mod:`bnnlib.bench.timing`): data on the device, warm-up first,
the median of ``repeats`` timings, the XNOR kernels timed both on pre-packed operands and
including the packing of both operands, and every result checked for exact equality on
the ±1 data. Rates are multiply-accumulates
per second, M N K / time. ``python -m bnnlib.bench`` assembles these into the project's
benchmark report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from bnnlib.bench.timing import cuda_timeit, timeit
from bnnlib.hardware import cpu_flags, cpu_model
from bnnlib.nn.binarize import sign

__all__ = ["bench_cpu_gemm", "bench_gpu_gemm"]


def random_pm1(rows: int, cols: int, seed: int, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sign(torch.randn(rows, cols, generator=g)).to(device)


def bench_cpu_gemm(n: int = 4096, repeats: int = 5) -> dict:
    """xnor_gemm vs torch.matmul float32 at M = N = K = n on this CPU.

    Returns seconds (median and all), MAC/s of each, ``ratio`` = XNOR MAC/s / float MAC/s,
    packing time, exactness and the machine (threads, CPU flags, numba version).
    """
    import numba

    from bnnlib import kernels

    a, b = random_pm1(n, n, 0), random_pm1(n, n, 1)
    kernels.pack(a[:2])  # compile / load the numba cache outside the timing
    t_pack = timeit(lambda: (kernels.pack(a), kernels.pack(b)), repeats, warmup=0)["median_s"]
    pa, pb = kernels.pack(a), kernels.pack(b)
    ref = torch.matmul(a, b.T)  # warm-ups
    out = kernels.xnor_gemm(pa, pb, n)
    # Interleaved, so that load from other processes on a shared machine hits both alike.
    all_float, all_xnor = [], []
    for _ in range(repeats):
        all_float.append(timeit(lambda: torch.matmul(a, b.T), 1, warmup=0)["median_s"])
        all_xnor.append(timeit(lambda: kernels.xnor_gemm(pa, pb, n), 1, warmup=0)["median_s"])
    t_float, t_xnor = statistics.median(all_float), statistics.median(all_xnor)

    macs = n**3
    return {
        "n": n,
        "repeats": repeats,
        "float32_s": t_float,
        "xnor_s": t_xnor,
        "pack_both_s": t_pack,
        "float32_times_s": all_float,
        "xnor_times_s": all_xnor,
        "float32_macs": macs / t_float,
        "xnor_macs": macs / t_xnor,
        "ratio": t_float / t_xnor,
        "ratio_with_packing": t_float / (t_xnor + t_pack),
        "exact": bool(torch.equal(out, ref.to(torch.int32))),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_version": numba.__version__,
        "torch_version": torch.__version__,
        "cpu": {"model": cpu_model(), "flags": cpu_flags()},
    }


def bench_gpu_gemm(
    n: int = 8192,
    repeats: int = 5,
    baseline: bool = True,
    on_result: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The paper's 8192^3 comparison on this GPU: baseline, cuBLAS, XNOR kernels.

    A (n, n) and B (n, n) are ±1 float32 on the device; every kernel computes A @ B.
    Timed (CUDA events, warm-up, median), each figure checked for exactness against cuBLAS
    float32 with TF32 off (float32 sums of ±1 below 2^24 are exact):

    * cuBLAS: float32 with TF32 off (``cublas_fp32``, the like-for-like float reference),
      TF32 (``cublas_tf32``) and bf16 (``cublas_bf16``, not exact: bf16 output rounding) for
      context, int8 (``torch._int_mm``, exact) when available;
    * with :mod:`~bnnlib.kernels.cuda`: the paper's baseline kernel (``baseline``), the paper's XNOR
      kernel on 32-bit words (``xnor_paper``), ours on 64-bit words (``xnor_popc``) and on the
      1-bit tensor cores (``xnor_tensor_core``, sm_80+; it includes the two row-popcount
      launches, ``xnor_tensor_core_kernel_only`` does not).

    Two views of every XNOR kernel: on pre-packed operands (``xnor_*``), and including the
    packing of both operands, A along its rows and B along its columns
    (``xnor_*_with_packing``), as the paper's benchmark counts its concatenation kernels.
    Packing alone is ``pack32_both`` / ``pack64_both``. ``fastest_xnor`` names the fastest
    of ours. ``allow_tf32`` records torch's setting as found (restored afterwards).

    Without bnnlib.kernels.cuda the cuBLAS figures are still measured and ``kernels_unavailable``
    says why. A failing measurement is recorded as ``<name>_error`` and the rest go on.
    ``on_result(res)`` is called after every figure (to write partial results).
    """
    from bnnlib.kernels import cuda as bc

    dev = torch.device("cuda")
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    res = _gpu_gemm_meta(n, repeats, dev, allow_tf32)
    record = _Recorder(res, n, repeats, on_result, log or (lambda msg: None))
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        A, B = random_pm1(n, n, 0, dev), random_pm1(n, n, 1, dev)
        ref = torch.matmul(A, B)
        exact = lambda out: torch.equal(out.float(), ref)  # noqa: E731
        _record_cublas(record, A, B, exact)
        if not bc.available():
            res["kernels_unavailable"] = bc.reason()
            record.emit()
            return res
        _record_bnn_kernels(record, bc, A, B, n, baseline, exact)
        ours = [k for k in ("xnor_popc", "xnor_tensor_core") if k in record.times]
        if ours:
            res["fastest_xnor"] = min(ours, key=record.times.get)
        return res
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        add_speedups(res, record.times, skip=("pack",))
        record.emit()


def _gpu_gemm_meta(n: int, repeats: int, dev: torch.device, allow_tf32: bool) -> dict:
    """The GPU, versions, torch's TF32 setting as found, the timer."""
    return {
        "n": n,
        "repeats": repeats,
        "gpu": torch.cuda.get_device_name(dev),
        "capability": list(torch.cuda.get_device_capability(dev)),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "allow_tf32": allow_tf32,
        "timer": "CUDA events, median of repeats after one warm-up call",
    }


class _Recorder:
    """Times one GPU figure after another into ``res`` (``<name>_s``, ``_times_s``, ``_macs``,
    ``_exact``, or ``<name>_error``) and ``times``, calling ``on_result(res)`` after each."""

    def __init__(self, res: dict, n: int, repeats: int, on_result, say):
        self.res, self.times, self.macs, self.repeats = res, {}, n**3, repeats
        self.on_result, self.say = on_result, say

    def emit(self) -> None:
        if self.on_result is not None:
            self.on_result(self.res)

    def __call__(self, name: str, fn, check, tf32: bool = False) -> None:
        res, macs, say = self.res, self.macs, self.say
        say(f"  {name} ...")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            timed = cuda_timeit(fn, self.repeats)
            t = timed["median_s"]
            self.times[name] = t
            res[f"{name}_s"] = t
            res[f"{name}_times_s"] = timed["times_s"]
            res[f"{name}_macs"] = macs / t
            if check is not None:
                res[f"{name}_exact"] = bool(check(fn()))
            say(f"  {name}: {t * 1e3:.3f} ms, {macs / t / 1e12:.2f} TMAC/s")
        except Exception as e:  # record and go on: one failure must not lose the rest
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"
            say(f"  {name}: FAILED {res[f'{name}_error']}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        self.emit()


def _record_cublas(record: _Recorder, A: torch.Tensor, B: torch.Tensor, exact) -> None:
    """cuBLAS float32 (TF32 off), TF32, bf16 and, where torch has it, int8."""
    record("cublas_fp32", lambda: torch.matmul(A, B), exact)
    record("cublas_tf32", lambda: torch.matmul(A, B), exact, tf32=True)
    Ab, Bb = A.bfloat16(), B.bfloat16()
    record("cublas_bf16", lambda a=Ab, b=Bb: torch.matmul(a, b), exact)
    del Ab, Bb
    if hasattr(torch, "_int_mm"):
        Ai, Bi = A.to(torch.int8), B.to(torch.int8)
        record("cublas_int8", lambda a=Ai, b=Bi: torch._int_mm(a, b), exact)
        del Ai, Bi


def _record_bnn_kernels(record: _Recorder, bc, A, B, n: int, baseline: bool, exact) -> None:
    """The baseline kernel, packing alone, and every XNOR kernel pre-packed and with packing."""
    if baseline:
        record("baseline", lambda: bc.baseline_gemm(A, B), exact)

    def pack32():
        return bc.pack(A, word_bits=32, check=False), bc.pack_cols(B, 32, check=False)

    def pack64():
        return bc.pack(A, check=False), bc.pack_cols(B, check=False)

    record("pack32_both", pack32, None)
    record("pack64_both", pack64, None)
    a32, b32 = pack32()
    a64, b64 = pack64()
    record("xnor_paper", lambda: bc.xnor_gemm(a32, b32, n), exact)
    record("xnor_paper_with_packing", lambda: bc.xnor_gemm(*pack32(), n), exact)
    popc = lambda a, b: bc.xnor_gemm_fast(a, b, n, method="popc")  # noqa: E731
    record("xnor_popc", lambda: popc(a64, b64), exact)
    record("xnor_popc_with_packing", lambda: popc(*pack64()), exact)
    if tuple(record.res["capability"]) >= (8, 0):
        tc = lambda a, b, **kw: bc.xnor_gemm_fast(a, b, n, "tensor_core", **kw)  # noqa: E731
        record("xnor_tensor_core", lambda: tc(a64, b64), exact)
        counts = (bc.popcount_rows(a64), bc.popcount_rows(b64))
        record("xnor_tensor_core_kernel_only", lambda: tc(a64, b64, popcounts=counts), exact)
        record("xnor_tensor_core_with_packing", lambda: tc(*pack64()), exact)


def add_speedups(
    res: dict, times: dict, against: tuple = ("baseline", "cublas_fp32"), skip: tuple = ()
) -> None:
    """``speedup_<name>_vs_<ref>`` = time of ``ref`` / time of ``name``, for every timed name
    (but those starting with ``skip``) against each reference that was timed."""
    for name in list(times):
        for ref in against:
            if ref in times and name != ref and not name.startswith(skip):
                res[f"speedup_{name}_vs_{ref}"] = times[ref] / times[name]
