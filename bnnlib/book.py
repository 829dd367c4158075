"""``make book``: run the book's notebooks, collect their results, export them to offline HTML.

::

    python -m bnnlib.book [--profile small|full|tests] [--only 01 [--only 03]] [--out build/book]
                          [--timeout SECONDS]

For each ``book/NN_*.ipynb``, in order:

1. parameters: ``small`` keeps the notebook's defaults (about a minute each on a
   CPU), ``full`` injects ``book/params/<notebook>.full.yaml`` (paper scale),
   ``tests`` injects ``book/params/<notebook>.tests.yaml`` when there is one.
   Every injected name must exist in the notebook's cell tagged ``parameters``;
   :func:`parameters` parses that cell (``NAME = literal  # comment`` per line).
2. execution with papermill in a fresh kernel of this Python (a kernelspec
   ``bnnlib`` is installed into ``sys.prefix`` when missing), the working
   directory being ``book/``, ``BNN_RECORD_FILE`` pointing at
   ``<out>/records/<notebook>.json`` (see :mod:`bnnlib.record`) and
   ``BNN_DATA_DIR`` made absolute. The executed copy is ``<out>/<notebook>.ipynb``.
   A failing cell stops the run, naming the notebook and the cell; so does a cell
   running longer than ``--timeout`` seconds (papermill's per-cell
   ``execution_timeout``; default :data:`DEFAULT_TIMEOUT` for the ``small`` and
   ``tests`` profiles, none for ``full``, whose training cells run for hours;
   0 for none), so a hung cell cannot hang the book.
3. results: every record goes to ``<out>/results.json`` and ``<out>/results.md``
   (value, the paper's value, data, schedule, hardware, seed). When a notebook
   fails, the results of the notebooks finished before it are still written,
   marked incomplete and naming the failed notebook and those not run (an older
   ``results.md`` never stays in place looking current); the HTML is not exported.
4. HTML: ``<out>/html/<notebook>.html`` and ``<out>/html/index.html``, with
   plotly.js embedded and no CDN reference (nbconvert's require.js, MathJax,
   mermaid and widget-manager script tags are left out; :func:`offline_problems`
   checks the result).
"""

from __future__ import annotations

import argparse
import ast
import html
import io
import json
import os
import re
import subprocess
import sys
import time
import tokenize
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paper as _paper
from . import record as _record
from .machine import atomic_write, hardware
from .viz import BOOK_ENV

__all__ = [
    "BOOK_DIR",
    "PROFILES",
    "BookError",
    "Run",
    "notebooks",
    "title",
    "parameters_source",
    "parameters",
    "profile_parameters",
    "kernel_name",
    "run_notebook",
    "export_html",
    "offline_problems",
    "write_results",
    "summary_rows",
    "DEFAULT_TIMEOUT",
    "main",
]

BOOK_DIR = Path(__file__).resolve().parent.parent / "book"
#: Seconds one cell may run before the book stops it (``--timeout``; 0 for no limit), for the
#: small and tests profiles; the full profile has no default limit (paper-scale training).
DEFAULT_TIMEOUT = 1800
PROFILES = ("small", "full", "tests")
KERNEL = "bnnlib"
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class BookError(RuntimeError):
    """A notebook, its parameters or its export is wrong; the message names it."""


@dataclass
class Run:
    """One executed notebook: where its copy is, what it recorded, how long it took."""

    notebook: str
    title: str
    executed: Path
    seconds: float
    parameters: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


# --- notebooks and their parameters -----------------------------------------------------


