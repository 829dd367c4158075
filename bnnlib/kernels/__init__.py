"""Packed XNOR-popcount kernels on the CPU (paper Section 4).

A ±1 vector is stored one bit per entry (bit 1 = +1, LSB-first, :func:`pack`); the dot
product of two such vectors of length k is k - 2 * popcount(a XOR b), so one 64-bit
XOR + popcount replaces 64 multiply-accumulates. :func:`xnor_gemm` multiplies packed
matrices exactly on all CPU cores (numba), :func:`bitplane_dot` handles the 8-bit first
layer with bit planes; :func:`baseline_gemm` is the paper's baseline kernel on the CPU, the
same tiling on float32 multiply-adds. :mod:`.fused` and :mod:`.fused_conv` run whole small
batches (a packed MLP in one call, direct packed convolutions) for
:mod:`bnnlib.inference.fused`. The GPU versions are in :mod:`bnnlib.kernels.cuda`.

>>> import torch, bnnlib
>>> a = bnnlib.sign(torch.randn(3, 100)); b = bnnlib.sign(torch.randn(5, 100))
>>> bool((xnor_gemm(pack(a), pack(b), 100) == (a @ b.T).int()).all())
True
"""

from bnnlib import settings

settings.check_numba_threads()  # numba reads it at import and fails without naming it

from bnnlib.kernels.baseline import baseline_gemm  # noqa: E402
from bnnlib.kernels.packing import (  # noqa: E402
    check_pm1,
    fires,
    num_words,
    pack,
    pack_bits,
    threshold_pack,
    unpack,
    words_as_int64,
)
from bnnlib.kernels.xnor import bitplane_dot, hamming_gemm, popcount_rows, xnor_gemm  # noqa: E402

settings.start_numba_threads()  # numba's threads must not change torch's thread count

__all__ = [
    "pack",
    "unpack",
    "pack_bits",
    "num_words",
    "words_as_int64",
    "check_pm1",
    "threshold_pack",
    "fires",
    "xnor_gemm",
    "hamming_gemm",
    "bitplane_dot",
    "popcount_rows",
    "baseline_gemm",
]
