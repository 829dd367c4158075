"""The bf16 and int8 baselines: what a user of this CPU would deploy instead of a packed BNN.

A float32 network is not the only alternative on a current CPU: bf16 (AVX512_BF16, AMX) and
int8 (AVX512_VNNI, AMX) matrix products run several times faster, and on +/-1 operands they are
exact where their accumulators are wide enough:

* **int8** -- ``torch._int_mm`` (int8 x int8 -> int32, oneDNN or MKL's s8s8s32 gemm): exact for
  any +/-1 product (|sum| <= k < 2^31). The first layer's 8-bit pixels x in 0..255 do not fit
  int8, so it takes ``x - 128`` and adds ``128 sum(W_b)`` back (exact integers);
* **bf16** -- ``torch.matmul`` on bfloat16 (oneDNN ``brg_matmul``): products of +/-1 are exact
  and the accumulation is float32, but the *output* is bfloat16 (8 significant bits): sums of
  magnitude above 256 are rounded (a sum of an even number k of +/-1 is even, so exact up to
  512 for even k). torch offers no float32 output for a bf16 matmul on the CPU, so the bf16
  figures say how many results were exact;
* **int8, dynamic quantization** -- ``torch.ao.quantization.quantize_dynamic`` of the deployed
  float32 network (fbgemm / x86 engine: activations quantized per call), what a torch user
  reaches for first; the deployed network uses Hardtanh, so its predictions are not the BNN's;
* **int8, static quantization** -- :func:`deployed_int8_static`: dynamic quantization leaves
  convolutions in float, so for a ConvNet the int8 network a user deploys is quantized
  statically (batch norm folded into the layer before it where they touch, activations
  calibrated on sample images; fbgemm / x86 engine, AVX2 and AVX-512 kernels). Again not the
  BNN's predictions: a timing baseline.

:class:`ExactMLP` is the BNN itself on these products (int8, or bf16 where |sums| stay
exact), with the packed net's integer compares between layers: its predictions are compared
with the float simulation like the packed path's. :func:`blas_info` names the libraries and the
instruction set they dispatched to (oneDNN's verbose log of a small product, run in a
subprocess).

Where a CPU has no hardware path for bf16 or int8 products (AVX2 without AVX512_BF16 / VNNI /
AMX), torch runs them in reference loops, tens to hundreds of times slower than float32: no
user of that CPU would deploy them, and timing them at batch 10,000 takes hours.
:func:`slow_products` measures that on a small probe, and the benchmarks leave those products
out, saying why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys

import torch
from torch import nn

from bnnlib.hardware import cpu_flags

__all__ = [
    "ExactMLP",
    "LOWP_FLAGS",
    "blas_info",
    "deployed_bfloat16",
    "deployed_int8_dynamic",
    "deployed_int8_static",
    "gemm_int8",
    "gemm_bfloat16",
    "slow_products",
    "SLOW_FACTOR",
]

#: The CPU flags that decide the bf16 / int8 baselines' speed.
LOWP_FLAGS = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")

_PROBE = """
import torch
a = torch.ones(64, 256)
torch.matmul(a, a.T)
torch.matmul(a.bfloat16(), a.bfloat16().T)
torch._int_mm(a.to(torch.int8), a.to(torch.int8).T)
"""


def _onednn_kernels() -> dict[str, str]:
    """The oneDNN primitive (``impl:isa``) that ran a small float32, bf16 and int8 product,
    from ``ONEDNN_VERBOSE=1`` in a subprocess ({} when nothing was logged)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
        ).stdout
        found = {}
        for line in out.splitlines():
            f = line.split(",")
            if len(f) > 8 and f[2] == "primitive" and f[3] == "exec":
                kind = "int8" if "s8" in f[8] else "bf16" if "bf16" in f[8] else "float32"
                found.setdefault(kind, f"{f[5]} {f[6]}".strip())
        return found
    return {}


