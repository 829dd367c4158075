"""Batch norm + Sign folded into one integer threshold per neuron (paper Sections 2.6 and 4).

A hidden layer's pre-activation ``s = x_b . w_b`` is an integer (its inputs and weights are
+/-1). Batch norm in evaluation is the affine map ``y = a (s - mu) + beta`` with
``a = gamma / sqrt(var + eps)`` (the shift-based batch norm: ``a = AP2(gamma) AP2(1 / sqrt(var +
eps))``), and Sign(y) = +1 iff ``y >= 0``::

    gamma > 0:  y >= 0  iff  s >= T,   T = mu - beta sqrt(var + eps) / gamma
    gamma < 0:  y >= 0  iff  s <= T    (the comparison flips)
    gamma = 0:  y = beta, a constant bit

Since s is an integer, the bit is ``(s >= T_int) XOR flip`` with an integer T_int. T_int is not
computed from the formula above (rounding could move it by one at a tie): it is the smallest
integer at which the decision of the float simulation (:mod:`bnnlib.inference.simulate`)
changes, found by bisection on the very float64 expression the simulation evaluates. ``y`` is
monotone in s and so is its rounded float64 value, so the packed bits equal the simulation's
bits for every integer s.

The file stores (T_int, flip); the kernels of both back ends take the same decision as
(threshold, direction) (:func:`kernel_thresholds`, :func:`bnnlib.kernels.threshold_pack`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bnnlib.nn.shift import ShiftBatchNormBase, ap2

__all__ = ["Affine", "fold_batchnorm", "integer_thresholds", "kernel_thresholds", "EXACT_F32"]

#: Integers up to this magnitude, and sums of them, are exact in float32.
EXACT_F32 = 2**24


@dataclass
class Affine:
    """Evaluation-mode batch norm as ``y = a * (s - mu) + beta`` per channel (float64)."""

    a: torch.Tensor
    mu: torch.Tensor
    beta: torch.Tensor

    def __call__(self, s: torch.Tensor, dim: int = -1) -> torch.Tensor:
        shape = [1] * s.dim()
        shape[dim] = -1
        a, mu, beta = (t.view(shape) for t in (self.a, self.mu, self.beta))
        return a * (s - mu) + beta  # three rounded float64 operations, the simulation's order


def fold_batchnorm(layer: nn.Module, bn: nn.Module | None) -> Affine:
    """The affine map of ``bn`` in evaluation (and the layer's bias folded into mu), float64.

    Standard batch norm: ``a = gamma / sqrt(var + eps)``. Shift-based batch norm (paper
    Algorithm 3): ``a = AP2(gamma) * AP2(1 / sqrt(var + eps))`` computed as the module does.
    """
    out = layer.weight.shape[0]
    if bn is None:
        a = torch.ones(out, dtype=torch.float64)
        mu = torch.zeros(out, dtype=torch.float64)
        beta = torch.zeros(out, dtype=torch.float64)
    else:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
        with torch.no_grad():
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
            beta_t = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            if isinstance(bn, ShiftBatchNormBase):
                a = (ap2(gamma) * ap2(torch.rsqrt(bn.running_var + bn.eps))).double()
            else:
                a = gamma.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            mu = bn.running_mean.double().clone()
            beta = beta_t.double().clone()
    if getattr(layer, "bias", None) is not None:
        mu = mu - layer.bias.detach().double()
    return Affine(a.detach().cpu(), mu.cpu(), beta.cpu())


def integer_thresholds(aff: Affine, bound: int, divisor: float = 1.0):
    """Per-neuron integer threshold T and flip so that Sign(BN(v)) = +1 iff (v >= T) XOR flip.

    ``v`` ranges over the integers in [-bound, bound]; the decision is the float64 one of the
    simulation, ``a * (v / divisor - mu) + beta >= 0`` (``divisor`` = 255 for the first layer,
    whose pre-activation is t / 255). With flip = (a < 0), ``e(v) = decision XOR flip`` is
    non-decreasing in v, and T is the smallest v in [-bound, bound] with e(v) true, or
    bound + 1 if none (bisection on the exact expression; no rounding argument needed).
    """
    flip = aff.a < 0

    def e(v: torch.Tensor) -> torch.Tensor:
        x = v.double()
        if divisor != 1.0:
            x = x / divisor
        return (aff(x) >= 0) ^ flip

    lo = torch.full_like(aff.a, -bound - 1, dtype=torch.int64)  # e(lo) taken as false
    hi = torch.full_like(aff.a, bound + 1, dtype=torch.int64)  # e(hi) taken as true
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        up = e(mid)
        active = hi - lo > 1
        hi = torch.where(active & up, mid, hi)
        lo = torch.where(active & ~up, mid, lo)
    return hi, flip


def kernel_thresholds(T: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, flip) as the kernels' int32 (threshold, direction): the same bit for every integer s.

    ``(s >= T) XOR flip`` is ``s >= T`` (direction +1) or, flipped, ``s < T``, i.e.
    ``s <= T - 1`` (direction -1), the compare of :func:`bnnlib.kernels.threshold_pack` and
    :func:`bnnlib.kernels.cuda.threshold_pack`.
    """
    f = flip.to(torch.int64)
    return (T.to(torch.int64) - f).to(torch.int32), (1 - 2 * f).to(torch.int32)
