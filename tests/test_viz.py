"""bnnlib.book.viz: figures, widgets with a static fallback, plotly.js; the Sign probes it draws."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from bnnlib.book import site as book_site
from bnnlib.book import viz
from bnnlib.nn.ste import ESTIMATORS


def test_sign_probes_see_what_each_estimator_passes_back():
    import torch

    import bnnlib
    from bnnlib.analysis import probes as probing

    torch.manual_seed(0)
    net = bnnlib.mnist_mlp(hidden=32, dropout_in=0, dropout_hidden=0)
    X, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net(X)  # one training-mode pass so the running statistics are not the initial ones
    net.eval()
    probes = {e: probing.sign_probes(net, X, y, estimator=e) for e in ESTIMATORS}
    assert [p.name for p in probes["hardtanh"]] == ["3", "6", "9"]  # the SignActivations
    for h, i, n in zip(probes["hardtanh"], probes["identity"], probes["none"], strict=True):
        assert torch.equal(h.input, i.input)  # the same weights, the same forward pass
        saturated = h.input.abs() > 1
        assert torch.count_nonzero(h.grad[saturated]) == 0  # Eq. 4: cancelled where |r| > 1
        assert torch.count_nonzero(n.grad) == 0
        assert probing.saturation(h.input) == saturated.float().mean().item()
    # The last hidden Sign gets the same upstream gradient with both straight-through
    # estimators: the paper's is the identity's, cancelled exactly where |r| > 1.
    h, i = probes["hardtanh"][-1], probes["identity"][-1]
    assert torch.equal(h.grad, i.grad.masked_fill(h.input.abs() > 1, 0))
    assert torch.count_nonzero(h.grad) > 0
    assert {m.estimator for m in net.modules() if isinstance(m, bnnlib.SignActivation)} == {
        "hardtanh"
    }  # restored
    assert all(p.grad is None for p in net.parameters())


def test_switchable_figure_has_one_button_per_option():
    import plotly.graph_objects as go

    from bnnlib.book import viz

    figures = {
        "a": go.Figure([go.Scatter(y=[1, 2]), go.Scatter(y=[2, 1])], layout={"title": "A"}),
        "b": go.Figure([go.Bar(y=[3])], layout={"title": "B"}),
    }
    fig = viz.switchable(figures)
    assert [t.visible for t in fig.data] == [True, True, False]
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["a", "b"]
    assert menu.buttons[1].args[0]["visible"] == [False, False, True]
    assert menu.buttons[1].args[1]["title.text"] == "B"


def test_figure_html_never_embeds_plotly_js_nor_a_cdn():
    html = viz.figure_html(go.Figure(go.Scatter(y=[1])))
    assert "Plotly.newPlot(" in html  # drawn by the page's one shared plotly.js
    assert "plotly.js v" not in html and len(html) < 20_000
    assert book_site.offline_problems(html) == []


def test_show_in_a_live_kernel_emits_only_plotlys_own_mimetype(monkeypatch):
    shown = []
    monkeypatch.setattr(viz, "show_figure", shown.append)
    monkeypatch.delenv(viz.BOOK_ENV, raising=False)
    viz.show(go.Figure(go.Scatter(y=[1, 2]), layout={"title": "t"}))
    assert set(shown[-1]) == {viz.PLOTLY_MIME, "text/plain"}  # a saved notebook stays small
    assert len(json.dumps(shown[-1])) < 20_000
    monkeypatch.setenv(viz.BOOK_ENV, "1")  # a book run: the exported page needs the div
    viz.show(go.Figure(go.Scatter(y=[1, 2])))
    assert "text/html" in shown[-1] and "plotly.js v" not in shown[-1]["text/html"]


def test_widget_fallback_follows_the_same_rule(monkeypatch):
    view = viz.widget_view(
        lambda o: go.Figure(go.Scatter(y=[len(o)]), layout={"title": o}), ["a", "bb"]
    )
    monkeypatch.delenv(viz.BOOK_ENV, raising=False)
    bundle = view._repr_mimebundle_()
    assert viz.PLOTLY_MIME in bundle and "text/html" not in bundle
    monkeypatch.setenv(viz.BOOK_ENV, "1")
    assert "updatemenus" in view._repr_mimebundle_()["text/html"]


@pytest.mark.parametrize(
    "num_epochs, dtick", [(3, 1), (10, 1), (12, 1), (13, 2), (30, 5), (80, 10), (1000, 100)]
)
def test_epoch_axis_ticks_whole_epochs(num_epochs, dtick):
    fig = viz.epoch_axis(
        go.Figure(go.Scatter(x=list(range(1, num_epochs + 1)), y=[0] * num_epochs)), num_epochs
    )
    assert fig.layout.xaxis.dtick == dtick and fig.layout.xaxis.tickformat == "d"
    assert num_epochs / dtick <= 12


def test_training_curves_whole_epochs_and_percent():
    h = [{"epoch": e, "train_error": 0.5 / e, "val_error": 0.4 / e} for e in range(1, 41)]
    fig = viz.training_curves({"run": h})
    assert fig.layout.xaxis.dtick == 5
    assert fig.data[1].y[0] == pytest.approx(40.0) and list(fig.data[1].x) == list(range(1, 41))


def test_training_curves_give_each_split_its_colour():
    h0 = [{"epoch": e, "val_error": 0.02, "test_error": 0.021} for e in range(1, 121)]
    h1 = [{"epoch": e, "val_error": 0.019, "test_error": 0.02} for e in range(1, 101)]
    one = viz.training_curves({"run": h0}, ("val_error", "test_error"))  # auto: by split
    assert one.data[0].line.color != one.data[1].line.color
    fig = viz.training_curves(
        {"seed 0": h0, "seed 1": h1}, ("val_error", "test_error"), color_by="metric"
    )
    style = {t.name: (t.line.color, t.line.dash) for t in fig.data}
    assert style["seed 0: val error"][0] == style["seed 1: val error"][0]
    assert style["seed 0: val error"][0] != style["seed 0: test error"][0]  # val vs test
    assert style["seed 0: val error"][1] != style["seed 1: val error"][1]  # seeds: dashes
    assert len(set(style.values())) == 4 and all(t.mode == "lines" for t in fig.data)
    by_run = viz.training_curves({"a": h0, "b": h1}, ("val_error", "test_error"))
    assert by_run.data[0].line.color == by_run.data[1].line.color != by_run.data[2].line.color
    with pytest.raises(ValueError, match="color_by"):
        viz.training_curves({"a": h0}, color_by="split")


def test_line_log_axes_read_as_powers_of_ten():
    fig = viz.line([1, 2, 3], {"pJ": [1e4, 1e8, 1e10]}, log_y=True, log_x=True)
    for axis in (fig.layout.yaxis, fig.layout.xaxis):
        assert axis.type == "log" and axis.exponentformat == "power"  # 10^10, not "10B"
    assert viz.line([1, 2], {"a": [1, 2]}).layout.yaxis.exponentformat is None


def test_line_draws_sampled_markers_under_the_curves():
    ys = {"curve": [0, 1, 2], "expectation": [0, 1, 2], "draws": [0.1, 0.9, 2.1]}
    fig = viz.line([0, 1, 2], ys, mode={"draws": "markers"})
    names = [t.name for t in fig.data]
    assert names.index("draws") < names.index("expectation")  # later traces are drawn on top
    ranks = {t.name: t.legendrank for t in fig.data}
    assert ranks["curve"] < ranks["expectation"] < ranks["draws"]  # the legend keeps ys' order
    draws = fig.data[names.index("draws")]
    assert draws.marker.opacity < 1
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == 3 and fig.data[names.index("curve")].line.color == viz.PALETTE[0]


def test_fraction_figure_keeps_the_papers_label_inside_the_figure():
    from bnnlib.analysis import filters

    long = "Unique 3x3 kernels per layer (a kernel and its negation once): " + "x" * 60
    fig = filters.fraction_figure(["a", "b"], {"t": [0.5, 1.0]}, paper=0.42, title=long)
    assert not fig.layout.annotations  # no free text to clip at the plot's edge
    (line,) = fig.layout.shapes
    assert (line.y0, line.y1, line.xref) == (42.0, 42.0, "x domain")
    legend = [t for t in fig.data if t.name and t.name.startswith("paper: ~42%")]
    assert len(legend) == 1 and legend[0].line.dash == "dash"  # labelled in the legend
    assert fig.layout.yaxis.range[0] <= 42 <= fig.layout.yaxis.range[1]
    title = fig.layout.title.text
    assert "<br>" in title and max(len(x) for x in title.split("<br>")) <= 80
    assert fig.layout.legend.y < 0  # under the plot: the title keeps its room


def test_training_curves_by_run_draw_training_dotted_and_validation_solid():
    """What notebook 05's text says of its figure: training error dotted, validation solid."""
    h = [{"epoch": e, "train_error": 0.1, "val_error": 0.2} for e in range(1, 4)]
    fig = viz.training_curves({"BNN": h, "float twin": h})
    dash = {t.name: t.line.dash for t in fig.data}
    assert dash == {
        "BNN: train error": "dot", "BNN: val error": "solid",
        "float twin: train error": "dot", "float twin: val error": "solid",
    }  # fmt: skip


