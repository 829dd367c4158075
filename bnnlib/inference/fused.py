"""The small-batch CPU path: a packed MLP in one compiled call, a ConvNet in one per layer.

:class:`PackedNet` runs a layer at a time (torch operations and one numba kernel per layer),
which is fast per image on large batches but spends most of a batch-1 call outside the XNOR
arithmetic. :class:`FusedMLP` holds an MLP's packed arrays in the layout of
:func:`bnnlib.kernels.fused.mlp_forward` (converted once) and reuses its buffers across calls
of the same batch size, so a call is: check the images, one compiled call, the last batch
norm in float64 (the simulation's three rounded operations: numpy for :meth:`FusedMLP.scores`;
for :meth:`FusedMLP.classes`, which ``predict`` takes, one more compiled call that rounds
alike and takes the argmax, so no float array is made).

:meth:`PackedNet.scores` takes this path by itself (``path="auto"``) on the CPU, in chunks of
at most :data:`FUSED_CHUNK` images: a chunk's layers split between threads from
:data:`PARALLEL_MIN_BATCH` images on, the chunks of a larger batch shared between threads
(one thread per chunk, one parallel region per call). The first layer (``first_layer="auto"``
or ``"bitplanes"``) runs where :func:`bnnlib.kernels.native.status` says the hand-written C is
available as bit planes counted bit-sliced (:func:`bnnlib.kernels.native.first_layer_images`,
the images shared between threads): it adds only the weight vectors of the set bits, about 700
of 6,272 for an MNIST digit, so its time depends on the pixels. Without the C, ``"auto"``
chooses per image: int8 rows of the nonzero pixels when fewer than
:data:`INT8_MAX_NONZERO_FRACTION` of the pixels are nonzero, else numba's bit planes, which
count every plane word. All are exact.
``first_layer="int8_gemm"`` runs the first layer as a dense int8 gemm in torch
(``torch._int_mm``, oneDNN: VNNI or AMX where the CPU has them) on ``x - 128`` (pixels do not fit
int8) and adds ``128 sum(W_b)`` back, exact in int32, then the other layers fused. Not the
default: on the AVX-512 EPYC (Zen 4, no AMX) it is no faster than the bit planes (``bench
--latency`` times it as ``packed_int8_gemm``); on a CPU with AMX int8 it may be.

A lone image on one thread (batch 1 with ``OMP_WAIT_POLICY=PASSIVE``, or ``native = True``)
goes through hand-written C where :func:`bnnlib.kernels.native.status` says it is available:
every layer with bit-sliced counters, 512 neurons per AVX-512 vector (256 per AVX2 one), and
the argmax, in one call (``first_layer="int8"``: numba's first layer, then the C;
``"int8_gemm"``: torch's, then the C). It keeps a second copy of the packed weights in its
layout, made on the first such call. ``predict`` reaches it through :meth:`FusedMLP.classify_lone`
with as few Python steps as it can: each costs more than usual there, its code and data having
been pushed out of the caches by the megabytes of weights the previous image streamed.

:class:`FusedConvNet` does the same for a ConvNet whose first layer is an 8-bit convolution:
direct packed convolutions on NHWC words (no im2col), pooling, threshold and packing in one
pass per layer (:mod:`bnnlib.kernels.fused_conv`). :func:`for_net` picks the runner.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

from bnnlib import settings
from bnnlib.inference.spec import Conv2dSpec, LinearSpec
from bnnlib.kernels import fused as kfused
from bnnlib.kernels import fused_conv, native

__all__ = [
    "FusedMLP",
    "FusedConvNet",
    "for_net",
    "supports",
    "supports_conv",
    "FUSED_CHUNK",
    "PARALLEL_MIN_BATCH",
    "INT8_MAX_NONZERO_FRACTION",
    "FIRST_LAYER_MODES",
]

#: The most images one thread runs through the layers at once; larger batches run in chunks of
#: this size. Each weight row is then read once per chunk while the chunk's activations (64 x
#: 512 B for 4096 units) stay in the L1 cache (faster than a layer at a time at batch 100 and
#: 10,000: ``python -m bnnlib.bench --latency``, its figures in results/ and notebook 06). An
#: MLP's chunks are shared between threads in one parallel region
#: (:func:`bnnlib.kernels.fused.mlp_forward_chunks`), whatever ``OMP_WAIT_POLICY``;
#: ``FusedMLP.chunks_parallel = False`` runs them one after the other on the calling thread.
FUSED_CHUNK = 64
#: From this batch size the fused path splits each layer's output words between threads:
#: threads win from batch 1 while idle threads spin between layers, OpenMP's default. With
#: ``OMP_WAIT_POLICY=PASSIVE`` (which the Makefile sets for the tests and the book) they sleep,
#: and waking them for every layer costs more than it saves at batches up to 64: the fused MLP
#: then stays on one thread (:func:`bnnlib.settings.omp_passive`). On a machine busy with other
#: work a thread may also wait for a time slice: set ``net.fused.parallel = False`` and
#: ``net.fused.chunks_parallel = False``, or ``NUMBA_NUM_THREADS=1``.
PARALLEL_MIN_BATCH = 1
#: ``first_layer="auto"`` takes the int8 product for images with fewer nonzero pixels than
#: this fraction, bit planes otherwise: the int8 rows cost in proportion to the nonzero pixels,
#: the bit planes the same for every image, and they break even near 40% nonzero pixels on the
#: 784 -> 4096 layer (an MNIST digit has about 15%; ``bench --latency`` times both).
INT8_MAX_NONZERO_FRACTION = 0.4

FIRST_LAYER_MODES = {
    "bitplanes": kfused.FIRST_BITPLANES,
    "int8": kfused.FIRST_INT8,
    "auto": kfused.FIRST_AUTO,
    "int8_gemm": kfused.FIRST_GIVEN,
}


def supports(net) -> bool:
    """Whether ``net`` (a :class:`PackedNet`) is an MLP the fused path runs: linear layers
    only, Sign after every layer but the last, at least two layers."""
    layers = net.layers
    return (
        len(layers) >= 2
        and all(isinstance(lay.spec, LinearSpec) for lay in layers)
        and all(lay.spec.output == "sign" for lay in layers[:-1])
        and layers[-1].spec.output == "scores"
    )


def _threads_sleep() -> bool:
    """Whether idle OpenMP threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``), so that every
    parallel region pays for waking them."""
    return settings.omp_passive()


def _threads() -> int:
    """The threads a batch's chunks are shared between (numba's)."""
    return numba.get_num_threads()


def _i64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy().astype(np.int64))


def _k(lay) -> int:
    """The k of ``s = k - 2 popcount(a XOR w)``: the packed bits less the padding bits (which
    are 0 in both operands, so XOR-popcount never counts them), i.e. the layer's inputs."""
    return lay.spec.layout.packed_bits - lay.spec.layout.pad_bits


