"""``python -m bnnlib.gpucheck``: the dry run here, and the parts that judge a GPU run.

The GPU run itself happens on a GPU machine; here we rehearse it up to the first GPU call
(arguments, output folder, plan and timeouts, command lines, environment and data checks,
the JSON skeleton) and test the parsing of pytest's and compute-sanitizer's output, the
step runner's timeout and abort handling, and that the sanitizer driver covers every kernel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bnnlib import gpucheck
from bnnlib.gpucheck import config as gpucheck_config
from bnnlib.gpucheck import report as gpucheck_report
from bnnlib.kernels import cuda as bc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """`python -m bnnlib.gpucheck --out DIR --dry-run`, as a user runs it."""
    out = tmp_path_factory.mktemp("gpucheck") / "out"
    root = Path(os.environ.get("BNN_DATA_DIR", REPO.parent / "shared" / "data"))
    env = dict(os.environ, BNN_DATA_DIR=str(root), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bnnlib.gpucheck", "--out", str(out), "--dry-run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    return res, out, root


def test_dry_run_plan_and_skeleton(dry_run):
    res, out, root = dry_run
    mnist = (root / "MNIST").is_dir()
    assert res.returncode == (0 if mnist else 1), res.stdout + res.stderr
    doc = json.loads((out / "gpucheck.json").read_text())
    assert doc["dry_run"] is True
    assert doc["command"].endswith(f"-m bnnlib.gpucheck --out {out} --dry-run")
    for key in ("date", "gpu", "driver", "allow_tf32", "plan", "steps", "env"):
        assert key in doc, key
    assert doc["allow_tf32"] in (True, False)
    assert doc["env"]["allow_tf32"] == doc["allow_tf32"]
    assert "imports" in doc["env"]["pycuda"]
    if not doc["env"]["pycuda"]["imports"]:
        assert doc["env"]["pycuda"]["error"]  # why not
    assert doc["env"]["bnnlib"]["imports"] is True
    assert doc["env"]["mnist"]["found"] is mnist
    if mnist:
        assert doc["env"]["mnist"]["test_images"] == 10_000
        assert doc["result"] == "dry run: ready"
    # the plan: every step, in order, with timeouts that fit the budget (under 6 minutes)
    names = [s["step"] for s in doc["plan"]]
    assert names == ["env", "pycuda", "pytest", "sanitizer", "bench_gemm", "bench_mlp"]
    assert sum(s["timeout_s"] for s in doc["plan"]) <= doc["budget_s"] <= 345
    assert all(doc["steps"][n]["status"] == "planned" for n in names[1:])
    cmds = {s["step"]: s["command"] for s in doc["plan"]}
    assert "-m pytest -m gpu" in cmds["pytest"] and f"--junitxml={out}/pytest.xml" in cmds["pytest"]
    for module in gpucheck.GPU_TEST_MODULES:
        assert module in cmds["pytest"]
    assert re.search(
        r"compute-sanitizer --tool memcheck .*--step sanitize-driver", cmds["sanitizer"]
    )
    assert "--step bench-gemm" in cmds["bench_gemm"] and "--step bench-mlp" in cmds["bench_mlp"]
    # what it printed: the plan, the environment, the result
    for text in ("timeout", "compute-sanitizer --tool memcheck", "PyCUDA:", "MNIST:", "RESULT:"):
        assert text in res.stdout, text
    assert (out / "gpucheck.log").read_text().count("=== [") >= 2
    # within a device call's limits: at most 8 files come back, no deeper folders
    assert len(list(out.iterdir())) <= 5


def test_timeouts_and_skips_are_arguments(tmp_path):
    args = gpucheck_config.parse_args(
        ["--out", str(tmp_path), "--timeout", "pytest=120", "--skip", "bench_mlp"]
    )
    steps = {s["step"]: s for s in gpucheck.plan(args)}
    assert steps["pytest"]["timeout_s"] == 120 and steps["bench_mlp"]["skip"] is True
    with pytest.raises(SystemExit):
        gpucheck_config.parse_args(["--out", str(tmp_path), "--timeout", "nope=3"])
    quick = gpucheck_config.parse_args(["--out", str(tmp_path), "--quick"])
    assert "--n 2048" in " ".join(gpucheck_config.self_command("bench-gemm", quick))


def test_every_gpu_test_module_is_run():
    """Every test file with a ``gpu`` mark is in the pytest step's list."""
    marked = sorted(
        f"tests/{p.name}"
        for p in (REPO / "tests").glob("test_*.py")
        if re.search(r"mark\.gpu\b", p.read_text()) and p.name != "test_gpucheck.py"
    )
    assert marked == sorted(gpucheck.GPU_TEST_MODULES)


def test_sanitizer_driver_covers_every_kernel():
    assert set(gpucheck.SANITIZE_CASES) == set(bc.KERNELS)


# ------------------------------------------------------------------ judging output


def test_pytest_counts_from_junit_and_summary(tmp_path):
    xml = tmp_path / "p.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
        'skipped="2" tests="10"></testsuite></testsuites>'
    )
    c = gpucheck.pytest_counts(xml)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (7, 1, 0, 2)
    c = gpucheck.pytest_counts(None, "....\n1 failed, 30 passed, 1 skipped, 2 errors in 3.2s\n")
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (30, 1, 2, 1)
    c = gpucheck.pytest_counts(None, "1 skipped in 0.5s")  # a module skipped: exit code 0
    assert c["skipped"] == 1 and c["passed"] == 0