def blas_info(probe: bool = True) -> dict:
    """The libraries torch's products run on: the BLAS and oneDNN versions from
    ``torch.__config__.show()``, torch's CPU capability, the CPU's bf16 / int8 flags and, with
    ``probe``, the oneDNN kernels (and their ISA) of a small product of each dtype; products
    not logged by oneDNN went to the BLAS (MKL) or to torch's own kernels."""
    show = torch.__config__.show()

    def version(pattern: str) -> str | None:
        m = re.search(pattern, show)
        return m.group(1).strip() if m else None

    return {
        "blas": version(r"BLAS_INFO=(\w+)"),
        "mkl": version(r"Math Kernel Library Version ([^\n]+?) for"),
        "onednn": version(r"MKL-DNN (v[\d.]+)"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags_lowp": cpu_flags(LOWP_FLAGS),
        "onednn_kernels": _onednn_kernels() if probe else None,
    }


# --------------------------------------------------------------------------- gemm


def gemm_int8(a8: torch.Tensor, bt8: torch.Tensor) -> torch.Tensor:
    """int32 (M, N) = a8 @ bt8 for int8 a8 (M, K) and bt8 (K, N): exact."""
    return torch._int_mm(a8, bt8)


def gemm_bfloat16(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """bfloat16 (M, N) = a @ bt for bfloat16 operands (float32 accumulation, bf16 output)."""
    return torch.matmul(a, bt)


#: A bf16 or int8 product slower than float32 by more than this factor on the probe of
#: :func:`slow_products` has no hardware path here (on a Zen 3 EPYC, AVX2 only: bf16 took about
#: 200x and ``torch._int_mm`` about 80x float32's time for 100 x 2048 by 2048 x 2048).
SLOW_FACTOR = 4.0


def _best_s(fn, calls: int = 2) -> float:
    import time

    fn()  # warm-up
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def slow_products(factor: float = SLOW_FACTOR) -> dict[str, str]:
    """``{"bfloat16": why, "int8": why}`` for this module's bf16 / int8 products that took more
    than ``factor`` times float32's time on a probe (+-1 operands, 256 x 1024 by 1024 x 1024,
    this process's threads, the best of 2 calls after a warm-up); ``{}`` where both have a
    hardware path. Once per process."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2, (256, 1024), generator=g).float() * 2 - 1
    bt = torch.randint(0, 2, (1024, 1024), generator=g).float() * 2 - 1
    a16, bt16, a8, bt8 = a.bfloat16(), bt.bfloat16(), a.to(torch.int8), bt.to(torch.int8)
    t32 = _best_s(lambda: torch.matmul(a, bt))
    probes = {"bfloat16": lambda: gemm_bfloat16(a16, bt16), "int8": lambda: gemm_int8(a8, bt8)}
    flags = ", ".join(cpu_flags(LOWP_FLAGS)) or "none of " + ", ".join(LOWP_FLAGS)
    slow = {}
    for kind, fn in probes.items():
        ratio = _best_s(fn) / t32
        if ratio > factor:
            slow[kind] = (
                f"torch's {kind} product took {ratio:.0f}x float32's time on a 256 x 1024 x "
                f"1024 probe (CPU flags: {flags}): no hardware path on this CPU, so no user of "
                "it would deploy it; left out"
            )
    return slow


# --------------------------------------------------------------------------- networks


def deployed_bfloat16(deployed: nn.Module) -> nn.Module:
    """The deployed float32 network (:func:`~bnnlib.bench.common.deployed_float32`) in
    bfloat16: call it on bf16 inputs under ``inference_mode``."""
    import copy

    return copy.deepcopy(deployed).to(torch.bfloat16).eval()


def deployed_int8_dynamic(deployed: nn.Module) -> nn.Module:
    """The deployed float32 network with its linear layers dynamically quantized to int8
    (torch's default quantized engine: x86 / fbgemm on this CPU)."""
    import copy
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch deprecates its quantized tensors, not this path yet
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(deployed), {nn.Linear}, dtype=torch.qint8).eval()


def deployed_int8_static(deployed: nn.Sequential, calibration: torch.Tensor) -> nn.Module:
    """The deployed float32 network (an ``nn.Sequential``) statically quantized to int8 with
    torch's default engine (``torch.backends.quantized.engine``): each Conv2d / Linear with the
    batch norm right after it fused into one layer, the other batch norms quantized, the
    activations' ranges observed on ``calibration`` (float inputs as the network takes them).
    Call it on float inputs under ``inference_mode``: it quantizes them, runs int8 layers and
    returns float scores."""
    import copy
    import warnings

    from torch.ao import quantization as tq

    model = copy.deepcopy(deployed).eval()
    names = [name for name, _ in model.named_children()]
    kids = list(model.children())
    foldable = ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))
    pairs = [
        [names[i], names[i + 1]]
        for i in range(len(kids) - 1)
        if any(isinstance(kids[i], a) and isinstance(kids[i + 1], b) for a, b in foldable)
    ]
    with warnings.catch_warnings():  # torch deprecates its eager quantization, not removed yet
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if pairs:
            model = tq.fuse_modules(model, pairs)
        wrapped = nn.Sequential(tq.QuantStub(), model, tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig(torch.backends.quantized.engine)
        tq.prepare(wrapped, inplace=True)
        with torch.inference_mode():
            wrapped(calibration)
        tq.convert(wrapped, inplace=True)
    return wrapped.eval()


class ExactMLP:
    """A packed MLP (:class:`~bnnlib.inference.PackedNet`, linear layers) on torch's int8 or
    bf16 products, with the packed net's integer compares (batch norm + Sign) between layers
    and its float64 last batch norm: the same network, another kernel.

    ``dtype=torch.int8``: every product on ``torch._int_mm`` (exact). ``torch.bfloat16``: the
    hidden and last layers on a bf16 matmul (exact while |sums| <= 256, or 512 for even k: see
    the module docstring), the first layer in float32 (pixel sums reach 255 k).
    """

    def __init__(self, net, dtype: torch.dtype = torch.int8):
        from bnnlib import kernels
        from bnnlib.inference.spec import LinearSpec

        if dtype not in (torch.int8, torch.bfloat16):
            raise ValueError(f"dtype must be torch.int8 or torch.bfloat16, got {dtype}")
        if not all(isinstance(lay.spec, LinearSpec) for lay in net.layers):
            raise ValueError("ExactMLP runs MLPs (every layer linear); this net has others")
        self.net, self.dtype = net, dtype
        pm1 = [
            lay.input.wb if lay.spec.first else kernels.unpack(lay.weight, lay.spec.layout.k)
            for lay in net.layers
        ]
        first_dtype = torch.int8 if dtype == torch.int8 else torch.float32
        self.weights_t = [
            w.to(first_dtype if i == 0 else dtype).T.contiguous() for i, w in enumerate(pm1)
        ]
        self.wsum = net.layers[0].input.wsum.to(torch.int64)

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        """t = 2 W_b . x - 255 sum(W_b) (int64), the first layer's compare input."""
        w = self.weights_t[0]
        if self.dtype == torch.int8:
            dot = torch._int_mm((x.to(torch.int16) - 128).to(torch.int8), w).to(torch.int64)
            dot += 128 * self.wsum
        else:  # float32: integers below 2^24, exact
            dot = torch.matmul(x.to(torch.float32), w).to(torch.int64)
        return 2 * dot - 255 * self.wsum

    def _product(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.int8:
            return torch._int_mm(h, w)
        return torch.matmul(h, w).to(torch.int64)  # bf16 integers: compared exactly in int64

    @torch.inference_mode()
    def scores(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """float64 scores (N, classes) of uint8 images (N, ...)."""
        from bnnlib import kernels

        h = None
        layers = self.net.layers
        for i, (lay, w) in enumerate(zip(layers, self.weights_t, strict=True)):
            s = self._first(x_uint8.reshape(len(x_uint8), -1)) if i == 0 else self._product(h, w)
            if lay.spec.output == "scores":
                s64 = s.double() / 255.0 if i == 0 else s.double()
                return lay.output(s64)
            fire = kernels.fires(s, lay.output.threshold, lay.output.direction)
            one = torch.ones((), dtype=self.dtype)
            h = torch.where(fire, one, -one)
        raise AssertionError("unreachable: the last layer gives scores")

    def predict(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.scores(x_uint8).argmax(1)
