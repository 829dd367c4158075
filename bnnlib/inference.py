"""Packed inference: a trained BNN as bits and integer thresholds (paper Sections 2.6 and 4).

After training only the binarized weights W_b = Sign(W) and the batch-norm statistics matter.
:func:`export` writes them as packed bits (64 weights to an int64 word, bit 1 = +1, LSB first,
as :func:`bnnlib.kernels.pack`), and :func:`load` returns a :class:`PackedNet` whose hidden
layers run with XNOR-popcount (:func:`bnnlib.kernels.xnor_gemm`) and integer compares only.

**Batch norm + Sign -> one integer threshold per neuron.** A hidden layer's pre-activation
``s = x_b . w_b`` is an integer (its inputs and weights are +/-1). Batch norm in evaluation is
the affine map ``y = a (s - mu) + beta`` with ``a = gamma / sqrt(var + eps)`` (the shift-based
batch norm: ``a = AP2(gamma) AP2(1 / sqrt(var + eps))``), and Sign(y) = +1 iff ``y >= 0``::

    gamma > 0:  y >= 0  iff  s >= T,   T = mu - beta sqrt(var + eps) / gamma
    gamma < 0:  y >= 0  iff  s <= T    (the comparison flips)
    gamma = 0:  y = beta, a constant bit

Since s is an integer, the bit is ``(s >= T_int) XOR flip`` with an integer T_int. T_int is not
computed from the formula above (rounding could move it by one at a tie): it is the smallest
integer at which the decision of the float simulation (below) changes, found by bisection on
the very float64 expression the simulation evaluates. ``y`` is monotone in s and so is its
rounded float64 value, so the packed bits equal the simulation's bits for every integer s.

**The float simulation** (:func:`simulate`) is the reference the packed net matches exactly.
It runs the model in evaluation mode (dropout off, deterministic Sign) with:

* the input as the 8-bit image x, scaled as ``(2x - 255) / 255`` (= 2x/255 - 1); the first
  layer's pre-activation is computed as ``t / 255`` with the integer ``t = W_b . (2x - 255)``
  (zero padding of a convolution is 0 in both forms);
* every linear/conv product computed exactly (integer operands, float32 accumulation whose
  partial sums stay below 2^24, then float64);
* batch norm in float64 as ``a * (s - mu) + beta`` (three separately rounded operations), a
  layer bias, if any, folded into mu;
* Sign as ``+1 iff y >= 0``; max-pooling where the model has it; the last layer's scores
  ``a * (s - mu) + beta`` in float64, and the prediction their argmax.

The float32 model itself computes the first layer's sum and batch norm in float32, so it can
differ from the simulation where a neuron sits within rounding of its threshold; the benchmark
reports that agreement too.

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

**File format** (versioned, not pickle): a safetensors file whose metadata holds
``format = "bnnlib.packed"``, ``format_version``, the JSON ``header`` (architecture: one spec
per layer with shapes, k, words, the input scaling) and a SHA-256 over the header and every
tensor, so a truncated or corrupted file is refused with :class:`PackedModelError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .layers import BinaryConv2d, BinaryLinear, SignActivation
from .shift import _ShiftBatchNorm, ap2

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INPUT_SCALING",
    "PackedModelError",
    "PackedNet",
    "export",
    "load",
    "simulate",
    "simulate_scores",
    "float32_nbytes",
    "to_uint8",
    "fold_batchnorm",
    "integer_thresholds",
]

FORMAT = "bnnlib.packed"
FORMAT_VERSION = 1
INPUT_SCALING = "2x/255-1"
_EXACT_F32 = 2**24  # integers up to this magnitude, and sums of them, are exact in float32


class PackedModelError(ValueError):
    """A packed-model file that cannot be read: truncated, corrupted, wrong format or version."""


# --------------------------------------------------------------------------------------------
# Small helpers: input conversion, bit packing, batch-norm folding, thresholds
# --------------------------------------------------------------------------------------------


def to_uint8(X: torch.Tensor | np.ndarray) -> torch.Tensor:
    """8-bit images from uint8 input (returned as is) or from floats scaled as 2x/255 - 1.

    Floats go through :func:`bnnlib.data.to_uint8`, the exact inverse of the scaling.
    """
    X = torch.as_tensor(X)
    if X.dtype == torch.uint8:
        return X
    if not X.is_floating_point():
        raise ValueError(f"expected uint8 images or floats scaled 2x/255-1, got dtype {X.dtype}")
    from .data import to_uint8 as data_to_uint8

    return data_to_uint8(X)


@dataclass
class Affine:
    """Evaluation-mode batch norm as ``y = a * (s - mu) + beta`` per channel (float64)."""

    a: torch.Tensor
    mu: torch.Tensor
    beta: torch.Tensor

    def __call__(self, s: torch.Tensor, dim: int = -1) -> torch.Tensor:
        shape = [1] * s.dim()
        shape[dim] = -1
        a, mu, beta = (t.view(shape) for t in (self.a, self.mu, self.beta))
        return a * (s - mu) + beta  # three rounded float64 operations, the simulation's order


def fold_batchnorm(layer: nn.Module, bn: nn.Module | None) -> Affine:
    """The affine map of ``bn`` in evaluation (and the layer's bias folded into mu), float64.

    Standard batch norm: ``a = gamma / sqrt(var + eps)``. Shift-based batch norm (paper
    Algorithm 3): ``a = AP2(gamma) * AP2(1 / sqrt(var + eps))`` computed as the module does.
    """
    out = layer.weight.shape[0]
    if bn is None:
        a = torch.ones(out, dtype=torch.float64)
        mu = torch.zeros(out, dtype=torch.float64)
        beta = torch.zeros(out, dtype=torch.float64)
    else:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
        with torch.no_grad():
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
            beta_t = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            if isinstance(bn, _ShiftBatchNorm):
                a = (ap2(gamma) * ap2(torch.rsqrt(bn.running_var + bn.eps))).double()
            else:
                a = gamma.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            mu = bn.running_mean.double().clone()
            beta = beta_t.double().clone()
    if getattr(layer, "bias", None) is not None:
        mu = mu - layer.bias.detach().double()
    return Affine(a.detach().cpu(), mu.cpu(), beta.cpu())


def integer_thresholds(aff: Affine, bound: int, divisor: float = 1.0):
    """Per-neuron integer threshold T and flip so that Sign(BN(v)) = +1 iff (v >= T) XOR flip.

    ``v`` ranges over the integers in [-bound, bound]; the decision is the float64 one of the
    simulation, ``a * (v / divisor - mu) + beta >= 0`` (``divisor`` = 255 for the first layer,
    whose pre-activation is t / 255). With flip = (a < 0), ``e(v) = decision XOR flip`` is
    non-decreasing in v, and T is the smallest v in [-bound, bound] with e(v) true, or
    bound + 1 if none (bisection on the exact expression; no rounding argument needed).
    """
    flip = aff.a < 0

    def e(v: torch.Tensor) -> torch.Tensor:
        x = v.double()
        if divisor != 1.0:
            x = x / divisor
        return (aff(x) >= 0) ^ flip

    lo = torch.full_like(aff.a, -bound - 1, dtype=torch.int64)  # e(lo) taken as false
    hi = torch.full_like(aff.a, bound + 1, dtype=torch.int64)  # e(hi) taken as true
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        up = e(mid)
        active = hi - lo > 1
        hi = torch.where(active & up, mid, hi)
        lo = torch.where(active & ~up, mid, lo)
    return hi, flip


# --------------------------------------------------------------------------------------------
# Model walking: (binary layer, pooling, batch norm, sign) units
# --------------------------------------------------------------------------------------------


@dataclass
class _Unit:
    layer: nn.Module
    bn: nn.Module | None = None
    pool: nn.MaxPool2d | None = None
    pool_after_bn: bool = False
    output: str = "sign"  # "sign" (binary output) or "scores" (last layer)
    flatten_before: bool = False


_SKIP = (nn.Dropout, nn.Identity)
_BN = nn.modules.batchnorm._BatchNorm


def _units(model: nn.Module) -> list[_Unit]:
    """Group an nn.Sequential into units: binary layer [MaxPool] [BN] [MaxPool] [Sign]."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export expects an nn.Sequential BNN, got {type(model).__name__}")
    mods = [m for m in model if not isinstance(m, _SKIP)]
    units: list[_Unit] = []
    flatten = False
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"unsupported {m}: only Flatten(1, -1)")
            flatten, i = True, i + 1
            continue
        if not isinstance(m, (BinaryLinear, BinaryConv2d)):
            raise ValueError(
                f"cannot export module {i} ({type(m).__name__}): expected BinaryLinear or "
                "BinaryConv2d (a float model or an unsupported layer order?)"
            )
        u = _Unit(layer=m, flatten_before=flatten)
        flatten, i = False, i + 1
        if i < len(mods) and isinstance(mods[i], nn.MaxPool2d):
            u.pool, i = mods[i], i + 1
        if i < len(mods) and isinstance(mods[i], _BN):
            u.bn, i = mods[i], i + 1
        if u.pool is None and i < len(mods) and isinstance(mods[i], nn.MaxPool2d):
            u.pool, u.pool_after_bn, i = mods[i], True, i + 1
        if i < len(mods) and isinstance(mods[i], SignActivation):
            i += 1
        elif i == len(mods):
            u.output = "scores"
        else:
            nxt = next((x for x in mods[i:] if not isinstance(x, nn.Flatten)), None)
            if not (isinstance(nxt, (BinaryLinear, BinaryConv2d)) and nxt.binarize_input):
                raise ValueError(
                    f"cannot export: {type(mods[i]).__name__} after a binary layer; expected "
                    "[MaxPool2d] [BatchNorm] SignActivation, or the end of the network"
                )
        if u.pool is not None and not isinstance(m, BinaryConv2d):
            raise ValueError("MaxPool2d after a BinaryLinear layer is not supported")
        units.append(u)
    if not units:
        raise ValueError("the model has no binary layer to export")
    if not isinstance(units[-1].layer, BinaryLinear):
        raise ValueError("the last binary layer must be a BinaryLinear giving the class scores")
    if units[0].layer.binarize_input:
        raise ValueError(
            "the first binary layer must take the real 8-bit image (binarize_input=False)"
        )
    return units


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_out(hw, kernel, stride, padding) -> list[int]:
    return [(hw[d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(2)]


def _pool_spec(pool: nn.MaxPool2d, after_bn: bool) -> dict:
    if pool.ceil_mode or _pair(pool.dilation) != (1, 1):
        raise ValueError(f"unsupported {pool}: only dilation 1 and ceil_mode=False")
    return {
        "kernel": list(_pair(pool.kernel_size)),
        "stride": list(_pair(pool.stride if pool.stride is not None else pool.kernel_size)),
        "padding": list(_pair(pool.padding)),
        "after_bn": after_bn,
    }


def _infer_input_shape(units: list[_Unit]) -> list[int]:
    first = units[0].layer
    if isinstance(first, BinaryLinear):
        return [first.in_features]
    # A conv net: the image side is the one whose conv output matches the first linear layer.
    for side in range(1, 1025):
        hw, c = [side, side], first.in_channels
        for u in units:
            L = u.layer
            if isinstance(L, BinaryLinear):
                if L.in_features == c * hw[0] * hw[1]:
                    return [first.in_channels, side, side]
                break
            hw = _conv_out(hw, _pair(L.kernel_size), _pair(L.stride), _pair(L.padding))
            if u.pool is not None:
                p = _pool_spec(u.pool, u.pool_after_bn)
                hw = _conv_out(hw, p["kernel"], p["stride"], p["padding"])
            if min(hw) < 1:
                break
            c = L.out_channels
    raise ValueError("cannot infer the input image size; pass input_shape=(C, H, W)")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _kernels():
    from . import kernels

    return kernels


def _sign_weight(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().float().cpu()
    return torch.where(w >= 0, 1.0, -1.0)  # Sign(0) = +1, paper Eq. 1


def export(
    model: nn.Module,
    path: str | os.PathLike,
    input_scaling: str = INPUT_SCALING,
    input_shape: tuple[int, ...] | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` (a trained bnnlib BNN, nn.Sequential) as a packed safetensors file.

    ``input_scaling`` documents how the float model saw the 8-bit images; only
    ``"2x/255-1"`` (the paper's) is supported by the packed first layer. ``input_shape`` is
    (C, H, W) for a conv net or (features,) for an MLP; when None it is inferred, for a conv
    net as the smallest square image whose conv output fits the first linear layer (32 for the
    paper's CIFAR-10 ConvNet). ``metadata`` is a JSON-able dict stored in the header (e.g. the
    training run). The write is atomic (a temporary file, then ``os.replace``).
    """
    if input_scaling != INPUT_SCALING:
        raise ValueError(f"input_scaling {input_scaling!r} unsupported; use {INPUT_SCALING!r}")
    units = _units(model)
    shape = list(input_shape) if input_shape is not None else _infer_input_shape(units)
    layers, tensors = [], {}
    c, hw = shape[0], (shape[1:] if len(shape) == 3 else None)
    for idx, u in enumerate(units):
        spec: dict = {"name": f"layers.{idx}", "first": idx == 0, "output": u.output}
        spec["batchnorm"] = (
            "none" if u.bn is None else "shift" if isinstance(u.bn, _ShiftBatchNorm) else "standard"
        )
        if isinstance(u.layer, BinaryConv2d):
            w, c, hw = _conv_layout(u, spec, c, hw)
        else:
            w, c, hw = _linear_layout(u, spec, c, hw)
        tensors.update(_layer_tensors(u, spec, w))
        layers.append(spec)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input": {"shape": shape, "dtype": "uint8", "scaling": input_scaling},
        "layers": layers,
        "num_classes": c,
        "source": {"modules": [type(m).__name__ for m in model]},
        "metadata": metadata or {},
    }
    return _write(Path(path), header, tensors)


def _conv_layout(u: _Unit, spec: dict, c: int, hw):
    """Conv spec; weights as (out, groups, group_size) +/-1 in the packed layout."""
    L, name = u.layer, spec["name"]
    if hw is None or u.flatten_before:
        raise ValueError(f"{name}: a convolution needs an image input (C, H, W)")
    if L.groups != 1 or _pair(L.dilation) != (1, 1) or L.padding_mode != "zeros":
        raise ValueError(f"{name}: only groups=1, dilation=1, zero padding are supported")
    if isinstance(L.padding, str):
        raise ValueError(f"{name}: string padding {L.padding!r} unsupported; use ints")
    if L.in_channels != c:
        raise ValueError(f"{name}: expects {L.in_channels} channels, gets {c}")
    kernel, stride, padding = _pair(L.kernel_size), _pair(L.stride), _pair(L.padding)
    out_hw = _conv_out(hw, kernel, stride, padding)
    spec.update(kind="conv2d", in_channels=c, out_channels=L.out_channels)
    spec.update(kernel=list(kernel), stride=list(stride), padding=list(padding))
    spec.update(in_hw=list(hw), out_hw=out_hw)
    wb, k = _sign_weight(L), c * kernel[0] * kernel[1]
    if spec["first"]:  # torch's (c, kh, kw) order, as F.unfold lays out the 8-bit input
        w = wb.reshape(L.out_channels, 1, k)
    else:  # one group per kernel position, its channels packed (activations are NHWC words)
        w = wb.permute(0, 2, 3, 1).reshape(L.out_channels, kernel[0] * kernel[1], c)
    hw = out_hw
    if u.pool is not None:
        p = spec["pool"] = _pool_spec(u.pool, u.pool_after_bn)
        hw = _conv_out(hw, p["kernel"], p["stride"], p["padding"])
    spec["pooled_hw"] = list(hw)
    spec["k"] = k
    return w, L.out_channels, hw


def _linear_layout(u: _Unit, spec: dict, c: int, hw):
    """Linear spec; weights as (out, groups, group_size) +/-1 in the packed layout."""
    L = u.layer
    n_in = c * hw[0] * hw[1] if hw is not None else c
    if L.in_features != n_in:
        raise ValueError(f"{spec['name']}: expects {L.in_features} inputs, gets {n_in}")
    spec.update(kind="linear", in_features=n_in, out_features=L.out_features, k=n_in)
    wb = _sign_weight(L)
    if hw is not None and not spec["first"]:
        # After Flatten of NHWC words: one group of c channels per (h, w); torch's Flatten
        # order is (c, h, w), so the weight columns are permuted to (h, w, c).
        w = wb.reshape(L.out_features, c, hw[0], hw[1]).permute(0, 2, 3, 1)
        w = w.reshape(L.out_features, hw[0] * hw[1], c)
    else:
        w = wb.reshape(L.out_features, 1, n_in)
    return w, L.out_features, None


def _layer_tensors(u: _Unit, spec: dict, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Packed weights, and integer thresholds (hidden) or the float64 affine (last layer)."""
    name, k, first = spec["name"], spec["k"], spec["first"]
    groups, group_size = w.shape[1], w.shape[2]
    words = -(-group_size // 64)
    spec.update(groups=groups, group_size=group_size, words_per_group=words)
    spec["packed_bits"] = groups * words * 64
    out = {f"{name}.weight": _kernels().pack(w.contiguous(), dim=-1).reshape(w.shape[0], -1)}
    aff = fold_batchnorm(u.layer, u.bn)
    if u.output == "sign":
        T, flip = integer_thresholds(aff, 255 * k if first else k, 255.0 if first else 1.0)
        out[f"{name}.threshold"] = T.to(torch.int64)
        out[f"{name}.flip"] = flip.to(torch.uint8)
    else:
        out.update({f"{name}.a": aff.a, f"{name}.mu": aff.mu, f"{name}.beta": aff.beta})
    return out


def _digest(header_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _write(path: Path, header: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    header_json = json.dumps(header, sort_keys=True)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "header": header_json,
        "sha256": _digest(header_json, tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load as st_load

    def bad(problem: str) -> PackedModelError:
        return PackedModelError(f"{path}: {problem}")

    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad(f"cannot read the file ({e.strerror or e})") from e
    if len(data) < 8:
        raise bad(f"not a packed bnnlib model: {len(data)} bytes, too short for safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise bad(
            f"not a safetensors file or truncated: header of {n} bytes, file {len(data)} bytes"
        )
    try:
        raw = json.loads(data[8 : 8 + n].decode("utf-8"))
        meta = raw.get("__metadata__") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise bad(f"corrupted safetensors header ({e})") from e
    if meta.get("format") != FORMAT:
        raise bad(f"not a packed bnnlib model (format {meta.get('format')!r}, want {FORMAT!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise bad(
            f"format version {version!r}; this bnnlib reads version {FORMAT_VERSION}: "
            "re-export the model with this bnnlib's bnnlib.inference.export"
        )
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type on bad offsets/lengths
        raise bad(f"truncated or corrupted tensor data ({e})") from e
    header_json = meta.get("header", "")
    if _digest(header_json, tensors) != meta.get("sha256"):
        raise bad("checksum mismatch: the file is corrupted (bytes changed since export)")
    try:
        header = json.loads(header_json)
    except json.JSONDecodeError as e:
        raise bad(f"corrupted model header ({e})") from e
    return header, tensors


def load(path: str | os.PathLike) -> PackedNet:
    """Read a file written by :func:`export`; raises :class:`PackedModelError` if it is bad."""
    path = Path(path)
    header, tensors = _read(path)
    try:
        return PackedNet(header, tensors, source=str(path))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise PackedModelError(f"{path}: inconsistent model header or tensors ({e})") from e


# --------------------------------------------------------------------------------------------
# The packed network
# --------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    spec: dict
    weight: torch.Tensor  # packed int64 words (out, groups * words_per_group)
    wb: torch.Tensor | None = None  # first layer: float32 +/-1 weights for the "real" mode
    threshold: torch.Tensor | None = None  # int32 (out,)
    flip: torch.Tensor | None = None  # bool (out,)
    affine: Affine | None = None  # last layer
    pad_bits: int = 0  # XNOR matches contributed by the zero tail bits of each group
    wsum: torch.Tensor | None = None  # first layer: sum of W_b per output (and per position)
    pad_fix: torch.Tensor | None = None  # hidden conv: sum of W_b over zero-padded positions
    cache: dict = field(default_factory=dict)  # per-device copies


class PackedNet:
    """A BNN as packed bits and integer thresholds; see the module docstring.

    ``predict(X)`` returns int64 classes; ``scores(X)`` the last layer's float64 scores.
    ``nbytes`` is the size of the packed weights, ``nbytes_total`` adds thresholds and the last
    batch norm. ``header`` is the architecture as stored in the file.
    """

    def __init__(self, header: dict, tensors: dict[str, torch.Tensor], source: str = "<memory>"):
        self.header = header
        self.source = source
        self.input_shape = list(header["input"]["shape"])
        if header["input"]["scaling"] != INPUT_SCALING:
            raise ValueError(f"input scaling {header['input']['scaling']!r} is not supported")
        self.num_classes = int(header["num_classes"])
        kern = _kernels()
        self.layers: list[_Layer] = []
        for spec in header["layers"]:
            name = spec["name"]
            w = tensors[f"{name}.weight"]
            out = spec["out_channels"] if spec["kind"] == "conv2d" else spec["out_features"]
            expect = (out, spec["groups"] * spec["words_per_group"])
            if tuple(w.shape) != expect or w.dtype != torch.int64:
                raise ValueError(f"{name}.weight has shape {tuple(w.shape)}, expected {expect}")
            lay = _Layer(spec=spec, weight=w)
            g, words, cs = spec["groups"], spec["words_per_group"], spec["group_size"]
            lay.pad_bits = g * (64 * words - cs)
            wpm = kern.unpack(w.reshape(out, g, words), cs, dim=-1).float()  # (out, g, cs) +/-1
            if spec["first"]:
                lay.wb = wpm.reshape(out, spec["k"])
                lay.wsum = self._first_wsum(spec, lay.wb)
            elif spec["kind"] == "conv2d":
                lay.pad_fix = self._pad_fix(spec, wpm)
            if spec["output"] == "sign":
                lay.threshold = tensors[f"{name}.threshold"].to(torch.int32)
                lay.flip = tensors[f"{name}.flip"].bool()
                if lay.threshold.shape != (out,) or lay.flip.shape != (out,):
                    raise ValueError(f"{name}: thresholds do not match {out} outputs")
            else:
                lay.affine = Affine(*(tensors[f"{name}.{t}"] for t in ("a", "mu", "beta")))
            self.layers.append(lay)

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
        out, c, (kh, kw) = wpm.shape[0], spec["in_channels"], spec["kernel"]
        w4 = wpm.reshape(out, kh, kw, c).permute(0, 3, 1, 2)
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
                n += 4 * lay.threshold.numel() + -(-lay.flip.numel() // 8)
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
        first_layer: str = "real",
        batch_size: int = 2000,
        kernel: str = "fast",
    ) -> torch.Tensor:
        """The last layer's scores a * (s - mu) + beta in float64, (N, num_classes), on CPU."""
        if first_layer not in ("real", "bitplanes"):
            raise ValueError(f"first_layer must be 'real' or 'bitplanes', got {first_layer!r}")
        ops = _ops(device, kernel)
        x = self._images(X)
        out = [
            self._forward(x[i : i + batch_size].to(ops.device), ops, first_layer)
            for i in range(0, len(x), batch_size)
        ]
        if not out:
            return torch.zeros(0, self.num_classes, dtype=torch.float64)
        return torch.cat(out)

    def predict(
        self,
        X,
        device: str = "cpu",
        first_layer: str = "real",
        batch_size: int = 2000,
        kernel: str = "fast",
    ) -> torch.Tensor:
        """Classes (int64, N) of uint8 images or of floats scaled 2x/255 - 1.

        Hidden layers use only XNOR-popcount and integer compares. ``first_layer="real"`` takes
        the 8-bit input through a float matmul with +/-1 weights (exact integers), ``"bitplanes"``
        through the paper's bit planes with XNOR-popcount. ``device="cuda"`` runs the GPU
        kernels of :mod:`bnnlib.cuda` (RuntimeError if they are not available), with
        ``kernel="fast"`` (our 64-bit / tensor-core XNOR kernel) or ``"paper"`` (the paper's).
        """
        return self.scores(X, device, first_layer, batch_size, kernel).argmax(1)

    def _forward(self, x: torch.Tensor, ops: _Ops, first_layer: str) -> torch.Tensor:
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

    def _first(self, lay: _Layer, x: torch.Tensor, ops: _Ops, mode: str) -> torch.Tensor:
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

    def _hidden_linear(self, lay: _Layer, h: torch.Tensor, ops: _Ops) -> torch.Tensor:
        a = h.reshape(h.shape[0], -1)  # NHWC words flatten to (h, w) groups of channels
        return ops.xnor(lay, a) - lay.pad_bits

    def _hidden_conv(self, lay: _Layer, h: torch.Tensor, ops: _Ops) -> torch.Tensor:
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
    def _pool(lay: _Layer, s: torch.Tensor, ops: _Ops) -> torch.Tensor:
        p = lay.spec.get("pool")
        if p is None:
            return s
        sc = s.permute(0, 3, 1, 2)
        mx = ops.pool(sc, p)
        if p["after_bn"] and lay.flip is not None:
            # BN after the pool: max of a decreasing map (gamma < 0) is the map of the min.
            mn = -ops.pool(-sc, p)
            mx = torch.where(ops.get(lay, "flip").view(1, -1, 1, 1), mn, mx)
        return mx.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# Device back ends: the CPU one (numba kernels) and the CUDA one (bnnlib.cuda)
# --------------------------------------------------------------------------------------------


class _Ops:
    """The primitive operations of :class:`PackedNet` on the CPU (numba kernels)."""

    device = "cpu"

    def get(self, lay: _Layer, name: str) -> torch.Tensor:
        """A per-layer tensor on this device (copied once, then cached)."""
        t = lay.cache.get((self.device, name))
        if t is None:
            t = getattr(lay, name).to(self.device)
            lay.cache[(self.device, name)] = t
        return t

    def real_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        """Integer W_b . x by a float matmul: integer operands, partial sums < 2^24 in float32."""
        dt = torch.float32 if 255 * lay.spec["k"] < _EXACT_F32 else torch.float64
        return (cols.to(dt) @ self.get(lay, "wb").to(dt).T).round().to(torch.int32)

    def threshold_pack(self, lay: _Layer, s: torch.Tensor) -> torch.Tensor:
        """Sign(BN(s)) as packed words along the last dim: bit = (s >= T) XOR flip."""
        bits = (s >= self.get(lay, "threshold")) ^ self.get(lay, "flip")
        return _kernels().pack_bits(bits)

    def xnor(self, lay: _Layer, a: torch.Tensor) -> torch.Tensor:
        return _kernels().xnor_gemm(a.contiguous(), lay.weight, lay.spec["packed_bits"])

    def bitplane_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        return _kernels().bitplane_dot(cols.contiguous(), lay.weight, lay.spec["k"])

    def pool(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        return F.max_pool2d(x, p["kernel"], p["stride"], p["padding"])


class _CudaOps(_Ops):
    """The same operations with the kernels of :mod:`bnnlib.cuda` on CUDA tensors.

    ``kernel="fast"`` uses :func:`bnnlib.cuda.xnor_gemm_fast` (64-bit popcount or 1-bit
    tensor cores), ``"paper"`` the paper's 32-bit XNOR kernel.
    """

    device = "cuda"

    def __init__(self, mod, kernel: str = "fast"):
        if kernel not in ("fast", "paper"):
            raise ValueError(f"kernel must be 'fast' or 'paper', got {kernel!r}")
        self.mod = mod
        self.gemm = mod.xnor_gemm_fast if kernel == "fast" else mod.xnor_gemm

    def get(self, lay: _Layer, name: str) -> torch.Tensor:
        t = lay.cache.get((self.device, name))
        if t is None and name in ("gpu_threshold", "gpu_direction"):
            # (s >= T) XOR flip as the kernel's compare: s >= T, or s <= T - 1 when flipped.
            flip = lay.flip.to(torch.int32)
            thr = (lay.threshold - flip).to(torch.int32)
            lay.cache[(self.device, "gpu_threshold")] = thr.to(self.device)
            lay.cache[(self.device, "gpu_direction")] = (1 - 2 * flip).to(self.device)
            return lay.cache[(self.device, name)]
        return super().get(lay, name)

    def real_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        # float64: exact whatever cuBLAS's float32 settings (TF32) are.
        w = self.get(lay, "wb").double()
        return (cols.double() @ w.T).round().to(torch.int32)

    def threshold_pack(self, lay: _Layer, s: torch.Tensor) -> torch.Tensor:
        lead, n = s.shape[:-1], s.shape[-1]
        acc = s.reshape(-1, n).to(torch.int32).contiguous()
        thr, dirn = self.get(lay, "gpu_threshold"), self.get(lay, "gpu_direction")
        return self.mod.threshold_pack(acc, thr, dirn).reshape(*lead, -1)

    def xnor(self, lay: _Layer, a: torch.Tensor) -> torch.Tensor:
        return self.gemm(a.contiguous(), self.get(lay, "weight"), lay.spec["packed_bits"])

    def bitplane_dot(self, lay: _Layer, cols: torch.Tensor) -> torch.Tensor:
        # Bit plane n as the +/-1 vector p_n = 2 x^n - 1:  x^n . w = (p_n . w + sum w) / 2.
        k, w = lay.spec["k"], self.get(lay, "weight")
        acc = torch.zeros(cols.shape[0], w.shape[0], dtype=torch.int64, device=self.device)
        for n in range(8):
            plane = ((cols >> n) & 1).float() * 2 - 1
            words = self.mod.pack(plane, dim=-1, check=False)
            acc += self.gemm(words, w, k).long() << n
        wsum = self.get(lay, "wb").sum(1).round().long()
        return ((acc + 255 * wsum) // 2).to(torch.int32)

    def pool(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        # CUDA max-pooling has no integer kernel; float64 holds these integers exactly.
        return super().pool(x.double(), p).to(x.dtype)


def _ops(device: str, kernel: str = "fast") -> _Ops:
    dev = torch.device(device)
    if dev.type == "cpu":
        return _Ops()
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        from . import cuda as bcuda
    except ImportError as e:
        raise RuntimeError(f"device='cuda' needs bnnlib.cuda, which failed to import: {e}") from e
    if not bcuda.available():
        raise RuntimeError(f"device='cuda' is not available: {bcuda.reason()}")
    return _CudaOps(bcuda, kernel)


# --------------------------------------------------------------------------------------------
# The float simulation (the reference) and the float32 size of a model
# --------------------------------------------------------------------------------------------


def _exact_f32(fn, x: torch.Tensor, w: torch.Tensor, bound: float, **kw) -> torch.Tensor:
    """fn(x, w) for integer-valued x, w: float32 when every partial sum is < 2^24, else float64."""
    dt = torch.float32 if bound < _EXACT_F32 else torch.float64
    return fn(x.to(dt), w.to(dt), **kw).double()


@torch.no_grad()
def simulate_scores(model: nn.Module, X, batch_size: int = 1000) -> torch.Tensor:
    """The float simulation's last-layer scores (float64); see the module docstring.

    Runs the model's layers in their order with evaluation semantics, independently of
    packing, thresholds, im2col and XNOR: float products of +/-1 (and integer) values, batch
    norm as the float64 affine map of :func:`fold_batchnorm`, Sign as ``+1 iff y >= 0``.
    """
    units = _units(model)
    xu = to_uint8(X).cpu()
    if isinstance(units[0].layer, BinaryLinear):
        xu = xu.reshape(xu.shape[0], -1)
    elif xu.dim() != 4:
        xu = xu.reshape(xu.shape[0], *_infer_input_shape(units))
    out = []
    for i in range(0, len(xu), batch_size):
        h = xu[i : i + batch_size].double() * 2 - 255  # 255 * (2x/255 - 1), an integer
        for j, u in enumerate(units):
            L, wb = u.layer, _sign_weight(u.layer)
            k = wb[0].numel()
            if u.flatten_before or (isinstance(L, BinaryLinear) and h.dim() > 2):
                h = h.flatten(1)
            if isinstance(L, BinaryLinear):
                h = _exact_f32(F.linear, h, wb, 255 * k if j == 0 else k)
            else:
                bound = 255 * k if j == 0 else k
                h = _exact_f32(F.conv2d, h, wb, bound, stride=L.stride, padding=L.padding)
            if j == 0:
                h = h / 255.0
            if u.pool is not None and not u.pool_after_bn:
                h = u.pool(h)
            h = fold_batchnorm(L, u.bn)(h, dim=1)
            if u.pool is not None and u.pool_after_bn:
                h = u.pool(h)
            if u.output == "sign":
                h = torch.where(h >= 0, 1.0, -1.0).double()
        out.append(h)
    if not out:
        return torch.zeros(0, units[-1].layer.weight.shape[0], dtype=torch.float64)
    return torch.cat(out)


def simulate(model: nn.Module, X, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (int64) of the float simulation; the packed net must equal them."""
    return simulate_scores(model, X, batch_size).argmax(1)


def float32_nbytes(model: nn.Module) -> int:
    """Bytes of the binary layers' weights stored as float32 (what packing shrinks ~32x)."""
    return sum(
        4 * m.weight.numel() for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))
    )
