"""A whole packed MLP in one compiled call: the small-batch CPU path (paper Sections 2.6 and 4).

At batch 1 every packed weight is read once per image, so a BNN's latency is bounded below by
the time to stream its packed weights (4.6 MB for the 784 -> 3 x 4096 -> 10 MLP). Running the
net one torch operation at a time costs far more than that: per-layer Python and tensor
overhead, a float32 first layer (12.8 MB of weights), allocations. :func:`mlp_forward` runs
every layer of an MLP in one numba call, on buffers allocated once by the caller:

* **First layer** (8-bit input, paper Section 1.6), one of two exact integer products:

  - *bit planes*: with x = sum_n 2^n x^n (x^n in {0, 1}^k) and w = 2 b - 1 (b the packed bits),
    ``W_b . x = 2 sum_n 2^n popcount(x^n AND b) - sum(x)``: AND-popcount on the packed weights
    (425 kB for 784 x 4096), whatever the image;
  - *int8*: ``W_b . x = sum over nonzero pixels i of x_i W_b[:, i]`` with the +/-1 weights as
    int8 rows (784 x 4096 = 3.2 MB), reading only the rows of the nonzero pixels (about 15%
    of an MNIST digit).

  ``first_mode`` 0 takes bit planes, 1 int8, 2 chooses per image: int8 when the image has
  fewer than ``int8_max_nonzero`` nonzero pixels.
* **Hidden layers**: ``s = k - 2 popcount(a XOR w)`` (padding bits are 0 in both operands).
* **Batch norm + Sign** as one integer compare per neuron (:mod:`bnnlib.inference.fold`),
  fused with the packing: 64 neurons make one output word, written once.
* **Last layer**: its integer pre-activations ``s``; the caller applies the float64 batch norm.

Work is split by output words (64 neurons): with ``parallel`` the words of a layer are shared
between threads (``prange``), otherwise the call stays on the calling thread (when waking
threads would cost more than a layer's work; :mod:`bnnlib.inference.fused` decides). A large
batch is better split by images: :func:`mlp_forward_chunks` shares chunks of images between
threads, each chunk run through every layer by one thread on its own buffers (one parallel
region per call, no thread waits for another between layers). Every
rule above is exact: the results equal :meth:`bnnlib.inference.PackedNet.scores` with
``path="layers"`` bit for bit (tested on the MNIST test set).

The arrays travel in four groups, :class:`FirstLayer`, :class:`HiddenLayers`,
:class:`LastLayer` and :class:`Buffers`, so that a call reads by name; :class:`BoundMLP` binds
them once for the calls of one batch size.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from bnnlib.kernels._cache import CACHE
from bnnlib.kernels.xnor import popcount

__all__ = [
    "mlp_forward",
    "mlp_forward_chunks",
    "affine_argmax",
    "BoundMLP",
    "FirstLayer",
    "HiddenLayers",
    "LastLayer",
    "Buffers",
    "FIRST_BITPLANES",
    "FIRST_INT8",
    "FIRST_AUTO",
    "FIRST_GIVEN",
]

FIRST_BITPLANES, FIRST_INT8, FIRST_AUTO = 0, 1, 2
#: ``first_mode``: the first layer's packed output is already in ``acts[0]`` (computed by the
#: caller, e.g. on a library's int8 gemm); the call runs the other layers.
FIRST_GIVEN = 3


def _compiles_for(feature: str) -> bool:
    """Whether numba compiles for a CPU with ``feature`` (this machine's, unless
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` say otherwise)."""
    import llvmlite.binding as ll
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False  # a named generic target: take the narrow tiles
    return f"+{feature}" in ll.get_host_cpu_features().flatten().split(",")


#: 4 x 4 register tiles in the hidden layers where the CPU has 32 vector registers and a vector
#: popcount (AVX-512 VPOPCNTDQ: 16 accumulators + 4 weight vectors fit; one thread, 4096 ->
#: 4096 layer, 64 images: 700 vs 600 GMAC/s for 2 x 4 on a Zen 4 EPYC); 2 x 4 elsewhere (AVX2
#: has 16 registers and needs some for its table popcount). A compile-time constant.
WIDE_TILES = _compiles_for("avx512vpopcntdq")

_JIT = {"fastmath": True, "boundscheck": False, "nogil": True, "cache": CACHE}


@numba.njit(inline="always", **_JIT)
def bit(t, thr, direction):
    """Sign(BN) of an integer pre-activation, 1 or 0: the compare of kernels.threshold_pack
    (t >= thr for direction +1, t <= thr for -1), without a branch."""
    return np.int64((t - thr) * direction >= 0)


@numba.njit(**_JIT)
def _prepare_input(x, planes, nonzero, nnz, sumx):
    """Bit planes (M, 8, W) of the uint8 images (M, K), their nonzero pixels and pixel sums."""
    M, K = x.shape
    for m in range(M):
        planes[m, :, :] = 0
        count = 0
        total = 0
        for i in range(K):
            v = np.int64(x[m, i])
            total += v
            if v != 0:
                nonzero[m, count] = i
                count += 1
                b = i & 63
                for n in range(8):
                    planes[m, n, i >> 6] |= ((v >> n) & 1) << b
        nnz[m] = count
        sumx[m] = total


@numba.njit(**_JIT)
def _first_block_bitplanes(m, planes, sumx, wt, wsum, thr, dirn, out, b):
    """Output words 8b .. 8b+7 (neurons 512b .. 512b+511) of the first layer for image m, by
    bit planes: ``ones[j] = sum_n 2^n sum_u popcount(planes[m, n, u] AND wt[u, j])``. The
    weights are transposed (word u of every neuron contiguous), so the loop over neurons
    vectorizes (one broadcast plane word against 8 neurons per AVX-512 ``vpopcntq``)."""
    W, N = wt.shape
    lo = 512 * b
    width = min(512, N - lo)
    ones = np.zeros(512, np.int64)
    for u in range(W):
        for n in range(8):
            p = planes[m, n, u]
            row = wt[u, lo : lo + width]
            if width == 512:  # a constant trip count: unrolled and vectorized in full
                for jj in range(512):
                    ones[jj] += popcount(p & row[jj]) << n
            else:
                for jj in range(width):
                    ones[jj] += popcount(p & row[jj]) << n
    for g in range(0, width, 64):  # one word of 64 neurons at a time, stored once
        word = np.int64(0)
        for t in range(min(64, width - g)):
            j = lo + g + t
            dot = 2 * ones[g + t] - sumx[m]  # W_b . x
            word |= bit(2 * dot - 255 * wsum[j], thr[j], dirn[j]) << t  # t = 255 * pre-act.
        out[m, (lo + g) >> 6] = word


#: From this many images in one call the first layer's threads take whole images (one parallel
#: region per call) rather than splitting each image's neurons (one region per image).
FIRST_SPLIT_IMAGES = 8
#: Nonzero pixels summed in int16 lanes before they are added into int32: 128 * 255 = 32,640
#: fits in int16, and 16 int16 lanes per AVX2 register do twice the work of 8 int32 ones.
INT16_RUN = 128


@numba.njit(**_JIT)
def _first_block_int8(x, m, nonzero, nnz, w8t, wsum, thr, dirn, out, b):
    """Output words 8b .. 8b+7 of the first layer for image m, from the int8 rows of its
    nonzero pixels, summed in int16 over runs of :data:`INT16_RUN` pixels (exact: |sum| <=
    128 * 255 < 2^15), then in int32."""
    N = w8t.shape[1]
    lo = 512 * b
    width = min(512, N - lo)
    acc = np.zeros(512, np.int32)  # |W_b . x| <= 255 k < 2^31 (header limit)
    run = np.zeros(512, np.int16)
    n = nnz[m]
    for q0 in range(0, n, INT16_RUN):
        for q in range(q0, min(q0 + INT16_RUN, n)):
            v = np.int16(x[m, nonzero[m, q]])
            row = w8t[nonzero[m, q], lo : lo + width]
            if width == 512:  # a constant trip count: unrolled and vectorized in full
                for jj in range(512):
                    run[jj] += v * np.int16(row[jj])
            else:
                for jj in range(width):  # from 0: no negative-index check, vectorized
                    run[jj] += v * np.int16(row[jj])
        for jj in range(width):
            acc[jj] += np.int32(run[jj])
            run[jj] = 0
    for g in range(0, width, 64):  # one word of 64 neurons at a time, stored once
        word = np.int64(0)
        for t in range(min(64, width - g)):
            j = lo + g + t
            word |= bit(2 * np.int64(acc[g + t]) - 255 * wsum[j], thr[j], dirn[j]) << t
        out[m, (lo + g) >> 6] = word


@numba.njit(inline="always", **_JIT)
def _xor_popcount(a, m, w, j, W):
    """sum over the words of popcount(a[m] XOR w[j])."""
    h = 0
    for u in range(W):
        h += popcount(a[m, u] ^ w[j, u])
    return h


@numba.njit(inline="always", **_JIT)
def _bits4(k, h0, h1, h2, h3, thr, dirn, j):
    """Bits j .. j+3 (as bits 0..3) from the four rows' XOR popcounts h0 .. h3."""
    bits = bit(k - 2 * h0, thr[j], dirn[j])
    bits |= bit(k - 2 * h1, thr[j + 1], dirn[j + 1]) << 1
    bits |= bit(k - 2 * h2, thr[j + 2], dirn[j + 2]) << 2
    bits |= bit(k - 2 * h3, thr[j + 3], dirn[j + 3]) << 3
    return np.int64(bits)


@numba.njit(inline="always", **_JIT)
def _rows4_bits(a, m, w, j, W, k, thr, dirn):
    """Bits j .. j+3 (as bits 0..3) of image m: four weight rows per pass over its words."""
    h0 = 0
    h1 = 0
    h2 = 0
    h3 = 0
    for u in range(W):  # contiguous: vectorized popcount
        x = a[m, u]
        h0 += popcount(x ^ w[j, u])
        h1 += popcount(x ^ w[j + 1, u])
        h2 += popcount(x ^ w[j + 2, u])
        h3 += popcount(x ^ w[j + 3, u])
    return _bits4(k, h0, h1, h2, h3, thr, dirn, j)


@numba.njit(inline="always", **_JIT)
def _tail_bits(a, m, w, W, k, thr, dirn, j_lo, j_hi, base):
    """Bits j_lo .. j_hi - 1 of image m (a last partial group of rows), shifted by j - base."""
    word = np.int64(0)
    for j in range(j_lo, j_hi):
        if bit(k - 2 * _xor_popcount(a, m, w, j, W), thr[j], dirn[j]):
            word |= np.int64(1) << (j - base)
    return word


@numba.njit(inline="always", **_JIT)
def _word4(a, w, W, k, thr, dirn, out, c, m, base, j4, j_hi):
    """Output word c of images m .. m+3: four images x four weight rows per pass over the
    words (16 accumulators; each loaded word used four times). ``W``: the row's words."""
    word0 = np.int64(0)
    word1 = np.int64(0)
    word2 = np.int64(0)
    word3 = np.int64(0)
    for j in range(base, j4, 4):
        h00 = h01 = h02 = h03 = h10 = h11 = h12 = h13 = 0
        h20 = h21 = h22 = h23 = h30 = h31 = h32 = h33 = 0
        for u in range(W):  # contiguous: vectorized popcount
            v0 = w[j, u]
            v1 = w[j + 1, u]
            v2 = w[j + 2, u]
            v3 = w[j + 3, u]
            x = a[m, u]
            h00 += popcount(x ^ v0)
            h01 += popcount(x ^ v1)
            h02 += popcount(x ^ v2)
            h03 += popcount(x ^ v3)
            x = a[m + 1, u]
            h10 += popcount(x ^ v0)
            h11 += popcount(x ^ v1)
            h12 += popcount(x ^ v2)
            h13 += popcount(x ^ v3)
            x = a[m + 2, u]
            h20 += popcount(x ^ v0)
            h21 += popcount(x ^ v1)
            h22 += popcount(x ^ v2)
            h23 += popcount(x ^ v3)
            x = a[m + 3, u]
            h30 += popcount(x ^ v0)
            h31 += popcount(x ^ v1)
            h32 += popcount(x ^ v2)
            h33 += popcount(x ^ v3)
        word0 |= _bits4(k, h00, h01, h02, h03, thr, dirn, j) << (j - base)
        word1 |= _bits4(k, h10, h11, h12, h13, thr, dirn, j) << (j - base)
        word2 |= _bits4(k, h20, h21, h22, h23, thr, dirn, j) << (j - base)
        word3 |= _bits4(k, h30, h31, h32, h33, thr, dirn, j) << (j - base)
    out[m, c] = word0 | _tail_bits(a, m, w, W, k, thr, dirn, j4, j_hi, base)
    out[m + 1, c] = word1 | _tail_bits(a, m + 1, w, W, k, thr, dirn, j4, j_hi, base)
    out[m + 2, c] = word2 | _tail_bits(a, m + 2, w, W, k, thr, dirn, j4, j_hi, base)
    out[m + 3, c] = word3 | _tail_bits(a, m + 3, w, W, k, thr, dirn, j4, j_hi, base)


@numba.njit(inline="always", **_JIT)
def _word2(a, w, W, k, thr, dirn, out, c, m, base, j4, j_hi):
    """Output word c of images m, m+1: two images x four weight rows per pass."""
    word0 = np.int64(0)
    word1 = np.int64(0)
    for j in range(base, j4, 4):
        h00 = h01 = h02 = h03 = h10 = h11 = h12 = h13 = 0
        for u in range(W):  # contiguous: vectorized popcount
            x0 = a[m, u]
            x1 = a[m + 1, u]
            v0 = w[j, u]
            v1 = w[j + 1, u]
            v2 = w[j + 2, u]
            v3 = w[j + 3, u]
            h00 += popcount(x0 ^ v0)
            h01 += popcount(x0 ^ v1)
            h02 += popcount(x0 ^ v2)
            h03 += popcount(x0 ^ v3)
            h10 += popcount(x1 ^ v0)
            h11 += popcount(x1 ^ v1)
            h12 += popcount(x1 ^ v2)
            h13 += popcount(x1 ^ v3)
        word0 |= _bits4(k, h00, h01, h02, h03, thr, dirn, j) << (j - base)
        word1 |= _bits4(k, h10, h11, h12, h13, thr, dirn, j) << (j - base)
    out[m, c] = word0 | _tail_bits(a, m, w, W, k, thr, dirn, j4, j_hi, base)
    out[m + 1, c] = word1 | _tail_bits(a, m + 1, w, W, k, thr, dirn, j4, j_hi, base)


#: Rows of this many words (4096 inputs: the paper's Theano MLP, the MLP ``bench --latency``
#: times) are run by a copy of the loops whose trip count is a compile-time constant, a lone
#: image one row per pass: LLVM unrolls the loops in full and, on AVX2, adds the byte counts of
#: its table popcount over several vectors before a ``vpsadbw`` (a loop of unknown length
#: takes one ``vpsadbw`` and one 64-bit add per vector). On the AMD EPYC (Zen 3, AVX2),
#: interleaved with the loops of unknown length in one process: about 5-15% less time for
#: the hidden layers at batch 1 and 3-10% at batch 10,000 (a noisy shared machine). Other row
#: lengths keep the general loops (a lone image's rows of 32 words, 2048 inputs, one per pass
#: with a constant loop were slower there than four per pass).
UNROLLED_WORDS = 64


@numba.njit(inline="always", **_JIT)
def _hidden_word(a, w, W, k, thr, dirn, out, c):
    """:func:`hidden_word` with the row's words ``W`` as an argument (a constant where the
    caller passes one)."""
    N = w.shape[0]
    M = a.shape[0]
    base = 64 * c
    j_hi = min(base + 64, N)
    j4 = base + (j_hi - base) // 4 * 4
    m4 = M // 4 * 4 if WIDE_TILES else 0
    for m in range(0, m4, 4):
        _word4(a, w, W, k, thr, dirn, out, c, m, base, j4, j_hi)
    for m in range(m4, M - 1, 2):
        _word2(a, w, W, k, thr, dirn, out, c, m, base, j4, j_hi)
    if (M - m4) % 2:
        m = M - 1
        if W == UNROLLED_WORDS:  # one row per pass, its loop unrolled in full
            out[m, c] = _tail_bits(a, m, w, W, k, thr, dirn, base, j_hi, base)
            return
        word = np.int64(0)
        for j in range(base, j4, 4):
            word |= _rows4_bits(a, m, w, j, W, k, thr, dirn) << (j - base)
        out[m, c] = word | _tail_bits(a, m, w, W, k, thr, dirn, j4, j_hi, base)


@numba.njit(**_JIT)
def hidden_word(a, w, k, thr, dirn, out, c):
    """Output word c of a hidden layer: s = k - 2 popcount(a XOR w), compared, packed.
    With :data:`WIDE_TILES`, four images x four weight rows per pass over the words (16
    accumulators: each loaded 512-bit vector feeds four ``vpopcntq``); the other images two
    at a time (two images x four rows), an odd last one alone (batch 1 never computes a row
    twice). Rows of :data:`UNROLLED_WORDS` words take the copy with a constant trip count."""
    if w.shape[1] == UNROLLED_WORDS:
        _hidden_word(a, w, UNROLLED_WORDS, k, thr, dirn, out, c)
    else:
        _hidden_word(a, w, w.shape[1], k, thr, dirn, out, c)


@numba.njit(**_JIT)
def last_layer(a, w, k, s):
    """The last layer's integer pre-activations s (M, N) = k - 2 popcount(a XOR w)."""
    for m in range(a.shape[0]):
        for j in range(w.shape[0]):
            s[m, j] = k - 2 * _xor_popcount(a, m, w, j, w.shape[1])


@numba.njit(boundscheck=False, nogil=True, cache=CACHE)  # no fastmath: numpy's rounding
def affine_argmax(s, a, mu, beta, out):
    """``out[m]`` = the first j of the largest ``a[j] * (s[m, j] - mu[j]) + beta[j]``, in
    float64 with each operation rounded as numpy rounds it (no fused multiply-add), and the
    first NaN where there is one: ``np.argmax(a * (s - mu) + beta, axis=1)`` without its
    three float arrays (microseconds each at batch 1, with the caches cold after the weights
    streamed through)."""
    for m in range(s.shape[0]):
        best = 0
        top = a[0] * (np.float64(s[m, 0]) - mu[0]) + beta[0]
        if not np.isnan(top):
            for j in range(1, s.shape[1]):
                v = a[j] * (np.float64(s[m, j]) - mu[j]) + beta[j]
                if np.isnan(v):
                    best = j
                    break
                if v > top:
                    best = j
                    top = v
        out[m] = best


class FirstLayer(NamedTuple):
    """The first layer's arrays (N0 neurons, k inputs, W0 = ceil(k / 64) words)."""

    #: int64 (W0, N0): the packed weights, transposed (word u of every neuron contiguous), for
    #: the bit planes.
    weight_t: np.ndarray
    #: int8 (k, N0): the +/-1 weights read row by nonzero pixel; (0, 0) when never used.
    int8_rows: np.ndarray
    #: int64 (N0,): the sum of W_b per neuron.
    wsum: np.ndarray
    #: int64 (N0,): the compare of Sign(BN), as :func:`bit` takes it.
    threshold: np.ndarray
    #: int64 (N0,): +1 for t >= threshold, -1 for t <= threshold.
    direction: np.ndarray


class HiddenLayers(NamedTuple):
    """The hidden layers, flattened into plain arrays (numba dispatches those fast)."""

    #: int64 (L, 5): per layer (out, in words, k, weight offset, threshold offset) into the
    #: flat arrays below.
    table: np.ndarray
    #: int64: every layer's packed weights (out, in words), one after the other.
    weights: np.ndarray
    #: int64: every layer's thresholds, one after the other.
    thresholds: np.ndarray
    #: int64: every layer's directions, one after the other.
    directions: np.ndarray


class LastLayer(NamedTuple):
    """The last layer, whose integer pre-activations are the output."""

    #: int64 (classes, words): the packed weights.
    weight: np.ndarray
    #: The k of ``s = k - 2 popcount(a XOR w)``: its inputs.
    k: int


class Buffers(NamedTuple):
    """What one call writes, allocated once per batch size M by the caller."""

    #: int64 (M, 8, W0): the bit planes of the images.
    planes: np.ndarray
    #: int64 (M, k): each image's nonzero pixel indices, and (M,) their counts.
    nonzero: np.ndarray
    nnz: np.ndarray
    #: int64 (M,): each image's pixel sum.
    sumx: np.ndarray
    #: bool (M,): whether the int8 product was chosen for the image.
    use_int8: np.ndarray
    #: int64 (L + 1, M * max words): the packed activations after each Sign layer.
    acts: np.ndarray
    #: int64 (M, classes): the output, the last layer's integer pre-activations.
    s: np.ndarray


@numba.njit(inline="always", **_JIT)
def _first_block(x, m, use_int8, planes, nonzero, nnz, sumx, w0, w8t, wsum, thr0, dir0, out, b):
    """Output words 8b .. 8b+7 of the first layer for image m, by the product chosen for it."""
    if use_int8[m]:
        _first_block_int8(x, m, nonzero, nnz, w8t, wsum, thr0, dir0, out, b)
    else:
        _first_block_bitplanes(m, planes, sumx, w0, wsum, thr0, dir0, out, b)


@numba.njit(inline="always", **_JIT)
def _first_layer(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                 w0, w8t, wsum, thr0, dir0, acts):  # fmt: skip
    """The first layer of :func:`_forward` into ``acts[0]``: each image by int8 rows or bit
    planes, threads over images (large calls) or over each image's neurons (small ones)."""
    M = x.shape[0]
    _prepare_input(x, planes, nonzero, nnz, sumx)
    words = (w0.shape[1] + 63) // 64
    blocks = (words + 7) // 8
    out = acts[0, : M * words].reshape(M, words)
    for m in range(M):
        use_int8[m] = first_mode == 1 or (first_mode == 2 and nnz[m] < int8_max_nonzero)
    if M >= FIRST_SPLIT_IMAGES:  # threads take whole images: one parallel region per call
        for m in numba.prange(M):
            for b in range(blocks):
                _first_block(x, m, use_int8, planes, nonzero, nnz, sumx, w0, w8t, wsum,
                             thr0, dir0, out, b)  # fmt: skip
    else:  # threads split each image's neurons
        for m in range(M):
            for b in numba.prange(blocks):
                _first_block(x, m, use_int8, planes, nonzero, nnz, sumx, w0, w8t, wsum,
                             thr0, dir0, out, b)  # fmt: skip


@numba.njit(inline="always", **_JIT)
def _forward(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
             w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
             w_last, k_last, s):  # fmt: skip
    """The whole MLP: the arguments of :func:`mlp_forward`, its groups' arrays one by one in
    the order of :attr:`BoundMLP.arrays`."""
    M = x.shape[0]
    if first_mode != FIRST_GIVEN:
        _first_layer(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                     w0, w8t, wsum, thr0, dir0, acts)  # fmt: skip
    for layer in range(table.shape[0]):
        n, w_in, k = table[layer, 0], table[layer, 1], table[layer, 2]
        w_off, t_off = table[layer, 3], table[layer, 4]
        a = acts[layer, : M * w_in].reshape(M, w_in)
        w = w_flat[w_off : w_off + n * w_in].reshape(n, w_in)
        th, di = thr_flat[t_off : t_off + n], dir_flat[t_off : t_off + n]
        words = (n + 63) // 64
        o = acts[layer + 1, : M * words].reshape(M, words)
        for c in numba.prange(words):
            hidden_word(a, w, k, th, di, o, c)
    w_in = w_last.shape[1]
    last_layer(acts[table.shape[0], : M * w_in].reshape(M, w_in), w_last, k_last, s)


@numba.njit(**_JIT)
def _forward_serial(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                    w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
                    w_last, k_last, s):  # fmt: skip
    _forward(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
             w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
             w_last, k_last, s)  # fmt: skip


@numba.njit(parallel=True, **_JIT)
def _forward_parallel(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                      w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
                      w_last, k_last, s):  # fmt: skip
    _forward(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
             w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
             w_last, k_last, s)  # fmt: skip


@numba.njit(**_JIT)
def _first_serial(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                  w0, w8t, wsum, thr0, dir0, table, w_flat, thr_flat, dir_flat, acts,
                  w_last, k_last, s):  # fmt: skip
    """The first layer of :func:`_forward` only, on the calling thread (into ``acts[0]``)."""
    _first_layer(x, first_mode, int8_max_nonzero, planes, nonzero, nnz, sumx, use_int8,
                 w0, w8t, wsum, thr0, dir0, acts)  # fmt: skip


@numba.njit(parallel=True, **_JIT)
def _forward_chunks(x, chunk, first_mode, int8_max_nonzero, w0, w8t, wsum, thr0, dir0, table,
                    w_flat, thr_flat, dir_flat, w_last, k_last, s, words, given):  # fmt: skip
    """:func:`_forward` on chunks of ``chunk`` images of ``x``, the chunks shared between
    threads; the prange loops inside :func:`_forward` run serially within a chunk (numba
    parallelizes the outermost prange only). ``words``: the widest layer's output words;
    ``given``: with :data:`FIRST_GIVEN`, the first layer's packed output (M, its words)."""
    M, K = x.shape
    for c in numba.prange((M + chunk - 1) // chunk):
        lo = c * chunk
        m = min(M, lo + chunk) - lo
        acts = np.zeros((table.shape[0] + 1, m * words), np.int64)
        if first_mode == FIRST_GIVEN:
            g = given.shape[1]
            for i in range(m):
                acts[0, i * g : (i + 1) * g] = given[lo + i]
        _forward(x[lo : lo + m], first_mode, int8_max_nonzero, np.zeros((m, 8, w0.shape[0]),
                 np.int64), np.zeros((m, K), np.int64), np.zeros(m, np.int64),
                 np.zeros(m, np.int64), np.zeros(m, np.bool_), w0, w8t, wsum, thr0, dir0,
                 table, w_flat, thr_flat, dir_flat, acts, w_last, k_last,
                 s[lo : lo + m])  # fmt: skip


def mlp_forward_chunks(
    x: np.ndarray,
    chunk: int,
    first_mode: int,
    int8_max_nonzero: int,
    first: FirstLayer,
    hidden: HiddenLayers,
    last: LastLayer,
    words: int,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The MLP on uint8 images ``x`` (M, k) in chunks of ``chunk`` images shared between
    threads (one parallel region per call), each chunk on one thread with buffers of its own;
    returns the last layer's integer pre-activations s (M, classes), a new array.
    ``first_mode``: as :func:`mlp_forward`, with :data:`FIRST_GIVEN` the first layer's packed
    output in ``given`` (int64, M x its output words, computed by the caller); ``words``: the
    output words of the widest layer but the last. Validated by the caller."""
    if (first_mode == FIRST_GIVEN) != (given is not None):
        raise ValueError("mlp_forward_chunks takes `given` with FIRST_GIVEN, and only then")
    if given is None:
        given = np.zeros((0, 1), np.int64)
    s = np.empty((x.shape[0], last.weight.shape[0]), np.int64)
    _forward_chunks(x, chunk, first_mode, int8_max_nonzero, *first, *hidden, *last, s, words, given)
    return s


class BoundMLP:
    """The arrays of one MLP at one batch size, bound once for :func:`mlp_forward`'s kernels.

    ``BoundMLP(first, hidden, last, buffers).run(parallel, x, first_mode, int8_max_nonzero)``
    runs the MLP on uint8 images ``x`` (M, k), filling ``buffers.s`` in place.
    The compiled functions take the arrays one by one, as plain arguments, in an order this
    class keeps: kernels taking the groups as tuples were slower per image at batch 1 (numba
    unboxes a NamedTuple more slowly than its arrays), and so was spreading the groups into
    the arguments at every call; their flat tuple, made here once, costs nothing per call.
    """

    def __init__(self, first: FirstLayer, hidden: HiddenLayers, last: LastLayer, buffers: Buffers):
        self.first, self.hidden, self.last, self.buffers = first, hidden, last, buffers
        b = buffers
        self.arrays = (
            b.planes, b.nonzero, b.nnz, b.sumx, b.use_int8, *first, *hidden, b.acts, *last, b.s,
        )  # fmt: skip

    def run(self, parallel: bool, x: np.ndarray, first_mode: int, int8_max_nonzero: int) -> None:
        """:func:`mlp_forward` on the bound arrays."""
        (_forward_parallel if parallel else _forward_serial)(
            x, first_mode, int8_max_nonzero, *self.arrays
        )

    def run_first(self, x: np.ndarray, first_mode: int, int8_max_nonzero: int) -> None:
        """The first layer only, into ``buffers.acts[0]``, on the calling thread (for
        :class:`bnnlib.kernels.native.Batch1Plan`, which runs the other layers)."""
        _first_serial(x, first_mode, int8_max_nonzero, *self.arrays)


def mlp_forward(
    parallel: bool,
    x: np.ndarray,
    first_mode: int,
    int8_max_nonzero: int,
    first: FirstLayer,
    hidden: HiddenLayers,
    last: LastLayer,
    buffers: Buffers,
) -> np.ndarray:
    """Run the MLP on uint8 images ``x`` (M, k), on one thread or on all of them; returns
    ``buffers.s``, filled in place. ``first_mode``: :data:`FIRST_BITPLANES`,
    :data:`FIRST_INT8`, :data:`FIRST_AUTO` (int8 for images with fewer than
    ``int8_max_nonzero`` nonzero pixels) or :data:`FIRST_GIVEN` (the caller has written the
    first layer's packed output into ``buffers.acts[0]``); the arrays are grouped by
    :class:`FirstLayer`, :class:`HiddenLayers`, :class:`LastLayer` and :class:`Buffers`
    (integers int64 unless said). For repeated calls on the same arrays bind them once with
    :class:`BoundMLP`.

    Validated by the caller (:class:`bnnlib.inference.fused.FusedMLP`): no bounds checks here.
    """
    BoundMLP(first, hidden, last, buffers).run(parallel, x, first_mode, int8_max_nonzero)
    return buffers.s