SANITIZER_OUTPUT = """\
========= COMPUTE-SANITIZER
GPUCHECK-KERNEL-BEGIN baseline_gemm
GPUCHECK-KERNEL-END baseline_gemm ok
GPUCHECK-KERNEL-BEGIN xnor_gemm
========= Invalid __global__ read of size 4 bytes
=========     at xnor_gemm+0x1b0 in xnor_gemm.cu:41
=========     by thread (3,0,0) in block (1,0,0)
=========     Address 0x7f0 is out of bounds
GPUCHECK-KERNEL-END xnor_gemm ok
GPUCHECK-KERNEL-BEGIN xnor_gemm_fast
========= Invalid __shared__ write of size 8 bytes
=========     at 0x2c0 in some_device_function
=========     by thread (0,0,0) in block (0,0,0)
GPUCHECK-KERNEL-END xnor_gemm_fast ok
========= Program hit cudaErrorInvalidValue (error 1) on CUDA API call to cudaFoo.
=========     Saved host backtrace up to driver entry point at error
========= ERROR SUMMARY: 3 errors
"""


def test_sanitizer_report_per_kernel():
    rep = gpucheck.sanitizer_report(SANITIZER_OUTPUT, list(bc.KERNELS))
    per = rep["errors_per_kernel"]
    assert per["xnor_gemm"] == 1  # by name (not given to xnor_gemm_fast)
    assert per["xnor_gemm_fast"] == 1  # by the driver's markers
    assert per["baseline_gemm"] == 0 and sum(per.values()) == 2
    assert rep["errors_other"] == 1 and rep["error_summary"] == 3
    assert "xnor_gemm.cu:41" in rep["samples"]["xnor_gemm"][0]
    clean = gpucheck.sanitizer_report("========= ERROR SUMMARY: 0 errors\n", ["xnor_gemm"])
    assert clean["error_summary"] == 0 and clean["errors_per_kernel"] == {"xnor_gemm": 0}


def test_run_step_process_streams_times_out_and_names_abort():
    got = []
    ok = gpucheck.run_step_process([sys.executable, "-c", "print('hi')"], 30, got.append)
    assert ok["rc"] == 0 and not ok["timed_out"] and "hi" in "".join(got)
    slow = gpucheck.run_step_process(
        [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(60)"],
        1,
        got.append,
    )
    assert slow["timed_out"] and slow["rc"] is None and "start" in slow["output"]
    assert slow["seconds"] < 20
    abort = gpucheck.run_step_process(
        [sys.executable, "-c", "import os; os.abort()"], 30, got.append
    )
    assert "PyCUDA context" in abort["note"]
    missing = gpucheck.run_step_process(["/nonexistent/compute-sanitizer"], 5, got.append)
    assert missing["rc"] is None and "cannot start" in missing["note"]


def test_judging_bench_results():
    g = {"xnor_paper_exact": True, "cublas_bf16_exact": False, "baseline_exact": True}
    assert gpucheck_report.gemm_ok(g)
    assert not gpucheck_report.gemm_ok({**g, "xnor_popc_exact": False})
    assert not gpucheck_report.gemm_ok({**g, "baseline_error": "RuntimeError: boom"})
    m = {
        "n_images": 10,
        "identical_xnor_paper_vs_baseline": 10,
        "identical_xnor_fast_vs_baseline": 10,
        "packed_predict_identical_to_simulation": True,
    }
    assert gpucheck_report.mlp_ok(m)
    assert not gpucheck_report.mlp_ok({**m, "identical_xnor_fast_vs_baseline": 9})
    acc = gpucheck_report.acceptance(
        {
            "speedup_xnor_paper_with_packing_vs_baseline": 25.0,
            "fastest_xnor": "xnor_tensor_core",
            "speedup_xnor_tensor_core_vs_cublas_fp32": 2.0,
        },
        {
            "n_images": 10,
            "speedup_xnor_fast_vs_baseline": 8.0,
            "identical_xnor_fast_vs_baseline": 10,
        },
    )
    assert acc["paper_xnor_with_packing_vs_baseline"]["pass"] is True
    assert acc["fastest_xnor_prepacked_vs_cublas_fp32"]["pass"] is False
    assert acc["mlp_xnor_fast_vs_baseline"]["pass"] is True
    assert (
        acc["mlp_xnor_paper_vs_baseline"]["pass"] is None
        or not acc["mlp_xnor_paper_vs_baseline"]["pass"]
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n", "0"], "--n: must be an integer >= 1"),
        (["--hidden", "-3"], "--hidden: must be an integer >= 1"),
        (["--repeats", "0"], "--repeats: must be an integer >= 1"),
        (["--budget", "-1"], "--budget: must be a finite number > 0"),
        (["--timeout", "pytest=-5"], "SECONDS must be a number > 0"),
        (["--model-path", "/nonexistent"], "--model-path /nonexistent: no such file"),
        (["--out", ""], "--out is empty"),
    ],
)
def test_dry_run_refuses_bad_flags(tmp_path, capsys, flags, message):
    """These used to pass a dry run as "ready" with exit 0."""
    argv = ["--out", str(tmp_path / "gc"), "--dry-run", *flags]
    with pytest.raises(SystemExit) as e:
        gpucheck.main(argv)
    assert e.value.code != 0
    assert message in capsys.readouterr().err + str(e.value.code)


def test_an_unwritable_out_is_one_error(capsys):
    assert gpucheck.main(["--out", "/proc/bnnlib-cannot-write/g", "--dry-run"]) == 2
    assert "cannot write to --out /proc/bnnlib-cannot-write/g" in capsys.readouterr().err
