"""Kernel benchmarks (paper Section 4): XNOR-popcount products against float matmul.

:func:`bench_cpu_gemm` times ``bnnlib.kernels.xnor_gemm`` against ``torch.matmul`` in
float32 on the CPU; :func:`bench_gpu_gemm` times the paper's GPU comparison (baseline
kernel, cuBLAS, the paper's XNOR kernel) plus cuBLAS bf16 / int8 and our faster XNOR
kernels. Rules (the timers of :mod:`bnnlib.timing`): data already packed and on the
device, warm-up first, the median of ``repeats`` timings, packing timed separately, and
every result checked for exact equality on the ±1 data. Rates are multiply-accumulates
per second, M N K / time. ``python -m bnnlib.bench`` assembles these into the project's
benchmark report.
"""

from __future__ import annotations

import statistics

import torch

from .binarize import sign
from .machine import cpu_flags, cpu_model
from .timing import cuda_timeit, timeit

__all__ = ["bench_cpu_gemm", "bench_gpu_gemm"]


def _pm1(rows: int, cols: int, seed: int, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sign(torch.randn(rows, cols, generator=g)).to(device)


def bench_cpu_gemm(n: int = 4096, repeats: int = 5) -> dict:
    """xnor_gemm vs torch.matmul float32 at M = N = K = n on this CPU.

    Returns seconds (median and all), MAC/s of each, ``ratio`` = XNOR MAC/s / float MAC/s,
    packing time, exactness and the machine (threads, CPU flags, numba version).
    """
    import numba

    from . import kernels

    a, b = _pm1(n, n, 0), _pm1(n, n, 1)
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


def bench_gpu_gemm(n: int = 8192, repeats: int = 5, baseline: bool = True) -> dict:
    """The paper's 8192^3 comparison on this GPU: baseline, cuBLAS, XNOR kernels.

    A (n, n) and B (n, n) are ±1 float32 on the device; every kernel computes A @ B.
    Timed (CUDA events, warm-up, median): the baseline kernel, cuBLAS float32 with TF32
    off, cuBLAS bf16 (tensor cores; not exact: bf16 output rounding), cuBLAS int8
    (``torch._int_mm``, exact, when available), the paper's XNOR kernel (32-bit words)
    and ours (64-bit popcount; 1-bit tensor cores on sm_80+). Packing A (rows) and B
    (columns) is timed separately. Raises RuntimeError when bnnlib.cuda is unavailable.
    """
    from . import cuda as bc

    bc.require()
    dev = torch.device("cuda")
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        A, B = _pm1(n, n, 0, dev), _pm1(n, n, 1, dev)
        macs = n**3
        res: dict = {
            "n": n,
            "repeats": repeats,
            "gpu": torch.cuda.get_device_name(dev),
            "capability": list(torch.cuda.get_device_capability(dev)),
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
        }
        times: dict[str, float] = {}
        ref = torch.matmul(A, B)

        def record(name, fn, check):
            timed = cuda_timeit(fn, repeats)
            t, all_t = timed["median_s"], timed["times_s"]
            times[name] = t
            res[f"{name}_s"] = t
            res[f"{name}_times_s"] = all_t
            res[f"{name}_macs"] = macs / t
            res[f"{name}_exact"] = bool(check(fn()))

        exact = lambda out: torch.equal(out.float(), ref)  # noqa: E731
        if baseline:
            record("baseline", lambda: bc.baseline_gemm(A, B), exact)
        record("cublas_fp32", lambda: torch.matmul(A, B), exact)
        Ab, Bb = A.bfloat16(), B.bfloat16()
        record("cublas_bf16", lambda: torch.matmul(Ab, Bb), exact)
        if hasattr(torch, "_int_mm"):
            Ai, Bi = A.to(torch.int8), B.to(torch.int8)
            try:
                record("cublas_int8", lambda: torch._int_mm(Ai, Bi), exact)
            except RuntimeError as e:  # shape or GPU not supported by cuBLASLt int8
                res["cublas_int8_error"] = str(e)

        t_pack32 = cuda_timeit(
            lambda: (bc.pack(A, word_bits=32, check=False), bc.pack_cols(B, 32, check=False)),
            repeats,
        )["median_s"]
        t_pack64 = cuda_timeit(
            lambda: (bc.pack(A, check=False), bc.pack_cols(B, check=False)), repeats
        )["median_s"]
        res["pack32_both_s"], res["pack64_both_s"] = t_pack32, t_pack64
        a32, b32 = bc.pack(A, word_bits=32), bc.pack_cols(B, 32)
        a64, b64 = bc.pack(A), bc.pack_cols(B)
        record("xnor_paper", lambda: bc.xnor_gemm(a32, b32, n), exact)
        record("xnor_popc", lambda: bc.xnor_gemm_fast(a64, b64, n, method="popc"), exact)
        if tuple(res["capability"]) >= (8, 0):
            tc = lambda: bc.xnor_gemm_fast(a64, b64, n, method="tensor_core")  # noqa: E731
            record("xnor_tensor_core", tc, exact)
        for name in list(times):
            for against in ("baseline", "cublas_fp32"):
                if against in times and name != against:
                    res[f"speedup_{name}_vs_{against}"] = times[against] / times[name]
        return res
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
