"""The back ends of :class:`~bnnlib.inference.PackedNet`: one interface, two devices.

:class:`Backend` is the one interface the runtime calls (:mod:`bnnlib.inference.runtime`);
:class:`CpuBackend` implements it with the numba kernels of :mod:`bnnlib.kernels`,
:class:`CudaBackend` with the kernels of :mod:`bnnlib.kernels.cuda`. Both kernel modules take
the same arguments (packed int64 words, ``xnor_gemm(a, b, k)``, ``threshold_pack(acc,
threshold, direction)``), and the thresholds are converted to (threshold, direction) once, at
load, for every device. :func:`backend` picks one by device name.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch.nn import functional as F

from bnnlib import kernels
from bnnlib.inference.fold import EXACT_F32
from bnnlib.inference.layer import PackedLayer
from bnnlib.inference.spec import PoolSpec

__all__ = ["Backend", "CpuBackend", "CudaBackend", "backend"]


class Backend:
    """The operations :class:`PackedNet` runs on one device.

    ``kernels`` is a module with ``pack(x, dim)``, ``threshold_pack(acc, threshold,
    direction)`` and an XNOR product ``gemm(a, b, k)`` with the conventions of
    :mod:`bnnlib.kernels` (int64 words, LSB first, exact int32 results), which
    :mod:`bnnlib.kernels.cuda` shares. Subclasses give the first layer's products and the pooling.
    """

    device = "cpu"
    kernels: ModuleType

    def gemm(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        return self.kernels.xnor_gemm(a, b, k)

    def get(self, lay: PackedLayer, t: torch.Tensor) -> torch.Tensor:
        """``t``, one of the tensors of ``lay``, on this device: copied once, then kept in
        ``lay.cache`` (keyed by the tensor's identity, which ``lay`` keeps alive)."""
        key = (self.device, id(t))
        on_device = lay.cache.get(key)
        if on_device is None:
            on_device = t.to(self.device)
            lay.cache[key] = on_device
        return on_device

    def threshold_pack(self, lay: PackedLayer, s: torch.Tensor) -> torch.Tensor:
        """Sign(BN(s)) as packed words along the last dim (integer compares only)."""
        lead, n = s.shape[:-1], s.shape[-1]
        acc = s.reshape(-1, n).to(torch.int32).contiguous()
        thr, direction = self.get(lay, lay.output.threshold), self.get(lay, lay.output.direction)
        return self.kernels.threshold_pack(acc, thr, direction).reshape(*lead, -1)

    def xnor(self, lay: PackedLayer, a: torch.Tensor) -> torch.Tensor:
        """Exact integer products of packed activations (rows of ``a``) with the weights."""
        return self.gemm(a.contiguous(), self.get(lay, lay.weight), lay.spec.layout.packed_bits)

    def real_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        """Integer W_b . x of uint8 inputs (rows of ``cols``) by a float matmul."""
        raise NotImplementedError

    def bitplane_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        """Integer W_b . x of uint8 inputs on the paper's 8 bit planes with XNOR-popcount."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor, p: PoolSpec) -> torch.Tensor:
        """Max-pooling of integers (N, C, H, W) with the layer's pool spec."""
        raise NotImplementedError


class CpuBackend(Backend):
    """The CPU back end: the numba kernels of :mod:`bnnlib.kernels`."""

    device = "cpu"
    kernels = kernels

    def real_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        # integer operands, partial sums < 2^24 in float32 (else float64): exact
        dt = torch.float32 if 255 * lay.spec.layout.k < EXACT_F32 else torch.float64
        return (cols.to(dt) @ self.get(lay, lay.input.wb).to(dt).T).round().to(torch.int32)

    def bitplane_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        return self.kernels.bitplane_dot(cols.contiguous(), lay.weight, lay.spec.layout.k)

    def pool(self, x: torch.Tensor, p: PoolSpec) -> torch.Tensor:
        return F.max_pool2d(x, p.kernel, p.stride, p.padding)


class CudaBackend(Backend):
    """The CUDA back end: the kernels of :mod:`bnnlib.kernels.cuda` on CUDA tensors.

    ``kernel="fast"`` uses :func:`bnnlib.kernels.cuda.xnor_gemm_fast` (64-bit popcount or 1-bit
    tensor cores), ``"paper"`` the paper's 32-bit XNOR kernel.
    """

    device = "cuda"

    def __init__(self, mod: ModuleType, kernel: str = "fast"):
        if kernel not in ("fast", "paper"):
            raise ValueError(f"kernel must be 'fast' or 'paper', got {kernel!r}")
        self.kernels = mod
        self._gemm = mod.xnor_gemm_fast if kernel == "fast" else mod.xnor_gemm

    def gemm(self, a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
        return self._gemm(a, b, k)

    def real_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        # float64: exact whatever cuBLAS's float32 settings (TF32) are.
        w = self.get(lay, lay.input.wb).double()
        return (cols.double() @ w.T).round().to(torch.int32)

    def bitplane_dot(self, lay: PackedLayer, cols: torch.Tensor) -> torch.Tensor:
        # Bit plane n as the +/-1 vector p_n = 2 x^n - 1:  x^n . w = (p_n . w + sum w) / 2.
        k, w = lay.spec.layout.k, self.get(lay, lay.weight)
        acc = torch.zeros(cols.shape[0], w.shape[0], dtype=torch.int64, device=self.device)
        for n in range(8):
            plane = ((cols >> n) & 1).float() * 2 - 1
            words = self.kernels.pack(plane, dim=-1, check=False)
            acc += self.gemm(words, w, k).long() << n
        wsum = self.get(lay, lay.input.wb).sum(1).round().long()
        return ((acc + 255 * wsum) // 2).to(torch.int32)

    def pool(self, x: torch.Tensor, p: PoolSpec) -> torch.Tensor:
        # CUDA max-pooling has no integer kernel; float64 holds these integers exactly.
        return F.max_pool2d(x.double(), p.kernel, p.stride, p.padding).to(x.dtype)


def backend(device: str = "cpu", kernel: str = "fast") -> Backend:
    """The back end for ``device`` ("cpu" or "cuda"); RuntimeError naming what is missing."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return CpuBackend()
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        from bnnlib.kernels import cuda as bcuda
    except ImportError as e:
        raise RuntimeError(
            f"device='cuda' needs bnnlib.kernels.cuda, which failed to import: {e}"
        ) from e
    if not bcuda.available():
        raise RuntimeError(f"device='cuda' is not available: {bcuda.reason()}")
    return CudaBackend(bcuda, kernel)
