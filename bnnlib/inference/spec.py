"""Typed layer specs: the ``layers`` of a packed model's JSON header as frozen dataclasses.

A packed file (:mod:`bnnlib.inference.format`) describes each binary layer by one JSON object.
Inside the package every layer is one of these typed, immutable specs instead:

* :class:`LinearSpec` and :class:`Conv2dSpec`, both :class:`LayerSpec` (name, position,
  output kind, batch norm, packed layout);
* :class:`PackedLayout`: how a layer's +/-1 weight rows are packed into int64 words (k, groups
  of ``group_size`` inputs, each padded to ``words_per_group`` words);
* :class:`Window` (a convolution's kernel, stride, padding) and :class:`PoolSpec` (a
  max-pooling window, and whether it comes after the batch norm).

The JSON stays at the file boundary. :meth:`LayerSpec.from_header` reads one header object and
checks the type and range of every field it holds (a :class:`ValueError` naming the field);
how the layers fit together, with the input and with the tensors, is checked by
:func:`bnnlib.inference.header.check_header`. :meth:`LayerSpec.to_header` writes exactly the
object :func:`bnnlib.inference.export` has always written (the same keys and values, pairs as
lists, ``pool`` only when there is one, ``batchnorm`` only when known), so the file format,
and the bytes of a header, do not change. Fields of a header object that no spec knows are
ignored, as they always were.

:meth:`LinearSpec.build` and :meth:`Conv2dSpec.build` derive the shapes and the packed layout
from a layer's essentials; :func:`linear_layout` and :func:`conv_layout` are the layout rules
they share with the header check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bnnlib.analysis.trace import window_out

__all__ = [
    "LayerSpec",
    "LinearSpec",
    "Conv2dSpec",
    "PackedLayout",
    "Window",
    "PoolSpec",
    "linear_layout",
    "conv_layout",
    "check_int",
    "check_ints",
    "OUTPUTS",
    "BATCHNORMS",
]

#: A layer's ``output``: ``"sign"`` (a hidden layer, Sign(BN) as packed bits) or ``"scores"``
#: (the last layer, batch-normalized class scores).
OUTPUTS = ("sign", "scores")
#: The batch norms a layer may name: none, the standard one, the shift-based one (Algorithm 3).
BATCHNORMS = ("none", "standard", "shift")

#: A (height, width) pair: a window's kernel, stride or padding, an image's size.
Pair = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Field checks (the messages name the field, prefixed with where it is)
# --------------------------------------------------------------------------------------------


def check_int(v: Any, what: str, low: int) -> int:
    """``v`` if it is an int >= ``low`` (JSON true/false are no sizes), else ValueError."""
    if type(v) is not int or v < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {v!r}")
    return v


def check_ints(v: Any, n: int, what: str, low: int) -> list[int]:
    """``v`` if it is a list of ``n`` ints >= ``low``, else ValueError."""
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(f"{what} must be a list of {n} integers, got {v!r}")
    return [check_int(i, what, low) for i in v]


def _pair(raw: dict, key: str, where: str, low: int) -> Pair:
    h, w = check_ints(raw.get(key), 2, f"{where} {key}", low)
    return (h, w)


# --------------------------------------------------------------------------------------------
# Parts of a spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedLayout:
    """How a layer's +/-1 weight rows are packed (64 weights to an int64 word, LSB first).

    Each output's row of ``k`` weights is cut into ``groups`` groups of ``group_size`` inputs
    (one per kernel position of a hidden convolution, one per (h, w) of a linear layer after a
    flattened image, else one); each group is padded with zero bits to ``words_per_group``
    words. ``packed_bits`` = 64 * groups * words_per_group, as the header stores it.
    """

    k: int
    groups: int
    group_size: int
    words_per_group: int
    packed_bits: int

    @classmethod
    def of(cls, k: int, groups: int, group_size: int) -> PackedLayout:
        """The layout of ``groups`` groups of ``group_size`` inputs (``k`` in all)."""
        words = -(-group_size // 64)
        return cls(k, groups, group_size, words, groups * words * 64)

    @property
    def row_words(self) -> int:
        """int64 words per output's weight row (the packed weight is (out, row_words))."""
        return self.groups * self.words_per_group

    @property
    def pad_bits(self) -> int:
        """Zero tail bits per row: XNOR counts them as matches, XOR-popcount never counts them."""
        return self.groups * (64 * self.words_per_group - self.group_size)

    @classmethod
    def from_header(cls, raw: dict, where: str) -> PackedLayout:
        """The layout fields of a header object, each an integer >= 1."""
        fields = ("k", "groups", "group_size", "words_per_group", "packed_bits")
        return cls(*(check_int(raw.get(f), f"{where} {f}", 1) for f in fields))

    def to_header(self) -> dict:
        """The layout fields as the header writes them."""
        return {
            "k": self.k,
            "groups": self.groups,
            "group_size": self.group_size,
            "words_per_group": self.words_per_group,
            "packed_bits": self.packed_bits,
        }


