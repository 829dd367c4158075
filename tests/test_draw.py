"""Draw a digit (bnnlib.book.draw): the page's packed model equals PackedNet's.

Without a browser: the weights file holds PackedNet's bits, thresholds and batch norm exactly,
and :func:`draw.reference` (numpy, the JavaScript's arithmetic) gives PackedNet's scores bit for
bit. In headless Chromium (skipped when it is missing): ``draw.js`` predicts what
``PackedNet.predict`` predicts on 1,000 MNIST test images, with the same float64 scores; drawn
strokes (synthetic pointer events on the pad) change the prediction, to what PackedNet predicts
on the same pixels; the static page exported from an executed notebook runs with no kernel once
:func:`draw.write_assets` put the weights beside it (and says so when they are missing); the
anywidget view asks for its weights and reports each drawing to its model. In a real kernel,
through the widget protocol JupyterLab speaks: the widget answers the view's request for the
weights, and each ``pixels`` update with PackedNet's prediction.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from IPython.core.formatters import format_display_data

import bnnlib
from bnnlib import data, inference
from bnnlib.book import draw
from bnnlib.book import runner as book
from bnnlib.book import site as book_site
from bnnlib.book.results import Run
from bnnlib.kernels import unpack

CHROMIUM = draw.chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"
)
needs_mnist = pytest.mark.skipif(
    not (data.resolve_root() / "MNIST" / "raw").is_dir(),
    reason=f"MNIST not under the data root {data.resolve_root()}; set BNN_DATA_DIR",
)
needs_model = pytest.mark.skipif(
    bnnlib.results.load_run(bnnlib.results.TORCH7_MNIST_RUN) is None,
    reason="no committed results/torch7_mnist model",
)

# Strokes on the 280 x 280 pad: a "0", then (after "clear") a "7".
CIRCLE = [
    (140 + 70 * math.sin(2 * math.pi * t / 40), 140 - 100 * math.cos(2 * math.pi * t / 40))
    for t in range(41)
]
SEVEN = [(70, 50), (210, 50), (120, 250)]


@pytest.fixture(scope="module")
def net() -> inference.PackedNet:
    if bnnlib.results.load_run(bnnlib.results.TORCH7_MNIST_RUN) is None:
        pytest.skip("no committed results/torch7_mnist model")
    return draw.default_model()


@pytest.fixture(scope="module")
def blob(net) -> bytes:
    return draw.export_weights(net)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> inference.PackedNet:
    """A small random MLP with trained-looking batch norm, exported and loaded."""
    torch.manual_seed(0)
    model = bnnlib.mnist_mlp(hidden=96).eval()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-20, 20)
                m.running_var.uniform_(1, 400)
                m.weight.uniform_(-1, 1)  # some gamma < 0: flipped compares
                m.bias.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("small") / "mlp.safetensors"
    return inference.load(inference.export(model, path))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=g)
    x[0] = 0
    if n > 2:
        x[1] = 255
        x[2, ::3] = 0  # sparse, as drawn digits are
    return x


# --- the weights file and the numpy reference (no browser) ------------------------------------


def test_weights_file_holds_packednets_bits_and_thresholds(small):
    m = draw.parse_weights(draw.export_weights(small))
    assert [L["kind"] for L in m.layers] == ["sign"] * 3 + ["scores"]
    assert m.hidden_sizes == [96, 96, 96]
    for L, lay in zip(m.layers, small.layers, strict=True):
        k = lay.spec.layout.k
        bits = np.unpackbits(L["w"].view(np.uint8), axis=-1, bitorder="little")[:, :k]
        expect = (unpack(lay.weight, lay.spec.layout.row_words * 64)[:, :k] + 1) / 2
        assert np.array_equal(bits, expect.numpy().astype(np.uint8)), L["name"]
        # Padding bits stay 0 (the hidden layers' XOR-popcount would count them otherwise).
        assert not np.unpackbits(L["w"].view(np.uint8), axis=-1, bitorder="little")[:, k:].any()
        if L["kind"] == "sign":
            assert np.array_equal(L["thr"], lay.output.threshold.numpy())
            assert np.array_equal(L["dir"], lay.output.direction.numpy())
            assert (L["dir"] < 0).any() and (L["dir"] > 0).any()
        else:
            assert np.array_equal(L["a"], lay.output.a.numpy())
            assert np.array_equal(L["beta"], lay.output.beta.numpy())


def test_reference_scores_are_packednets_bit_for_bit(small):
    x = _images(300)
    scores, fires = draw.reference(draw.export_weights(small), x)
    assert np.array_equal(scores, small.scores(x).numpy())
    assert np.array_equal(scores.argmax(1), small.predict(x).numpy())
    assert fires.shape == (300, 3) and fires.min() >= 0 and fires.max() <= 96
    assert len(set(fires[:, 0].tolist())) > 5  # the counts depend on the image


@needs_model
def test_reference_on_the_committed_model(net, blob):
    x = _images(100, seed=1)
    scores, _ = draw.reference(blob, x)
    assert np.array_equal(scores, net.scores(x).numpy())
    assert 1_000_000 < len(blob) < 1_400_000  # 1.26 MB of packed weights and the rest


def test_refusals_name_the_problem(tmp_path, small):
    blob = draw.export_weights(small)
    with pytest.raises(ValueError, match="not a draw-a-digit weights file"):
        draw.parse_weights(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="version"):
        draw.parse_weights(blob.replace(b'"version": 1', b'"version": 9', 1))
    conv = inference.load(
        inference.export(bnnlib.cifar10_convnet(width=1 / 16).eval(), tmp_path / "c.bnn")
    )
    with pytest.raises(ValueError, match="28 x 28"):
        draw.export_weights(conv)
    with pytest.raises(ValueError, match="uint8"):
        draw.view_html(blob, examples=torch.zeros(2, 784))


def test_view_html_is_small_offline_and_names_its_asset(small):
    blob = draw.export_weights(small)
    page = draw.view_html(blob, examples=_images(3), labels=[1, 2, 3])
    assert book_site.offline_problems(page) == []
    assert draw.asset_name(blob) in page and "mountStatic(" in page
    assert page.count("</script>") == 1  # nothing in the inline module closes it early
    assert len(page) < 100_000  # the weights are not in the page
    js = draw.asset_js(blob)
    key = draw.asset_name(blob)[len("bnn_draw_") : -len(".js")]
    b64 = re.search(rf'\["{key}"\] = "([^"]+)"', js).group(1)
    assert base64.b64decode(b64) == blob


# --- the JavaScript in headless Chromium ------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1000():
    test = data.load("mnist", split="test")
    return data.to_uint8(test.X[:1000]).reshape(1000, -1)


@pytest.fixture(scope="module")
def in_browser(blob, mnist1000) -> draw.BrowserResult:
    return draw.browser_forward(blob, mnist1000, strokes=[CIRCLE, [], SEVEN])


@needs_chromium
@needs_mnist
@needs_model
def test_page_predictions_equal_packednet_on_1000_test_images(net, blob, mnist1000, in_browser):
    expect = net.predict(mnist1000).numpy()
    agree = int((in_browser.predictions == expect).sum())
    assert agree == 1000, f"{1000 - agree} of 1,000 predictions differ"
    assert np.array_equal(in_browser.scores, net.scores(mnist1000).numpy())  # float64, exact
    _, fires = draw.reference(blob, mnist1000)
    assert np.array_equal(in_browser.fires, fires)


@needs_chromium
@needs_mnist
@needs_model
def test_a_drawn_stroke_changes_the_prediction(net, in_browser):
    blank, circle, seven = in_browser.strokes
    assert not any(blank["pixels"])
    for drawn, digit in ((circle, 0), (seven, 7)):
        px = torch.tensor(drawn["pixels"], dtype=torch.uint8).reshape(1, -1)
        assert 40 < int((px > 0).sum()) < 300  # strokes, scaled into a 20 x 20 box
        assert max(drawn["pixels"]) == 255  # the stroke's middle is full ink
        assert drawn["prediction"] == int(net.predict(px)[0])  # the page computes PackedNet's
        assert drawn["prediction"] == digit
    assert circle["prediction"] != blank["prediction"]
    # MNIST-like: centred by its centre of mass, inside the 28 x 28 frame with a margin.
    img = np.array(circle["pixels"], dtype=np.float64).reshape(28, 28)
    ys, xs = np.nonzero(img)
    cy = (img.sum(1) * np.arange(28)).sum() / img.sum()
    cx = (img.sum(0) * np.arange(28)).sum() / img.sum()
    assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5
    assert ys.min() >= 3 and ys.max() <= 24 and xs.min() >= 3 and xs.max() <= 24


def _chromium_dom(folder: Path, page: Path) -> str:
    cmd = [CHROMIUM, *draw.CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}"]
    cmd += ["--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def _root_attrs(dom: str) -> dict[str, str]:
    tag = re.search(r'<div[^>]*class="bnn-draw-root[^>]*>', dom)
    assert tag, "no draw-a-digit view in the page"
    return dict(re.findall(r'(data-[a-z]+)="([^"]*)"', tag.group(0)))


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mnist1000) -> Path:
    """A notebook that shows the widget, executed in a real kernel (nbclient)."""
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("nb")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import torch\nfrom bnnlib import data\nfrom bnnlib.book import draw\n"
            "test = data.load('mnist', split='test')\n"
            "X = data.to_uint8(test.X[10:14])\n"
            "draw.DrawDigit(examples=X, labels=test.y[10:14])"
        )
    ]
    NotebookClient(nb, kernel_name=book.kernel_name(), timeout=300).execute()
    path = folder / "draw.ipynb"
    nbformat.write(nb, path)
    return path


@needs_chromium
@needs_mnist
@needs_model
@pytest.mark.notebooks
@pytest.mark.parametrize("exporter", ["book", "nbconvert"])
def test_static_page_runs_the_model_with_no_kernel(executed, net, mnist1000, tmp_path, exporter):
    """The book's site drops the widget view of an output that has HTML and writes the weights
    script beside the page; plain nbconvert shows the HTML once the widget state is cleared
    (ClearMetadataPreprocessor), else it would need the widget manager from a CDN, and needs
    draw.write_assets."""
    out = executed.parent / exporter
    out.mkdir(exist_ok=True)
    outputs = nbformat.read(executed, as_version=4).cells[0].outputs
    bundle = next(o.data for o in outputs if o.output_type == "execute_result")
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" in bundle
    if exporter == "book":
        # The book's Jupyter Book site, which writes the weights script beside the page itself.
        run = Run(notebook="draw", title="Draw", executed=executed, seconds=0.0, parameters={})
        book_site.build_site([run], out / "html", "tests")
        page = out / "html" / "draw.html"
        assert page.stat().st_size < 1_500_000
        attrs = _root_attrs(_chromium_dom(tmp_path, page))
        assert attrs.get("data-ready") == "1", attrs
        first = data.to_uint8(data.load("mnist", split="test").X[10:11]).reshape(1, -1)
        assert attrs["data-prediction"] == str(int(net.predict(first)[0]))
        return
    else:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nbconvert",
                "--to",
                "html",
                "--ClearMetadataPreprocessor.enabled=True",
                "--output-dir",
                str(out),
                str(executed),
            ],
            check=True,
            capture_output=True,
        )
        page = out / "draw.html"
    assert page.stat().st_size < 1_500_000
    # Without its weights beside it, the view says what to run.
    attrs = _root_attrs(_chromium_dom(tmp_path, page))
    assert "write_assets" in attrs.get("data-error", ""), attrs
    asset = draw.write_assets(out)
    assert asset.parent == out and asset.stat().st_size < 1_900_000
    attrs = _root_attrs(_chromium_dom(tmp_path, page))
    assert attrs.get("data-ready") == "1", attrs
    # It shows the first example, predicted as PackedNet predicts it.
    first = data.to_uint8(data.load("mnist", split="test").X[10:11]).reshape(1, -1)
    assert attrs["data-prediction"] == str(int(net.predict(first)[0]))


_ANYWIDGET_HARNESS = """
<div id="view"></div><pre id="result"></pre>
<script type="module">
import("data:text/javascript;base64,%(js)s").then(async (m) => {
  const out = {saves: 0, sent: []};
  try {
    const weights = m.base64Bytes("%(weights)s");
    const state = {examples: new DataView(m.base64Bytes("%(examples)s").buffer),
                   example_labels: [7, 2], pixels: [], js_prediction: -1, kernel_prediction: -1,
                   asset_url: "%(asset)s", asset_key: "%(key)s"};
    const handlers = {};
    const model = {  // what anywidget gives render(): get/set/save_changes/on/off/send
      get: (k) => state[k],
      set: (k, v) => { state[k] = v; },
      save_changes: () => { out.saves++; },
      on: (name, f) => { (handlers[name] = handlers[name] || []).push(f); },
      off: (name, f) => { handlers[name] = (handlers[name] || []).filter((g) => g !== f); },
      send: (msg) => {
        out.sent.push(msg);
        if (msg.type === "weights?" && %(kernel)s) {  // the kernel's answer: one buffer
          const buffers = [new DataView(weights.buffer)];
          for (const f of handlers["msg:custom"] || []) f({type: "weights"}, buffers);
        }
      },
    };
    const el = document.getElementById("view");
    m.default.render({model, el});
    for (let t = 0; t < 100 && !el.bnnDraw; t++) await new Promise((r) => setTimeout(r, 100));
    out.first = {pixels: state.pixels.slice(), prediction: state.js_prediction};
    el.bnnDraw.stroke(%(stroke)s);
    out.drawn = {pixels: state.pixels.slice(), prediction: state.js_prediction};
    state.kernel_prediction = state.js_prediction;
    for (const f of handlers["change:kernel_prediction"] || []) f();
    out.text = el.textContent;
  } catch (err) {
    out.error = String(err && err.stack || err);
  }
  document.getElementById("result").textContent = "RESULT" + JSON.stringify(out) + "END";
});
</script>
"""


@needs_chromium
@needs_mnist
@needs_model
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel"])
def test_anywidget_view_gets_weights_and_reports_drawings(net, blob, mnist1000, tmp_path, kernel):
    """The anywidget view asks the kernel for the weights; with no kernel answering (a page
    that embeds the widget state) it loads them from the script beside the page."""
    (tmp_path / draw.asset_name(blob)).write_text(draw.asset_js(blob))
    body = _ANYWIDGET_HARNESS % {
        "kernel": "true" if kernel else "false",
        "weights": base64.b64encode(blob).decode(),
        "asset": draw.asset_name(blob),
        "js": base64.b64encode(draw.js_source().encode()).decode(),
        "key": draw.asset_name(blob)[len("bnn_draw_") : -len(".js")],
        "examples": base64.b64encode(mnist1000[:2].numpy().tobytes()).decode(),
        "stroke": json.dumps(CIRCLE),
    }
    page = tmp_path / "anywidget.html"
    page.write_text(draw.page_html(body))
    dom = _chromium_dom(tmp_path, page)
    out = json.loads(html.unescape(dom).split("RESULT", 1)[1].split("END", 1)[0])
    assert "error" not in out, out.get("error")
    assert out["sent"] == [{"type": "weights?"}]
    assert out["first"]["pixels"] == mnist1000[0].tolist()  # the first example is shown
    assert out["first"]["prediction"] == int(net.predict(mnist1000[:1])[0])
    drawn = torch.tensor(out["drawn"]["pixels"], dtype=torch.uint8).reshape(1, -1)
    assert out["drawn"]["prediction"] == int(net.predict(drawn)[0]) == 0
    assert out["saves"] >= 2
    assert "kernel (PackedNet.predict): 0, the same" in out["text"]


# --- the widget in a real kernel, through the protocol JupyterLab speaks ----------------------


def _iopub_until(kc, want, timeout=120):
    """iopub messages until ``want(msg)`` is true; returns that message."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msg = kc.get_iopub_msg(timeout=max(1.0, end - time.monotonic()))
        if want(msg):
            return msg
    raise AssertionError("no such message from the kernel")


