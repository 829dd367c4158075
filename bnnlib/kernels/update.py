"""The training updates in one pass over each parameter's memory (numba), bit for bit torch's.

:func:`adamax_step_` is shift-based AdaMax with the clipping (and, optionally, Sign(theta));
:func:`clip_sign_` is the clipping and Sign(theta) after a torch optimizer's step (Adam).

:func:`bnnlib.nn.optim.shift_adamax_` is the readable update (paper Algorithm 4 and the Torch7
variant), written as eleven multi-tensor torch operations. Each reads and writes whole tensors:
on the Torch7 MNIST preset's 10.0 M latent weights that is about 40 passes over memory a step, and
more time than the forward pass. :func:`adamax_step_` does the same arithmetic element by element
in one pass (reading theta, g, m, v once, writing theta, m, v once), clipping included, on all
cores, and gives the same float32 values bit for bit. The operations are the ones torch runs,
each rounded once as torch rounds it::

    m     = fma(1 - beta1, g - m, m)      # torch.lerp (weight < 0.5): one fused multiply-add
    v     = max(v * beta2, |g|)           # NaN propagates, as torch.maximum
    torch7: v = AP2(v) + eps;  theta = fma(m / v, -alpha, theta)
    paper:  theta = fma(m / AP2(v + eps), -alpha, theta)
    theta = min(max(theta, -1), 1)        # clipping of binary weights (Algorithm 1)

with beta2, eps and alpha rounded to float32 as torch does with a Python scalar, and theta's
update as torch's ``sub_(x, alpha=a)`` computes it (one fused multiply-add).

AP2 as torch computes it. ``2^round(log2 x)`` in float32 is not quite the exact nearest power of
two: for the floats within a few units in the last place of sqrt(2) * 2^e, float32's log2 rounds
to e + 1/2 (or to its neighbour on the wrong side) and ``round`` sends the tie to the even
integer, so AP2 is one power of two off, either way (up to 32 floats per binade; 5,343 of the
2^31 positive floats). The training runs of this book used that AP2, so the fast path keeps it:
:func:`ap2_thresholds` reads, for every binade [2^e, 2^(e+1)), the first float that torch's AP2
sends up to 2^(e+1), once per process, from torch itself on a window around sqrt(2) * 2^e, and
refuses (:class:`AP2TableError`) unless the window shows a single step within ``NEAR`` floats
of the exact one. The kernel rounds by the exact rule (the mantissa against sqrt(2)'s,
vectorized) and takes the table for the rare chunks that hold a value within ``NEAR`` floats
of a threshold: exactly torch's value. ``exact=True`` gives the exact AP2 instead, for
comparison (``tests/test_fast_step.py`` shows where the two differ).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from bnnlib.kernels._cache import CACHE
from bnnlib.nn.optim import ap2_nonnegative  # the reference: torch's AP2, as trained

__all__ = [
    "AP2TableError", "ap2_thresholds", "ap2_numpy", "adamax_step_", "clip_sign_", "VARIANTS",
]  # fmt: skip

VARIANTS = ("paper", "torch7")
#: Binades of positive float32: 2^e for e = -149 (the smallest subnormal) .. 127.
E_MIN, E_MAX = -149, 127
_WINDOW = 4096  # floats on each side of sqrt(2) * 2^e where torch's AP2 is read
_CHUNK = 1024  # elements updated together (16 KB of the four arrays: in L1)
_BLOCK = 1 << 16  # elements per parallel task
_SERIAL = 1 << 17  # below this many elements one thread does it all


class AP2TableError(RuntimeError):
    """torch's AP2 is not a single step inside a binade's window: the table cannot copy it."""


def _pow2_bits(e: int) -> int:
    """The float32 bits of 2^e for e in [E_MIN, E_MAX + 1] (2^128: +inf)."""
    if e > E_MAX:
        return 0x7F800000
    if e >= -126:
        return (e + 127) << 23
    return 1 << (e + 149)


def _torch_ap2(bits: np.ndarray) -> np.ndarray:
    """torch's AP2 of the floats whose bits are ``bits``, as bits."""
    x = torch.from_numpy(bits.view(np.float32))
    return ap2_nonnegative([x])[0].numpy().view(np.uint32)


