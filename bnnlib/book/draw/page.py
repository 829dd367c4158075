"""The draw-a-digit view as HTML that runs with no kernel, and the weights script beside it.

:func:`view_html` is a div and an inline ``<script type="module">`` with ``draw.js``, which
loads the weights from a script beside the page (:func:`asset_name`:
``bnn_draw_<sha256[:12]>.js``, base64, 1.7 MB; a page stays small). **A site build must write
that file beside the HTML pages:** :func:`write_assets` ``(html_dir)``; without it the view says
so and names this function. :func:`write_page` writes a whole page and its script.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bnnlib import results
from bnnlib.book.draw.weights import SIZE, export_weights
from bnnlib.files import atomic_write
from bnnlib.inference import PackedNet, load

__all__ = [
    "JS_PATH",
    "js_source",
    "default_model",
    "as_packed_net",
    "asset_key",
    "asset_name",
    "asset_js",
    "write_assets",
    "examples_bytes",
    "view_html",
    "page_html",
    "write_page",
]


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


def as_packed_net(model: PackedNet | str | os.PathLike | None) -> PackedNet:
    """``model`` as a PackedNet: loaded from a path; None: :func:`default_model`."""
    if model is None:
        return default_model()
    return model if isinstance(model, PackedNet) else load(model)


# --------------------------------------------------------------------------------------------
# The static page: HTML, and the weights beside it
# --------------------------------------------------------------------------------------------


def asset_key(blob: bytes) -> str:
    """The weights' key: the first 12 hex digits of their SHA-256."""
    return hashlib.sha256(blob).hexdigest()[:12]


def asset_name(blob: bytes) -> str:
    """The file name of the weights script beside a page: ``bnn_draw_<sha256[:12]>.js``."""
    return f"bnn_draw_{asset_key(blob)}.js"


def asset_js(blob: bytes) -> str:
    """The weights script: sets ``globalThis.bnnDrawWeights[key]`` to the file's base64."""
    b64 = base64.b64encode(blob).decode()
    return (
        "// bnnlib.book.draw: the packed weights of the draw-a-digit view (base64)\n"
        "(globalThis.bnnDrawWeights = globalThis.bnnDrawWeights || {})"
        f'["{asset_key(blob)}"] = "{b64}";\n'
    )


def write_assets(html_dir: str | os.PathLike, model: PackedNet | str | None = None) -> Path:
    """Write the weights script of ``model`` (default: the committed Torch7 MNIST model) into
    ``html_dir``, beside the pages that show the draw-a-digit view; returns its path.

    The site build calls it once with the folder of the HTML pages (nothing else to copy)."""
    blob = export_weights(as_packed_net(model))
    folder = Path(html_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write(folder / asset_name(blob), asset_js(blob).encode())


def examples_bytes(examples: Any) -> tuple[bytes, int]:
    """uint8 28 x 28 ``examples`` as their bytes and count (None: none); ValueError else."""
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
    ex, n = examples_bytes(examples)
    opts = {
        "key": asset_key(blob),
        "assetUrl": asset_url or asset_name(blob),
        "examples": base64.b64encode(ex).decode() if n else None,
        "labels": [int(v) for v in labels] if labels is not None else None,
    }
    eid = element_id or f"bnn-draw-{asset_key(blob)}-{hashlib.sha256(ex).hexdigest()[:6]}"
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
    blob = export_weights(as_packed_net(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent / asset_name(blob), asset_js(blob).encode())
    return atomic_write(path, page_html(view_html(blob, examples, labels)).encode())
