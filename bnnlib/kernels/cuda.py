"""The paper's GPU kernels (Section 4) called from Python with PyCUDA, on torch tensors.

The CUDA C sources live in ``cuda/*.cu`` (``bnnlib/_cuda`` in a wheel, see
:func:`source_dir`): the baseline tiled float matmul, the paper's XNOR-popcount kernel
(32-bit words, same 16 x 16 tiling, a . b = k - 2 popcount(a XOR b)), our faster 64-bit
popcount kernel and, on sm_80 and newer, a kernel on the 1-bit tensor-core MMA; plus
packing and threshold kernels. PyCUDA compiles each file once per process (and caches the
binary on disk); tensors are passed by device pointer, never copied to the host.

Context: PyCUDA works in torch's CUDA context. We let torch create the device's primary
context, then retain and push that same primary context in PyCUDA (what
``pycuda.autoprimaryctx`` does, for torch's current device instead of device 0).

Stream: PyCUDA cannot launch on a stream it did not create, so kernels run on the legacy
default stream. torch's default stream *is* the legacy default stream, so in the usual
case the kernels are ordered with torch's work with no synchronization at all. When the
caller has made another torch stream current, we synchronize that stream before the
launch and the device after it, so ordering stays correct (at the cost of overlap).

Nothing touches the GPU at import. Without a GPU, PyCUDA (``pip install 'bnnlib[cuda]'``)
or nvcc, :func:`available` is False, :func:`reason` says what is missing and every kernel
call raises one RuntimeError with that reason.

Layouts follow :mod:`bnnlib.kernels`: a ±1 matrix is packed along its length-k rows
(bit 1 = +1, LSB-first, zero padding), products are ``A_pm1 @ B_pm1.T`` from A (M, W)
and B (N, W), exact int32.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import math
import os
import shutil
from pathlib import Path

import torch

from bnnlib.kernels.packing import check_pm1, num_words, words_as_int64

__all__ = [
    "available",
    "close",
    "reason",
    "require",
    "source_dir",
    "KERNELS",
    "baseline_gemm",
    "xnor_gemm",
    "xnor_gemm_fast",
    "pack",
    "pack_cols",
    "popcount_rows",
    "threshold_pack",
]

# kernel name -> (source file, PyCUDA argument format: P pointer, i int32)
KERNELS: dict[str, tuple[str, str]] = {
    "baseline_gemm": ("baseline_gemm.cu", "PPPiii"),
    "xnor_gemm": ("xnor_gemm.cu", "PPPiiii"),
    "xnor_gemm_fast": ("xnor_gemm.cu", "PPPiiii"),
    "xnor_gemm_tc": ("xnor_gemm.cu", "PPPPPiiii"),
    "popcount_rows64": ("xnor_gemm.cu", "PPii"),
    "pack_rows32": ("pack.cu", "PPiii"),
    "pack_rows64": ("pack.cu", "PPiii"),
    "pack_cols32": ("pack.cu", "PPiii"),
    "pack_cols64": ("pack.cu", "PPiii"),
    "threshold_pack64": ("pack.cu", "PPPPiii"),
}

_INSTALL_HINT = "pip install 'bnnlib[cuda]'"
_MAX_GRID_Y = 65535
_INT32_MAX = 2**31 - 1


def source_dir() -> Path:
    """The folder with the .cu files: ``bnnlib/_cuda`` (wheel) or ``<repo>/cuda`` (editable)."""
    package = Path(__file__).resolve().parent.parent
    candidates = [package / "_cuda", package.parent / "cuda"]
    for folder in candidates:
        if (folder / "xnor_gemm.cu").is_file():
            return folder
    raise FileNotFoundError(
        "bnnlib's CUDA sources (xnor_gemm.cu, ...) are missing; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and Path(root, "bin", "nvcc").is_file():
            return str(Path(root, "bin", "nvcc"))
    return None


@functools.cache
def _problems() -> str:
    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("pycuda") is None:
        problems.append(f"PyCUDA is not installed ({_INSTALL_HINT})")
    if nvcc_path() is None:
        problems.append("nvcc, the CUDA compiler PyCUDA runs, is not on PATH (set CUDA_HOME)")
    try:
        source_dir()
    except FileNotFoundError as e:
        problems.append(str(e))
    return "; ".join(problems)


def reason() -> str:
    """Why the GPU kernels cannot run here ("" when :func:`available`)."""
    return _problems()


def available() -> bool:
    """True when a CUDA GPU, PyCUDA, nvcc and the kernel sources are all present."""
    return _problems() == ""


def require() -> None:
    """Raise one RuntimeError naming what is missing, unless :func:`available`."""
    if not available():
        raise RuntimeError(f"bnnlib.kernels.cuda GPU kernels are unavailable: {reason()}")


class _PyCudaBackend:
    """Compiles cuda/*.cu with PyCUDA in torch's primary context and launches kernels."""

    def __init__(self) -> None:
        require()
        torch.cuda.init()
        self.device = torch.device("cuda", torch.cuda.current_device())
        torch.empty(1, device=self.device)  # torch creates the primary context first
        self.capability = torch.cuda.get_device_capability(self.device)
        import pycuda.driver as drv

        drv.init()
        self._drv = drv
        self._ctx = drv.Device(self.device.index).retain_primary_context()
        self._ctx.push()
        self._closed = False
        self._modules: dict = {}
        self._functions: dict = {}
        atexit.register(self._close)

    def _close(self) -> None:
        """Unload the modules and pop every PyCUDA context this thread pushed.

        PyCUDA aborts the process at exit (code 134, "context stack was not empty upon
        module cleanup") when a context is left on its stack; torch's own context handling
        is not on that stack, so popping until PyCUDA refuses leaves torch untouched.
        """
        if self._closed:
            return
        self._closed = True
        self._functions.clear()
        self._modules.clear()  # unload while our context is still current
        try:
            for _ in range(16):  # normally one push; bounded in case of a foreign push
                self._drv.Context.pop()
        except Exception:  # PyCUDA's stack is empty (or, at shutdown, CUDA is gone)
            pass
        self._ctx = None
        try:
            from pycuda.tools import clear_context_caches

            clear_context_caches()
        except Exception:
            pass

    def function(self, name: str):
        if name not in self._functions:
            file, fmt = KERNELS[name]
            if file not in self._modules:
                from pycuda.compiler import SourceModule

                source = (source_dir() / file).read_text()
                self._modules[file] = SourceModule(
                    source, nvcc=nvcc_path(), options=["-O3"], no_extern_c=True
                )
            fn = self._modules[file].get_function(name)
            fn.prepare(fmt)
            self._functions[name] = fn
        return self._functions[name]

    def launch(self, name: str, grid: tuple, block: tuple, *args) -> None:
        fn = self.function(name)
        stream = torch.cuda.current_stream(self.device)
        side_stream = stream.cuda_stream != 0
        if side_stream:  # see the module docstring: we launch on the legacy default stream
            stream.synchronize()
        fn.prepared_call(grid, block, *args)
        if side_stream:
            self._drv.Context.synchronize()


_BACKEND = None
BACKEND_OVERRIDE = None  # tests put a host-emulation backend here


def close() -> None:
    """Release the PyCUDA side (modules, the pushed context); the next kernel call reopens it.

    Runs by itself at exit; call it explicitly before ``os._exit`` or from a long-lived
    process that is done with the kernels. torch's CUDA context is left as it is.
    """
    global _BACKEND
    if _BACKEND is not None:
        _BACKEND._close()
        _BACKEND = None


def backend():
    global _BACKEND
    if BACKEND_OVERRIDE is not None:
        return BACKEND_OVERRIDE
    if _BACKEND is None:
        _BACKEND = _PyCudaBackend()
    return _BACKEND


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _operand(t, name: str, dtypes: tuple, ndim: int, device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}; the kernels need it on {device} (.to())")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} must be {names}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel() > _INT32_MAX:
        raise ValueError(f"{name} has {t.numel()} entries; the kernels index with int32")
    return t.contiguous()


def _words32(t: torch.Tensor) -> torch.Tensor:
    """int64 words -> int32 words (R, 2 W): the same little-endian bytes, LSB-first."""
    return t.view(torch.int32) if t.shape[1] else t.new_empty((t.shape[0], 0), dtype=torch.int32)


def _check_k(k: int, a: torch.Tensor, b: torch.Tensor, word_bits: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= _INT32_MAX // 2:
        raise ValueError(f"k (the number of ±1 entries per row) must be an int >= 0, got {k!r}")
    words = num_words(k, word_bits)
    for name, t in (("a_packed", a), ("b_packed", b)):
        if t.shape[1] != words:
            raise ValueError(
                f"{name} has {t.shape[1]} words per row but k={k} needs ceil(k/{word_bits}) = "
                f"{words} ({word_bits}-bit words)"
            )
    return k


def baseline_gemm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The paper's baseline kernel: float32 C (M, N) = A (M, K) @ B (K, N), 16 x 16 tiles."""
    be = backend()
    A = _operand(A, "A", (torch.float32,), 2, be.device)
    B = _operand(B, "B", (torch.float32,), 2, be.device)
    (M, K), (K2, N) = A.shape, B.shape
    if K != K2:
        raise ValueError(f"baseline_gemm: A is {tuple(A.shape)} and B is {tuple(B.shape)}")
    if _cdiv(M, 16) > _MAX_GRID_Y:
        raise ValueError(f"baseline_gemm supports M <= {16 * _MAX_GRID_Y}, got {M}")
    alloc = torch.empty if K else torch.zeros  # K = 0: empty sums, the kernel writes nothing
    C = alloc((M, N), dtype=torch.float32, device=be.device)
    if M and N and K:
        grid = (_cdiv(N, 16), _cdiv(M, 16), 1)
        be.launch(
            "baseline_gemm", grid, (16, 16, 1), A.data_ptr(), B.data_ptr(), C.data_ptr(), M, N, K
        )
    return C


def xnor_gemm(a_packed: torch.Tensor, b_packed: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's XNOR kernel: int32 (M, N) = A_pm1 @ B_pm1.T from 32-bit words.

    ``a_packed`` (M, W) and ``b_packed`` (N, W) are int32 words, W = ceil(k / 32), from
    :func:`pack` (``word_bits=32``) or ``bnnlib.kernels.pack(x, word_bits=32)``. 64-bit
    words (int64, W = ceil(k / 64)) are accepted too and read as twice as many 32-bit
    words (free: same bytes; a trailing all-zero word adds nothing).
    """
    be = backend()
    a = _operand(a_packed, "a_packed", (torch.int32, torch.int64), 2, be.device)
    b = _operand(b_packed, "b_packed", (torch.int32, torch.int64), 2, be.device)
    if b.dtype != a.dtype:
        raise ValueError(f"a_packed is {a.dtype} but b_packed is {b.dtype}; pack both alike")
    k = _check_k(k, a, b, 32 if a.dtype == torch.int32 else 64)
    if a.dtype == torch.int64:
        a, b = _words32(a), _words32(b)
    M, N, W = a.shape[0], b.shape[0], a.shape[1]
    if _cdiv(M, 16) > _MAX_GRID_Y:
        raise ValueError(f"xnor_gemm supports M <= {16 * _MAX_GRID_Y}, got {M}")
    C = torch.empty((M, N), dtype=torch.int32, device=be.device)
    if M and N:
        grid = (_cdiv(N, 16), _cdiv(M, 16), 1)
        be.launch(
            "xnor_gemm", grid, (16, 16, 1), a.data_ptr(), b.data_ptr(), C.data_ptr(), M, N, W, k
        )
    return C


def popcount_rows(words: torch.Tensor) -> torch.Tensor:
    """int32 (R,): the number of 1 bits in each row of an (R, W) tensor of int64 words."""
    be = backend()
    w = words_as_int64(_operand(words, "words", (torch.int64, torch.int32), 2, be.device))
    R, W = w.shape
    out = torch.empty(R, dtype=torch.int32, device=be.device)
    if R:
        be.launch(
            "popcount_rows64",
            (_cdiv(R, 256), 1, 1),
            (256, 1, 1),
            w.data_ptr(),
            out.data_ptr(),
            R,
            W,
        )
    return out


def _method(method: str, be) -> str:
    if method not in ("auto", "popc", "tensor_core"):
        raise ValueError(f"method must be 'auto', 'popc' or 'tensor_core', got {method!r}")
    has_tc = tuple(be.capability) >= (8, 0)
    if method == "tensor_core" and not has_tc:
        raise RuntimeError(
            f"the 1-bit tensor-core MMA needs compute capability 8.0+, this GPU is {be.capability}"
        )
    if method == "auto":
        return "tensor_core" if has_tc else "popc"
    return method


def xnor_gemm_fast(
    a_packed: torch.Tensor,
    b_packed: torch.Tensor,
    k: int,
    method: str = "auto",
    popcounts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Our faster XNOR kernels: int32 (M, N) = A_pm1 @ B_pm1.T from 64-bit words.

    ``a_packed`` (M, W), ``b_packed`` (N, W): int64 words, W = ceil(k / 64) (int32 words
    from ``word_bits=32`` packing are converted). ``method``: "popc" (register-tiled XOR +
    __popcll), "tensor_core" (1-bit MMA with AND-popc, sm_80+), "auto" (tensor cores when
    the GPU has them). The tensor-core kernel also needs the 1-bit counts of every row of
    both operands (two :func:`popcount_rows` launches); ``popcounts=(pa, pb)`` passes them
    precomputed (int32 (M,) and (N,), e.g. for weights that do not change, or to time the
    product alone).
    """
    be = backend()
    a = _operand(a_packed, "a_packed", (torch.int64, torch.int32), 2, be.device)
    b = _operand(b_packed, "b_packed", (torch.int64, torch.int32), 2, be.device)
    if b.dtype != a.dtype:
        raise ValueError(f"a_packed is {a.dtype} but b_packed is {b.dtype}; pack both alike")
    k = _check_k(k, a, b, 32 if a.dtype == torch.int32 else 64)
    a, b = words_as_int64(a), words_as_int64(b)
    M, N, W = a.shape[0], b.shape[0], a.shape[1]
    if _cdiv(M, 64) > _MAX_GRID_Y:
        raise ValueError(f"xnor_gemm_fast supports M <= {64 * _MAX_GRID_Y}, got {M}")
    C = torch.empty((M, N), dtype=torch.int32, device=be.device)
    if not (M and N):
        return C
    grid = (_cdiv(N, 64), _cdiv(M, 64), 1)
    if _method(method, be) == "popc":
        be.launch(
            "xnor_gemm_fast",
            grid,
            (16, 16, 1),
            a.data_ptr(),
            b.data_ptr(),
            C.data_ptr(),
            M,
            N,
            W,
            k,
        )
    else:
        if popcounts is None:
            pa, pb = popcount_rows(a), popcount_rows(b)
        else:
            pa = _operand(popcounts[0], "popcounts[0]", (torch.int32,), 1, be.device)
            pb = _operand(popcounts[1], "popcounts[1]", (torch.int32,), 1, be.device)
            if pa.shape[0] != M or pb.shape[0] != N:
                raise ValueError(
                    f"popcounts need {M} and {N} entries, got {pa.shape[0]} and {pb.shape[0]}"
                )
        args = (a.data_ptr(), b.data_ptr(), pa.data_ptr(), pb.data_ptr(), C.data_ptr(), M, N, W, k)
        be.launch("xnor_gemm_tc", grid, (128, 1, 1), *args)
    return C


def _word_dtype(word_bits: int) -> torch.dtype:
    if word_bits not in (32, 64):
        raise ValueError(f"word_bits must be 64 or 32, got {word_bits!r}")
    return torch.int64 if word_bits == 64 else torch.int32


def _as_float32(x, be) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.device != be.device:
        raise ValueError(f"x is on {x.device}; the kernels need it on {be.device} (.to())")
    if x.dim() == 0:
        raise ValueError("pack needs at least one dimension to pack along, got a scalar")
    return x.float()  # exact for ±1 in any float or integer dtype


def pack(x: torch.Tensor, dim: int = -1, word_bits: int = 64, check: bool = True) -> torch.Tensor:
    """Pack a ±1 tensor along ``dim`` on the GPU; same result as :func:`bnnlib.kernels.pack`.

    The kernel stores Sign(x) (bit 1 where x >= 0). ``check=True`` first verifies that
    every entry is ±1 (one extra pass and a synchronization) and raises ValueError if not.
    """
    be = backend()
    dtype = _word_dtype(word_bits)
    x = _as_float32(x, be)
    if check:
        check_pm1(x, "bnnlib.kernels.cuda.pack")
    xm = x.movedim(dim, -1)
    lead, k = xm.shape[:-1], xm.shape[-1]
    rows = xm.reshape(math.prod(lead), k).contiguous()
    R, W = rows.shape[0], num_words(k, word_bits)
    if rows.numel() > _INT32_MAX:
        raise ValueError(f"x has {rows.numel()} entries; the kernels index with int32")
    out = torch.empty((R, W), dtype=dtype, device=be.device)
    if R and W:
        grid = (_cdiv(W, 8), min(R, _MAX_GRID_Y), 1)
        name = f"pack_rows{word_bits}"
        be.launch(name, grid, (32, 8, 1), rows.data_ptr(), out.data_ptr(), R, k, W)
    return out.reshape(*lead, W).movedim(-1, dim).contiguous()


def pack_cols(x: torch.Tensor, word_bits: int = 64, check: bool = True) -> torch.Tensor:
    """Pack the columns of x (K, N) along K: (N, ceil(K / word_bits)) words = pack(x.T).

    This is the paper's packing of the right operand B of A @ B, written as rows, the
    layout of ``b_packed``; no transposed copy of x is made.
    """
    be = backend()
    dtype = _word_dtype(word_bits)
    x = _operand(_as_float32(x, be), "x", (torch.float32,), 2, be.device)
    if check:
        check_pm1(x, "bnnlib.kernels.cuda.pack_cols")
    K, N = x.shape
    W = num_words(K, word_bits)
    out = torch.empty((N, W), dtype=dtype, device=be.device)
    if N and W:
        grid = (_cdiv(N, 256), min(W, _MAX_GRID_Y), 1)
        be.launch(f"pack_cols{word_bits}", grid, (256, 1, 1), x.data_ptr(), out.data_ptr(), K, N, W)
    return out


def threshold_pack(
    acc: torch.Tensor, threshold: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """Batch norm + Sign as integer thresholds, packed: int64 (M, ceil(N / 64)) words.

    Bit j of row i is 1 (+1) where acc[i, j] >= threshold[j] for direction[j] >= 0
    (gamma > 0), or acc[i, j] <= threshold[j] for direction[j] < 0 (gamma < 0).
    ``acc`` (M, N) int32, ``threshold`` and ``direction`` (N,) int32. Same as
    :func:`bnnlib.kernels.threshold_pack`.
    """
    be = backend()
    acc = _operand(acc, "acc", (torch.int32,), 2, be.device)
    thr = _operand(threshold, "threshold", (torch.int32,), 1, be.device)
    sgn = _operand(direction, "direction", (torch.int32,), 1, be.device)
    M, N = acc.shape
    if thr.shape[0] != N or sgn.shape[0] != N:
        raise ValueError(
            f"threshold and direction need {N} entries (acc is {tuple(acc.shape)}), got "
            f"{thr.shape[0]} and {sgn.shape[0]}"
        )
    W = num_words(N, 64)
    out = torch.empty((M, W), dtype=torch.int64, device=be.device)
    if M and W:
        grid = (_cdiv(W, 8), min(M, _MAX_GRID_Y), 1)
        args = (acc.data_ptr(), thr.data_ptr(), sgn.data_ptr(), out.data_ptr(), M, N, W)
        be.launch("threshold_pack64", grid, (32, 8, 1), *args)
    return out
