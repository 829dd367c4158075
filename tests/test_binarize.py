"""Tests of bnnlib.nn.binarize: Sign (paper Eq. 1), hard sigmoid (Eq. 3), stochastic Sign (Eq. 2).

References are written out here: a Python loop for Sign and hard_sigmoid, and the
expectation E[x_b] = 2 * hard_sigmoid(x) - 1 for the stochastic binarization.
"""

from __future__ import annotations

import math

import pytest
import torch

from bnnlib.nn.binarize import hard_sigmoid, sign, stochastic_sign

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def _naive_sign(v: float) -> float:
    # Paper Eq. 1: +1 if x >= 0 else -1 (-0.0 >= 0 is True in IEEE arithmetic).
    return 1.0 if v >= 0 else -1.0


# --- Sign -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sign_of_zero_and_negative_zero_is_plus_one(dtype):
    x = torch.tensor([0.0, -0.0], dtype=dtype)
    assert torch.signbit(x).tolist() == [False, True]  # the input really holds a -0.0
    out = sign(x)
    assert out.tolist() == [1.0, 1.0]
    # +1, not +1 with a sign bit set somewhere: the result must be a clean bit.
    assert not torch.signbit(out).any()


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_sign_matches_naive_loop_and_keeps_dtype_and_device(dtype, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 257, generator=g, dtype=torch.float64) * 3
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("inf")], dtype=torch.float64)
    x = x.to(dtype=dtype, device=device)
    out = sign(x)
    assert out.dtype == dtype
    assert out.device == x.device
    assert out.shape == x.shape
    expected = [[_naive_sign(v) for v in row] for row in x.float().cpu().tolist()]
    assert out.float().cpu().tolist() == expected


def test_sign_keeps_meta_device():
    x = torch.empty(3, 5, device="meta", dtype=torch.float64)
    out = sign(x)
    assert out.device.type == "meta"
    assert out.dtype == torch.float64
    assert out.shape == (3, 5)


def test_sign_negative_infinity_and_tiny_values():
    x = torch.tensor([-float("inf"), -torch.finfo(torch.float32).tiny, 1e-45, -1e-45])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, -1.0]


# --- hard sigmoid ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_sigmoid_matches_formula(dtype):
    x = torch.linspace(-3, 3, 601, dtype=dtype)
    expected = [min(max((v + 1) / 2, 0.0), 1.0) for v in x.tolist()]
    out = hard_sigmoid(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype), rtol=0, atol=1e-7)


def test_hard_sigmoid_landmarks():
    x = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0])
    assert hard_sigmoid(x).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


# --- stochastic Sign ---------------------------------------------------------------------------

# Grid of x; each x is drawn N_DRAWS times (21 * 50_000 ~ 1e6 draws in all).
X_GRID = torch.linspace(-1.5, 1.5, 21, dtype=torch.float64)
N_DRAWS = 50_000
N_SE = 5.0  # per-x tolerance: 5 standard errors of the mean


def _within_tolerance(draws: torch.Tensor) -> torch.Tensor:
    """Per x of X_GRID: is the mean of the draws within N_SE standard errors of 2p - 1?

    Each draw is ±1 with P(+1) = p = hard_sigmoid(x), so its variance is 4 p (1 - p) and
    the standard error of the mean of N_DRAWS draws is sqrt(4 p (1 - p) / N_DRAWS) (at
    most 0.0045). Where p is 0 or 1 the draws must all be equal: the tolerance is zero.
    """
    p = ((X_GRID + 1) / 2).clamp(0, 1)
    se = torch.sqrt(4 * p * (1 - p) / N_DRAWS)
    return (draws.mean(0) - (2 * p - 1)).abs() <= N_SE * se + 1e-12


def test_stochastic_sign_mean_is_hardtanh():
    """E[x_b] = 2 * hard_sigmoid(x) - 1 (= clip(x, -1, 1)), per x within 5 standard errors."""
    g = torch.Generator().manual_seed(1234)
    x = X_GRID.expand(N_DRAWS, -1).contiguous()
    xb = stochastic_sign(x, generator=g)
    assert xb.dtype == torch.float64
    assert set(xb.unique().tolist()) <= {-1.0, 1.0}
    ok = _within_tolerance(xb)
    assert bool(ok.all()), X_GRID[~ok].tolist()


def test_stochastic_mean_check_rejects_logistic_sigmoid():
    """The check above has power: draws with p = sigmoid(x) instead of hard_sigmoid fail it."""
    g = torch.Generator().manual_seed(1234)
    u = torch.rand(N_DRAWS, X_GRID.numel(), generator=g, dtype=torch.float64)
    wrong = torch.where(u < torch.sigmoid(X_GRID), 1.0, -1.0).double()
    assert int((~_within_tolerance(wrong)).sum()) >= 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stochastic_sign_extremes_are_deterministic(dtype):
    g = torch.Generator().manual_seed(7)
    n = 200_000
    low = torch.tensor([-1.0, -1.5, -100.0], dtype=dtype).repeat(n)  # p = 0
    high = torch.tensor([1.0, 1.5, 100.0], dtype=dtype).repeat(n)  # p = 1
    out_low = stochastic_sign(low, generator=g)
    out_high = stochastic_sign(high, generator=g)
    assert out_low.dtype == dtype and out_high.dtype == dtype
    assert bool((out_low == -1).all()), "p = 0 gave +1"
    assert bool((out_high == 1).all()), "p = 1 gave -1"


def test_stochastic_sign_generator_reproducible():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = stochastic_sign(x, generator=torch.Generator().manual_seed(42))
    b = stochastic_sign(x, generator=torch.Generator().manual_seed(42))
    c = stochastic_sign(x, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stochastic_sign_global_seed_reproducible():
    x = torch.zeros(1000)
    torch.manual_seed(5)
    a = stochastic_sign(x)
    torch.manual_seed(5)
    b = stochastic_sign(x)
    assert torch.equal(a, b)
    # At x = 0, p = 1/2: both values occur (P(all equal) = 2^-999).
    assert set(a.tolist()) == {-1.0, 1.0}


def test_stochastic_sign_half_probability_balance():
    """At p = 1/2 the fraction of +1 over 1e5 draws is within 5 SE (0.5 / sqrt(n)) of 1/2."""
    n = 100_000
    out = stochastic_sign(torch.zeros(n), generator=torch.Generator().manual_seed(3))
    frac = (out == 1).double().mean().item()
    assert abs(frac - 0.5) <= 5 * 0.5 / math.sqrt(n)
