"""The packed-model file: :func:`export` a trained BNN, :func:`load` it as a PackedNet.

**File format** (versioned, not pickle): a safetensors file whose metadata holds
``format = "bnnlib.packed"``, ``format_version``, the JSON ``header`` (architecture: one spec
per layer with shapes, k, words, the input scaling) and a SHA-256 over the header and every
tensor, so a truncated or corrupted file is refused with :class:`PackedModelError`.

Tensors per layer ``layers.<i>``: ``weight``, the packed int64 words (out, groups *
words_per_group) of W_b = Sign(W) (64 weights to a word, bit 1 = +1, LSB first, as
:func:`bnnlib.kernels.pack`); for a hidden layer the integer ``threshold`` (int64) and
``flip`` (uint8) of :func:`bnnlib.inference.fold.integer_thresholds`; for the last layer the
float64 ``a``, ``mu``, ``beta`` of its batch norm.

Packed layouts: a hidden convolution's weight has one group per kernel position with its
channels packed (activations are NHWC words); the first convolution keeps torch's (c, kh, kw)
order in one group (as F.unfold lays out the 8-bit input); a linear layer after a Flatten of
NHWC words has one group of c channels per (h, w). The convolution layout is written once, both
ways: :func:`bnnlib.inference.runtime.conv_rows` and its inverse
:func:`~bnnlib.inference.runtime.conv_weight`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from torch import nn

from bnnlib import kernels
from bnnlib.analysis.trace import pair, window_out
from bnnlib.files import atomic_write
from bnnlib.inference.fold import fold_batchnorm, integer_thresholds
from bnnlib.inference.graph import (
    INPUT_SCALING,
    Unit,
    infer_input_shape,
    pool_spec,
    sign_weight,
    units,
)
from bnnlib.inference.runtime import PackedNet, conv_rows
from bnnlib.nn.layers import BinaryConv2d
from bnnlib.nn.shift import ShiftBatchNormBase

__all__ = ["FORMAT", "FORMAT_VERSION", "PackedModelError", "export", "load"]

FORMAT = "bnnlib.packed"
FORMAT_VERSION = 1


class PackedModelError(ValueError):
    """A packed-model file that cannot be read: truncated, corrupted, wrong format or version,
    or a header whose shapes disagree with each other, with the tensors or with the limits of
    :func:`bnnlib.inference.runtime.check_header`."""


# The dtypes export writes: packed words and thresholds, flips, the last layer's affine.
_DTYPES = (torch.int64, torch.uint8, torch.float64)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


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
    training run). The write is atomic (:func:`bnnlib.hardware.atomic_write`).
    """
    if input_scaling != INPUT_SCALING:
        raise ValueError(f"input_scaling {input_scaling!r} unsupported; use {INPUT_SCALING!r}")
    found = units(model)
    shape = list(input_shape) if input_shape is not None else infer_input_shape(model, found)
    layers, tensors = [], {}
    c, hw = shape[0], (shape[1:] if len(shape) == 3 else None)
    for idx, u in enumerate(found):
        spec: dict = {"name": f"layers.{idx}", "first": idx == 0, "output": u.output}
        spec["batchnorm"] = (
            "none"
            if u.bn is None
            else "shift"
            if isinstance(u.bn, ShiftBatchNormBase)
            else "standard"
        )
        layout = _conv_layout if isinstance(u.layer, BinaryConv2d) else _linear_layout
        w, c, hw = layout(u, spec, c, hw)
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
    return write_packed(Path(path), header, tensors)


def _conv_layout(u: Unit, spec: dict, c: int, hw):
    """Conv spec; weights as (out, groups, group_size) +/-1 in the packed layout."""
    L, name = u.layer, spec["name"]
    if hw is None or u.flatten_before:
        raise ValueError(f"{name}: a convolution needs an image input (C, H, W)")
    if L.groups != 1 or pair(L.dilation) != (1, 1) or L.padding_mode != "zeros":
        raise ValueError(f"{name}: only groups=1, dilation=1, zero padding are supported")
    if isinstance(L.padding, str):
        raise ValueError(f"{name}: string padding {L.padding!r} unsupported; use ints")
    if L.in_channels != c:
        raise ValueError(f"{name}: expects {L.in_channels} channels, gets {c}")
    kernel, stride, padding = pair(L.kernel_size), pair(L.stride), pair(L.padding)
    out_hw = window_out(hw, kernel, stride, padding)
    spec.update(kind="conv2d", in_channels=c, out_channels=L.out_channels)
    spec.update(kernel=list(kernel), stride=list(stride), padding=list(padding))
    spec.update(in_hw=list(hw), out_hw=out_hw)
    w, k = conv_rows(sign_weight(L), spec["first"]), c * kernel[0] * kernel[1]
    hw = out_hw
    if u.pool is not None:
        p = spec["pool"] = pool_spec(u.pool, u.pool_after_bn)
        hw = window_out(hw, p["kernel"], p["stride"], p["padding"])
    spec["pooled_hw"] = list(hw)
    spec["k"] = k
    return w, L.out_channels, hw