def linear_layout(first: bool, in_features: int, image: tuple[int, Pair] | None) -> PackedLayout:
    """A linear layer's layout: one group of c channels per (h, w) when it follows a flattened
    image of packed NHWC words (``image`` = (c, (h, w)), not for the first layer, whose input
    is the 8-bit image in torch's order), else one group of all inputs."""
    if image is not None and not first:
        c, (h, w) = image
        return PackedLayout.of(in_features, h * w, c)
    return PackedLayout.of(in_features, 1, in_features)


def conv_layout(first: bool, in_channels: int, kernel: Pair) -> PackedLayout:
    """A convolution's layout: the first keeps torch's (c, kh, kw) order in one group, a hidden
    one has one group of its c channels per kernel position (activations are NHWC words)."""
    kh, kw = kernel
    k = in_channels * kh * kw
    return PackedLayout.of(k, 1, k) if first else PackedLayout.of(k, kh * kw, in_channels)


@dataclass(frozen=True)
class Window:
    """A convolution's or pooling's window: kernel, stride, padding as (height, width)."""

    kernel: Pair
    stride: Pair
    padding: Pair

    def out_hw(self, hw: Pair) -> Pair:
        """Output height and width over an ``hw`` input (floor mode)."""
        h, w = window_out(hw, self.kernel, self.stride, self.padding)
        return (h, w)

    @property
    def geometry(self) -> tuple[int, int, int, int, int, int]:
        """(kh, kw, sh, sw, ph, pw), as the direct kernels of the fused path take it."""
        return (*self.kernel, *self.stride, *self.padding)

    @classmethod
    def from_header(cls, raw: dict, where: str) -> Window:
        """The window fields of a header object: kernel and stride >= 1, padding >= 0."""
        return cls(
            _pair(raw, "kernel", where, 1),
            _pair(raw, "stride", where, 1),
            _pair(raw, "padding", where, 0),
        )

    def to_header(self) -> dict:
        """The window fields as the header writes them (pairs as lists)."""
        return {
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }


@dataclass(frozen=True)
class PoolSpec(Window):
    """A max-pooling window on a convolution's integers; ``after_bn``: the model pools after
    its batch norm (the pool then takes the min for channels whose batch norm flips)."""

    after_bn: bool

    @classmethod
    def from_header(cls, raw: Any, where: str) -> PoolSpec:
        """A header's ``pool`` object: a window and a boolean ``after_bn``."""
        if not isinstance(raw, dict) or not isinstance(raw.get("after_bn"), bool):
            raise ValueError(f"{where}: bad pool spec {raw!r}")
        w = Window.from_header(raw, f"{where} pool")
        return cls(w.kernel, w.stride, w.padding, raw["after_bn"])

    def to_header(self) -> dict:
        """The header's ``pool`` object."""
        return super().to_header() | {"after_bn": self.after_bn}