@functools.cache
def ap2_thresholds(exact: bool = False) -> np.ndarray:
    """uint32[E_MAX - E_MIN + 1]: for binade e, the bits of the smallest x in [2^e, 2^(e+1)) that
    AP2 sends to 2^(e+1) (``_pow2_bits(e + 1)`` when none does).

    ``exact=False``: torch's AP2 (:func:`bnnlib.nn.optim.ap2_nonnegative`), read on a window of
    2 x 4096 floats around sqrt(2) * 2^e (the whole binade when it is smaller); the ends of the
    window and the single step between them are checked. ``exact=True``: x >= sqrt(2) * 2^e.
    """
    sqrt2 = math.sqrt(2.0)
    spans = []
    for e in range(E_MIN, E_MAX + 1):
        lo, hi = _pow2_bits(e), _pow2_bits(e + 1)  # the binade's bits: [lo, hi)
        # the first float >= sqrt(2) * 2^e (float64 holds every float32 exactly)
        centre = int(np.float32(sqrt2 * 2.0**e).view(np.uint32))
        if float(np.uint32(centre).view(np.float32)) < sqrt2 * 2.0**e:
            centre += 1
        spans.append((e, lo, hi, centre, max(lo, centre - _WINDOW), min(hi, centre + _WINDOW)))
    if exact:
        return np.array([min(centre, hi) for _, _, hi, centre, _, _ in spans], dtype=np.uint32)
    # torch's AP2 of every window, in one call
    ups = np.split(
        _torch_ap2(np.concatenate([np.arange(a, b, dtype=np.uint32) for *_, a, b in spans])),
        np.cumsum([b - a for *_, a, b in spans])[:-1],
    )
    table = np.empty(len(spans), dtype=np.uint32)
    for i, ((e, lo, hi, centre, a, b), out) in enumerate(zip(spans, ups, strict=True)):
        up = out == np.uint32(hi)
        first_up = int(np.argmax(up)) if up.any() else len(up)
        one_step = not up[:first_up].any() and up[first_up:].all()
        far = e >= -126 and abs((a + first_up) - centre) >= NEAR  # outside the kernel's window
        if not one_step or (a > lo and up[0]) or (b < hi and not up[-1]) or far:
            raise AP2TableError(
                f"torch's AP2 is not one step within {NEAR} floats of sqrt(2) * 2^{e} on this "
                "machine: the one-pass AdaMax cannot copy it (the fast training step then uses "
                "torch's operations)"
            )
        table[i] = a + first_up if first_up < len(up) else hi
    return table


