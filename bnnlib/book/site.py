"""The book's HTML site: a Jupyter Book (Sphinx, sphinx-book-theme, myst-nb) of the executed
notebooks, built offline into ``<out>/html``.

:func:`build_site` writes a Jupyter Book source into a temporary folder (``_config.yml``,
``_toc.yml``, the results page ``index.md`` first, then a copy of each executed notebook) and
builds it with Jupyter Book's Sphinx builder, never executing a notebook (myst-nb's
``nb_execution_mode = "off"``). The result has a sidebar, previous/next links and Sphinx's
full-text search, which works offline.

The first page is "the paper vs this book" (:func:`bnnlib.book.landing.results_page`: the
verdict, the full-width table, a fold per row); the records of every notebook are on their own
page (``records``); the committed runs' ``run.json`` and ``history.json`` and the benchmark files
are shipped under ``_static/results/`` and linked from the rows. Sphinx's smart quotes are off,
so a command reads as typed (``--out``, never an en dash).
Bookkeeping cells carry the tag ``hide-input`` (:mod:`bnnlib.book.tags`): their code is folded
behind a toggle, their output shows.

Offline: every page loads the one copy of plotly.js in ``_static/`` (:data:`PLOTLY_JS`); the
widgets' CDN scripts are switched off (their outputs keep the static figure); the maths (MyST's
``$...$`` and ``$$...$$``) is typeset by a local copy of MathJax 3 in ``_static/mathjax/``
(:data:`MATHJAX_JS`, from the ``sphinx-mathjax-offline`` package, SVG output: no fonts to
fetch), loaded only by pages with maths; and :func:`offline_problems` checks every page: a page
that would load anything from the network, or weighs more than :data:`MAX_PAGE_BYTES`, fails
the build.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnnlib.book import landing
from bnnlib.book.notebooks import BookError, read_notebook
from bnnlib.book.results import Run
from bnnlib.files import atomic_write, staging_dir

__all__ = [
    "PLOTLY_JS",
    "MATHJAX_JS",
    "MAX_PAGE_BYTES",
    "TITLE",
    "build_site",
    "offline_problems",
    "page_problems",
    "smart_quoted_commands",
]

TITLE = "Binarized Neural Networks: the book"
#: The one copy of plotly.js, under the site's ``_static/``; every page loads it.
PLOTLY_JS = "plotly.min.js"
#: The local MathJax 3 (TeX in, SVG out: one self-contained file), under ``_static/``.
MATHJAX_JS = "mathjax/tex-svg.js"
#: The package that ships it, and the file's path inside that distribution.
_MATHJAX_DIST = ("sphinx-mathjax-offline", "sphinx-mathjax-offline/static/mathjax/tex-svg.js")
#: The largest HTML page the build accepts (plotly.js and other assets are shared, not inlined).
MAX_PAGE_BYTES = 1_500_000

_REMOTE = [
    re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
    re.compile(r"<link[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
    re.compile(r"<img[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//[^\"')\s]*", re.I),
    re.compile(r"\burl\(\s*[\"']?(?:https?:)?//[^\"')\s]*", re.I),
    re.compile(r"\bimport\s*\(\s*[\"'](?:https?:)?//[^\"']*", re.I),
    re.compile(r"<iframe[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]*", re.I),
]


def offline_problems(page: str) -> list[str]:
    """Every place where ``page`` would load something from the network (empty when offline)."""
    return [m.group(0)[:160] for rx in _REMOTE for m in rx.finditer(page)]


#: A command whose ``--`` became a dash or whose quotes curled (Sphinx's smart quotes).
_SMART_COMMAND = re.compile(
    r"(?:python -m [\w.]+|make \w[\w-]*)[^<\n;]{0,80}?"
    r"(?:\s[\u2013\u2014]\w|[\u201c\u201d\u2018\u2019])"
)


def smart_quoted_commands(page: str) -> list[str]:
    """Commands in ``page`` that would break when copied (``--out`` set as ``–out``, curly
    quotes); empty when none."""
    return [m.group(0)[:120] for m in _SMART_COMMAND.finditer(page)]


def page_problems(html_dir: Path) -> list[str]:
    """What is wrong with the built site in ``html_dir``: a page over :data:`MAX_PAGE_BYTES`, a
    page loading from the network, a command spoilt by smart quotes, plotly.js missing (empty
    when the site is fine)."""
    problems = []
    if not (Path(html_dir) / "_static" / PLOTLY_JS).is_file():
        problems.append(f"_static/{PLOTLY_JS} is missing")
    if not (Path(html_dir) / "_static" / MATHJAX_JS).is_file():
        problems.append(f"_static/{MATHJAX_JS} is missing")
    for page in sorted(Path(html_dir).rglob("*.html")):
        name = page.relative_to(html_dir)
        size = page.stat().st_size
        if size > MAX_PAGE_BYTES:
            problems.append(f"{name} weighs {size:,} bytes (more than {MAX_PAGE_BYTES:,})")
        text = page.read_text(encoding="utf-8", errors="replace")
        remote = offline_problems(text)
        if remote:
            problems.append(f"{name} loads from the network: {remote[:3]}")
        spoilt = smart_quoted_commands(text)
        if spoilt:
            problems.append(f"{name} has commands spoilt by smart quotes: {spoilt[:3]}")
    return problems


# --- the Jupyter Book source and its build ----------------------------------------------------

#: Widget outputs keep their static figure: an HTML page runs no kernel.
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _static_notebook(executed: Path, dest: Path) -> None:
    """Copy of an executed notebook without widget state (myst-nb would load the widget
    manager from a CDN for it) and without widget views (their HTML fallback stays)."""
    import nbformat

    nb = read_notebook(executed)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if _WIDGET_MIME in data and "text/html" in data:
                del data[_WIDGET_MIME]
    atomic_write(dest, nbformat.writes(nb).encode("utf-8"))


def _config(profile: str) -> dict[str, Any]:
    """Jupyter Book's ``_config.yml``: no execution, nothing from the network."""
    return {
        "title": TITLE,
        "author": "bnn-book",
        "copyright": time.strftime("%Y"),
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        # $...$ and $$...$$ maths, typeset by the local MathJax (MATHJAX_JS).
        "parse": {"myst_enable_extensions": ["colon_fence", "dollarmath", "amsmath"]},
        "html": {"use_multitoc_numbering": False, "home_page_in_navbar": True},
        "launch_buttons": {"thebe": False},
        "latex": {"use_jupyterbook_latex": False},  # HTML only
        "sphinx": {
            "config": {
                # Jupyter Book's extensions without sphinx-thebe (it declares the URL of its CDN
                # script twice, a console error) and intersphinx (it fetches inventories).
                "extensions": [
                    "sphinx_togglebutton",
                    "sphinx_copybutton",
                    "myst_nb",
                    "jupyter_book",
                    "sphinx_comments",  # no comments are configured: it adds nothing
                    "sphinx_external_toc",
                    "sphinx_design",
                    "sphinx_book_theme",
                    "bnnlib.book.search",  # search excerpts from file:// (the pages' text)
                ],
                "html_context": {"default_mode": "light"},  # else the theme logs an error
                "nb_execution_mode": "off",
                "nb_merge_streams": True,  # a cell's printed lines in one box, not one per epoch
                "nb_ipywidgets_js": {},  # the widget manager comes from a CDN: none
                "html_static_path": ["_static"],
                "html_js_files": [PLOTLY_JS],  # before the pages' figure scripts run
                "html_css_files": [landing.CSS_FILE],
                "mathjax_path": MATHJAX_JS,  # the local copy, never a CDN
                "html_title": TITLE,  # the profile is said on the first page
                # Commands stay as typed: no "--out" turned into an en dash, no curly quotes.
                "smartquotes": False,
                # The first page is the full-width table: no contents rail beside it.
                "html_theme_options": {
                    "secondary_sidebar_items": {"**": ["page-toc"], "index": []},
                },
                # Jupyter Book's filter, and plotly's JSON beside each figure's HTML (the HTML
                # is what the page shows; the JSON stays for JupyterLab in the .ipynb download).
                "suppress_warnings": ["myst.domains", "mystnb.unknown_mime_type"],
            }
        },
    }


