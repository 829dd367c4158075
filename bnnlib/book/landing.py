"""The site's first page, "the paper vs this book", and its appendix page of records.

:func:`results_page` writes the landing page (MyST Markdown holding one HTML block for the
table, so that each cell, badge and fold is exactly what is written here):

* a three-line **verdict** generated from the rows' statuses (:func:`verdict`), then where to
  start: a learner's order of the notebooks (:data:`LEARNER_ORDER`) and the draw-a-digit page;
* the **table**, one row per claim: the claim links to the section of the notebook that shows
  it (:data:`SECTIONS`, the anchor Sphinx gives that heading), the status is a badge coloured
  by its kind (:data:`STATUS_KIND`: green reproduced, teal consistent, red not reproduced, amber
  reduced run, grey measured or computed, blue not run or no data), and "details" jumps to
  the row's fold just under the table;
* the **folds**, one per row: its details with every command set as code (never touched by
  Sphinx's smart quotes: ``--out`` stays ``--out``), each committed run folder or benchmark
  file linked to its copy shipped with the site (:func:`shipped_results`), a run's command read
  from its ``run.json``, and its machines;
* the status legend.

The records of every notebook go to their own page (:func:`records_page`). Below 700 px the
table turns into one card per claim (:data:`CSS`), so that a phone shows every column.

The statuses are decided elsewhere (:func:`bnnlib.paper.status`, :mod:`bnnlib.book.claims`);
this module only shows them.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnnlib import paper, results
from bnnlib.book.claims import row_details
from bnnlib.book.results import COLUMNS, SUMMARY_COLUMNS, Run, cell_text, summary_rows

__all__ = [
    "CSS",
    "CSS_FILE",
    "LEARNER_ORDER",
    "RECORDS_PAGE",
    "SECTIONS",
    "SHORT",
    "STATUS_KIND",
    "commands_as_code",
    "details_html",
    "heading_id",
    "learner_order",
    "records_page",
    "results_page",
    "ship_results",
    "shipped_results",
    "verdict",
]

#: The page of every notebook's records (the appendix), beside ``index``.
RECORDS_PAGE = "records"
#: The site's style sheet, under ``_static/``.
CSS_FILE = "bnn.css"

#: The colour kind of each status: the CSS class ``bnn-status-<kind>``.
STATUS_KIND = {
    "reproduced": "reproduced",
    "consistent": "consistent",
    "better than the paper": "better",
    "not reproduced": "failed",
    "reduced run": "reduced",
    "computed": "neutral",
    "measured": "neutral",
    "not run yet": "notrun",
    "not run yet: needs a GPU": "notrun",
    "data not available here": "notrun",
}

#: The heading (its start) of the notebook section that shows each claim.
SECTIONS = {
    "table1_mnist_torch7": "The committed runs",
    "table1_mnist_theano": "Table 1: test error",
    "table1_svhn": "Table 1: test error",
    "table1_cifar10": "Figure 1 on a ConvNet",
    "memory_ratio": "Memory",
    "gpu_xnor_over_baseline": "The GPU kernels",
    "gpu_xnor_over_cublas": "The GPU kernels",
    "gpu_mlp_over_baseline": "The GPU kernels",
    "cpu_xnor_over_baseline": "Section 4 on this CPU",
    "cpu_xnor_over_blas": "Section 4 on this CPU",
    "cpu_mlp_over_baseline": "Section 4 on this CPU",
    "energy_mac": "Pricing the binary operations",
    "packed_equals_float": "The committed models",
    "cpu_latency": "CPU: one image at a time",
    "unique_filters": "Unique kernels per layer",
    "shift_bn_no_loss": "Training with each",
    "shift_adamax_no_loss": "Adam vs shift-based AdaMax",
    "no_loss_full_length": "The full-length test",
}

#: The order a learner can follow: the packed model (07) before the kernels that run it (06).
LEARNER_ORDER = ("01", "02", "03", "04", "05", "07", "06", "08", "09", "10")

#: The site's style: the landing page's status colours, full-width table and cards on a phone;
#: printed output lines that wrap inside the page instead of running off its right edge.
CSS = """
.bd-main .bd-content .bd-article-container:has(.bnn-landing),
.bd-container .bd-container__inner:has(.bnn-landing) { max-width: none; }
.bnn-verdict { font-size: 1.05em; line-height: 1.5; margin: 0 0 1em 0; }
.bnn-verdict li { margin: 0.15em 0; }
table.bnn-claims { width: 100%; border-collapse: collapse; font-size: 0.92em; }
table.bnn-claims th, table.bnn-claims td {
  padding: 0.35em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; text-align: left;
}
table.bnn-claims th { background: #f3f4f6; }
table.bnn-claims td.bnn-claim { min-width: 16em; }
table.bnn-claims td.bnn-paper { white-space: nowrap; }
.bnn-status { display: inline-block; padding: 0.1em 0.55em; border-radius: 0.8em;
  font-size: 0.85em; font-weight: 600; white-space: nowrap; color: #fff; }
.bnn-status-reproduced { background: #1a7f37; }
.bnn-status-consistent { background: #0f766e; }
.bnn-status-better { background: #116329; outline: 2px solid #4ac26b; }
.bnn-status-failed { background: #cf222e; }
.bnn-status-reduced { background: #f59e0b; color: #1f2328; }
.bnn-status-neutral { background: #e5e7eb; color: #1f2328; }
.bnn-status-notrun { background: #dbeafe; color: #1e3a8a; }
details.bnn-row { margin: 0.3em 0; padding: 0.3em 0.6em; border-left: 4px solid #ddd; }
details.bnn-row[open] { background: #fafafa; }
details.bnn-row summary { cursor: pointer; }
details.bnn-row code { white-space: pre-wrap; word-break: break-word; }
.bnn-legend { font-size: 0.9em; list-style: none; padding-left: 0; }
.bnn-legend li { margin: 0.2em 0; }
div.cell_output div.output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
@media (max-width: 700px) {
  table.bnn-claims thead { display: none; }
  table.bnn-claims tr { display: block; border: 1px solid #ddd; border-radius: 6px;
    margin: 0 0 0.8em 0; padding: 0.3em; }
  table.bnn-claims td { display: block; border: none; padding: 0.15em 0.3em; min-width: 0; }
  table.bnn-claims td.bnn-claim { min-width: 0; font-weight: 600; }
  table.bnn-claims td[data-label]:not(.bnn-claim)::before {
    content: attr(data-label) ": "; color: #57606a; font-weight: 400; }
  table.bnn-claims td.bnn-paper { white-space: normal; }
}
"""


def learner_order(runs: Sequence[Run]) -> list[Run]:
    """``runs`` in :data:`LEARNER_ORDER` (notebooks it does not name keep their place after)."""
    rank = {n: i for i, n in enumerate(LEARNER_ORDER)}
    return sorted(runs, key=lambda r: rank.get(r.notebook[:2], len(rank)))


def heading_id(title: str) -> str:
    """The anchor Sphinx gives a section headed ``title`` (docutils' ``make_id``)."""
    from docutils.nodes import make_id

    return make_id(title)


def _headings(run: Run) -> list[str]:
    """The section headings (## and ###) of an executed notebook's Markdown cells."""
    from bnnlib.book.notebooks import read_notebook

    found = []
    try:
        cells = read_notebook(run.executed).cells
    except (OSError, ValueError):
        return found
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in str(cell.get("source", "")).splitlines():
                m = re.match(r"#{2,3}\s+(.*\S)", line)
                if m:
                    found.append(m.group(1))
    return found


def _section_link(row: Mapping[str, Any], headings: Mapping[str, list[str]]) -> str | None:
    """``NN_name.html#section`` for a row whose notebook is in the site, else None."""
    page = row.get("section")
    if page not in headings:
        return None
    start = SECTIONS.get(str(row.get("key")), "")
    title = next((h for h in headings[page] if start and h.startswith(start)), None)
    return f"{page}.html" + (f"#{heading_id(_plain_heading(title))}" if title else "")


def _plain_heading(title: str) -> str:
    """A Markdown heading as Sphinx reads its text (code spans and emphasis unwrapped)."""
    return re.sub(r"[`*]", "", title)


# --- the verdict -----------------------------------------------------------------------------

#: A few words per claim, for the verdict.
SHORT = {
    "table1_mnist_torch7": "Table 1 MNIST, Torch7",
    "table1_mnist_theano": "Table 1 MNIST, Theano",
    "table1_svhn": "Table 1 SVHN",
    "table1_cifar10": "Table 1 CIFAR-10",
    "memory_ratio": "32× less memory",
    "gpu_xnor_over_baseline": "GPU XNOR vs baseline kernel",
    "gpu_xnor_over_cublas": "GPU XNOR vs cuBLAS",
    "gpu_mlp_over_baseline": "GPU MNIST MLP",
    "cpu_xnor_over_baseline": "CPU XNOR vs baseline kernel",
    "cpu_xnor_over_blas": "CPU XNOR vs BLAS",
    "cpu_mlp_over_baseline": "CPU MNIST MLP",
    "energy_mac": "energy per MAC",
    "packed_equals_float": "packed = float",
    "cpu_latency": "CPU latency",
    "unique_filters": "42% unique filters",
    "shift_bn_no_loss": "shift batch norm, no loss",
    "shift_adamax_no_loss": "shift AdaMax, no loss",
    "no_loss_full_length": "no loss, full length (E2)",
}
#: Why a row was not run, in the verdict's words.
_NOT_RUN = {
    "not run yet: needs a GPU": "need a GPU",
    "data not available here": "need data not available here",
    "not run yet": "not run yet",
}


def _names(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(SHORT.get(str(r.get("key")), str(r["claim"])) for r in rows)


def verdict(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Three lines generated from the rows' statuses: what matches the paper (reproduced,
    consistent, better) and what does not; what is only a reduced run; what has no figure of
    the paper to meet, and what was not run and why. Each group counts its rows and names
    them."""

    def having(*statuses: str) -> list[Mapping[str, Any]]:
        return [r for r in rows if r.get("status") in statuses]

    def group(found: Sequence[Mapping[str, Any]], words: str) -> str:
        return f"**{len(found)} {words}**" + (f" ({_names(found)})" if found else "")

    matched = [
        group(having("reproduced"), "reproduced"),
        group(having("consistent"), "consistent"),
    ]
    if having("better than the paper"):
        matched.append(group(having("better than the paper"), "better than the paper"))
    reasons = {}
    for status, words in _NOT_RUN.items():
        found = having(status)
        if found:
            reasons[words] = len(found)
    not_run = ", ".join(f"{n} {w}" for w, n in reasons.items()) or "none"
    return [
        "Against the paper: "
        + "; ".join(matched)
        + "; "
        + group(having("not reproduced"), "not reproduced")
        + ".",
        "Reduced runs here, not comparable yet: "
        + group(having("reduced run"), "row" if len(having("reduced run")) == 1 else "rows")
        + ".",
        "No figure of the paper to meet: "
        + group(having("measured", "computed"), "measured or computed")
        + f". Not run: {not_run}.",
    ]


# --- commands and committed files ------------------------------------------------------------

#: A command in a row's details: ``python -m module args`` or ``make target``, up to a ``;``,
#: a comma, a bracket or the end.
_COMMAND = re.compile(
    r"(?:python -m [\w.]+|make [\w-]+)(?:[ ][^;,()\s][^;,()]*?)?(?=[;,()]|:\s|\.\s|\.$|$)"
)
#: A committed run folder or benchmark file named in a row's details.
_RESULT = re.compile(r"results/([\w.-]+?)(/|\.json)")


def commands_as_code(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, is_command) pieces, each command whole."""
    pieces, last = [], 0
    for m in _COMMAND.finditer(text):
        if m.start() > last:
            pieces.append((text[last : m.start()], False))
        pieces.append((m.group(0).rstrip(), True))
        last = m.end()
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces


def shipped_results(root: Path | None = None) -> dict[str, list[str]]:
    """The committed files the site ships (``results/NAME/run.json``, ``history.json`` and the
    benchmark files ``results/*.json``), as ``{name: [file paths relative to results/]}``."""
    root = results.results_dir() if root is None else Path(root)
    found: dict[str, list[str]] = {}
    if root is None:
        return found
    for path in sorted(root.glob("*.json")):
        found[path.name] = [path.name]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [f"{folder.name}/{n}" for n in ("run.json", "history.json")]
        files = [f for f in files if (root / f).is_file()]
        if files:
            found[folder.name] = files
    return found


def ship_results(dest: Path, root: Path | None = None) -> list[Path]:
    """Copy :func:`shipped_results` into ``dest`` (the site's ``_static/results``)."""
    root = results.results_dir() if root is None else Path(root)
    copied: list[Path] = []
    if root is None:
        return copied
    for files in shipped_results(root).values():
        for f in files:
            target = Path(dest) / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f, target)
            copied.append(target)
    return copied


def _link_results(text: str, shipped: Mapping[str, list[str]], commands: dict[str, str]) -> str:
    """HTML of plain ``text`` with each committed run folder and benchmark file linked to its
    shipped copy; a run's command (from its run.json) is collected into ``commands``."""
    out, last = [], 0
    for m in _RESULT.finditer(text):
        name = m.group(1) + (".json" if m.group(2) == ".json" else "")
        if name not in shipped:
            continue
        out.append(html.escape(text[last : m.end()]))
        links = ", ".join(
            f'<a href="_static/results/{f}">{html.escape(Path(f).name)}</a>' for f in shipped[name]
        )
        out.append(f" [{links}]")
        run = results.load_run(m.group(1)) if m.group(2) == "/" else None
        if run is not None and run.run.get("command"):
            commands.setdefault(m.group(1), results.readable_command(str(run.run["command"])))
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def details_html(text: str, shipped: Mapping[str, list[str]]) -> str:
    """A row's details as HTML: commands as ``<code>``, committed files linked, and the command
    of each linked run (from its run.json) as code after it."""
    commands: dict[str, str] = {}
    parts = []
    for piece, is_command in commands_as_code(text):
        if is_command:
            parts.append(f"<code>{html.escape(piece)}</code>")
        else:
            parts.append(_link_results(piece, shipped, commands))
    body = "".join(parts)
    for name, command in commands.items():
        body += f"<br>Command of <code>results/{html.escape(name)}/</code>: "
        body += f"<code>{html.escape(command)}</code>"
    return body


# --- the pages -------------------------------------------------------------------------------


def _badge(status: str) -> str:
    kind = STATUS_KIND.get(status, "neutral")
    return f'<span class="bnn-status bnn-status-{kind}">{html.escape(status)}</span>'


def _md(text: Any) -> str:
    return re.sub(r"([\\`*_{}\[\]<>()#+!|$~&])", r"\\\1", str(text)).replace("\n", " ")


def results_page(runs: Sequence[Run], profile: str, built: str = "") -> str:
    """The site's first page (MyST Markdown): the verdict, where to start, the table of claims
    (each linked to its notebook section, its status coloured), one fold per row with its
    details, the legend. The records are on :func:`records_page`."""
    rows = summary_rows(runs)
    headings = {r.notebook: _headings(r) for r in runs}
    titles = {r.notebook[:2]: (r.notebook, r.title or r.notebook) for r in runs}
    shipped = shipped_results()
    lines = ["# The paper vs this book", ""]
    lines += ['<div class="bnn-landing">', "", '<ul class="bnn-verdict">']
    lines += [f"<li>{_inline(line)}</li>" for line in verdict(rows)]
    lines += ["</ul>", "", "</div>", ""]
    order = [titles[n] for n in LEARNER_ORDER if n in titles]
    start = ", ".join(f"[{n[:2]}]({n}.ipynb)" for n, _ in order)
    lines += [
        f"**Start here.** A learner's order: {start} (07, the packed model, before 06, the "
        "kernels that run it). "
        + (
            "Or start with the hook: [draw a digit](10_draw_a_digit.ipynb) and watch the "
            "1.3 MB packed network classify it in your browser."
            if "10" in titles
            else ""
        ),
        "",
        f"{_md(paper.CITATION)}. Profile `{profile}`"
        + (f", built {built}" if built else "")
        + " by `python -m bnnlib.book`. Each claim links to the notebook section that shows it; "
        f"every record of every notebook is on [its own page]({RECORDS_PAGE}.md).",
        "",
    ]
    lines += ["```{raw} html", '<div class="bnn-landing">', _table_html(rows, headings), "</div>"]
    lines += ["```", "", "## Details of each row", ""]
    lines += ["```{raw} html", '<div class="bnn-landing">']
    for i, row in enumerate(rows, start=1):
        text = row_details(row)
        lines.append(
            f'<details class="bnn-row" id="row-{i}"><summary>{i}. '
            f"{html.escape(str(row['claim']))} {_badge(str(row['status']))}</summary>"
            f"<p>{details_html(text, shipped) if text else 'No details.'}</p></details>"
        )
    lines += [_OPEN_ROW, "</div>", "```", "", "```{raw} html", _legend_html(), "```", ""]
    return "\n".join(lines)


#: Following a row's "details" link opens its fold.
_OPEN_ROW = (
    "<script>function bnnOpenRow() { const d = document.getElementById("
    "decodeURIComponent(location.hash.slice(1))); if (d && d.tagName === 'DETAILS') "
    "d.open = true; } window.addEventListener('hashchange', bnnOpenRow); "
    "document.addEventListener('DOMContentLoaded', bnnOpenRow);</script>"
)


def _legend_html() -> str:
    """The status legend: each status as its coloured badge and its meaning."""
    items = "".join(
        f"<li>{_badge(s)} {html.escape(paper.STATUS_LEGEND[s])}</li>" for s in paper.STATUSES
    )
    return f'<ul class="bnn-legend">{items}</ul>'


def _inline(markdown: str) -> str:
    """The few Markdown marks of the verdict and legend lines (``**b**``, ``*i*``) as HTML."""
    text = html.escape(markdown, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)


def _table_html(rows: Sequence[Mapping[str, Any]], headings: Mapping[str, list[str]]) -> str:
    names = ("Claim", "Paper", "Ours", "How measured", "Status")
    labels = dict(zip(SUMMARY_COLUMNS, names, strict=True))
    head = "".join(f"<th>{labels[c]}</th>" for c in SUMMARY_COLUMNS)
    out = [f'<table class="bnn-claims"><thead><tr>{head}</tr></thead><tbody>']
    for i, row in enumerate(rows, start=1):
        cells = []
        for c in SUMMARY_COLUMNS:
            label = labels[c]
            if c == "status":
                cells.append(f'<td data-label="{label}">{_badge(str(row["status"]))}</td>')
                continue
            text = html.escape(str(row.get(c) or "—"))
            cls = ""
            if c == "claim":
                cls = ' class="bnn-claim"'
                link = _section_link(row, headings)
                if link:
                    text = f'<a href="{link}">{text}</a>'
            if c == "paper":
                cls = ' class="bnn-paper"'
            if c == "how measured":
                text += f' <a href="#row-{i}" class="bnn-details-link">details</a>'
            cells.append(f'<td{cls} data-label="{label}">{text}</td>')
        out.append(f'<tr id="claim-{i}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def records_page(runs: Sequence[Run]) -> str:
    """The appendix (MyST Markdown): the parameters and records of every notebook."""
    lines = ["# The records of each notebook", ""]
    lines += [
        "Every value the notebooks recorded with `bnnlib.book.record.record` in this build, "
        "with the paper's figure where it gives one; also in `results.json` beside the site.",
        "",
    ]
    for r in runs:
        lines += [f"## {_md(r.notebook)}", ""]
        lines += [f"[{_md(r.title or r.notebook)}]({r.notebook}.ipynb), {r.seconds:.0f} s.", ""]
        if r.parameters:
            params = ", ".join(f"`{k}={v}`" for k, v in r.parameters.items())
            lines += [f"Parameters: {params}", ""]
        if not r.records:
            lines += ["No records.", ""]
            continue
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for e in r.records:
            lines.append("| " + " | ".join(_md(cell_text(e.get(c))) for c in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)
