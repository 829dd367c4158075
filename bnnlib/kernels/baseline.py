"""The baseline kernel of the paper's Section 4, on the CPU: a plain tiled float32 product.

The paper times its XNOR kernel against two references (``../shared/reference/paper.md``,
Section 4): cuBLAS, the vendor's tuned library, and a *baseline kernel*, "a quite unoptimized
matrix multiplication kernel": the shared-memory tiled matmul of the CUDA programming guide.
Its XNOR kernel is that same tiling with the multiply-accumulate replaced by XOR + popcount,
so the 23x between the two measures the arithmetic, not the tuning.

:func:`baseline_gemm` is the CPU counterpart, written exactly like
:func:`bnnlib.kernels.xnor_gemm` so that the two differ only in the inner loop:

* the same 2 x 2 register tile over rows of A and rows of B (each loaded value used twice);
* the same blocking of B's rows to fit the L2 cache (``xnor.L2_BYTES``)
  and the same split of A's row pairs between threads (``prange``);
* an inner loop over k that LLVM vectorizes (fastmath: AVX2 FMAs, 8 floats per instruction)
  where the XNOR kernel's does XOR + popcount on 64 bits per lane.

No hand-written micro-kernel, no packing of panels, no prefetching: that is the difference
between this kernel and the vendor's BLAS (torch's float32 matmul), the paper's cuBLAS.

It computes ``A @ B.T`` in float32 with the sum reordered (fastmath), so on real inputs it
agrees with torch to float32 rounding; on ±1 inputs every partial sum is an integer below
2^24 and the result is exact.
"""

from __future__ import annotations

import numba
import torch

from bnnlib.kernels import xnor
from bnnlib.kernels._cache import CACHE

__all__ = ["baseline_gemm"]

_JIT = {"fastmath": True, "boundscheck": False, "nogil": True, "cache": CACHE}


@numba.njit(inline="always", **_JIT)
def _row_pair(a, b, out, i0, i1, j_lo, j_hi):
    """Rows i0, i1 of out against rows j_lo..j_hi of b, 2 x 2 outputs per inner loop (an odd
    edge repeats a row and writes the same value twice, as the XNOR kernel does)."""
    K = a.shape[1]
    for j0 in range(j_lo, j_hi, 2):
        j1 = min(j0 + 1, j_hi - 1)
        s00 = numba.float32(0.0)
        s01 = numba.float32(0.0)
        s10 = numba.float32(0.0)
        s11 = numba.float32(0.0)
        for k in range(K):  # contiguous, vectorized by LLVM
            a0 = a[i0, k]
            a1 = a[i1, k]
            b0 = b[j0, k]
            b1 = b[j1, k]
            s00 += a0 * b0
            s01 += a0 * b1
            s10 += a1 * b0
            s11 += a1 * b1
        out[i0, j0] = s00
        out[i0, j1] = s01
        out[i1, j0] = s10
        out[i1, j1] = s11


@numba.njit(parallel=True, **_JIT)
def _kernel(a, b, out, block_rows):
    M = a.shape[0]
    N = b.shape[0]
    for j_lo in range(0, N, block_rows):
        j_hi = min(j_lo + block_rows, N)
        for ip in numba.prange((M + 1) // 2):
            i0 = 2 * ip
            _row_pair(a, b, out, i0, min(i0 + 1, M - 1), j_lo, j_hi)


@numba.njit(**_JIT)
def _kernel_serial(a, b, out, block_rows):
    M = a.shape[0]
    N = b.shape[0]
    for j_lo in range(0, N, block_rows):
        j_hi = min(j_lo + block_rows, N)
        for i0 in range(0, M, 2):
            _row_pair(a, b, out, i0, min(i0 + 1, M - 1), j_lo, j_hi)


def _operand(t, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows, k), got {t.dim()}-D")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; baseline_gemm runs on the CPU. Use .cpu().")
    if not t.dtype.is_floating_point:
        raise ValueError(
            f"{name} must be floating point (it is converted to float32), got {t.dtype}"
        )
    return t.to(torch.float32).contiguous()


def baseline_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 (M, N) = ``a @ b.T`` by the plain tiled kernel (module docstring).

    ``a`` (M, K) and ``b`` (N, K) are float CPU matrices (converted to float32), both with
    their length-K dimension last, as :func:`~bnnlib.kernels.xnor_gemm` takes its packed rows.
    Runs on numba's threads; products too small to be worth waking them run on the calling
    thread.
    """
    a, b = _operand(a, "a"), _operand(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a has rows of length {a.shape[1]} and b of length {b.shape[1]}: baseline_gemm "
            "computes a @ b.T, both operands with the summed dimension last"
        )
    M, N, K = a.shape[0], b.shape[0], a.shape[1]
    out = torch.zeros((M, N), dtype=torch.float32)
    if M == 0 or N == 0 or K == 0:
        return out
    rows = xnor.L2_BYTES // max(1, 4 * K)
    block = max(2, rows - rows % 2)
    serial = M * N * max(1, K // 16) < xnor.SERIAL_WORDS  # same work per thread wake as xnor_gemm
    (_kernel_serial if serial else _kernel)(a.numpy(), b.numpy(), out.numpy(), block)
    return out
