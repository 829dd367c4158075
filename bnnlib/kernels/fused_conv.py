"""Direct packed convolutions for small batches on the CPU (paper Sections 2.6 and 4).

The layer-at-a-time path of :class:`bnnlib.inference.PackedNet` builds im2col copies of the
packed activations, pads them with words that must be corrected afterwards, and round-trips
every layer through torch. At batch 1 that overhead is most of the time. These kernels work on
the packed NHWC activations (M, H, W, ceil(C/64) words) in place:

* :func:`binary_conv`: for each output position, ``s = sum over the kernel positions inside the
  image of (C - 2 popcount(a XOR w))``. The model pads its binarized input with zeros, which
  contribute nothing, so positions outside the image are skipped (no correction table). The
  weights are laid out (kernel position, word, out channel) so that the innermost loop runs
  over output channels, contiguous and vectorized; it adds four words' popcounts per pass
  into int64 counts. (Before, one int32 add per word: on Zen 3, AVX2, the five binary
  convolutions of a lone CIFAR-10 image's shapes on one thread took 3.02 and 2.84 ms that way,
  2.57 and 2.41 ms this way, in two runs that timed the two in turn.)
* :func:`first_conv`: the 8-bit first layer, ``t = 2 W_b . x - 255 sum(W_b)`` over the valid
  inputs (``t / 255`` is the pre-activation), with int8 +/-1 weights and zero pixels skipped.
* :func:`pool_threshold_pack`: max-pooling of the integers (the min for channels whose batch
  norm, applied before the pool, flips the order), batch norm + Sign as one integer compare,
  and packing, in one pass.

Output rows are shared between threads (``prange``; ``numba.set_num_threads(1)`` keeps a
busy machine's other work undisturbed); every kernel also has a twin on the calling thread
(``*_serial``; :data:`PARALLEL` and :data:`SERIAL` group them), which a lone image takes when
idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``). All of it is exact: the same integers as
the layer-at-a-time path, whose bits equal the float simulation's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from bnnlib.kernels._cache import CACHE
from bnnlib.kernels.fused import bit, hidden_word, last_layer
from bnnlib.kernels.xnor import popcount

__all__ = [
    "binary_conv",
    "first_conv",
    "pool_threshold_pack",
    "dense_sign",
    "last_layer",
    "ConvKernels",
    "PARALLEL",
    "SERIAL",
]

#: The last layer's integer pre-activations, as the fused MLP computes them.
last_layer = last_layer

_JIT = {"fastmath": True, "boundscheck": False, "nogil": True, "cache": CACHE}


@numba.njit(inline="always", **_JIT)
def _tap(out_pos, stride, pad, k, size):
    """The input index that kernel tap k of output position ``out_pos`` reads, or -1 where
    it falls in the padding."""
    p = out_pos * stride - pad + k
    return p if 0 <= p < size else -1


@numba.njit(inline="always", **_JIT)
def _binary_conv(act, wt, channels, geometry, s):
    """s (M, Ho, Wo, out) int32 of packed activations ``act`` (M, H, W, words) and weights
    ``wt`` (kh * kw, words, out) int64; ``geometry`` = (kh, kw, sh, sw, ph, pw)."""
    M, H, W = act.shape[0], act.shape[1], act.shape[2]
    words, out = wt.shape[1], wt.shape[2]
    kh, kw, sh, sw, ph, pw = geometry
    Ho, Wo = s.shape[1], s.shape[2]
    four = words - words % 4
    for r in numba.prange(M * Ho):
        m, ho = r // Ho, r % Ho
        acc = np.empty(out, np.int64)  # popcount's own type: no narrowing per word
        for wo in range(Wo):
            acc[:] = 0
            valid = 0
            for i in range(kh):
                hi = _tap(ho, sh, ph, i, H)
                for j in range(kw):
                    wi = _tap(wo, sw, pw, j, W)
                    if hi < 0 or wi < 0:
                        continue
                    valid += 1
                    a, rows = act[m, hi, wi], wt[i * kw + j]
                    for u in range(0, four, 4):  # four words per pass over acc
                        a0, a1, a2, a3 = a[u], a[u + 1], a[u + 2], a[u + 3]
                        r0, r1, r2, r3 = rows[u], rows[u + 1], rows[u + 2], rows[u + 3]
                        for o in range(out):  # contiguous: vectorized popcount
                            acc[o] += (
                                popcount(a0 ^ r0[o])
                                + popcount(a1 ^ r1[o])
                                + popcount(a2 ^ r2[o])
                                + popcount(a3 ^ r3[o])
                            )
                    for u in range(four, words):
                        a0, r0 = a[u], rows[u]
                        for o in range(out):
                            acc[o] += popcount(a0 ^ r0[o])
            for o in range(out):
                s[m, ho, wo, o] = valid * channels - 2 * acc[o]


@numba.njit(inline="always", **_JIT)
def _first_conv(x, w8, wsum, geometry, s):
    """s (M, Ho, Wo, out) int32: t = 2 W_b . x - 255 sum(W_b) over the valid inputs, for uint8
    images ``x`` (M, C, H, W); ``w8`` (C * kh * kw, out) int8 +/-1 in torch's (c, i, j) order;
    ``wsum`` (Ho * Wo, out) the sum of W_b over each position's valid inputs."""
    M, C, H, W = x.shape
    out = w8.shape[1]
    kh, kw, sh, sw, ph, pw = geometry
    Ho, Wo = s.shape[1], s.shape[2]
    for r in numba.prange(M * Ho):
        m, ho = r // Ho, r % Ho
        acc = np.empty(out, np.int32)
        for wo in range(Wo):
            acc[:] = 0
            for c in range(C):
                for i in range(kh):
                    hi = _tap(ho, sh, ph, i, H)
                    for j in range(kw):
                        wi = _tap(wo, sw, pw, j, W)
                        if hi < 0 or wi < 0 or x[m, c, hi, wi] == 0:
                            continue
                        v = np.int32(x[m, c, hi, wi])
                        row = w8[(c * kh + i) * kw + j]
                        for o in range(out):
                            acc[o] += v * np.int32(row[o])
            p = ho * Wo + wo
            for o in range(out):
                s[m, ho, wo, o] = 2 * acc[o] - 255 * wsum[p, o]


