"""The steps of ``python -m bnnlib.gpucheck``, their timeouts, the arguments and the plan."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bnnlib import cliargs

REPO = Path(__file__).resolve().parents[2]
RESULT_TAG = "GPUCHECK-RESULT "
BEGIN_TAG = "GPUCHECK-KERNEL-BEGIN "
END_TAG = "GPUCHECK-KERNEL-END "

#: test modules with ``@pytest.mark.gpu`` tests (tests/test_gpucheck.py checks this is all)
GPU_TEST_MODULES = ["tests/test_kernels_gpu.py", "tests/test_inference.py"]


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: int
    what: str


#: the steps in their order, with their default timeouts (seconds); the sum stays within the
#: default budget of 340 s, so the whole takes under 6 minutes with the interpreter's start
STEPS = [
    Step("env", 30, "machine, versions, TF32, PyCUDA import, bnnlib import, MNIST"),
    Step("pycuda", 60, "compile every kernel with PyCUDA, one exact launch"),
    Step("pytest", 75, "pytest -m gpu on the GPU test modules: 0 failed, 0 skipped"),
    Step("sanitizer", 60, "compute-sanitizer memcheck: every kernel on small odd shapes"),
    Step("bench_gemm", 55, "8192^3: baseline, XNOR kernels (+/- packing), cuBLAS"),
    Step("bench_mlp", 60, "MNIST MLP, 10,000 test images: baseline kernel vs XNOR path"),
]
BUDGET_S = 340


# --------------------------------------------------------------------------- small helpers


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: dict) -> None:
    from bnnlib.files import atomic_write

    atomic_write(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def self_command(step: str, args) -> list[str]:
    cmd = [sys.executable, "-m", "bnnlib.gpucheck", "--step", step, "--out", str(args.out)]
    for flag in ("n", "hidden", "repeats", "n_test", "n_calib"):
        v = getattr(args, flag)
        if v is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(v)]
    for flag in ("data_root", "model_path"):
        v = getattr(args, flag)
        if v:
            cmd += [f"--{flag.replace('_', '-')}", str(v)]
    return cmd


def sanitizer_path() -> str:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        for sub in ("bin", "compute-sanitizer"):
            if root and Path(root, sub, "compute-sanitizer").is_file():
                return str(Path(root, sub, "compute-sanitizer"))
    return "compute-sanitizer"


# --------------------------------------------------------------------------- the plan


def _step_commands(args) -> dict[str, list[str]]:
    """Each step's command line (``env`` runs in process: the tools it calls)."""
    out = Path(args.out)
    return {
        "env": ["(in process)", "nvidia-smi", "nvcc --version", "compute-sanitizer --version"],
        "pycuda": self_command("pycuda", args),
        "pytest": [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
        + ["-q", f"--junitxml={out / 'pytest.xml'}", *GPU_TEST_MODULES],
        "sanitizer": [sanitizer_path(), "--tool", "memcheck", "--error-exitcode", "86"]
        + ["--print-limit", "200", *self_command("sanitize-driver", args)],
        "bench_gemm": self_command("bench-gemm", args),
        "bench_mlp": self_command("bench-mlp", args),
    }


def plan(args) -> list[dict]:
    """Each step: name, timeout (after ``--timeout`` overrides), command line, what it does."""
    cmds = _step_commands(args)
    steps = []
    for s in STEPS:
        steps.append(
            {
                "step": s.name,
                "timeout_s": int(args.timeouts.get(s.name, s.timeout_s)),
                "command": shlex.join(cmds[s.name]) if s.name != "env" else "; ".join(cmds["env"]),
                "argv": cmds[s.name] if s.name != "env" else None,
                "what": s.what,
                "skip": s.name in args.skip,
            }
        )
    return steps


# --------------------------------------------------------------------------- arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.gpucheck",
        description="GPU tests, compute-sanitizer and the paper's benchmarks in one call "
        "(see the module docstring). Exit code 0 only when every step passed.",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--dry-run", action="store_true", help="rehearse up to the first GPU call")
    p.add_argument(
        "--skip", nargs="+", default=[], choices=[s.name for s in STEPS if s.name != "env"]
    )
    p.add_argument(
        "--timeout",
        nargs="+",
        default=[],
        metavar="STEP=SECONDS",
        help="override a step's timeout, e.g. --timeout pytest=120",
    )
    p.add_argument(
        "--budget",
        type=cliargs.positive_float,
        default=BUDGET_S,
        help="seconds for all steps together",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (gemm 2048, MLP hidden 1024)")
    p.add_argument("--n", type=cliargs.positive_int, help="gemm size M = N = K (default 8192)")
    p.add_argument("--hidden", type=cliargs.positive_int, help="MLP hidden units (default 4096)")
    p.add_argument("--repeats", type=cliargs.positive_int, help="timed repeats (default 5)")
    p.add_argument("--n-test", type=cliargs.positive_int, help="test images (default all 10,000)")
    p.add_argument(
        "--n-calib", type=cliargs.positive_int, help="training images for the BN statistics (5000)"
    )
    p.add_argument("--data-root", help="data folder (default $BNN_DATA_DIR)")
    p.add_argument("--model-path", help="a trained mnist_mlp state dict instead of a random one")
    p.add_argument("--step", help=argparse.SUPPRESS)  # worker mode (one step, this process)
    return p


def _parse_timeouts(items: list[str]) -> dict[str, float]:
    """``--timeout STEP=SECONDS ...`` -> {step: seconds}; an unknown step is an error."""
    timeouts = {}
    names = {s.name for s in STEPS}
    for item in items:
        name, _, sec = item.partition("=")
        if name not in names or not sec:
            raise SystemExit(f"--timeout {item!r}: expected STEP=SECONDS with STEP in {names}")
        try:
            seconds = float(sec)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < float("inf"):
            raise SystemExit(f"--timeout {item!r}: SECONDS must be a number > 0")
        timeouts[name] = seconds
    return timeouts


def parse_args(argv: list[str] | None):
    args = _parser().parse_args(argv)
    args.timeouts = _parse_timeouts(args.timeout)
    if args.quick:
        args.n = args.n or 2048
        args.hidden = args.hidden or 1024
        args.repeats = args.repeats or 3
    if not str(args.out).strip():
        raise SystemExit("--out is empty (an unset variable?): give a folder")
    if args.model_path is not None and not Path(args.model_path).is_file():
        raise SystemExit(f"--model-path {args.model_path}: no such file")
    args.out = Path(args.out).resolve()
    return args
