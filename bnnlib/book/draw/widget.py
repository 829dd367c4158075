"""The draw-a-digit view in JupyterLab (an anywidget) and its static fallback.

:class:`DrawDigit` runs the network in the browser as you draw and sends the pixels to the
kernel, which answers with :meth:`PackedNet.predict` (``kernel_prediction``) so the two can be
compared. :func:`view` gives the widget in a live kernel and, in a book run, a
:class:`StaticView` (the HTML only). Headless, the notebook also shows :func:`examples_figure`:
a few test images with the model's ten scores and how many bits of each hidden layer fire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anywidget
import plotly.graph_objects as go
import torch
import traitlets
from plotly.subplots import make_subplots

from bnnlib import settings
from bnnlib.book.draw.page import (
    as_packed_net,
    asset_key,
    asset_name,
    examples_bytes,
    js_source,
    view_html,
)
from bnnlib.book.draw.weights import SIZE, export_weights, parse_weights, reference
from bnnlib.inference import PackedNet

__all__ = ["DrawDigit", "StaticView", "view", "examples_figure"]


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
        self.net = as_packed_net(model)
        self.weights = blob = export_weights(self.net)
        ex, n = examples_bytes(examples)
        super().__init__(
            asset_url=asset_name(blob),
            asset_key=asset_key(blob),
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
        net = as_packed_net(model)
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
