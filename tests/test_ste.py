"""Tests of bnnlib.nn.ste: the straight-through estimator, paper Eq. 4.

forward q = Sign(r); backward g_r = g_q * 1{|r| <= 1}. Oracles: torch.autograd of
hardtanh (away from the kinks at ±1, where torch's convention differs), central finite
differences of the hardtanh surrogate, and the indicator written out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnnlib.nn.ste import ESTIMATORS, identity_ste_sign, ste_sign


def _inputs(n: int = 2000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * 2


def _upstream(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64)


def _grad(fn, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x).backward(g)
    return x.grad


def test_forward_is_sign():
    x = torch.tensor([-2.0, -1.0, -0.0, 0.0, 0.3, 1.0, 7.0])
    for est in ESTIMATORS:
        assert ste_sign(x, estimator=est).tolist() == [-1, -1, 1, 1, 1, 1, 1]


def test_hardtanh_ste_gradient_is_indicator():
    x, g = _inputs(), _upstream(2000)
    got = _grad(ste_sign, x, g)
    pairs = zip(x.tolist(), g.tolist(), strict=True)
    expected = torch.tensor([gi if abs(xi) <= 1 else 0.0 for xi, gi in pairs], dtype=torch.float64)
    assert torch.equal(got, expected.to(got.dtype))
    # Both branches are exercised.
    assert 0 < int((x.abs() > 1).sum()) < x.numel()


def test_hardtanh_ste_matches_torch_hardtanh_away_from_kinks():
    x, g = _inputs(), _upstream(2000)
    assert not bool((x.abs() == 1).any())
    assert torch.equal(_grad(ste_sign, x, g), _grad(F.hardtanh, x, g))


def test_hardtanh_ste_keeps_gradient_at_exactly_plus_minus_one():
    """The paper's 1{|r| <= 1} keeps the gradient at r = ±1 (torch's hardtanh zeroes it)."""
    x = torch.tensor([-1.0, 1.0, -1.0000001, 1.0000001, -0.9999999, 0.9999999])
    g = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert _grad(ste_sign, x, g).tolist() == [2.0, 3.0, 0.0, 0.0, 6.0, 7.0]
    # torch's hardtanh backward uses the open interval: the two conventions differ exactly here.
    assert _grad(F.hardtanh, x[:2], g[:2]).tolist() == [0.0, 0.0]


def test_hardtanh_ste_matches_finite_differences_of_hardtanh():
    x = _inputs(500, seed=3)
    h = 1e-6
    x = x[(x.abs() - 1).abs() > 10 * h]  # away from the kinks
    fd = (F.hardtanh(x + h) - F.hardtanh(x - h)) / (2 * h)
    got = _grad(ste_sign, x, torch.ones_like(x))
    torch.testing.assert_close(got, fd, rtol=0, atol=1e-8)


def test_identity_ste_passes_gradient_unchanged():
    x, g = _inputs(), _upstream(2000)
    assert torch.equal(_grad(lambda t: ste_sign(t, estimator="identity"), x, g), g)
    assert torch.equal(_grad(identity_ste_sign, x, g), g)


def test_none_estimator_gives_zero_gradient():
    x, g = _inputs(), _upstream(2000)
    got = _grad(lambda t: ste_sign(t, estimator="none"), x, g)
    assert got is not None
    assert torch.equal(got, torch.zeros_like(x))


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="unknown estimator 'tanh'.*hardtanh"):
        ste_sign(torch.zeros(3), estimator="tanh")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_stochastic_ste_forward_is_pm1_with_same_backward(estimator):
    x, g = _inputs(), _upstream(2000)
    gen = torch.Generator().manual_seed(0)
    xr = x.clone().requires_grad_(True)
    out = ste_sign(xr, stochastic=True, estimator=estimator, generator=gen)
    assert set(out.detach().unique().tolist()) == {-1.0, 1.0}
    # Outside [-1, 1] the draw is deterministic: Sign(x).
    sat = x.abs() > 1
    assert torch.equal(out.detach()[sat], torch.where(x[sat] > 0, 1.0, -1.0).double())
    out.backward(g)
    expected = {
        "hardtanh": g * (x.abs() <= 1),
        "identity": g,
        "none": torch.zeros_like(g),
    }[estimator]
    assert torch.equal(xr.grad, expected)


def test_stochastic_ste_generator_reproducible():
    x = torch.zeros(500)
    a = ste_sign(x, stochastic=True, generator=torch.Generator().manual_seed(9))
    b = ste_sign(x, stochastic=True, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_ste_dtype_preserved_in_forward_and_backward():
    x = torch.linspace(-2, 2, 9, dtype=torch.float32, requires_grad=True)
    out = ste_sign(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.float32
    assert x.grad.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]
