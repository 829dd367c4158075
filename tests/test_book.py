"""bnnlib.book: the parameters cell, profiles, the runner, the offline HTML, the summary table."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from bnnlib import paper
from bnnlib.book import landing
from bnnlib.book import notebooks as book_notebooks
from bnnlib.book import results as book_results
from bnnlib.book import runner as book
from bnnlib.book import site as book_site
from bnnlib.book import tags as book_tags


def _tiny_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("VALUE = 1  # what is recorded")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {path.stem}"),
        nbformat.v4.new_code_cell("from bnnlib.book.record import record"),
        params,
        nbformat.v4.new_code_cell(body),
    ]
    nbformat.write(nb, path)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("lr = 0.1  # lower case", "UPPER_CASE"),
        ("LR = 0.1", "comment"),
        ("LR = 1 / 3  # not a literal", "literal"),
        ("A = B = 1  # two targets", "one assignment"),
        ("LR = (  # broken", "not Python"),
    ],
)
def test_parameters_cell_rules(source, problem):
    with pytest.raises(book_notebooks.BookError, match=problem):
        book_notebooks.parameters(source)


def test_parameters_parse():
    got = book_notebooks.parameters(
        'SEED = 0  # seed\n\n# a section\nNAME = "a # b"  # the name\nX = 3e-7  # x'
    )
    assert got == {"SEED": (0, "seed"), "NAME": ("a # b", "the name"), "X": (3e-7, "x")}


def test_yaml_names_and_types_are_checked(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("LR = 0.1  # lr\nN = 2  # n")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "params").mkdir()
    yaml_file = tmp_path / "params" / "01_x.full.yaml"
    yaml_file.write_text("LR: 1\nN: 3\n")
    assert book_notebooks.profile_parameters(path, "full") == {"LR": 1, "N": 3}
    yaml_file.write_text("LRR: 0.1\n")
    with pytest.raises(book_notebooks.BookError, match="not a parameter"):
        book_notebooks.profile_parameters(path, "full")
    yaml_file.write_text("LR: 3e-7\n")  # YAML 1.1 reads this as a string
    with pytest.raises(book_notebooks.BookError, match="type"):
        book_notebooks.profile_parameters(path, "full")


def test_offline_check_finds_remote_references():
    assert book_site.offline_problems('<script src="data.js"></script><p>https://cdn.x</p>') == []
    for page in (
        '<script src="https://cdn.plot.ly/plotly.min.js"></script>',
        "<script type='text/javascript' src='//cdnjs.cloudflare.com/require.js'></script>",
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css">',
        '<script type="module">await import("https://cdn.jsdelivr.net/x.mjs")</script>',
    ):
        assert book_site.offline_problems(page), page


@pytest.mark.notebooks
def test_runner_collects_results_exports_html_and_names_a_failing_cell(tmp_path, capsys):
    book_dir, out = tmp_path / "book", tmp_path / "out"
    (book_dir / "params").mkdir(parents=True)
    _tiny_notebook(book_dir / "01_ok.ipynb", 'record("answer", VALUE * 42, paper=42)')
    (book_dir / "params" / "01_ok.full.yaml").write_text("VALUE: 2\n")
    _tiny_notebook(book_dir / "02_fail.ipynb", 'raise ValueError("boom")')

    args = ["--book-dir", str(book_dir), "--out", str(out)]
    assert book.main([*args, "--only", "01", "--profile", "full"]) == 0
    results = json.loads((out / "results.json").read_text())
    (nb,) = results["notebooks"]
    assert nb["parameters"] == {"VALUE": 2}
    assert [(e["name"], e["value"], e["paper"]) for e in nb["records"]] == [("answer", 84, 42)]
    assert "| answer | 84 |" in (out / "results.md").read_text()
    index = (out / "html" / "index.html").read_text()
    assert 'href="01_ok.html"' in index
    assert (out / "html" / "01_ok.html").exists() and (out / "01_ok.ipynb").exists()
    # The site opens with "the paper vs this book" and each row's details; the per-notebook
    # records are on their own page, linked from it.
    article = index[index.index("<article") :]
    assert article.index("The paper vs this book") < article.index("Details of each row")
    assert "answer" not in article and 'href="records.html"' in article
    records = (out / "html" / "records.html").read_text()
    assert "answer" in records[records.index("<article") :]
    md = (out / "results.md").read_text()
    assert md.index("## The paper vs this book") < md.index("## Appendix") < md.index("| answer |")
    # One shared, offline plotly.js in _static/; every page loads it by a relative path.
    js = (out / "html" / "_static" / book_site.PLOTLY_JS).read_text()
    assert "plotly.js v" in js and len(js) > 1_000_000
    page = (out / "html" / "01_ok.html").read_text()
    assert f'src="_static/{book_site.PLOTLY_JS}' in page and "plotly.js v" not in page
    assert book_site.page_problems(out / "html") == []

    assert book.main([*args, "--only", "02", "--no-html"]) == 1
    err = capsys.readouterr().err
    assert "02_fail.ipynb failed in cell 3" in err and "ValueError: boom" in err


def _run(notebook: str, records: list[dict]) -> book_results.Run:
    return book_results.Run(notebook, "t", Path(f"{notebook}.ipynb"), 1.0, {}, records)


def test_summary_has_one_row_per_claim_with_status():
    runs = [
        _run("03_shift_batch_norm", [
            {"name": "test_error_gap_shift_minus_standard", "value": 0.001, "data": "MNIST x",
             "schedule": "5 epochs", "hardware": "CPU: x", "seed": 0, "status": "reduced run"},
        ]),
        _run("09_filter_repetition", [{"name": "unique_fraction_trained", "value": 0.45}]),
    ]  # fmt: skip
    rows = book_results.summary_rows(runs)
    keys = [c.key for c in paper.CLAIMS]
    claims_shown = [r["claim"] for r in rows]
    # every claim of the paper has its row, the committed CPU rows come with them
    assert all(paper.claim(k).claim in claims_shown for k in keys)
    by_claim = {r["claim"]: r for r in rows}
    gap = by_claim[paper.claim("shift_bn_no_loss").claim]
    assert (gap["paper"], gap["ours"], gap["status"]) == ('"no loss"', "0.10%", "reduced run")
    assert gap["how measured"] == "notebook 03, CPU"  # a few words; the rest in the notes
    assert "5 epochs" in gap["details"] and gap["machines"] == ["CPU: x"]
    assert gap["section"] == "03_shift_batch_norm"
    uf = by_claim[paper.claim("unique_filters").claim]
    assert uf["status"] == "reproduced"  # 0.45 within 25% of the paper's 0.42
    assert uf["section"] == "09_filter_repetition"
    adamax = by_claim[paper.claim("shift_adamax_no_loss").claim]
    assert (adamax["ours"], adamax["status"]) == ("—", "not run yet")  # no record
    # 32 bits over 1 is an identity: computed, not reproduced (issue 28), the file's ratio beside
    memory = by_claim[paper.claim("memory_ratio").claim]
    assert memory["status"] == "computed" and "32.0× weights" in memory["ours"]
    assert by_claim[paper.claim("energy_mac").claim]["status"] == "computed"
    assert by_claim[paper.claim("table1_svhn").claim]["status"] == "data not available here"
    gpu = by_claim[paper.claim("gpu_xnor_over_baseline").claim]
    assert (gpu["status"], gpu["ours"]) == ("not run yet: needs a GPU", "—")
    assert all(r["status"] in paper.STATUSES for r in rows)


def _fake_book(tmp_path, monkeypatch, fail: str | None):
    """Three notebooks run by a stand-in for papermill: each records one value, ``fail`` raises
    the BookError a failing cell gives. Returns (args, the timeouts each run got)."""
    book_dir, out = tmp_path / "book", tmp_path / "out"
    book_dir.mkdir(parents=True)
    for name in ("01_a", "02_b", "03_c"):
        _tiny_notebook(book_dir / f"{name}.ipynb", "pass")
    timeouts = []

    def run_notebook(path, out_dir, profile="small", *, timeout=None, **kw):
        timeouts.append(timeout)
        if path.stem == fail:
            raise book_notebooks.BookError(
                f"{path.name} failed in cell 3 (execution count 2):\n  boom"
            )
        rec = [{"name": f"value_{path.stem}", "value": 1.0}]
        return book_results.Run(path.stem, path.stem, Path(out_dir) / path.name, 0.5, {}, rec)

    monkeypatch.setattr(book, "run_notebook", run_notebook)
    monkeypatch.setattr(book, "kernel_name", lambda: "python3")
    return ["--book-dir", str(book_dir), "--out", str(out), "--no-html"], timeouts


def test_failed_notebook_still_writes_the_finished_results_marked_incomplete(
    tmp_path, monkeypatch, capsys
):
    """A failing notebook used to throw away the finished notebooks' results and leave an older
    results.md in place, looking current."""
    args, _ = _fake_book(tmp_path, monkeypatch, fail=None)
    assert book.main(args) == 0
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert "INCOMPLETE" not in (out / "results.md").read_text()

    args, _ = _fake_book(tmp_path / "again", monkeypatch, fail="02_b")
    args[args.index("--out") + 1] = str(out)  # over the complete results of the first run
    assert book.main(args) == 1
    assert "02_b.ipynb failed in cell 3" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert results["failed"]["notebook"] == "02_b" and "boom" in results["failed"]["error"]
    assert results["not_run"] == ["03_c"]
    assert [nb["notebook"] for nb in results["notebooks"]] == ["01_a"]
    md = (out / "results.md").read_text()
    banner = "> **INCOMPLETE**: notebook `02_b` failed (02_b.ipynb failed in cell 3"
    assert banner in md and "Not run: `03_c`." in md
    assert md.index("# Results of the book") < md.index("INCOMPLETE") < md.index("## The paper")
    assert "value_01_a" in md and "value_03_c" not in md


def test_interrupted_or_failing_runs_never_leave_old_output_looking_current(
    tmp_path, monkeypatch, capsys
):
    """A failed book run used to leave the previous html/index.html unmarked; Ctrl-C or a
    malformed params YAML gave a traceback and left the old results.md unmarked."""
    args, _ = _fake_book(tmp_path, monkeypatch, fail=None)
    out = tmp_path / "out"
    assert book.main(args) == 0
    (out / "html").mkdir()
    (out / "html" / "index.html").write_text("<html>the old book</html>")

    def interrupted(path, out_dir, profile="small", **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(book, "run_notebook", interrupted)
    assert book.main(args) == 130
    assert "INTERRUPTED" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and "interrupted" in results["failed"]["error"]
    assert "INCOMPLETE" in (out / "results.md").read_text()
    assert not (out / "html" / "index.html").exists()

    book_dir = Path(args[args.index("--book-dir") + 1])
    (book_dir / "params").mkdir()
    (book_dir / "params" / "01_a.tests.yaml").write_text("SLEEP: [1\n")
    with pytest.raises(book_notebooks.BookError, match="01_a.tests.yaml: not valid YAML"):
        from bnnlib.book.notebooks import profile_parameters

        profile_parameters(book_dir / "01_a.ipynb", "tests")


def test_timeout_option_reaches_papermill(tmp_path, monkeypatch):
    args, timeouts = _fake_book(tmp_path, monkeypatch, fail=None)
    assert book.main(args) == 0 and timeouts == [book.DEFAULT_TIMEOUT] * 3 == [1800] * 3
    timeouts.clear()
    assert book.main([*args, "--timeout", "5"]) == 0 and timeouts == [5] * 3
    timeouts.clear()
    assert book.main([*args, "--timeout", "0"]) == 0 and timeouts == [None] * 3
    timeouts.clear()
    assert book.main([*args, "--profile", "full"]) == 0 and timeouts == [None] * 3
    with pytest.raises(SystemExit):
        book.main([*args, "--timeout", "-1"])


def test_run_notebook_passes_the_timeout_to_papermill(tmp_path, monkeypatch):
    import papermill

    seen = {}

    def execute_notebook(src, dst, **kw):
        seen.update(kw)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    path = tmp_path / "01_x.ipynb"
    _tiny_notebook(path, "pass")
    book.run_notebook(path, tmp_path / "out", kernel="python3", timeout=7)
    assert seen["execution_timeout"] == 7


def test_the_default_book_dir_holds_the_book():
    """BOOK_DIR pointed into the package after the move: make book found no notebook."""
    found = [p.name for p in book_notebooks.notebooks()]
    assert len(found) >= 9 and found[0].startswith("01_") and found[-1][:2] >= "09"


def _landing_runs(tmp_path):
    """Two notebooks' runs, their executed copies with the headings the claims link to."""
    runs = []
    for name, heading, records in [
        ("03_shift_batch_norm", "## Training with each", [
            {"name": "test_error_gap_shift_minus_standard", "value": 0.014, "data": "MNIST x",
             "schedule": "5 epochs", "hardware": "CPU: x", "seed": 0, "status": "reduced run"},
            {"name": "test_error_gap_shift_minus_standard_interval95", "value": [0.005, 0.023]},
        ]),
        ("05_training", "## The committed runs: the Torch7 column of Table 1, on a CPU", []),
    ]:  # fmt: skip
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\n{heading}\n\ntext")]
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        runs.append(book_results.Run(name, name, tmp_path / f"{name}.ipynb", 1.0, {}, records))
    return runs


