"""The book: every notebook's shape, parameters and recorded results; the runner; the widgets.

Fast checks (no kernel): each ``book/NN_*.ipynb`` follows the conventions of book/README.md
(title, one import cell, a ``parameters`` cell of commented UPPER_CASE literals, seeding,
no committed outputs) and its ``book/params`` YAML files name only its parameters.

Marked ``notebooks`` (a kernel each): every notebook runs top to bottom with the ``tests``
profile through the runner of ``make book`` (papermill), and the values it *recorded* are
checked by the notebook's entry in :data:`CHECKS`; the runner reports a failing cell by
notebook and cell; the widget of notebook 01 is driven through a real kernel.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

from bnnlib import data, results
from bnnlib.book import claims, takeaway
from bnnlib.book import notebooks as book_notebooks
from bnnlib.book import record as rec
from bnnlib.book import runner as book
from bnnlib.nn.ste import ESTIMATORS, PAPER_ESTIMATOR
from bnnlib.paper import gap_interval

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
# Notebooks import bnnlib, torch or numpy where needed, and the standard library; plotly and
# ipywidgets only through bnnlib.book.viz.
ALLOWED_IMPORTS = {"bnnlib", "torch", "numpy"} | set(sys.stdlib_module_names)


def _mnist_available() -> bool:
    raw = data.resolve_root() / "MNIST" / "raw"
    return any(
        (raw / f).exists() for f in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
    )


needs_data = pytest.mark.skipif(
    not _mnist_available(),
    reason=f"MNIST not under the data root {data.resolve_root()}; set BNN_DATA_DIR",
)


def _cells(path: Path):
    return nbformat.read(path, as_version=4).cells


# --- per-notebook checks of the recorded values ---------------------------------------------


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and 0.0 <= v <= 1.0


def check_01(r: dict) -> None:
    assert r["sign_of_zero"] == 1.0
    assert 0 <= r["stochastic_expectation_max_error"] < r["stochastic_expectation_bound"] < 0.1
    # U(-1, 1) latent weights flip with probability exactly 1/4 (>= 50k draws: SE < 0.002).
    assert abs(r["weights_flip_fraction_expected"] - 0.25) < 0.01
    assert abs(r["weights_flip_fraction"] - 0.25) < 0.015
    assert 0.05 < r["activations_flip_fraction_expected"] < 0.5
    assert abs(r["activations_flip_fraction"] - r["activations_flip_fraction_expected"]) < 0.02


def check_02(r: dict) -> None:
    assert r["sign_autograd_gradient_max"] == 0.0
    errors = {e: r[f"test_error_{e}"] for e in ESTIMATORS}
    assert all(_fraction(v) for v in errors.values()), errors
    # Without a straight-through estimator only the last layer learns.
    assert errors[PAPER_ESTIMATOR] < errors["none"] - 0.1, errors
    assert errors["identity"] < errors["none"] - 0.1, errors
    assert 0.05 < r["saturation_first_layer"] < 0.95
    # The cancelled gradients are the saturated units (plus samples with no loss at all).
    assert r["saturation_first_layer"] <= r["cancelled_fraction_first_layer"] + 1e-9
    assert r["cancelled_fraction_first_layer"] < r["saturation_first_layer"] + 0.05


def check_03(r: dict) -> None:
    tol = 1e-6
    assert 2**-0.5 - tol <= r["ap2_ratio_min"] <= r["ap2_ratio_max"] <= 2**0.5 + tol
    assert 2**-1.25 - 1e-3 <= r["shift_bn_scale_min"] <= r["shift_bn_scale_max"] <= 2**1.25 + 1e-3
    assert r["shift_bn_sign_agreement"] > 0.9
    assert 0 <= r["shift_bn_median_relative_error"] < 2**1.25 - 1
    assert r["bn_multiplications_per_batch"] > 0 == r["shift_bn_multiplications_per_batch"]
    for bn in ("standard", "shift"):
        assert _fraction(r[f"test_error_{bn}_bn"]) and r[f"test_error_{bn}_bn"] < 0.6
    assert abs(r["test_error_gap_shift_minus_standard"]) < 0.15


def check_04(r: dict) -> None:
    adam, shift = r["test_error_adam"], r["test_error_shift_adamax"]
    torch7 = r["test_error_shift_adamax_torch7"]
    assert _fraction(adam) and _fraction(shift) and _fraction(torch7)
    assert max(adam, shift, torch7) < 0.6, (adam, shift, torch7)  # all learn (chance: 0.9)
    assert abs(adam - shift) < 0.2 and abs(adam - torch7) < 0.2, (adam, shift, torch7)
    assert r["test_error_gap_shift_adamax_minus_adam"] == pytest.approx(shift - adam)


def check_05(r: dict) -> None:
    chance = r["chance_error"]
    assert chance == pytest.approx(0.9)
    for k in ("bnn", "float"):  # both the BNN and its float twin learnt (chance: 0.9)
        assert _fraction(r[f"test_error_{k}"]) and r[f"test_error_{k}"] < chance - 0.3, r
        assert _fraction(r[f"best_val_error_{k}"]) and r[f"best_val_error_{k}"] < chance - 0.3
        assert _fraction(r[f"train_error_eval_{k}"]) and _fraction(r[f"val_error_final_{k}"])
        gap = r[f"val_error_final_{k}"] - r[f"train_error_eval_{k}"]
        assert r[f"generalization_gap_{k}"] == pytest.approx(gap)
        assert 0 < r[f"training_cost_final_{k}"] < 2
        assert isinstance(r[f"best_epoch_{k}"], int) and r[f"best_epoch_{k}"] >= 1
    # The fresh run is a reduced run of the Theano setup, and says so.
    assert r["table1_mnist_theano"] == r["test_error_bnn"]
    if "table1_mnist_torch7" in r:  # the committed Torch7-preset runs, read from results/
        cell = claims.table1_torch7()
        assert r["table1_mnist_torch7"] == cell["interval"].value
        errors = [s["test_errors"] for s in cell["seeds"]]
        # the mean of the seeds' error rates (as the protocol computes it) = their counts' mean
        mean = sum(errors) / len(errors) / cell["n_test"]
        assert cell["interval"].value == pytest.approx(mean, rel=1e-12, abs=0)
    for k, name in (("bnn", "cifar10_subset_convnet"), ("float", "cifar10_subset_convnet_float")):
        if f"convnet_subset_test_error_{k}" in r:  # the committed CIFAR-10-subset runs
            run = results.load_run(name)
            assert r[f"convnet_subset_test_error_{k}"] == run.test_error


def check_06(r: dict) -> None:
    assert r["bitplane_identity_max_error"] == 0 and r["bitplane_dot_max_error"] == 0
    assert r["cpu_gemm_exact"] is True
    assert r["cpu_gemm_xnor_over_float32"] > 0 and r["cpu_gemm_xnor_over_float32_with_packing"] > 0
    assert r["cpu_mlp_packed_over_float32"] > 0 and r["cpu_mlp_bitplanes_over_float32"] > 0
    assert isinstance(r["gpu_results"], str) and r["gpu_results"]
    # One image at a time: packed predictions identical to the simulation on every test image.
    assert r["cpu_latency_exact"] is True
    assert r["cpu_latency_batch1_over_floor"] > 0
    assert r["cpu_latency_batch1_float32_over_packed"] > 0
    assert r["section4_cpu_xnor_over_baseline_live"] > 0  # exactness is asserted in the cell


def check_07(r: dict) -> None:
    # The packed model predicts exactly what its float simulation predicts.
    assert r["packed_mismatches"] == 0 and r["packed_bitplanes_mismatches"] == 0
    assert r.get("packed_gpu_mismatches", 0) == 0
    assert _fraction(r["packed_test_error"]) and r["packed_test_error"] < 0.6  # trained
    assert r["memory_ratio_weights_4096"] == pytest.approx(32.0)
    assert 31 < r["memory_ratio_model_4096"] < 32
    assert 28 < r["memory_ratio_packed_export"] <= 32  # rows padded to whole 64-bit words
    if "committed_packed_test_errors" in r:  # the committed model, packed, on this CPU
        run = results.load_run(results.TORCH7_MNIST_RUN)
        assert r["committed_packed_test_errors"] == round(run.test_error * 10_000)
        assert r["committed_packed_matches_history"] is True
    if "convnet_subset_packed_equals_float" in r:  # the committed ConvNet, packed: all 1,017
        assert r["convnet_subset_packed_equals_float"] == 1017
        assert r["convnet_subset_batch1_speedup"] > 0


def check_08(r: dict) -> None:
    import bnnlib
    from bnnlib.analysis import energy

    s = r["energy_settings"]
    kw = {
        k: s[k] for k in ("weight_memory", "activation_memory", "dram", "batch_size", "first_layer")
    }
    nets = {
        "mlp": (bnnlib.mnist_mlp(hidden=s["HIDDEN"]), (1, 28, 28)),
        "convnet": (bnnlib.cifar10_convnet(width=s["WIDTH"]), (3, 32, 32)),
    }
    for key, (net, shape) in nets.items():  # the recorded ratios are bnnlib.analysis.energy's
        rep = energy.energy(net, shape, **kw)
        for part in ("total", "compute", "memory", "weight_accesses"):
            assert r[f"energy_ratio_{part}_{key}"] == pytest.approx(rep.ratios[part], rel=1e-9)
        assert r[f"energy_float32_pJ_{key}"] == pytest.approx(rep.total("float32"), rel=1e-9)
        assert r[f"energy_binary_pJ_{key}"] == pytest.approx(rep.total("binary"), rel=1e-9)
        assert r[f"energy_ratio_total_{key}"] > 1 and r[f"energy_ratio_compute_{key}"] > 100
        assert 30 < r[f"energy_ratio_weight_accesses_{key}"] <= 32
    assert r["table2_fp32_mac_pJ"] == pytest.approx(4.6)
    assert r["mac_energy_ratio"] == pytest.approx(r["float32_mac_pJ"] / r["binary_mac_pJ"])


def check_09(r: dict) -> None:
    for k in ("trained", "initial"):
        assert 0 < r[f"unique_fraction_{k}"] <= 1
        layers = r[f"unique_fraction_per_layer_{k}"]
        assert layers and all(0 < v <= 1 for v in layers)
        assert r[f"unique_fraction_{k}"] == pytest.approx(sum(layers) / len(layers))
    assert 0 < r["unique_fraction_random_expected"] <= 1
    # Random kernels at the paper's widths: ~62% unique, the formula within sampling noise.
    expected = r["unique_fraction_random_paper_architecture_expected"]
    assert 0.61 < expected < 0.625
    assert abs(r["unique_fraction_random_paper_architecture"] - expected) < 0.02
    direct, saved = r["xnor_macs_per_image"], r["xnor_macs_saved_per_image"]
    assert direct > 0 and 0 <= saved < direct
    assert r["xnor_reduction_trained"] == pytest.approx(direct / (direct - saved))
    assert r["xnor_reduction_trained"] >= 1 and r["xnor_reduction_initial"] >= 1
    assert 0 < r["top8_share_trained"] <= 1 and 0 < r["top8_share_initial"] <= 1
    assert "test_error" not in r or _fraction(r["test_error"])


def check_10(r: dict) -> None:
    n = r["draw_eval_size"]
    assert n >= 1000
    # numpy on the page's weights file: PackedNet's scores bit for bit, so its predictions.
    assert r["draw_reference_scores_identical"] is True
    assert r["draw_reference_agreement"] == n
    # The JavaScript in headless Chromium (recorded wherever Chromium is installed).
    if "draw_browser_agreement" in r or Path("/usr/bin/chromium").exists():
        assert r["draw_browser_agreement"] == n
    assert 1_000_000 < r["draw_weights_bytes"] < 1_400_000  # 1.26 MB of packed weights
    assert r["draw_asset_bytes"] < 1_900_000
    assert 0.2 < r["draw_fire_fraction_mean"] < 0.8


# --- take-aways against the records ------------------------------------------------------------


def _gap(r: dict, a: str, b: str):
    n = r["test_images"]
    return gap_interval(round(r[a] * n), round(r[b] * n), n)


def takeaway_01(r: dict) -> list[str]:
    return [
        f"within {r['stochastic_expectation_max_error']:.4f} of it, under the bound "
        f"{r['stochastic_expectation_bound']:.4f}",
        f"here for {100 * r['weights_flip_fraction']:.1f}% of the weights",
        f"and {100 * r['activations_flip_fraction']:.1f}% of the activations (expected "
        f"{100 * r['activations_flip_fraction_expected']:.1f}%)",
    ]


def takeaway_02(r: dict) -> list[str]:
    gap = _gap(r, "test_error_hardtanh", "test_error_identity")
    return [
        f"its test error is {100 * r['test_error_none']:.1f}%, against "
        f"{100 * r['test_error_hardtanh']:.1f}% and {100 * r['test_error_identity']:.1f}%",
        f"({100 * r['saturation_first_layer']:.0f}% of the first layer's after batch norm)",
        takeaway.gap_sentence(gap, "the paper's estimator (hardtanh)", "the identity"),
    ]


def takeaway_03(r: dict) -> list[str]:
    gap = _gap(r, "test_error_shift_bn", "test_error_standard_bn")
    return [takeaway.gap_sentence(gap, "Shift-based batch norm", "ordinary batch norm")[:-1]]


def takeaway_04(r: dict) -> list[str]:
    gap = _gap(r, "test_error_shift_adamax", "test_error_adam")
    variants = _gap(r, "test_error_shift_adamax_torch7", "test_error_shift_adamax")
    return [
        takeaway.gap_sentence(gap, "Shift-based AdaMax", "Adam")[:-1],
        takeaway.gap_sentence(variants, "the Torch7 code's variant", "Algorithm 4 as written"),
    ]


def takeaway_05(r: dict) -> list[str]:
    cost = takeaway.compare(r["training_cost_final_bnn"], r["training_cost_final_float"],
                            "the BNN", "its float twin", what="final training cost")  # fmt: skip
    smaller = r["generalization_gap_bnn"] < r["generalization_gap_float"]
    return [cost, f"gap is {'smaller' if smaller else 'not smaller'} than the float twin's"]


def takeaway_06(r: dict) -> list[str]:
    n = r["cpu_gemm_n"]
    return [
        takeaway.speed(r["cpu_gemm_xnor_over_float32"],
                       f"the XNOR-popcount product of {n}³ ±1 matrices", "torch float32"),
        f"({r['cpu_gemm_xnor_over_float32_with_packing']:.1f}× its speed counting the packing)",
        takeaway.speed(r["cpu_latency_batch1_float32_over_packed"], "packed", "float32"),
        f"at {r['cpu_latency_batch1_over_floor']:.1f}× the time to stream",
    ]  # fmt: skip


def takeaway_07(r: dict) -> list[str]:
    same = r["packed_mismatches"] == r["packed_bitplanes_mismatches"] == 0
    runs = [v for k, v in r.items() if k.startswith("committed_packed_matches_history")]
    return [
        "the same predictions on all 10,000 test images" if same
        else f"differs from the float simulation on {r['packed_mismatches']}",
        f"take {r['memory_ratio_weights_4096']:.0f}× less memory",
        f"shrinks {r['memory_ratio_model_4096']:.1f}×",
        f"64-bit words, {r['memory_ratio_packed_export']:.1f}×.",
        "gives exactly the test errors its training history recorded" if all(runs)
        else "differ from its history",
    ]  # fmt: skip


def takeaway_08(r: dict) -> list[str]:
    mlp, conv = r["energy_float32_memory_share_mlp"], r["energy_float32_memory_share_convnet"]
    term = "memory" if mlp > 0.5 else "arithmetic"
    return [
        f"costs 1/{r['mac_energy_ratio']:.0f} of a float32 one",
        f"{term} is {100 * max(mlp, 1 - mlp):.0f}% of the float32 MLP's energy and the BNN uses "
        f"{r['energy_ratio_total_mlp']:.1f}× less",
        f"{100 * max(conv, 1 - conv):.0f}%, {r['energy_ratio_total_convnet']:.1f}× less)",
        f"on chip the ratio is {r['energy_ratio_total_mlp_weights_8K']:.1f}×"
        + (", larger still." if r["energy_ratio_total_mlp_weights_8K"] > r["energy_ratio_total_mlp"]
           else "."),
    ]  # fmt: skip


def takeaway_09(r: dict) -> list[str]:
    below = 0.42 < r["unique_fraction_random_paper_architecture"]
    return [
        f"{100 * r['unique_fraction_random_paper_architecture']:.0f}% averaged over the paper's",
        "is below that baseline" if below else "is not below that baseline",
        takeaway.compare(r["unique_fraction_trained"], r["unique_fraction_initial"],
                         "the trained kernels", "their initial ones", what="unique fraction",
                         unit="%"),
        f"operations {r['xnor_reduction_trained']:.2f}×.",
    ]  # fmt: skip


def takeaway_10(r: dict) -> list[str]:
    exact = r["draw_reference_scores_identical"] and (
        r["draw_reference_agreement"] == r["draw_eval_size"]
    )
    out = [
        f"{r['draw_weights_bytes'] / 1e6:.2f} MB of bits",
        "give exactly the scores and predictions" if exact else "differ from `PackedNet` here",
    ]
    if "draw_browser_agreement" in r:
        out.append(f"agreed on {r['draw_browser_agreement']:,} of {r['draw_eval_size']:,}")
    else:
        out.append("the browser check did not run here")
    return out


#: Notebooks whose take-away is generated: what it must say, recomputed from the records.
TAKEAWAYS = {
    "01_binarization": takeaway_01,
    "02_straight_through_estimator": takeaway_02,
    "03_shift_batch_norm": takeaway_03,
    "04_shift_adamax": takeaway_04,
    "05_training": takeaway_05,
    "06_xnor_kernels": takeaway_06,
    "07_packed_inference": takeaway_07,
    "08_energy": takeaway_08,
    "09_filter_repetition": takeaway_09,
    "10_draw_a_digit": takeaway_10,
}


def takeaway_text(nb) -> str:
    """The take-away paragraph an executed notebook shows (generated Markdown)."""
    found = [
        "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    ]
    found = [t for t in found if t.startswith(takeaway.PREFIX)]
    assert len(found) == 1, f"one take-away expected, found {len(found)}"
    return found[0]


def test_a_takeaway_that_disagrees_with_its_record_fails():
    """The check itself: notebook 04's small run (+2.62 points, interval +1.71 to +3.53) must
    not read "much as with Adam"."""
    r = {"test_images": 10_000, "test_error_adam": 0.1102, "test_error_shift_adamax": 0.1364,
         "test_error_shift_adamax_torch7": 0.1529}  # fmt: skip
    wrong = nbformat.v4.new_notebook()
    wrong.cells = [nbformat.v4.new_code_cell("")]
    wrong.cells[0].outputs = [nbformat.v4.new_output(
        "display_data", data={"text/markdown": takeaway.text(
            "Training proceeds much as with Adam.",
            takeaway.gap_sentence(gap_interval(1102, 1102, 10_000), "Shift-based AdaMax", "Adam"))},
    )]  # fmt: skip
    text = takeaway_text(wrong)
    assert not all(s in text for s in takeaway_04(r))


@pytest.mark.parametrize("name", sorted(TAKEAWAYS))
def test_generated_takeaways_are_not_typed(name):
    """A take-away that compares numbers is generated (takeaway.show), never typed as Markdown."""
    cells = _cells(BOOK / f"{name}.ipynb")
    typed = [c for c in cells if c.cell_type == "markdown" and takeaway.PREFIX in c.source]
    shown = [c for c in cells if c.cell_type == "code" and "takeaway.show(" in c.source]
    assert not typed and len(shown) == 1
    assert "remove-input" in shown[0].metadata.get("tags", [])


CHECKS = {
    "01_binarization": check_01,
    "02_straight_through_estimator": check_02,
    "03_shift_batch_norm": check_03,
    "04_shift_adamax": check_04,
    "05_training": check_05,
    "06_xnor_kernels": check_06,
    "07_packed_inference": check_07,
    "08_energy": check_08,
    "09_filter_repetition": check_09,
    "10_draw_a_digit": check_10,
}


# --- structure (no kernel) -------------------------------------------------------------------


def test_the_book_has_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


def test_every_notebook_has_checks():
    missing = [p.stem for p in NOTEBOOKS if p.stem not in CHECKS]
    assert not missing, f"add entries to CHECKS in {__file__} for {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_outputs_committed(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs; run "
        f"jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}"
    )
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_shape(path):
    """Title + paper section, one import cell, the parameters cell, seeding, no plotly/widgets."""
    cells = _cells(path)
    title, imports, params = cells[0], cells[1], cells[2]
    assert title.cell_type == "markdown" and title.source.startswith("# "), "title first"
    assert "Paper" in title.source and "Section" in title.source, "name the paper's section"
    assert imports.cell_type == "code"
    tree = ast.parse(imports.source)
    modules = set()
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom)), "the import cell only imports"
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        modules |= {n.split(".")[0] for n in names}
    assert modules <= ALLOWED_IMPORTS and "bnnlib" in modules, modules
    assert "parameters" in params.metadata.get("tags", []), "the third cell is the parameters"
    declared = book_notebooks.parameters(params.source, path.name)
    assert "SEED" in declared
    code = "\n".join(c.source for c in cells[3:] if c.cell_type == "code")
    assert "torch.manual_seed(SEED)" in code, "seed the notebook"
    assert "record(" in code, "record the results"
    for forbidden in ("import plotly", "import ipywidgets", ".show()"):
        assert forbidden not in code, f"{forbidden!r}: go through bnnlib.book.viz"
    if "fit(" in code:
        assert "DEVICE" in declared and "select_device(DEVICE)" in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_full_profile_parameters_exist(path):
    """book/params/<nb>.full.yaml exists and names only parameters of the notebook's cell."""
    assert (BOOK / "params" / f"{path.stem}.full.yaml").exists(), "paper-scale parameters"
    nb = nbformat.read(path, as_version=4)
    declared = book_notebooks.parameters(book_notebooks.parameters_source(nb, path.name), path.name)
    for profile in ("full", "tests"):
        injected = book_notebooks.profile_parameters(path, profile)
        assert set(injected) <= set(declared)


