"""Search excerpts that work offline: a Sphinx extension of the book's site.

Sphinx's search page shows, under each hit, an excerpt of the page around the words searched;
it gets the page with ``fetch``, which a browser refuses for ``file://`` pages, so opened from
the disk the hits came without excerpts (and a console error). This extension writes, when the
build finishes, ``_static/`` :data:`SCRIPT`: the text of every page's main content (its
sections kept, with their anchors, everything else reduced to text, at most
:data:`MAX_PAGE_CHARS` characters a page) and a ``fetch`` that answers a ``file://`` request for
one of those pages from it. Only ``search.html`` loads the script; served over HTTP the real
``fetch`` runs.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["SCRIPT", "MAX_PAGE_CHARS", "page_text", "script", "setup"]

#: The script under ``_static/``.
SCRIPT = "bnn_search_pages.js"
#: The most characters of one page's text the script keeps.
MAX_PAGE_CHARS = 60_000

_SHIM = """
(function () {
  const pages = %s;
  const realFetch = window.fetch ? window.fetch.bind(window) : null;
  window.fetch = function (url, options) {
    const u = new URL(String(url), document.baseURI);
    const name = decodeURIComponent(u.pathname.split("/").pop());
    if (u.protocol === "file:" && Object.prototype.hasOwnProperty.call(pages, name)) {
      return Promise.resolve(new Response(pages[name], {headers: {"Content-Type": "text/html"}}));
    }
    return realFetch(url, options);
  };
})();
"""


def page_text(page: str) -> str:
    """The main content of an HTML page as the search needs it: ``<div role="main">`` with its
    ``<section id=...>`` elements and their text only (no scripts, figures' code, styles)."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(page, "html.parser")
    main = soup.find(attrs={"role": "main"})
    if main is None:
        return ""
    for el in main.select("script, style, .headerlink, .plotly-graph-div"):
        el.decompose()

    def render(node: Any) -> str:
        if isinstance(node, NavigableString):
            return html.escape(str(node), quote=False)
        if not isinstance(node, Tag):
            return ""
        inner = "".join(render(child) for child in node.children)
        if node.name == "section" and node.get("id"):
            return f'<section id="{html.escape(str(node["id"]))}">{inner}</section>'
        return inner + (" " if node.name in ("p", "li", "td", "th", "pre", "div") else "")

    text = re.sub(r"\s+", " ", render(main)).strip()
    return f'<div role="main">{text[:MAX_PAGE_CHARS]}</div>'


def script(html_dir: Path) -> str:
    """The script's text for the built site in ``html_dir``."""
    pages = {
        p.name: page_text(p.read_text(encoding="utf-8", errors="replace"))
        for p in sorted(Path(html_dir).glob("*.html"))
        if p.name not in ("search.html", "genindex.html")
    }
    return _SHIM % json.dumps(pages, ensure_ascii=False).replace("</", "<\\/")


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree) -> None:
    if pagename == "search":
        app.add_js_file(SCRIPT)


def _build_finished(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / SCRIPT
        target.write_text(script(Path(app.outdir)), encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    """The Sphinx extension: the script written after the build, loaded by the search page."""
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