def test_results_page_links_each_claim_to_the_section_that_shows_it(tmp_path):
    runs = _landing_runs(tmp_path)
    page = landing.results_page(runs, "small")
    rows = book_results.summary_rows(runs)
    table = page[page.index('<table class="bnn-claims">') : page.index("</table>")]
    assert table.count("<tr id=") == len(rows)
    assert '<a href="03_shift_batch_norm.html#training-with-each">' in table
    torch7 = "05_training.html#the-committed-runs-the-torch7-column-of-table-1-on-a-cpu"
    assert f'<a href="{torch7}">' in table
    assert "06_xnor_kernels.html" not in table  # not in this site: no link
    # Each row's details are a fold right under the table; the records are on their own page.
    for i in range(1, len(rows) + 1):
        assert f'href="#row-{i}"' in table and f'<details class="bnn-row" id="row-{i}">' in page
    assert "## Appendix" not in page and "test_error_gap" not in page
    assert "test\\_error\\_gap\\_shift\\_minus\\_standard" in landing.records_page(runs)
    # A "no loss" row shows its gap's interval.
    gap = next(r for r in rows if r["key"] == "shift_bn_no_loss")
    assert gap["ours"] == "+1.40 points (95% interval +0.50 to +2.30)"


def test_landing_page_colours_each_status_and_says_the_verdict(tmp_path):
    runs = _landing_runs(tmp_path)
    rows = book_results.summary_rows(runs)
    page = landing.results_page(runs, "small")
    kinds = {landing.STATUS_KIND[s] for s in paper.STATUSES}
    assert len(kinds) == 7 and set(landing.STATUS_KIND) == set(paper.STATUSES)
    for row in rows:
        assert f'bnn-status-{landing.STATUS_KIND[row["status"]]}">{row["status"]}<' in page
    css = landing.CSS
    for kind in kinds:
        assert f".bnn-status-{kind} {{" in css
    lines = landing.verdict(rows)
    assert len(lines) == 3
    n = {s: sum(r["status"] == s for r in rows) for s in paper.STATUSES}
    assert f"**{n['reproduced']} reproduced**" in lines[0]
    assert f"**{n['not reproduced']} not reproduced**" in lines[0]
    assert f"**{n['reduced run']} rows**" in lines[1] and "shift batch norm, no loss" in lines[1]
    assert f"**{n['measured'] + n['computed']} measured or computed**" in lines[2]
    assert f"{n['not run yet: needs a GPU']} need a GPU" in lines[2]
    assert "@media (max-width: 700px)" in css  # cards on a phone
    legend = page[page.index('<ul class="bnn-legend">') :]
    for status in paper.STATUSES:  # the legend shows each status as its badge
        assert f'bnn-status-{landing.STATUS_KIND[status]}">{status}</span> ' in legend