def _toc(runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "format": "jb-book",
        "root": "index",
        "chapters": [{"file": r.notebook} for r in landing.learner_order(runs)]
        + [{"file": landing.RECORDS_PAGE}],
    }


def _mathjax_file() -> Path:
    """The local MathJax file (:data:`MATHJAX_JS`) in its installed package; a clear error
    naming the fix when the package is missing."""
    from importlib.metadata import PackageNotFoundError, distribution

    name, inside = _MATHJAX_DIST
    try:
        path = Path(str(distribution(name).locate_file(inside)))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise BookError(
            f"the site's maths needs a local MathJax ({name}); install the book's dependencies "
            '(pip install -e ".[test]" or make venv)'
        )
    return path


def _write_source(runs: Sequence[Run], src: Path, profile: str) -> None:
    import yaml
    from plotly.offline import get_plotlyjs

    (src / "_static").mkdir(parents=True)
    _mathjax_file()  # fails early, naming the fix, when the local MathJax is missing
    atomic_write(src / "_static" / PLOTLY_JS, get_plotlyjs().encode("utf-8"))
    atomic_write(src / "_config.yml", yaml.safe_dump(_config(profile)).encode("utf-8"))
    atomic_write(src / "_toc.yml", yaml.safe_dump(_toc(runs), sort_keys=False).encode("utf-8"))
    atomic_write(src / "_static" / landing.CSS_FILE, landing.CSS.encode("utf-8"))
    landing.ship_results(src / "_static" / "results")  # run.json, history.json, benchmarks
    built = time.strftime("%Y-%m-%d %H:%M")
    atomic_write(src / "index.md", landing.results_page(runs, profile, built).encode("utf-8"))
    page = src / f"{landing.RECORDS_PAGE}.md"
    atomic_write(page, landing.records_page(runs).encode("utf-8"))
    for run in runs:
        _static_notebook(run.executed, src / f"{run.notebook}.ipynb")


