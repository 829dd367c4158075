"""Hand-written C for one image through a packed MLP (paper Sections 1.6, 2.6 and 4).

At batch 1 a layer is a matrix-vector product and every weight bit is used once.
``bitsliced.c`` (next to this file) counts the differing bits of a block of neurons at once
(512 with AVX-512, 256 with AVX2: :func:`lanes`) in bit-sliced counters with carry-save
adders and compares them with the thresholds in the same bit-sliced form, so that it writes
the packed output words directly; its comments have the arithmetic. The 8-bit first layer is
counted the same way, plane by plane: each bit plane adds the weight vectors of the pixels
whose bit is set (MNIST's black background costs nothing). numba's loops
(:mod:`bnnlib.kernels.fused`) count along each weight row instead, and spend a good share of
their instructions on each row's horizontal sum. ``python -m bnnlib.bench --latency`` times
``predict`` at batch 1 both ways (``packed``, ``packed_numba``); its figures are in
``results/`` and notebook 06.

The C is built on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``,
``clang``) at ``-O3 -march=native -ffp-contract=off`` (the argmax rounds as numpy does) into a
private temporary folder, loaded with ctypes, and the folder removed: nothing is cached on disk,
so no other user's file is ever loaded (about half a second, once per process). The
environment variable ``BNN_NATIVE`` chooses: ``1`` (the default) the widest vectors the CPU
has, ``avx2`` the 256-lane build on any AVX2 CPU (``-mno-avx512f``: to compare the two on an
AVX-512 machine), ``0`` none. :func:`status` says whether the kernels are available and why
not: no compiler, a failed build, a CPU without AVX2, ``BNN_NATIVE=0`` or a value it does not
know. :mod:`bnnlib.inference.fused` then keeps numba's loops; the results are the same bit
for bit.

:class:`FirstBitsliced` and :class:`BitslicedLayer` are the first and a hidden layer in the
kernel's layout (a second copy of the packed weights, made once); :class:`Batch1Plan` binds
them, the last layer and one net's activation buffers for :meth:`Batch1Plan.classify_image`
(every layer and the argmax in one call), :meth:`Batch1Plan.run_image` and
:meth:`Batch1Plan.run` (the layers after a first layer computed elsewhere).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = [
    "find_compiler",
    "status",
    "affine_argmax",
    "NativeStatus",
    "BitslicedLayer",
    "FirstBitsliced",
    "Batch1Plan",
    "first_layer_images",
    "lanes",
]

#: ``BNN_NATIVE``'s values, and the compiler flags each adds.
_CHOICES = {"1": [], "avx2": ["-mno-avx512f"]}


def find_compiler() -> str | None:
    """The C compiler to build with: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    found = (shutil.which(c) for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c)
    return next((path for path in found if path), None)


@dataclass(frozen=True)
class NativeStatus:
    """Whether the hand-written batch-1 kernels are loaded, and why not when they are not."""

    available: bool
    why: str
    compiler: str | None = None
    #: Neurons per block of the layout (bits per vector): 512 (AVX-512), 256 (AVX2), or 0.
    lanes: int = 0


_lock = threading.Lock()
_state: tuple[NativeStatus, ctypes.CDLL | None] | None = None


def _build(cc: str, extra: list[str]) -> ctypes.CDLL:
    """``bitsliced.c`` built by ``cc`` in a private temporary folder and loaded (the folder
    is removed; the loaded library stays mapped). RuntimeError with the compiler's message."""
    source = resources.files("bnnlib.kernels").joinpath("bitsliced.c").read_text()
    with tempfile.TemporaryDirectory(prefix="bnn-native-") as tmp:  # mode 0700
        src, lib = os.path.join(tmp, "bitsliced.c"), os.path.join(tmp, "bitsliced.so")
        with open(src, "w") as f:
            f.write(source)
        flags = ["-O3", "-march=native", *extra, "-ffp-contract=off", "-shared", "-fPIC"]
        flags += ["-o", lib, src]
        built = subprocess.run([cc, *flags], capture_output=True, text=True, timeout=120)
        if built.returncode != 0:
            raise RuntimeError(f"{cc} failed: {built.stderr.strip()[-500:]}")
        return ctypes.CDLL(lib)


