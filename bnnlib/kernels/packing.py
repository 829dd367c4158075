"""Bit packing: a ±1 vector as the bits of machine words (paper Section 4, "SWAR").

A binary value x in {-1, +1} needs one bit. The paper stores bit 1 for +1 and bit 0
for -1 and packs 32 of them into an unsigned int, so that one XOR + popcount does 32
binary multiply-accumulates (:mod:`bnnlib.kernels.xnor`). Here the words are 64 bits
(stored as ``torch.int64``; the bit pattern is what matters, not the sign) or 32 bits
(``word_bits=32``, ``torch.int32``, the word size of the paper's CUDA kernel).

Bit order is LSB-first: entry ``e`` of the packed dimension lands in word ``e // B``
at bit ``e % B`` (B = word_bits). A length k that is not a multiple of B is padded
with 0 bits up to ``W = ceil(k / B)`` words. Both operands of a product are padded the
same way, so the padding XORs to 0 and adds nothing to popcount(a XOR b): the result
k - 2 * popcount(a XOR b) stays exact. With this order the 32-bit packing of a row is,
byte for byte, its 64-bit packing (little-endian), so the two convert for free.
"""

from __future__ import annotations

import math
import sys

import numba
import numpy as np
import torch

from bnnlib.kernels._cache import CACHE

__all__ = [
    "pack", "try_pack", "unpack", "pack_bits", "num_words", "check_pm1", "threshold_pack", "fires",
]  # fmt: skip

_WORD_DTYPES = {64: torch.int64, 32: torch.int32}
_BIT_WEIGHTS = [1 << i for i in range(8)]  # LSB-first within each byte


# numpy/numba can read these directly; other dtypes (float16, bfloat16) go through float32,
# which is exact for the values that matter here (±1, 0/1) and keeps the others non-±1.
_NUMBA_DTYPES = {
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
}


SERIAL_ENTRIES = 1 << 16  # below this many entries, pack on the calling thread


@numba.njit(inline="always", cache=CACHE, boundscheck=False, nogil=True)
def _pack_row(x, out, r, nonzero):
    """Pack row r of x (R, k) into out[r] (64-bit words, LSB-first); returns #non-±1.

    The bit is x > 0 (±1 data), or x != 0 when ``nonzero`` (0/1 data, no check).
    """
    k = x.shape[1]
    bad = 0
    for w in range(out.shape[1]):
        word = 0
        for e in range(min(64, k - 64 * w)):
            v = x[r, 64 * w + e]
            if nonzero:
                bit = v != 0
            else:
                bit = v > 0
                bad += (v != 1) & (v != -1)
            word |= numba.int64(bit) << e
        out[r, w] = word
    return bad


@numba.njit(parallel=True, cache=CACHE, boundscheck=False, nogil=True)
def _pack_rows_kernel(x, out, nonzero):
    n_bad = 0
    for r in numba.prange(x.shape[0]):
        n_bad += _pack_row(x, out, r, nonzero)
    return n_bad


@numba.njit(cache=CACHE, boundscheck=False, nogil=True)
def _pack_rows_kernel_serial(x, out, nonzero):
    n_bad = 0
    for r in range(x.shape[0]):
        n_bad += _pack_row(x, out, r, nonzero)
    return n_bad


@numba.njit(parallel=True, cache=CACHE, boundscheck=False, nogil=True)
def _unpack_rows_kernel(words, out):
    """out (R, k) float32 = ±1 from the LSB-first bits of words (R, W)."""
    R, k = out.shape
    for r in numba.prange(R):
        for e in range(k):
            bit = (words[r, e >> 6] >> (e & 63)) & 1
            out[r, e] = 2.0 * bit - 1.0


def num_words(k: int, word_bits: int = 64) -> int:
    """W = ceil(k / word_bits), the number of words that hold k bits."""
    return math.ceil(k / word_bits)


def words_as_int64(t: torch.Tensor) -> torch.Tensor:
    """2-D packed words as int64 (R, ceil(W / 2)): int32 words (``word_bits=32``) are
    converted for free, as two consecutive LSB-first int32 words are one little-endian int64
    word (an odd count gets a zero word); any other dtype is returned as is. Any device."""
    if t.dtype != torch.int32:
        return t
    if t.shape[1] % 2:
        t = torch.nn.functional.pad(t, (0, 1))
    return t.contiguous().view(torch.int64) if t.shape[1] else t.long()


def _word_dtype(word_bits: int) -> torch.dtype:
    if word_bits not in _WORD_DTYPES:
        raise ValueError(f"word_bits must be 64 or 32, got {word_bits!r}")
    return _WORD_DTYPES[word_bits]


_UNSIGNED = {torch.uint8, torch.uint16, torch.uint32, torch.uint64}


