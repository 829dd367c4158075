"""Checked numbers and paths for the command lines (``type=`` of argparse arguments).

Every ``python -m bnnlib...`` command refuses a bad number as it parses it, with one message
naming the flag (argparse adds it) and what it must be: ``--batch-size 0``, ``--budget -1``,
``--max-minutes nan``, an empty ``--out`` from an unset variable.
"""

from __future__ import annotations

import argparse
import math

__all__ = [
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "nonnegative_float",
    "fraction",
    "nonempty",
]


def _number(text: str, integer: bool) -> float | int:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(text, True)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer in [0, 2^63)."""
    value = _number(text, True)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, False)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, False)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (NaN fails too)."""
    value = _number(text, False)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def nonempty(text: str) -> str:
    """A string that is not empty or blank (an unset shell variable gives one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable?)")
    return text
