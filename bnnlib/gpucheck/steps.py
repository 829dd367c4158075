"""The steps of ``python -m bnnlib.gpucheck`` that run in their own process (``--step NAME``):
compile every kernel, the sanitizer's driver, the two benchmarks. Each prints its result as
one JSON line (:data:`RESULT_TAG`) last, and writes its figures as soon as they exist."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

from bnnlib.gpucheck.config import RESULT_TAG, write_json
from bnnlib.gpucheck.report import gemm_ok, mlp_ok
from bnnlib.gpucheck.sanitize import step_sanitize_driver


def _step_pycuda() -> dict:
    """Compile every kernel (PyCUDA caches the binaries on disk), one exact launch."""
    import torch

    from bnnlib import kernels as K
    from bnnlib.kernels import cuda as bc

    res: dict = {"reason": bc.reason()}
    bc.require()
    be = bc.backend()
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


def _step_bench_gemm(args) -> dict:
    from bnnlib.bench.common import machine_info, plain
    from bnnlib.bench.kernels import bench_gpu_gemm

    path = Path(args.out) / "bench_gemm.json"
    meta = machine_info(["(bnnlib.gpucheck bench_gemm)"])
    meta["command"] = shlex.join(sys.argv)

    def write(res: dict) -> None:
        write_json(path, {"meta": meta, "gemm": plain(res)})

    res = bench_gpu_gemm(args.n or 8192, args.repeats or 5, on_result=write, log=print)
    return {"ok": gemm_ok(res), "file": str(path)}


def _step_bench_mlp(args) -> dict:
    from bnnlib.bench.common import machine_info, plain
    from bnnlib.bench.gpu import bench_gpu_mlp

    path = Path(args.out) / "bench_mlp.json"
    meta = machine_info(["(bnnlib.gpucheck bench_mlp)"])
    meta["command"] = shlex.join(sys.argv)

    def write(res: dict) -> None:
        write_json(path, {"meta": meta, "mnist_mlp": plain(res)})

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
    return {"ok": mlp_ok(res), "file": str(path)}


def worker(step: str, args) -> int:
    """``--step NAME``: one step in this process; prints its result as the last line."""
    fns = {
        "pycuda": lambda: _step_pycuda(),
        "sanitize-driver": lambda: step_sanitize_driver(),
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
            from bnnlib.kernels import cuda as bc

            bc.close()  # no PyCUDA context left on its stack at exit (abort, code 134)
    print(RESULT_TAG + json.dumps(res, default=str), flush=True)
    return 0 if res.get("ok") else 1