@pytest.mark.parametrize(
    "text, command",
    [
        ("run python -m bnnlib.train --preset torch7 --out runs/x; then", "python -m bnnlib.train"
         " --preset torch7 --out runs/x"),
        ("(python -m bnnlib.train.recipes --out results/recipe_comparison.json)",
         "python -m bnnlib.train.recipes --out results/recipe_comparison.json"),
        ("subset runs (make convnet-subset: batch 50)", "make convnet-subset"),
    ],
)  # fmt: skip
def test_commands_are_code_never_smart_quoted(text, command):
    html = landing.details_html(text, {})
    assert f"<code>{command}</code>" in html
    assert "\u2013" not in html and "\u2014out" not in html


def test_a_smart_quoted_command_in_the_site_is_found(tmp_path):
    """The site's check: a command whose "--" Sphinx turned into a dash, or whose quotes curled,
    fails the build (page_problems)."""
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / book_site.PLOTLY_JS).write_text("x")
    (tmp_path / "_static" / book_site.MATHJAX_JS).write_text("x")
    good = "<p><code>python -m bnnlib.book --out /tmp/x</code></p>"
    (tmp_path / "index.html").write_text(good)
    assert book_site.page_problems(tmp_path) == []
    for bad in ("python -m bnnlib.book \u2013out /tmp/x", "make book ARGS=\u201c-p X=1\u201d"):
        (tmp_path / "index.html").write_text(f"<p>{bad}</p>")
        problems = book_site.page_problems(tmp_path)
        assert problems and "smart quotes" in problems[0], problems


