"""XNOR-popcount matrix products on the CPU (paper Section 4), compiled with numba.

For ±1 vectors a, b of length k packed into bits (bit 1 = +1, :mod:`.packing`), a
position contributes +1 to a . b where the bits agree and -1 where they differ, and
XOR marks the disagreements, so

    a . b = (k - d) - d = k - 2 * popcount(a XOR b),        d = popcount(a XOR b)

(the paper writes it with XNOR, which counts the agreements instead). One 64-bit XOR +
popcount does 64 binary multiply-accumulates. :func:`xnor_gemm` computes every a_i . b_j
for the rows of two packed matrices, i.e. ``A_pm1 @ B_pm1.T``, exactly, as int32.

First layer (paper Section 1.6): its input is 8-bit pixels x, not ±1. Writing x as bit
planes x = sum_{n=1..8} 2^(n-1) x^n with x^n in {0, 1}^k,

    s = x . w_b = sum_{n=1..8} 2^(n-1) (x^n . w_b),
    x^n . w_b = 2 popcount(x^n AND w) - popcount(x^n) = popcount(w) - popcount(x^n XOR w)

(the last step: popcount(p XOR w) = popcount(p) + popcount(w) - 2 popcount(p AND w)).
:func:`bitplane_dot` computes it with the same XOR-popcount inner loop.

Speed: the inner loop runs over the contiguous words of two rows of A and two rows of B
(a 2 x 2 register tile: each loaded word is used twice), with no bounds checks, so LLVM
vectorizes it (AVX2: XOR + a byte lookup popcount; ``ctpop`` is the LLVM intrinsic).
Rows of B are taken in blocks that fit in the L2 cache and rows of A are split between
threads (``prange``); products too small to be worth waking the threads run on the
calling thread. Compiled functions are cached on disk: next to the source, else in the user
cache directory, else in a private temp folder, else not at all (:mod:`._cache`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic

from bnnlib.kernels._cache import CACHE
from bnnlib.kernels.packing import num_words, pack_bits, words_as_int64

__all__ = ["xnor_gemm", "bitplane_dot", "hamming_gemm", "popcount_rows"]

L2_BYTES = 512 * 1024  # budget for one block of B rows: half of a typical per-core L2
# Below this many word operations a product runs on the calling thread: waking the thread
# pool costs more than it saves (much more on a loaded machine).
SERIAL_WORDS = 1 << 19


@intrinsic
def popcount(typingctx, x):
    """LLVM ``ctpop`` on an integer, same type out (numba has no popcount of its own)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


_JIT = {"fastmath": True, "boundscheck": False, "nogil": True, "cache": CACHE}


@numba.njit(inline="always", **_JIT)
def _hamming_row_pair(a, b, out, offset, scale, i0, i1, j_lo, j_hi):
    """Rows i0, i1 of out against rows j_lo..j_hi of b, 2 x 2 outputs per inner loop.

    An odd edge repeats a row (i1 = i0 or j1 = j0): the repeated entry is computed
    twice and written with the same value.
    """
    W = a.shape[1]
    for j0 in range(j_lo, j_hi, 2):
        j1 = min(j0 + 1, j_hi - 1)
        s00 = 0
        s01 = 0
        s10 = 0
        s11 = 0
        for w in range(W):  # contiguous, vectorized by LLVM
            a0 = a[i0, w]
            a1 = a[i1, w]
            b0 = b[j0, w]
            b1 = b[j1, w]
            s00 += popcount(a0 ^ b0)
            s01 += popcount(a0 ^ b1)
            s10 += popcount(a1 ^ b0)
            s11 += popcount(a1 ^ b1)
        out[i0, j0] = offset + scale * s00
        out[i0, j1] = offset + scale * s01
        out[i1, j0] = offset + scale * s10
        out[i1, j1] = offset + scale * s11


