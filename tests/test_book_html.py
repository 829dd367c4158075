"""The book's HTML site works offline: notebooks 01 and 02 run by ``python -m bnnlib.book``
(profile ``tests``), built into a Jupyter Book, opened in headless Chromium.

Chromium resolves no host name (``--host-resolver-rules=MAP * ~NOTFOUND``) and the test follows
it through the DevTools protocol (a websocket): every request a page makes must be a local file,
no console message or uncaught exception may be an error, and each plotly figure must be *drawn*
(a ``main-svg`` per ``plotly-graph-div``) by the site's one offline plotly.js. Sphinx's search,
run in the browser, must find the straight-through estimator. Every page stays under
:data:`bnnlib.book.site.MAX_PAGE_BYTES`. Skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from itertools import count
from pathlib import Path

import pytest

from bnnlib import data
from bnnlib.book import runner as book
from bnnlib.book import site as book_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--allow-file-access-from-files",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing outside this machine resolves
    "--window-size=1200,3000",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",  # Chromium >= 111 refuses the DevTools websocket otherwise
    "about:blank",
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
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    args = ["--only", "01,02", "--profile", "tests", "--out", str(out), "--timeout", "600"]
    assert book.main(args) == 0
    return out / "html"


class Browser:
    """Headless Chromium driven through the DevTools protocol; records what each page did."""

    def __init__(self, tmp: Path) -> None:
        websocket = pytest.importorskip("websocket")  # websocket-client, a jupyter_server dep
        profile = tmp / "chromium-profile"
        cmd = [CHROMIUM, f"--user-data-dir={profile}", *FLAGS]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not open its DevTools port: {err}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        # no Origin header: Chromium refuses DevTools websockets from other origins (403)
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self.ids = count(1)
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def call(self, method: str, **params) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 240) -> None:
        """Navigate to ``url`` and wait until the JavaScript ``ready`` is true."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"document.readyState === 'complete' && ({ready})"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: {ready} still false after {timeout} s")
            time.sleep(0.2)
        time.sleep(0.5)  # late requests and console messages
        self.evaluate("0")  # collect the events sent meanwhile

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            p = e["params"]
            if e["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(p["exceptionDetails"])[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                found.append(json.dumps(p["args"])[:500])
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"{p['entry'].get('url', '')}: {p['entry']['text']}"[:500])
            elif e["method"] == "Network.loadingFailed":
                found.append(f"loading failed: {p.get('errorText')} ({p['requestId']})")
        return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


def test_the_site_has_the_results_page_first_and_the_notebooks(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "The paper vs this book" in index
    # The sidebar and the next link lead from the results page to notebook 01, then 02.
    assert 'href="01_binarization.html"' in index and 'href="02_straight_through_estimator' in index
    assert '<link rel="next" title="01' in index
    page = (site / "01_binarization.html").read_text(encoding="utf-8")
    assert '<link rel="next" title="02' in page and '<link rel="prev"' in page
    assert (site / "_static" / book_site.PLOTLY_JS).stat().st_size > 1_000_000


def test_every_page_is_small_and_offline(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 4  # index, 01, 02, search
    sizes = {p.name: p.stat().st_size for p in pages}
    assert max(sizes.values()) < book_site.MAX_PAGE_BYTES, sizes
    assert book_site.page_problems(site) == []
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert "plotly.js v" not in text, p  # plotly.js is in _static, once
        # Maths comes from the site's own MathJax copy, never a CDN.
        for src in re.findall(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*)\"", text, re.I):
            assert src.startswith("_static/mathjax/"), (p, src)


def test_bookkeeping_cells_are_folded_not_removed(site):
    page = (site / "02_straight_through_estimator.html").read_text(encoding="utf-8")
    start = page.index('<div class="cell tag_hide-input')  # the cell with its records
    cell = page[start : page.index('<div class="cell ', start + 1)]
    assert "Show code cell source" in cell  # behind a toggle ...
    assert '<span class="n">record</span>' in cell  # ... and still there


@pytest.mark.parametrize("name", ["index", "01_binarization", "02_straight_through_estimator"])
def test_page_in_chromium_draws_its_figures_offline(site, browser, name):
    page = site / f"{name}.html"
    expected = page.read_text(encoding="utf-8").count("Plotly.newPlot(")
    ready = "document.querySelectorAll('.js-plotly-plot .main-svg').length >= " + str(expected)
    browser.open(page.as_uri(), ready)
    external = [u for u in browser.requests() if not u.startswith(("file:", "data:", "blob:"))]
    assert external == [], external
    assert browser.errors() == []
    drawn = browser.evaluate("document.querySelectorAll('.plotly-graph-div.js-plotly-plot').length")
    assert drawn == expected
    # Printed lines wrap inside the page: no output box scrolls sideways (at 1200 px here).
    wide = browser.evaluate(
        "Array.from(document.querySelectorAll('div.cell_output pre'))"
        ".filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.textContent.slice(0, 80))"
    )
    assert wide == [], wide
    if name == "01_binarization":
        assert expected >= 2  # the line figure and the widget's static figure, with its buttons
        assert browser.evaluate("document.querySelectorAll('.updatemenu-button').length") >= 2
    if name == "02_straight_through_estimator":  # bookkeeping code folded, its figure drawn
        folded = "Array.from(document.querySelectorAll('.tag_hide-input details')).map(d => d.open)"
        states = browser.evaluate(folded)  # every record cell folded
        assert states and not any(states), states
    if name == "index":  # the summary table, with a status per row
        assert browser.evaluate("document.querySelectorAll('table tbody tr').length") >= 10


def test_search_finds_the_straight_through_estimator(site, browser):
    index = (site / "searchindex.js").read_text(encoding="utf-8")
    assert "straight-through" in index.lower()
    url = (site / "search.html").as_uri() + "?q=straight-through"
    browser.open(url, "document.querySelectorAll('ul.search li').length > 0")
    hits = browser.evaluate(
        "Array.from(document.querySelectorAll('ul.search li a')).map(a => a.getAttribute('href'))"
    )
    assert any(h.startswith("02_straight_through_estimator.html") for h in hits), hits
    # Each hit shows an excerpt, from file:// too (bnnlib.book.search answers the page fetch).
    browser.open(url, "document.querySelectorAll('ul.search li p.context').length > 0")
    excerpts = browser.evaluate(
        "Array.from(document.querySelectorAll('ul.search li p.context')).map(p => p.textContent)"
    )
    assert any("straight" in e.lower() for e in excerpts), excerpts
    external = [u for u in browser.requests() if not u.startswith(("file:", "data:", "blob:"))]
    assert external == [] and browser.errors() == []
