"""The book's results: ``results.json`` and ``results.md``, and "the paper vs this book".

Every record of every executed notebook (:class:`Run`) goes to both files (value, the
paper's value, data, schedule, hardware, seed), under a summary with one row per
:data:`bnnlib.paper.CLAIMS` entry (:func:`summary_rows`). A book that stopped at a failing
notebook writes them marked incomplete (:func:`write_results`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnlib import paper as _paper
from bnnlib.book.claims import (
    LIVE_CLAIMS,
    committed_rows,
    machine_kind,
    summary_markdown,
    summary_row,
)
from bnnlib.files import atomic_write
from bnnlib.hardware import hardware
from bnnlib.repro import protocol

__all__ = ["Run", "SUMMARY_COLUMNS", "INTERVAL_SUFFIX", "summary_rows", "write_results"]


@dataclass
class Run:
    """One executed notebook: where its copy is, what it recorded, how long it took."""

    notebook: str
    title: str
    executed: Path
    seconds: float
    parameters: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


COLUMNS = (
    "name", "value", "unit", "paper", "status", "data", "schedule", "hardware", "seed", "note",
)  # fmt: skip


def cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


SUMMARY_COLUMNS = ("claim", "paper", "ours", "how measured", "status")
#: A gap's 95% interval ``[low, high]`` is recorded as the gap's record name plus this suffix.
INTERVAL_SUFFIX = "_interval95"


def _claim_value(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if unit == "fraction" else f"{v:.3g}{'×' if unit == 'x' else ''}"
    return str(v)


#: Committed rows a full live measurement may replace: those without a full figure of ours.
_FILLABLE = ("not run yet", "not run yet: needs a GPU", "data not available here", "reduced run")


def _full_live_record(key: str, runs, records) -> dict[str, str] | None:
    """The cells of a notebook's record for claim ``key`` when it is a full measurement (its
    status is not "reduced run"), else None: a reduced run stays in its notebook."""
    c = next((c for c in _paper.CLAIMS if c.key == key), None)
    found = records.get(c.record) if c is not None and c.record else None
    if found is None:
        return None
    run, e = found
    status = e.get("status") or _paper.status(c.key, e["value"], reduced=False)
    if status == "reduced run":
        return None
    return {"ours": _claim_value(e["value"], c.unit), "status": status, **_live_how(run, e)}


def _live_how(run: Run, e: dict[str, Any]) -> dict[str, Any]:
    """A notebook record's short "how measured" (the notebook, CPU or GPU), its details (data,
    schedule, seed, note) and its machine, in a summary row's shape."""
    machines = [str(e["hardware"])] if e.get("hardware") else []
    kind = machine_kind(machines)
    parts = [e.get("data"), e.get("schedule")]
    parts += [f"seed {e['seed']}" if e.get("seed") is not None else None, e.get("note")]
    return {
        "how measured": f"notebook {run.notebook[:2]}" + (f", {kind}" if kind else ""),
        "section": run.notebook,
        "details": "; ".join(str(p) for p in parts if p),
        "machines": machines,
    }


