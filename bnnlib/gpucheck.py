"""``python -m bnnlib.gpucheck --out DIR``: the CUDA kernels on a real GPU, in one prepared call.

On a GPU machine, within about 6 minutes (a per-step timeout and an overall budget), it:

1. ``env``: records the GPU (nvidia-smi: name, driver, memory), nvcc and compute-sanitizer,
   Python and torch (``torch.backends.cuda.matmul.allow_tf32`` as found), whether PyCUDA
   imports (and why not: every later step still runs what it can), whether ``bnnlib`` imports
   there, and checks that MNIST is found (``$BNN_DATA_DIR``);
2. ``pycuda``: compiles every kernel of ``cuda/*.cu`` with PyCUDA (filling its disk cache for
   the later steps) and runs one exact launch;
3. ``pytest``: ``pytest -m gpu`` on the GPU test modules (:data:`GPU_TEST_MODULES`); passes only
   with 0 failed, 0 errors and **0 skipped** (a module skipped for "no GPU" still exits 0);
4. ``sanitizer``: ``compute-sanitizer --tool memcheck`` over a driver (``--step
   sanitize-driver``) that launches every kernel of :data:`bnnlib.cuda.KERNELS` once on small
   odd shapes, each checked exactly against the CPU reference; errors are reported per kernel
   (torch's caching allocator is off there, so an out-of-bounds access hits no neighbour);
5. ``bench_gemm``: :func:`bnnlib.bench_kernels.bench_gpu_gemm` at 8192^3 (baseline kernel,
   the paper's XNOR kernel, ours incl. the 1-bit tensor-core one, cuBLAS float32 with TF32
   off, TF32 / bf16 / int8 cuBLAS for context; the XNOR kernels with and without the
   packing of both operands);
6. ``bench_mlp``: :func:`bnnlib.bench.bench_gpu_mlp`, the MNIST MLP on the 10,000 test images:
   every layer on the baseline kernel against the XNOR path (first layer on the baseline
   kernel as in the paper, and our bit-plane variant), per-layer times, predictions compared.

Every step but ``env`` runs in its own process: a crash, a hang (killed at its timeout) or an
abort at exit (code 134: a PyCUDA context left on its stack) costs that step only. Results go
to DIR as soon as they exist: ``gpucheck.json`` (GPU name, driver, date, command, TF32, the
plan, each step's status and figures; rewritten after every step), ``gpucheck.log`` (all
output, as it comes), ``pytest.xml``, ``bench_gemm.json`` and ``bench_mlp.json`` (rewritten
after every figure). Five files, one folder: within what a device call brings back. The exit
code is 0 only when every step passed (tests, sanitizer, exactness, identical predictions);
the paper's speed targets are reported under ``acceptance`` without changing it.

``--dry-run`` rehearses everything up to the first GPU call, on any machine: arguments, the
output folder, the plan with each step's timeout and command line, the environment and data
checks, the JSON skeleton. It exits non-zero when something the GPU run needs is missing
here (MNIST, a writable DIR), not for the missing GPU or PyCUDA.

The GPU session (the kit ``../shared/gpu`` copied to the ignored folder ``.gpukit/``, which the
device call must carry)::

    cp -r ../shared/gpu .gpukit    # here, once, before the call
    # device run, carry [".gpukit"], timeout_s 480:
    export PYTHONUNBUFFERED=1; source .gpukit/setup-device.sh || exit 1; bash .gpukit/preflight.sh 2>&1 | tee $OUT/preflight.log; python3 -m bnnlib.gpucheck --out $OUT/gpucheck

Rehearsal here: ``python -m bnnlib.gpucheck --out /tmp/gpucheck --dry-run``.
"""

# ruff: noqa: E501  (the docstring's one-line command for the GPU session is long on purpose)
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "STEPS",
    "GPU_TEST_MODULES",
    "SANITIZE_CASES",
    "plan",
    "pytest_counts",
    "sanitizer_report",
    "run_step_process",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "GPUCHECK-RESULT "
