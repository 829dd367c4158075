"""Binary layers: latent real weights, binarized in the forward pass (paper Section 1.2-1.5).

Each binary layer keeps a real-valued *latent* weight W. Training uses only its
binarization W_b = Sign(W) in the forward pass and to compute gradients
(paper Algorithm 1); the gradient reaches W through the straight-through
estimator (:mod:`bnnlib.nn.ste`) and the optimizer (:mod:`bnnlib.nn.optim`) clips W
to [-1, 1] after each update, so the latent weights cannot grow without bound.

Stochastic binarization (paper Eq. 2) is chosen separately for the weights
(``stochastic_weights``) and for the input (``stochastic_input``): the Torch7 code
of the paper binarizes activations stochastically and weights deterministically
(its ``-stcNeurons true -stcWeights false``). Either applies in training only;
evaluation is always deterministic. ``stochastic=True`` is shorthand for both.

The input of a binary layer is binarized by the layer itself when
``binarize_input=True`` (a hidden layer fed by a batch-norm output), or taken as
it comes when ``binarize_input=False``: the first layer, whose input is the real
8-bit image (paper Section 2.6), and a layer whose input was already binarized
by a :class:`SignActivation` (for instance Sign -> Dropout -> layer, the order of
the paper's code). Nothing is inferred from a layer's width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bnnlib.nn.ste import ESTIMATORS, ste_sign

__all__ = ["BinaryLinear", "BinaryConv2d", "SignActivation", "is_binary_layer"]


class _BinaryMixin:
    """What BinaryLinear and BinaryConv2d share: flags, init, input/weight binarization."""

    binarize_input: bool
    stochastic_weights: bool
    stochastic_input: bool
    weight: nn.Parameter

    def _init_binary(
        self, binarize_input: bool, stochastic: bool, weights: bool, inputs: bool
    ) -> None:
        self.binarize_input = binarize_input
        self.stochastic_weights = stochastic or weights
        self.stochastic_input = stochastic or inputs
        # The paper's code draws latent weights from U(-H, H) with H = 1.
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            if self.bias is not None:
                self.bias.zero_()

    @property
    def stochastic(self) -> bool:
        """True when both the weights and the input binarize stochastically in training."""
        return self.stochastic_weights and self.stochastic_input

    def binary_weight(self) -> torch.Tensor:
        """W_b = Sign(W), with the straight-through gradient to the latent W.

        The weight's STE passes the gradient unchanged, as the paper's code does:
        the optimizers clip W to [-1, 1] after every step, so 1{|W| <= 1} is always 1
        and computing it would only cost a pass over the largest tensors.
        """
        # Stochastic binarization in training only; evaluation is deterministic.
        stoch = self.stochastic_weights and self.training
        return ste_sign(self.weight, stoch, estimator="identity")

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binarize_input:
            return x
        return ste_sign(x, self.stochastic_input and self.training)

    def _flags(self) -> str:
        return (
            f"binarize_input={self.binarize_input}, "
            f"stochastic_weights={self.stochastic_weights}, "
            f"stochastic_input={self.stochastic_input}"
        )


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Fully connected layer with binary weights (and binary input unless ``binarize_input=False``).

    ``y = x_b @ Sign(W)^T (+ b)``. The bias defaults to off: batch norm follows
    every binary layer in the paper's models and would absorb it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        binarize_input: bool = True,
        stochastic: bool = False,
        bias: bool = False,
        *,
        stochastic_weights: bool = False,
        stochastic_input: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(binarize_input, stochastic, stochastic_weights, stochastic_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._flags()}"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """2-D convolution with binary weights (and binary input unless ``binarize_input=False``).

    Padding, if any, adds zeros to the *binarized* input, as in the paper's code.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | str = 0,
        binarize_input: bool = True,
        stochastic: bool = False,
        bias: bool = False,
        *,
        stochastic_weights: bool = False,
        stochastic_input: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self._init_binary(binarize_input, stochastic, stochastic_weights, stochastic_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._flags()}"


class SignActivation(nn.Module):
    """The binary activation: Sign in the forward pass, STE in the backward pass.

    ``stochastic=True`` binarizes stochastically while training (Torch7 default)
    and deterministically in evaluation. ``estimator`` is one of
    :data:`bnnlib.nn.ste.ESTIMATORS` (the paper's is ``"hardtanh"``).
    """

    def __init__(self, stochastic: bool = False, estimator: str = "hardtanh") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.stochastic = stochastic
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x, self.stochastic and self.training, self.estimator)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}, estimator={self.estimator!r}"


def is_binary_layer(module: nn.Module) -> bool:
    """True for the layers whose latent weights are binarized (and clipped)."""
    return isinstance(module, (BinaryLinear, BinaryConv2d))