def summary_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    """ "The paper vs this book": the rows that rest on committed results
    (:func:`bnnlib.book.claims.committed_rows`, the same rows as the README's), then one row
    per claim the notebooks measure live (:data:`bnnlib.book.claims.LIVE_CLAIMS`).

    A committed row that ``results/protocol.md`` decides (:mod:`bnnlib.repro.protocol`) is
    never filled by a notebook's record, even while its runs are incomplete.

    A live row's figure is the record the claim names (``"NN:name"``: notebook NN's record
    ``name``); its status is the record's own ``status`` field when it set one
    (a notebook knows whether its run was reduced), else computed by
    :func:`bnnlib.paper.status` as a full run. A claim with no record shows its
    ``missing`` status. Each row names the notebook (``section``) that shows it.
    """
    records = {f"{r.notebook[:2]}:{e['name']}": (r, e) for r in runs for e in r.records}
    decided = protocol.decided_claims(protocol.load())  # the protocol's rows: never filled live
    rows = []
    for r in committed_rows():
        row = summary_row(r)
        fill = r.status in _FILLABLE and r.key not in decided
        live = _full_live_record(r.key, runs, records) if fill else None
        if live is not None:  # a full measurement of this run (a GPU, PROFILE=full) fills it
            row.update(live)
        rows.append(row)
    for c in _paper.CLAIMS:
        if c.key not in LIVE_CLAIMS:
            continue
        found = records.get(c.record) if c.record else None
        paper_text = "—" if c.better == "report" else _claim_value(c.paper, c.unit)
        if c.paper == 0.0 and c.better == "at_most":  # a "no loss" claim: a gap of at most 0
            paper_text = '"no loss"'

        section = next(
            (r.notebook for r in runs if c.record and r.notebook[:2] == c.record[:2]), ""
        )
        row = {"key": c.key, "claim": c.claim, "paper": paper_text, "ours": "—", "how measured": "",
               "status": c.missing, "section": section, "details": "", "machines": []}  # fmt: skip
        if found is not None:
            run, e = found
            row.update(_live_how(run, e), ours=_claim_value(e["value"], c.unit))
            interval = records.get(f"{c.record}{INTERVAL_SUFFIX}")
            if interval is not None and c.paper == 0.0:  # a "no loss" gap: its 95% interval
                low, high = interval[1]["value"]
                row["ours"] = (
                    f"{100 * e['value']:+.2f} points (95% interval {100 * low:+.2f} to "
                    f"{100 * high:+.2f})"
                )
            row["status"] = e.get("status") or _paper.status(c.key, e["value"], reduced=False)
        rows.append(row)
    return rows


def _summary_markdown(rows: Sequence[dict[str, str]]) -> list[str]:
    lines = ["## The paper vs this book", ""]
    lines += [f"{_paper.CITATION}.", ""]
    return lines + summary_markdown(rows, SUMMARY_COLUMNS)


def _markdown(runs: Sequence[Run], profile: str) -> str:
    lines = [f"# Results of the book (profile `{profile}`)", ""]
    lines += [f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m bnnlib.book`.", ""]
    lines += _summary_markdown(summary_rows(runs))
    lines += ["## Appendix: the records of each notebook", ""]
    for run in runs:
        lines += [f"### {run.notebook}: {run.title} ({run.seconds:.0f} s)", ""]
        if run.parameters:
            lines += ["Parameters: " + ", ".join(f"`{k}={v}`" for k, v in run.parameters.items())]
            lines += [""]
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for e in run.records:
            cells = [cell_text(e.get(c)).replace("|", "\\|") for c in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _incomplete_markdown(failed: str, error: str, not_run: Sequence[str]) -> str:
    first = error.strip().splitlines()[0] if error.strip() else "see the log"
    text = f"> **INCOMPLETE**: notebook `{failed}` failed ({first})."
    if not_run:
        text += " Not run: " + ", ".join(f"`{n}`" for n in not_run) + "."
    return text + " The tables below hold only the notebooks that finished before it."


def write_results(
    runs: Sequence[Run],
    out_dir: Path,
    profile: str,
    *,
    failed: str | None = None,
    error: str = "",
    not_run: Sequence[str] = (),
) -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``out_dir``, gathering every run's records.

    ``failed`` names a notebook that failed (``error`` its message, ``not_run`` the notebooks
    after it): both files then say the book is incomplete (``"complete": false``).
    """
    data = {
        "profile": profile,
        "complete": failed is None,
        "failed": None if failed is None else {"notebook": failed, "error": error},
        "not_run": list(not_run),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hardware": hardware(),
        "summary": summary_rows(runs),
        "notebooks": [
            {
                "notebook": r.notebook,
                "title": r.title,
                "seconds": round(r.seconds, 2),
                "parameters": r.parameters,
                "records": r.records,
            }
            for r in runs
        ],
    }
    json_path = atomic_write(out_dir / "results.json", json.dumps(data, indent=1).encode())
    md = _markdown(runs, profile)
    if failed is not None:
        title_line, rest = md.split("\n\n", 1)  # the banner goes right under the title
        md = "\n\n".join([title_line, _incomplete_markdown(failed, error, not_run), rest])
    md_path = atomic_write(out_dir / "results.md", md.encode())
    return json_path, md_path
