"""Per-layer parameters, bits, memory and multiply-accumulates of a model (paper Sections 3-4).

The paper's run-time argument rests on two counts, which this table makes for
any model (like Larq's ``model summary``):

*Memory.* A binary weight is one bit: "binary weights take 32x less memory
than float32" (Section 4). Here a binary layer's weights (:func:`bnnlib.nn.layers.
is_binary_layer`) count 1 bit each, packed; every other parameter (batch-norm
gamma and beta, biases, the layers of a float model) stays 32-bit::

    float32 bytes = 4 * params
    packed bytes  = ceil(binary_weights / 8) + 4 * (params - binary_weights)

so the whole-model ratio is a little under 32 (the 3 x 4096 MLP: about 31.3x).
Word padding of packed rows and batch-norm running statistics (buffers, not
parameters) are not counted.

*Operations.* A fully connected layer does in x out multiply-accumulates (MACs)
per sample; a convolution does (output elements) x (in_channels / groups x kh x
kw). A MAC is *binary* (XNOR + popcount, Section 3) when both the weights and
the layer's input are +-1, and *real* otherwise: the first layer, whose input
is the 8-bit image (Section 1.6), and every layer of a float model. Whether an
input is +-1 is observed on a forward pass of a random input in eval mode, so
the count follows the model rather than its layer widths.

Output shapes and MACs need an input shape (one sample, without the batch
dimension). If none is given it is guessed by :func:`bnnlib.analysis.trace.guess_input_shape`:
a model that starts with ``Flatten`` and a 784-input layer is taken to read MNIST
images (1, 28, 28); one that starts with a convolution reads 32 x 32 images
(CIFAR-10, SVHN); one that starts with a linear layer reads vectors of its input
width. Otherwise the table has no shapes and no MACs. The forward pass is
:func:`bnnlib.analysis.trace.trace`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from bnnlib.analysis.trace import guess_input_shape, layers, trace
from bnnlib.nn.layers import is_binary_layer

__all__ = ["LayerRow", "Summary", "summary"]


@dataclass
class LayerRow:
    """One layer: its parameters (``binary_weights`` of them stored at 1 bit) and MACs."""

    name: str
    kind: str
    params: int
    binary_weights: int = 0
    output_shape: tuple[int, ...] | None = None
    macs_binary: int | None = None
    macs_real: int | None = None

    @property
    def weight_bits(self) -> int | None:
        """Bits per weight: 1 for a binary layer's weights, 32 otherwise, None without params."""
        if self.binary_weights:
            return 1
        return 32 if self.params else None

    @property
    def memory_float32(self) -> int:
        """Bytes of the parameters as float32."""
        return 4 * self.params

    @property
    def memory_packed(self) -> int:
        """Bytes with binary weights packed at 1 bit and the other parameters as float32."""
        return math.ceil(self.binary_weights / 8) + 4 * (self.params - self.binary_weights)