@numba.njit(inline="always", **_JIT)
def _pool_threshold_pack(s, pool, after_bn, thr, dirn, out):
    """Packed bits ``out`` (M, Hp, Wp, words) of Sign(BN(pool(s))) for s (M, Ho, Wo, C) int32;
    ``pool`` = (kh, kw, sh, sw, ph, pw), (1, 1, 1, 1, 0, 0) for none. With ``after_bn`` and
    a flipped channel (direction < 0) the pool takes the min (BN reverses the order): the max
    of -s, negated back. Every window has a tap inside the input (torch pads by at most half
    the kernel): the first one starts its max. The compares fill one 0/1 per channel, and each
    output word ORs 64 of them (loops of constant length: both vectorize)."""
    M, Ho, Wo, C = s.shape
    Hp, Wp, words = out.shape[1], out.shape[2], out.shape[3]
    kh, kw, sh, sw, ph, pw = pool
    sg = np.ones(C, np.int32)  # -1 where the pool takes the min
    if after_bn:
        for c in range(C):
            if dirn[c] < 0:
                sg[c] = -1
    for r in numba.prange(M * Hp):
        m, hp = r // Hp, r % Hp
        best = np.empty(C, np.int32)
        bits = np.zeros(64 * words, np.int64)  # channels past C stay 0
        for wp in range(Wp):
            first = True
            for i in range(kh):
                hi = _tap(hp, sh, ph, i, Ho)
                for j in range(kw):
                    wi = _tap(wp, sw, pw, j, Wo)
                    if hi < 0 or wi < 0:
                        continue
                    if first:
                        for c in range(C):  # contiguous channels: vectorized
                            best[c] = sg[c] * s[m, hi, wi, c]
                        first = False
                    else:
                        for c in range(C):
                            best[c] = max(best[c], sg[c] * s[m, hi, wi, c])
            for c in range(C):
                bits[c] = bit(np.int64(sg[c]) * best[c], thr[c], dirn[c])
            for u in range(words):
                word = np.int64(0)
                for t in range(64):
                    word |= bits[64 * u + t] << t
                out[m, hp, wp, u] = word


@numba.njit(inline="always", **_JIT)
def _dense_sign(a, w, k, thr, dirn, out):
    """A hidden linear layer on packed rows ``a`` (M, words): Sign(BN(k - 2 popcount(a XOR w)))
    packed into ``out`` (M, ceil(N/64)), the MLP path's kernel shared between threads."""
    for c in numba.prange(out.shape[1]):
        hidden_word(a, w, k, thr, dirn, out, c)


# Each kernel twice: its rows shared between threads, and on the calling thread (with
# ``OMP_WAIT_POLICY=PASSIVE`` the threads sleep between parallel regions, and waking them costs
# about 0.1 ms a call on a 2-core EPYC: more than a lone image's pooling takes).


@numba.njit(parallel=True, **_JIT)
def binary_conv(act, wt, channels, geometry, s):
    _binary_conv(act, wt, channels, geometry, s)


@numba.njit(**_JIT)
def binary_conv_serial(act, wt, channels, geometry, s):
    _binary_conv(act, wt, channels, geometry, s)


@numba.njit(parallel=True, **_JIT)
def first_conv(x, w8, wsum, geometry, s):
    _first_conv(x, w8, wsum, geometry, s)


@numba.njit(**_JIT)
def first_conv_serial(x, w8, wsum, geometry, s):
    _first_conv(x, w8, wsum, geometry, s)


@numba.njit(parallel=True, **_JIT)
def pool_threshold_pack(s, pool, after_bn, thr, dirn, out):
    _pool_threshold_pack(s, pool, after_bn, thr, dirn, out)


@numba.njit(**_JIT)
def pool_threshold_pack_serial(s, pool, after_bn, thr, dirn, out):
    _pool_threshold_pack(s, pool, after_bn, thr, dirn, out)


@numba.njit(parallel=True, **_JIT)
def dense_sign(a, w, k, thr, dirn, out):
    _dense_sign(a, w, k, thr, dirn, out)


@numba.njit(**_JIT)
def dense_sign_serial(a, w, k, thr, dirn, out):
    _dense_sign(a, w, k, thr, dirn, out)


class ConvKernels(NamedTuple):
    """The kernels of one ConvNet pass, all shared between threads or all on one."""

    binary_conv: Callable
    first_conv: Callable
    pool_threshold_pack: Callable
    dense_sign: Callable


#: The kernels with their rows shared between threads, and on the calling thread.
PARALLEL = ConvKernels(binary_conv, first_conv, pool_threshold_pack, dense_sign)
SERIAL = ConvKernels(binary_conv_serial, first_conv_serial, pool_threshold_pack_serial,
                     dense_sign_serial)  # fmt: skip
