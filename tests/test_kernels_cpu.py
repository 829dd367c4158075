"""bnnlib.kernels: packing and the XNOR-popcount products, exact against independent references.

References: torch float64 matmul of the ±1 matrices (exact for these integer sums), a
naive Python loop over entries and Python's own bit counting for tiny sizes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnnlib
from bnnlib import kernels as K
from bnnlib.kernels import cuda as bc
from bnnlib.kernels import packing as packing_module
from bnnlib.kernels import xnor as xnor_module

FAST = settings(max_examples=30, deadline=None)


def pm1(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bnnlib.sign(torch.randn(*shape, generator=g))


def ref_gemm(a, b):
    return (a.double() @ b.double().T).to(torch.int32)


@pytest.fixture(params=["serial", "parallel"])
def kernel_threads(request, monkeypatch):
    """Run a test with the single-thread kernels, then with the multithreaded ones
    (small products normally take the single-thread path)."""
    limit = 1 << 62 if request.param == "serial" else 0
    monkeypatch.setattr(xnor_module, "SERIAL_WORDS", limit)
    monkeypatch.setattr(packing_module, "SERIAL_ENTRIES", limit)
    return request.param


# ---------------------------------------------------------------- packing


def test_pack_bit_order_lsb_first_bit1_is_plus1():
    assert K.pack(torch.tensor([1.0, -1.0, 1.0, 1.0])).tolist() == [0b1101]
    x = -torch.ones(64)
    x[63] = 1.0
    assert K.pack(x).tolist() == [-(2**63)]  # bit 63 set: the int64 is negative
    x = -torch.ones(65)
    x[64] = 1.0
    assert K.pack(x).tolist() == [0, 1]  # entry 64 -> word 1, bit 0


def test_pack_matches_python_bit_building(kernel_threads):
    x = pm1(3, 150, seed=1)
    words = K.pack(x)
    assert words.shape == (3, 3) and words.dtype == torch.int64
    for r in range(3):
        for w in range(3):
            expected = sum(1 << e for e in range(64) if 64 * w + e < 150 and x[r, 64 * w + e] > 0)
            got = int(words[r, w]) & (2**64 - 1)
            assert got == expected


@FAST
@given(
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=2),
    k=st.integers(0, 200),
    word_bits=st.sampled_from([32, 64]),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_round_trip(shape, k, word_bits, seed):
    x = pm1(*shape, k, seed=seed)
    words = K.pack(x, word_bits=word_bits)
    assert words.shape == (*shape, -(-k // word_bits))
    assert words.dtype == (torch.int64 if word_bits == 64 else torch.int32)
    assert torch.equal(K.unpack(words, k), x)


def test_pack_along_other_dims_and_dtypes():
    x = pm1(70, 3, 5, seed=2)
    assert torch.equal(K.pack(x, dim=0), K.pack(x.movedim(0, -1)).movedim(-1, 0))
    assert torch.equal(K.unpack(K.pack(x, dim=0), 70, dim=0), x)
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int64):
        assert torch.equal(K.pack(x.to(dtype), dim=1), K.pack(x, dim=1))


def test_pack32_is_pack64_bytes():
    x = pm1(4, 97, seed=3)
    p64, p32 = K.pack(x), K.pack(x, word_bits=32)
    assert torch.equal(p64.view(torch.int32)[:, : p32.shape[1]], p32)


def test_padding_bits_are_zero():
    words = K.pack(torch.ones(2, 70))
    assert int(words[0, 1]) == (1 << 6) - 1


def test_pack_rejects_non_pm1_with_count_and_fix(kernel_threads):
    x = torch.ones(3, 4)
    x[0, 1] = 0.0
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"2 of 12 entries are not ±1.*bnnlib\.sign"):
        K.pack(x)
    with pytest.raises(ValueError, match="not ±1"):
        K.pack(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="scalar"):
        K.pack(torch.tensor(1.0))
    with pytest.raises(ValueError, match="word_bits"):
        K.pack(torch.ones(3), word_bits=16)


@pytest.mark.parametrize(
    "signed, unsigned",
    [(torch.int8, torch.uint8), (torch.int16, torch.uint16), (torch.int32, torch.uint32),
     (torch.int64, torch.uint64)],
)  # fmt: skip
def test_pack_refuses_unsigned_minus_one(signed, unsigned, kernel_threads):
    """An unsigned tensor cannot hold -1: a ±1 tensor cast to uint8 stores -1 as 255, which
    used to pack as +1 (bit 1) without a word."""
    x = pm1(3, 100)
    wrapped = x.to(signed).view(unsigned)  # -1 as 255, 65535, ...
    with pytest.raises(ValueError, match=r"unsigned.*cannot hold -1.*150 of 300|unsigned"):
        K.pack(wrapped)
    ones = torch.ones(2, 70).to(signed).view(unsigned)  # all +1: still exactly ±1
    assert torch.equal(K.pack(ones), K.pack(torch.ones(2, 70)))
    assert torch.equal(K.pack(x.to(signed)), K.pack(x))  # signed integers are fine
    for fn in (K.pack, K.pack_bits):  # complex: .float() would drop the imaginary part
        with pytest.raises(ValueError, match="real values, got torch.complex64"):
            fn(torch.tensor([1 + 1j, -1 + 0j]))


def test_pack_bits_and_unpack_errors():
    assert K.pack_bits(torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)).tolist() == [0b10110]
    with pytest.raises(ValueError, match="words"):
        K.unpack(torch.zeros(2, 3, dtype=torch.int64), 64)
    with pytest.raises(ValueError, match="int64"):
        K.unpack(torch.zeros(2, 1), 3)


# ---------------------------------------------------------------- xnor_gemm


@pytest.mark.parametrize("k", [1, 31, 32, 33, 63, 64, 65, 127, 128, 200, 1000])
@pytest.mark.parametrize("M,N", [(1, 1), (1, 9), (8, 1), (5, 7), (16, 33)])
def test_xnor_gemm_exact(M, N, k):
    a, b = pm1(M, k, seed=k), pm1(N, k, seed=k + 7)
    got = K.xnor_gemm(K.pack(a), K.pack(b), k)
    assert got.dtype == torch.int32 and got.shape == (M, N)
    assert torch.equal(got, ref_gemm(a, b))


@FAST
@given(
    M=st.integers(0, 9),
    N=st.integers(0, 9),
    k=st.integers(0, 300),
    word_bits=st.sampled_from([32, 64]),
    seed=st.integers(0, 2**16),
)
def test_xnor_gemm_property(M, N, k, word_bits, seed):
    a, b = pm1(M, k, seed=seed), pm1(N, k, seed=seed + 1)
    got = K.xnor_gemm(K.pack(a, word_bits=word_bits), K.pack(b, word_bits=word_bits), k)
    assert torch.equal(got, ref_gemm(a, b))


def test_xnor_gemm_naive_loop():
    a, b = pm1(3, 70, seed=5), pm1(4, 70, seed=6)
    pa, pb = K.pack(a), K.pack(b)
    got = K.xnor_gemm(pa, pb, 70)
    for i in range(3):
        for j in range(4):
            assert got[i, j] == sum(int(a[i, e]) * int(b[j, e]) for e in range(70))
            d = sum(
                bin((int(x) ^ int(y)) & (2**64 - 1)).count("1")
                for x, y in zip(pa[i], pb[j], strict=True)
            )
            assert got[i, j] == 70 - 2 * d


def test_xnor_gemm_cache_blocks_and_odd_edges(monkeypatch, kernel_threads):
    # A tiny cache budget forces several B blocks, the last of odd size.
    monkeypatch.setattr(xnor_module, "L2_BYTES", 1024)
    assert xnor_module.block_rows(16) == 8
    a, b = pm1(31, 1000, seed=8), pm1(29, 1000, seed=9)
    assert torch.equal(K.xnor_gemm(K.pack(a), K.pack(b), 1000), ref_gemm(a, b))
    assert torch.equal(K.xnor_gemm(K.pack(b), K.pack(a), 1000), ref_gemm(b, a))


def test_xnor_gemm_empty_and_k0():
    assert K.xnor_gemm(K.pack(pm1(0, 10)), K.pack(pm1(4, 10)), 10).shape == (0, 4)
    assert K.xnor_gemm(K.pack(pm1(3, 10)), K.pack(pm1(0, 10)), 10).shape == (3, 0)
    zeros = K.xnor_gemm(K.pack(pm1(3, 0)), K.pack(pm1(2, 0)), 0)
    assert torch.equal(zeros, torch.zeros(3, 2, dtype=torch.int32))  # empty dot products


def test_xnor_gemm_refuses_bits_beyond_k():
    """pack() leaves the bits beyond k at 0, so a set bit there means the operands are longer
    than k (or were not made by pack): refused instead of silently dropped."""
    a, b = pm1(3, 70, seed=10), pm1(2, 70, seed=11)
    pa = K.pack(a)
    pa[1, 1] |= 1 << 40  # beyond k = 70
    with pytest.raises(ValueError, match=r"a_packed.*bits beyond k=70.*row 1"):
        K.xnor_gemm(pa, K.pack(b), 70)
    with pytest.raises(ValueError, match=r"b_packed.*beyond k=70"):
        K.xnor_gemm(K.pack(b), pa, 70)


def test_xnor_gemm_refuses_k_that_disagrees_with_the_operands():
    """k = 70 for rows of true length 100 fits the same 2 words: it used to give a silently
    wrong product; the +1 entries at 70..99 show up as set bits beyond k."""
    a, b = pm1(3, 100, seed=1), pm1(2, 100, seed=2)
    pa, pb = K.pack(a), K.pack(b)
    assert torch.equal(K.xnor_gemm(pa, pb, 100), ref_gemm(a, b))
    with pytest.raises(ValueError, match=r"bits beyond k=70.*longer than k"):
        K.xnor_gemm(pa, pb, 70)
    for k in (129, 64):  # more words than the rows hold / a whole word of padding
        with pytest.raises(ValueError, match="words per row"):
            K.xnor_gemm(pa, pb, k)
    a90, b90 = a[:, :90], b[:, :90]  # 32-bit words too: 90 and 70 both need 3
    with pytest.raises(ValueError, match=r"bits beyond k=70"):
        K.xnor_gemm(K.pack(a90, word_bits=32), K.pack(b90, word_bits=32), 70)


def test_xnor_gemm_bad_operands():
    pa, pb = K.pack(pm1(3, 70)), K.pack(pm1(2, 70))
    with pytest.raises(ValueError, match="words per row"):
        K.xnor_gemm(pa, pb, 200)
    with pytest.raises(ValueError, match="k"):
        K.xnor_gemm(pa, pb, -1)
    with pytest.raises(ValueError, match="packed words"):
        K.xnor_gemm(pa.float(), pb, 70)
    with pytest.raises(ValueError, match="2-D"):
        K.xnor_gemm(pa[0], pb, 70)


# ---------------------------------------------------------------- first layer, helpers


@pytest.mark.parametrize("k", [1, 63, 64, 100, 784])
def test_bitplane_dot_exact(k, kernel_threads):
    g = torch.Generator().manual_seed(k)
    x = torch.randint(0, 256, (6, k), generator=g, dtype=torch.uint8)
    x[0] = 255
    x[1] = 0
    w = pm1(11, k, seed=k + 1)
    got = K.bitplane_dot(x, K.pack(w), k)
    assert got.dtype == torch.int32
    assert torch.equal(got, (x.double() @ w.double().T).to(torch.int32))


def test_bitplane_dot_errors_and_empty():
    w = K.pack(pm1(3, 10))
    with pytest.raises(ValueError, match="uint8"):
        K.bitplane_dot(torch.zeros(2, 10), w, 10)
    with pytest.raises(ValueError, match="shape"):
        K.bitplane_dot(torch.zeros(2, 9, dtype=torch.uint8), w, 10)
    assert K.bitplane_dot(torch.zeros(0, 10, dtype=torch.uint8), w, 10).shape == (0, 3)


def test_popcount_rows():
    w = K.pack(pm1(5, 130, seed=12))
    expected = [sum(bin(int(v) & (2**64 - 1)).count("1") for v in row) for row in w]
    assert K.popcount_rows(w).tolist() == expected


def test_threshold_pack():
    acc = torch.tensor([[3, -2, 0, 5], [0, 0, 1, -1]], dtype=torch.int32)
    thr = torch.tensor([3, -2, 1, 0], dtype=torch.int32)
    direction = torch.tensor([1, -1, 1, -1], dtype=torch.int32)
    # row 0: 3>=3 yes, -2<=-2 yes, 0>=1 no, 5<=0 no ; row 1: 0>=3 no, 0<=-2 no, 1>=1 yes, -1<=0 yes
    expected = torch.tensor([[1, 1, -1, -1], [-1, -1, 1, 1]], dtype=torch.float32)
    assert torch.equal(K.unpack(K.threshold_pack(acc, thr, direction), 4), expected)


# ---------------------------------------------------------------- bnnlib.kernels.cuda without a GPU


def test_cuda_module_reports_missing_gpu_clearly():
    if bc.available():
        pytest.skip("a GPU with PyCUDA is present: tests/test_kernels_gpu.py covers it")
    assert bc.reason()
    with pytest.raises(RuntimeError, match="unavailable") as err:
        bc.xnor_gemm_fast(K.pack(pm1(2, 8)), K.pack(pm1(2, 8)), 8)
    assert bc.reason() in str(err.value)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in bc.reason()
    import importlib.util

    if importlib.util.find_spec("pycuda") is None:
        assert "bnnlib[cuda]" in bc.reason()


def test_cuda_sources_are_found():
    assert (bc.source_dir() / "xnor_gemm.cu").is_file()


# ---------------------------------------------------------------- numba's on-disk cache

_USE_KERNELS = (
    "import bnnlib, torch; from bnnlib import kernels as K; "
    "a = bnnlib.sign(torch.randn(3, 70)); "
    "print(bnnlib.__file__); print(K.xnor_gemm(K.pack(a), K.pack(a), 70).diagonal().tolist())"
)


def _blocked(path: Path) -> Path:
    """A path nothing can be created under, even by root: a plain file where a folder goes."""
    path.write_text("a file, not a folder")
    return path


@pytest.mark.slow
def test_import_and_kernels_without_a_writable_cache_directory(tmp_path):
    """numba's cache=True needs a writable folder: the package's __pycache__ (numba's first
    choice, next to the source), else ~/.cache/numba ($XDG_CACHE_HOME). With neither, importing
    bnnlib used to fail ("cannot cache function ...: no locator available"). Here both are
    blocked; bnnlib falls back to a private folder under the temp dir, else to no cache."""
    site = tmp_path / "site"
    repo_pkg = Path(bnnlib.__file__).resolve().parent
    shutil.copytree(repo_pkg, site / "bnnlib", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [site / "bnnlib", *(p for p in (site / "bnnlib").rglob("*") if p.is_dir())]:
        _blocked(folder / "__pycache__")
    for folder in sorted((site / "bnnlib").rglob("*"), reverse=True):
        if folder.is_dir():  # and read-only, for a non-root user
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    home = _blocked(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), PYTHONPATH=str(site))
    env.update(PYTHONDONTWRITEBYTECODE="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    writable_tmp = tmp_path / "tmp"
    writable_tmp.mkdir()
    try:
        for tmp in (writable_tmp, _blocked(tmp_path / "no_tmp")):
            run = subprocess.run(
                [sys.executable, "-c", _USE_KERNELS],
                env={**env, "TMPDIR": str(tmp)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, run.stderr[-3000:]
            where, result = run.stdout.strip().splitlines()[-2:]
            assert where.startswith(str(site)) and result == "[70, 70, 70]"
        assert any(writable_tmp.rglob("*.nbi"))  # the fallback folder was used as the cache
    finally:
        for folder in (site / "bnnlib", *(site / "bnnlib").rglob("*")):
            if folder.is_dir():
                folder.chmod(stat.S_IRWXU)


# ---------------------------------------------------------------- the baseline kernel


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (67, 70, 4096), (5, 300, 33), (256, 256, 256)])
def test_baseline_gemm_is_exact_on_pm1(M, N, K, kernel_threads):
    """±1 products are integers below 2^24: the float32 kernel must give torch's exactly."""
    a, b = pm1(M, K, seed=M), pm1(N, K, seed=N + 1)
    out = K_baseline(a, b)
    assert out.dtype == torch.float32 and out.shape == (M, N)
    assert torch.equal(out, (a.double() @ b.double().T).float())


def test_baseline_gemm_on_real_inputs_agrees_with_torch_to_float32_rounding(kernel_threads):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(33, 300, generator=g), torch.randn(45, 300, generator=g)
    ref = a.double() @ b.double().T
    out = K_baseline(a, b.double())  # float64 operands are converted to float32
    # 300 float32 products summed in another order: error ~ sqrt(300) * 2^-24 * |a||b|
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-4)
    assert not torch.equal(out, torch.zeros_like(out))


def test_baseline_gemm_empty_and_errors():
    assert K_baseline(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)
    assert torch.equal(K_baseline(torch.zeros(2, 0), torch.zeros(3, 0)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="a @ b.T"):
        K_baseline(torch.zeros(2, 5), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="floating point"):
        K_baseline(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        K_baseline(torch.zeros(2, 5, 1), torch.zeros(3, 5))


def K_baseline(a, b):
    return K.baseline_gemm(a, b)