def check_pm1(x: torch.Tensor, what: str = "pack") -> None:
    """Raise one clear ValueError unless every entry of x is exactly +1 or -1.

    An unsigned tensor cannot hold -1: ``x == -1`` would compare with -1 wrapped to the
    largest value (255 for uint8), so there every entry must be 1.
    """
    unsigned = x.dtype in _UNSIGNED
    bad = (x != 1) if unsigned else ~((x == 1) | (x == -1))
    n_bad = int(bad.sum())
    if not n_bad:
        return
    example = x[bad].flatten()[0].item()
    if unsigned:
        raise ValueError(
            f"{what} expects a tensor of ±1 values, but it is {x.dtype}, an unsigned type "
            f"that cannot hold -1: {n_bad} of {x.numel()} entries are not 1 (for example "
            f"{example!r}; -1 cast to {x.dtype} wraps to {torch.iinfo(x.dtype).max}). "
            "Binarize in a signed or float dtype, e.g. bnnlib.sign(x.float()); if the "
            "largest value stands for -1, reinterpret with x.view(torch.int8) (uint8)."
        )
    raise ValueError(
        f"{what} expects a tensor of ±1 values, but {n_bad} of {x.numel()} entries are not "
        f"±1 (for example {example!r}). Binarize first with bnnlib.sign(x) "
        "(Sign(x) = +1 where x >= 0, else -1)."
    )


def _pack_cpu(x: torch.Tensor, word_bits: int, nonzero: bool) -> tuple[torch.Tensor, int]:
    """numba pack of the last dim of a CPU tensor -> (words, number of non-±1 entries)."""
    k = x.shape[-1]
    lead = x.shape[:-1]
    n_bad = 0
    if nonzero and x.dtype == torch.bool:
        # Bits already: numpy's packbits is one pass, several times faster than numbers first.
        out = _packbits64(x.reshape(math.prod(lead), k))
    else:
        if x.dtype not in _NUMBA_DTYPES:
            x = x.float()
        rows = x.reshape(math.prod(lead), k).contiguous()
        out = torch.empty((rows.shape[0], num_words(k, 64)), dtype=torch.int64)
        if rows.numel():
            kernel = (
                _pack_rows_kernel_serial if rows.numel() < SERIAL_ENTRIES else _pack_rows_kernel
            )
            n_bad = int(kernel(rows.numpy(), out.numpy(), nonzero))
    if word_bits == 32:  # LSB-first: a 64-bit word is two little-endian 32-bit words
        out = out.view(torch.int32)[:, : num_words(k, 32)]
    return out.reshape(*lead, out.shape[1]), n_bad


def _packbits64(bits: torch.Tensor) -> torch.Tensor:
    """(R, k) CPU bool -> (R, ceil(k / 64)) int64 words, LSB-first, zero padded."""
    b = np.packbits(bits.contiguous().numpy(), axis=-1, bitorder="little")
    pad = num_words(bits.shape[-1], 64) * 8 - b.shape[-1]
    if pad:
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(b).view("<i8"))  # little-endian words


