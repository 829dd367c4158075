"""The packed network: XNOR-popcount and integer compares only, on a CPU or CUDA back end.

:class:`PackedNet` runs a model read by :func:`bnnlib.inference.load`. Its hidden layers take
packed +/-1 activations, compute ``s = x_b . w_b`` with XNOR-popcount and turn batch norm +
Sign into one integer compare per neuron (:mod:`bnnlib.inference.fold`); the last layer's
scores are ``a * (s - mu) + beta`` in float64, the prediction their argmax.
Its header is checked first (:mod:`bnnlib.inference.header`), which gives the typed layer specs
(:mod:`bnnlib.inference.spec`). Each layer is loaded as a :class:`PackedLayer`: its spec, its
packed weights, an input side (:class:`ImageInput` for the first layer, :class:`BinaryInput`
for a hidden one) and an output side (:class:`SignOutput` for a hidden layer, the float64
:class:`~bnnlib.inference.fold.Affine` of the last one).

**First layer.** Its input is the 8-bit image, not +/-1 (paper Section 1.6). With x in
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

**Back ends** (:mod:`bnnlib.inference.backend`). :class:`Backend` is the one interface the
runtime calls; :class:`CpuBackend`
implements it with the numba kernels of :mod:`bnnlib.kernels`, :class:`CudaBackend` with the
kernels of :mod:`bnnlib.kernels.cuda`. Both kernel modules take the same arguments (packed int64
words, ``xnor_gemm(a, b, k)``, ``threshold_pack(acc, threshold, direction)``), and the
thresholds are converted to (threshold, direction) once, at load, for every device.
"""

from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np
import torch
from torch.nn import functional as F

from bnnlib import kernels
from bnnlib.data.loaders import to_uint8
from bnnlib.inference import fused
from bnnlib.inference.backend import Backend, backend
from bnnlib.inference.fold import Affine, kernel_thresholds
from bnnlib.inference.graph import INPUT_SCALING, check_batch_size
from bnnlib.inference.header import MAX_ELEMENTS, MAX_SIDE, check_header
from bnnlib.inference.layer import BinaryInput, ImageInput, PackedLayer, SignOutput
from bnnlib.inference.spec import Conv2dSpec, LayerSpec

__all__ = [
    "PackedNet",
    "conv_rows",
    "conv_weight",
    "check_header",
    "MAX_SIDE",
    "MAX_ELEMENTS",
]


#: ``first_layer`` of :meth:`PackedNet.scores` / :meth:`PackedNet.predict`.
FIRST_LAYER_CHOICES = ("auto", "real", "bitplanes", "int8", "int8_gemm")


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


def conv_weight(rows: torch.Tensor, spec: Conv2dSpec) -> torch.Tensor:
    """The (out, c, kh, kw) weight, in torch's layout, of a conv layer's unpacked
    (out, groups, group_size) rows; the inverse of :func:`conv_rows`."""
    out, c, (kh, kw) = rows.shape[0], spec.in_channels, spec.window.kernel
    if spec.first:
        return rows.reshape(out, c, kh, kw)
    return rows.reshape(out, kh, kw, c).permute(0, 3, 1, 2)