@functools.cache
def _pow2_table() -> np.ndarray:
    """float32[E_MAX - E_MIN + 2]: 2^e for e = E_MIN .. E_MAX + 1 (the last is +inf)."""
    bits = np.array([_pow2_bits(e) for e in range(E_MIN, E_MAX + 2)], dtype=np.uint32)
    return bits.view(np.float32)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM ``fma``; the hardware instruction on x86-64 with FMA)."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)) or not a == b == c:
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def _bits(typingctx, x):
    """The bits of a float32 as uint32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@intrinsic
def _float(typingctx, b):
    """The float32 whose bits are the uint32 b."""
    if b != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(b), codegen


_JIT = {"boundscheck": False, "nogil": True, "cache": CACHE, "error_model": "numpy"}
_SIGN = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_MANT = np.uint32(0x7FFFFF)
#: The mantissa bits of the first float32 >= sqrt(2) (1.41421365...): the exact AP2 rounds up
#: from there in every normal binade.
EXACT_MANTISSA = 0x3504F4
#: Mantissas within this many units of EXACT_MANTISSA take the table (torch's thresholds lie
#: within it: :func:`ap2_thresholds` checks); every other normal float has torch's AP2 = exact.
NEAR = 128


@numba.njit(inline="always", **_JIT)
def _ap2_table(x, thr, pow2):
    """AP2 of a float32 x >= 0 by its bits and the threshold table (module docstring)."""
    b = _bits(x)
    expo = np.int32(b >> np.uint32(23))
    # a subnormal's binade: the exponent of its mantissa converted exactly to float32
    sub = np.int32(_bits(np.float32(np.int32(b))) >> np.uint32(23)) - np.int32(276)
    e = expo - np.int32(127) if expo > 0 else sub
    i = max(e - np.int32(E_MIN), np.int32(0))
    r = pow2[i + 1] if b >= thr[i] else pow2[i]
    return x if (b >= _INF or b == 0) else r  # +inf, NaN and 0 are their own AP2, as in torch


@numba.njit(inline="always", **_JIT)
def _ap2_far(x):
    """AP2 of a normal float32 x > 0 whose mantissa is not near sqrt(2)'s: exact = torch's."""
    b = _bits(x)
    up = np.uint32(1) if (b & _MANT) >= np.uint32(EXACT_MANTISSA) else np.uint32(0)
    return _float(np.uint32(((b >> np.uint32(23)) + up) << np.uint32(23)))


@numba.njit(inline="always", **_JIT)
def _near(x):
    """1 where :func:`_ap2_far` may differ from torch's AP2 (mantissa near sqrt(2)'s, or x is
    0, subnormal, inf or NaN), else 0."""
    b = _bits(x)
    expo = b >> np.uint32(23)
    off = np.int32(b & _MANT) - np.int32(EXACT_MANTISSA)
    return np.int32((off < NEAR) & (off > -NEAR) | (expo == 0) | (expo >= 255))


@numba.njit(inline="always", **_JIT)
def _max_nan(a, b):
    """torch.maximum: NaN if either is NaN (selects, no branches)."""
    r = a if a >= b else b
    r = b if b != b else r
    return a if a != a else r


@numba.njit(inline="always", **_JIT)
def _abs(x):
    return _float(np.uint32(_bits(x) & _SIGN))


@numba.njit(inline="always", **_JIT)
def _inf_norm(v, g, b2):
    """max(v * beta2, |g|), as torch's mul_ then maximum_."""
    return _max_nan(v * b2, _abs(g))


@numba.njit(inline="always", **_JIT)
def _count_near(g, v, b2, eps, torch7):
    """How many AP2 inputs of this chunk are near a threshold (:func:`_near`)."""
    count = np.int32(0)
    for i in range(g.shape[0]):
        x = _inf_norm(v[i], g[i], b2)
        count += _near(x if torch7 else x + eps)
    return count


@numba.njit(inline="always", **_JIT)
def _moments(g, m, v, w1, b2, eps, torch7):
    """(m, v, x) of one element: the new moments, and what AP2 rounds (v, or v + eps)."""
    mi = _fma(w1, g - m, m)
    vi = _inf_norm(v, g, b2)
    return mi, vi, (vi if torch7 else vi + eps)


@numba.njit(inline="always", **_JIT)
def _apply(p, mi, vi, r, eps, neg_alpha, torch7, clip):
    """(theta, v) of one element from its moments and r = AP2(x) (or x): the step, clipped.
    The flags choose by selects, not branches, so that LLVM vectorizes the loops."""
    one = np.float32(1.0)
    vi = r + eps if torch7 else vi
    pi = _fma(mi / (vi if torch7 else r), neg_alpha, p)
    c = -one if pi < -one else pi  # clamp_min then clamp_max: NaN stays NaN
    c = one if c > one else c
    return (c if clip else pi), vi


@numba.njit(inline="always", **_JIT)
def _sign(x):
    """copysign(1, x + 0.0): +1 where x >= 0 (-0.0 included), else -1, and a NaN's own sign,
    as :func:`bnnlib.nn.binarize.sign`."""
    signbit = np.uint32(_bits(x + np.float32(0.0)) & np.uint32(0x80000000))
    return _float(np.uint32(signbit | np.uint32(0x3F800000)))


