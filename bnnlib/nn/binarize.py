"""Binarization: the two ways the paper turns a real number into +1 or -1 (Section 1.1).

Deterministic binarization (paper Eq. 1)::

    x_b = Sign(x) = +1 if x >= 0 else -1          # so Sign(0) = +1

Stochastic binarization (paper Eq. 2)::

    x_b = +1 with probability p = hard_sigmoid(x), else -1
    hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)     # paper Eq. 3

Its expectation is E[x_b] = 2 * hard_sigmoid(x) - 1 = clip(x, -1, 1), the hardtanh.
These functions have no useful gradient; :mod:`bnnlib.nn.ste` wraps them with the
straight-through estimator for training.
"""

from __future__ import annotations

import torch

__all__ = ["sign", "hard_sigmoid", "stochastic_sign"]


def sign(x: torch.Tensor) -> torch.Tensor:
    """Deterministic binarization, paper Eq. 1: +1 where x >= 0, else -1, in x's dtype.

    Unlike ``torch.sign``, zero maps to +1 so every output is a valid bit.
    """
    # copysign is one vectorized pass (torch.where is several times slower on CPU);
    # adding +0.0 first turns -0.0 into +0.0, so Sign(-0.0) = +1 as -0.0 >= 0.
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.copysign(one, x + 0.0)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: sigma(x) = clip((x + 1) / 2, 0, 1)."""
    return ((x + 1) / 2).clamp(0, 1)


def stochastic_sign(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic binarization, paper Eq. 2: +1 with probability hard_sigmoid(x), else -1.

    ``generator`` makes the draw reproducible; it must live on x's device.
    """
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # -Sign(u - p) is +1 exactly where u < p (Sign(0) = +1 gives -1 at u == p), so p = 0
    # never yields +1 and p = 1 always does, since u lies in [0, 1).
    return -sign(u - hard_sigmoid(x))