@dataclass
class Summary:
    """The rows of :func:`summary` and their totals; ``str()`` prints the table."""

    rows: list[LayerRow]
    input_shape: tuple[int, ...] | None = None
    title: str = field(default="Model")

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def binary_weights(self) -> int:
        return sum(r.binary_weights for r in self.rows)

    @property
    def memory_float32(self) -> int:
        return sum(r.memory_float32 for r in self.rows)

    @property
    def memory_packed(self) -> int:
        return sum(r.memory_packed for r in self.rows)

    @property
    def ratio(self) -> float:
        """Whole-model memory, float32 / packed."""
        return self.memory_float32 / max(self.memory_packed, 1)

    @property
    def weight_ratio(self) -> float:
        """Memory of the binary layers' weights alone, float32 / packed (32 up to rounding)."""
        packed = sum(math.ceil(r.binary_weights / 8) for r in self.rows)
        return 4 * self.binary_weights / packed if packed else 1.0

    @property
    def macs_binary(self) -> int | None:
        return _total(r.macs_binary for r in self.rows)

    @property
    def macs_real(self) -> int | None:
        return _total(r.macs_real for r in self.rows)

    def to_dict(self) -> dict:
        """Plain numbers, for records and JSON."""
        return {
            "input_shape": self.input_shape,
            "params": self.params,
            "binary_weights": self.binary_weights,
            "memory_float32": self.memory_float32,
            "memory_packed": self.memory_packed,
            "ratio": self.ratio,
            "macs_binary": self.macs_binary,
            "macs_real": self.macs_real,
            "rows": [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "params": r.params,
                    "weight_bits": r.weight_bits,
                    "output_shape": r.output_shape,
                    "memory_float32": r.memory_float32,
                    "memory_packed": r.memory_packed,
                    "macs_binary": r.macs_binary,
                    "macs_real": r.macs_real,
                }
                for r in self.rows
            ],
        }

    def __str__(self) -> str:
        head = ["Layer", "Type", "Output shape", "Params", "Bits", "Float32", "Packed"]
        head += ["Binary MACs", "Real MACs"]
        body = [
            [
                r.name,
                r.kind,
                _shape(r.output_shape),
                f"{r.params:,}",
                "-" if r.weight_bits is None else str(r.weight_bits),
                _bytes(r.memory_float32),
                _bytes(r.memory_packed),
                _count(r.macs_binary),
                _count(r.macs_real),
            ]
            for r in self.rows
        ]
        total = ["Total", "", "", f"{self.params:,}", "", _bytes(self.memory_float32)]
        total += [_bytes(self.memory_packed), _count(self.macs_binary), _count(self.macs_real)]
        widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]
        right = {3, 4, 5, 6, 7, 8}  # numbers align right

        def line(cells):
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        shape = "" if self.input_shape is None else f" (input {_shape(self.input_shape)})"
        n_real = self.params - self.binary_weights
        lines = [f"{self.title} summary{shape}", rule, line(head), rule]
        lines += [line(b) for b in body] + [rule, line(total), rule]
        lines.append(
            f"Parameters: {self.params:,} ({self.binary_weights:,} binary weights at 1 bit, "
            f"{n_real:,} at 32 bits)"
        )
        lines.append(
            f"Memory: {_bytes(self.memory_float32)} as float32, {_bytes(self.memory_packed)} "
            f"packed: {self.ratio:.1f}x smaller"
        )
        if self.macs_binary is not None:
            lines.append(
                f"MACs per sample: {_count(self.macs_binary)} binary (XNOR-popcount), "
                f"{_count(self.macs_real)} real"
            )
        return "\n".join(lines)


def _total(values) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _shape(shape) -> str:
    return "-" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 10**6 else f"{n:,}"


def _macs(m: nn.Module, output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample through a Linear or Conv2d with this output."""
    per_output = math.prod(output_shape)
    if isinstance(m, nn.Linear):
        return per_output * m.in_features
    if isinstance(m, nn.Conv2d):
        return per_output * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return 0


def _traced(model, input_shape) -> dict[int, tuple]:
    """Forward one random sample in eval mode; per layer: (output shape, binary MACs, real MACs)."""
    try:
        calls = trace(model, input_shape, random=True)
    except ValueError as e:
        raise ValueError(f"summary: {e}; pass input_shape=") from e.__cause__
    seen: dict[int, tuple] = {}
    for c in calls:
        m = c.module
        macs = _macs(m, c.output_shape)
        binary = is_binary_layer(m) and (m.binarize_input or c.input_pm1)
        seen[id(m)] = (c.output_shape, macs if binary else 0, 0 if binary else macs)
    return seen


def summary(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> Summary:
    """The per-layer table of ``model``: parameters, bits, memory float32 vs packed, MACs.

    ``input_shape`` is one sample's shape, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``;
    if None it is guessed as the module docstring says (or left out).
    """
    shape = tuple(input_shape) if input_shape is not None else guess_input_shape(model)
    traced = _traced(model, shape) if shape is not None else {}
    rows = []
    for name, m in layers(model):
        params = sum(p.numel() for p in m.parameters(recurse=False))
        binary = m.weight.numel() if is_binary_layer(m) else 0
        out_shape, mb, mr = traced.get(id(m), (None, None, None))
        if shape is not None and out_shape is None:
            mb, mr = 0, 0  # a layer the forward pass did not use
        rows.append(LayerRow(name, type(m).__name__, params, binary, out_shape, mb, mr))
    return Summary(rows, shape, title=type(model).__name__)
