"""Recording the book's results: ``record(name, value)`` in a notebook, read back by the runner.

Every number a notebook wants on the book's results page goes through
:func:`record`, together with what it should be compared with (the paper's
figure, when the paper gives one) and how it was obtained (data, schedule,
hardware, seed)::

    record("test_error", 0.0131, paper=0.0096, unit="fraction",
           data="MNIST 50k/10k/10k", schedule="10 epochs", seed=0)

Where the record goes is set by the environment variable ``BNN_RECORD_FILE``:

* set (``make book`` and the tests set it, one file per notebook): the record is
  appended to that JSON file, a list of entries, rewritten atomically each time;
* unset (interactive use in JupyterLab): the record is kept in memory
  (:func:`recorded`).

Interactively (no file) it is also printed, so that the person running the cell sees it; in the
book's run (a file) it is silent: the rendered page shows the teaching output only, and every
record is on the site's records page. Recording the same name again replaces the earlier entry,
so re-running a cell is harmless.
:func:`read` returns the entries of a file, :func:`values` maps names to values.

The hardware line of a record defaults to :func:`bnnlib.hardware.hardware`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from bnnlib import settings
from bnnlib.files import atomic_write
from bnnlib.hardware import hardware
from bnnlib.paper import STATUSES

__all__ = [
    "ENV_VAR",
    "record",
    "read",
    "values",
    "recorded",
    "clear",
]

ENV_VAR = settings.RECORD_FILE_VAR
FIELDS = (
    "name", "value", "paper", "unit", "data", "schedule", "hardware", "seed", "note", "status",
)  # fmt: skip

_memory: list[dict[str, Any]] = []


def _plain(value: Any, what: str) -> Any:
    """``value`` as JSON-ready Python (tensors and numpy values converted); NaN/inf rejected."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} is {value}; a diverged run must fail, not be recorded")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{what} has type {type(value).__name__}; record numbers, strings, booleans, "
        "lists or dicts of them (convert tensors with .item() or .tolist())"
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _write_atomic(path: Path, entries: list[dict]) -> None:
    atomic_write(path, json.dumps(entries, indent=1).encode())


def _upsert(entries: list[dict], entry: dict) -> list[dict]:
    """Replace the entry of the same name in place, else append."""
    if any(e.get("name") == entry["name"] for e in entries):
        return [entry if e.get("name") == entry["name"] else e for e in entries]
    return entries + [entry]


def record(
    name: str,
    value: Any,
    *,
    paper: Any = None,
    unit: str | None = None,
    data: str | None = None,
    schedule: str | None = None,
    hardware: str | None = None,
    seed: int | None = None,
    note: str | None = None,
    status: str | None = None,
) -> None:
    """Record one result of a notebook (printed only when kept in memory, see the module).

    ``paper`` is the paper's figure for the same quantity (same unit), ``unit`` e.g.
    ``"fraction"`` or ``"s"``, ``data`` and ``schedule`` say what was run,
    ``hardware`` defaults to :func:`hardware` of the CPU, ``note`` is free text.
    ``status`` (one of :data:`bnnlib.paper.STATUSES`) says how a figure that the
    book's summary table shows compares with the paper's, e.g. "reduced run".
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"record: name must be a non-empty string, got {name!r}")
    if status is not None and status not in STATUSES:
        raise ValueError(f"record({name!r}): status must be one of {STATUSES}, got {status!r}")
    entry = {
        "name": name,
        "value": _plain(value, f"record({name!r}): value"),
        "paper": _plain(paper, f"record({name!r}): paper"),
        "unit": unit,
        "data": data,
        "schedule": schedule,
        "hardware": hardware if hardware is not None else _this_machine(),
        "seed": seed,
        "note": note,
        "status": status,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    target = settings.record_file()
    global _memory
    if target:
        path = Path(target)
        _write_atomic(path, _upsert(read(path) if path.exists() else [], entry))
        return  # silent in the book's run: the records page shows it
    _memory = _upsert(_memory, entry)
    paper_text = f"   (paper: {_format(entry['paper'])})" if paper is not None else ""
    unit_text = f" {unit}" if unit else ""
    print(f"recorded {name} = {_format(entry['value'])}{unit_text}{paper_text}")


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a record file (a JSON list of dicts with at least name and value)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"no record file at {path}; did the notebook call record()?"
        raise FileNotFoundError(msg) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"record file {path} is not valid JSON ({e}); delete it and re-run") from e
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "name" in e and "value" in e for e in entries
    ):
        raise ValueError(f"record file {path} is not a list of {{name, value, ...}} entries")
    return entries


def values(entries: str | os.PathLike | list[dict]) -> dict[str, Any]:
    """``{name: value}`` of a record file or of a list of entries."""
    if not isinstance(entries, list):
        entries = read(entries)
    return {e["name"]: e["value"] for e in entries}


def recorded() -> list[dict[str, Any]]:
    """The entries recorded in memory in this process (when ``BNN_RECORD_FILE`` is unset)."""
    return list(_memory)


def clear() -> None:
    """Forget the in-memory records."""
    _memory.clear()


def _this_machine() -> str:
    # record() has a parameter named ``hardware``, so it calls the function through this name.
    return hardware()
