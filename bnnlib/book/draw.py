"""Draw a digit: a packed BNN classifies it live, in JupyterLab and on a static page.

The committed Torch7-preset model (``results/torch7_mnist/model.safetensors``, 784 -> 3 x 2048
-> 10, 1.26 MB of packed weights) runs in the page's JavaScript (``draw.js`` beside this module)
with the arithmetic of :class:`bnnlib.inference.PackedNet`, integer for integer:

* first layer (paper Section 1.6, 8-bit inputs): on the 8 bit planes ``x^n`` of the image,
  ``W_b . x = sum_n 2^n (x^n . W_b)`` with ``x^n . W_b = 2 popcount(x^n AND w) - popcount(x^n)``;
  ``t = 2 W_b . x - 255 sum(W_b)`` is 255 times the pre-activation and the neuron fires
  (+1) iff ``t >= T`` (direction +1) or ``t <= T`` (direction -1), the thresholds of
  :func:`bnnlib.inference.kernel_thresholds`;
* hidden layers (Section 3.2, XNOR-count): ``s = k - 2 popcount(a XOR w)``, the same compare;
* last layer: ``score = a (s - mu) + beta`` in float64 (JavaScript numbers are float64, the
  same three rounded operations), the prediction the first maximal score.

**The weights file** (:func:`export_weights`): ``b"BNND"``, a little-endian uint32 header
length, the JSON header (layers with their sizes and byte offsets), zero padding to a multiple
of 8, then the body: per layer the packed rows as little-endian uint32 words (``row_words`` per
output; bit ``i % 32`` of word ``i // 32`` is input ``i``, bit 1 = +1, the 64-bit words of
:func:`bnnlib.kernels.pack` read as pairs of 32-bit words), then int32 thresholds and directions
(hidden) or float64 ``a, mu, beta`` (last layer). :func:`reference` computes the network from
this file with numpy, the same arithmetic as the JavaScript, to check the file against
PackedNet without a browser.

**Hosts.** :class:`DrawDigit` is an anywidget: in JupyterLab the view runs the network in the
browser as you draw and sends the pixels to the kernel, which answers with
:meth:`PackedNet.predict` (``kernel_prediction``) so the two can be compared. Its HTML
representation (:func:`view_html`) runs with no kernel at all: an inline
``<script type="module">`` with the same JavaScript, which loads the weights from a script
beside the page (:func:`asset_name`: ``bnn_draw_<sha256[:12]>.js``, base64, 1.7 MB; a page
stays small). **A site build must write that file beside the HTML pages:**
:func:`write_assets` ``(html_dir)``; without it the view says so and names this function.
:func:`view` gives the widget in a live kernel and, in a book run, a :class:`StaticView` (the
HTML only: no widget or widget state for a site renderer to prefer). Headless, the notebook
also shows the static fallback :func:`examples_figure`: a few test images with the model's ten
scores and how many bits of each hidden layer fire.

:func:`browser_forward` runs the page's JavaScript in headless Chromium on given images and
returns its predictions, scores and fires (the test of the page against PackedNet).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import plotly.graph_objects as go
import torch
import traitlets
from plotly.subplots import make_subplots

from bnnlib import results, settings
from bnnlib.files import atomic_write
from bnnlib.inference import PackedNet, load
from bnnlib.inference.fold import Affine
from bnnlib.inference.spec import LinearSpec

__all__ = [
    "MAGIC",
    "VERSION",
    "JS_PATH",
    "js_source",
    "default_model",
    "export_weights",
    "DrawModel",
    "parse_weights",
    "reference",
    "asset_name",
    "asset_js",
    "write_assets",
    "view_html",
    "page_html",
    "write_page",
    "DrawDigit",
    "StaticView",
    "view",
    "examples_figure",
    "chromium",
    "CHROMIUM_FLAGS",
    "browser_forward",
    "BrowserResult",
]

MAGIC = b"BNND"
VERSION = 1
SIZE = 28
#: The JavaScript of the view, shipped in the package beside this module.
JS_PATH = Path(__file__).with_name("draw.js")


def js_source() -> str:
    """The view's JavaScript (``draw.js``): an ES module, anywidget's and the static page's."""
    return JS_PATH.read_text(encoding="utf-8")


