"""Draw a digit: a packed BNN classifies it live, in JupyterLab and on a static page.

The committed Torch7-preset model (``results/torch7_mnist/model.safetensors``, 784 -> 3 x 2048
-> 10, 1.26 MB of packed weights) runs in the page's JavaScript (``draw.js`` in this package)
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

from bnnlib.book.draw.browser import CHROMIUM_FLAGS, BrowserResult, browser_forward, chromium
from bnnlib.book.draw.page import (
    JS_PATH,
    asset_js,
    asset_name,
    default_model,
    js_source,
    page_html,
    view_html,
    write_assets,
    write_page,
)
from bnnlib.book.draw.weights import (
    MAGIC,
    VERSION,
    DrawModel,
    export_weights,
    parse_weights,
    reference,
)
from bnnlib.book.draw.widget import DrawDigit, StaticView, examples_figure, view

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