def test_table_pads_cells_and_fixes_significant_digits(monkeypatch):
    shown = []
    monkeypatch.setattr(viz, "show_figure", shown.append)
    viz.table([{"run": "results/x_seed1", "seed": 1, "error": 0.30000001192092896}])
    page, text = shown[0]["text/html"], shown[0]["text/plain"]
    assert "0.30000001" not in page and ">0.3</td>" in page
    assert page.count("padding:") == 6  # every header and cell
    assert text.splitlines() == ["run" + " " * 14 + "seed  error", "results/x_seed1     1    0.3"]


def test_a_table_row_with_a_key_the_columns_lack_is_an_error(monkeypatch):
    """Rows keyed by their own epoch ("history, epoch 86" / "history, epoch 90") once lost every
    value but the first row's: now an error names the key."""
    monkeypatch.setattr(viz, "show_figure", lambda _: None)
    rows = [{"run": "a", "epoch 100": 150}, {"run": "b", "epoch 86": 157}]
    with pytest.raises(ValueError, match="row 1 has \\['epoch 86'\\]"):
        viz.table(rows)
    viz.table(rows, columns=["run", "epoch 100", "epoch 86"])  # named columns: missing = blank


def test_source_shows_a_bnnlib_function_read_from_its_file(monkeypatch):
    import IPython.display

    from bnnlib.nn.optim import clip_binary_weights

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    viz.source(clip_binary_weights)
    text = shown[0].data
    assert "bnnlib/nn/optim.py" in text and "def clip_binary_weights(" in text
    assert text.count("```") == 2


