"""Figures for the book: plotly rendered offline, widgets with a static fallback.

The book's notebooks import only bnnlib; every figure goes through this module,
so it renders the same way in JupyterLab, in a headless papermill run and in
the exported HTML, which must work offline:

* :func:`show` displays a plotly figure. In a live JupyterLab it emits only
  plotly's own mimetype, which JupyterLab renders itself, so a notebook a
  reader saves does not grow by the 4.8 MB of plotly.js per figure. In a book
  run (``make book`` sets ``BNN_BOOK_RUN``) it adds an HTML div that uses the
  *shared* plotly.js: the HTML site loads one offline copy, ``_static/plotly.min.js``
  (:func:`bnnlib.book.site.build_site`), and no output embeds it.
* :func:`widget_view` is a view over computed data: ``compute(option)`` returns
  a figure for each option (all computed up front). In a live kernel it is a
  :class:`WidgetView`, toggle buttons above a ``FigureWidget`` that they update;
  its HTML fallback is the static figure with plotly's own buttons for the
  same options, so headless runs and the HTML export can still switch.
* Figure builders the notebooks share: :func:`line`, :func:`histograms`,
  :func:`binarized_histograms`, :func:`training_curves`, and :func:`table`.

What a figure measures on a model lives in :mod:`bnnlib.analysis` (e.g. the Sign activations'
probes, :mod:`bnnlib.analysis.probes`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from bnnlib import settings

__all__ = [
    "show",
    "figure_html",
    "widget_view",
    "WidgetView",
    "switchable",
    "line",
    "histograms",
    "binarized_histograms",
    "training_curves",
    "figure1",
    "epoch_axis",
    "reference_line",
    "threshold_figure",
    "table",
    "source",
    "METRIC_DASH",
]

HEIGHT = 420  # default figure height in pixels (an HTML page has no height to fill)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: plotly's default colour sequence, given explicitly where the drawing order differs.
PALETTE = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692",
           "#B6E880", "#FF97FF", "#FECB52")  # fmt: skip
CONFIG = {"displaylogo": False, "responsive": True}


#: Set by the book runner: outputs then carry an HTML div for the exported pages.
BOOK_ENV = settings.BOOK_RUN_VAR


#: Titles longer than this wrap onto a second line (a page column is ~800 px wide).
TITLE_CHARS = 70


def wrap_title(title: str, width: int = TITLE_CHARS) -> str:
    """``title`` broken with ``<br>`` at spaces into lines of at most ``width`` characters, so
    that a long title is not clipped at the figure's edge."""
    import textwrap

    if not title or "<br>" in title or len(title) <= width:
        return title
    return "<br>".join(textwrap.wrap(title, width, break_long_words=False))


def _sized(fig: go.Figure) -> go.Figure:
    fig = go.Figure(fig)
    if fig.layout.height is None:
        fig.update_layout(height=HEIGHT)
    title = fig.layout.title.text
    if title and wrap_title(title) != title:  # two lines: room for them above the plot
        top = max(fig.layout.margin.t or 0, 100)
        fig.update_layout(title_text=wrap_title(title), margin={"t": top})
    return fig


def figure_html(fig: go.Figure) -> str:
    """HTML of ``fig``: a div and the script drawing it with the page's shared plotly.js.

    Neither plotly.js itself (the page loads one copy) nor any CDN reference.
    """
    return _sized(fig).to_html(full_html=False, include_plotlyjs=False, config=CONFIG)


def show_figure(bundle: dict) -> None:
    from IPython.display import display

    display(bundle, raw=True)


def show(fig: go.Figure) -> None:
    """Display a plotly figure so it renders in JupyterLab, headless runs and offline HTML."""
    fig = _sized(fig)
    bundle = {
        PLOTLY_MIME: json.loads(fig.to_json()),
        "text/plain": f"<Figure: {fig.layout.title.text or 'plotly'}>",
    }
    if settings.book_run():
        bundle["text/html"] = figure_html(fig)
    show_figure(bundle)


# --- widgets -------------------------------------------------------------------------------


