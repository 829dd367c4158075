"""Tests of bnnlib.nn.losses: the square hinge loss of the L2-SVM output and ±1 targets.

Oracle: L = mean over samples and classes of max(0, 1 - t * y)^2, as a Python loop.
"""

from __future__ import annotations

import pytest
import torch

from bnnlib.nn.losses import pm1_targets, square_hinge


def _naive_square_hinge(y: list[list[float]], t: list[list[float]]) -> float:
    total, count = 0.0, 0
    for yrow, trow in zip(y, t, strict=True):
        for yi, ti in zip(yrow, trow, strict=True):
            total += max(0.0, 1.0 - ti * yi) ** 2
            count += 1
    return total / count


def test_pm1_targets():
    y = torch.tensor([0, 3, 1, 3])
    t = pm1_targets(y, 4)
    assert t.dtype == torch.float32
    assert t.tolist() == [
        [1, -1, -1, -1],
        [-1, -1, -1, 1],
        [-1, 1, -1, -1],
        [-1, -1, -1, 1],
    ]


def test_pm1_targets_rejects_float_or_2d():
    with pytest.raises(ValueError, match="integer class indices"):
        pm1_targets(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="shape \\(N,\\)"):
        pm1_targets(torch.zeros(2, 3, dtype=torch.long), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_square_hinge_matches_naive_loop(dtype):
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(13, 10, generator=g) * 2).to(dtype)
    labels = torch.randint(0, 10, (13,), generator=g)
    t = pm1_targets(labels, 10)
    loss = square_hinge(y, t)
    assert loss.dtype == dtype and loss.dim() == 0
    expected = _naive_square_hinge(y.tolist(), t.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_square_hinge_landmarks():
    t = torch.tensor([[1.0, -1.0]])
    assert square_hinge(torch.tensor([[1.0, -1.0]]), t).item() == 0.0  # margins met
    assert square_hinge(torch.tensor([[5.0, -7.0]]), t).item() == 0.0  # beyond: no loss
    # margins 1 - 0 = 1 and 1 - (-1)(2) = 3: (1 + 9) / 2
    assert square_hinge(torch.tensor([[0.0, 2.0]]), t).item() == 5.0


def test_square_hinge_gradient_matches_naive_formula():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = pm1_targets(torch.randint(0, 4, (6,), generator=g), 4).double()
    square_hinge(y, t).backward()
    # d/dy mean(max(0, 1 - t y)^2) = -2 t max(0, 1 - t y) / numel
    expected = -2 * t * torch.clamp(1 - t * y.detach(), min=0) / y.numel()
    torch.testing.assert_close(y.grad, expected, rtol=1e-12, atol=1e-12)


def test_square_hinge_integer_targets_accepted():
    y = torch.tensor([[0.5, -0.5]])
    assert square_hinge(y, torch.tensor([[1, -1]])).item() == pytest.approx(0.25)


def test_square_hinge_shape_mismatch_mentions_pm1_targets():
    y = torch.zeros(4, 10)
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="pm1_targets") as info:
        square_hinge(y, labels)
    assert "(4,)" in str(info.value) and "(4, 10)" in str(info.value)