def _pack_torch(bits: torch.Tensor, word_bits: int) -> torch.Tensor:
    """Device-agnostic pack of a bool tensor along its last dim (used off the CPU)."""
    k = bits.shape[-1]
    n_words = num_words(k, word_bits)
    pad = n_words * word_bits - k
    b = bits.to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    lead = b.shape[:-1]
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=b.device)
    # 8 bits -> 1 byte: distinct powers of two, so the sum is an OR and fits in uint8.
    by = (b.reshape(*lead, n_words * word_bits // 8, 8) * weights).sum(-1, dtype=torch.uint8)
    return by.contiguous().view(_WORD_DTYPES[word_bits])  # little-endian bytes -> words


def _pack(x: torch.Tensor, dim: int, word_bits: int, nonzero: bool, what: str) -> torch.Tensor:
    _word_dtype(word_bits)
    if sys.byteorder != "little":  # the byte views assume little-endian words
        raise RuntimeError("bnnlib.kernels packing needs a little-endian machine")
    x = torch.as_tensor(x)
    if x.dim() == 0:
        raise ValueError(f"{what} needs at least one dimension to pack along, got a scalar")
    if x.is_complex():  # x.float() would drop the imaginary part without a word
        raise ValueError(f"{what} expects real values, got {x.dtype}")
    xm = x.movedim(dim, -1)
    if not nonzero and x.dtype in _UNSIGNED:
        check_pm1(x, what)  # the kernels would read 255 as -1 (uint8) or > 0 as +1
    if xm.device.type == "cpu":
        words, n_bad = _pack_cpu(xm, word_bits, nonzero)
        if n_bad:
            check_pm1(x, what)  # slow path, only to build the error message
    else:
        if not nonzero:
            check_pm1(x, what)
        words = _pack_torch(xm != 0 if nonzero else xm > 0, word_bits)
    return words.movedim(-1, dim).contiguous()


def pack_bits(bits: torch.Tensor, dim: int = -1, word_bits: int = 64) -> torch.Tensor:
    """Pack a {0, 1} (or bool) tensor along ``dim`` into words, LSB-first, zero padded.

    The packed dimension becomes ``ceil(k / word_bits)`` long; dtype int64 or int32.
    No value check: nonzero means bit 1. :func:`pack` is the checked ±1 version.
    """
    return _pack(bits, dim, word_bits, nonzero=True, what="pack_bits")


def pack(x: torch.Tensor, dim: int = -1, word_bits: int = 64) -> torch.Tensor:
    """Pack a ±1 tensor along ``dim``: bit 1 for +1, bit 0 for -1, LSB-first.

    Returns int64 words (int32 with ``word_bits=32``); the packed dimension of length k
    becomes ``ceil(k / word_bits)``, zero padded. Raises ValueError when an entry is not
    exactly ±1 (binarize first with :func:`bnnlib.sign`).

    >>> pack(torch.tensor([1.0, -1.0, 1.0, 1.0]))   # bits 0, 2, 3 -> 0b1101
    tensor([13])
    """
    return _pack(x, dim, word_bits, nonzero=False, what="pack")


def try_pack(x: torch.Tensor) -> torch.Tensor | None:
    """:func:`pack` along the last dim of a CPU tensor, or None where an entry is not ±1 (no
    error): one pass that packs and checks, for callers with another way to go (the fast
    training path's products, :mod:`bnnlib.train.fast_linear`)."""
    if x.device.type != "cpu" or x.dtype not in _NUMBA_DTYPES or x.dtype in _UNSIGNED:
        return None
    if x.dim() == 0 or sys.byteorder != "little":
        return None
    words, n_bad = _pack_cpu(x, 64, nonzero=False)
    return None if n_bad else words


def unpack(
    words: torch.Tensor, k: int, dim: int = -1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`pack`: words (int64, or int32 for 32-bit words) -> ±1 of length k.

    The word size is read from the dtype. Padding bits beyond k are dropped.
    """
    words = torch.as_tensor(words)
    word_bits = {torch.int64: 64, torch.int32: 32}.get(words.dtype)
    if word_bits is None:
        raise ValueError(
            f"unpack expects int64 (64-bit) or int32 (32-bit) words from pack(), got {words.dtype}"
        )
    if words.dim() == 0:
        raise ValueError("unpack needs at least one dimension of words, got a scalar")
    w = words.movedim(dim, -1).contiguous()
    if k < 0 or w.shape[-1] != num_words(k, word_bits):
        raise ValueError(
            f"unpack: k={k} needs ceil(k/{word_bits}) = {num_words(max(k, 0), word_bits)} words "
            f"along dim {dim}, but the tensor has {w.shape[-1]}"
        )
    lead = w.shape[:-1]
    if w.device.type == "cpu":
        w64 = w.reshape(math.prod(lead), w.shape[-1])
        w64 = words_as_int64(w64)
        out = torch.empty((w64.shape[0], k), dtype=torch.float32)
        if out.numel():
            _unpack_rows_kernel(w64.numpy(), out.numpy())
        bits_pm1 = out.reshape(*lead, k).to(dtype)
    else:
        by = w.view(torch.uint8).reshape(*lead, -1, 1)
        shifts = torch.arange(8, dtype=torch.uint8, device=w.device)
        bits = ((by >> shifts) & 1).reshape(*lead, -1)[..., :k]
        bits_pm1 = bits.to(dtype) * 2 - 1
    return bits_pm1.movedim(-1, dim).contiguous()


def threshold_pack(
    acc: torch.Tensor, threshold: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """Batch norm + Sign of integer pre-activations as packed bits (the next layer's input).

    With gamma != 0, Sign(gamma (acc - mu) / sigma + beta) = +1 exactly when
    acc >= T (gamma > 0) or acc <= T (gamma < 0), T = mu - beta sigma / gamma; for integer
    acc the real T rounds to an integer threshold (ceil for >=, floor for <=). Bit j of
    row i is 1 where ``acc[i, j] >= threshold[j]`` if ``direction[j] >= 0``, else where
    ``acc[i, j] <= threshold[j]`` (Sign(0) = +1: equality gives 1 both ways).
    ``acc`` (M, N), ``threshold`` and ``direction`` (N,). Returns int64 (M, ceil(N/64)).
    """
    acc, threshold, direction = (torch.as_tensor(t) for t in (acc, threshold, direction))
    if acc.dim() != 2 or threshold.shape != (acc.shape[1],) or direction.shape != threshold.shape:
        raise ValueError(
            f"threshold_pack expects acc (M, N) with threshold and direction (N,), got "
            f"{tuple(acc.shape)}, {tuple(threshold.shape)}, {tuple(direction.shape)}"
        )
    return pack_bits(fires(acc, threshold, direction))


def fires(acc: torch.Tensor, threshold: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """bool, acc's shape: Sign(BN(acc)) = +1, i.e. ``acc >= threshold`` where ``direction >= 0``
    and ``acc <= threshold`` elsewhere (the compare of :func:`threshold_pack`, unpacked)."""
    return torch.where(direction >= 0, acc >= threshold, acc <= threshold)