@numba.njit(inline="always", **_JIT)
def _chunk_far(p, g, m, v, w1, b2, eps, neg_alpha, torch7, shift, clip):
    """A chunk with no AP2 input near a threshold (vectorized)."""
    for i in range(p.shape[0]):
        mi, vi, x = _moments(g[i], m[i], v[i], w1, b2, eps, torch7)
        r = _ap2_far(x) if shift else x
        p[i], v[i] = _apply(p[i], mi, vi, r, eps, neg_alpha, torch7, clip)
        m[i] = mi


@numba.njit(inline="always", **_JIT)
def _chunk_far_signs(p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip):
    """:func:`_chunk_far`, and Sign(theta) into ``s`` (vectorized)."""
    for i in range(p.shape[0]):
        mi, vi, x = _moments(g[i], m[i], v[i], w1, b2, eps, torch7)
        r = _ap2_far(x) if shift else x
        pi, v[i] = _apply(p[i], mi, vi, r, eps, neg_alpha, torch7, clip)
        m[i] = mi
        p[i] = pi
        s[i] = _sign(pi)


@numba.njit(inline="always", **_JIT)
def _chunk_table(p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2):
    """A chunk with an AP2 input near a threshold: AP2 by the table, one element at a time;
    Sign(theta) into ``s`` unless it is empty."""
    signs = s.shape[0] > 0
    for i in range(p.shape[0]):
        mi, vi, x = _moments(g[i], m[i], v[i], w1, b2, eps, torch7)
        r = _ap2_table(x, thr, pow2) if shift else x
        pi, v[i] = _apply(p[i], mi, vi, r, eps, neg_alpha, torch7, clip)
        m[i] = mi
        p[i] = pi
        if signs:
            s[i] = _sign(pi)


@numba.njit(inline="always", **_JIT)
def _block(k, p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2):
    """Block k of _BLOCK elements, in chunks of _CHUNK: the vectorized update unless the chunk
    holds an AP2 input near a threshold (about 1 chunk in 100), which takes the table. Sign(theta)
    into ``s`` unless it is empty."""
    n = p.shape[0]
    for c in range(k * _BLOCK, min((k + 1) * _BLOCK, n), _CHUNK):
        e = min(c + _CHUNK, n)
        pc, gc, mc, vc = p[c:e], g[c:e], m[c:e], v[c:e]
        sc = s[c:e] if s.shape[0] > 0 else s
        if shift and _count_near(gc, vc, b2, eps, torch7) > 0:
            _chunk_table(pc, gc, mc, vc, sc, w1, b2, eps, neg_alpha, torch7, shift, clip, thr,
                         pow2)  # fmt: skip
        elif s.shape[0] > 0:
            _chunk_far_signs(pc, gc, mc, vc, sc, w1, b2, eps, neg_alpha, torch7, shift, clip)
        else:
            _chunk_far(pc, gc, mc, vc, w1, b2, eps, neg_alpha, torch7, shift, clip)