def test_reference_line_spans_the_figure_at_the_paper_figure():
    h = [{"epoch": e, "val_error": 0.02, "test_error": 0.015} for e in range(1, 101)]
    fig = viz.reference_line(viz.training_curves({"seed 0": h}, ("val_error", "test_error")), 1.40,
                             "paper (Torch7): 1.40%")  # fmt: skip
    line = fig.data[-1]
    assert list(line.x) == [1, 100] and list(line.y) == [1.40, 1.40]
    assert line.name == "paper (Torch7): 1.40%"
    with pytest.raises(ValueError, match="no data"):
        viz.reference_line(viz.go.Figure(), 1.0, "x")


def test_long_titles_wrap_instead_of_being_clipped(monkeypatch):
    title = "Figure 1 on a half-width ConvNet, CIFAR-10 subset (5,085 / 1,017), 50 epochs, two runs"
    assert viz.wrap_title("short") == "short"
    wrapped = viz.wrap_title(title)
    assert wrapped.replace("<br>", " ") == title
    assert all(len(line) <= viz.TITLE_CHARS for line in wrapped.split("<br>"))
    shown = []
    monkeypatch.setattr(viz, "show_figure", shown.append)
    viz.show(viz.go.Figure(layout={"title": title}))
    layout = shown[0][viz.PLOTLY_MIME]["layout"]
    assert layout["title"]["text"] == wrapped and layout["margin"]["t"] >= 100