@numba.njit(parallel=True, **_JIT)
def _hamming_kernel(a, b, out, offset, scale, block_rows):
    """out[i, j] = offset + scale * sum_w popcount(a[i, w] ^ b[j, w]).

    a (M, W), b (N, W) int64, out (M, N) int32. Rows of b in blocks of ``block_rows``
    (L2-resident); pairs of rows of a split across threads.
    """
    M = a.shape[0]
    N = b.shape[0]
    for j_lo in range(0, N, block_rows):
        j_hi = min(j_lo + block_rows, N)
        for ip in numba.prange((M + 1) // 2):
            i0 = 2 * ip
            _hamming_row_pair(a, b, out, offset, scale, i0, min(i0 + 1, M - 1), j_lo, j_hi)


@numba.njit(**_JIT)
def _hamming_kernel_serial(a, b, out, offset, scale, block_rows):
    """:func:`_hamming_kernel` on the calling thread, for products too small to split."""
    M = a.shape[0]
    N = b.shape[0]
    for j_lo in range(0, N, block_rows):
        j_hi = min(j_lo + block_rows, N)
        for i0 in range(0, M, 2):
            _hamming_row_pair(a, b, out, offset, scale, i0, min(i0 + 1, M - 1), j_lo, j_hi)


@numba.njit(**_JIT)
def _popcount_rows_kernel(a, out):
    for i in range(a.shape[0]):
        s = 0
        for w in range(a.shape[1]):
            s += popcount(a[i, w])
        out[i] = s


@numba.njit(inline="always", **_JIT)
def _bitplane_block(planes, b, pc_b, out, j_lo, j_hi):
    """out[m, j] = sum_n 2^n (pc_b[j] - sum_w popcount(planes[m, n, w] ^ b[j, w])), j in block."""
    M = planes.shape[0]
    W = planes.shape[2]
    for m in range(M):
        for j0 in range(j_lo, j_hi, 2):
            j1 = min(j0 + 1, j_hi - 1)
            t0 = 0
            t1 = 0
            for n in range(8):
                h0 = 0
                h1 = 0
                for w in range(W):
                    p = planes[m, n, w]
                    h0 += popcount(p ^ b[j0, w])
                    h1 += popcount(p ^ b[j1, w])
                t0 += (pc_b[j0] - h0) << n
                t1 += (pc_b[j1] - h1) << n
            out[m, j0] = t0
            out[m, j1] = t1


@numba.njit(parallel=True, **_JIT)
def _bitplane_kernel(planes, b, pc_b, out, block_rows):
    """First-layer product from bit planes; threads split blocks of rows of b.

    planes (M, 8, W) bit planes of the 8-bit input (plane n holds bit n of every pixel),
    b (N, W) packed ±1 weights, pc_b (N,) popcounts of the rows of b, out (M, N) int32.
    Splitting b (N is the number of neurons) keeps every thread busy even when M = 1.
    """
    N = b.shape[0]
    for jb in numba.prange((N + block_rows - 1) // block_rows):
        j_lo = jb * block_rows
        _bitplane_block(planes, b, pc_b, out, j_lo, min(j_lo + block_rows, N))


@numba.njit(**_JIT)
def _bitplane_kernel_serial(planes, b, pc_b, out, block_rows):
    N = b.shape[0]
    for j_lo in range(0, N, block_rows):
        _bitplane_block(planes, b, pc_b, out, j_lo, min(j_lo + block_rows, N))


def _as_words64(t: torch.Tensor, name: str) -> torch.Tensor:
    """A 2-D CPU tensor of 64-bit words; 32-bit words (pack(..., word_bits=32)) are
    converted for free: with LSB-first packing two consecutive int32 words are one
    little-endian int64 word."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor of packed words (rows, W), got {t.dim()}-D")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on {t.device}; bnnlib.kernels runs on the CPU. Use .cpu(), or the GPU "
            "kernels in bnnlib.kernels.cuda for CUDA tensors."
        )
    t = words_as_int64(t)
    if t.dtype != torch.int64:
        raise ValueError(
            f"{name} must hold packed words from bnnlib.kernels.pack (torch.int64, or torch.int32 "
            f"with word_bits=32), got {t.dtype}. Pack a ±1 matrix with pack(x) first."
        )
    return t.contiguous()


def _check_padding(t: torch.Tensor, k: int, name: str) -> None:
    """Refuse set bits beyond k in the last word: pack() leaves them 0, so a set bit there
    means the rows are longer than k (a wrong k that fits the same number of words)."""
    r = k % 64
    if r == 0 or t.shape[0] == 0:
        return
    stray = (t[:, -1] & ~((1 << r) - 1)) != 0
    if bool(stray.any()):
        row = int(stray.nonzero()[0, 0])
        raise ValueError(
            f"{name} has bits beyond k={k} set in {int(stray.sum())} of {t.shape[0]} rows "
            f"(first: row {row}); pack() leaves them 0, so the rows are longer than k: pass "
            "the true length of the packed dimension as k"
        )


def _check_operands(a, b, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k (the number of ±1 entries per row) must be an int >= 0, got {k!r}")
    k = int(k)
    if k >= 2**31:
        raise ValueError(f"k={k} is too large for int32 results")
    checked = []
    for name, t in (("a_packed", a), ("b_packed", b)):
        t = torch.as_tensor(t)
        bits = 32 if t.dtype == torch.int32 else 64
        if t.dim() == 2 and t.shape[1] != num_words(k, bits):
            raise ValueError(
                f"{name} has {t.shape[1]} words per row but k={k} needs ceil(k/{bits}) = "
                f"{num_words(k, bits)}; pack both operands along their dimension of length k"
            )
        t = _as_words64(t, name)
        _check_padding(t, k, name)
        checked.append(t)
    return checked[0], checked[1], k


def block_rows(words: int) -> int:
    rows = L2_BYTES // max(1, 8 * words)
    return max(2, rows - rows % 2)


def hamming_gemm(
    a_packed: torch.Tensor, b_packed: torch.Tensor, k: int, offset: int = 0, scale: int = 1
) -> torch.Tensor:
    """int32 (M, N): offset + scale * popcount(a_i XOR b_j) summed over the words.

    :func:`xnor_gemm` is offset=k, scale=-2. Bits beyond k must be 0 (see :func:`xnor_gemm`).
    """
    a, b, k = _check_operands(a_packed, b_packed, k)
    M, N = a.shape[0], b.shape[0]
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=torch.int32)
    if M < N:
        # Threads split rows of the first operand: put the longer side there (batch-1
        # inference has M = 1). The product is symmetric in a and b.
        return hamming_gemm(b, a, k, offset, scale).T.contiguous()
    out = torch.empty((M, N), dtype=torch.int32)
    serial = M * N * max(1, a.shape[1]) < SERIAL_WORDS
    kernel = _hamming_kernel_serial if serial else _hamming_kernel
    kernel(a.numpy(), b.numpy(), out.numpy(), offset, scale, block_rows(a.shape[1]))
    return out


def xnor_gemm(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int) -> torch.Tensor:
    """Exact ±1 matrix product from packed rows: int32 (M, N) = A_pm1 @ B_pm1.T.

    ``a_packed`` (M, W) and ``b_packed`` (N, W) are rows packed by
    :func:`bnnlib.kernels.pack` along their length-k dimension (int64 words, or int32
    words with ``word_bits=32``), W = ceil(k / word_bits). Each entry is
    k - 2 * popcount(a_i XOR b_j). k = 0 gives zeros (empty dot products); M or N = 0
    gives an empty result. Runs multithreaded on the CPU.

    A ``k`` that disagrees with the rows' true length is refused where it shows: a word count
    other than ceil(k / word_bits) (k > 64 W, or k <= 64 (W - 1)), or a bit set beyond k in
    the last word (pack() leaves the padding 0, so such a row is longer than k). What cannot
    be detected: a k larger than the true length within the same word count (the padding
    reads as -1 entries), or a smaller one when every entry beyond it is -1 (bit 0) — the
    words alone do not say where the data ends.
    """
    return hamming_gemm(a_packed, b_packed, k, offset=k, scale=-2)


def popcount_rows(words: torch.Tensor) -> torch.Tensor:
    """int64 (rows,): the number of 1 bits in each row of a 2-D tensor of packed words."""
    w = _as_words64(words, "words")
    out = torch.empty(w.shape[0], dtype=torch.int64)
    _popcount_rows_kernel(w.numpy(), out.numpy())
    return out


def bitplane_dot(x: torch.Tensor, w_packed: torch.Tensor, k: int) -> torch.Tensor:
    """First-layer product of 8-bit inputs with packed ±1 weights: int32 (M, N) = x @ W_b.T.

    ``x`` is uint8 (M, k) (e.g. :func:`bnnlib.data.to_uint8` of the images, flattened);
    ``w_packed`` (N, W) is :func:`bnnlib.kernels.pack` of the ±1 weights (N, k). Computed
    with bit planes, s = sum_n 2^(n-1) (popcount(w) - popcount(x^n XOR w)), exactly.
    """
    x = torch.as_tensor(x)
    if x.device.type != "cpu":
        raise ValueError(f"x is on {x.device}; bnnlib.kernels runs on the CPU. Use .cpu().")
    if x.dtype != torch.uint8:
        raise ValueError(
            f"bitplane_dot expects 8-bit pixels (torch.uint8), got {x.dtype}; convert images "
            "scaled to [-1, 1] back with bnnlib.data.to_uint8"
        )
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"bitplane_dot expects x of shape (M, k={k}), got {tuple(x.shape)}")
    if 255 * k >= 2**31:
        raise ValueError(f"k={k} is too large for int32 results (|s| <= 255 k)")
    # Validate w and its padding through the shared operand check.
    _, w, k = _check_operands(torch.zeros((0, num_words(k, 64)), dtype=torch.int64), w_packed, k)
    M, N = x.shape[0], w.shape[0]
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=torch.int32)
    shifts = torch.arange(8, dtype=torch.uint8)
    planes = pack_bits((x.unsqueeze(1) >> shifts.view(1, 8, 1)) & 1)  # (M, 8, W)
    out = torch.empty((M, N), dtype=torch.int32)
    block = max(2, min(block_rows(w.shape[1]), 64))
    serial = 8 * M * N * max(1, w.shape[1]) < SERIAL_WORDS
    kernel = _bitplane_kernel_serial if serial else _bitplane_kernel
    kernel(planes.numpy(), w.numpy(), popcount_rows(w).numpy(), out.numpy(), block)
    return out
