"""Every number the paper reports, in one place, and the claims the book checks.

Courbariaux, Hubara, Soudry, El-Yaniv, Bengio (2016), *Binarized Neural
Networks*, arXiv 1602.02830, with its two official codes (Theano:
MatthieuCourbariaux/BinaryNet; Torch7: itayhubara/BinaryNet). Notebooks and the
book's results page read the paper's figures from here instead of typing them
again, so a figure is written once.

* :data:`TABLE1` — the test error rates of Table 1 (fractions), by method and dataset.
* :data:`SCHEDULES` — the Theano code's training schedules per model, and
  :data:`TORCH7_MNIST` the Torch7 code's MNIST setup.
* :data:`KERNELS`, :data:`MEMORY_RATIO`, :data:`UNIQUE_FILTERS` — Section 4 and 5 figures.
* :data:`CLAIMS` — one row per claim of the summary table "the paper vs this
  book": what the paper says, where our figure comes from (a notebook record or a
  committed result) and what status a missing figure has.
  :func:`status` turns a measured value into "reproduced" / "not reproduced" /
  "reduced run".
* :func:`error_interval` and :func:`gap_interval` — the 95% intervals a test error (one or
  several seeds) and a difference of two test errors carry, so that a status allows for the
  noise of a 10,000-image test set and of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CITATION",
    "TABLE1",
    "SCHEDULES",
    "TORCH7_MNIST",
    "KERNELS",
    "MEMORY_RATIO",
    "UNIQUE_FILTERS",
    "FILTER_REDUCTION",
    "ENERGY_OPERATIONS",
    "ENERGY_MEMORY",
    "Claim",
    "CLAIMS",
    "claim",
    "status",
    "STATUSES",
    "STATUS_LEGEND",
    "Interval",
    "error_interval",
    "gap_interval",
    "reduced_reasons",
]

CITATION = (
    "Courbariaux, Hubara, Soudry, El-Yaniv, Bengio (2016), Binarized Neural Networks, "
    "arXiv 1602.02830"
)

#: Table 1, test error rates as fractions: TABLE1[method][dataset].
TABLE1: dict[str, dict[str, float]] = {
    "BNN (Torch7)": {"mnist": 0.0140, "svhn": 0.0253, "cifar10": 0.1015},
    "BNN (Theano)": {"mnist": 0.0096, "svhn": 0.0280, "cifar10": 0.1140},
    "Committee Machines' Array": {"mnist": 0.0135},
    "BinaryConnect": {"mnist": 0.0129, "svhn": 0.0230, "cifar10": 0.0990},
    "EBP": {"mnist": 0.022},
    "Bitwise DNNs": {"mnist": 0.0133},
    "Ternary weights, binary activations": {"mnist": 0.0145},
    "Maxout Networks": {"mnist": 0.0094, "svhn": 0.0247, "cifar10": 0.1168},
    "Network in Network": {"svhn": 0.0235, "cifar10": 0.1041},
    "Gated pooling": {"svhn": 0.0169, "cifar10": 0.0762},
}

#: The Theano code's schedules: dataset, epochs, batch size, LR start and end (exponential).
SCHEDULES = {
    "mnist_mlp": {"dataset": "mnist", "epochs": 1000, "batch_size": 100, "lr": (3e-3, 3e-7)},
    "cifar10_convnet": {"dataset": "cifar10", "epochs": 500, "batch_size": 50, "lr": (1e-3, 3e-7)},
    "svhn_convnet": {"dataset": "svhn", "epochs": 200, "batch_size": 50, "lr": (1e-3, 1e-6)},
}

#: The Torch7 code's MNIST setup (Main_BinaryNet_MNIST.lua and its model file).
TORCH7_MNIST = {
    "hidden": 2048,
    "depth": 3,
    "batch_size": 100,
    "lr_start": 2.0**-6,
    "lr_halve_every": 20,
    "stochastic_activations": True,
    "stochastic_weights": False,
    "batchnorm": "shift",
    "optimizer": "shift AdaMax",
}

#: Section 4: the GPU kernels (8192^3 on a GTX750) and the MNIST MLP.
KERNELS = {
    "xnor_over_baseline": 23.0,
    "xnor_over_cublas": 3.4,
    "xnor_over_cublas_gtx980": 3.3,
    "mlp_xnor_over_baseline": 7.0,
}
MEMORY_RATIO = 32.0  # binary weights vs float32
#: Section 3.3 on dedicated hardware: repeated filters could cut XNOR-popcount operations by ~3x.
FILTER_REDUCTION = 3.0

#: Table 2 (Horowitz, 2014, 45 nm): energy of one operation in pJ.
ENERGY_OPERATIONS: dict[str, dict[str, float]] = {
    "8-bit integer": {"MUL": 0.2, "ADD": 0.03},
    "32-bit integer": {"MUL": 3.1, "ADD": 0.1},
    "16-bit floating point": {"MUL": 1.1, "ADD": 0.4},
    "32-bit floating point": {"MUL": 3.7, "ADD": 0.9},
}
#: Table 3: pJ per 64-bit memory access, as printed; DRAM is a range.
ENERGY_MEMORY: dict[str, float | tuple[float, float]] = {
    "8K": 10.0,
    "32K": 20.0,
    "1M": 100.0,
    "DRAM": (1300.0, 2600.0),
}
UNIQUE_FILTERS = 0.42  # fraction of unique 3x3 binary filters per layer, trained CIFAR-10 ConvNet

STATUSES = (
    "reproduced",
    "consistent",
    "better than the paper",
    "not reproduced",
    "reduced run",
    "not run yet: needs a GPU",
    "data not available here",
    "computed",
    "measured",
    "not run yet",
)
#: One line per status, for the summary table's legend.
STATUS_LEGEND = {
    "reproduced": "an error: equivalence shown under results/protocol.md (the 90% interval of "
    "ours minus the paper's, seeds' spread on Student's t, inside +-0.20 points), checked "
    "before the other verdict words; a 'no loss' claim: the paired gap's upper 95% "
    "bound below +0.20 points; other claims: every prediction identical, or the paper's factor "
    "reached",
    "consistent": "the paper's figure is inside our 95% interval, but equivalence within the "
    "protocol's margin is not shown (a 'no loss' claim: a loss neither shown nor excluded)",
    "better than the paper": "equivalence not shown and the paper's error above our 95% interval",
    "not reproduced": "equivalence not shown and the paper's figure outside our 95% interval, "
    "on the worse side (a 'no loss' claim: the gap's interval above 0)",
    "reduced run": "fewer epochs, units or images than the paper's run: not comparable",
    "not run yet: needs a GPU": "prepared, waits for a GPU",
    "data not available here": "the data set cannot be obtained on this project's machines",
    "computed": "arithmetic on the paper's tables and this book's stated model, no measurement",
    "measured": "ours, with no figure of the paper to compare (the CPU counterparts)",
    "not run yet": "no figure yet",
}


@dataclass(frozen=True)
class Claim:
    """One row of "the paper vs this book".

    ``paper`` is the paper's figure (``unit`` says how to read it), ``better``
    how ours must compare to count as reproduced (``"at_most"``, ``"at_least"``,
    ``"about"``: within ``tolerance`` as a relative difference, or ``"report"``:
    arithmetic on the paper's own tables, with no figure of the paper to meet). ``record`` names
    the notebook record that holds our figure (``"NN:name"``); ``missing`` is
    the status when no figure exists.
    """

    key: str
    claim: str
    paper: float
    unit: str
    better: str
    record: str | None
    missing: str
    tolerance: float = 0.0


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "table1_mnist_torch7", "Table 1: BNN (Torch7), MNIST test error",
        TABLE1["BNN (Torch7)"]["mnist"], "fraction", "at_most", "05:table1_mnist_torch7",
        "not run yet",
    ),
    Claim(
        "table1_mnist_theano", "Table 1: BNN (Theano), MNIST test error",
        TABLE1["BNN (Theano)"]["mnist"], "fraction", "at_most", "05:table1_mnist_theano",
        "not run yet: needs a GPU",
    ),
    Claim(
        "table1_svhn", "Table 1: BNN, SVHN test error (Torch7 2.53%, Theano 2.80%)",
        TABLE1["BNN (Torch7)"]["svhn"], "fraction", "at_most", None, "data not available here",
    ),
    Claim(
        "table1_cifar10", "Table 1: BNN, CIFAR-10 test error (Torch7 10.15%, Theano 11.40%)",
        TABLE1["BNN (Torch7)"]["cifar10"], "fraction", "at_most", "05:table1_cifar10",
        "data not available here",
    ),
    Claim(
        "memory_ratio", "Binary weights take 32x less memory than float32",
        MEMORY_RATIO, "x", "about", "07:memory_ratio_weights_4096", "not run yet", 0.01,
    ),
    Claim(
        "gpu_xnor_over_baseline", "XNOR kernel 23x faster than the baseline kernel (8192^3)",
        KERNELS["xnor_over_baseline"], "x", "at_least", "06:gpu_speedup_xnor_paper_vs_baseline",
        "not run yet: needs a GPU",
    ),
    Claim(
        "gpu_xnor_over_cublas", "XNOR kernel 3.4x faster than cuBLAS (8192^3)",
        KERNELS["xnor_over_cublas"], "x", "at_least", "06:gpu_speedup_xnor_paper_vs_cublas_fp32",
        "not run yet: needs a GPU",
    ),
    Claim(
        "gpu_mlp_over_baseline", "MNIST MLP 7x faster with the XNOR kernel than the baseline",
        KERNELS["mlp_xnor_over_baseline"], "x", "at_least", "06:gpu_mlp_xnor_over_baseline",
        "not run yet: needs a GPU",
    ),
    Claim(
        "energy_mac",
        "Energy: a float32 MAC (3.7 + 0.9 pJ, Table 2) over a binary MAC (this book's gate model)",
        float("nan"), "x", "report", "08:mac_energy_ratio", "not run yet",
    ),
    Claim(
        "unique_filters", "Only ~42% of the 3x3 binary filters of a trained ConvNet are unique",
        UNIQUE_FILTERS, "fraction", "about", "09:unique_fraction_trained",
        "not run yet: needs a GPU", 0.25,
    ),
    Claim(
        "shift_bn_no_loss", "Shift-based batch norm: no accuracy loss (test error gap)",
        0.0, "fraction", "at_most", "03:test_error_gap_shift_minus_standard", "not run yet",
    ),
    Claim(
        "shift_adamax_no_loss", "Shift-based AdaMax: no accuracy loss (test error gap)",
        0.0, "fraction", "at_most", "04:test_error_gap_shift_adamax_minus_adam", "not run yet",
    ),
)  # fmt: skip


def claim(key: str) -> Claim:
    """The :class:`Claim` of ``key`` (a clear error for an unknown key)."""
    for c in CLAIMS:
        if c.key == key:
            return c
    raise KeyError(f"no claim {key!r}; the claims are {[c.key for c in CLAIMS]}")


@dataclass(frozen=True)
class Interval:
    """A figure of ours with its 95% interval (``low`` .. ``high``) and how it was computed."""

    value: float
    low: float
    high: float
    method: str

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


#: z of a two-sided 95% normal interval.
Z95 = 1.959963984540054


def _wilson(errors: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def error_interval(errors: Sequence[int], n: int) -> Interval:
    """The mean test error of one or more seeds (``errors[i]`` of ``n`` test images each, the
    same test set) with its 95% interval.

    One seed: the Wilson score interval of a binomial proportion (the test set as a sample of
    n images). Several seeds: mean +/- t sqrt(p(1-p)/n + s^2/k), p the mean error, s^2 the
    sample variance of the k seeds' errors: the test set's sampling noise (one test set, so
    /n, not /kn) plus the seeds' spread, with t the 97.5% quantile of Student's t on the
    Welch-Satterthwaite degrees of freedom (the binomial term counts as known; s^2 has k - 1):
    with two seeds whose spread dominates, t approaches 12.7, not 1.96.
    """
    if isinstance(errors, (int, float)) or any(
        isinstance(e, bool) or not float(e).is_integer() for e in errors
    ):
        raise ValueError(f"errors must be whole counts of test images, got {errors!r}")
    errors = [int(e) for e in errors]
    if not errors or n <= 0 or any(not 0 <= e <= n for e in errors):
        raise ValueError(f"errors {errors} of n={n} test images: need 0 <= errors <= n, n > 0")
    k = len(errors)
    rates = [e / n for e in errors]
    mean = sum(rates) / k
    if k == 1:
        low, high = _wilson(errors[0], n)
        return Interval(mean, low, high, f"Wilson 95% interval, binomial on {n:,} test images")
    binomial = mean * (1 - mean) / n
    seeds = sum((r - mean) ** 2 for r in rates) / (k - 1) / k
    var = binomial + seeds
    df = float("inf") if seeds == 0 else var**2 / (seeds**2 / (k - 1))
    t = Z95 if math.isinf(df) else _t975(df)
    half = t * math.sqrt(var)
    return Interval(
        mean, max(0.0, mean - half), min(1.0, mean + half),
        f"mean of {k} seeds +/- t sqrt(p(1-p)/{n:,} + s^2/{k}), t = {t:.2f} (Student, "
        f"{df:.1f} Welch-Satterthwaite degrees of freedom): test-set noise plus the seeds' spread",
    )  # fmt: skip


def _t975(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def gap_interval(errors_a: int, errors_b: int, n: int, discordant: int | None = None) -> Interval:
    """The gap ``(errors_a - errors_b) / n`` of two models on the same ``n`` test images, with
    its 95% interval.

    With ``discordant`` (images exactly one of the two gets wrong: b + c) the paired
    (McNemar) variance (b + c - (b - c)^2 / n) / n^2; without it, the unpaired
    p_a(1-p_a)/n + p_b(1-p_b)/n, which is wider when the two models err on the same images.
    """
    if n <= 0 or not (0 <= errors_a <= n and 0 <= errors_b <= n):
        raise ValueError(f"errors {errors_a}, {errors_b} of n={n}: need 0 <= errors <= n")
    gap = (errors_a - errors_b) / n
    if discordant is not None:
        possible = abs(errors_a - errors_b) <= discordant <= min(errors_a + errors_b, n)
        if not possible or (discordant - errors_a - errors_b) % 2:
            raise ValueError(
                f"{discordant} discordant images cannot give errors {errors_a} and {errors_b} "
                f"on {n} images"
            )
        var = (discordant - (errors_a - errors_b) ** 2 / n) / n**2
        method = f"paired (McNemar) 95% interval on {n:,} test images"
    else:
        pa, pb = errors_a / n, errors_b / n
        var = (pa * (1 - pa) + pb * (1 - pb)) / n
        method = f"unpaired 95% interval on {n:,} test images"
    half = Z95 * math.sqrt(max(var, 0.0))
    return Interval(gap, gap - half, gap + half, method)


def status(key: str, value: float, reduced: bool, interval: Interval | None = None) -> str:
    """The summary-table status of our ``value`` for claim ``key`` (:data:`STATUS_LEGEND`).

    ``reduced=True`` (fewer epochs, units or data than the paper's run) gives
    "reduced run" whatever the value. An ``at_most`` claim (an error, or a "no loss" gap whose
    paper figure is 0) needs its 95% ``interval`` (:func:`error_interval`,
    :func:`gap_interval`): "consistent" when the paper's figure lies in it (a gap: when it
    reaches 0 or below), "better than the paper" when the paper's error lies above it, else
    "not reproduced". It never says "reproduced": a figure and its interval do not show
    equivalence; that takes the seeds and the margin of ``results/protocol.md``
    (:mod:`bnnlib.repro.protocol`). Other claims compare the value as it is: "about" within
    ``tolerance``, "at_least" the paper's factor reached.
    """
    c = claim(key)
    if c.better == "report":
        return "computed"
    if reduced:
        return "reduced run"
    if c.better == "at_most":
        if interval is None:
            raise ValueError(
                f"claim {key!r} is an error or a gap: one figure cannot decide it; pass its 95% "
                "interval (paper.error_interval or paper.gap_interval)"
            )
        if c.paper == 0.0:  # "no accuracy loss": a gap whose interval reaches 0
            return "consistent" if interval.low <= 0.0 else "not reproduced"
        if interval.contains(c.paper):
            return "consistent"
        return "better than the paper" if c.paper > interval.high else "not reproduced"
    if c.better == "at_least":
        ok = value >= c.paper
    else:
        ok = abs(value - c.paper) <= c.tolerance * abs(c.paper)
    return "reproduced" if ok else "not reproduced"


def reduced_reasons(
    model: str,
    *,
    num_epochs: int,
    lr_start: float,
    lr_end: float,
    batch_size: int | None = None,
    hidden: int | None = None,
    width: float | None = None,
    dropout_hidden: float | None = None,
    data_reduced: bool = False,
) -> list[str]:
    """Why a run of ``model`` is smaller than the paper's (Theano) run; empty when it is not.

    Data (``data_reduced``: a subset or the first images of a split), units
    (``hidden`` for the MLP, ``width`` for the ConvNets), the MLP's hidden dropout,
    epochs, the LR schedule and the batch size are each compared with :data:`SCHEDULES`.
    """
    paper = SCHEDULES[model]
    reasons = ["fewer images than the paper's split"] if data_reduced else []
    if model == "mnist_mlp" and hidden is not None and hidden < 4096:
        reasons.append(f"{hidden} hidden units (paper: 4096)")
    if model != "mnist_mlp" and width is not None and width < 1:
        reasons.append(f"width {width:g} of the paper's units")
    if model == "mnist_mlp" and dropout_hidden is not None and dropout_hidden != 0.5:
        reasons.append(f"hidden dropout {dropout_hidden:g} (paper: 0.5)")
    if num_epochs < paper["epochs"]:
        reasons.append(f"{num_epochs} epochs (paper: {paper['epochs']})")
    if (lr_start, lr_end) != paper["lr"]:
        lo, hi = paper["lr"]
        reasons.append(f"LR {lr_start:g} -> {lr_end:g} (paper: {lo:g} -> {hi:g})")
    if batch_size is not None and batch_size != paper["batch_size"]:
        reasons.append(f"batch {batch_size} (paper: {paper['batch_size']})")
    return reasons
