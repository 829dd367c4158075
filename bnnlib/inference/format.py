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
import stat
import struct
from pathlib import Path

import torch
from torch import nn

from bnnlib import kernels
from bnnlib.analysis.trace import pair
from bnnlib.errors import BadInput
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
from bnnlib.inference.spec import Conv2dSpec, LayerSpec, LinearSpec, Pair, Window
from bnnlib.nn.layers import BinaryConv2d
from bnnlib.nn.shift import ShiftBatchNormBase

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_FILE_BYTES", "PackedModelError", "export", "load"]

FORMAT = "bnnlib.packed"
FORMAT_VERSION = 1


class PackedModelError(BadInput):
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
    c, hw = shape[0], ((shape[1], shape[2]) if len(shape) == 3 else None)
    for idx, u in enumerate(found):
        make = _conv_spec if isinstance(u.layer, BinaryConv2d) else _linear_spec
        spec, w = make(u, f"layers.{idx}", idx == 0, _batchnorm(u), c, hw)
        tensors.update(_layer_tensors(u, spec, w))
        layers.append(spec.to_header())
        c = spec.out_size
        hw = spec.pooled_hw if isinstance(spec, Conv2dSpec) else None
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


def _batchnorm(u: Unit) -> str:
    """The header's name of a unit's batch norm (:data:`~bnnlib.inference.spec.BATCHNORMS`)."""
    if u.bn is None:
        return "none"
    return "shift" if isinstance(u.bn, ShiftBatchNormBase) else "standard"


def _conv_spec(u: Unit, name: str, first: bool, bn: str, c: int, hw: Pair | None):
    """A convolution's spec, and its weights as (out, groups, group_size) +/-1 in the packed
    layout."""
    L = u.layer
    if hw is None or u.flatten_before:
        raise ValueError(f"{name}: a convolution needs an image input (C, H, W)")
    if L.groups != 1 or pair(L.dilation) != (1, 1) or L.padding_mode != "zeros":
        raise ValueError(f"{name}: only groups=1, dilation=1, zero padding are supported")
    if isinstance(L.padding, str):
        raise ValueError(f"{name}: string padding {L.padding!r} unsupported; use ints")
    if L.in_channels != c:
        raise ValueError(f"{name}: expects {L.in_channels} channels, gets {c}")
    spec = Conv2dSpec.build(
        name=name,
        first=first,
        output=u.output,
        batchnorm=bn,
        in_channels=c,
        out_channels=L.out_channels,
        in_hw=hw,
        window=Window(pair(L.kernel_size), pair(L.stride), pair(L.padding)),
        pool=None if u.pool is None else pool_spec(u.pool, u.pool_after_bn),
    )
    return spec, conv_rows(sign_weight(L), first)


def _linear_spec(u: Unit, name: str, first: bool, bn: str, c: int, hw: Pair | None):
    """A linear layer's spec, and its weights as (out, groups, group_size) +/-1 in the packed
    layout."""
    L = u.layer
    n_in = c * hw[0] * hw[1] if hw is not None else c
    if L.in_features != n_in:
        raise ValueError(f"{name}: expects {L.in_features} inputs, gets {n_in}")
    spec = LinearSpec.build(
        name=name,
        first=first,
        output=u.output,
        batchnorm=bn,
        in_features=n_in,
        out_features=L.out_features,
        image=None if hw is None else (c, hw),
    )
    wb = sign_weight(L)
    if hw is not None and not first:
        # After Flatten of NHWC words: one group of c channels per (h, w); torch's Flatten
        # order is (c, h, w), so the weight columns are permuted to (h, w, c).
        w = wb.reshape(L.out_features, c, hw[0], hw[1]).permute(0, 2, 3, 1)
        w = w.reshape(L.out_features, hw[0] * hw[1], c)
    else:
        w = wb.reshape(L.out_features, 1, n_in)
    return spec, w


def _layer_tensors(u: Unit, spec: LayerSpec, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Packed weights, and integer thresholds (hidden) or the float64 affine (last layer)."""
    name, lay = spec.name, spec.layout
    if tuple(w.shape[1:]) != (lay.groups, lay.group_size):  # the spec's layout is the packing
        raise AssertionError(f"{name}: weight rows {tuple(w.shape)} do not match {lay}")
    out = {f"{name}.weight": kernels.pack(w.contiguous(), dim=-1).reshape(w.shape[0], -1)}
    aff = fold_batchnorm(u.layer, u.bn)
    if u.output == "sign":
        first = spec.first
        T, flip = integer_thresholds(aff, 255 * lay.k if first else lay.k, 255.0 if first else 1.0)
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


#: The largest packed-model file :func:`load` reads (the paper's largest net packs to ~20 MB).
MAX_FILE_BYTES = 1 << 30


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


def _read_bounded(path: Path, bad) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`, its size checked before
    anything is read (a 6 GB file, a device or a FIFO is refused, not read into memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without a writer
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise bad("not a regular file; give the path of a .safetensors model file")
    with open(fd, "rb", buffering=0) as f:
        if st.st_size > MAX_FILE_BYTES:
            raise bad(
                f"{st.st_size:,} bytes, larger than any packed model this reader takes "
                f"({MAX_FILE_BYTES:,} bytes, bnnlib.inference.format.MAX_FILE_BYTES)"
            )
        data = f.read(st.st_size + 1)
    if len(data) > st.st_size:
        raise bad("the file grew while it was read; read it again once it is written")
    return data


def read_packed(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header and tensors of a packed-model file, after the format and checksum checks."""
    from safetensors.torch import load as st_load

    def bad(problem: str) -> PackedModelError:
        return PackedModelError(f"{path}: {problem}")

    try:
        data = _read_bounded(path, bad)
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
