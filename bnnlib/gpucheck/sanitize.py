"""The compute-sanitizer driver of ``python -m bnnlib.gpucheck`` (``--step sanitize-driver``):
every kernel of :data:`bnnlib.kernels.cuda.KERNELS` launched alone on small odd shapes, between
BEGIN/END markers, each checked exactly against the CPU reference."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bnnlib.bench.kernels import random_pm1
from bnnlib.gpucheck.config import BEGIN_TAG, END_TAG


def _case_baseline(bc, K, dev) -> bool:
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
    ok = True
    for M, N, k in _xnor_shapes():
        a, b = random_pm1(M, k, k), random_pm1(N, k, k + 1)
        ref = (a.double() @ b.double().T).to(torch.int32)
        pa, pb = K.pack(a, word_bits=32).to(dev), K.pack(b, word_bits=32).to(dev)
        ok &= bool(torch.equal(bc.xnor_gemm(pa, pb, k).cpu(), ref))
    return ok


def _case_xnor_fast(method: str):
    def case(bc, K, dev) -> bool:
        ok = True
        for M, N, k in _xnor_shapes():
            a, b = random_pm1(M, k, k), random_pm1(N, k, k + 1)
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
    ok = True
    for R, k in ((1, 1), (7, 150), (300, 65)):
        w = K.pack(random_pm1(R, k, R + k))
        ok &= bool(torch.equal(bc.popcount_rows(w.to(dev)).cpu(), K.popcount_rows(w).int()))
    return ok


def _case_pack(word_bits: int, cols: bool):
    def case(bc, K, dev) -> bool:
        ok = True
        for R, k in ((1, 1), (5, 63), (3, 64), (9, 130), (33, 700)):
            x = random_pm1(R, k, R * k)
            want = K.pack(x, word_bits=word_bits)
            if cols:
                got = bc.pack_cols(x.T.contiguous().to(dev), word_bits=word_bits, check=False)
            else:
                got = bc.pack(x.to(dev), word_bits=word_bits, check=False)
            ok &= bool(torch.equal(got.cpu(), want))
        return ok

    return case


def _case_threshold(bc, K, dev) -> bool:
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


def step_sanitize_driver() -> dict:
    """Launch every kernel once per case (markers around each), checked exactly on the CPU."""
    from bnnlib import kernels as K
    from bnnlib.kernels import cuda as bc

    bc.require()
    dev = torch.device("cuda")
    be = bc.backend()
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
