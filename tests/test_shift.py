"""Tests of bnnlib.nn.shift: AP2 and shift-based batch norm (paper Section 1.4, Algorithm 3).

Oracles: AP2 written out with Python's math module, ``nn.BatchNorm1d/2d`` for the
normalization (within AP2's error bound) and for the running statistics, and
Algorithm 3 written out for the exact values.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnnlib.nn.shift import ShiftBatchNorm1d, ShiftBatchNorm2d, ap2, ap2_ste

SQRT2 = math.sqrt(2.0)
BOUND = 2.0 ** (5 / 4)  # AP2(gamma) * AP2(1/std) * sqrt(apx_var) error: 2^(1/2+1/2+1/4)


def _naive_ap2(v: float) -> float:
    if v == 0:
        return 0.0
    return math.copysign(2.0 ** round(math.log2(abs(v))), v)


def _naive_ap2_tensor(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([_naive_ap2(v) for v in x.flatten().tolist()], dtype=x.dtype).view_as(x)


# --- AP2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ap2_exact_on_powers_of_two(dtype):
    k = torch.arange(-20, 21, dtype=dtype)
    p = torch.exp2(k)
    assert torch.equal(ap2(p), p)
    assert torch.equal(ap2(-p), -p)


def test_ap2_of_zero_is_zero():
    out = ap2(torch.tensor([0.0, -0.0, 1.0]))
    assert out.tolist() == [0.0, 0.0, 1.0]


def test_ap2_within_sqrt2_and_sign_preserved():
    g = torch.Generator().manual_seed(0)
    logs = torch.rand(20_000, generator=g, dtype=torch.float64) * 60 - 30  # |x| in [2^-30, 2^30]
    signs = torch.where(torch.rand(20_000, generator=g) < 0.5, -1.0, 1.0).double()
    x = signs * torch.exp2(logs)
    y = ap2(x)
    ratio = y / x
    assert bool((ratio > 0).all()), "AP2 changed a sign"
    assert bool((ratio >= 1 / SQRT2 * (1 - 1e-12)).all())
    assert bool((ratio <= SQRT2 * (1 + 1e-12)).all())
    # The result is a power of two ...
    e = torch.log2(y.abs())
    assert torch.equal(e, torch.round(e))
    # ... the nearest one, as written out with Python's math module.
    assert torch.equal(y, _naive_ap2_tensor(x))
    # Both ends of the bound are approached: the bound is not loose.
    assert ratio.max() > 1.4 and ratio.min() < 0.71


def test_ap2_rounds_to_nearest_power_not_down():
    x = torch.tensor([3.0, 1.4, 1.5, 0.74, 0.7, -3.0, -5.0, 6.0])
    # log2: 1.58 -> 2, 0.49 -> 0, 0.58 -> 1, -0.43 -> 0, -0.51 -> -1, 2.32 -> 2, 2.58 -> 3
    assert ap2(x).tolist() == [4.0, 1.0, 2.0, 1.0, 0.5, -4.0, -4.0, 8.0]


def test_ap2_ste_forward_ap2_backward_identity():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(100, generator=g, dtype=torch.float64) * 5).requires_grad_(True)
    up = torch.randn(100, generator=g, dtype=torch.float64)
    y = ap2_ste(x)
    assert torch.equal(y.detach(), ap2(x.detach()))
    y.backward(up)
    assert torch.equal(x.grad, up)


# --- Shift-based batch norm -------------------------------------------------------------------


def _pair(cls_shift, cls_bn, c, seed=0, dtype=torch.float64, **kw):
    g = torch.Generator().manual_seed(seed)
    s = cls_shift(c, **kw).to(dtype)
    b = cls_bn(c, eps=s.eps, momentum=s.momentum).to(dtype)
    with torch.no_grad():
        gamma = torch.randn(c, generator=g, dtype=dtype) * 2
        beta = torch.randn(c, generator=g, dtype=dtype)
        for m in (s, b):
            m.weight.copy_(gamma)
            m.bias.copy_(beta)
    return s, b


def _algorithm3(x, gamma, beta, eps, dims, shape):
    """Paper Algorithm 3 written out (training mode, batch statistics)."""
    mean = x.mean(dims)
    c = x - mean.view(shape)
    apx_var = (c * _naive_ap2_tensor(c)).mean(dims)
    inv_std = _naive_ap2_tensor(1.0 / torch.sqrt(apx_var + eps))
    return _naive_ap2_tensor(gamma).view(shape) * c * inv_std.view(shape) + beta.view(shape)


@pytest.mark.parametrize(
    "cls_shift,cls_bn,shape",
    [
        (ShiftBatchNorm1d, nn.BatchNorm1d, (64, 6)),
        (ShiftBatchNorm1d, nn.BatchNorm1d, (16, 6, 5)),
        (ShiftBatchNorm2d, nn.BatchNorm2d, (8, 6, 5, 4)),
    ],
)
def test_shift_bn_train_within_ap2_bound_of_batchnorm(cls_shift, cls_bn, shape):
    s, b = _pair(cls_shift, cls_bn, shape[1])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5
    s.train(), b.train()
    ys = s(x).detach()
    yb = b(x).detach()
    beta = s.bias.detach().view([1, -1] + [1] * (x.dim() - 2))
    ds, db = ys - beta, yb - beta
    mask = db.abs() > 1e-9
    ratio = ds[mask] / db[mask]
    assert bool((ratio > 0).all()), "shift BN flipped a sign"
    assert bool((ratio >= 1 / BOUND).all()) and bool((ratio <= BOUND).all())
    # It is an approximation, not batch norm itself.
    assert not torch.allclose(ys, yb)


@pytest.mark.parametrize(
    "cls,shape",
    [(ShiftBatchNorm1d, (32, 5)), (ShiftBatchNorm1d, (8, 5, 3)), (ShiftBatchNorm2d, (4, 5, 3, 3))],
)
def test_shift_bn_train_equals_algorithm3(cls, shape):
    s, _ = _pair(cls, nn.BatchNorm1d, shape[1], seed=4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    dims = [0] + list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    expected = _algorithm3(x, s.weight.detach(), s.bias.detach(), s.eps, dims, view)
    torch.testing.assert_close(s(x).detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize(
    "cls_shift,cls_bn,shape",
    [(ShiftBatchNorm1d, nn.BatchNorm1d, (20, 4)), (ShiftBatchNorm2d, nn.BatchNorm2d, (5, 4, 3, 3))],
)
def test_running_stats_semantics_match_batchnorm(cls_shift, cls_bn, shape, momentum):
    """Same batches to both in train mode: running_mean equal, running_var within sqrt(2).

    apx_var = mean(C * AP2(C)) is within a factor sqrt(2) of the true variance, and an
    exponential average of terms each within that factor stays within it.
    """
    s, b = _pair(cls_shift, cls_bn, shape[1], momentum=momentum)
    b.momentum = momentum
    g = torch.Generator().manual_seed(6)
    s.train(), b.train()
    for _ in range(7):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 4 + 2
        s(x), b(x)
    assert int(s.num_batches_tracked) == int(b.num_batches_tracked) == 7
    torch.testing.assert_close(s.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
    ratio = s.running_var / b.running_var
    assert bool((ratio >= 1 / SQRT2).all()) and bool((ratio <= SQRT2).all())
    # The running mean moved away from its start at 0 (the test is not vacuous).
    assert bool((s.running_mean.abs() > 0.5).all())


def test_running_var_update_formula():
    """running_var <- (1 - m) * running_var + m * apx_var * n / (n - 1) (unbiased, as BN)."""
    s = ShiftBatchNorm2d(3, momentum=0.25).double()
    x = torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    n = 4 * 2 * 5
    dims = [0, 2, 3]
    c = x - x.mean(dims, keepdim=True)
    apx_var = (c * _naive_ap2_tensor(c)).mean(dims)
    s.train()
    s(x)
    torch.testing.assert_close(s.running_mean, 0.25 * x.mean(dims), rtol=1e-12, atol=1e-12)
    expected = 0.75 * 1.0 + 0.25 * apx_var * n / (n - 1)
    torch.testing.assert_close(s.running_var, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cls,shape", [(ShiftBatchNorm1d, (6, 4)), (ShiftBatchNorm2d, (3, 4, 2, 2))]
)
def test_eval_uses_running_stats(cls, shape):
    s, _ = _pair(cls, nn.BatchNorm1d, shape[1], seed=8)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        s.running_mean.copy_(torch.randn(shape[1], generator=g, dtype=torch.float64))
        s.running_var.copy_(torch.rand(shape[1], generator=g, dtype=torch.float64) * 3 + 0.1)
    s.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    view = [1, -1] + [1] * (x.dim() - 2)
    gamma, beta = s.weight.detach(), s.bias.detach()
    inv_std = _naive_ap2_tensor(1.0 / torch.sqrt(s.running_var + s.eps))
    expected = _naive_ap2_tensor(gamma).view(view) * (x - s.running_mean.view(view)) * inv_std.view(
        view
    ) + beta.view(view)
    before = (s.running_mean.clone(), s.running_var.clone(), int(s.num_batches_tracked))
    out = s(x)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-12, atol=1e-12)
    # Eval does not touch the running statistics, and one sample is enough.
    assert torch.equal(s.running_mean, before[0]) and torch.equal(s.running_var, before[1])
    assert int(s.num_batches_tracked) == before[2]
    torch.testing.assert_close(s(x[:1]).detach(), expected[:1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cls,shape", [(ShiftBatchNorm1d, (10, 3)), (ShiftBatchNorm2d, (4, 3, 2, 2))]
)
def test_gradients_flow_to_weight_bias_and_input(cls, shape):
    s, _ = _pair(cls, nn.BatchNorm1d, shape[1], seed=10)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(shape, generator=g, dtype=torch.float64)
    s.train()
    s(x).backward(up)
    dims = [0] + list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    # beta enters additively: its gradient is the sum of the upstream gradient.
    torch.testing.assert_close(s.bias.grad, up.sum(dims), rtol=1e-12, atol=1e-12)
    # AP2(gamma) has an identity STE: d/dgamma = sum(up * x_hat), x_hat = C * AP2(1/std).
    xd = x.detach()
    c = xd - xd.mean(dims, keepdim=True)
    apx_var = (c * _naive_ap2_tensor(c)).mean(dims)
    x_hat = c * _naive_ap2_tensor(1.0 / torch.sqrt(apx_var + s.eps)).view(view)
    torch.testing.assert_close(s.weight.grad, (up * x_hat).sum(dims), rtol=1e-10, atol=1e-10)
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0


def test_wrong_input_dims_raise():
    with pytest.raises(ValueError, match="ShiftBatchNorm1d expects 2-D or 3-D"):
        ShiftBatchNorm1d(3)(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="ShiftBatchNorm1d expects 2-D or 3-D"):
        ShiftBatchNorm1d(3)(torch.zeros(3))
    with pytest.raises(ValueError, match="ShiftBatchNorm2d expects 4-D"):
        ShiftBatchNorm2d(3)(torch.zeros(2, 3))


def test_defaults_are_paper_values():
    s = ShiftBatchNorm2d(7)
    assert s.eps == 1e-4 and s.momentum == 0.1
    assert s.weight.shape == s.bias.shape == s.running_mean.shape == (7,)