BEGIN_TAG = "GPUCHECK-KERNEL-BEGIN "
END_TAG = "GPUCHECK-KERNEL-END "
ABORT_HINT = (
    "aborted (SIGABRT, exit code 134): a PyCUDA context left on its stack at exit is the "
    "usual cause (bnnlib.cuda.close() pops it)"
)

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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    from .machine import atomic_write

    atomic_write(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def _quick_run(cmd: list[str], timeout: float = 20) -> tuple[int | None, str]:
    """(exit code, stdout + stderr) of a short command; (None, why) when it cannot run."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    return r.returncode, (r.stdout + r.stderr).strip()


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def _self_cmd(step: str, args) -> list[str]:
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


def _sanitizer() -> str:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        for sub in ("bin", "compute-sanitizer"):
            if root and Path(root, sub, "compute-sanitizer").is_file():
                return str(Path(root, sub, "compute-sanitizer"))
    return "compute-sanitizer"


def plan(args) -> list[dict]:
    """Each step: name, timeout (after ``--timeout`` overrides), command line, what it does."""
    out = Path(args.out)
    cmds = {
        "env": ["(in process)", "nvidia-smi", "nvcc --version", "compute-sanitizer --version"],
        "pycuda": _self_cmd("pycuda", args),
        "pytest": [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
        + ["-q", f"--junitxml={out / 'pytest.xml'}", *GPU_TEST_MODULES],
        "sanitizer": [_sanitizer(), "--tool", "memcheck", "--error-exitcode", "86"]
        + ["--print-limit", "200", *_self_cmd("sanitize-driver", args)],
        "bench_gemm": _self_cmd("bench-gemm", args),
        "bench_mlp": _self_cmd("bench-mlp", args),
    }
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


# --------------------------------------------------------------------------- parsing


def pytest_counts(junit_xml: Path | None, output: str = "") -> dict:
    """passed / failed / errors / skipped from pytest's JUnit XML, else from its summary line."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "source": None}
    if junit_xml is not None and Path(junit_xml).is_file():
        with contextlib.suppress(ET.ParseError, OSError, ValueError):
            root = ET.parse(junit_xml).getroot()
            suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
            tot = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
            for s in suites:
                for k in tot:
                    tot[k] += int(s.get(k, 0))
            counts.update(
                passed=tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
                failed=tot["failures"],
                errors=tot["errors"],
                skipped=tot["skipped"],
                source="junit",
            )
            return counts
    summary = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    if summary:
        line = summary[-1]
        for key, pat in (
            ("passed", r"(\d+) passed"),
            ("failed", r"(\d+) failed"),
            ("errors", r"(\d+) errors?\b"),
            ("skipped", r"(\d+) skipped"),
        ):
            m = re.search(pat, line)
            counts[key] = int(m.group(1)) if m else 0
        counts["source"] = "summary line"
    return counts


def sanitizer_report(output: str, kernels: list[str]) -> dict:
    """compute-sanitizer's output -> errors per kernel, unattributed ones, the error summary.

    An error block (a ``========= `` line that is not indented, and its indented lines) is
    given to the kernel whose name it mentions; else to the kernel whose BEGIN/END markers of
    the driver it falls between; else to ``other`` (API errors, torch's own kernels).
    """
    per = {k: 0 for k in kernels}
    other, blocks, current = 0, [], None
    section = None
    names = sorted(kernels, key=len, reverse=True)
    for line in output.splitlines():
        if line.startswith(BEGIN_TAG):
            section = line[len(BEGIN_TAG) :].split()[0]
            continue
        if line.startswith(END_TAG):
            section = None
            continue
        if not line.startswith("========="):
            continue
        body = line[len("=========") :]
        if body.startswith("     ") or body.startswith("\t"):  # detail of the current block
            if current is not None:
                current["text"] += "\n" + body
            continue
        text = body.strip()
        if not text or text.startswith(("ERROR SUMMARY", "COMPUTE-SANITIZER", "LEAK SUMMARY")):
            current = None
            continue
        current = {"text": text, "section": section}  # an access, API or launch error
        blocks.append(current)
    samples: dict[str, list[str]] = {}
    for b in blocks:
        who = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", b["text"])), None)
        who = who or b["section"]
        if who in per:
            per[who] += 1
        else:
            other += 1
            who = "other"
        samples.setdefault(who, [])
        if len(samples[who]) < 3:
            samples[who].append(b["text"][:600])
    m = re.findall(r"ERROR SUMMARY: (\d+) errors?", output)
    return {
        "errors_per_kernel": per,
        "errors_other": other,
        "error_summary": int(m[-1]) if m else None,
        "samples": samples,
    }


def _result_line(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_TAG):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line[len(RESULT_TAG) :])
    return None