def test_the_site_ships_the_committed_run_files_and_links_them():
    shipped = landing.shipped_results()
    assert shipped["torch7_mnist"] == ["torch7_mnist/run.json", "torch7_mnist/history.json"]
    assert "recipe_comparison.json" in shipped
    html = landing.details_html("Runs: results/torch7_mnist/ (best epoch 3)", shipped)
    assert '<a href="_static/results/torch7_mnist/run.json">run.json</a>' in html
    assert '<a href="_static/results/torch7_mnist/history.json">history.json</a>' in html
    assert "Command of <code>results/torch7_mnist/</code>: <code>python -m bnnlib.train" in html


def test_bookkeeping_cells_are_folded_in_the_site():
    assert book_tags.is_bookkeeping('rows = []\nrecord("a", 1)\nviz.table(rows)')
    # A cell that records is a record cell, folded whatever else it does (split it instead).
    assert book_tags.is_bookkeeping("net = fit(a)\nb = evaluate(net)\nrecord('e', b)")
    assert book_tags.is_bookkeeping("for k in x:\n    if k:\n        record(k, 1)")
    assert not book_tags.is_bookkeeping("net = fit(a)\nb = evaluate(net)\nviz.table(b)")
    assert not book_tags.is_bookkeeping("viz.show(fig)")  # records nothing
    # Every committed notebook has its bookkeeping cells tagged (python -m bnnlib.book.tags).
    assert book_tags.main(["--check"]) == 0