def default_model() -> PackedNet:
    """The committed Torch7-preset MNIST model (``results/torch7_mnist/model.safetensors``)."""
    run = results.load_run(results.TORCH7_MNIST_RUN)
    if run is None or run.model_path is None:
        raise FileNotFoundError(
            f"no committed packed model results/{results.TORCH7_MNIST_RUN}/model.safetensors; "
            "pass a model (bnnlib.inference.load(path)) explicitly"
        )
    return load(run.model_path)


def _model(model: PackedNet | str | os.PathLike | None) -> PackedNet:
    if model is None:
        return default_model()
    return model if isinstance(model, PackedNet) else load(model)


# --------------------------------------------------------------------------------------------
# The weights file
# --------------------------------------------------------------------------------------------


def _align(n: int, to: int = 8) -> int:
    return -(-n // to) * to


def export_weights(net: PackedNet) -> bytes:
    """The packed MLP ``net`` as the weights file the JavaScript reads (module docstring).

    Only MLPs of 28 x 28 images (linear layers, a Sign after every hidden one) run in the page;
    anything else is a ValueError naming the layer.
    """
    if [int(v) for v in net.input_shape] not in ([784], [1, 28, 28], [28, 28]):
        raise ValueError(
            f"draw-a-digit takes models of 28 x 28 images, this one takes {net.input_shape}"
        )
    layers, body = [], bytearray()

    def put(arr: np.ndarray) -> int:
        body.extend(b"\0" * (_align(len(body)) - len(body)))
        offset = len(body)
        body.extend(np.ascontiguousarray(arr).tobytes())
        return offset

    for i, lay in enumerate(net.layers):
        spec = lay.spec
        if not isinstance(spec, LinearSpec) or spec.layout.groups != 1:
            raise ValueError(
                f"{spec.name}: draw-a-digit runs MLPs of linear layers only, not {spec.kind}"
            )
        last = i == len(net.layers) - 1
        if last != isinstance(lay.output, Affine):
            raise ValueError(f"{spec.name}: expected Sign on every hidden layer, scores last")
        words = lay.weight.contiguous().numpy().astype("<i8").view("<u4")  # LSB word first
        entry: dict[str, Any] = {
            "name": spec.name,
            "kind": "scores" if last else "sign",
            "first": spec.first,
            "in": spec.layout.k,
            "out": spec.out_size,
            "row_words": int(words.shape[1]),
            "weight": put(words),
        }
        if last:
            for t in ("a", "mu", "beta"):
                entry[t] = put(getattr(lay.output, t).double().numpy().astype("<f8"))
        else:
            entry["threshold"] = put(lay.output.threshold.numpy().astype("<i4"))
            entry["direction"] = put(lay.output.direction.numpy().astype("<i4"))
        layers.append(entry)
    head = {"version": VERSION, "source": str(net.source), "classes": net.num_classes}
    head["layers"] = layers
    # body_offset depends on the header's length, which holds it: fix it by iterating.
    offset = 0
    while True:
        head["body_offset"] = offset
        text = json.dumps(head, sort_keys=True).encode()
        need = _align(8 + len(text))
        if need == offset:
            break
        offset = need
    out = MAGIC + struct.pack("<I", len(text)) + text
    return out + b"\0" * (offset - len(out)) + bytes(body)


@dataclass(frozen=True)
class DrawModel:
    """A parsed weights file: its JSON ``header`` and per layer its numpy arrays."""

    header: dict
    layers: list[dict[str, Any]]

    @property
    def hidden_sizes(self) -> list[int]:
        """Units of each hidden layer."""
        return [L["out"] for L in self.layers if L["kind"] == "sign"]


def parse_weights(blob: bytes) -> DrawModel:
    """The weights file ``blob`` (:func:`export_weights`) as numpy arrays; ValueError if bad."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError(f"not a draw-a-digit weights file (starts {blob[:4]!r}, want {MAGIC!r})")
    (n,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8 : 8 + n].decode())
    if header.get("version") != VERSION:
        raise ValueError(f"draw-a-digit weights version {header.get('version')}, want {VERSION}")
    base = header["body_offset"]

    def arr(offset: int, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(blob, dtype=dtype, count=count, offset=base + offset)

    layers = []
    for L in header["layers"]:
        e = dict(L)
        e["w"] = arr(L["weight"], "<u4", L["out"] * L["row_words"]).reshape(L["out"], -1)
        if L["kind"] == "scores":
            for t in ("a", "mu", "beta"):
                e[t] = arr(L[t], "<f8", L["out"])
        else:
            e["thr"] = arr(L["threshold"], "<i4", L["out"]).astype(np.int64)
            e["dir"] = arr(L["direction"], "<i4", L["out"]).astype(np.int64)
        layers.append(e)
    return DrawModel(header, layers)


def _bits(words: np.ndarray, n: int) -> np.ndarray:
    """(N, W) uint32 words -> (N, n) 0/1, bit i % 32 of word i // 32."""
    b = np.unpackbits(words.astype("<u4").view(np.uint8), axis=-1, bitorder="little")
    return b[:, :n].astype(np.int64)


def _exact(v: np.ndarray) -> np.ndarray:
    """An integer-valued float32 product (sums below 2^24: exact) as int64."""
    return np.rint(v).astype(np.int64)


def reference(blob: bytes | DrawModel, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """The network of a weights file on uint8 images ``X`` (N, 784): float64 scores (N,
    classes) and the +1 bits of each hidden layer, (N, hidden layers) ints. The arithmetic of
    the JavaScript (module docstring), in numpy: checks the file against PackedNet."""
    m = blob if isinstance(blob, DrawModel) else parse_weights(blob)
    x = np.asarray(torch.as_tensor(X).reshape(len(X), -1).numpy(), dtype=np.int64)
    if x.shape[1] != SIZE * SIZE or x.min(initial=0) < 0 or x.max(initial=0) > 255:
        raise ValueError(f"reference takes uint8 images of 784 pixels, got {tuple(x.shape)}")
    fires, act = [], None
    for L in m.layers:
        wpm = 2 * _bits(L["w"], L["in"]) - 1  # (out, in) +/-1
        w32 = wpm.T.astype(np.float32)  # float32 products of +/-1 and 0/1: exact integers
        if L["first"]:
            # the bit planes: sum_n 2^n (2 popcount(x^n & w) - popcount(x^n)) = W_b . x
            dot = sum(_exact(((x >> b) & 1).astype(np.float32) @ w32) << b for b in range(8))
            s = 2 * dot - 255 * wpm.sum(1)
        else:
            s = _exact((2 * act - 1).astype(np.float32) @ w32)  # k - 2 popcount(a XOR w)
        if L["kind"] == "scores":
            v = s.astype(np.float64) / 255.0 if L["first"] else s.astype(np.float64)
            return L["a"] * (v - L["mu"]) + L["beta"], np.stack(fires, 1)
        act = np.where(L["dir"] >= 0, s >= L["thr"], s <= L["thr"]).astype(np.int64)
        fires.append(act.sum(1))
    raise ValueError("the weights file has no scores layer")


# --------------------------------------------------------------------------------------------
# The static page: HTML, and the weights beside it
# --------------------------------------------------------------------------------------------


def _key(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:12]


def asset_name(blob: bytes) -> str:
    """The file name of the weights script beside a page: ``bnn_draw_<sha256[:12]>.js``."""
    return f"bnn_draw_{_key(blob)}.js"


def asset_js(blob: bytes) -> str:
    """The weights script: sets ``globalThis.bnnDrawWeights[key]`` to the file's base64."""
    b64 = base64.b64encode(blob).decode()
    return (
        "// bnnlib.book.draw: the packed weights of the draw-a-digit view (base64)\n"
        "(globalThis.bnnDrawWeights = globalThis.bnnDrawWeights || {})"
        f'["{_key(blob)}"] = "{b64}";\n'
    )


def write_assets(html_dir: str | os.PathLike, model: PackedNet | str | None = None) -> Path:
    """Write the weights script of ``model`` (default: the committed Torch7 MNIST model) into
    ``html_dir``, beside the pages that show the draw-a-digit view; returns its path.

    The site build calls it once with the folder of the HTML pages (nothing else to copy)."""
    blob = export_weights(_model(model))
    folder = Path(html_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write(folder / asset_name(blob), asset_js(blob).encode())


def _examples(examples: Any) -> tuple[bytes, int]:
    if examples is None:
        return b"", 0
    x = torch.as_tensor(examples)
    if x.dtype != torch.uint8:
        raise ValueError(
            f"examples must be uint8 pixels (bnnlib.data.to_uint8(test.X)), got {x.dtype}"
        )
    x = x.reshape(len(x), -1)
    if x.shape[1] != SIZE * SIZE:
        raise ValueError(f"examples must be 28 x 28 images, got {tuple(examples.shape)}")
    return x.contiguous().numpy().tobytes(), len(x)


def view_html(
    blob: bytes,
    examples: Any = None,
    labels: Sequence[int] | None = None,
    asset_url: str | None = None,
    element_id: str | None = None,
) -> str:
    """The view as HTML that runs with no kernel: a div and an inline module script that loads
    the weights from ``asset_url`` (default :func:`asset_name`, beside the page). ``examples``:
    uint8 images (N, 28, 28) the reader can load, with their ``labels``."""
    ex, n = _examples(examples)
    opts = {
        "key": _key(blob),
        "assetUrl": asset_url or asset_name(blob),
        "examples": base64.b64encode(ex).decode() if n else None,
        "labels": [int(v) for v in labels] if labels is not None else None,
    }
    eid = element_id or f"bnn-draw-{_key(blob)}-{hashlib.sha256(ex).hexdigest()[:6]}"
    # The JSON is escaped for a <script>: no "</" can close it early.
    args = json.dumps(opts).replace("</", "<\\/")
    script = js_source().replace("</script", "<\\/script")
    return (
        f'<div id="{html.escape(eid)}" class="bnn-draw-root">'
        "<p>Loading the packed model (draw-a-digit needs JavaScript)…</p></div>\n"
        f'<script type="module">\n{script}\n'
        f'mountStatic(document.getElementById("{html.escape(eid)}"), {args});\n</script>\n'
    )


def page_html(body: str, title: str = "Draw a digit") -> str:
    """A whole HTML page around ``body`` (e.g. :func:`view_html`)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>"
    )


def write_page(
    path: str | os.PathLike,
    model: PackedNet | str | None = None,
    examples: Any = None,
    labels: Sequence[int] | None = None,
) -> Path:
    """A plain HTML page with the view at ``path``, and its weights script beside it."""
    blob = export_weights(_model(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent / asset_name(blob), asset_js(blob).encode())
    return atomic_write(path, page_html(view_html(blob, examples, labels)).encode())


# --------------------------------------------------------------------------------------------
# JupyterLab: the anywidget
# --------------------------------------------------------------------------------------------


class DrawDigit(anywidget.AnyWidget):
    """Draw a digit in JupyterLab; the packed model classifies it in the browser as you draw.

    ``weights`` is the weights file (:func:`export_weights`), not a synced trait (a saved
    notebook's widget state stays small): the view asks for it with the custom message
    ``{"type": "weights?"}`` and gets :meth:`weights_message` back; with no kernel to answer
    (a page that embeds the widget state) it loads them from ``asset_url`` beside the page.
    ``examples`` / ``example_labels`` are a few test images to load. The view sends each new
    input as ``pixels`` with its own ``js_prediction``; the kernel answers with
    :meth:`PackedNet.predict` (``kernel_prediction``, ``kernel_scores``). Setting ``pixels``
    from Python shows that image in the view. Its HTML representation is :func:`view_html`
    (no kernel needed).
    """

    _esm = js_source()
    examples = traitlets.Bytes(b"").tag(sync=True)
    example_labels = traitlets.List(traitlets.Int(), []).tag(sync=True)
    pixels = traitlets.List(traitlets.Int(), []).tag(sync=True)
    js_prediction = traitlets.Int(-1).tag(sync=True)
    kernel_prediction = traitlets.Int(-1).tag(sync=True)
    kernel_scores = traitlets.List(traitlets.Float(), []).tag(sync=True)
    asset_url = traitlets.Unicode("").tag(sync=True)
    asset_key = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        model: PackedNet | str | None = None,
        examples: Any = None,
        labels: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.net = _model(model)
        self.weights = blob = export_weights(self.net)
        ex, n = _examples(examples)
        super().__init__(
            asset_url=asset_name(blob),
            asset_key=_key(blob),
            examples=ex,
            example_labels=[int(v) for v in labels] if labels is not None else [],
            **kwargs,
        )
        self.observe(self._classify, names="pixels")
        self.on_msg(self._answer)
        self._html = view_html(blob, examples, labels)
        if n:
            self.pixels = list(ex[: SIZE * SIZE])

    def weights_message(self) -> tuple[dict, list[bytes]]:
        """The answer to the view's ``{"type": "weights?"}``: content and buffers."""
        return {"type": "weights", "bytes": len(self.weights)}, [self.weights]

    def _answer(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "weights?":
            self.send(*self.weights_message())

    @traitlets.validate("pixels")
    def _check_pixels(self, proposal: dict) -> list[int]:
        p = proposal["value"]
        if len(p) != SIZE * SIZE or any(not 0 <= v <= 255 for v in p):
            raise traitlets.TraitError(
                f"pixels must be {SIZE * SIZE} integers 0..255 (a 28 x 28 image), got "
                f"{len(p)} values"
            )
        return p

    def _classify(self, change: dict) -> None:
        x = torch.tensor(change["new"], dtype=torch.uint8).reshape(1, -1)
        scores = self.net.scores(x)[0]
        self.kernel_scores = [float(v) for v in scores]
        self.kernel_prediction = int(scores.argmax())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = dict(data)
        data["text/html"] = self._html  # a static page (nbconvert, the site): no kernel
        return (data, meta) if isinstance(bundle, tuple) else data


@dataclass(frozen=True)
class StaticView:
    """The draw-a-digit view without a widget: its HTML (:func:`view_html`) as the output."""

    html: str
    text: str = "<draw-a-digit view: needs JavaScript and the weights script beside the page>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return {"text/html": self.html, "text/plain": self.text}


def view(
    model: PackedNet | str | None = None,
    examples: Any = None,
    labels: Sequence[int] | None = None,
) -> DrawDigit | StaticView:
    """The view to show as a cell's value: a :class:`DrawDigit` widget in a live kernel; in a
    book run (``python -m bnnlib.book``, headless) a :class:`StaticView`, only the HTML that
    runs with no kernel, so the executed notebook holds no widget (nor its state) that a site
    renderer could prefer over the HTML."""
    if settings.book_run():
        net = _model(model)
        return StaticView(view_html(export_weights(net), examples, labels))
    return DrawDigit(model, examples, labels)


# --------------------------------------------------------------------------------------------
# The static fallback: a few test images, their scores and firing bits
# --------------------------------------------------------------------------------------------


def examples_figure(net: PackedNet, X: Any, y: Any = None) -> go.Figure:
    """A few uint8 test images (N, 28, 28) with the packed model's ten scores and, per hidden
    layer, how many bits fire: the draw-a-digit view's static fallback (no JavaScript)."""
    x = torch.as_tensor(X).reshape(len(X), SIZE, SIZE)
    blob = export_weights(net)
    scores, fires = reference(blob, x)
    pred = net.predict(x.reshape(len(x), -1))
    sizes = parse_weights(blob).hidden_sizes
    n = len(x)
    titles = []
    for i in range(n):
        label = "" if y is None else f", label {int(y[i])}"
        fired = " / ".join(str(int(f)) for f in fires[i])
        titles.append(f"predicted {int(pred[i])}{label}<br><sub>fire: {fired}</sub>")
    fig = make_subplots(rows=2, cols=n, subplot_titles=titles + [""] * n, vertical_spacing=0.12)
    for i in range(n):
        fig.add_trace(
            go.Heatmap(z=x[i].numpy()[::-1], colorscale="gray", showscale=False, hoverinfo="skip"),
            row=1,
            col=i + 1,
        )
        colors = ["#d62728" if d == int(pred[i]) else "#9ab" for d in range(scores.shape[1])]
        fig.add_trace(
            go.Bar(x=list(range(scores.shape[1])), y=scores[i], marker_color=colors,
                   showlegend=False, name=f"#{i}"),
            row=2,
            col=i + 1,
        )  # fmt: skip
        fig.update_xaxes(visible=False, row=1, col=i + 1)
        fig.update_yaxes(
            visible=False, scaleanchor="x" if i == 0 else f"x{i + 1}", row=1, col=i + 1
        )
        fig.update_xaxes(dtick=1, tickfont={"size": 8}, row=2, col=i + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        title=f"The packed model on {n} test images: ten scores; bits that fire in the "
        f"hidden layers (of {' / '.join(str(s) for s in sizes)})",
        height=460,
        margin={"t": 110},
    )
    return fig


# --------------------------------------------------------------------------------------------
# The page in a real browser: headless Chromium
# --------------------------------------------------------------------------------------------


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
            "key": _key(blob),
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