# --------------------------------------------------------------------------- running a step


def run_step_process(
    cmd: list[str],
    timeout_s: float,
    log: Callable[[str], None],
    env: dict | None = None,
) -> dict:
    """Run ``cmd`` in its own process group, streaming its output to ``log`` line by line.

    Returns rc (None when killed), timed_out, seconds, output, and ``note`` for a SIGABRT.
    At the timeout the whole group is sent SIGTERM, then SIGKILL 5 s later.
    """
    t0 = time.monotonic()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        msg = f"cannot start {cmd[0]}: {type(e).__name__}: {e}"
        log(msg + "\n")
        return {"rc": None, "timed_out": False, "seconds": 0.0, "output": msg, "note": msg}

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    rc = None if timed_out else proc.returncode
    res = {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - t0, 2),
        "output": "".join(lines),
    }
    if rc in (134, -signal.SIGABRT):
        res["note"] = ABORT_HINT
    if timed_out:
        res["note"] = f"killed at its timeout of {timeout_s:.0f} s"
    return res


# --------------------------------------------------------------------------- env step


_PROBE = r"""
import json, sys
out = {}
try:
    import pycuda, pycuda.driver
    out["pycuda"] = {"imports": True, "version": pycuda.VERSION_TEXT, "path": pycuda.__file__}
except Exception as e:
    out["pycuda"] = {"imports": False, "error": f"{type(e).__name__}: {e}"}
try:
    import bnnlib, bnnlib.bench, bnnlib.inference, bnnlib.cuda as bc
    out["bnnlib"] = {"imports": True, "path": bnnlib.__file__}
    out["bnnlib_cuda_reason"] = bc.reason()
except Exception as e:
    out["bnnlib"] = {"imports": False, "error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def _env(args, log) -> dict:
    """Machine, versions, TF32, PyCUDA and bnnlib import checks, MNIST (no GPU call)."""
    import numpy
    import torch

    from . import data

    info: dict = {"python": platform.python_version(), "executable": sys.executable}
    info["platform"] = platform.platform()
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["numpy"] = numpy.__version__
    info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    q = "--query-gpu=name,driver_version,memory.total,compute_cap"
    rc, text = _quick_run(["nvidia-smi", q, "--format=csv,noheader"])
    gpu = {"nvidia_smi": text if rc is not None else None}
    if rc == 0 and text:
        fields = [f.strip() for f in text.splitlines()[0].split(",")]
        gpu.update(dict(zip(("name", "driver", "memory", "compute_cap"), fields, strict=False)))
    else:
        gpu.update(name=None, driver=None, error=text)
    info["gpu"] = gpu
    from .cuda import _nvcc

    nvcc = _nvcc()
    version = _quick_run([nvcc, "--version"])[1].splitlines()[-1:] if nvcc else None
    info["nvcc"] = {"path": nvcc, "version": version}
    san = _sanitizer()
    rc, text = _quick_run([san, "--version"])
    info["compute_sanitizer"] = {"path": shutil.which(san), "version": text.splitlines()[-1:]}
    rc, text = _quick_run([sys.executable, "-c", _PROBE], timeout=args.timeouts.get("env", 30))
    try:
        probe = json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        probe = {"pycuda": {"imports": False, "error": f"probe failed (rc {rc}): {text[-500:]}"}}
    info.update(probe)
    root = args.data_root or os.environ.get("BNN_DATA_DIR")
    try:
        test = data.load("mnist", root, "test", download=False)
        info["mnist"] = {"found": True, "root": str(root), "test_images": len(test.y)}
    except Exception as e:
        info["mnist"] = {"found": False, "root": str(root), "error": f"{type(e).__name__}: {e}"}
    rc, text = _quick_run(["git", "rev-parse", "HEAD"])
    info["git_commit"] = text if rc == 0 else None
    p = info["pycuda"]
    log(
        f"GPU {gpu.get('name')} driver {gpu.get('driver')}; torch {info['torch']} (CUDA "
        f"{info['torch_cuda']}), allow_tf32={info['allow_tf32']}; nvcc {nvcc}; "
        f"compute-sanitizer {info['compute_sanitizer']['path']}\n"
        f"PyCUDA: {'imports ' + p.get('version', '') if p.get('imports') else p.get('error')}\n"
        f"bnnlib: {info.get('bnnlib')}; bnnlib.cuda: {info.get('bnnlib_cuda_reason') or 'ok'}\n"
        f"MNIST: {info['mnist']}\n"
    )
    return info


# --------------------------------------------------------------------------- worker steps


def _step_pycuda() -> dict:
    """Compile every kernel (PyCUDA caches the binaries on disk), one exact launch."""
    import torch

    from . import cuda as bc
    from . import kernels as K

    res: dict = {"reason": bc.reason()}
    bc.require()
    be = bc._backend()
    res["capability"] = list(be.capability)
    res["compile_s"] = {}
    for name in bc.KERNELS:
        t0 = time.monotonic()
        be.function(name)
        res["compile_s"][name] = round(time.monotonic() - t0, 3)
    x = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    res["pack_exact"] = bool(torch.equal(bc.pack(x.cuda()).cpu(), K.pack(x)))
    import pycuda
    import pycuda.driver as drv

    res["pycuda"] = pycuda.VERSION_TEXT
    res["driver_version"] = drv.get_driver_version()
    res["ok"] = res["pack_exact"]
    return res


def _pm1(rows: int, cols: int, seed: int):
    import torch

    from .binarize import sign

    g = torch.Generator().manual_seed(seed)
    return sign(torch.randn(rows, cols, generator=g))


def _case_baseline(bc, K, dev) -> bool:
    import torch

    g = torch.Generator().manual_seed(0)
    ok = True
    for M, K_, N in ((17, 33, 31), (70, 3, 65)):
        A, B = torch.randn(M, K_, generator=g), torch.randn(K_, N, generator=g)
        got = bc.baseline_gemm(A.to(dev), B.to(dev)).cpu().double()
        ok &= bool(torch.allclose(got, A.double() @ B.double(), rtol=1e-4, atol=1e-4))
    return ok


def _xnor_shapes():
    return [(1, 1, 1), (17, 33, 31), (3, 70, 65), (70, 66, 600), (65, 9, 1100)]


def _case_xnor_paper(bc, K, dev) -> bool:
    import torch

    ok = True
    for M, N, k in _xnor_shapes():
        a, b = _pm1(M, k, k), _pm1(N, k, k + 1)
        ref = (a.double() @ b.double().T).to(torch.int32)
        pa, pb = K.pack(a, word_bits=32).to(dev), K.pack(b, word_bits=32).to(dev)
        ok &= bool(torch.equal(bc.xnor_gemm(pa, pb, k).cpu(), ref))
    return ok


def _case_xnor_fast(method: str):
    def case(bc, K, dev) -> bool:
        import torch

        ok = True
        for M, N, k in _xnor_shapes():
            a, b = _pm1(M, k, k), _pm1(N, k, k + 1)
            ref = (a.double() @ b.double().T).to(torch.int32)
            pa, pb = K.pack(a), K.pack(b)
            kw = {}
            if method == "tensor_core":  # counts from the CPU: this launches xnor_gemm_tc alone
                kw["popcounts"] = tuple(
                    K.popcount_rows(p).to(torch.int32).to(dev) for p in (pa, pb)
                )
            got = bc.xnor_gemm_fast(pa.to(dev), pb.to(dev), k, method=method, **kw)
            ok &= bool(torch.equal(got.cpu(), ref))
        return ok

    return case


def _case_popcount(bc, K, dev) -> bool:
    import torch

    ok = True
    for R, k in ((1, 1), (7, 150), (300, 65)):
        w = K.pack(_pm1(R, k, R + k))
        ok &= bool(torch.equal(bc.popcount_rows(w.to(dev)).cpu(), K.popcount_rows(w).int()))
    return ok


def _case_pack(word_bits: int, cols: bool):
    def case(bc, K, dev) -> bool:
        import torch

        ok = True
        for R, k in ((1, 1), (5, 63), (3, 64), (9, 130), (33, 700)):
            x = _pm1(R, k, R * k)
            want = K.pack(x, word_bits=word_bits)
            if cols:
                got = bc.pack_cols(x.T.contiguous().to(dev), word_bits=word_bits, check=False)
            else:
                got = bc.pack(x.to(dev), word_bits=word_bits, check=False)
            ok &= bool(torch.equal(got.cpu(), want))
        return ok

    return case


def _case_threshold(bc, K, dev) -> bool:
    import torch

    g = torch.Generator().manual_seed(4)
    ok = True
    for M, N in ((1, 1), (5, 97), (33, 130)):
        acc = torch.randint(-20, 21, (M, N), generator=g, dtype=torch.int32)
        thr = torch.randint(-5, 6, (N,), generator=g, dtype=torch.int32)
        direction = torch.where(torch.rand(N, generator=g) < 0.5, -1, 1).to(torch.int32)
        got = bc.threshold_pack(acc.to(dev), thr.to(dev), direction.to(dev)).cpu()
        ok &= bool(torch.equal(got, K.threshold_pack(acc, thr, direction)))
    return ok


#: kernel name -> a check that launches that kernel (alone) on small odd shapes, exact
SANITIZE_CASES: dict[str, Callable] = {
    "baseline_gemm": _case_baseline,
    "xnor_gemm": _case_xnor_paper,
    "xnor_gemm_fast": _case_xnor_fast("popc"),
    "xnor_gemm_tc": _case_xnor_fast("tensor_core"),
    "popcount_rows64": _case_popcount,
    "pack_rows32": _case_pack(32, cols=False),
    "pack_rows64": _case_pack(64, cols=False),
    "pack_cols32": _case_pack(32, cols=True),
    "pack_cols64": _case_pack(64, cols=True),
    "threshold_pack64": _case_threshold,
}


def _step_sanitize_driver() -> dict:
    """Launch every kernel once per case (markers around each), checked exactly on the CPU."""
    import torch

    from . import cuda as bc
    from . import kernels as K

    bc.require()
    dev = torch.device("cuda")
    be = bc._backend()
    for name in bc.KERNELS:  # compile (from PyCUDA's cache) before the markers
        be.function(name)
    out: dict = {}
    for name, case in SANITIZE_CASES.items():
        if name == "xnor_gemm_tc" and tuple(be.capability) < (8, 0):
            out[name] = {"ok": None, "note": f"needs sm_80+, this GPU is {be.capability}"}
            continue
        print(BEGIN_TAG + name, flush=True)
        try:
            ok = bool(case(bc, K, dev))
            torch.cuda.synchronize()
            out[name] = {"ok": ok}
        except Exception as e:
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"{END_TAG}{name} {'ok' if out[name]['ok'] else 'FAILED'}", flush=True)
    return {"kernels": out, "ok": all(v["ok"] is not False for v in out.values())}


def _step_bench_gemm(args) -> dict:
    from .bench import _plain, machine_info
    from .bench_kernels import bench_gpu_gemm

    path = Path(args.out) / "bench_gemm.json"
    meta = machine_info(["(bnnlib.gpucheck bench_gemm)"])
    meta["command"] = shlex.join(sys.argv)

    def write(res: dict) -> None:
        _write_json(path, {"meta": meta, "gemm": _plain(res)})

    res = bench_gpu_gemm(args.n or 8192, args.repeats or 5, on_result=write, log=print)
    return {"ok": _gemm_ok(res), "file": str(path)}


def _step_bench_mlp(args) -> dict:
    from .bench import _plain, bench_gpu_mlp, machine_info

    path = Path(args.out) / "bench_mlp.json"
    meta = machine_info(["(bnnlib.gpucheck bench_mlp)"])
    meta["command"] = shlex.join(sys.argv)

    def write(res: dict) -> None:
        _write_json(path, {"meta": meta, "mnist_mlp": _plain(res)})

    res = bench_gpu_mlp(
        hidden=args.hidden or 4096,
        data_root=args.data_root,
        model_path=args.model_path,
        n_test=args.n_test,
        n_calib=args.n_calib or 5000,
        repeats=args.repeats or 5,
        on_result=write,
        log=print,
    )
    return {"ok": _mlp_ok(res), "file": str(path)}


def _worker(step: str, args) -> int:
    """``--step NAME``: one step in this process; prints its result as the last line."""
    fns = {
        "pycuda": lambda: _step_pycuda(),
        "sanitize-driver": lambda: _step_sanitize_driver(),
        "bench-gemm": lambda: _step_bench_gemm(args),
        "bench-mlp": lambda: _step_bench_mlp(args),
    }
    try:
        res = fns[step]()
    except Exception as e:
        import traceback

        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        with contextlib.suppress(Exception):
            from . import cuda as bc

            bc.close()  # no PyCUDA context left on its stack at exit (abort, code 134)
    print(RESULT_TAG + json.dumps(res, default=str), flush=True)
    return 0 if res.get("ok") else 1


# --------------------------------------------------------------------------- judging results


def _gemm_ok(g: dict) -> bool:
    """Every figure measured without error and exact (bf16 output rounding excepted)."""
    if not g or any(k.endswith("_error") for k in g) or "kernels_unavailable" in g:
        return False
    return all(v for k, v in g.items() if k.endswith("_exact") and "bf16" not in k)


def _mlp_ok(m: dict) -> bool:
    """No path failed; the XNOR paths (first layer on the baseline kernel) predict as the
    baseline path; the library's PackedNet.predict on the GPU equals the simulation."""
    if not m or any(k.endswith("_error") for k in m) or "kernels_unavailable" in m:
        return False
    n = m.get("n_images")
    same = [m.get(f"identical_{p}_vs_baseline") == n for p in ("xnor_paper", "xnor_fast")]
    return all(same) and bool(m.get("packed_predict_identical_to_simulation"))