_EXERCISE_SETTING = re.compile(r"`([A-Z][A-Z0-9_]*) ?= ?([^`]+)`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exercises_use_the_parameters_cell(path):
    """Each notebook ends with 2-3 exercises, and every setting they ask for (`NAME = VALUE` or
    `-p NAME=VALUE`) is a parameter of the notebook that `python -m bnnlib.book -p` accepts
    with that value (right name, right type): an exercise cannot send a reader to a parameter
    that was renamed."""
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "markdown"]
    exercises = [s for s in cells if s.startswith("## Exercises")]
    assert len(exercises) == 1 and cells[-1] == exercises[0], "one Exercises section, last"
    items = re.findall(r"^\d+\. ", exercises[0], flags=re.M)
    assert 2 <= len(items) <= 3, items
    settings = [(n, v) for n, v in _EXERCISE_SETTING.findall(exercises[0]) if n != "NAME"]
    settings += [
        tuple(m.split("=", 1))
        for m in re.findall(r"-p ([A-Z][A-Z0-9_]*=[^`\s)]+)", exercises[0])
        if m != "NAME=VALUE"
    ]
    assert settings, "the exercises use the parameters cell"
    for name, value in settings:
        parsed = book_notebooks.parse_overrides([f"{name}={value.strip()}"], [path])
        assert name in parsed[path], (name, value)