def switchable(figures: Mapping[str, go.Figure]) -> go.Figure:
    """One static figure holding every option's traces, with plotly buttons to switch.

    The figures must share their axes layout (same subplots); each button shows
    its option's traces and title.
    """
    labels = list(figures)
    first = _sized(figures[labels[0]])
    combined = go.Figure(layout=first.layout)
    owner: list[str] = []
    for label in labels:
        for trace in figures[label].data:
            combined.add_trace(trace)
            owner.append(label)
    for trace, label in zip(combined.data, owner, strict=True):
        trace.visible = label == labels[0]
    buttons = [
        {
            "label": label,
            "method": "update",
            "args": [
                {"visible": [o == label for o in owner]},
                {"title.text": figures[label].layout.title.text},
            ],
        }
        for label in labels
    ]
    menu = {"type": "buttons", "direction": "right", "buttons": buttons, "showactive": True}
    # Above the plot and any subplot titles; the top margin grows to make room.
    menu.update(x=0, xanchor="left", y=1.1, yanchor="bottom", pad={"b": 4})
    top = (first.layout.margin.t or 80) + 50
    combined.update_layout(updatemenus=[menu], margin={"t": top})
    return combined


class WidgetView(ipywidgets.VBox):
    """A VBox widget: toggle buttons (``.control``) over a plotly FigureWidget (``.figure``).

    ``.figures`` holds the figure computed for each option. Setting ``view.value``
    (or clicking a button) shows that option's figure. Displayed in JupyterLab it
    is the live widget; in a headless run or an HTML export its output falls back
    to :func:`switchable`'s static figure.
    """

    def __init__(
        self,
        compute: Callable[[str], go.Figure],
        options: Sequence[str],
        description: str = "",
    ) -> None:
        if not options:
            raise ValueError("widget_view needs at least one option")
        figures = {opt: _sized(compute(opt)) for opt in options}
        control = ipywidgets.ToggleButtons(
            options=list(options), value=options[0], description=description
        )
        figure = go.FigureWidget(figures[options[0]])
        super().__init__([control, figure])
        self.figures, self.control, self.figure = figures, control, figure
        control.observe(self._update, names="value")

    @property
    def value(self) -> str:
        return self.control.value

    @value.setter
    def value(self, option: str) -> None:
        self.control.value = option

    def _update(self, change: dict) -> None:
        new = self.figures[change["new"]]
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(list(new.data))
            self.figure.update_layout(new.layout.to_plotly_json())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        # JupyterLab renders the widget view; nbconvert and static viewers the HTML.
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        if settings.book_run():
            bundle["text/html"] = figure_html(switchable(self.figures))
        else:  # static viewers without the widget: plotly's mimetype, buttons included
            bundle[PLOTLY_MIME] = json.loads(switchable(self.figures).to_json())
        return bundle


def widget_view(
    compute: Callable[[str], go.Figure], options: Sequence[str], description: str = ""
) -> WidgetView:
    """A :class:`WidgetView` over ``compute(option)`` for each option; display it as cell value."""
    return WidgetView(compute, options, description)


# --- figure builders ------------------------------------------------------------------------


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def line(
    x: Any,
    ys: Mapping[str, Any],
    *,
    title: str = "",
    xaxis_title: str = "",
    yaxis_title: str = "",
    mode: str | Mapping[str, str] = "lines",
    log_x: bool = False,
    log_y: bool = False,
) -> go.Figure:
    """Curves ``ys[name]`` against one shared ``x``.

    ``mode`` is plotly's ``"lines"``, ``"markers"`` or ``"lines+markers"``, for all
    curves or per name (a dict; names left out get lines). Curves drawn as markers only
    (sampled points) go under the lines, half transparent, so a line through them stays
    visible; the legend keeps the order of ``ys``. A log axis labels its ticks as powers of
    ten (10⁹, not plotly's "1B").
    """
    fig = go.Figure()
    xs = _np(x)
    traces = []
    colours = PALETTE
    for rank, (name, y) in enumerate(ys.items()):
        m = mode if isinstance(mode, str) else mode.get(name, "lines")
        colour = colours[rank % len(colours)]  # the colour of its place in ys, whatever the order
        trace = go.Scatter(
            x=xs, y=_np(y), name=name, mode=m, legendrank=1000 + rank,
            line={"color": colour}, marker={"color": colour},
        )  # fmt: skip
        if m == "markers":
            trace.marker.update(size=6, opacity=0.6)
        traces.append(trace)
    # Markers-only traces first: plotly draws later traces on top.
    for trace in sorted(traces, key=lambda t: t.mode != "markers"):
        fig.add_trace(trace)
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    if log_x:
        fig.update_xaxes(type="log", exponentformat="power")
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def _bins(arrays: Sequence[np.ndarray], nbins: int) -> np.ndarray:
    """Shared bin edges over all arrays (a single value gets a bin of width 1)."""
    lo = min(float(a.min()) for a in arrays if a.size)
    hi = max(float(a.max()) for a in arrays if a.size)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, nbins + 1)