def acceptance(gemm: dict | None, mlp: dict | None) -> dict:
    """The issue's speed targets, as figures and pass/fail (reported; not in the exit code)."""
    gemm, mlp = gemm or {}, mlp or {}
    out: dict = {}
    v = gemm.get("speedup_xnor_paper_with_packing_vs_baseline")
    out["paper_xnor_with_packing_vs_baseline"] = {"x": v, "target": 20, "pass": _ge(v, 20)}
    v = gemm.get("speedup_xnor_paper_vs_baseline")
    out["paper_xnor_prepacked_vs_baseline"] = {"x": v, "target": 20, "pass": _ge(v, 20)}
    fastest = gemm.get("fastest_xnor")
    for view, suffix in (("prepacked", ""), ("with_packing", "_with_packing")):
        v = gemm.get(f"speedup_{fastest}{suffix}_vs_cublas_fp32") if fastest else None
        out[f"fastest_xnor_{view}_vs_cublas_fp32"] = {
            "kernel": fastest,
            "x": v,
            "target": 3,
            "pass": _ge(v, 3),
        }
    n = mlp.get("n_images")
    for path in ("xnor_paper", "xnor_fast", "xnor_fast_bitplanes"):
        v = mlp.get(f"speedup_{path}_vs_baseline")
        same = mlp.get(f"identical_{path}_vs_baseline")
        out[f"mlp_{path}_vs_baseline"] = {
            "x": v,
            "target": 7,
            "identical": same,
            "of": n,
            "pass": _ge(v, 7) and same == n,
        }
    return out