@needs_mnist
@needs_model
@pytest.mark.notebooks
def test_widget_in_a_kernel_answers_the_view(net, blob, mnist1000):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=book.kernel_name())
    try:
        code = (
            "from bnnlib import data\nfrom bnnlib.book import draw\n"
            "X = data.to_uint8(data.load('mnist', split='test').X[:2])\n"
            "draw.DrawDigit(examples=X, labels=[7, 2])"
        )
        msg_id = kc.execute(code)
        result = _iopub_until(
            kc,
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id
                and m["msg_type"] in ("execute_result", "error")
            ),
        )
        assert result["msg_type"] == "execute_result", result["content"]
        data_ = result["content"]["data"]
        model_id = data_["application/vnd.jupyter.widget-view+json"]["model_id"]
        assert "mountStatic(" in data_["text/html"]

        def comm_msg(content):
            msg = kc.session.msg("comm_msg", {"comm_id": model_id, "data": content})
            kc.shell_channel.send(msg)

        # The view's request for the weights: one buffer, the weights file.
        comm_msg({"method": "custom", "content": {"type": "weights?"}})
        reply = _iopub_until(
            kc,
            lambda m: (
                m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "custom"
            ),
        )
        assert reply["content"]["data"]["content"]["type"] == "weights"
        assert bytes(reply["buffers"][0]) == blob
        # A drawing, as the view sends it: the kernel answers with PackedNet's prediction.
        for image in (mnist1000[1], mnist1000[0]):
            comm_msg({"method": "update", "state": {"pixels": image.tolist()}, "buffer_paths": []})
            update = _iopub_until(
                kc,
                lambda m: (
                    m["msg_type"] == "comm_msg"
                    and "kernel_prediction" in m["content"]["data"].get("state", {})
                ),
            )
            got = update["content"]["data"]["state"]["kernel_prediction"]
            assert got == int(net.predict(image.reshape(1, -1))[0])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_view_is_the_widget_live_and_only_html_in_a_book_run(small, monkeypatch):
    monkeypatch.delenv(bnnlib.settings.BOOK_RUN_VAR, raising=False)
    assert isinstance(draw.view(small), draw.DrawDigit)
    monkeypatch.setenv(bnnlib.settings.BOOK_RUN_VAR, "1")
    static = draw.view(small, examples=_images(2), labels=[1, 2])
    assert isinstance(static, draw.StaticView)
    data_, _ = format_display_data(static)
    assert set(data_) == {"text/html", "text/plain"} and "mountStatic(" in data_["text/html"]


def test_widget_traits_in_process(small):
    w = draw.DrawDigit(small, examples=_images(2), labels=[3, 4])
    x = _images(2)
    assert w.pixels == x[0].tolist()
    assert w.kernel_prediction == int(small.predict(x[:1])[0])
    w.pixels = x[1].tolist()
    assert w.kernel_prediction == int(small.predict(x[1:2])[0])
    assert w.kernel_scores == small.scores(x[1:2])[0].tolist()
    content, buffers = w.weights_message()
    assert content["type"] == "weights" and buffers == [draw.export_weights(small)]
    with pytest.raises(Exception, match="784 integers"):
        w.pixels = [0] * 10
    data_, _ = format_display_data(w)
    assert (
        "application/vnd.jupyter.widget-view+json" in data_ and "mountStatic(" in data_["text/html"]
    )