def _load() -> tuple[NativeStatus, ctypes.CDLL | None]:
    choice = os.environ.get("BNN_NATIVE", "1")
    if choice == "0":
        return NativeStatus(False, "disabled by BNN_NATIVE=0"), None
    if choice not in _CHOICES:
        why = f"BNN_NATIVE must be 0, 1 or avx2, got {choice!r}; numba's loops run instead"
        return NativeStatus(False, why), None
    cc = find_compiler()
    if cc is None:
        return NativeStatus(False, "no C compiler ($CC, cc, gcc or clang) found"), None
    try:
        lib = _build(cc, _CHOICES[choice])
    except RuntimeError as e:
        return NativeStatus(False, str(e), cc), None
    except (OSError, subprocess.SubprocessError) as e:  # no temp folder, noexec, a timeout
        return NativeStatus(False, f"{type(e).__name__}: {e}", cc), None
    width = lib.bnn_native_lanes()
    if width not in (256, 512):
        return NativeStatus(False, "the CPU (as the compiler sees it) has no AVX2", cc), None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.bnn_hidden_and_last.argtypes = [p, i64, p, p]
    lib.bnn_hidden_and_last.restype = ctypes.c_int
    lib.bnn_mlp_image.argtypes = [p, p, p, i64, p, p, p]
    lib.bnn_mlp_image.restype = ctypes.c_int
    lib.bnn_mlp_image_class.argtypes = [p]
    lib.bnn_mlp_image_class.restype = i64
    lib.bnn_first_layer_images.argtypes = [p, i64, p, p, p, i64]
    lib.bnn_first_layer_images.restype = ctypes.c_int
    lib.bnn_affine_argmax.argtypes = [p, i64, p, p, p]
    lib.bnn_affine_argmax.restype = i64
    isa = "AVX-512" if width == 512 else "AVX2"
    return NativeStatus(True, f"built and loaded ({isa}, {width} lanes)", cc, width), lib


def _loaded() -> tuple[NativeStatus, ctypes.CDLL | None]:
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


def status() -> NativeStatus:
    """Whether the kernels are available in this process (built on the first call)."""
    return _loaded()[0]


def lanes() -> int:
    """Neurons per block of the loaded kernels' layout (512 or 256); RuntimeError when they
    are not available (:func:`status` says why)."""
    st = status()
    if not st.available:
        raise RuntimeError(f"the native kernels are not available: {st.why}")
    return st.lanes


def affine_argmax(s: np.ndarray, a: np.ndarray, mu: np.ndarray, beta: np.ndarray) -> int:
    """The C argmax of one image's ``a * (s - mu) + beta`` (int64 s, float64 the rest, all
    of one length): numpy's rounding and ties (:func:`bnnlib.kernels.fused.affine_argmax`)."""
    st, lib = _loaded()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {st.why}")
    s = np.ascontiguousarray(s, np.int64)
    a, mu, beta = (np.ascontiguousarray(v, np.float64) for v in (a, mu, beta))
    if s.ndim != 1 or not len(s) or any(v.shape != s.shape for v in (a, mu, beta)):
        raise ValueError("s, a, mu and beta must be 1-d of one length >= 1")
    return int(lib.bnn_affine_argmax(s.ctypes.data, len(s), a.ctypes.data, mu.ctypes.data,
                                     beta.ctypes.data))  # fmt: skip