@numba.njit(parallel=True, **_JIT)
def _step_parallel(p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2):
    """All blocks, on all cores."""
    for k in prange((p.shape[0] + _BLOCK - 1) // _BLOCK):
        _block(k, p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2)


@numba.njit(**_JIT)
def _step_serial(p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2):
    """:func:`_step_parallel` on the calling thread (small tensors)."""
    for k in range((p.shape[0] + _BLOCK - 1) // _BLOCK):
        _block(k, p, g, m, v, s, w1, b2, eps, neg_alpha, torch7, shift, clip, thr, pow2)


def _flat(t: torch.Tensor, name: str) -> np.ndarray:
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(
            f"adamax_step_: {name} must be a contiguous float32 CPU tensor, got {t.dtype} "
            f"on {t.device}{'' if t.is_contiguous() else ', not contiguous'}"
        )
    return t.detach().view(-1).numpy()


def adamax_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_inf: torch.Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    alpha: float,
    variant: str,
    shift: bool,
    clip: bool,
    sign_out: torch.Tensor | None = None,
) -> None:
    """One AdaMax update of ``param`` in place (module docstring), with its state.

    ``alpha`` is the step size as :func:`bnnlib.nn.optim.shift_adamax_` passes it to
    ``sub_`` (already AP2-rounded when ``shift``); ``clip`` clamps to [-1, 1] after the update.
    ``sign_out`` (optional) receives Sign(theta) of the updated theta in the same pass.
    Contiguous float32 CPU tensors of one shape; values bit for bit those of the torch path.
    The version counters of the tensors written are advanced, as an in-place torch operation
    does, so autograd still notices a tensor changed under a graph that saved it.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    tensors = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_inf": exp_inf}
    if sign_out is not None:
        tensors["sign_out"] = sign_out
    arrays = {name: _flat(t, name) for name, t in tensors.items()}
    if len({a.shape for a in arrays.values()}) != 1:
        raise ValueError(f"adamax_step_: {', '.join(arrays)} must have one shape")
    f32 = np.float32
    signs = arrays.get("sign_out", _NO_SIGNS)
    step = _step_serial if arrays["param"].shape[0] < _SERIAL else _step_parallel
    step(
        arrays["param"], arrays["grad"], arrays["exp_avg"], arrays["exp_inf"], signs,
        f32(1 - beta1), f32(beta2), f32(eps), -f32(alpha), variant == "torch7", bool(shift),
        bool(clip), ap2_thresholds(), _pow2_table(),
    )  # fmt: skip
    for name in ("param", "exp_avg", "exp_inf", "sign_out"):
        if name in tensors:
            torch.autograd.graph.increment_version(tensors[name])


_NO_SIGNS = np.zeros(0, dtype=np.float32)


def clip_sign_(param: torch.Tensor, sign_out: torch.Tensor) -> None:
    """Clip ``param`` to [-1, 1] in place (Algorithm 1; as
    :func:`bnnlib.nn.layers.clip_latent_`: NaN stays NaN) and write Sign(param) into
    ``sign_out``, in one pass; the version counters advance as torch's in-place ops do."""
    p, s = _flat(param, "param"), _flat(sign_out, "sign_out")
    if p.shape != s.shape:
        raise ValueError("clip_sign_: param and sign_out must have one shape")
    (_clip_sign_serial if p.shape[0] < _SERIAL else _clip_sign_parallel)(p, s)
    torch.autograd.graph.increment_version(param)
    torch.autograd.graph.increment_version(sign_out)


@numba.njit(inline="always", **_JIT)
def _clip_sign_chunk(p, s):
    one = np.float32(1.0)
    for i in range(p.shape[0]):
        pi = p[i]
        pi = -one if pi < -one else pi
        pi = one if pi > one else pi
        p[i] = pi
        s[i] = _sign(pi)


@numba.njit(parallel=True, **_JIT)
def _clip_sign_parallel(p, s):
    n = p.shape[0]
    for k in prange((n + _BLOCK - 1) // _BLOCK):
        lo, hi = k * _BLOCK, min((k + 1) * _BLOCK, n)
        _clip_sign_chunk(p[lo:hi], s[lo:hi])


@numba.njit(**_JIT)
def _clip_sign_serial(p, s):
    _clip_sign_chunk(p, s)


def ap2_numpy(x: np.ndarray, exact: bool = False) -> np.ndarray:
    """AP2 of a float32 array of values >= 0 as the kernel computes it: through the table
    (torch's AP2, or ``exact``), or (``exact=None``) the vectorized rule for the elements far
    from a threshold and the table for the others."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if exact is None:
        return _ap2_mixed(x, ap2_thresholds(), _pow2_table())
    return _ap2_array(x, ap2_thresholds(exact), _pow2_table())


@numba.njit(**_JIT)
def _ap2_array(x, thr, pow2):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _ap2_table(x[i], thr, pow2)
    return out


@numba.njit(**_JIT)
def _ap2_mixed(x, thr, pow2):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _ap2_table(x[i], thr, pow2) if _near(x[i]) else _ap2_far(x[i])
    return out
