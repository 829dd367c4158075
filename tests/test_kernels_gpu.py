"""bnnlib.cuda on a real GPU: every kernel equals the CPU reference exactly on ±1 data.

Skipped without a CUDA GPU, PyCUDA (``pip install 'bnnlib[cuda]'``) or nvcc. The same
kernels run on the CPU under host emulation in tests/test_cuda_compile.py.
"""

from __future__ import annotations

import pytest
import torch

import bnnlib
import bnnlib.cuda as bc
from bnnlib import kernels as K

pytestmark = pytest.mark.gpu

pytest.importorskip("pycuda", reason="PyCUDA is not installed (pip install 'bnnlib[cuda]')")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)
if not bc.available():
    pytest.skip(f"bnnlib.cuda unavailable: {bc.reason()}", allow_module_level=True)

DEV = torch.device("cuda")
HAS_TC = torch.cuda.get_device_capability() >= (8, 0)
METHODS = ["popc"] + (["tensor_core"] if HAS_TC else [])


def pm1(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bnnlib.sign(torch.randn(*shape, generator=g))


def cpu_ref(a, b, k):
    return K.xnor_gemm(K.pack(a), K.pack(b), k)


SHAPES = [(1, 1, 1), (1, 300, 64), (17, 33, 31), (70, 66, 600), (65, 9, 1100), (200, 130, 4099)]


@pytest.mark.parametrize("M,N,k", SHAPES)
def test_xnor_kernels_equal_cpu(M, N, k):
    a, b = pm1(M, k, seed=k), pm1(N, k, seed=k + 1)
    ref = cpu_ref(a, b, k)
    assert torch.equal(ref, (a.double() @ b.double().T).to(torch.int32))
    ag, bg = a.to(DEV), b.to(DEV)
    paper = bc.xnor_gemm(bc.pack(ag, word_bits=32), bc.pack(bg, word_bits=32), k)
    assert torch.equal(paper.cpu(), ref)
    assert torch.equal(bc.xnor_gemm(bc.pack(ag), bc.pack(bg), k).cpu(), ref)
    for method in METHODS:
        fast = bc.xnor_gemm_fast(bc.pack(ag), bc.pack(bg), k, method=method)
        assert torch.equal(fast.cpu(), ref), method


def test_xnor_large_exact_against_cublas():
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = pm1(1024, 4096, seed=1).to(DEV), pm1(1000, 4096, seed=2).to(DEV)
    ref = (a @ b.T).to(torch.int32)  # float32 sums of ±1 below 2^24 are exact
    assert torch.equal(bc.xnor_gemm(bc.pack(a, word_bits=32), bc.pack(b, word_bits=32), 4096), ref)
    for method in METHODS:
        assert torch.equal(bc.xnor_gemm_fast(bc.pack(a), bc.pack(b), 4096, method=method), ref)


def test_baseline_gemm():
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    A = torch.randn(100, 77, generator=g).to(DEV)
    B = torch.randn(77, 50, generator=g).to(DEV)
    torch.testing.assert_close(bc.baseline_gemm(A, B), A @ B, rtol=1e-4, atol=1e-4)
    a, b = pm1(33, 257, seed=3).to(DEV), pm1(257, 18, seed=4).to(DEV)
    assert torch.equal(bc.baseline_gemm(a, b), a @ b)


@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("R,k", [(1, 1), (5, 63), (3, 64), (9, 130), (70000, 40)])
def test_pack_equals_cpu(word_bits, R, k):
    x = pm1(R, k, seed=R + k)
    expected = K.pack(x, word_bits=word_bits)
    assert torch.equal(bc.pack(x.to(DEV), word_bits=word_bits).cpu(), expected)
    assert torch.equal(bc.pack_cols(x.T.contiguous().to(DEV), word_bits=word_bits).cpu(), expected)


def test_pack_rejects_non_pm1():
    with pytest.raises(ValueError, match="not ±1"):
        bc.pack(torch.tensor([[1.0, 0.5]], device=DEV))


def test_popcount_and_threshold_pack():
    w = K.pack(pm1(7, 150, seed=5))
    assert torch.equal(bc.popcount_rows(w.to(DEV)).cpu(), K.popcount_rows(w).to(torch.int32))
    g = torch.Generator().manual_seed(6)
    M, N = 300, 1000
    acc = torch.randint(-50, 51, (M, N), generator=g, dtype=torch.int32)
    thr = torch.randint(-10, 11, (N,), generator=g, dtype=torch.int32)
    direction = torch.where(torch.rand(N, generator=g) < 0.5, -1, 1).to(torch.int32)
    got = bc.threshold_pack(acc.to(DEV), thr.to(DEV), direction.to(DEV))
    assert torch.equal(got.cpu(), K.threshold_pack(acc, thr, direction))


def test_side_stream_is_ordered():
    a, b = pm1(256, 1000, seed=7), pm1(128, 1000, seed=8)
    ref = cpu_ref(a, b, 1000)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ag, bg = a.to(DEV, non_blocking=True), b.to(DEV, non_blocking=True)
        out = bc.xnor_gemm_fast(bc.pack(ag), bc.pack(bg), 1000) + 0
    s.synchronize()
    assert torch.equal(out.cpu(), ref)


def test_wrong_device_and_dtype_are_clear_errors():
    with pytest.raises(ValueError, match="on cpu"):
        bc.xnor_gemm_fast(K.pack(pm1(2, 8)), K.pack(pm1(2, 8)).to(DEV), 8)
    with pytest.raises(ValueError, match="int32 or torch.int64"):
        bc.xnor_gemm(pm1(2, 8).to(DEV), pm1(2, 8).to(DEV), 8)