def test_tagging_is_idempotent_and_keeps_the_layout(tmp_path):
    path = tmp_path / "01_x.ipynb"
    _tiny_notebook(path, 'record("answer", VALUE * 42)')
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('record("b", 1)', metadata={"tags": ["mine"]}))
    nbformat.write(nb, path)
    assert book_tags.untagged(path) == [3, 4]
    assert book_tags.main(["--check", str(path)]) == 1
    assert book_tags.tag_notebook(path) == [3, 4]
    text = path.read_text()
    assert book_tags.tag_notebook(path) == [] and path.read_text() == text
    tags = [c.metadata.get("tags") for c in nbformat.read(path, as_version=4).cells]
    assert tags == [None, None, ["parameters"], ["hide-input"], ["mine", "hide-input"]]
    assert text == nbformat.writes(nbformat.read(path, as_version=4)) + "\n"


def test_search_text_keeps_sections_and_drops_code_and_figures():
    from bnnlib.book import search

    page = (
        '<html><body><nav>menu</nav><div role="main"><section id="the-ste"><h1>The STE'
        '<a class="headerlink">#</a></h1><p>Sign forward, hardtanh backward.</p>'
        '<script>var x = "http://cdn";</script><div class="plotly-graph-div">fig</div>'
        "</section></div></body></html>"
    )
    text = search.page_text(page)
    assert text.startswith('<div role="main"><section id="the-ste">')
    assert "Sign forward, hardtanh backward." in text
    assert "cdn" not in text and "menu" not in text and "fig" not in text and "#" not in text
    assert search.page_text("<p>no main</p>") == ""
