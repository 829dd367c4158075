"""The CUDA kernels without a GPU: they compile with nvcc, and they compute right.

1. Every cuda/*.cu compiles with ``nvcc --cubin`` for sm_75, sm_80 and sm_90 (skipped,
   with the reason, where nvcc is missing).
2. The kernels run on the CPU under tests/host_emulation.h (one std::thread per CUDA
   thread, g++ -std=c++20), driven through bnnlib.kernels.cuda's own Python wrappers (shape
   checks, grid geometry, argument order), and must equal the independent CPU references
   (bnnlib.kernels, torch float64 matmul) exactly. The 1-bit tensor-core MMA is emulated
   from its documented fragment layout, so this checks our indexing around it; the
   hardware itself is checked by tests/test_kernels_gpu.py on a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import bnnlib
from bnnlib import kernels as K
from bnnlib.kernels import cuda as bc

CUDA_DIR = bc.source_dir()
EMULATION_DIR = Path(__file__).parent  # host_emulation.h: test-only, not shipped with the kernels
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ["sm_75", "sm_80", "sm_90"]


def _nvcc():
    return bc.nvcc_path()


@functools.cache
def _nvcc_archs() -> frozenset:
    res = subprocess.run([_nvcc(), "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    return frozenset(res.stdout.split()) if res.returncode == 0 else frozenset(ARCHS)


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"baseline_gemm.cu", "xnor_gemm.cu", "pack.cu"} <= names
    assert {file for file, _ in bc.KERNELS.values()} <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    if arch not in _nvcc_archs():
        pytest.skip(f"this nvcc cannot compile for {arch}")
    cmd = [nvcc, "--cubin", f"-arch={arch}", "-O3", "-o", str(tmp_path / "k.cubin"), str(source)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    # Warnings fail the test, except an nvcc notice that an architecture is deprecated.
    warnings = [line for line in res.stderr.splitlines() if "warning" in line.lower()]
    assert not [w for w in warnings if "deprecated" not in w.lower()], res.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_every_kernel_is_defined():
    for name, (file, _) in bc.KERNELS.items():
        assert f'extern "C" __global__ void {name}(' in (CUDA_DIR / file).read_text(), name


# --------------------------------------------------------------------------------------
# Host emulation


_CTYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int}
_CTYPE_NAMES = {"P": "void*", "i": "int"}


def _wrapper_source(file: str) -> str:
    lines = ['#include "host_emulation.h"', f'#include "{file}"']
    for name, (f, fmt) in bc.KERNELS.items():
        if f != file:
            continue
        params = ", ".join(f"{_CTYPE_NAMES[c]} a{i}" for i, c in enumerate(fmt))
        args = ", ".join(f"a{i}" for i in range(len(fmt)))
        lines.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, {params}) "
            f"{{ bnn_launch({{gx, gy, gz}}, {{bx, by, bz}}, {name}, {args}); }}"
        )
    return "\n".join(lines) + "\n"


class EmulatedBackend:
    """bnnlib.kernels.cuda's backend interface, launching the kernels on the CPU."""

    device = torch.device("cpu")
    capability = (8, 0)

    def __init__(self, libs: dict):
        self.libs = libs
        self.launched: list[str] = []

    def launch(self, name, grid, block, *args):
        file, fmt = bc.KERNELS[name]
        fn = getattr(self.libs[file], f"emu_{name}")
        fn.argtypes = [ctypes.c_uint] * 6 + [_CTYPES[c] for c in fmt]
        fn.restype = None
        self.launched.append(name)
        fn(*grid, *block, *args)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: the host emulation of the CUDA kernels needs a C++20 compiler")
    out = tmp_path_factory.mktemp("emu")
    jobs = {}
    for file in sorted({f for f, _ in bc.KERNELS.values()}):  # compile the files in parallel
        src = out / f"{Path(file).stem}_emu.cpp"
        src.write_text(_wrapper_source(file))
        lib = out / f"{Path(file).stem}_emu.so"
        cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC"]
        cmd += [f"-I{EMULATION_DIR}", f"-I{CUDA_DIR}"]
        cmd += ["-x", "c++", str(src), "-o", str(lib)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        jobs[file] = (cmd, proc, lib)
    libs = {}
    for file, (cmd, proc, lib) in jobs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0 and "barrier" in err and "No such file" in err:
            pytest.skip(f"{cxx} lacks the C++20 header <barrier>: {err[:200]}")
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{err}"
        libs[file] = ctypes.CDLL(str(lib))
    backend = EmulatedBackend(libs)
    saved = bc.BACKEND_OVERRIDE
    bc.BACKEND_OVERRIDE = backend
    yield backend
    bc.BACKEND_OVERRIDE = saved


def _pm1(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return bnnlib.sign(torch.randn(*shape, generator=g))


# (M, N, k): odd sizes around the tiles (16 rows / 16 words of the paper kernel, 64 rows
# / 16 words of the fast kernel, 64 rows / 8 words of the tensor-core kernel)
SHAPES = [(1, 1, 1), (3, 70, 65), (17, 33, 31), (70, 66, 600), (65, 9, 1100)]


@pytest.mark.parametrize("M,N,k", SHAPES)
def test_emulated_xnor_kernels_equal_reference(emulated, M, N, k):
    a, b = _pm1(M, k, seed=k), _pm1(N, k, seed=k + 1)
    ref = (a.double() @ b.double().T).to(torch.int32)
    paper = bc.xnor_gemm(K.pack(a, word_bits=32), K.pack(b, word_bits=32), k)
    assert torch.equal(paper, ref)
    pa, pb = K.pack(a), K.pack(b)
    assert torch.equal(bc.xnor_gemm(pa, pb, k), ref)  # 64-bit words read as 32-bit ones
    assert torch.equal(bc.xnor_gemm_fast(pa, pb, k, method="popc"), ref)
    assert torch.equal(bc.xnor_gemm_fast(pa, pb, k, method="tensor_core"), ref)
    assert emulated.launched[-1] == "xnor_gemm_tc"


def test_emulated_baseline_gemm(emulated):
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(19, 37, generator=g), torch.randn(37, 23, generator=g)
    torch.testing.assert_close(bc.baseline_gemm(A, B), A @ B, rtol=1e-5, atol=1e-5)
    a, b = _pm1(18, 40, seed=1), _pm1(40, 17, seed=2)
    assert torch.equal(bc.baseline_gemm(a, b), a @ b)  # ±1: integers, exact


@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("R,k", [(1, 1), (5, 63), (3, 64), (9, 130), (2, 700)])
def test_emulated_pack_equals_cpu_pack(emulated, word_bits, R, k):
    x = _pm1(R, k, seed=R * k)
    expected = K.pack(x, word_bits=word_bits)
    assert torch.equal(bc.pack(x, word_bits=word_bits), expected)
    assert torch.equal(bc.pack(x.T.contiguous(), dim=0, word_bits=word_bits), expected.T)
    assert torch.equal(bc.pack_cols(x.T.contiguous(), word_bits=word_bits), expected)


def test_emulated_pack_rejects_non_pm1(emulated):
    with pytest.raises(ValueError, match="not ±1"):
        bc.pack(torch.tensor([[1.0, 0.0, -1.0]]))


def test_emulated_popcount_and_threshold(emulated):
    w = K.pack(_pm1(7, 150, seed=3))
    assert torch.equal(bc.popcount_rows(w), K.popcount_rows(w).to(torch.int32))
    g = torch.Generator().manual_seed(4)
    M, N = 5, 97
    acc = torch.randint(-20, 21, (M, N), generator=g, dtype=torch.int32)
    thr = torch.randint(-5, 6, (N,), generator=g, dtype=torch.int32)
    direction = torch.where(torch.rand(N, generator=g) < 0.5, -1, 1).to(torch.int32)
    acc[0, :] = thr  # equality: Sign(0) = +1 in both directions
    got = bc.threshold_pack(acc, thr, direction)
    assert torch.equal(got, K.threshold_pack(acc, thr, direction))
    assert torch.equal(K.unpack(got, N)[0], torch.ones(N))