def _aligned(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint64 array whose data starts on a 64-byte boundary."""
    n = int(np.prod(shape))
    buf = np.zeros(n + 8, np.uint64)
    start = (-buf.ctypes.data % 64) // 8
    return buf[start : start + n].reshape(shape)


def _lanes(bits: np.ndarray) -> np.ndarray:
    """(..., L) bits as (..., L / 64) uint64 words, lane 64q + t at bit t of word q."""
    packed = np.ascontiguousarray(np.packbits(bits, axis=-1, bitorder="little"))
    return packed.view("<u8").astype(np.uint64)


def _check_directions(direction: np.ndarray) -> None:
    if not np.isin(direction, (-1, 1)).all():
        raise ValueError("directions must be +1 or -1")


def _transposed(w: np.ndarray, inputs: int, rows: int, width: int) -> np.ndarray:
    """uint64 (blocks, rows, width / 64): input i's bit of each of ``width`` neurons in block
    b, from the packed rows ``w`` int64 (n, words) (their first ``inputs`` bits; rows >=
    inputs, the rows beyond them zero; neurons past n zero)."""
    n, words = w.shape
    blocks = -(-n // width)
    bits = np.zeros((blocks * width, inputs), np.uint8)
    raw = np.ascontiguousarray(w).view(np.uint8).reshape(n, 8 * words)
    bits[:n] = np.unpackbits(raw, axis=1, bitorder="little")[:, :inputs]
    out = _aligned((blocks, rows, width // 64))
    out[:, :inputs] = _lanes(bits.reshape(blocks, width, inputs).transpose(0, 2, 1))
    return out


def _sliced(values: np.ndarray, digits: int, width: int) -> np.ndarray:
    """uint64 (blocks, digits, width / 64): the two's complement digits of one int64 per lane
    (blocks x width of them), bit-sliced as the kernel's counters."""
    blocks = len(values) // width
    bits = ((values[None, :] >> np.arange(digits)[:, None]) & 1).astype(np.uint8)
    out = _aligned((blocks, digits, width // 64))
    out[:] = _lanes(bits.reshape(digits, blocks, width).transpose(1, 0, 2))
    return out


def _lane_flags(flags: np.ndarray, width: int) -> np.ndarray:
    """uint64 (blocks, width / 64): one bit per lane (blocks x width of them)."""
    out = _aligned((len(flags) // width, width // 64))
    out[:] = _lanes(flags.astype(np.uint8).reshape(-1, width))
    return out


def _width(width: int | None) -> int:
    """The layout's lanes: ``width`` (256 or 512), else the loaded kernels' (:func:`lanes`)."""
    if width is None:
        return lanes()
    if width not in (256, 512):
        raise ValueError(f"width must be 256 or 512 lanes, got {width}")
    return width


@dataclass(frozen=True)
class BitslicedLayer:
    """A packed hidden layer in the layout of ``bitsliced.c``.

    ``from_packed(w, threshold, direction, k)``: ``w`` int64 (n, words) packed rows (input i
    at bit i % 64 of word i // 64); the output bit of neuron j is ``(t - threshold[j]) *
    direction[j] >= 0`` with ``t = k - 2 h_j`` and ``h_j`` the XOR popcount over all the
    words (as :func:`bnnlib.kernels.fused.hidden_word`). Since t falls as h rises, that is
    ``h_j < C_j`` (direction +1: ``C_j = floor((k - threshold) / 2) + 1``) or its negation
    (direction -1: ``C_j = ceil((k - threshold) / 2)``), with C_j clipped to [0, inputs + 1].
    ``width``: neurons per block, the loaded kernels' :func:`lanes` unless given.
    """

    #: uint64 (blocks, inputs, width / 64): block b, input i: the weight bits of its neurons.
    weights: np.ndarray
    #: uint64 (blocks, digits, width / 64): the binary digits of C, bit-sliced.
    cbits: np.ndarray
    #: uint64 (blocks, width / 64): 1 where the output bit is NOT (h < C).
    flip: np.ndarray
    #: Inputs counted (every bit of the packed words), binary digits of the counters.
    inputs: int
    digits: int
    #: Neurons, and the packed output words.
    n: int
    out_words: int
    #: Neurons per block.
    width: int

    @classmethod
    def from_packed(
        cls,
        w: np.ndarray,
        threshold: np.ndarray,
        direction: np.ndarray,
        k: int,
        width: int | None = None,
    ) -> BitslicedLayer:
        _check_directions(direction)
        width = _width(width)
        n, words = w.shape
        inputs = 64 * words
        weights = _transposed(w, inputs, inputs, width)
        total = width * weights.shape[0]  # lanes, padding included
        thr, d = threshold.astype(np.int64), direction.astype(np.int64)
        up = (k - thr) // 2 + 1  # t >= thr <=> h <= floor((k - thr) / 2) <=> h < up
        down = -((thr - k) // 2)  # t <= thr <=> h >= ceil((k - thr) / 2) = down
        digits = max(7, (inputs + 1).bit_length())
        c = np.zeros(total, np.int64)  # padding lanes: C = 0, flip 0: bit 0
        c[:n] = np.clip(np.where(d > 0, up, down), 0, inputs + 1)
        flips = np.zeros(total, np.uint8)
        flips[:n] = d < 0
        cbits, flip = _sliced(c, digits, width), _lane_flags(flips, width)
        return cls(weights, cbits, flip, inputs, digits, n, -(-n // 64), width)

    def consistent(self) -> bool:
        """Whether the arrays have the shapes the numbers say (C trusts them)."""
        b, v = self.weights.shape[0], self.width // 64
        return (
            self.width in (256, 512)
            and _words(self.weights, (b, self.inputs, v))
            and _words(self.cbits, (b, self.digits, v))
            and _words(self.flip, (b, v))
            and 7 <= self.digits <= 40
            and 0 < self.inputs < 1 << self.digits
            and 0 < self.out_words <= v * b
        )


def _words(a: np.ndarray, shape: tuple[int, ...]) -> bool:
    return a.dtype == np.uint64 and a.flags.c_contiguous and a.shape == shape


@dataclass(frozen=True)
class FirstBitsliced:
    """The first layer (8-bit pixels) in the layout of ``bitsliced.c``'s bit planes.

    ``from_packed(w, wsum, threshold, direction, k0)``: ``w`` int64 (n, words) packed rows of
    the +/-1 weights over the k0 pixels, ``wsum`` their sums; the output bit of neuron j is
    ``(t - threshold[j]) * direction[j] >= 0`` with ``t = 2 W_b . x - 255 wsum[j]``, as in
    :mod:`bnnlib.kernels.fused`. With P_j the bit-plane count (``W_b . x = 2 P_j - sum(x)``)
    that is the sign of ``Z_j = 4 P_j + K_j - 2 sum(x)``: ``K_j = -(threshold_j + 255
    wsum_j)``, less 1 for direction -1 (bit: Z < 0) than for +1 (bit: Z >= 0); K is clipped to
    +/- 2^(digits of 255 k0 + 2), which keeps every sign and lets Z fit its digits.
    ``width``: neurons per block, the loaded kernels' :func:`lanes` unless given.
    """

    #: uint64 (blocks, k0 + 1, width / 64): block b, pixel i: the weight bits of its neurons;
    #: then a zero row, which pads the kernel's lists of pixels to whole groups of 16.
    weights: np.ndarray
    #: uint64 (blocks, zdigits, width / 64): K, two's complement, bit-sliced.
    kbits: np.ndarray
    #: uint64 (blocks, width / 64): 1 where the bit is Z >= 0 (direction +1).
    flip: np.ndarray
    #: Pixels, digits of one plane's count, digits of Z.
    k0: int
    qdigits: int
    zdigits: int
    n: int
    out_words: int
    #: Neurons per block.
    width: int

    @classmethod
    def from_packed(
        cls,
        w: np.ndarray,
        wsum: np.ndarray,
        threshold: np.ndarray,
        direction: np.ndarray,
        k0: int,
        width: int | None = None,
    ) -> FirstBitsliced:
        _check_directions(direction)
        width = _width(width)
        n, words = w.shape
        if not 0 < k0 <= 64 * words:
            raise ValueError(f"k0 = {k0} pixels do not fit {words} words")
        weights = _transposed(w, k0, k0 + 1, width)  # the zero row k0
        total = width * weights.shape[0]  # lanes, padding included
        pdigits = (255 * k0).bit_length()
        zdigits = pdigits + 4
        a = threshold.astype(np.int64) + 255 * wsum.astype(np.int64)
        d = direction.astype(np.int64)
        lim = 1 << (pdigits + 2)
        k = np.full(total, -1, np.int64)  # padding lanes: Z < 0, flip 1: bit 0
        k[:n] = np.clip(np.where(d > 0, -a, -a - 1), -lim, lim)
        flips = np.ones(total, np.uint8)
        flips[:n] = d > 0
        kbits, flip = _sliced(k, zdigits, width), _lane_flags(flips, width)
        qdigits = max(7, (k0 + 16).bit_length())
        return cls(weights, kbits, flip, k0, qdigits, zdigits, n, -(-n // 64), width)

    def consistent(self) -> bool:
        """Whether the arrays have the shapes the numbers say (C trusts them)."""
        b, v = self.weights.shape[0], self.width // 64
        return (
            self.width in (256, 512)
            and _words(self.weights, (b, self.k0 + 1, v))
            and _words(self.kbits, (b, self.zdigits, v))
            and _words(self.flip, (b, v))
            and 7 <= self.qdigits <= 40
            and self.k0 + 16 < 1 << self.qdigits
            and 3 <= self.zdigits <= 62
            and 0 < self.out_words <= v * b
        )


def _first_args(first: FirstBitsliced, out_address: int) -> np.ndarray:
    """bnn_first_layer's arguments but x and lists, as the kernels take them (addresses as
    integers): k0, weights, blocks, qdigits, zdigits, kbits, flip, out, out_words."""
    f = first
    return np.array(
        [f.k0, f.weights.ctypes.data, f.weights.shape[0], f.qdigits, f.zdigits,
         f.kbits.ctypes.data, f.flip.ctypes.data, out_address, f.out_words], np.int64,
    )  # fmt: skip


def first_layer_images(first: FirstBitsliced, x: np.ndarray, out: np.ndarray, threads: int = 1):
    """The first layer's packed output of the uint8 images ``x`` (m, k0) into the rows of
    ``out`` (int64, m x at least ``first.out_words``), by bit planes counted bit-sliced: its
    time grows with the set bits of the pixels (an MNIST digit has about 700 of 6,272), not
    with the pixel count. ``threads`` > 1 splits the images between that many threads (each C
    call releases the GIL). ValueError for arrays of the wrong type, shape or layout."""
    st, lib = _loaded()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {st.why}")
    m = x.shape[0] if x.ndim == 2 else -1
    ok = x.dtype == np.uint8 and x.flags.c_contiguous and x.shape == (m, first.k0)
    ok = ok and out.dtype == np.int64 and out.flags.c_contiguous and out.ndim == 2
    ok = ok and out.shape[0] == m and out.shape[1] >= first.out_words
    if not (ok and first.consistent() and first.width == st.lanes):
        raise ValueError(
            f"first_layer_images: arrays of the wrong shape, type or layout: x must be "
            f"C-contiguous uint8 (m, {first.k0}), out C-contiguous int64 (m, >= "
            f"{first.out_words}) (np.ascontiguousarray makes them so), the layout of width "
            f"{st.lanes}; got x {x.dtype} {x.shape}, out {out.dtype} {out.shape}"
        )
    args = _first_args(first, 0)
    parts = np.array_split(np.arange(m), max(1, min(threads, m)))

    def run(rows: np.ndarray) -> int:
        if not len(rows):
            return 0
        lo, lists = int(rows[0]), np.zeros(8 * (first.k0 + 16), np.int32)
        return lib.bnn_first_layer_images(
            x[lo:].ctypes.data, len(rows), args.ctypes.data, lists.ctypes.data,
            out[lo:].ctypes.data, out.shape[1],
        )  # fmt: skip

    if len(parts) == 1:
        refused = [run(parts[0])]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            refused = list(pool.map(run, parts))
    if any(refused):
        raise RuntimeError("bitsliced.c refused the first layer")


class Batch1Plan:
    """One image through a packed MLP's layers in one call of ``bitsliced.c``.

    ``layers``: the hidden layers in order; ``acts``: int64 (L + 1, >= words) activation rows,
    row 0 the first layer's packed output, row l + 1 written by hidden layer l;
    ``last_weight`` int64 (classes, words) and ``last_k`` the last layer; ``s`` int64
    (1, classes), the pre-activations written; ``first``: the first layer, for
    :meth:`run_image`. The layers' ``width`` must be the loaded kernels' :func:`lanes`. The
    arrays are kept alive by the plan, which passes their addresses to C (it checks their
    shapes here, once).
    """

    def __init__(
        self,
        layers: list[BitslicedLayer],
        acts: np.ndarray,
        last_weight: np.ndarray,
        last_k: int,
        s: np.ndarray,
        first: FirstBitsliced | None = None,
        affine: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ):
        st, lib = _loaded()
        if lib is None:
            raise RuntimeError(f"the native kernels are not available: {st.why}")
        checks = [acts.dtype == np.int64 and acts.flags.c_contiguous and acts.ndim == 2]
        checks.append(acts.shape[0] == len(layers) + 1)
        width = acts.shape[1]
        for lay in layers:
            checks.append(lay.consistent() and lay.width == st.lanes)
            checks.append(lay.inputs <= 64 * width and lay.out_words <= width)
        lw = np.ascontiguousarray(last_weight, np.int64)
        checks.append(s.dtype == np.int64 and s.flags.c_contiguous and s.shape == (1, lw.shape[0]))
        checks.append(lw.shape[1] <= width)
        if first is not None:
            checks.append(first.consistent() and first.width == st.lanes)
            checks.append(first.out_words <= width)
        if affine is not None:
            checks.append(all(np.shape(v) == (lw.shape[0],) for v in affine))
        if not all(checks):
            raise ValueError("Batch1Plan: arrays of the wrong shape, type or layout")
        row = acts.strides[0]
        base = acts.ctypes.data
        plan: list[int] = []
        for i, lay in enumerate(layers):
            plan += [base + i * row, lay.inputs, lay.weights.ctypes.data, lay.weights.shape[0]]
            plan += [lay.digits, lay.cbits.ctypes.data, lay.flip.ctypes.data]
            plan += [base + (i + 1) * row, lay.out_words]
        plan += [base + len(layers) * row, lw.ctypes.data, lw.shape[0], lw.shape[1], last_k]
        self.first = first
        self._keep = (layers, acts, lw, s, first)
        self._plan = np.array(plan, np.int64)
        self._mask = np.zeros(max([lay.inputs for lay in layers] + [1]), np.int32)
        self._args = (self._plan.ctypes.data, len(layers), self._mask.ctypes.data, s.ctypes.data)
        self._call = lib.bnn_hidden_and_last
        self._class = None  # with a first layer and the affine: bnn_mlp_image_class
        if first is not None:
            self._x = np.zeros(first.k0, np.uint8)  # the image is copied here: a fixed address
            self._lists = np.zeros(8 * (first.k0 + 16), np.int32)
            self._first = _first_args(first, base)
            self._image_args = (
                self._x.ctypes.data, self._first.ctypes.data, *self._args[:2],
                self._lists.ctypes.data, *self._args[2:],
            )  # fmt: skip
            self._image = lib.bnn_mlp_image
            if affine is not None:
                self._affine = np.concatenate([np.asarray(v, np.float64) for v in affine])
                block = [*self._image_args, self._affine.ctypes.data]
                self._class_block = np.array(block, np.int64)  # its address: the one argument
                self._class_arg = self._class_block.ctypes.data
                self._class = lib.bnn_mlp_image_class

    def run(self) -> None:
        """acts[1:] and s from acts[0] (not thread-safe: one call at a time per plan)."""
        refused = self._call(*self._args)
        if refused:
            raise RuntimeError(f"bitsliced.c refused hidden layer {refused}")

    def run_image(self, x: np.ndarray) -> None:
        """acts and s from the uint8 pixels ``x`` (k0 of them, any shape): every layer, the
        first by bit planes (not thread-safe: one call at a time per plan)."""
        if self.first is None:
            raise ValueError("this plan has no first layer")
        self._x[:] = x.reshape(-1)
        refused = self._image(*self._image_args)
        if refused:
            raise RuntimeError(f"bitsliced.c refused layer {max(refused, 0)}")

    def classify_image(self, x: np.ndarray) -> int:
        """:meth:`run_image`, then the class: the argmax of ``a * (s - mu) + beta`` with
        the plan's ``affine`` (a, mu, beta), rounded as numpy rounds it (:func:`affine_argmax`)."""
        if self._class is None:
            raise ValueError("this plan has no first layer or no affine")
        self._x[:] = x.reshape(-1)
        cls = self._class(self._class_arg)
        if cls < 0:
            raise RuntimeError(f"bitsliced.c refused layer {-1 - cls}")
        return cls