def _ge(v, target) -> bool | None:
    return None if v is None else bool(v >= target)


# --------------------------------------------------------------------------- main


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
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together")
    p.add_argument("--quick", action="store_true", help="small sizes (gemm 2048, MLP hidden 1024)")
    p.add_argument("--n", type=int, help="gemm size M = N = K (default 8192)")
    p.add_argument("--hidden", type=int, help="MLP hidden units (default 4096)")
    p.add_argument("--repeats", type=int, help="timed repeats (default 5)")
    p.add_argument("--n-test", type=int, help="test images (default all 10,000)")
    p.add_argument("--n-calib", type=int, help="training images for the BN statistics (5000)")
    p.add_argument("--data-root", help="data folder (default $BNN_DATA_DIR)")
    p.add_argument("--model-path", help="a trained mnist_mlp state dict instead of a random one")
    p.add_argument("--step", help=argparse.SUPPRESS)  # worker mode (one step, this process)
    return p


def _parse(argv: list[str] | None):
    args = _parser().parse_args(argv)
    timeouts = {}
    names = {s.name for s in STEPS}
    for item in args.timeout:
        name, _, sec = item.partition("=")
        if name not in names or not sec:
            raise SystemExit(f"--timeout {item!r}: expected STEP=SECONDS with STEP in {names}")
        timeouts[name] = float(sec)
    args.timeouts = timeouts
    if args.quick:
        args.n = args.n or 2048
        args.hidden = args.hidden or 1024
        args.repeats = args.repeats or 3
    args.out = Path(args.out).resolve()
    return args


