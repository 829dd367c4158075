"""Take-aways that follow the numbers: the sentences of a notebook's "What to take away" that
compare two figures, generated from the figures themselves.

A notebook ends with a take-away; where it says "worse", "close" or "smaller", the word comes
from the values it recorded, never typed beside them::

    takeaway.show(
        "Rounding to powers of two changes each update by at most a factor of two.",
        takeaway.gap_sentence(gap, "shift-based AdaMax", "Adam", reduced=True),
    )

:func:`gap_sentence` reads a gap with its 95% interval (:func:`bnnlib.paper.gap_interval`):
"worse" or "better" only when the interval excludes 0, "no difference shown" otherwise, and
for a reduced run says so and that the paper's claim is decided elsewhere (the protocol's
experiment). :func:`compare` words two figures the same way. The tests recompute each sentence
from a notebook's records and fail when the page says otherwise.
"""

from __future__ import annotations

from bnnlib.paper import Interval

__all__ = ["PREFIX", "gap_sentence", "compare", "speed", "show", "text"]

#: How a take-away paragraph opens.
PREFIX = "**What to take away.**"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def gap_sentence(
    gap: Interval,
    a: str,
    b: str,
    *,
    what: str = "test error",
    reduced: bool = False,
    claim: str = "",
) -> str:
    """One sentence on ``gap`` (``a``'s error minus ``b``'s, a fraction, with its 95% interval):
    ``a`` is worse (the interval above 0), better (below 0), or no difference is shown (it
    contains 0). ``reduced``: the run is shorter or smaller than the paper's, which the sentence
    says, pointing to ``claim`` (where the paper's claim is decided) when given."""
    iv = f"95% interval {_points(gap.low)} to {_points(gap.high)}"
    if gap.low > 0:
        verdict = (
            f"{a} ends {100 * gap.value:.2f} points worse than {b} in {what} ({iv}, which "
            "excludes 0): a real gap in this run"
        )
    elif gap.high < 0:
        verdict = (
            f"{a} ends {-100 * gap.value:.2f} points better than {b} in {what} ({iv}, which "
            "excludes 0)"
        )
    else:
        verdict = (
            f"{a} and {b} end within the test set's noise of each other ({_points(gap.value)} "
            f"points, {iv}, which contains 0): no difference shown"
        )
    if reduced:
        verdict += (
            "; this is a reduced run, so it says nothing yet about the paper's full-length claim"
            + (f", which {claim} decides" if claim else "")
        )
    return verdict + "."


def compare(a_value: float, b_value: float, a: str, b: str, *, what: str, unit: str = "") -> str:
    """``a``'s ``what`` is above / below / equal to ``b``'s, with both figures (``unit="%"``:
    fractions shown as percents)."""

    def fmt(v: float) -> str:
        return f"{100 * v:.2f}%" if unit == "%" else f"{v:.3g}"

    if a_value > b_value:
        word = "above"
    elif a_value < b_value:
        word = "below"
    else:
        word = "equal to"
    return f"{a} ends {word} {b} in {what} ({fmt(a_value)} against {fmt(b_value)})"


def speed(ratio: float, a: str, b: str) -> str:
    """``a`` runs ``ratio`` times as fast as ``b`` (``ratio`` = b's time / a's time), worded as
    "N× faster" above 1 and "N× slower" below, so that a measured slowdown never reads as a
    speed-up."""
    if ratio >= 1:
        return f"{a} ran {ratio:.1f}× faster than {b}"
    return f"{a} ran {1 / ratio:.1f}× slower than {b}"


def text(*sentences: str) -> str:
    """The take-away paragraph: :data:`PREFIX` and the sentences."""
    return " ".join([PREFIX, *(s.strip() for s in sentences if s.strip())])


def show(*sentences: str) -> None:
    """Display the take-away paragraph (:func:`text`) as Markdown in the notebook (returning
    nothing, so that the cell shows the paragraph once)."""
    from IPython.display import Markdown, display

    display(Markdown(text(*sentences)))