class PackedNet:
    """A BNN as packed bits and integer thresholds; see the module docstring.

    ``predict(X)`` returns int64 classes; ``scores(X)`` the last layer's float64 scores.
    ``nbytes`` is the size of the packed weights, ``nbytes_total`` adds thresholds and the last
    batch norm. ``header`` is the architecture as stored in the file.
    """

    def __init__(self, header: dict, tensors: dict[str, torch.Tensor], source: str = "<memory>"):
        specs = check_header(header, tensors)
        self.header = header
        self.source = source
        self.input_shape = list(header["input"]["shape"])
        if header["input"]["scaling"] != INPUT_SCALING:
            raise ValueError(f"input scaling {header['input']['scaling']!r} is not supported")
        self.num_classes = int(header["num_classes"])
        self.layers: list[PackedLayer] = [self._layer(spec, tensors) for spec in specs]
        self._fused = None  # the small-batch CPU path (fused.for_net), made on first use
        #: per-image shapes layout_problem has accepted (a few), so that a batch-1 call
        #: need not ask again
        self._image_shapes: set[tuple[int, ...]] = set()
        self._fused_kind = (
            "mlp" if fused.supports(self) else "conv" if fused.supports_conv(self) else None
        )

    @classmethod
    def _layer(cls, spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> PackedLayer:
        name, out = spec.name, spec.out_size
        w = tensors[f"{name}.weight"]
        expect = (out, spec.layout.row_words)
        if tuple(w.shape) != expect or w.dtype != torch.int64:
            raise ValueError(f"{name}.weight has shape {tuple(w.shape)}, expected {expect}")
        wpm = cls._rows(spec, w)  # (out, g, cs) +/-1
        if not torch.equal(kernels.pack(wpm, dim=-1).reshape(out, -1), w):
            # The hidden layers count padding bits as matches (pad_bits): they must be 0.
            raise ValueError(f"{name}.weight has padding bits set (pack() leaves them 0)")
        side: ImageInput | BinaryInput
        if spec.first:
            wb = wpm.reshape(out, spec.layout.k)
            side = ImageInput(wb=wb, wsum=cls._first_wsum(spec, wb))
        elif isinstance(spec, Conv2dSpec):
            side = BinaryInput(pad_fix=cls._pad_fix(spec, wpm))
        else:
            side = BinaryInput()
        output: SignOutput | Affine
        if spec.output == "sign":
            T, raw_flip = tensors[f"{name}.threshold"], tensors[f"{name}.flip"]
            if T.shape != (out,) or raw_flip.shape != (out,):
                raise ValueError(f"{name}: thresholds do not match {out} outputs")
            cls._check_thresholds(spec, T, raw_flip)
            output = SignOutput(*kernel_thresholds(T, raw_flip.bool()))
        else:
            output = Affine(*(tensors[f"{name}.{t}"] for t in ("a", "mu", "beta")))
            for t in ("a", "mu", "beta"):
                if not bool(torch.isfinite(getattr(output, t)).all()):
                    raise ValueError(f"{name}.{t} holds NaN or infinite values: a damaged file")
        return PackedLayer(spec=spec, weight=w, input=side, output=output)

    @staticmethod
    def _check_thresholds(spec: LayerSpec, T: torch.Tensor, flip: torch.Tensor) -> None:
        """Thresholds an export can write: integers in [-bound, bound + 1] (bound = the largest
        |pre-activation| of the layer: its fan-in k, 255 k for the 8-bit first layer; bound + 1
        means "never fires"), flips 0 or 1. Anything else (a threshold past int32, a flip of 2)
        would give silently wrong predictions."""
        k = spec.layout.k
        bound = 255 * k if spec.first else k
        if T.dtype.is_floating_point or T.dtype == torch.bool:
            raise ValueError(f"{spec.name}.threshold must hold integers, not {T.dtype}")
        if bool(((T < -bound) | (T > bound + 1)).any()):
            lo, hi = int(T.min()), int(T.max())
            raise ValueError(
                f"{spec.name}.threshold holds values in [{lo}, {hi}], outside "
                f"[-{bound}, {bound + 1}] (what a layer of fan-in {k} can reach): a damaged file"
            )
        if bool(((flip != 0) & (flip != 1)).any()):
            raise ValueError(f"{spec.name}.flip must be 0 or 1: a damaged file")

    @staticmethod
    def _rows(spec: LayerSpec, w: torch.Tensor) -> torch.Tensor:
        """float32 +/-1 (out, groups, group_size): a layer's packed words unpacked."""
        lay = spec.layout
        words = w.reshape(w.shape[0], lay.groups, lay.words_per_group)
        return kernels.unpack(words, lay.group_size, dim=-1).float()

    def binary_conv_weights(self) -> list[tuple[Conv2dSpec, torch.Tensor]]:
        """(spec, W_b) of each convolution: W_b its +/-1 weight (out, in, kh, kw), float32,
        in torch's layout (:func:`conv_weight` of the unpacked words)."""
        return [
            (lay.spec, conv_weight(self._rows(lay.spec, lay.weight), lay.spec).contiguous())
            for lay in self.layers
            if isinstance(lay.spec, Conv2dSpec)
        ]

    # ---- precomputed corrections ----

    @staticmethod
    def _first_wsum(spec: LayerSpec, wb: torch.Tensor) -> torch.Tensor:
        """sum of W_b over the valid (non-padded) inputs: (out,) or (Ho*Wo, out) for a conv."""
        if not isinstance(spec, Conv2dSpec):
            return wb.sum(1).round().to(torch.int32)
        c, (kh, kw), win = spec.in_channels, spec.window.kernel, spec.window
        ones = torch.ones(1, c, *spec.in_hw)
        w4 = wb.reshape(-1, c, kh, kw)
        m = F.conv2d(ones, w4, stride=win.stride, padding=win.padding)
        return m[0].permute(1, 2, 0).reshape(-1, w4.shape[0]).round().to(torch.int32)

    @staticmethod
    def _pad_fix(spec: Conv2dSpec, wpm: torch.Tensor) -> torch.Tensor:
        """Hidden conv: sum of W_b at zero-padded positions, per (output position, channel)."""
        out, c, win = wpm.shape[0], spec.in_channels, spec.window
        w4 = conv_weight(wpm, spec)
        ones = torch.ones(1, c, *spec.in_hw)
        valid = F.conv2d(ones, w4, stride=win.stride, padding=win.padding)[0]
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
            if isinstance(lay.output, SignOutput):
                thr, direction = lay.output.threshold, lay.output.direction
                n += 4 * thr.numel() + -(-direction.numel() // 8)
            else:
                n += 8 * 3 * lay.output.a.numel()
        return n

    def __repr__(self) -> str:
        kinds = ", ".join(
            f"{s.kind}({s.in_size}->{s.out_size})" for s in (lay.spec for lay in self.layers)
        )
        # The file's name, not its folder: a printed model never shows a local or temporary path
        # (``source`` keeps the full path for error messages).
        name = self.source if self.source.startswith("<") else PurePath(self.source).name
        return f"PackedNet([{kinds}], {self.nbytes} packed weight bytes, from {name})"

    # ---- input ----

    @property
    def dataset(self) -> str | None:
        """The data set the model was trained on, when its file records it (publish does)."""
        value = self.header.get("metadata", {}).get("dataset")
        return value if isinstance(value, str) and value else None

    def layout_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a batch of ``shape`` (N, ...) is not images of this model, or None when it is.

        A ConvNet takes its shape (C, H, W), flat (C*H*W,), and (H, W) when C = 1; anything
        else with the right number of pixels (channels-last (H, W, C) above all) is refused
        rather than reshaped into the wrong pixels. An MLP takes any per-image shape of its
        number of inputs but a colour image's channels-last one (H, W, 3), flattened in order."""
        want = tuple(self.input_shape)
        per = tuple(shape[1:])
        if len(shape) < 1:
            return f"input of shape {tuple(shape)} is not a batch of images"
        if len(want) == 1:
            if math.prod(per) != want[0]:
                return (
                    f"input of shape {tuple(shape)} does not match this model's {want[0]} "
                    "inputs per image"
                )
            if len(per) == 3 and per[-1] == 3 and per[0] != 3:
                return (
                    f"images of shape {tuple(shape)} are channels-last (N, H, W, C); flatten "
                    "(N, C, H, W) images: pass x.permute(0, 3, 1, 2)"
                )
            return None
        ok = {want, (math.prod(want),)}
        if want[0] == 1:
            ok.add(want[1:])
        if per in ok:
            return None
        if len(want) == 3 and per == (want[1], want[2], want[0]):
            return (
                f"images of shape {tuple(shape)} are channels-last (N, H, W, C); this model takes "
                f"(N, {want[0]}, {want[1]}, {want[2]}): pass x.permute(0, 3, 1, 2)"
            )
        return f"input of shape {tuple(shape)} does not match this model's {list(want)} per image"

    def _images(self, X) -> torch.Tensor:
        x = to_uint8(X)  # stays on its device: images already on the GPU are not copied
        problem = self.layout_problem(tuple(x.shape))
        if problem:
            raise ValueError(problem)
        return x.reshape(x.shape[0], *self.input_shape)

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
        ``FUSED_CHUNK`` images, an MLP's shared between threads); ``"auto"`` the fused path
        where it runs. ``first_layer``:
        ``"real"`` (a float matmul with +/-1 weights, layers path), ``"bitplanes"`` (both
        paths), ``"int8"`` (int8 rows of the nonzero pixels, fused path), ``"int8_gemm"`` (a
        dense ``torch._int_mm``, fused MLP path) or ``"auto"`` (real on the layers path; per
        image on the fused path). All give the same integers.
        """
        batch_size = check_batch_size(batch_size)
        x = self._images(X)
        if self._use_fused(path, device, first_layer):
            if not len(x):
                return torch.zeros(0, self.num_classes, dtype=torch.float64)
            x = x.cpu().reshape(len(x), -1).numpy()
            return torch.from_numpy(self._fused_run(x, first_layer, batch_size))
        if first_layer in ("int8", "int8_gemm"):
            raise ValueError(f'first_layer="{first_layer}" runs on the fused path only (CPU)')
        ops = backend(device, kernel)
        mode = "real" if first_layer == "auto" else first_layer
        out = [
            self.forward_layers(x[i : i + batch_size].to(ops.device), ops, mode)
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
            if first_layer == "real" or (conv and first_layer in ("bitplanes", "int8_gemm")):
                raise ValueError(
                    f'path="fused" has no {first_layer} first layer for this net: use '
                    'first_layer="auto"'
                )
            return True
        if path == "layers":
            return False
        modes = ("auto", "bitplanes", "int8", "int8_gemm") if mlp else ("auto", "int8")
        return (mlp or conv) and first_layer in modes

    @property
    def fused(self):
        """The small-batch CPU path of this net (:func:`fused.for_net`, made on first use;
        None for a net it does not support). Its ``parallel`` says whether the layers of a chunk
        are split between threads (``net.fused.parallel = False``: the calling thread only),
        an MLP's ``chunks_parallel`` whether the chunks of a large batch are."""
        if self._fused is None and self._fused_kind is not None:
            self._fused = fused.for_net(self)
        return self._fused

    def _fused_run(
        self, xn: np.ndarray, first_layer: str, batch_size: int, what: str = "scores"
    ) -> np.ndarray:
        """float64 scores (N >= 1, classes), or with ``what="classes"`` the int64 classes
        (N,), of uint8 images (N, pixels) by the fused path (:func:`fused.for_net`), as a
        numpy array."""
        if self._fused is None:
            self._fused = fused.for_net(self)
        chunk = check_batch_size(batch_size)
        if self._fused.max_batch is not None:  # a ConvNet: chunks of FUSED_CHUNK images
            chunk = min(chunk, self._fused.max_batch)
        run = self._fused.classes if what == "classes" else self._fused.scores
        if len(xn) <= chunk:  # one call (a lone image: no slicing, no list)
            return run(xn, first_layer)
        parts = [run(xn[i : i + chunk], first_layer) for i in range(0, len(xn), chunk)]
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
            # At batch 1 each torch or numpy operation on the way (microseconds each, more
            # with the caches cold after the weights streamed through) is worth avoiding.
            if len(a) == 1 and self._fused_kind == "mlp":
                check_batch_size(batch_size)
                cls = self.fused.classify_lone(a, first_layer)
                if cls is not None:
                    return torch.from_numpy(np.array([cls]))
            return torch.from_numpy(self._fused_run(a, first_layer, batch_size, "classes"))
        return self.scores(X, device, first_layer, batch_size, kernel, path).argmax(1)

    def _plain_pixels(self, X, device: str, path: str) -> np.ndarray | None:
        """uint8 CPU images of this model's shape as a numpy (N >= 1, pixels) view, for the
        fused path without torch operations; None for anything else (the general path)."""
        if device != "cpu" or path == "layers":
            return None
        if isinstance(X, torch.Tensor):
            if X.dtype != torch.uint8 or not X.is_cpu or X.requires_grad:
                return None
            X = X.numpy()
        if not isinstance(X, np.ndarray) or X.dtype != np.uint8 or X.ndim < 1 or not len(X):
            return None
        per = X.shape[1:]
        if per not in self._image_shapes:
            if self.layout_problem(X.shape) is not None:
                return None  # the general path says what is wrong
            if len(self._image_shapes) < 8:
                self._image_shapes.add(per)
        return X.reshape(len(X), -1)

    def forward_layers(self, x: torch.Tensor, ops: Backend, first_layer: str) -> torch.Tensor:
        """The layer-at-a-time pass over uint8 images ``x`` (N, C, H, W) with the backend
        ``ops`` (:func:`backend`: the CPU kernels or the CUDA ones): float64 scores (N, classes).
        ``first_layer`` is ``"real"`` or ``"bitplanes"``. :meth:`scores` calls it in batches."""
        h = None
        for lay in self.layers:
            spec = lay.spec
            conv = isinstance(spec, Conv2dSpec)
            if spec.first:
                s = self._first(lay, x, ops, first_layer)
            elif conv:
                s = self._hidden_conv(lay, h, ops)
            else:
                s = self._hidden_linear(lay, h, ops)
            if conv:
                s = self._pool(lay, s, ops)  # (N, Ho, Wo, out) integers
            if isinstance(lay.output, Affine):  # the last layer: scores
                s = s.reshape(s.shape[0], -1).cpu()
                x64 = s.double() / 255.0 if spec.first else s.double()
                return lay.output(x64)
            h = ops.threshold_pack(lay, s)  # (N, [Ho, Wo,] words)
        raise AssertionError("unreachable: the last layer gives scores")

    def _first(self, lay: PackedLayer, x: torch.Tensor, ops: Backend, mode: str) -> torch.Tensor:
        """t = 2 W_b.x - 255 sum(W_b) over valid inputs: the integer 255 * pre-activation."""
        spec, wsum = lay.spec, ops.get(lay, lay.input.wsum)
        if isinstance(spec, Conv2dSpec):
            win = spec.window
            xf = x.float()
            cols = F.unfold(xf, win.kernel, padding=win.padding, stride=win.stride)
            cols = cols.transpose(1, 2).reshape(-1, spec.layout.k)  # (N * L, k), pad = 0
            cols = cols.to(torch.uint8)
        else:
            cols = x.reshape(x.shape[0], -1)
        if mode == "real":
            dot = ops.real_dot(lay, cols)
        else:
            dot = ops.bitplane_dot(lay, cols)
        if not isinstance(spec, Conv2dSpec):
            return 2 * dot - 255 * wsum
        ho, wo = spec.out_hw
        dot = dot.reshape(x.shape[0], ho * wo, -1)
        return (2 * dot - 255 * wsum).reshape(x.shape[0], ho, wo, -1)

    def _hidden_linear(self, lay: PackedLayer, h: torch.Tensor, ops: Backend) -> torch.Tensor:
        a = h.reshape(h.shape[0], -1)  # NHWC words flatten to (h, w) groups of channels
        return ops.xnor(lay, a) - lay.spec.layout.pad_bits

    def _hidden_conv(self, lay: PackedLayer, h: torch.Tensor, ops: Backend) -> torch.Tensor:
        spec = lay.spec
        (kh, kw), (sh, sw), (ph, pw) = spec.window.kernel, spec.window.stride, spec.window.padding
        ho, wo = spec.out_hw
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
        s = r - spec.layout.pad_bits + ops.get(lay, lay.input.pad_fix)
        return s.reshape(n, ho, wo, -1)

    @staticmethod
    def _pool(lay: PackedLayer, s: torch.Tensor, ops: Backend) -> torch.Tensor:
        p = lay.spec.pool
        if p is None:
            return s
        sc = s.permute(0, 3, 1, 2)
        mx = ops.pool(sc, p)
        if p.after_bn and isinstance(lay.output, SignOutput):
            # BN after the pool: max of a decreasing map (gamma < 0) is the map of the min.
            mn = -ops.pool(-sc, p)
            flip = ops.get(lay, lay.output.direction) < 0
            mx = torch.where(flip.view(1, -1, 1, 1), mn, mx)
        return mx.permute(0, 2, 3, 1)
