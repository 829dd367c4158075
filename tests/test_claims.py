"""bnnlib.book.claims: the committed rows of "the paper vs this book", one source for the README
and the book, with every seed, its interval and its status."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bnnlib import paper, results
from bnnlib.book import claims, runner
from bnnlib.book import results as book_results
from bnnlib.train import cli as train_cli

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_the_generated_one():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = text.index(claims.README_BEGIN), text.index(claims.README_END)
    block = text[start : end + len(claims.README_END)]
    assert block == claims.readme_table(), (
        "README.md's table differs from the committed results: run "
        "python -m bnnlib.book --readme README.md"
    )


def test_the_book_summary_holds_the_same_committed_rows():
    rows = book_results.summary_rows([])
    committed = claims.committed_rows()
    assert [r["claim"] for r in rows[: len(committed)]] == [r.claim for r in committed]
    for row, c in zip(rows, committed, strict=False):
        assert (row["ours"], row["status"], row["section"]) == (c.ours, c.status, c.section)
    live = [r["claim"] for r in rows[len(committed) :]]
    assert live == [paper.claim(k).claim for k in claims.LIVE_CLAIMS]


def _fake_run(root: Path, name: str, seed: int, test_errors: list[int], epochs: int = 100):
    """A committed torch7-preset run with ``test_errors`` per epoch (val error = test error)."""
    n = 10_000
    argv = ["--preset", "torch7", "--seed", str(seed), "--epochs", str(epochs)]
    hist = {
        "config": {"n_test": n, "run_config": train_cli.config_from_argv(argv).to_dict()},
        "epochs": [
            {"epoch": i + 1, "val_error": e / n, "test_error": e / n}
            for i, e in enumerate(test_errors)
        ],
        "best_epoch": 1,  # as an older tie rule may have written it
    }
    (root / name).mkdir(parents=True)
    (root / name / "history.json").write_text(json.dumps(hist))
    (root / name / "run.json").write_text(json.dumps({"hardware": "CPU: test", "seed": seed}))


def test_torch7_cell_reports_every_seed_the_mean_and_the_interval(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    assert claims.table1_torch7() is None
    _fake_run(tmp_path, "torch7_mnist", 0, [150, 140, 140])  # tie: the later epoch (3) wins
    _fake_run(tmp_path, "torch7_mnist_seed1", 1, [170, 160])
    cell = claims.table1_torch7()
    seeds = cell["seeds"]
    assert [(s["seed"], s["best_epoch"], s["test_errors"]) for s in seeds] == [
        (0, 3, 140),
        (1, 2, 160),
    ]
    assert seeds[0]["selection_changed"] is True  # the file said epoch 1
    iv = cell["interval"]
    assert iv.value == pytest.approx(0.015)
    assert (iv.low, iv.high) == pytest.approx(
        (
            paper.error_interval([140, 160], 10_000).low,
            paper.error_interval([140, 160], 10_000).high,
        )
    )
    assert cell["status"] == "consistent"  # 1.40% lies inside; no protocol here: no equivalence
    row = claims.committed_rows()[0]
    assert "seed 0: 1.40%, seed 1: 1.60%" in row.ours and "95% interval" in row.ours
    assert row.status == "consistent" and row.how == "3 × 2048 MLP, 2 seeds, CPU"
    assert row.machines == ("CPU: test",)  # the machine goes under the table, once
    assert iv.method in row.details
    assert "results/torch7_mnist_seed1/ (best epoch 2, val 1.60%)" in row.details


def test_a_cell_far_above_the_paper_is_not_reproduced(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _fake_run(tmp_path, "torch7_mnist", 0, [200])
    assert claims.table1_torch7()["status"] == "not reproduced"


def test_readme_writer_replaces_only_the_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\nbefore\n{claims.README_BEGIN}\nSTALE-BLOCK\n{claims.README_END}\nafter\n"
    )
    assert runner.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert (
        text.startswith("# x\nbefore\n")
        and text.endswith("\nafter\n")
        and "STALE-BLOCK" not in text
    )
    assert claims.readme_table() in text
    readme.write_text("no markers\n")
    assert runner.main(["--readme", str(readme)]) == 1
    assert "no '<!-- paper-vs-book:begin" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n"


def test_rows_without_results_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    rows = {r.key: r for r in claims.committed_rows()}
    assert rows["table1_mnist_torch7"].status == "not run yet"
    assert "cpu_latency" not in rows and "packed_equals_float" not in rows
    shutil.copy(REPO / "results" / "recipe_comparison.json", tmp_path)
    rows = {r.key: r for r in claims.committed_rows()}
    assert rows["table1_mnist_theano"].status == "reduced run"


def test_a_committed_gpu_benchmark_fills_the_gpu_rows(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    bench = {
        "meta": {"gpu": {"name": "Test GPU"}, "date": "2026-12-06"},
        "gpu": {
            "gemm": {"speedup_xnor_paper_vs_baseline": 25.0,
                     "speedup_xnor_paper_vs_cublas_fp32": 2.0},
            "mnist_mlp": {"speedup_xnor_paper_vs_baseline": 8.0},
        },
    }  # fmt: skip
    (tmp_path / "bench_gpu_test.json").write_text(json.dumps(bench))
    rows = {r.key: r for r in claims.committed_rows()}
    assert (rows["gpu_xnor_over_baseline"].ours, rows["gpu_xnor_over_baseline"].status) == (
        "25.0×",
        "reproduced",
    )
    assert rows["gpu_xnor_over_cublas"].status == "not reproduced"  # 2.0 < 3.4
    assert (
        rows["gpu_mlp_over_baseline"].ours == "8.0×"
        and "Test GPU" in rows["gpu_mlp_over_baseline"].how
    )


def test_a_full_live_record_wins_over_the_committed_row_a_reduced_one_does_not():
    runs = [
        book_results.Run("06_xnor_kernels", "t", Path("06.ipynb"), 1.0, {}, [
            {"name": "gpu_speedup_xnor_paper_vs_baseline", "value": 24.0, "hardware": "GPU: x"},
        ]),
        book_results.Run("05_training", "t", Path("05.ipynb"), 1.0, {}, [
            {"name": "table1_mnist_theano", "value": 0.05, "status": "reduced run"},
        ]),
    ]  # fmt: skip
    rows = {r["claim"]: r for r in book_results.summary_rows(runs)}
    gpu = rows[paper.claim("gpu_xnor_over_baseline").claim]
    assert (gpu["ours"], gpu["status"], gpu["section"]) == ("24×", "reproduced", "06_xnor_kernels")
    theano = rows[paper.claim("table1_mnist_theano").claim]
    committed = {r.key: r for r in claims.committed_rows()}
    assert theano["ours"] == committed["table1_mnist_theano"].ours  # reduced: stays in 05
    # notebook 05 records the committed Torch7 cell too: the committed row (seeds, interval) stays
    runs.append(book_results.Run("05_training", "t", Path("05.ipynb"), 1.0, {}, [
        {"name": "table1_mnist_torch7", "value": 0.014, "status": "reproduced"},
    ]))  # fmt: skip
    t7 = {r["claim"]: r for r in book_results.summary_rows(runs)}[
        paper.claim("table1_mnist_torch7").claim
    ]
    # the protocol decides it (results/protocol.md): the committed row stays, even "not run yet"
    assert (t7["ours"], t7["status"]) == (
        committed["table1_mnist_torch7"].ours,
        committed["table1_mnist_torch7"].status,
    )


#: What only the notes and the machine list under the table may say: a CPU's flags, a command,
#: a results file, an interval's method.
_DETAIL_MARKERS = ("avx", "popcnt", "python -m", "results/", "Welch", "logical cores", "50,000")


def _block_lines() -> list[str]:
    return claims.readme_table().splitlines()


def test_how_measured_is_a_few_words_and_the_details_are_kept_once():
    rows = claims.committed_rows()
    block = claims.readme_table()
    table = [line for line in _block_lines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(rows)
    for line, row in zip(table, rows, strict=True):
        how = line.split(" | ")[3]
        words = re.sub(r" \[\d+\]$", "", how)
        assert words == row.how and len(words) <= 45 and len(words.split()) <= 9, how
        assert not any(m in how for m in _DETAIL_MARKERS), how
        if row.details or row.machines:  # every fact moved out of the cell is in its note
            n = int(re.search(r"\[(\d+)\]$", how).group(1))
            note = next(x for x in _block_lines() if x.startswith(f"{n}. "))
            assert row.details in note, (row.key, note)
    machines = {m for r in rows for m in r.machines}
    assert machines  # the committed runs and benchmarks name their CPUs
    for m in machines:  # each machine written once, as a line of its own
        assert block.count(m) == 1 and any(x.endswith(f": {m}") for x in _block_lines())
    t7 = next(r for r in rows if r.key == "table1_mnist_torch7")
    assert "best-validation epoch" in t7.details
    assert "extended after the test error was seen" in t7.details  # issue 28: not as planned
    assert "MNIST: 50,000 train / 10,000 val / 10,000 test images" in t7.details


def test_the_legend_is_one_line_with_each_status_once():
    legend = [x for x in _block_lines() if x.startswith("Status:")]
    assert len(legend) == 1 and legend[0] == claims.legend_line()
    bold = re.findall(r"\*\*(.+?)\*\*", legend[0])
    assert len(bold) == len(set(bold))  # "not run yet" once, its GPU case inside it
    assert bold.count("not run yet") == 1 and "*needs a GPU*" in legend[0]
    for status, text in paper.STATUS_LEGEND.items():  # every status and its meaning is there
        assert status.split(": ")[0] in bold and text in legend[0]
    assert "\n- **" not in claims.readme_table().split("Machines:")[0]  # no bullet legend


def test_summary_markdown_numbers_notes_and_letters_machines():
    rows = [
        {"claim": "a", "paper": "1", "ours": "2", "how measured": "x, CPU", "status": "measured",
         "details": "cmd a", "machines": ["CPU: one", "CPU: two"]},
        {"claim": "b", "paper": "1", "ours": "2", "how measured": "y, CPU", "status": "measured",
         "details": "cmd b", "machines": ["CPU: two"]},
        {"claim": "c", "paper": "1", "ours": "—", "how measured": "", "status": "not run yet",
         "details": "", "machines": []},
    ]  # fmt: skip
    columns = ("claim", "ours", "how measured", "status")
    lines = claims.summary_markdown(rows, columns)
    assert lines[2] == "| a | 2 | x, CPU [1] | measured |"
    assert (
        lines[3] == "| b | 2 | y, CPU [2] | measured |"
        and lines[4] == "| c | — | — | not run yet |"
    )
    assert "1. cmd a; machine A, B" in lines and "2. cmd b; machine B" in lines
    assert "- **A**: CPU: one" in lines and "- **B**: CPU: two" in lines
    assert sum("CPU: two" in x for x in lines) == 1
    assert claims.row_details(rows[0]) == "cmd a; on CPU: one and CPU: two"


def test_results_helpers_print_no_local_paths(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    (tmp_path / "run").mkdir()
    model = tmp_path / "run" / "model.safetensors"
    assert results.display_path(model) == "results/run/model.safetensors"
    assert results.display_path("/somewhere/else/m.bnn") == "m.bnn"
    cmd = "/work/x/.venv/bin/python3.11 -m bnnlib.bench --latency"
    assert results.readable_command(cmd) == "python -m bnnlib.bench --latency"
    meta = {"cpu": "Some CPU", "cpu_flags": ["popcnt", "avx2"], "cpu_count": 2, "gpu": None}
    assert results.hardware_line(meta) == "CPU: Some CPU (2 logical cores; popcnt, avx2)"
    assert results.hardware_line({**meta, "gpu": "G"}).startswith("GPU: G; CPU: Some CPU")


def test_the_torch7_cell_leaves_out_the_e2_variant(tmp_path, monkeypatch):
    """The protocol's E2 runs carry the preset's name but change its batch norm and optimizer:
    they are not Table 1 runs, and the cell never averages them in."""
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _fake_run(tmp_path, "torch7_mnist", 0, [140])
    _fake_run(tmp_path, "e2_ordinary_seed0", 0, [120])
    path = tmp_path / "e2_ordinary_seed0" / "history.json"
    hist = json.loads(path.read_text())
    hist["config"]["run_config"] |= {"batchnorm": "standard", "optimizer": "adamax_torch7"}
    path.write_text(json.dumps(hist))
    cell = claims.table1_torch7()
    assert [s["run"] for s in cell["seeds"]] == ["torch7_mnist"]
    assert cell["interval"].value == pytest.approx(0.014)


def test_benchmarks_of_every_cpu_are_read_and_a_skipped_section_is_none(tmp_path, monkeypatch):
    """``load_benches``: the benchmark file and its per-CPU siblings, that one first; a section
    that lists products it left out is a measured section, one that was skipped is None."""
    measured = {"meta": {"cpu_flags": ["popcnt", "avx2"]}, "latency_cpu": {"skipped": {"x": "y"}}}
    skipped = {"meta": {"cpu_flags": ["avx512_vpopcntdq"]}, "latency_cpu": {"skipped": "why"}}
    (tmp_path / "bench_latency_cpu_zz.json").write_text(json.dumps(measured))
    (tmp_path / "bench_latency_cpu.json").write_text(json.dumps(skipped))
    (tmp_path / "bench_latency_cpuish.json").write_text("{}")  # not a sibling
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    benches = results.load_benches("bench_latency_cpu")
    assert [b.path.name for b in benches] == ["bench_latency_cpu.json", "bench_latency_cpu_zz.json"]
    assert benches[0].section("latency_cpu") is None and benches[0].isa() == "AVX-512 VPOPCNTDQ"
    assert benches[1].section("latency_cpu") == {"skipped": {"x": "y"}}
    assert benches[1].isa() == "AVX2"


def test_the_latency_row_sets_the_packed_mlp_beside_xnor_gemm(tmp_path, monkeypatch):
    """The latency row gives the packed MLP's GMAC/s at the largest batch beside xnor_gemm's
    on its hidden layers' shape (the benchmark times them in turn), slower or faster as the
    numbers say; a benchmark from before that timing has no such clause."""
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    bench = json.loads((REPO / "results" / "bench_latency_cpu_avx2.json").read_text())
    lat = bench["latency_cpu"]
    lat.pop("xnor_gemm_same_shape", None)
    (tmp_path / "bench_latency_cpu.json").write_text(json.dumps(bench))
    row = {r.key: r for r in claims.committed_rows()}["cpu_latency"]
    assert "xnor_gemm" not in row.details
    for xnor, words in ((400.0, "1.60× slower than"), (200.0, "1.25× faster than")):
        lat["xnor_gemm_same_shape"] = {
            "batch": 10_000,
            "shape": [10_000, 4096, 4096],
            "gmac_per_s": {"packed": 250.0, "xnor_gemm": xnor},
            "xnor_gemm_over_packed": xnor / 250.0,
            "rounds": 5,
        }
        (tmp_path / "bench_latency_cpu.json").write_text(json.dumps(bench))
        row = {r.key: r for r in claims.committed_rows()}["cpu_latency"]
        assert (
            f"at 250 GMAC/s {words} xnor_gemm on its hidden layers' shape "
            f"(10,000 × 4,096 × 4,096: {xnor:.0f} GMAC/s, the two timed in turn)"
        ) in row.details