def notebooks(book_dir: Path = BOOK_DIR, only: Sequence[str] | None = None) -> list[Path]:
    """``book_dir/NN_*.ipynb`` in order; ``only`` keeps those whose number or name is listed."""
    found = sorted(p for p in Path(book_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {w.strip() for item in only for w in item.split(",") if w.strip()}
        found = [p for p in found if p.stem[:2] in wanted or p.stem in wanted]
        if not found:
            raise BookError(f"--only {sorted(wanted)} matches no notebook in {book_dir}")
    return found


def _read_nb(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def title(nb) -> str:
    """The first markdown heading of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def parameters_source(nb, name: str = "notebook") -> str:
    """The source of the one cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise BookError(f"{name}: expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0].source


def parameters(source: str, name: str = "notebook") -> dict[str, tuple[Any, str]]:
    """Parse a parameters cell: ``{NAME: (value, comment)}``.

    Each line is blank, a comment, or ``NAME = literal  # comment`` with NAME in
    UPPER_CASE, a Python literal and a comment saying what it is.
    """
    found: dict[str, tuple[Any, str]] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        code, comment = _split_comment(line)
        if not code:
            continue
        where = f"{name}, parameters cell line {number} ({line.strip()!r})"
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            raise BookError(f"{where}: not Python ({e.msg})") from e
        stmt = tree.body[0] if len(tree.body) == 1 else None
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
            raise BookError(f"{where}: expected one assignment NAME = literal per line")
        target = stmt.targets[0]
        if not (isinstance(target, ast.Name) and _NAME.match(target.id)):
            raise BookError(f"{where}: parameter names are UPPER_CASE")
        try:
            value = ast.literal_eval(stmt.value)
        except ValueError as e:
            raise BookError(f"{where}: the value must be a literal (number, string, ...)") from e
        if not comment:
            raise BookError(f"{where}: each parameter needs a comment saying what it is")
        found[target.id] = (value, comment)
    return found


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment text) of one line, using the tokenizer so '#' inside strings is kept."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, SyntaxError):
        return line.strip(), ""
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            return line[: tok.start[1]].strip(), tok.string.lstrip("#").strip()
    return line.strip(), ""


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def profile_parameters(path: Path, profile: str) -> dict[str, Any]:
    """The parameters ``profile`` injects into notebook ``path`` (checked against its cell)."""
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if profile == "small":
        return {}
    file = path.parent / "params" / f"{path.stem}.{profile}.yaml"
    if not file.exists():
        if profile == "full":
            print(f"  note: no {file.name}; the notebook's defaults are used", flush=True)
        return {}
    import yaml

    loaded = yaml.safe_load(file.read_text()) or {}
    if not isinstance(loaded, dict):
        raise BookError(f"{file}: expected a mapping NAME: value")
    declared = parameters(parameters_source(_read_nb(path), path.name), path.name)
    for name, value in loaded.items():
        if name not in declared:
            raise BookError(
                f"{file}: {name!r} is not a parameter of {path.name} "
                f"(its parameters cell declares {', '.join(declared)})"
            )
        if not _compatible(declared[name][0], value):
            raise BookError(
                f"{file}: {name} = {value!r} does not match the type of the notebook's "
                f"default {declared[name][0]!r}"
            )
    return loaded


# --- execution --------------------------------------------------------------------------------


def kernel_name() -> str:
    """A kernelspec that runs this Python: ``bnnlib`` (installed into sys.prefix if missing)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def runs_this_python(name: str) -> bool:
        try:
            argv = KernelSpecManager().get_kernel_spec(name).argv
        except NoSuchKernel:
            return False
        exe = argv[0] if argv else ""
        # jupyter_client replaces a bare "python" with sys.executable when it launches.
        if exe in ("python", f"python{sys.version_info[0]}"):
            return True
        return Path(exe).exists() and Path(exe).resolve() == Path(sys.executable).resolve()

    if runs_this_python(KERNEL):
        return KERNEL
    cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL]
    cmd += ["--display-name", "Python (bnnlib)"]
    subprocess.run(cmd, check=True, capture_output=True)
    if not runs_this_python(KERNEL):
        raise BookError(
            f"a kernelspec named {KERNEL!r} that runs another Python shadows the one in "
            f"{sys.prefix}; remove it (jupyter kernelspec remove {KERNEL}) and re-run"
        )
    return KERNEL


@contextmanager
def _environment(record_file: Path):
    """BNN_RECORD_FILE for this notebook, BNN_DATA_DIR absolute (the kernel runs in book/),
    BNN_BOOK_RUN so figures carry HTML for the exported pages (:mod:`bnnlib.viz`)."""
    saved = {k: os.environ.get(k) for k in (_record.ENV_VAR, "BNN_DATA_DIR", BOOK_ENV)}
    os.environ[_record.ENV_VAR] = str(record_file)
    os.environ[BOOK_ENV] = "1"
    if saved["BNN_DATA_DIR"]:
        os.environ["BNN_DATA_DIR"] = str(Path(saved["BNN_DATA_DIR"]).expanduser().resolve())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure(path: Path, executed: Path, err: Exception) -> BookError:
    source = getattr(err, "source", "") or ""
    index = "?"
    for i, cell in enumerate(_read_nb(path).cells):
        if source and cell.source == source:
            index = str(i)
    count = getattr(err, "exec_count", None)
    excerpt = "\n".join("    " + line for line in source.splitlines()[:8])
    what = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
    return BookError(
        f"{path.name} failed in cell {index} (execution count {count}):\n{excerpt}\n"
        f"  {what}\n  the executed copy with the traceback: {executed}"
    )


def run_notebook(
    path: Path,
    out_dir: Path,
    profile: str = "small",
    *,
    extra_parameters: dict[str, Any] | None = None,
    kernel: str | None = None,
    log_output: bool = False,
    timeout: int | None = None,
) -> Run:
    """Execute one notebook with papermill into ``out_dir``; returns its :class:`Run`.

    Raises :class:`BookError` naming the notebook and the failing cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Absolute: the kernel runs in book/, so a relative record path would land elsewhere.
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    params = {**profile_parameters(path, profile), **(extra_parameters or {})}
    executed = out_dir / path.name
    record_file = out_dir / "records" / f"{path.stem}.json"
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with _environment(record_file):
        try:
            papermill.execute_notebook(
                str(path),
                str(executed),
                parameters=params,
                kernel_name=kernel or kernel_name(),
                language="python",
                cwd=str(path.parent),
                progress_bar=False,
                log_output=log_output,
                execution_timeout=timeout,
            )
        except PapermillExecutionError as err:
            raise _failure(path, executed, err) from None
        except Exception as err:  # a dead kernel, a timeout
            raise _failure(path, executed, err) from err
    seconds = time.perf_counter() - start
    records = _record.read(record_file) if record_file.exists() else []
    nb_title = title(_read_nb(path))
    return Run(path.stem, nb_title, executed, seconds, params, records)


# --- HTML export --------------------------------------------------------------------------

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

    nb = _read_nb(Path(executed))
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


# --- results ------------------------------------------------------------------------------

_COLUMNS = (
    "name", "value", "unit", "paper", "status", "data", "schedule", "hardware", "seed", "note",
)  # fmt: skip


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


SUMMARY_COLUMNS = ("claim", "paper", "ours", "how measured", "status")


def _claim_value(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if unit == "fraction" else f"{v:.3g}{unit if unit == 'x' else ''}"
    return str(v)


def summary_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    """ "The paper vs this book": one row per :data:`bnnlib.paper.CLAIMS` entry.

    Our figure is the record the claim names (``"NN:name"``: notebook NN's record
    ``name``); its status is the record's own ``status`` field when it set one
    (a notebook knows whether its run was reduced), else computed by
    :func:`bnnlib.paper.status` as a full run. A claim with no record shows its
    ``missing`` status (e.g. "not run yet: needs a GPU").
    """
    records = {f"{r.notebook[:2]}:{e['name']}": (r, e) for r in runs for e in r.records}
    rows = []
    for c in _paper.CLAIMS:
        found = records.get(c.record) if c.record else None
        paper_text = "—" if c.better == "report" else _claim_value(c.paper, c.unit)
        if found is None:
            ours, how, status = "—", "", c.missing
        else:
            run, e = found
            ours = _claim_value(e["value"], c.unit)
            parts = [e.get("data"), e.get("schedule"), e.get("hardware")]
            parts += [f"seed {e['seed']}" if e.get("seed") is not None else None, e.get("note")]
            how = f"notebook {run.notebook}: " + "; ".join(str(p) for p in parts if p)
            status = e.get("status") or _paper.status(c.key, e["value"], reduced=False)
        rows.append(
            {"claim": c.claim, "paper": paper_text, "ours": ours, "how measured": how,
             "status": status}
        )  # fmt: skip
    return rows


def _summary_markdown(rows: Sequence[dict[str, str]]) -> list[str]:
    lines = ["## The paper vs this book", ""]
    lines += [f"{_paper.CITATION}. Status: " + ", ".join(_paper.STATUSES) + ".", ""]
    lines += ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in SUMMARY_COLUMNS) + " |")
    return [*lines, ""]


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
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for e in run.records:
            cells = [_cell(e.get(c)).replace("|", "\\|") for c in _COLUMNS]
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


def _index_html(runs: Sequence[Run], pages: dict[str, Path], profile: str) -> str:
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
            "<tr>" + "".join(f"<td>{esc(_cell(e.get(c)))}</td>" for c in _COLUMNS) + "</tr>"
            for e in r.records
        )
        head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
        tables.append(
            f"<h3>{esc(r.notebook)}</h3><table><tr>{head}</tr>{rows}</table>" if rows else ""
        )
    summary = "".join(
        f'<tr class="{esc(row["status"].split(":")[0].replace(" ", "-"))}">'
        + "".join(f"<td>{esc(row[c])}</td>" for c in SUMMARY_COLUMNS)
        + "</tr>"
        for row in summary_rows(runs)
    )
    summary_head = "".join(f"<th>{esc(c)}</th>" for c in SUMMARY_COLUMNS)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:90%;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "tr.reproduced td:last-child{background:#d9f2d9}"
        "tr.not-reproduced td:last-child{background:#f8d7d7}"
        "tr.reduced-run td:last-child{background:#fff3cd}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Binarized Neural Networks: the book</title><style>{style}</style></head><body>"
        "<h1>Binarized Neural Networks: the book</h1>"
        "<p>Courbariaux, Hubara, Soudry, El-Yaniv, Bengio (2016), arXiv 1602.02830. "
        f"Profile <code>{esc(profile)}</code>, built {time.strftime('%Y-%m-%d %H:%M')}.</p>"
        f'<h2 id="summary">The paper vs this book</h2>'
        f"<table><tr>{summary_head}</tr>{summary}</table>"
        f"<h2>Notebooks</h2><ol>{items}</ol>"
        f"<h2>Appendix: the records of each notebook</h2>{''.join(tables)}</body></html>"
    )