def _linear_layout(u: Unit, spec: dict, c: int, hw):
    """Linear spec; weights as (out, groups, group_size) +/-1 in the packed layout."""
    L = u.layer
    n_in = c * hw[0] * hw[1] if hw is not None else c
    if L.in_features != n_in:
        raise ValueError(f"{spec['name']}: expects {L.in_features} inputs, gets {n_in}")
    spec.update(kind="linear", in_features=n_in, out_features=L.out_features, k=n_in)
    wb = sign_weight(L)
    if hw is not None and not spec["first"]:
        # After Flatten of NHWC words: one group of c channels per (h, w); torch's Flatten
        # order is (c, h, w), so the weight columns are permuted to (h, w, c).
        w = wb.reshape(L.out_features, c, hw[0], hw[1]).permute(0, 2, 3, 1)
        w = w.reshape(L.out_features, hw[0] * hw[1], c)
    else:
        w = wb.reshape(L.out_features, 1, n_in)
    return w, L.out_features, None


def _layer_tensors(u: Unit, spec: dict, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Packed weights, and integer thresholds (hidden) or the float64 affine (last layer)."""
    name, k, first = spec["name"], spec["k"], spec["first"]
    groups, group_size = w.shape[1], w.shape[2]
    words = -(-group_size // 64)
    spec.update(groups=groups, group_size=group_size, words_per_group=words)
    spec["packed_bits"] = groups * words * 64
    out = {f"{name}.weight": kernels.pack(w.contiguous(), dim=-1).reshape(w.shape[0], -1)}
    aff = fold_batchnorm(u.layer, u.bn)
    if u.output == "sign":
        T, flip = integer_thresholds(aff, 255 * k if first else k, 255.0 if first else 1.0)
        out[f"{name}.threshold"] = T.to(torch.int64)
        out[f"{name}.flip"] = flip.to(torch.uint8)
    else:
        out.update({f"{name}.a": aff.a, f"{name}.mu": aff.mu, f"{name}.beta": aff.beta})
    return out


# --------------------------------------------------------------------------------------------
# Write and read
# --------------------------------------------------------------------------------------------


def packed_digest(header_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header_json.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def write_packed(path: Path, header: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save

    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    header_json = json.dumps(header, sort_keys=True)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "header": header_json,
        "sha256": packed_digest(header_json, tensors),
    }
    return atomic_write(path, save(tensors, metadata=meta))


def _metadata(data: bytes, bad) -> dict:
    """The safetensors metadata of a packed model, checked for format and version."""
    if len(data) < 8:
        raise bad(f"not a packed bnnlib model: {len(data)} bytes, too short for safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise bad(
            f"not a safetensors file or truncated: header of {n} bytes, file {len(data)} bytes"
        )
    try:
        raw = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"corrupted safetensors header ({type(e).__name__}: {e})") from e
    meta = raw.get("__metadata__", {}) if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad(
            "corrupted safetensors header: __metadata__ must be an object of strings, got "
            f"{type(meta).__name__}"
        )
    if meta.get("format") != FORMAT:
        raise bad(f"not a packed bnnlib model (format {meta.get('format')!r}, want {FORMAT!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise bad(
            f"format version {version!r}; this bnnlib reads version {FORMAT_VERSION}: "
            "re-export the model with this bnnlib's bnnlib.inference.export"
        )
    return meta


def read_packed(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header and tensors of a packed-model file, after the format and checksum checks."""
    from safetensors.torch import load as st_load

    def bad(problem: str) -> PackedModelError:
        return PackedModelError(f"{path}: {problem}")

    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad(f"cannot read the file ({e.strerror or e})") from e
    meta = _metadata(data, bad)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type on bad offsets/lengths
        raise bad(f"truncated or corrupted tensor data ({e})") from e
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise bad(
                f"tensor {name} has dtype {t.dtype}; a packed model holds only "
                f"{', '.join(str(d) for d in _DTYPES)} tensors"
            )
    header_json = meta.get("header", "")
    if packed_digest(header_json, tensors) != meta.get("sha256"):
        raise bad("checksum mismatch: the file is corrupted (bytes changed since export)")
    try:
        header = json.loads(header_json)
    except (json.JSONDecodeError, RecursionError) as e:
        raise bad(f"corrupted model header ({type(e).__name__}: {e})") from e
    if not isinstance(header, dict):
        raise bad(f"corrupted model header: a {type(header).__name__}, not a JSON object")
    return header, tensors


def load(path: str | os.PathLike) -> PackedNet:
    """Read a file written by :func:`export`; raises :class:`PackedModelError` if it is bad.

    Nothing in the file is trusted: the format, version and checksum are checked, then every
    shape of the header against the others, the tensors and sane limits
    (:func:`~bnnlib.inference.runtime.check_header`) before anything they size is allocated.
    """
    path = Path(path)
    header, tensors = read_packed(path)
    try:
        return PackedNet(header, tensors, source=str(path))
    except (
        KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, RecursionError
    ) as e:  # fmt: skip
        raise PackedModelError(f"{path}: inconsistent model header or tensors ({e})") from e
