"""Shift-based batch normalization, paper Section 1.4 and Algorithm 3.

Multiplications by arbitrary reals are replaced by multiplications by powers of
two, i.e. bit shifts. The rounding is AP2, the approximate power of two::

    AP2(x) = Sign(x) * 2^round(log2|x|),  AP2(0) = 0

so AP2(x) / x lies in [2^-1/2, 2^1/2] for every x != 0.

Shift-based batch norm (Algorithm 3), over a mini-batch of x::

    C(x)    = x - mean(x)                        centred input
    apx_var = mean(C(x) * AP2(C(x)))             variance, one shift per element
    x_hat   = C(x) * AP2(1 / sqrt(apx_var + eps))
    y       = AP2(gamma) * x_hat + beta

Each AP2 stays in the forward pass; its gradient is passed straight through
(identity), so gamma and beta train as in ordinary batch norm. In evaluation
the running mean and variance are used exactly as ``nn.BatchNorm*d`` does
(momentum, eps, unbiased running variance), with AP2 on the inverse
standard deviation and on gamma. The error bound: each of apx_var (through its
square root), AP2(1/std) and AP2(gamma) is off by at most a factor 2^(1/4),
2^(1/2), 2^(1/2), so y - beta is within a factor 2^(5/4) of batch norm's.

The Torch7 code of the paper uses this by default; the Theano code (0.96% on
MNIST) uses ordinary batch norm.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ap2", "ap2_ste", "ShiftBatchNorm1d", "ShiftBatchNorm2d"]


def ap2(x: torch.Tensor) -> torch.Tensor:
    """Approximate power of two: Sign(x) * 2^round(log2|x|), and 0 where x == 0."""
    mag = torch.exp2(torch.round(torch.log2(x.abs())))
    return torch.where(x == 0, torch.zeros_like(x), torch.sign(x) * mag)


class _AP2STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return ap2(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


def ap2_ste(x: torch.Tensor) -> torch.Tensor:
    """AP2 in the forward pass, identity in the backward pass."""
    return _AP2STE.apply(x)


class ShiftBatchNormBase(nn.modules.batchnorm._BatchNorm):
    """Algorithm 3 on top of ``_BatchNorm``'s parameters and running buffers."""

    def __init__(self, num_features: int, eps: float = 1e-4, momentum: float = 0.1, **kw):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, **kw)

    def _shape(self, x: torch.Tensor) -> list[int]:
        return [1, -1] + [1] * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = self._shape(x)
        if self.training or not self.track_running_stats:
            mean = x.mean(dims)
            centred = x - mean.view(shape)
            apx_var = (centred * ap2_ste(centred)).mean(dims)
            if self.training and self.track_running_stats:
                self._update_running(mean, apx_var, x.numel() // x.shape[1])
        else:
            centred = x - self.running_mean.view(shape)
            apx_var = self.running_var
        inv_std = ap2_ste(torch.rsqrt(apx_var + self.eps))
        x_hat = centred * inv_std.view(shape)
        return ap2_ste(self.weight).view(shape) * x_hat + self.bias.view(shape)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        # Same semantics as nn.BatchNorm: exponential average, unbiased variance.
        self.num_batches_tracked += 1
        m = self.momentum
        if m is None:  # momentum=None: cumulative average, as nn.BatchNorm
            m = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(n - 1, 1)
        self.running_mean.lerp_(mean.detach(), m)
        self.running_var.lerp_(unbiased.detach(), m)


class ShiftBatchNorm1d(ShiftBatchNormBase):
    """Drop-in for ``nn.BatchNorm1d`` (inputs (N, C) or (N, C, L)) using shifts, Algorithm 3."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3):
            raise ValueError(
                f"ShiftBatchNorm1d expects 2-D or 3-D input, got shape {tuple(x.shape)}"
            )


class ShiftBatchNorm2d(ShiftBatchNormBase):
    """Drop-in for ``nn.BatchNorm2d`` (inputs (N, C, H, W)) using shifts, Algorithm 3."""

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"ShiftBatchNorm2d expects 4-D input, got shape {tuple(x.shape)}")