def _build(src: Path, out: Path, doctrees: Path) -> int | Exception:
    """Jupyter Book's Sphinx build of ``src`` into ``out`` (what ``jupyter-book build`` runs)."""
    from jupyter_book.sphinx import build_sphinx

    with warnings.catch_warnings():
        # sphinx-external-toc scans every live object, torch's deprecated aliases included.
        warnings.simplefilter("ignore", FutureWarning)
        return build_sphinx(
            src,
            out,
            noconfig=True,
            path_config=src / "_config.yml",
            confoverrides={
                "external_toc_path": (src / "_toc.yml").as_posix(),
                "latex_individualpages": False,
            },
            doctreedir=doctrees,
            freshenv=True,
            quiet=True,
        )


def build_site(runs: Sequence[Run], html_dir: Path, profile: str) -> Path:
    """Build the book's site from the runs' executed notebooks into ``html_dir``; returns its
    ``index.html`` (the results page).

    Built into a temporary folder beside ``html_dir``, checked (:func:`page_problems`), then
    moved into place, so a failed build never leaves a half-written site. Raises
    :class:`BookError` naming what failed.
    """
    html_dir = Path(html_dir).resolve()
    html_dir.parent.mkdir(parents=True, exist_ok=True)
    # Named for this process: the next build removes those a killed one left.
    tmp = staging_dir(html_dir.parent, html_dir.name)
    try:
        src, built = tmp / "src", tmp / "html"
        _write_source(runs, src, profile)
        result = _build(src, built, tmp / "doctrees")
        if result != 0:
            raise BookError(
                f"the Jupyter Book build of the site failed ({result!r}); its messages are "
                "above. Check the executed notebooks and that jupyter-book is installed "
                '(pip install -e ".[test]")'
            )
        # Copied after the build: Jupyter Book loads every .js of the source's _static/ on every
        # page, and the mathjax extension adds this one (deferred) only to the pages with maths.
        (built / "_static" / "mathjax").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_mathjax_file(), built / "_static" / MATHJAX_JS)
        problems = page_problems(built)
        if problems:
            raise BookError("the site would not work offline: " + "; ".join(problems[:5]))
        if any("bnn_draw_" in p.read_text(errors="replace") for p in built.glob("*.html")):
            from bnnlib.book import draw  # the draw-a-digit view's weights, beside its page

            draw.write_assets(built)
        old = None
        if html_dir.exists():
            old = staging_dir(html_dir.parent, html_dir.name, kind="old")
            html_dir.rename(old)
        built.rename(html_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return html_dir / "index.html"
