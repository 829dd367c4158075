"""The packed network: XNOR-popcount and integer compares only, on a CPU or CUDA back end.

:class:`PackedNet` runs a model read by :func:`bnnlib.inference.load`. Its hidden layers take
packed +/-1 activations, compute ``s = x_b . w_b`` with XNOR-popcount and turn batch norm +
Sign into one integer compare per neuron (:mod:`bnnlib.inference.fold`); the last layer's
scores are ``a * (s - mu) + beta`` in float64, the prediction their argmax.
Its header is checked first (:mod:`bnnlib.inference.header`).

**First layer.** Its input is the 8-bit image, not +/-1 (paper Section 2.6). With x in
0..255, ``W_b . (2x/255 - 1) = (2 W_b . x - 255 sum(W_b)) / 255``, so everything reduces to the
integer ``W_b . x``, computed either by a float matmul with +/-1 weights (exact: integer
operands and partial sums below 2^24; ``first_layer="real"``) or by the paper's bit planes
``W_b . x = sum_{n=1..8} 2^(n-1) (x^n . W_b)`` with XNOR-popcount
(:func:`bnnlib.kernels.bitplane_dot`; ``first_layer="bitplanes"``). Both give the same integer.

**Convolutions.** Activations are kept packed along channels (N, H, W, ceil(C/64) words).
im2col gathers the kh x kw words of each window; a weight is packed the same way (per kernel
position, channels padded to whole words). Two corrections keep the result exact:

* the padding *bits* of a word are 0 in both operands, XNOR counts them as +1 matches, so
  ``kh kw (64 ceil(C/64) - C)`` is subtracted;
* the model pads its binarized input with **zeros** (not +/-1); a padded position holds all-zero
  words (= -1 each), so ``sum of the weights at padded positions`` is added back, a per-(output
  position, channel) integer table computed at load.

Max-pooling (Conv -> MaxPool -> BN -> Sign, the paper's order) is applied to the integer s
before the threshold, which is exact whatever the sign of gamma.

**Back ends.** :class:`Backend` is the one interface the runtime calls; :class:`CpuBackend`
implements it with the numba kernels of :mod:`bnnlib.kernels`, :class:`CudaBackend` with the
kernels of :mod:`bnnlib.kernels.cuda`. Both kernel modules take the same arguments (packed int64
words, ``xnor_gemm(a, b, k)``, ``threshold_pack(acc, threshold, direction)``), and the
thresholds are converted to (threshold, direction) once, at load, for every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch
from torch.nn import functional as F

from bnnlib import kernels
from bnnlib.data.loaders import to_uint8
from bnnlib.inference import fused
from bnnlib.inference.fold import EXACT_F32, Affine, kernel_thresholds
from bnnlib.inference.graph import INPUT_SCALING, check_batch_size
from bnnlib.inference.header import MAX_ELEMENTS, MAX_SIDE, check_header

__all__ = [
    "PackedNet",
    "Backend",
    "CpuBackend",
    "CudaBackend",
    "backend",
    "conv_rows",
    "conv_weight",
    "check_header",
    "MAX_SIDE",
    "MAX_ELEMENTS",
]


#: ``first_layer`` of :meth:`PackedNet.scores` / :meth:`PackedNet.predict`.
FIRST_LAYER_CHOICES = ("auto", "real", "bitplanes", "int8")


# --------------------------------------------------------------------------------------------
# The packed convolution layout, both ways
# --------------------------------------------------------------------------------------------


def conv_rows(wb: torch.Tensor, first: bool) -> torch.Tensor:
    """A convolution's +/-1 weight (out, c, kh, kw) as the (out, groups, group_size) rows that
    are packed: the first layer keeps torch's (c, kh, kw) order in one group (as F.unfold lays
    out the 8-bit input); a hidden one has one group per kernel position with its c channels
    (activations are NHWC words). :func:`conv_weight` is the inverse."""
    out, c, kh, kw = wb.shape
    if first:
        return wb.reshape(out, 1, c * kh * kw)
    return wb.permute(0, 2, 3, 1).reshape(out, kh * kw, c)


def conv_weight(rows: torch.Tensor, spec: dict) -> torch.Tensor:
    """The (out, c, kh, kw) weight, in torch's layout, of a conv layer's unpacked
    (out, groups, group_size) rows; the inverse of :func:`conv_rows`."""
    out, c, (kh, kw) = rows.shape[0], spec["in_channels"], spec["kernel"]
    if spec["first"]:
        return rows.reshape(out, c, kh, kw)
    return rows.reshape(out, kh, kw, c).permute(0, 3, 1, 2)


@dataclass
class _Layer:
    spec: dict
    weight: torch.Tensor  # packed int64 words (out, groups * words_per_group)
    wb: torch.Tensor | None = None  # first layer: float32 +/-1 weights for the "real" mode
    threshold: torch.Tensor | None = None  # int32 (out,): the kernels' threshold
    direction: torch.Tensor | None = None  # int32 (out,): +1 for s >= threshold, -1 for <=
    affine: Affine | None = None  # last layer
    pad_bits: int = 0  # XNOR matches contributed by the zero tail bits of each group
    wsum: torch.Tensor | None = None  # first layer: sum of W_b per output (and per position)
    pad_fix: torch.Tensor | None = None  # hidden conv: sum of W_b over zero-padded positions
    cache: dict = field(default_factory=dict)  # per-device copies

    @property
    def flip(self) -> torch.Tensor | None:
        """bool (out,): the neurons whose compare flips (gamma < 0); None for the last layer."""
        return None if self.direction is None else self.direction < 0


class PackedNet:
    """A BNN as packed bits and integer thresholds; see the module docstring.

    ``predict(X)`` returns int64 classes; ``scores(X)`` the last layer's float64 scores.
    ``nbytes`` is the size of the packed weights, ``nbytes_total`` adds thresholds and the last
    batch norm. ``header`` is the architecture as stored in the file.
    """

    def __init__(self, header: dict, tensors: dict[str, torch.Tensor], source: str = "<memory>"):
        check_header(header, tensors)
        self.header = header
        self.source = source
        self.input_shape = list(header["input"]["shape"])
        if header["input"]["scaling"] != INPUT_SCALING:
            raise ValueError(f"input scaling {header['input']['scaling']!r} is not supported")
        self.num_classes = int(header["num_classes"])
        self.layers: list[_Layer] = [self._layer(spec, tensors) for spec in header["layers"]]
        self._fused = None  # the small-batch CPU path (fused.for_net), made on first use
        self._fused_kind = (
            "mlp" if fused.supports(self) else "conv" if fused.supports_conv(self) else None
        )

    @classmethod
    def _layer(cls, spec: dict, tensors: dict[str, torch.Tensor]) -> _Layer:
        name = spec["name"]
        w = tensors[f"{name}.weight"]
        out = spec["out_channels"] if spec["kind"] == "conv2d" else spec["out_features"]
        expect = (out, spec["groups"] * spec["words_per_group"])
        if tuple(w.shape) != expect or w.dtype != torch.int64:
            raise ValueError(f"{name}.weight has shape {tuple(w.shape)}, expected {expect}")
        lay = _Layer(spec=spec, weight=w)
        g, words, cs = spec["groups"], spec["words_per_group"], spec["group_size"]
        lay.pad_bits = g * (64 * words - cs)
        wpm = cls._rows(spec, w)  # (out, g, cs) +/-1
        if not torch.equal(kernels.pack(wpm, dim=-1).reshape(out, -1), w):
            # The hidden layers count padding bits as matches (pad_bits): they must be 0.
            raise ValueError(f"{name}.weight has padding bits set (pack() leaves them 0)")
        if spec["first"]:
            lay.wb = wpm.reshape(out, spec["k"])
            lay.wsum = cls._first_wsum(spec, lay.wb)
        elif spec["kind"] == "conv2d":
            lay.pad_fix = cls._pad_fix(spec, wpm)
        if spec["output"] == "sign":
            T, flip = tensors[f"{name}.threshold"], tensors[f"{name}.flip"].bool()
            if T.shape != (out,) or flip.shape != (out,):
                raise ValueError(f"{name}: thresholds do not match {out} outputs")
            lay.threshold, lay.direction = kernel_thresholds(T, flip)
        else:
            lay.affine = Affine(*(tensors[f"{name}.{t}"] for t in ("a", "mu", "beta")))
        return lay

    @staticmethod
    def _rows(spec: dict, w: torch.Tensor) -> torch.Tensor:
        """float32 +/-1 (out, groups, group_size): a layer's packed words unpacked."""
        g, words, cs = spec["groups"], spec["words_per_group"], spec["group_size"]
        return kernels.unpack(w.reshape(w.shape[0], g, words), cs, dim=-1).float()

    def binary_conv_weights(self) -> list[tuple[dict, torch.Tensor]]:
        """(spec, W_b) of each convolution: W_b its +/-1 weight (out, in, kh, kw), float32,
        in torch's layout (:func:`conv_weight` of the unpacked words)."""
        return [
            (lay.spec, conv_weight(self._rows(lay.spec, lay.weight), lay.spec).contiguous())
            for lay in self.layers
            if lay.spec["kind"] == "conv2d"
        ]

    # ---- precomputed corrections ----

    @staticmethod
    def _first_wsum(spec: dict, wb: torch.Tensor) -> torch.Tensor:
        """sum of W_b over the valid (non-padded) inputs: (out,) or (Ho*Wo, out) for a conv."""
        if spec["kind"] == "linear":
            return wb.sum(1).round().to(torch.int32)
        c, (kh, kw) = spec["in_channels"], spec["kernel"]
        ones = torch.ones(1, c, *spec["in_hw"])
        w4 = wb.reshape(-1, c, kh, kw)
        m = F.conv2d(ones, w4, stride=spec["stride"], padding=spec["padding"])
        return m[0].permute(1, 2, 0).reshape(-1, w4.shape[0]).round().to(torch.int32)

    @staticmethod
    def _pad_fix(spec: dict, wpm: torch.Tensor) -> torch.Tensor:
        """Hidden conv: sum of W_b at zero-padded positions, per (output position, channel)."""
        out, c = wpm.shape[0], spec["in_channels"]
        w4 = conv_weight(wpm, spec)
        ones = torch.ones(1, c, *spec["in_hw"])
        valid = F.conv2d(ones, w4, stride=spec["stride"], padding=spec["padding"])[0]
        total = w4.sum((1, 2, 3)).view(-1, 1, 1)
        return (total - valid).permute(1, 2, 0).reshape(-1, out).round().to(torch.int32)

    # ---- sizes ----

    @property
    def nbytes(self) -> int:
        """Bytes of the packed binary weights."""
        return sum(lay.weight.numel() * lay.weight.element_size() for lay in self.layers)

    @property
    def nbytes_total(self) -> int:
        """Packed weights + thresholds (int32) + flips (bits) + the last layer's float64 affine."""
        n = self.nbytes
        for lay in self.layers:
            if lay.threshold is not None:
                n += 4 * lay.threshold.numel() + -(-lay.direction.numel() // 8)
            else:
                n += 8 * 3 * lay.affine.a.numel()
        return n

    def __repr__(self) -> str:
        kinds = ", ".join(
            f"{s['kind']}({s.get('in_features', s.get('in_channels'))}->"
            f"{s.get('out_features', s.get('out_channels'))})"
            for s in (lay.spec for lay in self.layers)
        )
        return f"PackedNet([{kinds}], {self.nbytes} packed weight bytes, from {self.source})"

    # ---- input ----

    def _images(self, X) -> torch.Tensor:
        x = to_uint8(X)  # stays on its device: images already on the GPU are not copied
        shape = self.input_shape
        n_per = math.prod(shape)
        if x.dim() < 1 or math.prod(x.shape[1:]) != n_per:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match this model's {shape} per image"
            )
        return x.reshape(x.shape[0], *shape)

    # ---- prediction ----

    def scores(
        self,
        X,
        device: str = "cpu",
        first_layer: str = "auto",
        batch_size: int = 2000,
        kernel: str = "fast",
        path: str = "auto",
    ) -> torch.Tensor:
        """The last layer's scores a * (s - mu) + beta in float64, (N, num_classes), on CPU.

        ``path="layers"`` runs a layer at a time; ``"fused"`` an MLP in one compiled call, a
        ConvNet in one per layer (:mod:`bnnlib.inference.fused`, CPU only, chunks of
        ``FUSED_CHUNK`` images); ``"auto"`` the fused path where it runs. ``first_layer``:
        ``"real"`` (a float matmul with +/-1 weights, layers path), ``"bitplanes"`` (both
        paths), ``"int8"`` (int8 rows of the nonzero pixels, fused path) or ``"auto"`` (real on
        the layers path; per image on the fused path). All give the same integers.
        """
        batch_size = check_batch_size(batch_size)
        x = self._images(X)
        if self._use_fused(path, device, first_layer):
            if not len(x):
                return torch.zeros(0, self.num_classes, dtype=torch.float64)
            x = x.cpu().reshape(len(x), -1).numpy()
            return torch.from_numpy(self._fused_scores(x, first_layer, batch_size))
        if first_layer == "int8":
            raise ValueError('first_layer="int8" runs on the fused path only (CPU)')
        ops = backend(device, kernel)
        mode = "real" if first_layer == "auto" else first_layer
        out = [
            self._forward(x[i : i + batch_size].to(ops.device), ops, mode)
            for i in range(0, len(x), batch_size)
        ]
        if not out:
            return torch.zeros(0, self.num_classes, dtype=torch.float64)
        return torch.cat(out)

    def _use_fused(self, path: str, device: str, first_layer: str) -> bool:
        """Whether this call takes the fused path; ValueError for a bad or impossible choice."""
        if first_layer not in FIRST_LAYER_CHOICES:
            raise ValueError(
                f"first_layer must be one of {FIRST_LAYER_CHOICES}, got {first_layer!r}"
            )
        if path not in ("auto", "fused", "layers"):
            raise ValueError(f"path must be 'auto', 'fused' or 'layers', got {path!r}")
        cpu = device == "cpu" or torch.device(device).type == "cpu"
        mlp, conv = cpu and self._fused_kind == "mlp", cpu and self._fused_kind == "conv"
        if path == "fused":
            if not (mlp or conv):
                raise ValueError(
                    'path="fused" runs MLPs and ConvNets with a Sign after every hidden layer '
                    'on the CPU; use path="layers"'
                )
            if first_layer == "real" or (conv and first_layer == "bitplanes"):
                raise ValueError(
                    f'path="fused" has no {first_layer} first layer for this net: use '
                    'first_layer="auto"'
                )
            return True
        if path == "layers":
            return False
        modes = ("auto", "bitplanes", "int8") if mlp else ("auto", "int8")
        return (mlp or conv) and first_layer in modes

    def _fused_scores(self, xn: np.ndarray, first_layer: str, batch_size: int) -> np.ndarray:
        """float64 scores (N >= 1, classes) of uint8 images (N, pixels) by the fused path
        (:func:`fused.for_net`), as a numpy array."""
        if self._fused is None:
            self._fused = fused.for_net(self)
        chunk = min(check_batch_size(batch_size), fused.FUSED_CHUNK)
        parts = [
            self._fused.scores(xn[i : i + chunk], first_layer) for i in range(0, len(xn), chunk)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict(
        self,
        X,
        device: str = "cpu",
        first_layer: str = "auto",
        batch_size: int = 2000,
        kernel: str = "fast",
        path: str = "auto",
    ) -> torch.Tensor:
        """Classes (int64, N) of uint8 images or of floats scaled 2x/255 - 1.

        Floats must be exactly what :func:`bnnlib.data.scale` gives (finite, in [-1, 1], on
        its grid): pixels 0..255 or 0..1 as floats, NaN or inf are refused with a ValueError
        (:func:`bnnlib.data.to_uint8`), as is a ``batch_size`` below 1.

        Hidden layers use only XNOR-popcount and integer compares. ``first_layer="real"`` takes
        the 8-bit input through a float matmul with +/-1 weights (exact integers), ``"bitplanes"``
        through the paper's bit planes with XNOR-popcount, ``"int8"`` through int8 +/-1 rows
        with integer sums (fused path). On the CPU, MLPs and ConvNets run fused unless told
        otherwise (``path``, see :meth:`scores`). ``device="cuda"`` runs the GPU kernels of
        :mod:`bnnlib.kernels.cuda` (RuntimeError if they are not available), with ``kernel="fast"``
        (our 64-bit / tensor-core XNOR kernel) or ``"paper"`` (the paper's).
        """
        a = self._plain_pixels(X, device, path)
        if a is not None and self._use_fused(path, device, first_layer):
            # Batch 1 costs ~0.3 ms: each torch operation on the way (~10 us each, more with
            # the caches cold after the weights streamed through) is worth avoiding.
            return torch.from_numpy(self._fused_scores(a, first_layer, batch_size).argmax(1))
        return self.scores(X, device, first_layer, batch_size, kernel, path).argmax(1)

    def _plain_pixels(self, X, device: str, path: str) -> np.ndarray | None:
        """uint8 CPU images of this model's shape as a numpy (N >= 1, pixels) view, for the
        fused path without torch operations; None for anything else (the general path)."""
        if device != "cpu" or path == "layers":
            return None
        if isinstance(X, torch.Tensor):
            if X.dtype != torch.uint8 or X.device.type != "cpu" or X.requires_grad:
                return None
            X = X.numpy()
        if not isinstance(X, np.ndarray) or X.dtype != np.uint8 or X.ndim < 1 or not len(X):
            return None
        if math.prod(X.shape[1:]) != math.prod(self.input_shape):
            return None  # the general path says what is wrong
        return X.reshape(len(X), -1)

    def _forward(self, x: torch.Tensor, ops: Backend, first_layer: str) -> torch.Tensor:
        h = None
        for lay in self.layers:
            spec = lay.spec
            if spec["first"]:
                s = self._first(lay, x, ops, first_layer)
            elif spec["kind"] == "conv2d":
                s = self._hidden_conv(lay, h, ops)
            else:
                s = self._hidden_linear(lay, h, ops)
            if spec["kind"] == "conv2d":
                s = self._pool(lay, s, ops)  # (N, Ho, Wo, out) integers
            if spec["output"] == "scores":
                s = s.reshape(s.shape[0], -1).cpu()
                x64 = s.double() / 255.0 if spec["first"] else s.double()
                return lay.affine(x64)
            h = ops.threshold_pack(lay, s)  # (N, [Ho, Wo,] words)
        raise AssertionError("unreachable: the last layer gives scores")

    def _first(self, lay: _Layer, x: torch.Tensor, ops: Backend, mode: str) -> torch.Tensor:
        """t = 2 W_b.x - 255 sum(W_b) over valid inputs: the integer 255 * pre-activation."""
        spec = lay.spec
        if spec["kind"] == "linear":
            cols = x.reshape(x.shape[0], -1)
        else:
            xf = x.float()
            cols = F.unfold(xf, spec["kernel"], padding=spec["padding"], stride=spec["stride"])
            cols = cols.transpose(1, 2).reshape(-1, spec["k"])  # (N * L, k), pad = 0
            cols = cols.to(torch.uint8)
        if mode == "real":
            dot = ops.real_dot(lay, cols)
        else:
            dot = ops.bitplane_dot(lay, cols)
        if spec["kind"] == "linear":
            return 2 * dot - 255 * ops.get(lay, "wsum")
        ho, wo = spec["out_hw"]
        dot = dot.reshape(x.shape[0], ho * wo, -1)
        return (2 * dot - 255 * ops.get(lay, "wsum")).reshape(x.shape[0], ho, wo, -1)

    def _hidden_linear(self, lay: _Layer, h: torch.Tensor, ops: Backend) -> torch.Tensor:
        a = h.reshape(h.shape[0], -1)  # NHWC words flatten to (h, w) groups of channels
        return ops.xnor(lay, a) - lay.pad_bits

    def _hidden_conv(self, lay: _Layer, h: torch.Tensor, ops: Backend) -> torch.Tensor:
        spec = lay.spec
        (kh, kw), (sh, sw), (ph, pw) = spec["kernel"], spec["stride"], spec["padding"]
        ho, wo = spec["out_hw"]
        n = h.shape[0]
        hp = F.pad(h, (0, 0, pw, pw, ph, ph))  # zero words at padded positions (fixed below)
        cols = torch.stack(
            [
                hp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
                for i in range(kh)
                for j in range(kw)
            ],
            dim=3,
        )  # (N, Ho, Wo, kh*kw, words)
        r = ops.xnor(lay, cols.reshape(n * ho * wo, -1)).reshape(n, ho * wo, -1)
        s = r - lay.pad_bits + ops.get(lay, "pad_fix")
        return s.reshape(n, ho, wo, -1)

    @staticmethod
    def _pool(lay: _Layer, s: torch.Tensor, ops: Backend) -> torch.Tensor:
        p = lay.spec.get("pool")
        if p is None:
            return s
        sc = s.permute(0, 3, 1, 2)
        mx = ops.pool(sc, p)
        if p["after_bn"] and lay.direction is not None:
            # BN after the pool: max of a decreasing map (gamma < 0) is the map of the min.
            mn = -ops.pool(-sc, p)
            flip = ops.get(lay, "direction") < 0
            mx = torch.where(flip.view(1, -1, 1, 1), mn, mx)
        return mx.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# Back ends: one interface, the CPU one (numba kernels) and the CUDA one (bnnlib.kernels.cuda)
# --------------------------------------------------------------------------------------------


class Backend:
    """The operations :class:`PackedNet` runs on one device.

    ``kernels`` is a module with ``pack(x, dim)``, ``threshold_pack(acc, threshold,
    direction)`` and an XNOR product ``gemm(a, b, k)`` with the conventions of
    :mod:`bnnlib.kernels` (int64 words, LSB first, exact int32 results), which
    :mod:`bnnlib.kernels.cuda` shares. Subclasses give the first layer's products and the pooling.
    """

    device = "cpu"
    kernels: ModuleType

    def gemm(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        return self.kernels.xnor_gemm(a, b, k)

    def get(self, lay: _Layer, name: str) -> torch.Tensor:
        """A per-layer tensor on this device (copied once, then cached)."""
        t = lay.cache.get((self.device, name))
        if t is None:
            t = getattr(lay, name).to(self.device)
            lay.cache[(self.device, name)] = t
        return t

    def threshold_pack(self, lay: _Layer, s: torch.Tensor) -> torch.Tensor:
        """Sign(BN(s)) as packed words along the last dim (integer compares only)."""
        lead, n = s.shape[:-1], s.shape[-1]
        acc = s.reshape(-1, n).to(torch.int32).contiguous()
        thr, direction = self.get(lay, "threshold"), self.get(lay, "direction")
        return self.kernels.threshold_pack(acc, thr, direction).reshape(*lead, -1)

    def xnor(self, lay: _Layer, a: torch.Tensor) -> torch.Tensor:
        """Exact integer products of packed activations (rows of ``a``) with the weights."""
        return self.gemm(a.contiguous(), self.get(lay, "weight"), lay.spec["packed_bits"])

    def real_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        """Integer W_b . x of uint8 inputs (rows of ``cols``) by a float matmul."""
        raise NotImplementedError

    def bitplane_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        """Integer W_b . x of uint8 inputs on the paper's 8 bit planes with XNOR-popcount."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """Max-pooling of integers (N, C, H, W) with the file's pool spec."""
        raise NotImplementedError


class CpuBackend(Backend):
    """The CPU back end: the numba kernels of :mod:`bnnlib.kernels`."""

    device = "cpu"
    kernels = kernels

    def real_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        # integer operands, partial sums < 2^24 in float32 (else float64): exact
        dt = torch.float32 if 255 * lay.spec["k"] < EXACT_F32 else torch.float64
        return (cols.to(dt) @ self.get(lay, "wb").to(dt).T).round().to(torch.int32)

    def bitplane_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        return self.kernels.bitplane_dot(cols.contiguous(), lay.weight, lay.spec["k"])

    def pool(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        return F.max_pool2d(x, p["kernel"], p["stride"], p["padding"])


class CudaBackend(Backend):
    """The CUDA back end: the kernels of :mod:`bnnlib.kernels.cuda` on CUDA tensors.

    ``kernel="fast"`` uses :func:`bnnlib.kernels.cuda.xnor_gemm_fast` (64-bit popcount or 1-bit
    tensor cores), ``"paper"`` the paper's 32-bit XNOR kernel.
    """

    device = "cuda"

    def __init__(self, mod: ModuleType, kernel: str = "fast"):
        if kernel not in ("fast", "paper"):
            raise ValueError(f"kernel must be 'fast' or 'paper', got {kernel!r}")
        self.kernels = mod
        self._gemm = mod.xnor_gemm_fast if kernel == "fast" else mod.xnor_gemm

    def gemm(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        return self._gemm(a, b, k)

    def real_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        # float64: exact whatever cuBLAS's float32 settings (TF32) are.
        w = self.get(lay, "wb").double()
        return (cols.double() @ w.T).round().to(torch.int32)

    def bitplane_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        # Bit plane n as the +/-1 vector p_n = 2 x^n - 1:  x^n . w = (p_n . w + sum w) / 2.
        k, w = lay.spec["k"], self.get(lay, "weight")
        acc = torch.zeros(cols.shape[0], w.shape[0], dtype=torch.int64, device=self.device)
        for n in range(8):
            plane = ((cols >> n) & 1).float() * 2 - 1
            words = self.kernels.pack(plane, dim=-1, check=False)
            acc += self.gemm(words, w, k).long() << n
        wsum = self.get(lay, "wb").sum(1).round().long()
        return ((acc + 255 * wsum) // 2).to(torch.int32)

    def pool(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        # CUDA max-pooling has no integer kernel; float64 holds these integers exactly.
        return F.max_pool2d(x.double(), p["kernel"], p["stride"], p["padding"]).to(x.dtype)


def backend(device: str = "cpu", kernel: str = "fast") -> Backend:
    """The back end for ``device`` ("cpu" or "cuda"); RuntimeError naming what is missing."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return CpuBackend()
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        from bnnlib.kernels import cuda as bcuda
    except ImportError as e:
        raise RuntimeError(
            f"device='cuda' needs bnnlib.kernels.cuda, which failed to import: {e}"
        ) from e
    if not bcuda.available():
        raise RuntimeError(f"device='cuda' is not available: {bcuda.reason()}")
    return CudaBackend(bcuda, kernel)
