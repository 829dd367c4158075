"""Energy per image of a float32 network and of its BNN (paper Section 3, Tables 2 and 3).

The paper quotes Horowitz (2014, 45 nm) for the energy of arithmetic and of memory accesses
(:data:`OPERATIONS`, :data:`MEMORY`), and argues that a BNN replaces most 32-bit float
multiply-accumulates with bitwise operations and reads 32 times fewer weight bits. This module
counts, layer by layer, the operations and the 64-bit memory accesses of one image through a
model (:func:`count_layers`) and prices them (:func:`energy`) for the two readings:

**float32**: every multiply-accumulate (MAC) is one 32-bit float MUL and one ADD
(3.7 + 0.9 pJ); batch norm in evaluation is one MUL and one ADD per output; weights and
activations are 32-bit.

**binary** (the BNN as :mod:`bnnlib.inference` runs it), with these stated assumptions:

* 64 binary MACs of a hidden layer = one 64-bit XNOR, one popcount of 64 bits and one 32-bit
  integer accumulate: the dot product of two packed rows is ``k - 2 popcount(a XOR b)``.
* Horowitz's table has no logic gates, so bit-level costs are scaled from the integer adders:
  an n-bit integer ADD costs ``n * E_bit`` with ``E_bit = 0.03 pJ / 8`` (the 8-bit ADD; the
  32-bit ADD, 0.1 pJ, is within 20% of 32 E_bit). A 64-bit XNOR is priced as 64 one-bit
  adds (an XOR gate is one half of a full adder, so this is an upper bound), 0.24 pJ.
* popcount of 64 bits = a tree of adders: 32 one-bit, 16 two-bit, 8 three-bit, 4 four-bit,
  2 five-bit and 1 six-bit add = 120 bit-adds, 0.45 pJ.
* the accumulate is one 32-bit integer ADD, 0.1 pJ; so 64 binary MACs cost 0.79 pJ
  (about 0.012 pJ per MAC, against 4.6 pJ for a float32 MAC).
* batch norm + Sign of a hidden layer is one integer compare with the folded threshold,
  priced as one 32-bit integer ADD; the last layer keeps its float32 batch norm.
* the first layer's input is 8-bit: with the paper's bit planes,
  ``s = sum_n 2^(n-1) x^n . w_b`` costs 8 binary dot products per output plus 8 32-bit
  integer adds to combine them (the shifts are wiring).
* max-pooling: one compare (a 32-bit ADD, float or integer as the layer's data) per extra
  element of each window.

**Memory** is counted in 64-bit accesses (Table 3): each weight is read once per image
(divide by ``batch_size`` to share the read across a batch); float32 weights take 2 per
64-bit word, binary weights 64. Per-output parameters: float32 batch norm is 2 float32 values
(a and b); a BNN threshold is one 32-bit integer (the last layer keeps 2 float32). Activations
are read once and written once per layer, 32-bit (float) or 1-bit (binary), and 8-bit for the
input image. Weights come from ``weight_memory`` (default DRAM: the paper's MNIST MLP holds
147 MB of float32 weights, far above any cache) and activations from ``activation_memory``
(default the 32K level: one image's largest activation, 4096 float32 values, is 16 KB).
DRAM is 1.3-2.6 nJ per access in the table; ``dram="low"`` (default) takes 1.3 nJ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from bnnlib.analysis.trace import trace
from bnnlib.paper import ENERGY_MEMORY, ENERGY_OPERATIONS

__all__ = [
    "OPERATIONS",
    "MEMORY",
    "operation_table",
    "memory_table",
    "BinaryCost",
    "LayerCount",
    "LayerEnergy",
    "EnergyReport",
    "count_layers",
    "memory_pj",
    "energy",
]

# Tables 2 and 3 of the paper (Horowitz, 2014, 45 nm) live in bnnlib.paper, written once.
OPERATIONS = ENERGY_OPERATIONS
MEMORY = ENERGY_MEMORY

FP32_MUL = OPERATIONS["32-bit floating point"]["MUL"]
FP32_ADD = OPERATIONS["32-bit floating point"]["ADD"]
INT32_ADD = OPERATIONS["32-bit integer"]["ADD"]
INT8_ADD = OPERATIONS["8-bit integer"]["ADD"]


def operation_table() -> list[dict]:
    """Table 2 as rows {operation, MUL_pJ, ADD_pJ} (for the book's tables and plots)."""
    return [{"operation": k, "MUL_pJ": v["MUL"], "ADD_pJ": v["ADD"]} for k, v in OPERATIONS.items()]


def memory_table() -> list[dict]:
    """Table 3 as rows {memory, access_pJ_low, access_pJ_high}."""
    rows = []
    for k, v in MEMORY.items():
        lo, hi = v if isinstance(v, tuple) else (v, v)
        rows.append({"memory": k, "access_pJ_low": lo, "access_pJ_high": hi})
    return rows


def memory_pj(level: str, dram: str = "low") -> float:
    """pJ per 64-bit access at ``level`` ("8K", "32K", "1M", "DRAM"; DRAM "low" or "high")."""
    if level not in MEMORY:
        raise ValueError(f"unknown memory level {level!r}; choose one of {list(MEMORY)}")
    v = MEMORY[level]
    if isinstance(v, tuple):
        if dram not in ("low", "high"):
            raise ValueError(f"dram must be 'low' or 'high', got {dram!r}")
        return v[0] if dram == "low" else v[1]
    return v


@dataclass(frozen=True)
class BinaryCost:
    """Energy of the bit-level operations (pJ), derived from the 8-bit ADD (module docstring)."""

    word_bits: int = 64
    bit_add: float = INT8_ADD / 8  # one bit of an integer adder
    accumulate: float = INT32_ADD  # a 32-bit integer ADD

    @property
    def xnor(self) -> float:
        """One word-wide XNOR: word_bits one-bit adds (an upper bound)."""
        return self.word_bits * self.bit_add

    @property
    def popcount(self) -> float:
        """A popcount adder tree: word_bits/2 one-bit adds, word_bits/4 two-bit adds, ..."""
        bits, width, n = 0, 1, self.word_bits // 2
        while n >= 1:
            bits += n * width
            n, width = n // 2, width + 1
        return bits * self.bit_add

    @property
    def word(self) -> float:
        """word_bits binary MACs: XNOR + popcount + accumulate."""
        return self.xnor + self.popcount + self.accumulate


@dataclass
class LayerCount:
    """Operation and size counts of one layer for one image."""

    name: str
    kind: str  # "linear", "conv2d", "batchnorm", "maxpool"
    macs: int = 0  # multiply-accumulates (weight layers)
    fan_in: int = 0  # k, the length of each dot product
    outputs: int = 0  # output elements per image
    weights: int = 0  # weight count
    first: bool = False  # takes the 8-bit image
    compares: int = 0  # max-pooling compares
    in_elements: int = 0  # activations read
    channels: int = 0  # batch norm: per-channel parameter sets
    last: bool = False  # the last weight layer / its batch norm (no Sign after it)


def count_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCount]:
    """Per-layer counts of ``model`` for one input of ``input_shape`` (without the batch dim).

    Works on a BNN and on its float twin alike (nn.Linear / nn.Conv2d and their binary
    subclasses are the weight layers; the first one takes the 8-bit image). Shapes come from
    one forward pass in evaluation mode on zeros (:func:`bnnlib.analysis.trace.trace`).
    """
    counted = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.modules.batchnorm._BatchNorm)
    calls = trace(model, input_shape, include=lambda m: isinstance(m, counted))
    rows: list[LayerCount] = []
    first_done = False
    for c in calls:
        m, name = c.module, c.name
        outputs, ins = math.prod(c.output_shape), math.prod(c.input_shape)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            rows.append(
                LayerCount(
                    name,
                    "linear" if isinstance(m, nn.Linear) else "conv2d",
                    macs=outputs * fan_in,
                    fan_in=fan_in,
                    outputs=outputs,
                    weights=m.weight.numel(),
                    first=not first_done,
                    in_elements=ins,
                )
            )
            first_done = True
        elif isinstance(m, nn.MaxPool2d):
            ks = m.kernel_size
            area = ks * ks if isinstance(ks, int) else math.prod(ks)
            rows.append(LayerCount(name, "maxpool", outputs=outputs, compares=outputs * (area - 1)))
        else:
            rows.append(
                LayerCount(
                    name, "batchnorm", outputs=outputs, in_elements=ins, channels=m.num_features
                )
            )
    weight_rows = [r for r in rows if r.kind in ("linear", "conv2d")]
    if not weight_rows:
        raise ValueError("the model has no Linear or Conv2d layer to count")
    last = rows.index(weight_rows[-1])
    for r in rows[last:]:
        if r.kind in ("linear", "conv2d", "batchnorm"):
            r.last = True
    return rows


