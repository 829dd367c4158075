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
   sanitize-driver``) that launches every kernel of :data:`bnnlib.kernels.cuda.KERNELS` once on small
   odd shapes, each checked exactly against the CPU reference; errors are reported per kernel
   (torch's caching allocator is off there, so an out-of-bounds access hits no neighbour);
5. ``bench_gemm``: :func:`bnnlib.bench.kernels.bench_gpu_gemm` at 8192^3 (baseline kernel,
   the paper's XNOR kernel, ours incl. the 1-bit tensor-core one, cuBLAS float32 with TF32
   off, TF32 / bf16 / int8 cuBLAS for context; the XNOR kernels with and without the
   packing of both operands);
6. ``bench_mlp``: :func:`bnnlib.bench.gpu.bench_gpu_mlp`, the MNIST MLP on the 10,000 test images:
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

Modules: :mod:`.config` (steps, timeouts, arguments, the plan), :mod:`.runner` (running a
step in its own process), :mod:`.env` (the ``env`` step), :mod:`.sanitize` (the
compute-sanitizer driver and its per-kernel cases), :mod:`.steps` (the other steps, each in
its own process), :mod:`.report` (judging output and results, the summary) and
:mod:`.orchestrate` (:func:`main`: the steps in order, results written as they come).
"""

# ruff: noqa: E501  (the docstring's GPU session command is long on purpose)
from __future__ import annotations

from bnnlib.gpucheck.config import GPU_TEST_MODULES, STEPS, plan
from bnnlib.gpucheck.orchestrate import main
from bnnlib.gpucheck.report import pytest_counts, sanitizer_report
from bnnlib.gpucheck.runner import run_step_process
from bnnlib.gpucheck.sanitize import SANITIZE_CASES

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
