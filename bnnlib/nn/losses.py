"""The square hinge loss of the paper's L2-SVM output layer (paper Section 2, Theano code).

With targets t in {-1, +1} (one column per class)::

    L = mean( max(0, 1 - t * y)^2 )

averaged over every sample and class, as the paper's code does.
"""

from __future__ import annotations

import torch

__all__ = ["square_hinge", "pm1_targets"]


def pm1_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (N,) to the paper's targets (N, num_classes): +1 for the class, else -1."""
    if y.dtype.is_floating_point or y.dim() != 1:
        raise ValueError(
            f"pm1_targets expects integer class indices of shape (N,), "
            f"got {y.dtype} {tuple(y.shape)}"
        )
    return torch.nn.functional.one_hot(y, num_classes).mul(2).sub(1).float()


def square_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Square hinge loss mean(max(0, 1 - target * output)^2) with ±1 targets of output's shape."""
    if target.shape != output.shape:
        raise ValueError(
            f"square_hinge: target shape {tuple(target.shape)} != "
            f"output shape {tuple(output.shape)}; "
            "convert class indices with bnnlib.nn.losses.pm1_targets(y, num_classes)"
        )
    return torch.clamp(1 - target.to(output.dtype) * output, min=0).square().mean()