@dataclass
class LayerEnergy:
    """pJ per image of one layer, float32 vs binary, compute and memory."""

    name: str
    kind: str
    float32_compute: float
    binary_compute: float
    float32_memory: float
    binary_memory: float
    float32_weight_accesses: float
    binary_weight_accesses: float

    @property
    def float32(self) -> float:
        return self.float32_compute + self.float32_memory

    @property
    def binary(self) -> float:
        return self.binary_compute + self.binary_memory


@dataclass
class EnergyReport:
    """Energy per image (pJ) of a model as float32 and as a BNN, per layer and in total."""

    layers: list[LayerEnergy]
    counts: list[LayerCount]
    settings: dict = field(default_factory=dict)

    def total(self, which: str) -> float:
        """Sum over layers of a LayerEnergy attribute, e.g. "binary_compute" or "float32"."""
        return sum(getattr(r, which) for r in self.layers)

    def memory_share(self, which: str = "float32") -> float:
        """The memory term's share of the ``which`` ("float32" or "binary") network's energy."""
        return self.total(f"{which}_memory") / self.total(which)

    @property
    def ratios(self) -> dict[str, float]:
        """float32 / binary: compute, memory, weight accesses and overall."""
        return {
            k: self.total(f"float32{s}") / self.total(f"binary{s}")
            for k, s in (
                ("compute", "_compute"),
                ("memory", "_memory"),
                ("weight_accesses", "_weight_accesses"),
                ("total", ""),
            )
        }

    def to_dict(self) -> dict:
        """Plain data for notebooks and JSON: per-layer rows, totals, ratios, settings."""
        rows = []
        for e, c in zip(self.layers, self.counts, strict=True):
            rows.append(asdict(c) | asdict(e) | {"float32": e.float32, "binary": e.binary})
        totals = {
            k: self.total(k)
            for k in (
                "float32_compute",
                "binary_compute",
                "float32_memory",
                "binary_memory",
                "float32",
                "binary",
                "float32_weight_accesses",
                "binary_weight_accesses",
            )
        }
        return {"layers": rows, "totals_pJ": totals, "ratios": self.ratios, **self.settings}