def _flat(tensors: list[torch.Tensor]) -> np.ndarray:
    """The tensors' entries one after the other, as one int64 array (never empty)."""
    parts = [t.numpy().astype(np.int64).ravel() for t in tensors]
    return np.concatenate(parts) if parts else np.zeros(1, np.int64)


class FusedMLP:
    """A packed MLP (a :class:`PackedNet` for which :func:`supports` holds) as the arrays of
    :func:`bnnlib.kernels.fused.mlp_forward`; see the module docstring."""

    #: The most images a caller passes to one :meth:`scores` call: any (it chunks them).
    max_batch: int | None = None

    def __init__(self, net):
        if not supports(net):
            raise ValueError("the fused path runs MLPs only (linear layers, Sign between them)")
        first, hidden, last = net.layers[0], net.layers[1:-1], net.layers[-1]
        self.k = first.spec.layout.k
        self.num_classes = last.spec.out_features
        self._wb0 = first.input.wb  # for the int8 rows, made on first use (3.2 MB for 784 x 4096)
        self._w8t: np.ndarray | None = None
        #: The first layer's arrays; ``int8_rows`` is filled in by the first call that needs it.
        self.first = kfused.FirstLayer(
            weight_t=np.ascontiguousarray(first.weight.numpy().T),
            int8_rows=np.zeros((0, 0), np.int8),
            wsum=_i64(first.input.wsum),
            threshold=_i64(first.output.threshold),
            direction=_i64(first.output.direction),
        )
        table = np.array(
            [[lay.spec.out_features, lay.spec.layout.row_words, _k(lay), 0, 0] for lay in hidden],
            dtype=np.int64,
        ).reshape(len(hidden), 5)
        table[1:, 3] = np.cumsum(table[:-1, 0] * table[:-1, 1])
        table[1:, 4] = np.cumsum(table[:-1, 0])
        self.hidden = kfused.HiddenLayers(
            table=table,
            weights=_flat([lay.weight for lay in hidden]),
            thresholds=_flat([lay.output.threshold for lay in hidden]),
            directions=_flat([lay.output.direction for lay in hidden]),
        )
        self.last = kfused.LastLayer(weight=last.weight.numpy(), k=_k(last))
        aff = last.output
        self.a, self.mu, self.beta = (
            t.numpy().astype(np.float64) for t in (aff.a, aff.mu, aff.beta)
        )
        self.widths = [lay.spec.out_features for lay in net.layers[:-1]]
        self._calls: dict[int, kfused.BoundMLP] = {}  # per batch size, with its buffers
        self._lock = threading.Lock()  # buffers are shared: one call at a time per net
        #: None: threads from PARALLEL_MIN_BATCH images on, unless OpenMP threads sleep
        #: between regions (OMP_WAIT_POLICY=PASSIVE); True / False: always / never
        self.parallel: bool | None = False if _threads_sleep() else None
        #: batches of more than FUSED_CHUNK images: chunks shared between threads (True), or
        #: run one after the other on the calling thread (False)
        self.chunks_parallel = True
        #: a lone image by the hand-written bit-sliced C kernels (:mod:`bnnlib.kernels.
        #: native`, where :func:`native.status` says they are available): its hidden and last
        #: layers, and its first layer too with ``first_layer`` "bitplanes" or "auto" (bit
        #: planes, counted bit-sliced); None: when the call would run on one thread anyway,
        #: True / False: always / never (numba's loops; the same results bit for bit). A
        #: batch's first layer with "bitplanes" or "auto" runs in that C too unless False.
        self.native: bool | None = None
        self._bitsliced: tuple[native.FirstBitsliced, list[native.BitslicedLayer]] | None = None
        self._plan: tuple[kfused.BoundMLP, native.Batch1Plan] | None = None

    @property
    def int8_rows(self) -> np.ndarray:
        """The first layer's +/-1 weights as int8 (k, out), read row by nonzero pixel; made on
        first use (also into ``first``, whose calls are bound again)."""
        if self._w8t is None:
            self._make_int8_rows()
        return self._w8t

    def _make_int8_rows(self) -> None:
        """Make the int8 rows (3.2 MB for 784 x 4096: only when an int8 product is asked)."""
        self._w8t = np.ascontiguousarray(self._wb0.numpy().T.astype(np.int8))
        self.first = self.first._replace(int8_rows=self._w8t)
        self._calls.clear()  # they were bound to the empty rows

    def _new_call(self, m: int) -> kfused.BoundMLP:
        """The kernel call of batch size ``m``: the arrays bound with new buffers of that size,
        kept for every later call of that size."""
        if len(self._calls) > 8:
            self._calls.clear()  # bounded: a caller cycling through sizes
        words = math.ceil(max(self.widths) / 64)
        buffers = kfused.Buffers(
            planes=np.zeros((m, 8, self.first.weight_t.shape[0]), np.int64),
            nonzero=np.zeros((m, self.k), np.int64),
            nnz=np.zeros(m, np.int64),
            sumx=np.zeros(m, np.int64),
            use_int8=np.zeros(m, np.bool_),
            acts=np.zeros((len(self.widths), m * words), np.int64),
            s=np.zeros((m, self.num_classes), np.int64),
        )
        call = self._calls[m] = kfused.BoundMLP(self.first, self.hidden, self.last, buffers)
        return call

    def preactivations(self, x: np.ndarray, first_layer: str = "auto") -> np.ndarray:
        """The last layer's integer pre-activations s (M, classes) of uint8 images (M, k)."""
        x, mode = self._checked(x, first_layer)
        s = self._run(x, mode, None)
        assert s is not None
        return s

    def classes(self, x: np.ndarray, first_layer: str = "auto") -> np.ndarray:
        """int64 classes (M,) of uint8 images (M, k): the argmax of :meth:`scores`, its
        float64 operations rounded alike (:func:`bnnlib.kernels.fused.affine_argmax`), the
        first of equal scores, as ``numpy.argmax``."""
        x, mode = self._checked(x, first_layer)
        out = np.empty(x.shape[0], np.int64)
        self._run(x, mode, out)
        return out

    def classify_lone(self, x: np.ndarray, first_layer: str = "auto") -> int | None:
        """The class of one uint8 image ``x`` (1, k) when the native kernels run it whole
        (every layer and the argmax in one C call: ``first_layer`` "auto" or "bitplanes" and
        :meth:`_lone_native`), else None: the caller takes :meth:`classes`. The same class as
        :meth:`classes`, with fewer Python steps on the way."""
        if first_layer not in ("auto", "bitplanes") or x.dtype != np.uint8 or x.size != self.k:
            return None
        if not self._lone_native():
            return None
        with self._lock:
            return self._batch1_plan(self._calls.get(1) or self._new_call(1)).classify_image(x)

    def _lone_native(self) -> bool:
        """Whether a lone image runs in :mod:`bnnlib.kernels.native` (see ``native``)."""
        parallel = PARALLEL_MIN_BATCH <= 1 if self.parallel is None else self.parallel
        if self.native is False or (self.native is None and parallel):
            return False
        return native.status().available

    def _checked(self, x: np.ndarray, first_layer: str) -> tuple[np.ndarray, int]:
        """The images as a contiguous uint8 (M, k) array and the kernel's first-layer mode;
        ValueError for anything else."""
        mode = FIRST_LAYER_MODES.get(first_layer)
        if mode is None:
            raise ValueError(
                f"first_layer must be one of {sorted(FIRST_LAYER_MODES)} on the fused path, "
                f"got {first_layer!r}"
            )
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"expected uint8 images (M, {self.k}), got {x.dtype} {x.shape}")
        return np.ascontiguousarray(x), mode

    def _run(self, x: np.ndarray, mode: int, classes: np.ndarray | None) -> np.ndarray | None:
        """The pre-activations s (a new array) of checked images ``x``; with ``classes``,
        their classes written into it instead (None returned; a batch of at most
        :data:`FUSED_CHUNK` images is then read from the kernel's buffer, not copied)."""
        m = x.shape[0]
        if m == 0:
            return np.zeros((0, self.num_classes), np.int64) if classes is None else None
        max_nonzero = int(INT8_MAX_NONZERO_FRACTION * self.k)
        with self._lock:
            c_first = self._native_first(mode) and (m > 1 or self._lone_native())
            if self._w8t is None and mode != kfused.FIRST_BITPLANES and not c_first:
                self._make_int8_rows()
            if m > FUSED_CHUNK and self.chunks_parallel and mode != kfused.FIRST_GIVEN:
                words = math.ceil(max(self.widths) / 64)
                given = None
                if c_first:  # the first layer of every image in C, on every thread
                    given = np.empty((m, math.ceil(self.widths[0] / 64)), np.int64)
                    native.first_layer_images(self._layouts()[0], x, given, _threads())
                    mode = kfused.FIRST_GIVEN
                s = kfused.mlp_forward_chunks(
                    x, FUSED_CHUNK, mode, max_nonzero, self.first, self.hidden, self.last,
                    words, given,
                )  # fmt: skip
            elif m <= FUSED_CHUNK and classes is not None:
                s = self._chunk(x, mode, max_nonzero, classes)
                if s is not None:  # the buffer: read before the lock goes
                    kfused.affine_argmax(s, self.a, self.mu, self.beta, classes)
                return None  # (else the native kernels wrote the class)
            else:
                parts = [
                    self._chunk(x[i : i + FUSED_CHUNK], mode, max_nonzero).copy()
                    for i in range(0, m, FUSED_CHUNK)
                ]  # copies: the next chunk of the same size overwrites the buffer
                s = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if classes is None:
            return s
        kfused.affine_argmax(s, self.a, self.mu, self.beta, classes)
        return None

    def _chunk(
        self, x: np.ndarray, mode: int, max_nonzero: int, classes: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Pre-activations of at most FUSED_CHUNK images in one call on the bound buffers of
        their batch size (the caller holds the lock): the kernel's buffer ``s``, which the
        next call of the same size overwrites. With ``classes``, a lone image that the native
        kernels run whole gets its class written there instead (None returned)."""
        m = x.shape[0]
        parallel = m >= PARALLEL_MIN_BATCH if self.parallel is None else self.parallel
        call = self._calls.get(m) or self._new_call(m)
        if mode == kfused.FIRST_GIVEN:
            self._first_by_int8_gemm(x, call.buffers.acts)
        elif m > 1 and self._native_first(mode):  # the first layer in C, then numba's loops
            out = call.buffers.acts[0, : m * math.ceil(self.widths[0] / 64)].reshape(m, -1)
            native.first_layer_images(self._layouts()[0], x, out)
            mode = kfused.FIRST_GIVEN
        if m == 1 and self._lone_native():
            plan = self._batch1_plan(call)
            if mode in (kfused.FIRST_BITPLANES, kfused.FIRST_AUTO):
                if classes is not None:  # every layer and the argmax in C
                    classes[0] = plan.classify_image(x)
                    return None
                plan.run_image(x)  # every layer in C, the first by bit planes
            else:
                if mode == kfused.FIRST_INT8:
                    call.run_first(x, mode, max_nonzero)
                plan.run()
            return call.buffers.s
        call.run(parallel, x, mode, max_nonzero)
        return call.buffers.s

    def _native_first(self, mode: int) -> bool:
        """Whether the first layer of a batch of images runs in :mod:`bnnlib.kernels.native`
        (bit planes counted bit-sliced): for ``first_layer`` "bitplanes" and "auto", unless
        ``native`` is False."""
        if self.native is False or mode not in (kfused.FIRST_BITPLANES, kfused.FIRST_AUTO):
            return False
        return native.status().available

    def _layouts(self) -> tuple[native.FirstBitsliced, list[native.BitslicedLayer]]:
        """The first and hidden layers in the native kernels' layout, made on first use."""
        if self._bitsliced is None:
            h, f = self.hidden, self.first
            hidden = [
                native.BitslicedLayer.from_packed(
                    h.weights[wo : wo + n * w_in].reshape(n, w_in),
                    h.thresholds[to : to + n],
                    h.directions[to : to + n],
                    k,
                )
                for n, w_in, k, wo, to in h.table.tolist()
            ]
            rows = np.ascontiguousarray(f.weight_t.T)
            first = native.FirstBitsliced.from_packed(
                rows, f.wsum, f.threshold, f.direction, self.k
            )
            self._bitsliced = (first, hidden)
        return self._bitsliced

    def _batch1_plan(self, call: kfused.BoundMLP) -> native.Batch1Plan:
        """The native plan bound to ``call``'s buffers (made again when they were)."""
        if self._plan is None or self._plan[0] is not call:
            first, hidden = self._layouts()
            b = call.buffers
            plan = native.Batch1Plan(
                hidden, b.acts, self.last.weight, self.last.k, b.s, first,
                (self.a, self.mu, self.beta),
            )  # fmt: skip
            self._plan = (call, plan)
        return self._plan[1]

    def _first_by_int8_gemm(self, x: np.ndarray, acts: np.ndarray) -> None:
        """The first layer's packed output into ``acts[0]`` by ``torch._int_mm``: W_b . x =
        W_b . (x - 128) + 128 sum(W_b), so t = 2 W_b . x - 255 sum(W_b) = 2 W_b . (x - 128)
        + sum(W_b) (int32: |t| <= 511 k), then the integer compare of Sign(BN), packed."""
        from bnnlib import kernels

        x8 = (torch.from_numpy(x).to(torch.int16) - 128).to(torch.int8)
        dot = torch._int_mm(x8, torch.from_numpy(self._w8t))
        wsum = torch.from_numpy(self.first.wsum)
        t = 2 * dot.to(torch.int64) + wsum
        thr, d = torch.from_numpy(self.first.threshold), torch.from_numpy(self.first.direction)
        words = kernels.threshold_pack(t, thr, d).numpy()
        acts[0, : words.size] = words.reshape(-1)

    def scores(self, x: np.ndarray, first_layer: str = "auto") -> np.ndarray:
        """float64 scores a * (s - mu) + beta (M, classes): the simulation's rounding."""
        s = self.preactivations(x, first_layer).astype(np.float64)
        return self.a * (s - self.mu) + self.beta  # numpy: three separately rounded ops


# --------------------------------------------------------------------------------------------
# Convolutional nets: one compiled call per layer (direct convolutions, bnnlib.kernels.fused_conv)
# --------------------------------------------------------------------------------------------


def supports_conv(net) -> bool:
    """Whether ``net`` is a ConvNet the fused path runs: an 8-bit convolution first, Sign after
    every layer but the last, a linear last layer giving the scores."""
    layers = net.layers
    return (
        len(layers) >= 2
        and isinstance(layers[0].spec, Conv2dSpec)
        and all(lay.spec.output == "sign" for lay in layers[:-1])
        and isinstance(layers[-1].spec, LinearSpec)
        and layers[-1].spec.output == "scores"
    )


@dataclass(frozen=True)
class _ConvStep:
    """A convolution of :class:`FusedConvNet`, as its direct kernels take it."""

    spec: Conv2dSpec
    #: int64 (kh, kw, sh, sw, ph, pw) of the convolution and of its pool ((1, 1, 1, 1, 0, 0)
    #: for none); ``after_bn``: the pool comes after the batch norm.
    geometry: np.ndarray
    pool: np.ndarray
    after_bn: bool
    #: int64 (out,): the compare of Sign(BN).
    threshold: np.ndarray
    direction: np.ndarray
    #: The first layer's int8 +/-1 rows (k, out); a hidden layer's packed words laid out
    #: (kh * kw, words, out).
    weights: np.ndarray
    #: The first layer's sums of W_b over each position's valid inputs (Ho * Wo, out); None
    #: for a hidden layer.
    wsum: np.ndarray | None = None


@dataclass(frozen=True)
class _DenseStep:
    """A linear layer of :class:`FusedConvNet`: packed words (out, words) and the k of
    ``s = k - 2 popcount(a XOR w)``; the compare of Sign(BN), or None for the last layer."""

    spec: LinearSpec
    weight: np.ndarray
    k: int
    threshold: np.ndarray | None = None
    direction: np.ndarray | None = None


class FusedConvNet:
    """A packed ConvNet (:func:`supports_conv`) run by the direct kernels of
    :mod:`bnnlib.kernels.fused_conv`: no im2col, no padding correction, one compiled call per
    layer (first layer: int8 +/-1 weights, zero pixels skipped)."""

    #: The most images a caller passes to one :meth:`scores` call.
    max_batch: int | None = FUSED_CHUNK

    def __init__(self, net):
        if not supports_conv(net):
            raise ValueError("the fused conv path runs ConvNets with an 8-bit first convolution")
        #: True / False: the kernels' rows always / never shared between threads; None: always
        #: but for a lone image while idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``),
        #: where waking them for each of its layers costs more than it saves
        self.parallel: bool | None = None
        self.steps = [self._step(lay) for lay in net.layers]
        self.input_shape = tuple(net.input_shape)
        aff = net.layers[-1].output
        self.a, self.mu, self.beta = (
            t.numpy().astype(np.float64) for t in (aff.a, aff.mu, aff.beta)
        )

    @staticmethod
    def _step(lay) -> _ConvStep | _DenseStep:
        spec = lay.spec
        sign = lay.output if spec.output == "sign" else None  # every layer but the last
        thr, dirn = (_i64(sign.threshold), _i64(sign.direction)) if sign else (None, None)
        if isinstance(spec, LinearSpec):
            return _DenseStep(
                spec=spec, weight=lay.weight.numpy(), k=_k(lay), threshold=thr, direction=dirn
            )
        if spec.first:
            weights = np.ascontiguousarray(lay.input.wb.numpy().T.astype(np.int8))  # (k, out)
            wsum = np.ascontiguousarray(lay.input.wsum.numpy())
        else:
            layout = spec.layout
            w = lay.weight.numpy().reshape(spec.out_channels, layout.groups, layout.words_per_group)
            weights = np.ascontiguousarray(w.transpose(1, 2, 0))  # (kh*kw, words, out)
            wsum = None
        pool = spec.pool
        return _ConvStep(
            spec=spec,
            geometry=np.array(spec.window.geometry, np.int64),
            pool=np.array(pool.geometry if pool else (1, 1, 1, 1, 0, 0), np.int64),
            after_bn=bool(pool and pool.after_bn),
            threshold=thr,
            direction=dirn,
            weights=weights,
            wsum=wsum,
        )

    def _conv(self, k: fused_conv.ConvKernels, step: _ConvStep, h: np.ndarray) -> np.ndarray:
        spec, m = step.spec, h.shape[0]
        ho, wo = spec.out_hw
        s = np.empty((m, ho, wo, spec.out_channels), np.int32)
        if spec.first:
            k.first_conv(h, step.weights, step.wsum, step.geometry, s)
        else:
            k.binary_conv(h, step.weights, spec.in_channels, step.geometry, s)
        hp, wp = spec.pooled_hw
        out = np.empty((m, hp, wp, math.ceil(spec.out_channels / 64)), np.int64)
        k.pool_threshold_pack(s, step.pool, step.after_bn, step.threshold, step.direction, out)
        return out

    def scores(self, x: np.ndarray, first_layer: str = "auto") -> np.ndarray:
        """float64 scores (M, classes) of uint8 images (M, C * H * W)."""
        if first_layer not in ("auto", "int8"):
            raise ValueError(
                f"the fused ConvNet path has an int8 first layer only, got {first_layer!r}"
            )
        h = np.ascontiguousarray(x.reshape(x.shape[0], *self.input_shape))
        parallel = self.parallel
        if parallel is None:
            parallel = h.shape[0] > 1 or not _threads_sleep()
        k = fused_conv.PARALLEL if parallel else fused_conv.SERIAL
        for step in self.steps:
            if isinstance(step, _ConvStep):
                h = self._conv(k, step, h)
                continue
            a = np.ascontiguousarray(h.reshape(h.shape[0], -1))
            n = step.weight.shape[0]
            if step.spec.output == "scores":
                s = np.empty((a.shape[0], n), np.int64)
                fused_conv.last_layer(a, step.weight, step.k, s)
                return self.a * (s.astype(np.float64) - self.mu) + self.beta
            h = np.empty((a.shape[0], math.ceil(n / 64)), np.int64)
            k.dense_sign(a, step.weight, step.k, step.threshold, step.direction, h)
        raise AssertionError("unreachable: the last layer gives scores")

    def classes(self, x: np.ndarray, first_layer: str = "auto") -> np.ndarray:
        """int64 classes (M,): the argmax of :meth:`scores`."""
        return self.scores(x, first_layer).argmax(1)


def for_net(net):
    """The fused runner of a :class:`PackedNet`: :class:`FusedMLP`, :class:`FusedConvNet`, or
    None when neither runs it."""
    if supports(net):
        return FusedMLP(net)
    if supports_conv(net):
        return FusedConvNet(net)
    return None