# --------------------------------------------------------------------------------------------
# Layer specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """What every packed layer declares: ``name`` (``layers.<i>``, the prefix of its tensors),
    ``first`` (its input is the 8-bit image), ``output`` (one of :data:`OUTPUTS`),
    ``batchnorm`` (one of :data:`BATCHNORMS`, or None when the header does not say) and its
    packed ``layout``. A :class:`LinearSpec` or a :class:`Conv2dSpec`."""

    #: The header's ``kind`` of this class of layer.
    kind: ClassVar[str] = ""

    name: str
    first: bool
    output: str
    batchnorm: str | None = None
    layout: PackedLayout

    @property
    def in_size(self) -> int:
        """Inputs per position: in_features, or in_channels."""
        raise NotImplementedError

    @property
    def out_size(self) -> int:
        """Outputs per position (rows of the packed weight): out_features, or out_channels."""
        raise NotImplementedError

    @staticmethod
    def from_header(raw: Any, where: str = "layer spec") -> LayerSpec:
        """The typed spec of one header object, its fields checked (ValueError naming the
        field, prefixed with ``where``); a :class:`LinearSpec` or :class:`Conv2dSpec` by its
        ``kind``."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: not a JSON object")
        cls = {c.kind: c for c in (LinearSpec, Conv2dSpec)}.get(raw.get("kind"))
        if cls is None:
            raise ValueError(f"{where}: unknown kind {raw.get('kind')!r}")
        name, first, output = raw.get("name"), raw.get("first"), raw.get("output")
        if not isinstance(name, str) or not isinstance(first, bool):
            raise ValueError(f"{where}: name {name!r} / first {first!r}")
        if output not in OUTPUTS:
            raise ValueError(f"{where}: output {output!r}, expected one of {OUTPUTS}")
        bn = raw.get("batchnorm")
        if bn is not None and bn not in BATCHNORMS:
            raise ValueError(f"{where}: batchnorm {bn!r}, expected one of {BATCHNORMS}")
        common = {"name": name, "first": first, "output": output, "batchnorm": bn}
        return cls.fields_from_header(raw, where, common)

    @classmethod
    def fields_from_header(cls, raw: dict, where: str, common: dict) -> LayerSpec:
        """This kind's fields of ``raw`` checked, with the ``common`` ones: the spec."""
        raise NotImplementedError

    def to_header(self) -> dict:
        """The header's JSON object of this layer, exactly as export writes it."""
        out: dict = {"name": self.name, "first": self.first, "output": self.output}
        if self.batchnorm is not None:
            out["batchnorm"] = self.batchnorm
        return out | {"kind": self.kind} | self.kind_header() | self.layout.to_header()

    def kind_header(self) -> dict:
        """This kind's own fields, as the header writes them."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LinearSpec(LayerSpec):
    """A packed linear layer: ``in_features`` -> ``out_features``."""

    kind: ClassVar[str] = "linear"

    in_features: int
    out_features: int

    @property
    def in_size(self) -> int:
        return self.in_features

    @property
    def out_size(self) -> int:
        return self.out_features

    @classmethod
    def build(
        cls,
        *,
        name: str,
        first: bool,
        output: str,
        in_features: int,
        out_features: int,
        image: tuple[int, Pair] | None = None,
        batchnorm: str | None = None,
    ) -> LinearSpec:
        """The spec of a linear layer, its layout derived (:func:`linear_layout`; ``image`` =
        (channels, (h, w)) when its input is a flattened image)."""
        return cls(
            name=name,
            first=first,
            output=output,
            batchnorm=batchnorm,
            in_features=in_features,
            out_features=out_features,
            layout=linear_layout(first, in_features, image),
        )

    @classmethod
    def fields_from_header(cls, raw: dict, where: str, common: dict) -> LinearSpec:
        return cls(
            **common,
            in_features=check_int(raw.get("in_features"), f"{where} in_features", 1),
            out_features=check_int(raw.get("out_features"), f"{where} out_features", 1),
            layout=PackedLayout.from_header(raw, where),
        )

    def kind_header(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features}


@dataclass(frozen=True, kw_only=True)
class Conv2dSpec(LayerSpec):
    """A packed convolution: ``in_channels`` x ``in_hw`` -> ``out_channels`` x ``out_hw`` by
    its ``window``, then an optional max-``pool`` to ``pooled_hw`` (= ``out_hw`` without)."""

    kind: ClassVar[str] = "conv2d"

    in_channels: int
    out_channels: int
    window: Window
    in_hw: Pair
    out_hw: Pair
    pool: PoolSpec | None = None
    pooled_hw: Pair

    @property
    def in_size(self) -> int:
        return self.in_channels

    @property
    def out_size(self) -> int:
        return self.out_channels

    @classmethod
    def build(
        cls,
        *,
        name: str,
        first: bool,
        output: str,
        in_channels: int,
        out_channels: int,
        in_hw: Pair,
        window: Window,
        pool: PoolSpec | None = None,
        batchnorm: str | None = None,
    ) -> Conv2dSpec:
        """The spec of a convolution, its output sizes and layout (:func:`conv_layout`)
        derived."""
        out_hw = window.out_hw(in_hw)
        return cls(
            name=name,
            first=first,
            output=output,
            batchnorm=batchnorm,
            in_channels=in_channels,
            out_channels=out_channels,
            window=window,
            in_hw=(in_hw[0], in_hw[1]),
            out_hw=out_hw,
            pool=pool,
            pooled_hw=pool.out_hw(out_hw) if pool is not None else out_hw,
            layout=conv_layout(first, in_channels, window.kernel),
        )

    @classmethod
    def fields_from_header(cls, raw: dict, where: str, common: dict) -> Conv2dSpec:
        pool = raw.get("pool")
        return cls(
            **common,
            in_channels=check_int(raw.get("in_channels"), f"{where} in_channels", 1),
            out_channels=check_int(raw.get("out_channels"), f"{where} out_channels", 1),
            window=Window.from_header(raw, where),
            in_hw=_pair(raw, "in_hw", where, 1),
            out_hw=_pair(raw, "out_hw", where, 1),
            pool=None if pool is None else PoolSpec.from_header(pool, where),
            pooled_hw=_pair(raw, "pooled_hw", where, 1),
            layout=PackedLayout.from_header(raw, where),
        )

    def kind_header(self) -> dict:
        out = {"in_channels": self.in_channels, "out_channels": self.out_channels}
        out |= self.window.to_header()
        out |= {"in_hw": list(self.in_hw), "out_hw": list(self.out_hw)}
        if self.pool is not None:
            out["pool"] = self.pool.to_header()
        return out | {"pooled_hw": list(self.pooled_hw)}