def energy(
    model: nn.Module,
    input_shape: tuple[int, ...],
    weight_memory: str = "DRAM",
    activation_memory: str = "32K",
    dram: str = "low",
    batch_size: int = 1,
    first_layer: str = "bitplanes",
    cost: BinaryCost | None = None,
) -> EnergyReport:
    """Energy per image of ``model`` as float32 and as a BNN, under the module's assumptions.

    ``first_layer="bitplanes"`` prices the 8-bit first layer with the paper's bit planes;
    ``"int8"`` as one 8-bit integer ADD per MAC (multiplying by +/-1 only selects a sign).
    ``batch_size`` shares each weight (and batch-norm parameter) read across that many images.
    """
    if first_layer not in ("bitplanes", "int8"):
        raise ValueError(f"first_layer must be 'bitplanes' or 'int8', got {first_layer!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cost = cost or BinaryCost()
    w_pj = memory_pj(weight_memory, dram)
    a_pj = memory_pj(activation_memory, dram)
    counts = count_layers(model, input_shape)
    out: list[LayerEnergy] = []
    b_in_bits = 8  # the BNN's current activation width: the 8-bit image, then 1 bit
    for c in counts:
        if c.kind in ("linear", "conv2d"):
            priced = _weighted_layer(c, cost, first_layer, w_pj, a_pj, b_in_bits, batch_size)
        elif c.kind == "batchnorm":  # + Sign, or the last layer's scores; writes the output
            priced = _batchnorm_layer(c, w_pj, a_pj, batch_size)
            b_in_bits = 32 if c.last else 1
        else:  # max-pooling of the pre-activation: float, or the integer s of the BNN
            priced = (c.compares * FP32_ADD, c.compares * INT32_ADD, 0.0, 0.0, 0.0, 0.0)
        out.append(LayerEnergy(c.name, c.kind, *priced))
    settings = {
        "input_shape": list(input_shape),
        "weight_memory": weight_memory,
        "activation_memory": activation_memory,
        "dram": dram,
        "batch_size": batch_size,
        "first_layer": first_layer,
        "pJ_per_access": {"weights": w_pj, "activations": a_pj},
        "binary_cost_pJ": {
            "xnor_word": cost.xnor,
            "popcount_word": cost.popcount,
            "accumulate": cost.accumulate,
            "word": cost.word,
            "word_bits": cost.word_bits,
        },
        "float32_mac_pJ": FP32_MUL + FP32_ADD,
    }
    return EnergyReport(out, counts, settings)


def _weighted_layer(c, cost, first_layer, w_pj, a_pj, b_in_bits, batch_size) -> tuple:
    """(float, binary) compute, (float, binary) memory and (float, binary) weight reads of
    a linear or convolutional layer, in pJ and 64-bit words per image."""
    fmac = FP32_MUL + FP32_ADD
    words = math.ceil(c.fan_in / cost.word_bits)
    rows = c.weights // c.fan_in  # output units / channels, each a packed row
    fc = c.macs * fmac
    if not c.first:
        bc = c.outputs * words * cost.word
    elif first_layer == "bitplanes":
        bc = c.outputs * (8 * words * cost.word + 8 * INT32_ADD)
    else:
        bc = c.macs * INT8_ADD
    fw = _words(c.weights, 32) / batch_size
    bw = rows * words / batch_size
    f_in_bits = 8 if c.first else 32  # both read the 8-bit image
    fmem = fw * w_pj + _words(c.in_elements, f_in_bits) * a_pj
    bmem = bw * w_pj + _words(c.in_elements, b_in_bits) * a_pj
    return fc, bc, fmem, bmem, fw, bw


def _batchnorm_layer(c, w_pj, a_pj, batch_size) -> tuple:
    """:func:`_weighted_layer`'s numbers for a batch norm (+ Sign, or the last layer's
    scores), which writes its output: 1 bit a value in the BNN, 32 after the last layer."""
    fmac = FP32_MUL + FP32_ADD
    fc = c.outputs * fmac
    bc = c.outputs * (fmac if c.last else INT32_ADD)
    b_out_bits = 32 if c.last else 1
    fmem = (_words(2 * c.channels, 32) * w_pj) / batch_size + _words(c.outputs, 32) * a_pj
    b_param_bits = 64 if c.last else 32  # float32 (a, b), or one int32 threshold
    bmem = (_words(c.channels, b_param_bits) * w_pj) / batch_size + _words(
        c.outputs, b_out_bits
    ) * a_pj
    return fc, bc, fmem, bmem, 0.0, 0.0


def _words(n: int, bits: int) -> int:
    """64-bit accesses to move n values of ``bits`` bits."""
    return math.ceil(n * bits / 64)