def _bars(values: np.ndarray, edges: np.ndarray, scale: float = 1.0, **kw: Any) -> go.Bar:
    # Counts are computed here so a figure holds nbins numbers, not every sample.
    counts, _ = np.histogram(values, edges)
    centers = (edges[:-1] + edges[1:]) / 2
    return go.Bar(x=centers, y=counts * scale, width=float(edges[1] - edges[0]), **kw)


def histograms(
    samples: Mapping[str, Any],
    *,
    title: str = "",
    xaxis_title: str = "",
    nbins: int = 60,
    log_y: bool = False,
    normalized: bool = True,
) -> go.Figure:
    """Overlaid histograms on shared bins, one per entry of ``samples`` (fractions by default)."""
    arrays = {name: _np(v).ravel().astype(np.float64) for name, v in samples.items()}
    edges = _bins(list(arrays.values()), nbins)
    fig = go.Figure()
    for name, a in arrays.items():
        scale = 1.0 / max(a.size, 1) if normalized else 1.0
        fig.add_trace(_bars(a, edges, scale, name=name, opacity=0.6))
    fig.update_layout(
        barmode="overlay",
        bargap=0,
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title="fraction" if normalized else "count",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def binarized_histograms(
    panels: Mapping[str, tuple[Any, Any]], *, title: str = "", nbins: int = 50
) -> go.Figure:
    """For each panel ``(real, binary)``: the histogram of the real values, stacked by outcome.

    Values that binarized to +1 and to -1 get their own colour, so a deterministic
    Sign shows a clean cut at 0 and a stochastic one a mixed band over [-1, 1].
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels))
    colors = {+1: "#1f77b4", -1: "#d62728"}
    for col, (real, binary) in enumerate(panels.values(), start=1):
        real, binary = _np(real).ravel().astype(np.float64), _np(binary).ravel()
        edges = _bins([real], nbins)
        for outcome in (+1, -1):
            bars = _bars(
                real[binary == outcome],
                edges,
                name=f"→ {outcome:+d}",
                marker_color=colors[outcome],
                legendgroup=str(outcome),
                showlegend=col == 1,
            )
            fig.add_trace(bars, row=1, col=col)
        fig.update_xaxes(title_text="real value", row=1, col=col)
    fig.update_layout(barmode="stack", bargap=0, title=title, yaxis_title="count")
    return fig


def _epochs(history: Any) -> list[dict]:
    if hasattr(history, "epochs"):
        return list(history.epochs)
    if isinstance(history, Mapping) and "epochs" in history:
        return list(history["epochs"])
    return list(history)


def training_curves(
    histories: Mapping[str, Any],
    metrics: Sequence[str] = ("train_error", "val_error"),
    *,
    title: str = "",
    color_by: str = "auto",
) -> go.Figure:
    """Error (in %) per epoch for each run; ``histories`` maps a label to a History.

    A History is a :class:`bnnlib.train.History`, its ``to_dict()``, or a list of
    per-epoch dicts. ``color_by="run"``: each run its colour, each metric its dash style;
    ``"metric"``: each metric (train / val / test) its colour, each run its dash style;
    by run, the training error is dotted and the validation error solid, as in the paper's
    Figure 1 (:data:`METRIC_DASH`);
    ``"auto"``: by metric for a single run, else by run. Runs over 30 epochs are drawn as
    lines without markers, so close curves stay apart.
    """
    if color_by not in ("auto", "run", "metric"):
        raise ValueError(f"color_by must be 'auto', 'run' or 'metric', got {color_by!r}")
    by_metric = color_by == "metric" or (color_by == "auto" and len(histories) == 1)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    dashes = ["solid", "dash", "dot", "dashdot"]
    num_epochs = max((len(_epochs(h)) for h in histories.values()), default=0)
    fig = go.Figure()
    for i, (label, history) in enumerate(histories.items()):
        epochs = _epochs(history)
        for j, metric in enumerate(metrics):
            points = [(e["epoch"], e[metric]) for e in epochs if e.get(metric) is not None]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            colour, dash = (j, i) if by_metric else (i, j)
            style = dashes[dash % len(dashes)]
            if not by_metric:
                style = METRIC_DASH.get(metric, style)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[100 * v for v in y],
                    name=f"{label}: {metric.replace('_', ' ')}",
                    mode="lines+markers" if num_epochs <= 30 else "lines",
                    line={
                        "color": palette[colour % len(palette)],
                        "dash": style,
                        "width": 2,
                    },
                )
            )
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="error (%)")
    epoch_axis(fig, num_epochs)
    return fig


def reference_line(fig: go.Figure, y: float, label: str) -> go.Figure:
    """A horizontal line at ``y`` across the figure (e.g. the paper's figure, in the figure's
    units), labelled at its right end and in the legend."""
    xs = [x for t in fig.data for x in (t.x or ())]
    if not xs:
        raise ValueError("reference_line: the figure has no data to span")
    fig.add_trace(
        go.Scatter(
            x=[min(xs), max(xs)], y=[y, y], name=label, mode="lines+text",
            text=["", label], textposition="top left",
            line={"color": "#444", "dash": "longdash", "width": 1.5},
        )
    )  # fmt: skip
    return fig


def threshold_figure(
    a: float, mu: float, beta: float, threshold: int, flip: bool, bound: int, *, title: str = ""
) -> go.Figure:
    """One hidden unit's batch norm in evaluation, ``y = a (s - mu) + beta``, over the integer
    pre-activations ``s`` near its integer threshold (of ``-bound .. bound``), with Sign(y): the
    curve crosses 0 between ``threshold - 1`` and ``threshold``, so Sign(BN(s)) is the integer
    compare ``s >= threshold`` (``s < threshold`` when ``flip``, a negative ``a``)."""
    span = max(6, int(abs(1.5 / a)) if a else 6)
    lo, hi = max(-bound, threshold - span), min(bound, threshold + span)
    s = np.arange(lo, hi + 1)
    y = a * (s - mu) + beta
    bit = np.where(y >= 0, 1.0, -1.0)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=s, y=y, name="BN(s) = a (s − μ) + β", mode="lines+markers",
                             line={"color": PALETTE[0]}))  # fmt: skip
    fig.add_trace(go.Scatter(x=s, y=bit, name="Sign(BN(s))", mode="markers",
                             marker={"color": PALETTE[1], "symbol": "square"}))  # fmt: skip
    compare = f"s < {threshold}" if flip else f"s ≥ {threshold}"
    fig.add_vline(x=threshold - 0.5, line={"dash": "dash", "color": "#444"})
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    fig.add_annotation(x=threshold - 0.5, y=float(max(y.max(), 1)), text=f"+1 iff {compare}",
                       showarrow=False, xanchor="left", yanchor="bottom")  # fmt: skip
    fig.update_layout(
        title=title, xaxis_title="integer pre-activation s (popcount form)",
        yaxis_title="batch-norm output / bit",
    )  # fmt: skip
    return fig


#: The dash of each metric when each run has its colour: Figure 1's dotted training and solid
#: validation curves.
METRIC_DASH = {"train_error": "dot", "val_error": "solid", "test_error": "dash", "loss": "dot"}


def epoch_axis(fig: go.Figure, num_epochs: int, row: int | None = None, col=None) -> go.Figure:
    """Ticks on whole epochs only (1, 2, ... or every 2, 5, 10, 20, 50, ... epochs)."""
    step = 1
    for candidate in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        step = candidate
        if num_epochs / candidate <= 12:
            break
    fig.update_xaxes(tick0=0 if step > 1 else 1, dtick=step, tickformat="d", row=row, col=col)
    return fig


_CELL_STYLE = "padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: {};"


def table_cell(v: Any, digits: int = 4) -> str:
    """A table cell's text: a float with ``digits`` significant digits (no float noise such as
    0.30000001192092896), other values as they are."""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 4
) -> None:
    """Display rows (dicts) as an HTML table with padded cells, numbers right-aligned, floats
    to ``digits`` significant digits (plain text, columns aligned, when no HTML is rendered).
    The columns are ``columns`` (a row's other keys are left out), else the first row's keys:
    then a later row with another key is an error (its value would not be shown)."""
    named = columns is not None
    columns = list(columns if named else (rows[0].keys() if rows else []))
    for i, r in enumerate(rows):
        extra = [k for k in r if k not in columns]
        if extra and not named:
            raise ValueError(
                f"viz.table: row {i} has {extra}, not among the columns {columns}: give every "
                "row the same keys (or pass columns=...)"
            )
    texts = [[table_cell(r.get(c, ""), digits) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)
        for c in columns
    ]

    def td(tag: str, text: str, right: bool) -> str:
        style = _CELL_STYLE.format("right" if right else "left")
        return f'<{tag} style="{style}">{html.escape(text)}</{tag}>'

    head = "".join(td("th", c, n) for c, n in zip(columns, numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(td("td", t, n) for t, n in zip(row, numeric, strict=True)) + "</tr>"
        for row in texts
    )
    widths = [max([len(c)] + [len(row[i]) for row in texts]) for i, c in enumerate(columns)]
    lines = []
    for line in [columns, *texts]:
        cells = zip(line, widths, numeric, strict=True)
        lines.append("  ".join(t.rjust(w) if n else t.ljust(w) for t, w, n in cells).rstrip())
    text = "\n".join(lines)
    show_figure(
        {
            "text/html": '<table style="border-collapse: collapse;"><thead><tr>'
            f"{head}</tr></thead><tbody>{body}</tbody></table>",
            "text/plain": text,
        }
    )


def _without_docstrings(code: str) -> str:
    """``code`` without the docstrings of its functions and classes (the book's text says what
    they say)."""
    import ast

    drop: set[int] = set()
    for node in ast.walk(ast.parse(code)):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            drop |= set(range(body[0].lineno, body[0].end_lineno + 1))
    return "\n".join(line for i, line in enumerate(code.splitlines(), 1) if i not in drop)


def source(obj: Any, *, docstring: bool = False) -> None:
    """Show the source code of a bnnlib function, method or class (read with :mod:`inspect`,
    never copied into the notebook) as a Python code block, with the file it comes from; its
    docstrings left out unless ``docstring``."""
    import inspect
    import textwrap
    from pathlib import Path

    from IPython.display import Markdown, display

    obj = inspect.unwrap(obj)
    code = textwrap.dedent(inspect.getsource(obj)).rstrip()
    if not docstring:
        code = _without_docstrings(code)
    path = Path(inspect.getsourcefile(obj) or "?")
    parts = path.parts
    where = "/".join(parts[parts.index("bnnlib") :]) if "bnnlib" in parts else path.name
    name = f"{obj.__module__}.{obj.__qualname__}"
    display(Markdown(f"`{name}` ({where}):\n\n```python\n{code}\n```"))


def figure1(histories: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """The paper's Figure 1 for runs of one network (Section 2.3): per epoch, the training cost
    (dotted, the square hinge loss averaged over the epoch) on the left and the validation error
    (solid) on the right, one colour per run; ``histories`` maps a label (e.g. "BNN",
    "float") to a History as in :func:`training_curves`."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("training cost (square hinge)", "validation error (%)")
    )
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for i, (label, history) in enumerate(histories.items()):
        epochs = _epochs(history)
        colour = palette[i % len(palette)]
        x = [e["epoch"] for e in epochs]
        fig.add_trace(
            go.Scatter(x=x, y=[e["loss"] for e in epochs], name=f"{label}: training cost",
                       mode="lines", line={"color": colour, "dash": "dot"}),
            row=1, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=x, y=[100 * e["val_error"] for e in epochs],
                       name=f"{label}: validation error", mode="lines",
                       line={"color": colour, "dash": "solid"}),
            row=1, col=2,
        )  # fmt: skip
    n = max((len(_epochs(h)) for h in histories.values()), default=0)
    for col in (1, 2):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
        epoch_axis(fig, n, row=1, col=col)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_layout(title=title, legend={"orientation": "h", "y": -0.25})
    return fig
