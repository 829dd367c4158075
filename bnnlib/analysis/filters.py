"""Filter repetition: how many of a layer's binary 3x3 kernels are unique (paper Section 3.3).

A binary convolution's weight ``W_b`` (out, in, kh, kw) holds ``out x in`` two-dimensional
kernels, one per (output channel, input channel). A 3x3 binary kernel is one of only
``2^9 = 512`` sign patterns. The paper observes that in its trained CIFAR-10 ConvNet only
about **42%** of a layer's kernels are unique, counting a kernel and its negation as one, and
that dedicated hardware could exploit it to cut the XNOR-popcount operations (by about 3x in the
paper's words).

**Why per input channel.** Output channel ``o`` of a convolution is

    s_o = sum_c  x_c * W_b[o, c]         (* : 2-D convolution of input map c with one kernel)

If ``W_b[o, c] = W_b[o', c]`` the map ``x_c * W_b[o, c]`` is computed once and used for both
outputs, and if ``W_b[o, c] = -W_b[o', c]`` it is used negated (negating an integer map is
free in the accumulation). So the kernels that can share work are those applied to the *same*
input channel: for input channel ``c`` the layer needs only ``u_c`` distinct convolutions,

    u_c = number of distinct kernels among W_b[:, c] up to negation,

and the unique fraction of the layer is ``sum_c u_c / (out x in)``. (Counted over the whole
layer instead, at most 256 classes exist, so a 128 x 128 layer would trivially be under 2%
unique; that is not the paper's 42%.)

**Operations.** Each output position of a direct binary convolution costs ``in x kh x kw``
XNOR-popcount multiply-accumulates per output channel; with reuse only the unique kernels'
convolutions are computed::

    direct = out x in x kh x kw x Ho x Wo
    reuse  = (sum_c u_c) x kh x kw x Ho x Wo     (saves direct - reuse)

and the ``out x in`` maps are still summed, ``out x in x Ho x Wo`` integer additions, in
both cases (in the direct one they are the popcount's accumulation). ``direct / reuse`` =
1 / unique fraction.

**Random baseline.** For kernels with independent, uniformly random signs (the
initialisation ``W ~ U(-1, 1)``), each of ``n = out`` kernels of an input channel falls into
one of ``m = 2^(kh kw - 1) = 256`` classes (a pattern and its negation) with equal
probability, so the expected number of distinct classes is

    E[u_c] = m (1 - (1 - 1/m)^n)

which depends on ``n``: 32 kernels give ~94% unique, 128 give ~79%, 512 give ~43%. Training
changes the fraction only if it makes some patterns more likely than others; the book
compares a trained net with this baseline.

A kernel's sign pattern follows :func:`bnnlib.sign` (Sign(0) = +1). Its *code* is the
integer whose bit ``i`` is 1 where entry ``i`` (row-major) is +1; the code of the class of a
kernel and its negation is the smaller of the code and its complement.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass

import torch
from torch import nn

from bnnlib.analysis.trace import trace
from bnnlib.nn.binarize import sign
from bnnlib.nn.layers import BinaryConv2d

__all__ = [
    "FilterStats",
    "kernel_codes",
    "canonical_codes",
    "unique_per_input_channel",
    "unique_fraction",
    "expected_unique",
    "expected_unique_fraction",
    "layer_stats",
    "filter_repetition",
    "packed_conv_weights",
    "totals",
    "pattern_frequencies",
    "fraction_figure",
    "patterns_figure",
]

_MAX_BITS = 62  # codes are int64; kernels up to 62 entries (7x7 = 49) fit


def _check_weight(weight: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weight)
    if w.dim() != 4:
        raise ValueError(
            f"expected a convolution weight (out, in, kh, kw), got shape {tuple(w.shape)}"
        )
    if w.shape[2] * w.shape[3] > _MAX_BITS:
        raise ValueError(
            f"kernels of {w.shape[2]}x{w.shape[3]} = {w.shape[2] * w.shape[3]} entries do not fit "
            f"an int64 code (at most {_MAX_BITS})"
        )
    return w.detach().cpu()


def kernel_codes(weight: torch.Tensor) -> torch.Tensor:
    """int64 (out, in): the sign pattern of each kh x kw kernel as an integer.

    Bit ``i`` is 1 where the kernel's entry ``i`` (row-major) binarizes to +1 (Sign(0) = +1);
    a ±1 weight is its own binarization, a latent real weight is binarized first.
    """
    w = _check_weight(weight)
    bits = (sign(w.float()) > 0).flatten(2).to(torch.int64)  # (out, in, k)
    weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.int64)
    return (bits * weights).sum(-1)


def canonical_codes(weight: torch.Tensor) -> torch.Tensor:
    """int64 (out, in): one code per class {kernel, -kernel}: min(code, complement of code)."""
    w = _check_weight(weight)
    codes = kernel_codes(w)
    mask = (1 << (w.shape[2] * w.shape[3])) - 1
    return torch.minimum(codes, codes ^ mask)


def unique_per_input_channel(weight: torch.Tensor, negation: bool = True) -> torch.Tensor:
    """int64 (in,): distinct kernels among ``weight[:, c]`` for each input channel ``c``.

    ``negation=True`` (the paper's count) counts a kernel and its negation once.
    """
    codes = canonical_codes(weight) if negation else kernel_codes(weight)
    if codes.numel() == 0:
        return torch.zeros(codes.shape[1], dtype=torch.int64)
    # Distinct values per column: sort each column, count the changes.
    s = codes.sort(dim=0).values
    return 1 + (s[1:] != s[:-1]).sum(0)


def unique_fraction(weight: torch.Tensor, negation: bool = True) -> float:
    """sum_c u_c / (out x in): the layer's fraction of unique kernels (see the module doc)."""
    w = _check_weight(weight)
    total = w.shape[0] * w.shape[1]
    if total == 0:
        raise ValueError("a weight with no kernels has no unique fraction")
    return unique_per_input_channel(w, negation).sum().item() / total


def expected_unique(n: int, kernel_size: int = 9, negation: bool = True) -> float:
    """E[u] for ``n`` kernels with independent uniform random signs: m (1 - (1 - 1/m)^n).

    ``m = 2^(kernel_size - 1)`` classes up to negation (``2^kernel_size`` without).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    m = 2 ** (kernel_size - 1 if negation else kernel_size)
    return m * -math.expm1(n * math.log1p(-1 / m))


def expected_unique_fraction(n: int, kernel_size: int = 9, negation: bool = True) -> float:
    """E[u] / n: the unique fraction expected of a randomly initialised layer with n outputs."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return expected_unique(n, kernel_size, negation) / n


@dataclass
class FilterStats:
    """One binary convolution: its kernels, how many are unique, and the operations reuse saves.

    ``unique`` is sum_c u_c; ``fraction`` = unique / kernels; ``random_fraction`` is
    :func:`expected_unique_fraction` for its number of output channels; ``positions`` the
    output positions Ho x Wo of the convolution (before pooling) for one image;
    ``xnor_macs`` the direct XNOR-popcount multiply-accumulates per image and
    ``xnor_macs_reuse`` those left with reuse.
    """

    name: str
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    kernels: int
    unique: int
    fraction: float
    random_fraction: float
    positions: int
    xnor_macs: int
    xnor_macs_reuse: int

    @property
    def saved(self) -> int:
        """XNOR-popcount multiply-accumulates per image that reuse avoids."""
        return self.xnor_macs - self.xnor_macs_reuse

    @property
    def reduction(self) -> float:
        """direct / reuse operations (= 1 / fraction)."""
        return self.xnor_macs / self.xnor_macs_reuse

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kernel"] = list(self.kernel)
        d["saved"] = self.saved
        d["reduction"] = self.reduction
        return d


def layer_stats(name: str, weight: torch.Tensor, positions: int) -> FilterStats:
    """:class:`FilterStats` of one convolution weight whose output has ``positions`` pixels."""
    w = _check_weight(weight)
    out, cin, kh, kw = w.shape
    unique = int(unique_per_input_channel(w).sum())
    area = kh * kw
    return FilterStats(
        name=name,
        out_channels=out,
        in_channels=cin,
        kernel=(kh, kw),
        kernels=out * cin,
        unique=unique,
        fraction=unique / (out * cin),
        random_fraction=expected_unique_fraction(out, area),
        positions=positions,
        xnor_macs=out * cin * area * positions,
        xnor_macs_reuse=unique * area * positions,
    )


def filter_repetition(
    model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)
) -> list[FilterStats]:
    """:class:`FilterStats` of every :class:`~bnnlib.nn.layers.BinaryConv2d` of ``model``.

    ``input_shape`` is one image (C, H, W); a forward pass in evaluation mode
    (:func:`bnnlib.analysis.trace.trace`) finds each convolution's output size. The model's mode is
    restored afterwards.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
    if not convs:
        raise ValueError("the model has no BinaryConv2d layer; filter repetition needs one")
    calls = trace(model, input_shape, include=lambda m: isinstance(m, BinaryConv2d))
    sizes = {id(c.module): math.prod(c.output_shape[1:]) for c in calls}
    return [layer_stats(n, m.weight, sizes[id(m)]) for n, m in convs]


def packed_conv_weights(packed) -> list[tuple[str, torch.Tensor, int]]:
    """(name, ±1 weight (out, in, kh, kw), output positions) of each conv of a PackedNet.

    ``packed`` is a :class:`bnnlib.inference.PackedNet` (from :func:`bnnlib.inference.load`);
    the weights are unpacked by :meth:`~bnnlib.inference.PackedNet.binary_conv_weights`.
    """
    found = [(spec.name, w, math.prod(spec.out_hw)) for spec, w in packed.binary_conv_weights()]
    if not found:
        raise ValueError(f"{packed!r} has no convolution; filter repetition needs one")
    return found


def totals(stats: list[FilterStats]) -> dict:
    """Whole-net figures: mean per-layer fraction (the paper's "per layer on average"),
    pooled fraction, and the XNOR-popcount MACs per image with and without reuse."""
    if not stats:
        raise ValueError("no layers")
    direct = sum(s.xnor_macs for s in stats)
    reuse = sum(s.xnor_macs_reuse for s in stats)
    return {
        "layers": len(stats),
        "mean_fraction": sum(s.fraction for s in stats) / len(stats),
        "mean_random_fraction": sum(s.random_fraction for s in stats) / len(stats),
        "pooled_fraction": sum(s.unique for s in stats) / sum(s.kernels for s in stats),
        "xnor_macs": direct,
        "xnor_macs_reuse": reuse,
        "saved": direct - reuse,
        "reduction": direct / reuse,
    }


def pattern_frequencies(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, counts) of the classes {kernel, -kernel} over all the layer's kernels,
    most frequent first. Uniform random signs would give each of the 2^(kh kw - 1) classes
    the same expected share."""
    codes, counts = canonical_codes(weight).flatten().unique(return_counts=True)
    order = counts.argsort(descending=True, stable=True)
    return codes[order], counts[order]


def _pattern(code: int, kh: int, kw: int) -> list[list[int]]:
    return [[1 if code >> (r * kw + c) & 1 else -1 for c in range(kw)] for r in range(kh)]


def fraction_figure(
    layers: list[str], fractions: dict[str, list[float]], paper: float | None = None, title=""
):
    """Grouped bars: the unique fraction of each layer for each labelled net (plotly figure);
    ``paper`` draws the paper's figure as a dashed line, labelled in the legend (under the
    plot, never clipped)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, values in fractions.items():
        fig.add_trace(go.Bar(x=layers, y=[100 * v for v in values], name=label))
    if paper is not None:  # a dashed line across the plot, labelled in the legend: never clipped
        label = f"paper: ~{100 * paper:.0f}% (trained, full width)"
        fig.add_hline(y=100 * paper, line_dash="dash", line_color="#444")
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", name=label,
                       line={"dash": "dash", "color": "#444"})
        )  # fmt: skip
    lines = textwrap.wrap(title, 80) or [""]
    fig.update_layout(
        barmode="group",
        title="<br>".join(lines),  # a long title wraps instead of running off the figure
        xaxis_title="binary convolution",
        yaxis_title="unique 3x3 kernels (%)",
        yaxis_range=[0, 105],
        # the legend under the x axis: the plot keeps its width, the title its room
        legend={"orientation": "h", "x": 0, "y": -0.22, "yanchor": "top"},
        margin={"t": 50 + 24 * len(lines), "b": 130},
        height=480,
    )
    return fig


def patterns_figure(weight: torch.Tensor, top: int = 8, title: str = ""):
    """The ``top`` most frequent kernel classes of a layer as kh x kw images (+1 light, -1
    dark; each stands for itself and its negation), titled with their share of the kernels."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    w = _check_weight(weight)
    kh, kw = w.shape[2], w.shape[3]
    codes, counts = pattern_frequencies(w)
    top = min(top, len(codes))
    total = int(counts.sum())
    names = [f"{100 * int(n) / total:.1f}%" for n in counts[:top]]
    fig = make_subplots(rows=1, cols=top, subplot_titles=names, horizontal_spacing=0.02)
    for i in range(top):
        z = _pattern(int(codes[i]), kh, kw)
        fig.add_trace(
            go.Heatmap(z=z, zmin=-1, zmax=1, colorscale="Greys", reversescale=True,
                       showscale=False, hovertemplate="%{z:+d}<extra></extra>"),
            row=1, col=i + 1,
        )  # fmt: skip
        # Square cells: each subplot's y axis keeps the scale of its own x axis.
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(title=title, height=260)
    return fig
