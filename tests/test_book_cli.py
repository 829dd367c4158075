"""The command lines for a careless user: the book's ``-p NAME=VALUE`` typed and checked,
notebooks that lack their data finish and say so, executed copies without plotly.js in widget
state; ``bnnlib.train`` without data says what to set, once, without a usage dump.

Fast checks run the runner with a stand-in for papermill; the ``notebooks``-marked test runs one
small notebook in a real kernel (a widget, a data set that is not there, a cell using it).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from bnnlib import data
from bnnlib.book import needs
from bnnlib.book import notebooks as book_notebooks
from bnnlib.book import record as rec
from bnnlib.book import results as book_results
from bnnlib.book import runner as book

PARAMS = {
    "01_a": 'HIDDEN = 256  # units\nLR = 0.003  # learning rate\nNAME = "mnist"  # data set',
    "02_b": "HIDDEN = 64  # units\nFAST = False  # a flag\nSIZES = [1, 2]  # sizes",
    "03_c": "SEED = 0  # seed",
}


def _notebook(path: Path, params: str, *body: str) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), cell]
    nb.cells += [nbformat.v4.new_code_cell(b) for b in body]
    nbformat.write(nb, path)


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """Three notebooks and a stand-in for papermill that records the parameters each got."""
    book_dir = tmp_path / "book"
    book_dir.mkdir()
    for stem, params in PARAMS.items():
        _notebook(book_dir / f"{stem}.ipynb", params, "pass")
    got: dict[str, dict] = {}

    def run_notebook(path, out_dir, profile="small", *, extra_parameters=None, **kw):
        got[path.stem] = dict(extra_parameters or {})
        return book_results.Run(path.stem, path.stem, Path(out_dir) / path.name, 0.1, {}, [])

    monkeypatch.setattr(book, "run_notebook", run_notebook)
    monkeypatch.setattr(book, "kernel_name", lambda: "python3")
    args = ["--book-dir", str(book_dir), "--out", str(tmp_path / "out"), "--no-html"]
    return args, got


def test_p_values_take_the_type_of_each_notebooks_default(fake_book):
    args, got = fake_book
    p = ["-p", "HIDDEN=512", "-p", "LR=1e-3", "-p", "NAME=cifar10", "-p", "FAST=true"]
    assert book.main([*args, *p, "-p", "SIZES=[3, 4]"]) == 0
    assert got["01_a"] == {"HIDDEN": 512, "LR": 0.001, "NAME": "cifar10"}
    assert got["02_b"] == {"HIDDEN": 512, "FAST": True, "SIZES": [3, 4]}
    assert got["03_c"] == {}  # a notebook without the parameter keeps its defaults
    assert isinstance(got["01_a"]["HIDDEN"], int) and isinstance(got["01_a"]["LR"], float)
    got.clear()
    assert book.main([*args, "-p", 'NAME="1"', "-p", "LR=3"]) == 0  # quoted: still a string
    assert got["01_a"] == {"NAME": "1", "LR": 3.0}


@pytest.mark.parametrize(
    "item, only, expected",
    [
        ("HIDDEN=abc", None, ["HIDDEN must be an integer in 01_a.ipynb, 02_b.ipynb", "'abc'"]),
        ("HIDDEN=1.5", "02", ["HIDDEN must be an integer in 02_b.ipynb", "default 64"]),
        ("LR=fast", None, ["LR must be a number in 01_a.ipynb"]),
        ("FAST=maybe", None, ["FAST must be a boolean (True or False) in 02_b.ipynb"]),
        ("SIZES=3", None, ["SIZES must be a list"]),
        ("HIDEN=3", None, ["no selected notebook (01_a, 02_b, 03_c) has a parameter HIDEN",
                           "did you mean HIDDEN"]),
        ("LR=1", "02,03", ["no selected notebook (02_b, 03_c) has a parameter LR"]),
        ("hidden=3", None, ["write -p NAME=VALUE"]),
        ("HIDDEN", None, ["write -p NAME=VALUE"]),
    ],
)  # fmt: skip
def test_a_bad_p_is_one_error_before_anything_runs(fake_book, capsys, item, only, expected):
    args, got = fake_book
    extra = ["--only", only] if only else []
    assert book.main([*args, *extra, "-p", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bnnlib.book: error: -p ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not got  # nothing ran
    assert "Traceback" not in err


def test_the_real_notebooks_refuse_a_string_for_hidden():
    paths = book_notebooks.notebooks(only=["02"])
    with pytest.raises(book_notebooks.BookError, match=r"HIDDEN must be an integer in 02_"):
        book_notebooks.parse_overrides(["HIDDEN=abc"], paths)
    assert book_notebooks.parse_overrides(["HIDDEN=32"], paths) == {paths[0]: {"HIDDEN": 32}}


# --- data: the first data set that is here ---------------------------------------------------


def test_first_available_picks_the_first_data_set_under_the_root(tmp_path):
    assert data.first_available(["cifar10", "cifar10_subset"], tmp_path) is None
    subset = tmp_path / "CIFAR10-subset" / "cifar10_subset.npz"
    subset.parent.mkdir()
    subset.write_bytes(b"")  # only its presence counts; nothing is read
    assert data.first_available(["cifar10", "cifar10_subset"], tmp_path) == "cifar10_subset"
    assert data.first_available(["cifar10_subset", "cifar10"], tmp_path) == "cifar10_subset"
    with pytest.raises(TypeError, match="list of dataset names"):
        data.first_available("cifar10", tmp_path)


def test_dataset_or_skip_says_which_or_records_that_data_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(rec.ENV_VAR, raising=False)
    rec.clear()
    assert needs.dataset_or_skip("cifar10", ["cifar10_subset"], root=str(tmp_path)) == "cifar10"
    got = needs.dataset_or_skip("auto", ["cifar10", "cifar10_subset"], root=str(tmp_path))
    assert got is None
    out = capsys.readouterr().out
    assert "Data not available here: none of CIFAR-10, CIFAR-10 subset" in out
    assert str(tmp_path) in out and "BNN_DATA_DIR" in out
    assert not rec.recorded()  # no claim named: nothing recorded

    needs.dataset_or_skip("auto", ["cifar10"], claim="unique_filters", root=str(tmp_path))
    (entry,) = rec.recorded()
    assert entry["name"] == "unique_fraction_trained" and entry["value"] is None
    assert entry["status"] == "data not available here" and entry["paper"] == 0.42
    rec.clear()

    assert needs.dataset_or_skip("auto", ["cifar10"], needed=False, root=str(tmp_path)) is None
    assert "not needed here" in capsys.readouterr().out and not rec.recorded()

    subset = tmp_path / "CIFAR10-subset" / "cifar10_subset.npz"
    subset.parent.mkdir()
    subset.write_bytes(b"")
    got = needs.dataset_or_skip("auto", ["cifar10", "cifar10_subset"], root=str(tmp_path))
    assert got == "cifar10_subset"
    out = capsys.readouterr().out
    assert "DATASET = 'cifar10_subset'" in out and "CIFAR-10: not under the data root" in out


def test_skip_from_replaces_the_cells_from_the_first_that_uses_the_name():
    skip = needs.SkipFrom("DATASET", "skipped: no data")
    assert skip(["x = 1\n"]) == ["x = 1\n"]
    assert skip(["MY_DATASET = 2\n"]) == ["MY_DATASET = 2\n"]  # whole words only
    assert skip(["train = load(DATASET)\n"]) == ["print('skipped: no data')\n"]
    assert skip(["y = 2\n"]) == ["print('skipped: no data')\n"]  # and every cell after it
    assert needs.skip_from("DATASET", "x") is None  # outside IPython nothing is skipped


# --- a real kernel: executed copies small, a notebook without its data finishes ------------

_WIDGET = """
from bnnlib.book import viz
viz.widget_view(lambda k: viz.line([1, 2, 3], {k: [1, 4, 9]}, title=k), ["a", "b"])
"""
_NEEDS = """
from bnnlib.book.needs import dataset_or_skip
from bnnlib.book.record import record
record("before", 1)
DATASET = dataset_or_skip(DATASET, ("cifar10", "cifar10_subset"), claim="unique_filters")
"""
_USES = "record('after', DATASET.upper())  # fails unless skipped"


@pytest.mark.notebooks
def test_a_notebook_without_its_data_finishes_small_and_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("BNN_DATA_DIR", str(tmp_path / "empty"))
    path = tmp_path / "book" / "09_x.ipynb"
    path.parent.mkdir()
    params = 'DATASET = "auto"  # "auto" or a name'
    _notebook(path, params, _WIDGET, _NEEDS, "record('between', 2)", _USES, "record('end', 3)")
    run = book.run_notebook(path, tmp_path / "out", kernel=book.kernel_name(), timeout=300)

    records = {e["name"]: e for e in run.records}
    # The cells before the first use of DATASET run; that one and those after it are skipped.
    assert set(records) == {"before", "unique_fraction_trained", "between"}
    assert records["unique_fraction_trained"]["status"] == "data not available here"
    executed = nbformat.read(run.executed, as_version=4)
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells]
    # record() is silent in the book's run: the cell between ran (its record is above), quietly.
    assert "Data not available here" in texts[3] and texts[4] == ""
    assert all(t.startswith("skipped: data not available here") for t in texts[5:]), texts
    # "The paper vs this book" shows the claim's row as such.
    (row,) = [r for r in book_results.summary_rows([run]) if r["claim"].startswith("Only ~42%")]
    assert row["status"] == "data not available here" and row["ours"] == "—"

    # No widget state (anywidget's plotly FigureWidget carries all of plotly.js, ~5 MB), the
    # widget's static figure kept.
    assert run.executed.stat().st_size < 200_000, run.executed.stat().st_size
    assert "widgets" not in executed.metadata
    (widget_out,) = executed.cells[2].outputs
    assert "text/html" in widget_out["data"]
    assert book_notebooks.WIDGET_VIEW not in widget_out["data"]
    assert "without encryption" not in capfd.readouterr().err  # IPC transport: no warning

    # With the subset there, the same notebook uses it and runs to the end.
    subset = tmp_path / "empty" / "CIFAR10-subset" / "cifar10_subset.npz"
    subset.parent.mkdir(parents=True)
    subset.write_bytes(b"")
    run = book.run_notebook(path, tmp_path / "out2", kernel=book.kernel_name(), timeout=300)
    values = rec.values(run.records)
    assert values == {"before": 1, "between": 2, "after": "CIFAR10_SUBSET", "end": 3}


def test_static_outputs_drops_widget_state_and_views():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {"x": {"state": {"_esm": "p" * 100_000}}}}
    cell = nbformat.v4.new_code_cell("v")
    cell.outputs = [
        nbformat.v4.new_output(
            "execute_result",
            data={book_notebooks.WIDGET_VIEW: {"model_id": "x"}, "text/html": "<div>fig</div>"},
            execution_count=1,
        )
    ]
    nb.cells = [cell]
    assert book_notebooks.static_outputs(nb) > 100_000
    assert "widgets" not in nb.metadata
    assert dict(nb.cells[0].outputs[0]["data"]) == {"text/html": "<div>fig</div>"}
    assert book_notebooks.static_outputs(nb) == 0  # nothing left to drop


# --- python -m bnnlib.train without its data ----------------------------------------------------


def test_train_without_data_names_the_cli_fix_once(tmp_path, monkeypatch, capsys):
    from bnnlib.data import loaders
    from bnnlib.train import cli as train_cli

    monkeypatch.setattr(loaders, "probe_online", lambda url, timeout=3.0: (False, "offline"))
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--model", "mnist_mlp", "--epochs", "1", "--data-root", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("note: no --out: ") and err.count("no --out") == 1, err
    assert "usage:" not in err  # the flags were fine
    assert f"mnist not found under the data root {tmp_path} (from --data-root" in err
    assert "set BNN_DATA_DIR (a command's --data-root" in err and "offline" in err
