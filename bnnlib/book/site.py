"""The book's offline HTML: one page per executed notebook and an index of the results.

nbconvert's lab template without its script tags that load from CDNs (require.js, MathJax,
mermaid, the widget manager); every page loads the one shared copy of plotly.js beside it
(:data:`PLOTLY_JS`), and :func:`offline_problems` checks that nothing comes from the network.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Sequence
from pathlib import Path

from bnnlib.book.claims import legend_line, row_details
from bnnlib.book.notebooks import BookError, read_notebook, title
from bnnlib.book.results import COLUMNS, SUMMARY_COLUMNS, Run, cell_text, summary_rows
from bnnlib.files import atomic_write

__all__ = ["PLOTLY_JS", "export_html", "offline_problems", "index_html"]


# The lab template without its script tags that load from CDNs (require.js, MathJax,
# mermaid, the widget manager). Plotly figures use the one shared copy of plotly.js.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

_REMOTE = [
    re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
    re.compile(r"<link[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//[^\"')\s]*", re.I),
    re.compile(r"\bimport\s*\(\s*[\"'](?:https?:)?//[^\"']*", re.I),
    re.compile(r"<iframe[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
]


def offline_problems(page: str) -> list[str]:
    """Every place where ``page`` would load something from the network (empty when offline)."""
    return [m.group(0)[:160] for rx in _REMOTE for m in rx.finditer(page)]


def _static_outputs(nb) -> None:
    """Keep the static fallback of widget outputs: an HTML export cannot run a kernel."""
    nb.metadata.pop("widgets", None)
    widget = "application/vnd.jupyter.widget-view+json"
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if widget in data and "text/html" in data:
                del data[widget]


PLOTLY_JS = "plotly.min.js"


def _shared_plotly_js(html_dir: Path) -> None:
    """One offline copy of plotly.js beside the pages (written once, when missing or stale)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs().encode()
    path = html_dir / PLOTLY_JS
    if not path.exists() or path.stat().st_size != len(js):
        atomic_write(path, js)


def _with_plotly_js(body: str) -> str:
    tag = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
    head_end = body.find("</head>")
    if head_end < 0:
        raise BookError("the exported page has no </head> to load plotly.js from")
    return body[:head_end] + tag + body[head_end:]


def export_html(executed: Path, html_dir: Path) -> Path:
    """``executed`` notebook to ``html_dir/<name>.html``, offline.

    Every page loads the one shared ``plotly.min.js`` in ``html_dir`` (5 MB once,
    not once per page); nothing comes from the network.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = read_notebook(Path(executed))
    _static_outputs(nb)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"bnnlib_offline.html.j2": _TEMPLATE})],
        template_file="bnnlib_offline.html.j2",
    )
    name = Path(executed).stem
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title(nb) or name}})
    body = _with_plotly_js(body)
    problems = offline_problems(body)
    if problems:
        raise BookError(f"{name}.html would load from the network: {problems[:3]}")
    _shared_plotly_js(html_dir)
    return atomic_write(html_dir / f"{name}.html", body.encode("utf-8"))


def index_html(runs: Sequence[Run], pages: dict[str, Path], profile: str) -> str:
    esc = html.escape
    items = "".join(
        f'<li><a href="{esc(pages[r.notebook].name)}">{esc(r.notebook)}</a>: '
        f"{esc(r.title)} <small>({r.seconds:.0f} s)</small></li>"
        for r in runs
        if r.notebook in pages
    )
    tables = []
    for r in runs:
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(cell_text(e.get(c)))}</td>" for c in COLUMNS) + "</tr>"
            for e in r.records
        )
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        tables.append(
            f"<h3>{esc(r.notebook)}</h3><table><tr>{head}</tr>{rows}</table>" if rows else ""
        )

    def cell(row: dict, column: str) -> str:
        text = esc(row[column])
        page = pages.get(row.get("section", ""))
        if column == "claim" and page is not None:  # the notebook that measured it
            text = f'<a href="{esc(page.name)}">{text}</a>'
        if column == "how measured" and row_details(row):
            text += f"<details><summary>more</summary>{esc(row_details(row))}</details>"
        return f"<td>{text}</td>"

    summary = "".join(
        f'<tr class="{esc(row["status"].split(":")[0].replace(" ", "-"))}">'
        + "".join(cell(row, c) for c in SUMMARY_COLUMNS)
        + "</tr>"
        for row in summary_rows(runs)
    )
    legend = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(legend_line()))  # one line
    legend = re.sub(r"\*(.+?)\*", r"<i>\1</i>", legend)
    summary_head = "".join(f"<th>{esc(c)}</th>" for c in SUMMARY_COLUMNS)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:90%;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "tr.reproduced td:last-child{background:#d9f2d9}"
        "tr.not-reproduced td:last-child{background:#f8d7d7}"
        "tr.reduced-run td:last-child{background:#fff3cd}"
        "tr.better-than-the-paper td:last-child{background:#c9ecf5}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Binarized Neural Networks: the book</title><style>{style}</style></head><body>"
        "<h1>Binarized Neural Networks: the book</h1>"
        "<p>Courbariaux, Hubara, Soudry, El-Yaniv, Bengio (2016), arXiv 1602.02830. "
        f"Profile <code>{esc(profile)}</code>, built {time.strftime('%Y-%m-%d %H:%M')}.</p>"
        f'<h2 id="summary">The paper vs this book</h2>'
        f"<table><tr>{summary_head}</tr>{summary}</table><p>{legend}</p>"
        f"<h2>Notebooks</h2><ol>{items}</ol>"
        f"<h2>Appendix: the records of each notebook</h2>{''.join(tables)}</body></html>"
    )
