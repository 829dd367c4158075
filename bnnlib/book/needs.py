"""What a notebook needs and may lack: its data set. Chosen here, or the rest is skipped.

A notebook that trains on CIFAR-10 should run on any machine: on full CIFAR-10 when the data
root holds it, on the offline CIFAR-10 subset when only that is there, and when neither is
there it should say so, record "data not available here" for the paper's claim it measures,
and finish without failing (``make book`` goes on). One call in the notebook::

    DATASET = dataset_or_skip(DATASET, ("cifar10", "cifar10_subset"), claim="unique_filters")

``DATASET = "auto"`` picks the first of the candidates whose files are under the data root
(:func:`bnnlib.data.first_available`; nothing is downloaded) and prints which; an explicit
name is kept as it is (loading it downloads it when missing and online, or fails saying
where to put it). When no candidate is there (and ``needed``), every later cell from the
first one that uses ``DATASET`` prints that it is skipped instead of running: IPython runs
it through a :class:`SkipFrom` input transformer. Running the call again (after adding the
data) removes an earlier one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bnnlib import data
from bnnlib.book.record import record
from bnnlib.paper import claim as paper_claim

__all__ = ["AUTO", "UNAVAILABLE", "SkipFrom", "dataset_or_skip", "skip_from"]

AUTO = "auto"
#: The status recorded for the claim a notebook cannot measure here.
UNAVAILABLE = "data not available here"


class SkipFrom:
    """An IPython input transformer (lines -> lines): from the first cell that mentions
    ``name`` (a whole word) on, each cell is replaced by ``print(message)``."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message
        self.pattern = re.compile(rf"\b{re.escape(name)}\b")
        self.active = False

    def __call__(self, lines: list[str]) -> list[str]:
        if not self.active and not any(self.pattern.search(line) for line in lines):
            return lines
        self.active = True
        return [f"print({self.message!r})\n"]


def _transforms() -> list | None:
    """The running IPython shell's ``input_transformers_post`` (None outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the book's dependencies
        return None
    shell = get_ipython()
    return None if shell is None else shell.input_transformers_post


def _clear() -> None:
    """Remove an earlier :class:`SkipFrom` from this kernel."""
    transforms = _transforms()
    if transforms is not None:
        transforms[:] = [t for t in transforms if not isinstance(t, SkipFrom)]


def skip_from(name: str, message: str) -> SkipFrom | None:
    """Skip every later cell from the first that mentions ``name``, in this IPython kernel
    (replacing an earlier :class:`SkipFrom`); None outside IPython, where nothing is skipped."""
    if not name:
        raise ValueError("skip_from needs the name of a variable the skipped cells use")
    _clear()
    transforms = _transforms()
    if transforms is None:
        return None
    skipper = SkipFrom(name, message)
    transforms.append(skipper)
    return skipper


def dataset_or_skip(
    dataset: str,
    candidates: Sequence[str],
    *,
    claim: str | None = None,
    needed: bool = True,
    name: str = "DATASET",
    root: str | None = None,
) -> str | None:
    """The data set a notebook uses: ``dataset`` itself unless it is ``"auto"``, else the first
    of ``candidates`` under the data root (printed, with those it lacks).

    When ``"auto"`` finds none: if ``needed``, it prints what is missing and how to get it,
    records ``claim``'s record (:data:`bnnlib.paper.CLAIMS`) with no value and the status
    "data not available here", arms :func:`skip_from` on ``name`` and returns None; if not
    ``needed`` (e.g. a committed model is used instead), it says so and returns None.
    """
    _clear()
    if dataset != AUTO:
        return dataset
    if not candidates:
        raise ValueError("dataset_or_skip needs at least one candidate data set")
    chosen = data.first_available(candidates, root)
    where = data.resolve_root(root)
    lacking = [data.label(c) for c in candidates[: candidates.index(chosen)]] if chosen else []
    if chosen is not None:
        why = f" ({', '.join(lacking)}: not under the data root {where})" if lacking else ""
        print(f"{name} = {chosen!r}: {data.label(chosen)}{why}")
        return chosen
    wanted = ", ".join(data.label(c) for c in candidates)
    if not needed:
        print(f"{name}: none of {wanted} is under the data root {where}; not needed here")
        return None
    message = f"skipped: data not available here (none of {wanted} under the data root {where})"
    print(
        f"Data not available here: none of {wanted} is under the data root {where}. The cells "
        f"that use {name} are skipped and the result is recorded as {UNAVAILABLE!r}. To run "
        f"them, put one of these data sets there or set {data.ENV_VAR} to a folder that holds "
        "one (python -m bnnlib.book -p DATASET=NAME names one explicitly), then re-run the "
        "notebook (restart the kernel)."
    )
    if claim is not None:
        c = paper_claim(claim)
        if c.record is None:
            raise ValueError(f"claim {claim!r} names no notebook record to fill")
        note = f"none of {wanted} under the data root {where}"
        record(c.record.split(":", 1)[1], None, paper=c.paper, unit=c.unit, note=note,
               status=UNAVAILABLE)  # fmt: skip
    skip_from(name, message)
    return None
