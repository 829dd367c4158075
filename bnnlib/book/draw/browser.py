"""The draw-a-digit page in a real browser: :func:`browser_forward` runs ``draw.js`` in
headless Chromium on given images and returns its predictions, scores and fires (the test of
the page against PackedNet).
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnlib.book.draw.page import asset_js, asset_key, asset_name, js_source, page_html

__all__ = ["chromium", "CHROMIUM_FLAGS", "BrowserResult", "browser_forward"]


def chromium() -> str | None:
    """The Chromium executable (``chromium``, ``chromium-browser``), None when missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=60000",
    "--window-size=1200,900",
]


@dataclass(frozen=True)
class BrowserResult:
    """What the page's JavaScript computed in Chromium: ``predictions`` (N,), ``scores`` (N,
    classes) float64, ``fires`` (N, hidden layers), and ``strokes``: the view's prediction and
    pixels first, then after each synthetic stroke of :func:`browser_forward` (not after a
    "clear")."""

    predictions: np.ndarray
    scores: np.ndarray
    fires: np.ndarray
    strokes: list[dict]


_HARNESS = """
<pre id="result"></pre>
<script type="module">
import("data:text/javascript;base64,%(js)s").then((m) => {
  const out = {predictions: [], scores: [], fires: [], strokes: []};
  try {
    const weights = m.base64Bytes(globalThis.bnnDrawWeights["%(key)s"]);
    const model = m.parseModel(weights.buffer);
    const X = m.base64Bytes("%(images)s");
    for (let i = 0; i < %(n)d; i++) {
      const r = m.forward(model, X.subarray(784 * i, 784 * (i + 1)));
      out.predictions.push(r.prediction);
      out.scores.push(Array.from(r.scores));
      out.fires.push(r.fires);
    }
    const root = document.getElementById("view");
    const view = m.createView(root, model, {});
    const pad = root.querySelector("canvas.pad");
    const rect = pad.getBoundingClientRect();
    const fire = (type, x, y) => pad.dispatchEvent(new PointerEvent(type, {
      bubbles: true, pointerId: 1, isPrimary: true, pointerType: "mouse", buttons: 1,
      clientX: rect.left + x * rect.width / 280, clientY: rect.top + y * rect.height / 280}));
    out.strokes.push({prediction: view.result.prediction, pixels: Array.from(view.pixels)});
    for (const stroke of %(strokes)s) {
      if (!stroke.length) {
        view.clear();
        continue;
      }
      fire("pointerdown", ...stroke[0]);
      for (const p of stroke.slice(1)) fire("pointermove", ...p);
      fire("pointerup", ...stroke[stroke.length - 1]);
      out.strokes.push({prediction: view.result.prediction, pixels: Array.from(view.pixels)});
    }
  } catch (err) {
    out.error = String(err && err.stack || err);
  }
  document.getElementById("result").textContent = "RESULT" + JSON.stringify(out) + "END";
});
</script>
<div id="view"></div>
"""


def browser_forward(
    blob: bytes,
    X: Any,
    strokes: Sequence[Sequence[tuple[float, float]]] = (),
    timeout: float = 600.0,
) -> BrowserResult:
    """Run the view's JavaScript (``draw.js``) in headless Chromium on uint8 images ``X`` (N,
    784), and draw ``strokes`` (each a list of (x, y) on the 280 x 280 pad; an empty one
    presses "clear") with synthetic pointer events on a fresh view. RuntimeError when Chromium
    is missing or the page fails."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("headless Chromium is not installed (apt-get install chromium)")
    x = torch.as_tensor(X)
    if x.dtype != torch.uint8:
        raise ValueError(f"browser_forward takes uint8 images, got {x.dtype}")
    x = x.reshape(len(x), -1).contiguous().numpy()
    with tempfile.TemporaryDirectory(prefix="bnn-draw-") as tmp:
        folder = Path(tmp)
        (folder / asset_name(blob)).write_text(asset_js(blob))
        body = f'<script src="{asset_name(blob)}"></script>' + _HARNESS % {
            "js": base64.b64encode(js_source().encode()).decode(),
            "key": asset_key(blob),
            "images": base64.b64encode(x.tobytes()).decode(),
            "n": len(x),
            "strokes": json.dumps([[list(p) for p in s] for s in strokes]),
        }
        page = folder / "test.html"
        page.write_text(page_html(body, "draw-a-digit test"))
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", "--dump-dom"]
        done = subprocess.run(
            [*cmd, page.as_uri()], capture_output=True, text=True, timeout=timeout, check=False
        )
    dom = html.unescape(done.stdout)
    if "RESULT" not in dom:
        raise RuntimeError(f"the page computed nothing; Chromium said: {done.stderr[-2000:]}")
    out = json.loads(dom.split("RESULT", 1)[1].split("END", 1)[0])
    if "error" in out:
        raise RuntimeError(f"the page's JavaScript failed: {out['error']}")
    return BrowserResult(
        predictions=np.array(out["predictions"], dtype=np.int64),
        scores=np.array(out["scores"], dtype=np.float64).reshape(len(x), -1),
        fires=np.array(out["fires"], dtype=np.int64).reshape(len(x), -1),
        strokes=out["strokes"],
    )
