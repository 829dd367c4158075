"""The exported book works offline: notebook 01 -> HTML, opened in headless Chromium.

The page must reference no CDN (it loads the book's one shared ``plotly.min.js`` beside it;
nbconvert's require.js, MathJax, mermaid and widget-manager tags are left out), and the plotly
figures must be *drawn* by that offline plotly.js: Chromium's DOM after the scripts ran holds
one ``plot-container`` with a ``main-svg`` per figure. Skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bnnlib import data
from bnnlib.book import notebooks as book_notebooks
from bnnlib.book import runner as book
from bnnlib.book import site as book_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = book_notebooks.BOOK_DIR / "01_binarization.ipynb"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--window-size=1200,3000",
]

pytestmark = [
    pytest.mark.notebooks,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="headless Chromium is not installed (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        not (data.resolve_root() / "MNIST" / "raw").is_dir(),
        reason=f"MNIST not under the data root {data.resolve_root()}; set BNN_DATA_DIR",
    ),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    run = book.run_notebook(NOTEBOOK, out, "tests", timeout=600)
    return book_site.export_html(run.executed, out / "html")


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def test_no_cdn_reference(page):
    html = page.read_text(encoding="utf-8")
    assert book_site.offline_problems(html) == []
    scripts = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", html, re.I)
    assert not [s for s in scripts if "cdn." in s or s.startswith(("http", "//"))], scripts
    # plotly.js is not in the page but beside it, once for the whole book.
    assert "plotly.js v" not in html and book_site.PLOTLY_JS in scripts
    assert "plotly.js v" in (page.parent / book_site.PLOTLY_JS).read_text(encoding="utf-8")
    assert page.stat().st_size < 2_000_000


def test_plotly_figures_render_offline(page, tmp_path):
    html = page.read_text(encoding="utf-8")
    expected = html.count("Plotly.newPlot(")
    assert expected >= 2  # the line figure and the widget's static figure
    result = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = result.stdout
    assert "<html" in dom, result.stderr[-2000:]
    rendered = len(re.findall(r'class="[^"]*\bplot-container\b', dom))
    assert rendered == expected, f"{rendered} of {expected} figures rendered"
    assert dom.count('class="main-svg"') >= expected
    # The widget's static fallback keeps its buttons (plotly updatemenus).
    assert "updatemenu-button" in dom


def test_screenshot(page, tmp_path):
    png = tmp_path / "01.png"
    result = _chromium(tmp_path, f"--screenshot={png}", page.as_uri())
    assert png.exists(), result.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000  # a page of text and figures, not a blank one