def _summary_lines(doc: dict) -> list[str]:
    from .bench import gpu_table

    lines = [
        "",
        "=" * 78,
        f"bnnlib.gpucheck {doc['date']}  GPU {doc['env'].get('gpu', {}).get('name')}",
    ]
    lines.append("=" * 78)
    for st in doc["plan"]:
        r = doc["steps"].get(st["step"], {})
        extra = r.get("detail", "")
        lines.append(
            f"  {st['step']:11s} {r.get('status', '?'):8s} {r.get('seconds', 0):7.1f} s "
            f"(timeout {st['timeout_s']:.0f} s)  {extra}"
        )
    bench = doc.get("bench", {})
    lines += gpu_table(bench.get("gemm"), bench.get("mnist_mlp"))
    if doc.get("acceptance"):
        lines.append("Acceptance (speed targets; reported, not in the exit code):")
        for k, v in doc["acceptance"].items():
            x = v.get("x")
            xs = "-" if x is None else f"{x:.2f}x"
            lines.append(f"  {k:44s} {xs:>9} (target {v['target']}x) {v['pass']}")
    lines.append(f"RESULT: {doc['result']}  (files in {doc['out']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    if args.step:
        return _worker(args.step, args)
    t_start = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpucheck.log"
    json_path = out / "gpucheck.json"
    log_fh = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed at the end)
    lock = threading.Lock()

    def log(text: str) -> None:
        with lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            log_fh.write(text)
            log_fh.flush()

    def header(msg: str) -> None:
        log(f"=== [{time.monotonic() - t_start:6.1f}s] {msg}\n")

    steps_plan = plan(args)
    doc: dict = {
        "tool": "bnnlib.gpucheck",
        "command": shlex.join([sys.executable, "-m", "bnnlib.gpucheck", *argv]),
        "cwd": str(Path.cwd()),
        "date": _now(),
        "dry_run": args.dry_run,
        "out": str(out),
        "budget_s": args.budget,
        "plan": steps_plan,
        "steps": {
            s["step"]: {"status": "planned" if args.dry_run else "pending"} for s in steps_plan
        },
        "env": {},
        "bench": {},
        "result": "running",
    }

    def save() -> None:
        _write_json(json_path, doc)

    save()  # the skeleton, before anything can fail
    mode = " --dry-run" if args.dry_run else ""
    header(f"bnnlib.gpucheck{mode}: out {out}, budget {args.budget:.0f} s")
    for st in steps_plan:
        line = f"  {st['step']:11s} timeout {st['timeout_s']:4.0f} s  {st['what']}"
        log(f"{line}\n      {st['command']}\n")
    total = sum(s["timeout_s"] for s in steps_plan if not s["skip"])
    log(f"  sum of timeouts {total:.0f} s (budget {args.budget:.0f} s)\n")

    # ---- env (in process, no GPU call) ----
    header("step env")
    t0 = time.monotonic()
    try:
        env = _env(args, log)
        doc["env"] = env
        # the figures a results file needs, at the top
        doc["gpu"] = env["gpu"].get("name")
        doc["driver"] = env["gpu"].get("driver")
        doc["allow_tf32"] = env["allow_tf32"]
        problems = []
        if not env["mnist"]["found"]:
            problems.append("MNIST not found")
        if not args.dry_run:
            if not env.get("pycuda", {}).get("imports"):
                problems.append("PyCUDA does not import")
            if not env["gpu"].get("name"):
                problems.append("no GPU in nvidia-smi")
        doc["steps"]["env"] = {
            "status": "fail" if problems else "ok",
            "seconds": round(time.monotonic() - t0, 2),
            "detail": "; ".join(problems),
        }
    except Exception as e:
        doc["steps"]["env"] = {"status": "fail", "detail": f"{type(e).__name__}: {e}"}
        doc["gpu"] = doc["driver"] = doc["allow_tf32"] = None
    save()

    if args.dry_run:
        ok = doc["steps"]["env"]["status"] == "ok"
        doc["result"] = "dry run: ready" if ok else "dry run: " + doc["steps"]["env"]["detail"]
        save()
        log("\n".join(_summary_lines(doc)) + "\n")
        log_fh.close()
        return 0 if ok else 1

    deadline = t_start + args.budget
    env_child = _child_env()
    for st in steps_plan:
        name = st["step"]
        if name == "env":
            continue
        r: dict = {"command": st["command"], "timeout_s": st["timeout_s"]}
        if st["skip"]:
            doc["steps"][name] = {**r, "status": "skipped", "detail": "--skip"}
            save()
            continue
        left = deadline - time.monotonic()
        if left < 10:
            doc["steps"][name] = {**r, "status": "fail", "detail": "no time left in the budget"}
            save()
            continue
        timeout = min(st["timeout_s"], left)
        header(f"step {name} (timeout {timeout:.0f} s): {st['command']}")
        child_env = env_child
        if name == "sanitizer":  # every tensor its own allocation: out-of-bounds is visible
            child_env = _child_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        if name == "pytest":
            with contextlib.suppress(OSError):
                (out / "pytest.xml").unlink()
        p = run_step_process(st["argv"], timeout, log, env=child_env)
        r.update(rc=p["rc"], seconds=p["seconds"], timed_out=p["timed_out"])
        notes = [p["note"]] if p.get("note") else []
        ok = p["rc"] == 0 and not p["timed_out"]
        result = _result_line(p["output"])
        if result is not None:
            r["result"] = result
        if name == "pytest":
            c = pytest_counts(out / "pytest.xml", p["output"])
            r["counts"] = c
            ok = ok and c["failed"] == 0 and c["errors"] == 0 and c["skipped"] == 0
            ok = ok and c["passed"] > 0
            notes.insert(
                0,
                f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
                f"{c['skipped']} skipped",
            )
            if c["skipped"]:
                notes.append("skips count as failures on the GPU")
        elif name == "sanitizer":
            rep = sanitizer_report(p["output"], list(SANITIZE_CASES))
            r["report"] = rep
            kern = (result or {}).get("kernels", {})
            bad = [k for k, n in rep["errors_per_kernel"].items() if n]
            wrong = [k for k, v in kern.items() if v.get("ok") is False]
            missing = [k for k in SANITIZE_CASES if k not in kern]
            ok = (p["rc"] in (0, 86)) and not p["timed_out"] and not bad and not wrong
            ok = ok and not missing and rep["error_summary"] is not None
            notes.insert(
                0,
                f"errors: {rep['error_summary']} ({', '.join(bad) or 'no kernel'}"
                f"{'; other ' + str(rep['errors_other']) if rep['errors_other'] else ''})"
                + (f"; not exact: {wrong}" if wrong else "")
                + (f"; not run: {missing}" if missing else ""),
            )
            if rep["errors_other"] and not bad:
                notes.append("errors outside our kernels: see samples in gpucheck.json")
        elif name in ("bench_gemm", "bench_mlp"):
            key, file = (
                ("gemm", "bench_gemm.json")
                if name == "bench_gemm"
                else (
                    "mnist_mlp",
                    "bench_mlp.json",
                )
            )
            with contextlib.suppress(OSError, json.JSONDecodeError):
                part = json.loads((out / file).read_text())
                doc["bench"][key] = part.get(key)
                doc["bench"].setdefault("meta", part.get("meta"))
        elif name == "pycuda" and result is not None and result.get("error"):
            notes.insert(0, result["error"])
        if result is not None and not result.get("ok", True):
            ok = False
            if result.get("error") and name != "pycuda":
                notes.append(result["error"])
        r["status"] = "ok" if ok else ("timeout" if p["timed_out"] else "fail")
        r["detail"] = "; ".join(notes)
        doc["steps"][name] = r
        doc["acceptance"] = acceptance(doc["bench"].get("gemm"), doc["bench"].get("mnist_mlp"))
        save()
        header(f"step {name}: {r['status']} {r['detail']}")

    failed = [n for n, r in doc["steps"].items() if r.get("status") not in ("ok", "skipped")]
    doc["result"] = "ok" if not failed else "FAILED: " + ", ".join(failed)
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    doc["date_end"] = _now()
    save()
    log("\n".join(_summary_lines(doc)) + "\n")
    log_fh.close()
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