# --- CLI ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnnlib.book", description="Run the book, collect results, export HTML."
    )
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--only", action="append", help="notebook number(s), e.g. 01 or 01,03")
    parser.add_argument("--out", type=Path, default=Path("build/book"))
    parser.add_argument("--book-dir", type=Path, default=BOOK_DIR)
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument("--log-output", action="store_true", help="echo the notebooks' output")
    parser.add_argument(
        "--timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help=f"stop a cell running longer than this (0: no limit; default {DEFAULT_TIMEOUT}, "
        "none for --profile full)",
    )
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 0 if args.profile == "full" else DEFAULT_TIMEOUT
    if args.timeout < 0:
        parser.error(f"--timeout must be >= 0 seconds (0: no limit), got {args.timeout}")

    try:
        paths = notebooks(args.book_dir, args.only)
        if not paths:
            raise BookError(f"no notebooks NN_*.ipynb in {args.book_dir}")
        kernel = kernel_name()
        runs: list[Run] = []
        total = time.perf_counter()
        print(f"book: {len(paths)} notebooks, profile {args.profile}, into {args.out}")
        for i, path in enumerate(paths, start=1):
            print(f"[{i}/{len(paths)}] {path.name} ...", flush=True)
            try:
                run = run_notebook(
                    path,
                    args.out,
                    args.profile,
                    kernel=kernel,
                    log_output=args.log_output,
                    timeout=args.timeout or None,
                )
            except BookError as err:
                rest = [p.stem for p in paths[i:]]
                json_path, md_path = write_results(
                    runs, args.out, args.profile, failed=path.stem, error=str(err), not_run=rest
                )
                print(f"results (INCOMPLETE, without {path.stem}): {md_path} and {json_path}")
                raise
            runs.append(run)
            print(f"    done in {run.seconds:.1f} s, {len(run.records)} results recorded")
        json_path, md_path = write_results(runs, args.out, args.profile)
        print(f"results: {md_path} and {json_path}")
        if not args.no_html:
            html_dir = args.out / "html"
            pages = {}
            for run in runs:
                start = time.perf_counter()
                pages[run.notebook] = export_html(run.executed, html_dir)
                print(f"    html {pages[run.notebook]} ({time.perf_counter() - start:.1f} s)")
            index = atomic_write(
                html_dir / "index.html", _index_html(runs, pages, args.profile).encode("utf-8")
            )
            print(f"html: {index}")
        print(f"book done in {time.perf_counter() - total:.1f} s")
        for run in runs:
            print(f"  {run.notebook:40s} {run.seconds:7.1f} s")
    except BookError as err:
        print(f"book FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