def test_params_files_belong_to_notebooks():
    stems = {p.stem for p in NOTEBOOKS}
    for f in (BOOK / "params").glob("*.yaml"):
        stem, profile, _ = f.name.rsplit(".", 2)
        assert stem in stems and profile in ("full", "tests"), f"stray {f.name}"


# --- execution (a kernel each) ---------------------------------------------------------------


@pytest.mark.notebooks
@needs_data
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_and_records(path, tmp_path, monkeypatch):
    # A relative output folder, as `make book` passes: records must still land in it.
    monkeypatch.chdir(tmp_path)
    run = book.run_notebook(path, Path("out"), "tests", timeout=600)
    assert run.executed.resolve().parent == (tmp_path / "out").resolve()
    values = rec.values(run.records)
    assert values, f"{path.name} recorded nothing"
    for entry in run.records:
        assert entry["hardware"], entry
        v = entry["value"]
        assert not (isinstance(v, float) and not math.isfinite(v)), entry
    CHECKS.get(path.stem, lambda r: None)(values)
    executed = nbformat.read(run.executed, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    if path.stem in TAKEAWAYS:  # the take-away says what the records say
        text = takeaway_text(executed)
        for sentence in TAKEAWAYS[path.stem](values):
            assert sentence in text, (sentence, text)


# --- widgets through a real kernel -----------------------------------------------------------

_PROBE = """
import json
import plotly.utils
from bnnlib.book.viz import WidgetView

def _dump(fig):
    traces = [{k: v for k, v in t.items() if k != "uid"} for t in fig.to_plotly_json()["data"]]
    return json.dumps(traces, cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)

_report = []
for _name, _view in list(globals().items()):
    if isinstance(_view, WidgetView):
        _old = _view.value
        _new = [o for o in _view.control.options if o != _old][0]
        _before = _dump(_view.figure)
        _view.control.value = _new  # what a click on the toggle button does
        _report.append({
            "name": _name, "old": _old, "new": _new,
            "changed": _dump(_view.figure) != _before,
            "matches_new": _dump(_view.figure) == _dump(_view.figures[_new]),
            "title": _view.figure.layout.title.text,
        })
print("REPORT" + json.dumps(_report))
"""


def _run_in_kernel(kc, source: str) -> str:
    out: list[str] = []

    def hook(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "error":
            out.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(source, timeout=300, output_hook=hook)
    assert reply["content"]["status"] == "ok", f"cell failed:\n{source}\n{''.join(out)}"
    return "".join(out)


@pytest.mark.notebooks
@needs_data
def test_widget_of_notebook_01_updates_its_figure_in_a_kernel(tmp_path):
    from jupyter_client.manager import start_new_kernel

    path = BOOK / "01_binarization.ipynb"
    overrides = book_notebooks.profile_parameters(path, "tests")
    env = dict(os.environ, **{rec.ENV_VAR: str(tmp_path / "records.json")})
    env["BNN_DATA_DIR"] = str(data.resolve_root().resolve())
    km, kc = start_new_kernel(kernel_name=book.kernel_name(), cwd=str(BOOK), env=env)
    try:
        for cell in _cells(path):
            if cell.cell_type != "code":
                continue
            _run_in_kernel(kc, cell.source)
            if "parameters" in cell.metadata.get("tags", []):
                _run_in_kernel(kc, "\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
        text = _run_in_kernel(kc, _PROBE)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    report = json.loads(text.split("REPORT", 1)[1])
    assert report, "notebook 01 has no viz.widget_view"
    for view in report:
        assert view["changed"] and view["matches_new"], view
        assert view["new"] in view["title"], view
